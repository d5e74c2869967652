/// One rank's endpoint of one group: how its collectives meet their peers.
///
/// A collective is written once against this protocol (see `performCollective`): the rank
/// fills its ``CallSlot`` for the call (a header, and its input itself when small), publishes
/// it, waits for every member's, checks that they agree, and then reads what it needs from
/// the peers' slots or, for large data, straight from their buffers; only then does it
/// rendezvous again (``Phase/done``) so no rank leaves while a peer still reads its memory.
/// Transports whose ranks share memory (threads, processes over a shared mapping) keep the
/// slots in memory every member maps; MPI sends them as messages.
protocol PeerMemoryChannel: AnyObject, Sendable {
    /// World ranks of the members, sorted; index = rank in group.
    var members: [Int] { get }
    /// This rank's index in `members`.
    var index: Int { get }
    /// `members.count`, without handing out the array.
    var memberCount: Int { get }
    /// Whether a small send may return once its slot is published, before the receiver
    /// reads it (a transport whose slots stay readable by the receiver: shared memory).
    var sendsEagerly: Bool { get }
    /// Label used in errors and logs, e.g. `tp0 [0, 1]`.
    var label: String { get }
    /// Takes the number of this rank's next call on the group (its calls so far), shared
    /// by every coordinator of the same group on this rank; the call in progress from then on.
    func claimCall() -> Int
    /// This rank's slot for `call`, to fill before ``publish(call:)``.
    func ownSlot(call: Int) -> CallSlot
    /// Member `i`'s slot of the call in progress (valid after ``waitArrival(call:op:)``).
    func slot(of i: Int) -> CallSlot
    /// The address of one of this rank's buffers as its header publishes it.
    func address(of pointer: UnsafeRawPointer) -> UInt64
    /// Where member `i`'s input can be read during the call in progress: its slot's
    /// payload when inline, else its published buffer.
    func input(of i: Int) -> UnsafeRawPointer
    /// Member `i`'s published output buffer, if it has one (the large all-reduce reads it).
    func output(of i: Int) -> UnsafeMutableRawPointer?
    /// Makes this rank's filled slot of `call` visible to its peers: its arrival.
    ///
    /// Throws only where a fault is injected (``FaultInjectingChannel``).
    func publish(call: Int) throws
    /// Blocks until every member (this one included) published `call`.
    /// - Throws: the world's abort error, ``FVDError/peerExited(rank:op:group:)`` for a
    ///   member that left, or ``FVDError/timeout(op:group:call:arrived:missing:seconds:)``.
    func waitArrival(call: Int, op: CollectiveOp) throws
    /// Once every header agrees: makes the data the collective reads available here. A
    /// transport whose ranks read each other's memory has nothing to do.
    func exchangeData() throws
    /// Marks this rank as having reached `phase` of `call` and wakes waiters.
    func post(_ phase: Phase, call: Int)
    /// Tells the peers this rank is making progress inside a call (every few MB of a large
    /// copy or reduction), so that their ``wait(_:call:op:)`` tells it from a stalled rank.
    func beat()
    /// Blocks until every member reached `phase` of `call`, for as long as the missing ones
    /// make progress (post or ``beat()``); it ends when they finish, fail, exit or stall.
    func wait(_ phase: Phase, call: Int, op: CollectiveOp) throws
    /// Claims this rank's endpoint for one call; `false` if another thread holds it
    /// (two coordinators of the same group used at once).
    func enter() -> Bool
    /// Ends the claim of `enter()`.
    func leave()
    /// Keeps the storage of this rank's buffers alive while peers may read them in place,
    /// until ``release()``. When a call ends early (abort, timeout, exit) nothing releases
    /// them, so a peer still copying from this rank never reads freed memory; the next
    /// call's keep replaces them.
    func keepAlive(input: TensorStorage, output: TensorStorage?)
    /// Drops what ``keepAlive(input:output:)`` kept (after every member posted `.done`).
    func release()
    /// Throws the world's abort error if a rank has failed, so no new call starts on a broken world.
    func checkHealthy() throws
    /// Marks the world as failed with `error` and wakes every waiter.
    func abort(_ error: FVDError)
    /// For a transport whose ranks cannot read each other's memory (MPI): moves, by
    /// messages, what every member's `plan(source, destination)` copies from `source`'s
    /// input into `destination`'s output, with this rank's output at `destination`.
    /// Every member calls it at the same point of the call.
    /// - Returns: `false` (the default) when the caller copies from ``input(of:)`` itself.
    func pullByMessages(into destination: UnsafeMutableRawPointer, plan: (_ source: Int, _ destination: Int) -> StridedCopy) throws -> Bool
    /// For a transport with an all-reduce of its own: MPI's, when the user chose it over
    /// the deterministic one (`FVD_MPI_NATIVE_ALLREDUCE=1`), or the deterministic one
    /// chained through the hosts of a group that spans them. Reduces `count` elements of
    /// every member's `input` into this rank's `output` (which may be `input`).
    /// - Returns: `false` (the default) when the caller reduces in rank order itself.
    func reduceByMessages(
        _ op: ReduceOp, dtype: DType, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
    ) throws -> Bool
}

extension PeerMemoryChannel {
    func exchangeData() throws {}

    func beat() {}

    func pullByMessages(into destination: UnsafeMutableRawPointer, plan: (_ source: Int, _ destination: Int) -> StridedCopy) throws -> Bool {
        false
    }

    func reduceByMessages(
        _ op: ReduceOp, dtype: DType, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
    ) throws -> Bool {
        false
    }
}
