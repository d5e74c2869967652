#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import Synchronization

/// A failure to inject into one rank's collective call, for testing how code built on
/// the library behaves when a rank is late, lost, corrupt or dies.
///
/// Pass faults to ``World/inProcess(size:timeout:faults:)-(_,Double?,_)`` or
/// ``World/fromEnvironment(timeout:faults:)-(Double?,_)``, or set `FVD_FAULTS` (see
/// ``init(parsing:)``). They wrap the transport's endpoints, so they work the same on
/// every transport, and nothing is wrapped when there are none.
///
/// ```swift
/// // Rank 1 dies at its third collective: the others throw peerExited naming it.
/// let world = try World.inProcess(size: 4, faults: [Fault(.exit(status: 1), rank: 1, atCall: 2)])
/// ```
public struct Fault: Sendable, Hashable, CustomStringConvertible {
    /// What happens at the chosen call.
    public enum Action: Sendable, Hashable {
        /// The rank sleeps this many seconds before it arrives (late, or past the timeout).
        case delay(seconds: Double)
        /// The rank's arrival is lost, as if its message never reached the peers: every
        /// rank of the group, this one included, times out naming it.
        case drop
        /// The rank publishes a call header that cannot be its real call: every rank
        /// throws ``FVDError/operationMismatch(group:ranks:operations:)`` naming it.
        case corruptHeader
        /// The rank's code throws ``FVDError/invalidArgument(_:)`` ("injected failure …")
        /// instead of entering the call: its peers throw ``FVDError/peerFailed(rank:message:)``.
        case fail
        /// The rank's process exits with `status`, 0 through 255 (`exit`, so exit hooks run). In an
        /// in-process world the rank's thread leaves instead, and
        /// ``InProcessWorld/runEach(_:)-5jdpu`` reports ``FVDError/peerExited(rank:op:group:)``
        /// for it; its peers see a rank that left.
        case exit(status: Int32)
        /// The rank's process is killed by `SIGKILL` (no exit hooks). In an in-process
        /// world, the same as ``exit(status:)``.
        case kill
        /// The rank arrives, then stops inside the call before it reads its peers' data:
        /// its process stops itself with `SIGSTOP` (as a debugger or `kill -STOP` would);
        /// in an in-process world its thread waits until the group breaks. Its peers throw
        /// ``FVDError/stalled(op:group:call:phase:ranks:seconds:)`` naming it after the
        /// timeout, when they wait for it in a later phase of the call.
        case stall
    }

    /// What happens.
    public var action: Action
    /// The world rank it happens to.
    public var rank: Int
    /// Which call: the rank's count of collectives before it, over all its groups, or
    /// over `group` only when that is set (then it is the `call #` of errors).
    public var call: Int
    /// The name of the group whose calls `call` counts (`world`, `tp0`, `sp1`…), or `nil` for all.
    public var group: String?

    /// A fault: `action` on `rank`'s collective number `call` (0 is its first).
    public init(_ action: Action, rank: Int, atCall call: Int, group: String? = nil) {
        self.action = action
        self.rank = rank
        self.call = call
        self.group = group
    }

    /// `ACTION:rank=R:call=N[:group=G]`, the form ``init(parsing:)`` reads; ACTION is
    /// `delay=SECONDS`, `drop`, `corrupt`, `fail`, `exit=STATUS`, `kill` or `stall`.
    public var description: String {
        let action: String
        switch self.action {
        case .delay(let s): action = "delay=\(s)"
        case .drop: action = "drop"
        case .corruptHeader: action = "corrupt"
        case .fail: action = "fail"
        case .exit(let status): action = "exit=\(status)"
        case .kill: action = "kill"
        case .stall: action = "stall"
        }
        return "\(action):rank=\(rank):call=\(call)" + (group.map { ":group=\($0)" } ?? "")
    }

