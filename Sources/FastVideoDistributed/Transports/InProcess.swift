import CFVDShims
import Dispatch
import Foundation
import Synchronization

/// Creates the per-rank endpoint of a group; implemented by each transport.
protocol ChannelFactory: Sendable {
    func makeChannel(name: String, members: [Int], rank: Int) throws -> any PeerMemoryChannel
    /// The endpoint of the one-way link `source → destination` (world ranks, both members
    /// of group `group` whose members are `groupMembers`), for send and receive.
    ///
    /// Made by either end alone, whenever it first uses the link: it must not wait for the
    /// other end. The default is a two-member group named `group:source->destination`.
    func makePointToPointChannel(group: String, groupMembers: [Int], source: Int, destination: Int, rank: Int) throws
        -> any PeerMemoryChannel
    /// The flight recorder of world rank `rank` (one per rank, shared by its groups).
    func flightRecorder(rank: Int) -> FlightRecorder
}

extension ChannelFactory {
    func makePointToPointChannel(group: String, groupMembers: [Int], source: Int, destination: Int, rank: Int) throws
        -> any PeerMemoryChannel
    {
        try makeChannel(name: pointToPointName(group: group, source: source, destination: destination), members: [source, destination].sorted(), rank: rank)
    }

    func pointToPointName(group: String, source: Int, destination: Int) -> String { "\(group):\(source)->\(destination)" }

    /// The endpoint of group `name` on a multi-process transport: a private in-process one
    /// for a group of one (it never communicates), else a channel over the group's state,
    /// which `make` creates once per group (by its key, `name [members]`) in `cache`.
    func groupChannel<Group>(
        name: String, members: [Int], cache: Locked<[String: Group]>, make: (_ key: String) throws -> Group,
        channel: (Group) -> any PeerMemoryChannel
    ) throws -> any PeerMemoryChannel {
        if members.count == 1 {
            return InProcessWorldState(size: 1, timeout: 0).makeChannel(name: name, members: [0], rank: 0)
        }
        let key = "\(name) \(members)"
        return channel(try cache.value(for: key) { try make(key) })
    }
}

/// A timeout in seconds as nanoseconds; beyond ~31 years (or infinity), no deadline.
func timeoutNanoseconds(_ seconds: Double) -> UInt64 {
    seconds >= 1e9 ? .max : UInt64(max(0, seconds) * 1e9)
}

/// The state the ranks of one in-process world share: groups, abort and exit flags.
final class InProcessWorldState: ChannelFactory, WaitingWorld, Sendable {
    let size: Int
    let timeoutNanoseconds: UInt64
    let spin: Bool
    /// Set once `failure` holds an error, so the check at every call takes no lock.
    private let failed = Atomic<Bool>(false)
    private let failure = Locked<FVDError?>(nil)
    private let exited: Locked<[Bool]>
    private let groups = Locked<[String: InProcessGroupState]>([:])
    private let recorders: [FlightRecorder]

    init(size: Int, timeout: Double) {
        self.size = size
        let directory = FlightRecorder.directoryFromEnvironment
        recorders = (0..<size).map { FlightRecorder(rank: $0, directory: directory, printsOnBreak: false) }
        timeoutNanoseconds = FastVideoDistributed.timeoutNanoseconds(timeout)
        spin = size <= Self.usableProcessorCount
        exited = Locked(Array(repeating: false, count: size))
    }

    /// Cores the threads of this process may use: the online processors, fewer when an
    /// affinity mask (`taskset`, a cpuset) confines the calling thread. A world whose ranks
    /// do not fit waits without spinning.
    private static var usableProcessorCount: Int {
        let online = ProcessInfo.processInfo.activeProcessorCount
        let affinity = Int(fvd_affinity_cpu_count())
        return affinity > 0 ? min(affinity, online) : online
    }

