import CFVDShims
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The words a group synchronises on: a wake sequence, a sleeper count and one
/// progress counter per member, each on its own cache line.
///
/// Invariant: `base` points to `SyncWords.byteCount(members:)` bytes, zeroed before
/// first use, that live as long as this object: heap memory it owns, or a region of a
/// shared mapping that outlives it. All access goes through the C11 atomics in CFVDShims.
final class SyncWords: @unchecked Sendable {
    static let line = 64
    /// How long a waiter spins before it yields and then sleeps.
    let spinNanoseconds: UInt64 = 250_000
    let base: UnsafeMutableRawPointer
    let memberCount: Int
    private let owned: Bool

    static func byteCount(members: Int) -> Int { (members + 1) * line }

    /// Words on the heap, for ranks that are threads of one process.
    init(members: Int) {
        memberCount = members
        let bytes = SyncWords.byteCount(members: members)
        base = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: SyncWords.line)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        owned = true
    }

    /// Words at `base` in a shared mapping (zero-filled when the segment was created).
    init(members: Int, at base: UnsafeMutableRawPointer) {
        memberCount = members
        self.base = base
        owned = false
    }

    deinit { if owned { base.deallocate() } }

    /// Bumped (and futex-woken) on every post, abort and exit.
    var sequence: UnsafeMutablePointer<UInt32> { base.assumingMemoryBound(to: UInt32.self) }
    /// Number of threads sleeping on `sequence`; posts skip the wake syscall when 0.
    var sleepers: UnsafeMutablePointer<UInt32> { (base + 4).assumingMemoryBound(to: UInt32.self) }
    /// Member `i`'s progress: `call × 4 + phase + 1` of the last phase it posted.
    func progress(_ i: Int) -> UnsafeMutablePointer<UInt64> {
        (base + (i + 1) * SyncWords.line).assumingMemoryBound(to: UInt64.self)
    }

    static func target(call: Int, phase: Phase) -> UInt64 { UInt64(call) * 4 + UInt64(phase.rawValue) + 1 }

    /// The call member `i` starts next: its progress is `0` or `call × 4 + 3` (done) between calls.
    func nextCall(member i: Int) -> Int { Int((fvd_atomic_load_u64(progress(i)) + 1) / 4) }

    func post(member i: Int, value: UInt64, shared: Bool) {
        fvd_atomic_store_u64(progress(i), value)
        wake(shared: shared)
    }

    func wake(shared: Bool) {
        fvd_atomic_add_u32(sequence, 1)
        if fvd_atomic_load_u32(sleepers) > 0 {
            _ = fvd_futex_wake(sequence, Int32.max, shared ? 1 : 0)
        }
    }

    /// Members whose progress is below `target`.
    func missing(below target: UInt64) -> [Int] {
        (0..<memberCount).filter { fvd_atomic_load_u64(progress($0)) < target }
    }

    func allReached(_ target: UInt64) -> Bool {
        for i in 0..<memberCount where fvd_atomic_load_u64(progress(i)) < target { return false }
        return true
    }

    /// Waits until every member's progress reaches `target`.
    ///
    /// Spins briefly when the waiters fit on the cores, then yields a few times, then
    /// sleeps on a futex (so 8 ranks on 2 cores stay fast). `check` runs before each
    /// sleep and throws to abandon the wait (abort, peer exit); returns `false` at the
    /// deadline.
    func wait(
        for target: UInt64, spin: Bool, shared: Bool, deadline: UInt64, check: () throws -> Void
    ) rethrows -> Bool {
        if allReached(target) { return true }
        if spin {
            // Bounded by time, not iterations: a `pause` costs 10–150 cycles depending on the
            // CPU, and a peer that is descheduled (other load on the cores) would otherwise
            // cost each wait a millisecond of spinning.
            let spinUntil = DispatchTime.now().uptimeNanoseconds &+ spinNanoseconds
            var i = 0
            while true {
                fvd_cpu_relax()
                if allReached(target) { return true }
                i &+= 1
                if i & 63 == 0 {
                    if DispatchTime.now().uptimeNanoseconds > spinUntil { break }
                    if i & 1023 == 0 { try check() }
                }
            }
        }
        for _ in 0..<(spin ? 16 : 4) {
            sched_yield()
            if allReached(target) { return true }
        }
        while true {
            let seen = fvd_atomic_load_u32(sequence)
            if allReached(target) { return true }
            try check()
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return allReached(target) }
            // Sleep at most 50 ms so that a missed wake can only delay, never hang.
            let slice = Int64(min(deadline - now, 50_000_000))
            fvd_atomic_add_u32(sleepers, 1)
            if !allReached(target) {
                _ = fvd_futex_wait(sequence, seen, slice, shared ? 1 : 0)
            }
            fvd_atomic_sub_u32(sleepers, 1)
        }
    }
}

/// What a channel's wait needs to know about its world.
protocol WaitingWorld: AnyObject {
    var timeoutNanoseconds: UInt64 { get }
    var spin: Bool { get }
    /// The error that ends this rank's use of the world, if any.
    var abortError: FVDError? { get }
    /// World ranks among `ranks` that have left (finished, failed or died).
    func goneRanks(among ranks: [Int]) -> [Int]
    /// Records `error` as this rank's end of the world; `tellPeers` for errors the
    /// others cannot see for themselves (a timeout), not for a peer's exit.
    func abort(_ error: FVDError, tellPeers: Bool)
}

extension SyncWords {
    /// Blocks until every member reached `phase` of `call`, for ``PeerMemoryChannel/wait(_:call:op:)``.
    ///
    /// Only `.arrived` has a deadline. Throws the world's abort error, ``FVDError/peerExited(rank:op:group:)``
    /// for a member that left while still missing, or ``FVDError/timeout(op:group:call:arrived:missing:seconds:)``.
    func waitForPhase(
        _ phase: Phase, call: Int, op: String, label: String, members: [Int], shared: Bool, world: some WaitingWorld
    ) throws {
        let target = SyncWords.target(call: call, phase: phase)
        let (sum, overflow) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(world.timeoutNanoseconds)
        let deadline = phase == .arrived && !overflow ? sum : .max
        let reached = try wait(for: target, spin: world.spin, shared: shared, deadline: deadline) {
            if let error = world.abortError { throw error }
            // Read who left first: a rank's last posts come before it leaves, so one that
            // posted and then left is not mistaken for a missing one.
            let gone = world.goneRanks(among: members)
            let missing = self.missing(below: target).map { members[$0] }
            if let rank = gone.first(where: missing.contains) {
                if let error = world.abortError { throw error }  // it failed rather than finished
                let error = FVDError.peerExited(rank: rank, op: op, group: label)
                world.abort(error, tellPeers: false)
                throw error
            }
        }
        if !reached {
            let missing = self.missing(below: target).map { members[$0] }
            let error = FVDError.timeout(
                op: op, group: label, call: call, arrived: members.filter { !missing.contains($0) }, missing: missing,
                seconds: Double(world.timeoutNanoseconds) / 1e9)
            world.abort(error, tellPeers: true)
            throw error
        }
    }
}