    /// Parses faults separated by commas, e.g. `delay=2:rank=1:call=3,kill:rank=2:call=0:group=tp0`.
    ///
    /// `exit=STATUS` takes a status a process can exit with, 0 through 255 (a larger one
    /// would reach the parent as its low 8 bits). `group=G` takes a name the library gives
    /// its groups: `world`, or `tpN`, `spN`, `dpN` (``ParallelState``'s groups, N counted
    /// from 0); a fault on a group that ``GroupCoordinator/subgroup(name:ranks:)`` named
    /// is made with ``init(_:rank:atCall:group:)`` instead. A world then also checks that
    /// N is below its size.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` naming the part that does not parse.
    public init(parsing text: String) throws {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func bad(_ why: String) -> FVDError {
            .invalidArgument("fault '\(text)': \(why); expected ACTION:rank=R:call=N[:group=G] with ACTION one of "
                + "delay=SECONDS, drop, corrupt, fail, exit=STATUS, kill, stall")
        }
        let head = fields[0].split(separator: "=", maxSplits: 1).map(String.init)
        let value = head.count == 2 ? head[1] : nil
        switch head.first ?? "" {
        case "delay":
            guard let s = value.flatMap(Double.init), s >= 0, s.isFinite else { throw bad("delay needs a number of seconds") }
            action = .delay(seconds: s)
        case "exit":
            guard let status = value.flatMap(Int32.init) else { throw bad("exit needs a status") }
            guard Self.exitStatuses.contains(status) else { throw bad("exit=\(status) is not an exit status in 0...255") }
            action = .exit(status: status)
        case let name where value != nil && ["drop", "corrupt", "fail", "kill", "stall"].contains(name):
            throw bad("\(name) takes no value")
        case "drop": action = .drop
        case "corrupt": action = .corruptHeader
        case "fail": action = .fail
        case "kill": action = .kill
        case "stall": action = .stall
        default: throw bad("unknown action '\(fields[0])'")
        }
        var rank: Int?, call: Int?, group: String?
        for field in fields.dropFirst() {
            let pair = field.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { throw bad("'\(field)' is not KEY=VALUE") }
            func count() throws -> Int {
                guard let n = Int(pair[1]), n >= 0 else { throw bad("'\(field)' needs a non-negative integer") }
                return n
            }
            switch pair[0] {
            case "rank": rank = try count()
            case "call": call = try count()
            case "group":
                guard Self.isLibraryGroupName(pair[1]) else {
                    throw bad("unknown group '\(pair[1])' (use world, or tpN, spN or dpN as ParallelState names its groups)")
                }
                group = pair[1]
            default: throw bad("unknown key '\(pair[0])'")
            }
        }
        guard let rank, let call else { throw bad("rank and call are required") }
        self.rank = rank
        self.call = call
        self.group = group
    }

    /// The statuses ``Action/exit(status:)`` takes: those a process can exit with.
    static let exitStatuses: ClosedRange<Int32> = 0...255

    /// Whether `name` is one the library gives its groups: `world`, `tpN`, `spN` or `dpN`.
    static func isLibraryGroupName(_ name: String) -> Bool {
        name == "world" || libraryGroupIndex(name) != nil
    }

    /// N of a group named `tpN`, `spN` or `dpN` (decimal, no sign or leading zero), else `nil`.
    static func libraryGroupIndex(_ name: String) -> Int? {
        guard ["tp", "sp", "dp"].contains(where: name.hasPrefix) else { return nil }
        let digits = name.dropFirst(2)
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
            digits == "0" || !digits.hasPrefix("0")
        else { return nil }
        return Int(digits)
    }

    /// The faults listed in `FVD_FAULTS`, separated by commas (none when unset or empty).
    static func fromEnvironment() throws -> [Fault] {
        guard let text = ProcessInfo.processInfo.environment["FVD_FAULTS"], !text.isEmpty else { return [] }
        return try text.split(separator: ",").map { try Fault(parsing: String($0)) }
    }
}

/// Thrown inside an in-process rank by ``Fault/Action/exit(status:)`` and
/// ``Fault/Action/kill``: the rank leaves its world as a process would by exiting.
struct InjectedExit: Error, CustomStringConvertible {
    let rank: Int
    let op: String
    let group: String
    var description: String { "rank \(rank) left the world at \(op) in group \(group) (injected fault)" }
}