    func makeChannel(name: String, members: [Int], rank: Int) -> any PeerMemoryChannel {
        let key = "\(name) \(members)"
        let group = groups.value(for: key) { InProcessGroupState(members: members) }
        let index = members.firstIndex(of: rank)!
        return RegionChannel(
            world: self, region: group.region, members: members, index: index, label: key, kept: group.kept[index],
            addressBase: 0, shared: false)
    }

    func flightRecorder(rank: Int) -> FlightRecorder { recorders[rank] }

    var abortError: FVDError? {
        guard failed.load(ordering: .acquiring) else { return nil }
        return failure.withLock { $0 }
    }

    /// Records the first failure of the world and wakes every waiter so it sees it.
    func abort(_ error: FVDError) {
        failure.withLock { if $0 == nil { $0 = error } }
        failed.store(true, ordering: .releasing)
        wakeAll()
    }

    func markExited(_ rank: Int) {
        exited.withLock { $0[rank] = true }
        wakeAll()
    }

    func goneRanks(among ranks: [Int]) -> [Int] { exited.withLock { flags in ranks.filter { flags[$0] } } }

    /// In one process every rank sees the world's abort error: `tellPeers` changes nothing.
    func abort(_ error: FVDError, tellPeers: Bool) { abort(error) }

    private func wakeAll() {
        for g in groups.withLock({ Array($0.values) }) { g.region.wake(shared: false) }
    }
}

/// One group of an in-process world: its region and what each member keeps alive.
final class InProcessGroupState: Sendable {
    let region: GroupRegion
    let kept: [KeptBuffers]

    init(members: [Int]) {
        region = GroupRegion(members: members.count)
        kept = members.map { _ in KeptBuffers() }
    }
}

/// The storage of one member's buffers while peers may read them in place.
///
/// Invariant: used only by the thread that holds the member's endpoint
/// (``PeerMemoryChannel/enter()``).
final class KeptBuffers: @unchecked Sendable {
    var input: TensorStorage?
    var output: TensorStorage?
}

/// One rank's endpoint of a group whose members share a ``GroupRegion`` (threads of one
/// process, or processes mapping one segment): the same code for both transports.
///
/// Buffer addresses are published relative to `addressBase` (0 for threads; the segment's
/// start for processes, which map it at different addresses).
final class RegionChannel<World: WaitingWorld & Sendable>: PeerMemoryChannel {
    let world: World
    let region: GroupRegion
    let members: [Int]
    let index: Int
    let label: String
    let kept: KeptBuffers
    let addressBase: UInt
    /// Whether futexes are shared between processes.
    let shared: Bool

    init(
        world: World, region: GroupRegion, members: [Int], index: Int, label: String, kept: KeptBuffers,
        addressBase: UInt, shared: Bool
    ) {
        self.world = world
        self.region = region
        self.members = members
        self.index = index
        self.label = label
        self.kept = kept
        self.addressBase = addressBase
        self.shared = shared
    }

    var memberCount: Int { region.memberCount }
    var sendsEagerly: Bool { true }
    func claimCall() -> Int { region.claimCall(member: index) }
    func ownSlot(call: Int) -> CallSlot { region.slot(index, call: call) }
    func slot(of i: Int) -> CallSlot { region.slot(i, call: region.currentCall(member: index)) }

    func address(of pointer: UnsafeRawPointer) -> UInt64 { UInt64(UInt(bitPattern: pointer) &- addressBase) }

