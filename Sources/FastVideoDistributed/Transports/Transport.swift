/// What a rank tells its peers at the start of every collective: enough to detect
/// any disagreement before a single byte of data moves.
struct CallHeader: Sendable, Equatable {
    /// Name of the operation as the caller called it, for errors, e.g. `tensor_model_parallel_all_gather`.
    var op: String
    /// What is compared across ranks: the underlying collective, e.g. `all_gather`.
    var kind: String
    var dtype: DType
    var shape: [Int]
    /// Operation arguments (dim, root, reduce op, ...) in a fixed order per op.
    var arguments: [Int]
    /// Human-readable form of `arguments` for error messages.
    var argumentText: String
    /// How many collectives this rank has called on this group before.
    var call: Int

    /// Collectives whose data's shape and dtype travel with it: only the sending rank's
    /// header describes the data, so the others' shapes and dtypes are not compared.
    /// Their first argument is the sender's index in the channel.
    static let dataTravelsKinds: Set<String> = ["send_recv", "broadcast_any"]
    /// Collectives whose ranks may pass different shapes (the uneven all-to-all): their
    /// body checks every member's shape, so the error is the same on every rank.
    static let shapeCheckedInBodyKinds: Set<String> = dataTravelsKinds.union(["all_to_all_4D"])

    /// The number of bytes the header describes, or an error if a peer's header
    /// describes an impossible tensor.
    func byteCount() throws -> Int {
        try Tensor.elementCount(of: shape) * dtype.byteSize
    }
}

/// A rank's buffers as its peers can address them during one collective.
///
/// Invariant: `storage` keeps the memory behind the pointers alive from the rank's
/// phase-0 post until the channel's `release()` after every member posted `.done`. When
/// a call ends early (abort, timeout, exit) nothing releases it, so a peer still
/// copying from this rank never reads freed memory; the next publish replaces it.
struct PeerBuffers: @unchecked Sendable {
    var input: UnsafeRawPointer
    var output: UnsafeMutableRawPointer?
    var storage: [TensorStorage] = []
}

/// The phases of one collective call. Each is a rendezvous of the whole group.
enum Phase: Int {
    /// Header and buffers are published.
    case arrived = 0
    /// The rank's share of a reduction is in its output (all-reduce only).
    case reduced = 1
    /// The rank has finished reading its peers' buffers.
    case done = 2
}

/// One rank's endpoint of one group on a transport whose ranks can read each
/// other's memory (threads in one process; processes sharing a mapping).
///
/// A collective is written once against this protocol: publish, rendezvous,
/// copy straight from peers' buffers into the output, rendezvous again.
protocol PeerMemoryChannel: AnyObject, Sendable {
    /// World ranks of the members, sorted; index = rank in group.
    var members: [Int] { get }
    /// This rank's index in `members`.
    var index: Int { get }
    /// Label used in errors and logs, e.g. `tp0 [0, 1]`.
    var label: String { get }
    /// The number of this rank's next call on the group (its completed calls so far),
    /// shared by every coordinator of the same group on this rank.
    var nextCall: Int { get }
    /// Stores this rank's header and buffers for the current call (before `post(.arrived)`).
    ///
    /// Throws only where a fault is injected (``FaultInjectingChannel``).
    func publish(_ header: CallHeader, _ buffers: PeerBuffers) throws
    /// Marks this rank as having reached `phase` of `call` and wakes waiters.
    func post(_ phase: Phase, call: Int)
    /// Blocks until every member reached `phase` of `call`.
    ///
    /// Only `.arrived` has a deadline: later phases wait for ranks that are already
    /// inside the call, so they end when those ranks finish, fail or exit.
    /// - Throws: the world's abort error, ``FVDError/peerExited(rank:op:group:)`` for a
    ///   member that left, or ``FVDError/timeout(op:group:call:arrived:missing:seconds:)``.
    func wait(_ phase: Phase, call: Int, op: String) throws
    /// The header member `i` published for the current call (valid after `wait(.arrived)`).
    func header(of i: Int) -> CallHeader
    /// The buffers member `i` published for the current call (valid after `wait(.arrived)`).
    func buffers(of i: Int) -> PeerBuffers
    /// Claims this rank's endpoint for one call; `false` if another thread holds it
    /// (two coordinators of the same group used at once).
    func enter() -> Bool
    /// Ends the claim of `enter()`.
    func leave()
    /// Drops the references that kept this rank's buffers alive for its peers
    /// (after every member posted `.done` of the current call).
    func release()
    /// Throws the world's abort error if a rank has failed, so no new call starts on a broken world.
    func checkHealthy() throws
    /// Marks the world as failed with `error` and wakes every waiter.
    func abort(_ error: FVDError)
    /// For a transport whose ranks cannot read each other's memory (MPI): moves, by
    /// messages, what every member's `plan(source, destination)` copies from `source`'s
    /// input into `destination`'s output, with this rank's output at `destination`.
    /// Every member calls it at the same point of the call.
    /// - Returns: `false` (the default) when the caller copies from ``buffers(of:)`` itself.
    func pullByMessages(into destination: UnsafeMutableRawPointer, plan: (_ source: Int, _ destination: Int) -> StridedCopy) throws -> Bool
    /// For a transport with its own all-reduce that the user chose over the deterministic
    /// one (MPI's, with `FVD_MPI_NATIVE_ALLREDUCE=1`): reduces `count` elements of every
    /// member's `input` into this rank's `output` (which may be `input`).
    /// - Returns: `false` (the default) when the caller reduces in rank order itself.
    func reduceByMessages(
        _ op: ReduceOp, dtype: DType, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
    ) throws -> Bool
}

extension PeerMemoryChannel {
    func pullByMessages(into destination: UnsafeMutableRawPointer, plan: (_ source: Int, _ destination: Int) -> StridedCopy) throws -> Bool {
        false
    }

    func reduceByMessages(
        _ op: ReduceOp, dtype: DType, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
    ) throws -> Bool {
        false
    }
}