/// Wraps a transport's channel factory so that its channels inject `faults`.
///
/// The rank-wide call count is kept per world rank, so one factory serves every rank
/// of an in-process world.
final class FaultInjectingFactory: ChannelFactory {
    let inner: any ChannelFactory
    let faults: [Fault]
    /// True when ranks are processes: `exit` and `kill` end the process.
    let ranksAreProcesses: Bool
    private let counts = Locked<[Int: Int]>([:])

    init(wrapping inner: any ChannelFactory, faults: [Fault], ranksAreProcesses: Bool) {
        self.inner = inner
        self.faults = faults
        self.ranksAreProcesses = ranksAreProcesses
    }

    func makeChannel(name: String, members: [Int], rank: Int) throws -> any PeerMemoryChannel {
        wrap(try inner.makeChannel(name: name, members: members, rank: rank), name: name, rank: rank)
    }

    func makePointToPointChannel(group: String, groupMembers: [Int], source: Int, destination: Int, rank: Int) throws
        -> any PeerMemoryChannel
    {
        let channel = try inner.makePointToPointChannel(
            group: group, groupMembers: groupMembers, source: source, destination: destination, rank: rank)
        return wrap(channel, name: pointToPointName(group: group, source: source, destination: destination), rank: rank)
    }

    private func wrap(_ channel: any PeerMemoryChannel, name: String, rank: Int) -> any PeerMemoryChannel {
        let mine = faults.filter { $0.rank == rank && ($0.group == nil || $0.group == name) }
        return mine.isEmpty ? channel : FaultInjectingChannel(wrapping: channel, group: name, faults: mine, factory: self)
    }

    func flightRecorder(rank: Int) -> FlightRecorder { inner.flightRecorder(rank: rank) }

    /// Throws if a fault names a group `tpN`, `spN` or `dpN` that `layout` does not have,
    /// or one its rank is not a member of: it would never fire. `ranks` are the world ranks
    /// of the layout's positions 0..<worldSize.
    func checkGroups(of layout: GroupLayout, ranks: [Int]) throws {
        let groups = ["tp": layout.tensorParallelGroups, "sp": layout.sequenceParallelGroups, "dp": layout.dataParallelGroups]
        for fault in faults {
            let kind = String(fault.group?.prefix(2) ?? "")
            guard let group = fault.group, let index = Fault.libraryGroupIndex(group), let all = groups[kind] else { continue }
            let shape = "world \(layout.worldSize) with tp \(layout.tensorParallelSize), sp \(layout.sequenceParallelSize)"
            guard index < all.count else {
                throw FVDError.invalidArgument("fault \(fault) names group \(group), but \(shape) has \(kind)0...\(kind)\(all.count - 1)")
            }
            let members = all[index].map { ranks[$0] }
            guard members.contains(fault.rank) || !ranks.contains(fault.rank) else {
                throw FVDError.invalidArgument(
                    "fault \(fault) names group \(group), but in \(shape) rank \(fault.rank) is not in \(group) \(members)")
            }
        }
    }

    /// The rank-wide number of `rank`'s call that is starting now.
    func nextSequence(of rank: Int) -> Int {
        counts.withLock { counts in
            defer { counts[rank, default: 0] += 1 }
            return counts[rank, default: 0]
        }
    }
}

/// A channel that forwards to another and injects its rank's faults at their calls, when
/// it publishes its slot (the call's arrival).
final class FaultInjectingChannel: PeerMemoryChannel {
    let inner: any PeerMemoryChannel
    let group: String
    let faults: [Fault]
    let factory: FaultInjectingFactory
    /// A `stall` fault matched the call just published: stop in ``exchangeData()``.
    private let stallPending = Atomic<Bool>(false)

    init(wrapping inner: any PeerMemoryChannel, group: String, faults: [Fault], factory: FaultInjectingFactory) {
        self.inner = inner
        self.group = group
        self.faults = faults
        self.factory = factory
    }