    private func pointer(at address: UInt64) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(address) &+ addressBase)!
    }

    func input(of i: Int) -> UnsafeRawPointer {
        let slot = slot(of: i)
        return slot.isInline ? UnsafeRawPointer(slot.payload) : UnsafeRawPointer(pointer(at: slot.inputAddress))
    }

    func output(of i: Int) -> UnsafeMutableRawPointer? {
        let address = slot(of: i).outputAddress
        return address == CallSlot.noOutput ? nil : pointer(at: address)
    }

    func publish(call: Int) { region.arrive(member: index, call: call, shared: shared) }

    func waitArrival(call: Int, op: CollectiveOp) throws {
        try region.waitFor(nil, call: call, op: op, label: label, members: members, shared: shared, world: world)
    }

    func post(_ phase: Phase, call: Int) { region.post(member: index, phase, call: call, shared: shared) }

    func beat() { _ = fvd_atomic_add_u64(region.heartbeat(index), 1) }

    func wait(_ phase: Phase, call: Int, op: CollectiveOp) throws {
        try region.waitFor(phase, call: call, op: op, label: label, members: members, shared: shared, world: world)
    }

    func enter() -> Bool { region.enter(member: index) }
    func leave() { region.leave(member: index) }

    func keepAlive(input: TensorStorage, output: TensorStorage?) {
        kept.input = input
        kept.output = output
    }

    func release() {
        kept.input = nil
        kept.output = nil
    }

    func checkHealthy() throws {
        if let error = world.abortError { throw error }
    }

    func abort(_ error: FVDError) { world.abort(error, tellPeers: true) }
}

/// A world whose ranks are threads of this process: the embedded default backend.
///
/// With a blocking `body`, each rank runs on its own thread (never on the Swift
/// concurrency pool, where a blocked rank could starve the others); with an `async` one,
/// each rank is a child task whose collectives wait on their coordinators' threads (see
/// <doc:SwiftConcurrency>). Ranks exchange data by reading each other's buffers directly,
/// so every byte is copied once, into its final place.
///
/// ```swift
/// let outputs = try World.inProcess(size: 4).run { world in
///     let state = try ParallelState(world: world, tensorParallel: 2, sequenceParallel: 2)
///     return try state.tensorParallel.allReduce(x)
/// }
/// ```
public struct InProcessWorld: Sendable {
    /// Number of ranks.
    public let size: Int
    /// Seconds a rank waits for its peers in one collective before it throws
    /// ``FVDError/timeout(op:group:call:arrived:missing:seconds:)``.
    public let timeout: Double
    /// Failures injected into the ranks' collectives (see ``Fault``).
    public let faults: [Fault]

