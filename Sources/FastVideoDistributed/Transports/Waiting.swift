import CFVDShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The later phases of one collective call, after every member has arrived (published its
/// ``CallSlot``). Each is a rendezvous of the whole group.
enum Phase: Int {
    /// The rank's share of a reduction is in its output (the large all-reduce only).
    case reduced = 1
    /// The rank has finished reading its peers' buffers (calls whose data is read in place).
    case done = 2
}

/// The memory one group synchronises through, on a transport whose ranks share memory:
/// a wake word, one line per member, and two ``CallSlot``s per member that alternate with
/// the call's parity.
///
/// Why two slots are enough: a member writes its slot for call `c + 2` only after every
/// member arrived at `c + 1`, and a member arrives at `c + 1` only after it finished
/// reading everything of call `c`. So a call whose data travels inline needs a single
/// rendezvous.
///
/// Layout: line 0 holds the wake sequence (u32 at 0) and the sleeper count (u32 at 4);
/// line `1 + i` member `i`'s progress (u64 at 0: `(call + 1) × 4 + phase` of its last
/// posted phase), its call count (u64 at 8: calls it has started), its busy flag (u64
/// at 16) and its heartbeat (u64 at 24: bumped while it copies or reduces large data);
/// then the slots,
/// member `i`'s for parity `p` at `slotsOffset + (2i + p) × CallSlot.byteCount`.
///
/// Invariant: `base` points to ``byteCount(members:)`` zeroed bytes that live as long as
/// this object: memory it maps itself, or a region of a shared mapping that outlives it.
/// Words that other threads or processes read are accessed through the C11 atomics of CFVDShims.
final class GroupRegion: @unchecked Sendable {
    static let line = 64
    let base: UnsafeMutableRawPointer
    let memberCount: Int
    private let ownedBytes: Int

    static func slotsOffset(members: Int) -> Int { (members + 1) * line }
    static func byteCount(members: Int) -> Int { slotsOffset(members: members) + 2 * members * CallSlot.byteCount }

    /// A region of its own (anonymous memory, zero until touched), for ranks that are
    /// threads of one process.
    init(members: Int) {
        memberCount = members
        ownedBytes = Self.byteCount(members: members)
        let mapped = mmap(nil, ownedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            // Out of address space is not something a caller can act on.
            fatalError("cannot map \(ownedBytes) bytes for a group of \(members) ranks")
        }
        base = mapped
    }

    /// The region at `base` in a shared mapping (zero-filled when the segment was created).
    init(members: Int, at base: UnsafeMutableRawPointer) {
        memberCount = members
        self.base = base
        ownedBytes = 0
    }

    deinit { if ownedBytes > 0 { munmap(base, ownedBytes) } }

    /// Bumped (and futex-woken) when a post finds sleepers, and on every abort and exit.
    var sequence: UnsafeMutablePointer<UInt32> { base.assumingMemoryBound(to: UInt32.self) }
    /// Number of threads sleeping on `sequence`; posts skip the wake when it is 0.
    var sleepers: UnsafeMutablePointer<UInt32> { (base + 4).assumingMemoryBound(to: UInt32.self) }
    func progress(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + (i + 1) * Self.line).assumingMemoryBound(to: UInt64.self)
    }
    /// Member `i`'s heartbeat: bumped every few MB of a large copy or reduction, so that
    /// its peers can tell a slow member (it beats) from a stalled one (it does not).
    func heartbeat(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + (i + 1) * Self.line + 24).assumingMemoryBound(to: UInt64.self)
    }

    /// The sum of every member's progress and heartbeat words: both only grow, so the sum
    /// changes whenever any member posts a phase or beats (a waiting member does neither).
    func activity() -> UInt64 {
        var sum: UInt64 = 0
        for i in 0..<memberCount { sum &+= fvd_atomic_load_u64(progress(i)) &+ fvd_atomic_load_u64(heartbeat(i)) }
        return sum
    }

    /// Member `i`'s count of started calls; written only by member `i`.
    func callCount(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + (i + 1) * Self.line + 8).assumingMemoryBound(to: UInt64.self)
    }
    func slot(_ i: Int, call: Int) -> CallSlot {
        CallSlot(base + Self.slotsOffset(members: memberCount) + (2 * i + (call & 1)) * CallSlot.byteCount)
    }

    /// Halves the spin budget (below 4 µs: none) when the peer needed this core, else
    /// doubles it (from at least 4 µs) up to the most.
    static func adapt(_ budget: UnsafeMutablePointer<UInt32>, peerNeededThisCore: Bool) {
        let value = budget.pointee
        budget.pointee = peerNeededThisCore
            ? (value < 4_000 ? 0 : value / 2)
            : min(FVD_SPIN_BUDGET_MAX_NS, max(4_000, value &* 2))
    }

    /// How long a waiter of an oversubscribed world yields before it sleeps.
    static let yieldNanoseconds: UInt64 = 200_000

    static func target(call: Int, phase: Phase) -> UInt64 { UInt64(call + 1) * 4 + UInt64(phase.rawValue) }

    /// Claims member `i`'s next call number.
    func claimCall(member i: Int) -> Int {
        let call = fvd_atomic_load_u64(callCount(i))
        fvd_atomic_store_u64(callCount(i), call + 1)
        return Int(call)
    }

    /// The call member `i` runs now (during a call) or ran last.
    func currentCall(member i: Int) -> Int { Int(fvd_atomic_load_u64(callCount(i))) - 1 }

    /// Member `i`'s claim on its endpoint (u64 at 16 of its line): one call at a time.
    private func busy(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + (i + 1) * Self.line + 16).assumingMemoryBound(to: UInt64.self)
    }

    /// Claims member `i`'s endpoint for one call; `false` if another thread holds it.
    func enter(member i: Int) -> Bool { fvd_atomic_cas_u64(busy(i), 0, 1) != 0 }
    func leave(member i: Int) { fvd_atomic_store_u64(busy(i), 0) }

    /// Makes member `i`'s slot of `call` visible: its arrival.
    func arrive(member i: Int, call: Int, shared: Bool) {
        fvd_atomic_store_u64(slot(i, call: call).arrivalWord, UInt64(call + 1))
        wakeIfSleeping(shared: shared)
    }

    func post(member i: Int, _ phase: Phase, call: Int, shared: Bool) {
        fvd_atomic_store_u64(progress(i), Self.target(call: call, phase: phase))
        wakeIfSleeping(shared: shared)
    }

    /// After a store a waiter may be sleeping on: wake it. The fence orders the store before
    /// the read of `sleepers` (a waiter counts itself before it last checks), so no wake is lost.
    private func wakeIfSleeping(shared: Bool) {
        fvd_fence()
        if fvd_atomic_load_u32(sleepers) > 0 { wake(shared: shared) }
    }

    func wake(shared: Bool) {
        fvd_atomic_add_u32(sequence, 1)
        _ = fvd_futex_wake(sequence, Int32.max, shared ? 1 : 0)
    }

    func hasArrived(_ i: Int, call: Int) -> Bool { fvd_atomic_load_u64(slot(i, call: call).arrivalWord) == UInt64(call + 1) }

    func allArrived(call: Int) -> Bool {
        for i in 0..<memberCount where !hasArrived(i, call: call) { return false }
        return true
    }

    func allReached(_ target: UInt64) -> Bool {
        for i in 0..<memberCount where fvd_atomic_load_u64(progress(i)) < target { return false }
        return true
    }

    /// Members that have not arrived at `call`, or not reached `phase` of it.
    func missing(call: Int, phase: Phase?) -> [Int] {
        guard let phase else { return (0..<memberCount).filter { !hasArrived($0, call: call) } }
        let target = Self.target(call: call, phase: phase)
        return (0..<memberCount).filter { fvd_atomic_load_u64(progress($0)) < target }
    }

    /// Blocks until `condition` holds.
    ///
    /// When the waiters fit on the cores it spins: 256 `pause`s by count (about 6 µs,
    /// which covers a peer that is already on its way), then by the clock for the thread's
    /// spin budget (at most 200 µs), then yields for 20 µs. In an oversubscribed world it
    /// only yields, for 200 µs (the ranks sharing a core need the switches; a futex sleep
    /// and wake costs more). Then it sleeps on the futex in slices of at most 50 ms (so a
    /// lost wake could only delay). `check` runs every few hundred spins, every 16 yields
    /// and before each sleep, and throws to abandon the wait (abort, peer exit). Returns
    /// `false` when `timeout` (nanoseconds, counted from the first sleep) has passed.
    ///
    /// The spin budget adapts, per thread, to whether spinning can work: a wait that ends
    /// right after a yield that gave the CPU away (it took more than 3 µs) had a peer that
    /// needed this CPU (the scheduler put two ranks on one CPU for a while, which a spin
    /// only prolongs), so the budget halves, down to none; a wait that ends after yields
    /// that returned at once, or in a sleep, had a peer that was merely late, so the budget
    /// doubles back, up to 200 µs. A thread whose budget went to none skips the pauses
    /// too. Without this, two ranks that share a CPU pay the whole spin at every
    /// rendezvous.
    func wait(
        until condition: () -> Bool, spin: Bool, shared: Bool, timeout: UInt64, check: () throws -> Void
    ) rethrows -> Bool {
        if condition() { return true }
        let budget: UnsafeMutablePointer<UInt32>? = spin ? fvd_thread_spin_budget() : nil
        if let budget {
            // A budget spent to none means the peer shares this CPU: not even the pauses.
            if budget.pointee > 0 {
                for _ in 1...256 {
                    fvd_cpu_relax()
                    if condition() { return true }
                }
            }
            try check()
            let spinUntil = fvd_now_ns() &+ UInt64(budget.pointee)
            while fvd_now_ns() < spinUntil {
                for _ in 0..<256 {
                    fvd_cpu_relax()
                    if condition() { return true }
                }
                try check()
            }
        }
        // Yield to the ranks that share this core (oversubscribed worlds) before sleeping:
        // a futex sleep and wake cost more than the switches a collective needs.
        let yieldUntil = fvd_now_ns() &+ (spin ? 20_000 : Self.yieldNanoseconds)
        var yields = 0
        while true {
            let yieldStart = budget == nil ? 0 : fvd_now_ns()
            sched_yield()
            yields &+= 1
            if condition() {
                // A yield that took microseconds ran another thread on this CPU: the peer
                // this wait needed, as the condition now holds.
                if let budget { Self.adapt(budget, peerNeededThisCore: fvd_now_ns() &- yieldStart > 3_000) }
                return true
            }
            if yields & 15 == 0 {
                try check()
                if fvd_now_ns() > yieldUntil { break }
            }
        }
        if let budget { Self.adapt(budget, peerNeededThisCore: false) }
        let (sum, overflow) = fvd_now_ns().addingReportingOverflow(timeout)
        let deadline = overflow ? UInt64.max : sum
        while true {
            fvd_atomic_add_u32(sleepers, 1)
            let seen = fvd_atomic_load_u32(sequence)
            if condition() {
                fvd_atomic_sub_u32(sleepers, 1)
                return true
            }
            do { try check() } catch {
                fvd_atomic_sub_u32(sleepers, 1)
                throw error
            }
            let now = fvd_now_ns()
            if now >= deadline {
                fvd_atomic_sub_u32(sleepers, 1)
                return condition()
            }
            _ = fvd_futex_wait(sequence, seen, Int64(min(deadline - now, 50_000_000)), shared ? 1 : 0)
            fvd_atomic_sub_u32(sleepers, 1)
        }
    }
}