    var members: [Int] { inner.members }
    var index: Int { inner.index }
    var memberCount: Int { inner.memberCount }
    var sendsEagerly: Bool { inner.sendsEagerly }
    var label: String { inner.label }

    func claimCall() -> Int { inner.claimCall() }
    func ownSlot(call: Int) -> CallSlot { inner.ownSlot(call: call) }

    func publish(call: Int) throws {
        let rank = members[index]
        let sequence = factory.nextSequence(of: rank)
        let slot = inner.ownSlot(call: call)
        var dropped = false
        for fault in faults where fault.call == (fault.group == nil ? sequence : call) {
            switch fault.action {
            case .delay(let seconds):
                // In slices: when the peers give up on this rank meanwhile (their timeout breaks
                // the group), it stops sleeping and sees their error, as a real slow rank would
                // at its next wait; the process or thread does not outlive the failed job.
                let (sum, overflow) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(timeoutNanoseconds(seconds))
                try sleepWhileHealthy(until: overflow ? UInt64.max : sum)
            case .drop:
                dropped = true
            case .corruptHeader:
                slot.corrupt()
            case .fail:
                throw FVDError.invalidArgument("injected failure on rank \(rank) at \(slot.op.name) in group \(label) (call #\(call))")
            case .exit(let status):
                if factory.ranksAreProcesses { Foundation.exit(status) }
                throw InjectedExit(rank: rank, op: slot.op.name, group: label)
            case .kill:
                if factory.ranksAreProcesses { _ = kill(getpid(), SIGKILL) }
                throw InjectedExit(rank: rank, op: slot.op.name, group: label)
            case .stall:
                stallPending.store(true, ordering: .relaxed)
            }
        }
        // A dropped arrival: as if the message never reached the peers.
        if !dropped { try inner.publish(call: call) }
    }

    func slot(of i: Int) -> CallSlot { inner.slot(of: i) }
    func address(of pointer: UnsafeRawPointer) -> UInt64 { inner.address(of: pointer) }
    func input(of i: Int) -> UnsafeRawPointer { inner.input(of: i) }
    func output(of i: Int) -> UnsafeMutableRawPointer? { inner.output(of: i) }
    func waitArrival(call: Int, op: CollectiveOp) throws { try inner.waitArrival(call: call, op: op) }
    func exchangeData() throws {
        if stallPending.exchange(false, ordering: .relaxed) {
            if factory.ranksAreProcesses { _ = kill(getpid(), SIGSTOP) }
            // A thread cannot be stopped alone: it waits until its peers give up on it.
            try sleepWhileHealthy(until: .max)
        }
        try inner.exchangeData()
    }

    /// Sleeps in slices of at most 10 ms until `end` (uptime nanoseconds), throwing the
    /// world's error as soon as the group breaks (the peers gave up on this rank).
    private func sleepWhileHealthy(until end: UInt64) throws {
        while case let now = DispatchTime.now().uptimeNanoseconds, now < end {
            try inner.checkHealthy()
            usleep(UInt32(min(end - now, 10_000_000) / 1000))
        }
    }
    func post(_ phase: Phase, call: Int) { inner.post(phase, call: call) }
    func beat() { inner.beat() }
    func wait(_ phase: Phase, call: Int, op: CollectiveOp) throws { try inner.wait(phase, call: call, op: op) }
    func enter() -> Bool { inner.enter() }
    func leave() { inner.leave() }
    func keepAlive(input: TensorStorage, output: TensorStorage?) { inner.keepAlive(input: input, output: output) }
    func release() { inner.release() }
    func checkHealthy() throws { try inner.checkHealthy() }
    func abort(_ error: FVDError) { inner.abort(error) }
    func pullByMessages(into destination: UnsafeMutableRawPointer, plan: (Int, Int) -> StridedCopy) throws -> Bool {
        try inner.pullByMessages(into: destination, plan: plan)
    }
    func reduceByMessages(
        _ op: ReduceOp, dtype: DType, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
    ) throws -> Bool {
        try inner.reduceByMessages(op, dtype: dtype, input: input, output: output, count: count)
    }
}