    /// Runs `body` once per rank, concurrently, and returns each rank's outcome.
    ///
    /// When a rank throws, the world is aborted: peers waiting in (or later entering)
    /// a collective throw ``FVDError/peerFailed(rank:message:)`` promptly. A rank that
    /// returns while its peers still wait for it makes them throw
    /// ``FVDError/peerExited(rank:op:group:)``.
    public func runEach<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) throws -> R) -> [Result<R, any Error>] {
        let ranks = RankRunner(self)
        let results = Locked<[Result<R, any Error>?]>(Array(repeating: nil, count: size))
        let done = DispatchGroup()
        for rank in 0..<size {
            done.enter()
            let thread = Thread {
                let outcome = ranks.finish(rank, Result { try body(ranks.worldGroup(rank)) })
                results.withLock { $0[rank] = outcome }
                done.leave()
            }
            thread.name = "fvd-rank-\(rank)"
            thread.stackSize = 8 << 20
            thread.start()
        }
        done.wait()
        return results.withLock { $0.map { $0! } }
    }

    /// Runs the asynchronous `body` once per rank, each rank a child task, and returns each
    /// rank's outcome; failures end the world as in ``runEach(_:)-5jdpu``.
    ///
    /// The ranks' collectives must be the `async` overloads (which suspend the task while
    /// the call runs on the coordinator's own thread): a blocking call would hold a thread of
    /// the cooperative pool, and with more ranks than it has threads the ranks left without
    /// one never arrive, so the others time out.
    public func runEach<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) async throws -> R) async -> [Result<R, any Error>] {
        let ranks = RankRunner(self)
        return await withTaskGroup(of: (Int, Result<R, any Error>).self) { tasks in
            for rank in 0..<size {
                tasks.addTask {
                    let outcome: Result<R, any Error>
                    do { outcome = .success(try await body(try ranks.worldGroup(rank))) } catch { outcome = .failure(error) }
                    return (rank, ranks.finish(rank, outcome))
                }
            }
            var results = [Result<R, any Error>?](repeating: nil, count: size)
            for await (rank, outcome) in tasks { results[rank] = outcome }
            return results.map { $0! }
        }
    }

    /// Runs `body` once per rank and returns the results in rank order.
    ///
    /// - Throws: the error of the rank that failed first in the chain of causes: the
    ///   lowest rank whose error is not merely a consequence of another rank's
    ///   failure (``FVDError/peerFailed(rank:message:)``, ``FVDError/peerExited(rank:op:group:)``).
    @discardableResult
    public func run<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) throws -> R) throws -> [R] {
        try Self.firstFailure(runEach(body))
    }

    /// Runs the asynchronous `body` once per rank, each rank a child task, and returns the
    /// results in rank order: ``run(_:)-7vkdf`` for Swift concurrency.
    ///
    /// ```swift
    /// let sums = try await World.inProcess(size: 8).run { group async throws -> [Float] in
    ///     let x = try Tensor(shape: [4], scalars: [Float](repeating: Float(group.rank), count: 4))
    ///     return try await group.allReduce(x).scalars(as: Float.self)
    /// }
    /// ```
    /// Use the `async` overloads of the collectives inside `body` (see
    /// ``runEach(_:)-17529`` and <doc:SwiftConcurrency>): ranks then take no thread of the
    /// cooperative pool while they wait, so any number of them run on any number of cores.
    /// - Throws: as the blocking form: the first error in the chain of causes.
    @discardableResult
    public func run<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) async throws -> R) async throws -> [R] {
        try Self.firstFailure(await runEach(body))
    }

    /// The results, or the error of the rank that failed first in the chain of causes: the
    /// lowest rank whose error is not merely a consequence of another rank's failure
    /// (``FVDError/peerFailed(rank:message:)``, ``FVDError/peerExited(rank:op:group:)``).
    private static func firstFailure<R>(_ results: [Result<R, any Error>]) throws -> [R] {
        let failures = results.compactMap { result -> (any Error)? in
            if case .failure(let e) = result { return e }
            return nil
        }
        if let first = failures.first {
            throw failures.first(where: { !isConsequence($0) }) ?? first
        }
        return results.map { try! $0.get() }
    }

    private static func isConsequence(_ error: any Error) -> Bool {
        switch error as? FVDError {
        case .peerFailed?, .peerExited?: return true
        default: return false
        }
    }
}

/// The world of one ``InProcessWorld`` run and what each rank does at its start and end,
/// shared by the thread and the task forms.
private struct RankRunner: Sendable {
    let state: InProcessWorldState
    let factory: any ChannelFactory

    init(_ world: InProcessWorld) {
        state = InProcessWorldState(size: world.size, timeout: world.timeout)
        factory = world.faults.isEmpty ? state : FaultInjectingFactory(wrapping: state, faults: world.faults, ranksAreProcesses: false)
    }

    /// Rank `rank`'s group of the whole world.
    func worldGroup(_ rank: Int) throws -> GroupCoordinator {
        try GroupCoordinator(name: "world", ranks: Array(0..<state.size), rank: rank, factory: factory)
    }

    /// Ends rank `rank` with `outcome`: a failure aborts the world, so that its peers throw
    /// ``FVDError/peerFailed(rank:message:)`` promptly; an injected exit leaves as a process
    /// would by exiting (its peers see it gone, not failed). Returns the rank's outcome.
    func finish<R>(_ rank: Int, _ outcome: Result<R, any Error>) -> Result<R, any Error> {
        defer { state.markExited(rank) }
        switch outcome {
        case .success: return outcome
        case .failure(let exit as InjectedExit): return .failure(FVDError.peerExited(rank: rank, op: exit.op, group: exit.group))
        case .failure(let error):
            state.abort(.peerFailed(rank: rank, message: String(describing: error)))
            return outcome
        }
    }
}

/// The most threads `World.inProcess` starts.
let maximumInProcessRanks = 1024