/// What a channel's wait needs to know about its world.
protocol WaitingWorld: AnyObject {
    var timeoutNanoseconds: UInt64 { get }
    var spin: Bool { get }
    /// The error that ends this rank's use of the world, if any (cheap when there is none).
    var abortError: FVDError? { get }
    /// World ranks among `ranks` that have left (finished, failed or died).
    func goneRanks(among ranks: [Int]) -> [Int]
    /// Records `error` as this rank's end of the world; `tellPeers` for errors the
    /// others cannot see for themselves (a timeout), not for a peer's exit.
    func abort(_ error: FVDError, tellPeers: Bool)
}

extension GroupRegion {
    /// Blocks until every member arrived at `call` (`phase` nil) or reached `phase` of it,
    /// for ``PeerMemoryChannel/waitArrival(call:op:)`` and ``PeerMemoryChannel/wait(_:call:op:)``.
    ///
    /// The arrival has a deadline: the timeout. A later phase waits for ranks already
    /// inside the call, for as long as they make progress: it throws only when a missing
    /// member's progress and heartbeat words stayed the same for a whole timeout (a copy
    /// slower than the timeout goes on while it beats). Throws the world's abort error,
    /// ``FVDError/peerExited(rank:op:group:)`` for a member that left while still missing,
    /// ``FVDError/timeout(op:group:call:arrived:missing:seconds:)`` at the arrival, or
    /// ``FVDError/stalled(op:group:call:phase:ranks:seconds:)`` in a later phase.
    func waitFor(
        _ phase: Phase?, call: Int, op: CollectiveOp, label: String, members: [Int], shared: Bool, world: some WaitingWorld
    ) throws {
        var activity = phase == nil ? 0 : self.activity()  // the arrival is timed, not watched for progress
        while true {
            if try waitOnce(phase, call: call, op: op, label: label, members: members, shared: shared, world: world) {
                return
            }
            guard let phase else { break }
            let missing = self.missing(call: call, phase: phase)
            let now = self.activity()
            if now == activity {
                let error = FVDError.stalled(
                    op: op.name, group: label, call: call, phase: phase.activity, ranks: missing.map { members[$0] },
                    seconds: Double(world.timeoutNanoseconds) / 1e9)
                world.abort(error, tellPeers: true)
                throw error
            }
            activity = now  // slow, not stalled: another timeout from here
        }
        let missing = self.missing(call: call, phase: phase).map { members[$0] }
        let error = FVDError.timeout(
            op: op.name, group: label, call: call, arrived: members.filter { !missing.contains($0) }, missing: missing,
            seconds: Double(world.timeoutNanoseconds) / 1e9)
        world.abort(error, tellPeers: true)
        throw error
    }