/// Entry points that create a world of ranks.
public enum World {
    /// A world of `size` ranks running as threads in this process.
    ///
    /// - Parameters:
    ///   - size: number of ranks, at least 1.
    ///   - timeout: seconds a collective waits for ranks that have not arrived, more than
    ///     0; default `FVD_TIMEOUT` or 300 (like NCCL's watchdog); `.infinity` (`inf`)
    ///     waits forever.
    ///   - faults: failures to inject (see ``Fault``); default those in `FVD_FAULTS`, or none.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a size outside `1...1024`, a
    ///   timeout that is not positive (zero, negative or NaN), a malformed `FVD_TIMEOUT`,
    ///   `FVD_TENSOR_CACHE_MB` or `FVD_FAULTS`, or a fault for a rank outside the world.
    public static func inProcess(size: Int, timeout: Double? = nil, faults: [Fault]? = nil) throws -> InProcessWorld {
        guard size >= 1 else { throw FVDError.invalidArgument("world size must be at least 1, got \(size)") }
        guard size <= maximumInProcessRanks else {
            throw FVDError.invalidArgument("world size \(size) is more than the \(maximumInProcessRanks) in-process ranks supported")
        }
        return InProcessWorld(
            size: size, timeout: try resolvedTimeout(timeout), faults: try resolvedFaults(faults, worldSize: size))
    }

    /// `timeout`, or `FVD_TIMEOUT`, or 300 seconds; also checks `FVD_TENSOR_CACHE_MB` and `FVD_FLIGHT_RECORDER_STDERR`,
    /// which every world reads (see ``StoragePool``).
    ///
    /// A timeout is a positive number of seconds or infinity (`inf` in the environment:
    /// no limit); zero is refused, since every collective would then fail at once.
    /// A set `FVD_TIMEOUT` is checked even when `timeout` overrides it, so that a
    /// malformed setting is never ignored without a word.
    static func resolvedTimeout(_ timeout: Double?) throws -> Double {
        _ = try StoragePool.limitFromEnvironment()
        _ = try FlightRecorder.printsOnBreakFromEnvironment()
        let fromEnvironment = try secondsFromEnvironment("FVD_TIMEOUT")
        if let timeout {
            guard timeout > 0 else {
                throw FVDError.invalidArgument("timeout must be a positive number of seconds (or infinity), got \(timeout)")
            }
            return timeout
        }
        return fromEnvironment ?? 300
    }

    /// The seconds in the environment variable `name`, or `nil` when it is unset: a
    /// positive number, or `inf` for no limit.
    /// - Throws: ``FVDError/invalidArgument(_:)`` naming the variable for anything else
    ///   (`abc`, `0`, `-5`, `nan`).
    static func secondsFromEnvironment(_ name: String) throws -> Double? {
        guard let text = ProcessInfo.processInfo.environment[name] else { return nil }
        guard let seconds = Double(text.trimmingCharacters(in: .whitespaces)), seconds > 0 else {
            throw FVDError.invalidArgument("\(name)=\(text) is not a positive number of seconds (or inf for no limit)")
        }
        return seconds
    }

    /// `faults`, or those in `FVD_FAULTS`, checked against the world size: the rank, and
    /// N of a group `tpN`, `spN` or `dpN` (a world of W ranks has at most W groups of each
    /// kind); an exit status must be one a process can exit with (0...255).
    static func resolvedFaults(_ faults: [Fault]?, worldSize: Int) throws -> [Fault] {
        let faults = try faults ?? Fault.fromEnvironment()
        if let fault = faults.first(where: { $0.rank >= worldSize }) {
            throw FVDError.invalidArgument("fault \(fault) names rank \(fault.rank) of a world of \(worldSize)")
        }
        for fault in faults {
            if case .exit(let status) = fault.action, !Fault.exitStatuses.contains(status) {
                throw FVDError.invalidArgument("fault \(fault): exit=\(status) is not an exit status in 0...255")
            }
            if let group = fault.group, let index = Fault.libraryGroupIndex(group), index >= worldSize {
                throw FVDError.invalidArgument("fault \(fault) names group \(group), which a world of \(worldSize) does not have")
            }
        }
        return faults
    }
}