    /// One wait of ``waitFor(_:call:op:label:members:shared:world:)``, up to the timeout;
    /// false when it passed.
    /// (The condition is a closure literal here: one kept in a variable may be allocated.)
    @inline(__always)
    private func waitOnce(
        _ phase: Phase?, call: Int, op: CollectiveOp, label: String, members: [Int], shared: Bool, world: some WaitingWorld
    ) throws -> Bool {
        let target = phase.map { Self.target(call: call, phase: $0) } ?? 0
        return try wait(
            until: { phase == nil ? self.allArrived(call: call) : self.allReached(target) }, spin: world.spin, shared: shared,
            timeout: world.timeoutNanoseconds
        ) {
            if let error = world.abortError { throw error }
            // Read who left first: a rank's last posts come before it leaves, so one that
            // posted and then left is not mistaken for a missing one.
            let gone = world.goneRanks(among: members)
            if gone.isEmpty { return }
            let missing = self.missing(call: call, phase: phase).map { members[$0] }
            if let rank = gone.first(where: missing.contains) {
                if let error = world.abortError { throw error }  // it failed rather than finished
                let error = FVDError.peerExited(rank: rank, op: op.name, group: label)
                world.abort(error, tellPeers: false)
                throw error
            }
        }
    }
}

extension Phase {
    /// What a member that has not reached this phase is doing, for error messages.
    var activity: String {
        switch self {
        case .reduced: "reducing its share, phase 'reduced'"
        case .done: "reading its peers' data, phase 'done'"
        }
    }
}
