import CFVDAllocationCounter
import CFVDShims
import Foundation
import Testing

@testable import FastVideoDistributed

/// Whether this build counts allocations (not under a sanitizer, whose runtime owns malloc).
private let countsAllocations = fvd_test_thread_allocations() != UInt64.max

/// Whether the library is optimized: what the hot path promises holds for the code users
/// run (`-c release`); a debug build boxes closures and values the optimizer keeps on the
/// stack. `swift test -c release --filter HotPathTests` runs the check (CI does).
#if DEBUG
private let optimized = false
#else
private let optimized = true
#endif

@Suite("The hot path of small collectives")
struct HotPathTests {
    @Test("the counter sees this thread's allocations", .enabled(if: countsAllocations))
    func counterCounts() {
        let before = fvd_test_thread_allocations()
        let array = [Int](repeating: 7, count: 1000 + Int(before % 3))
        #expect(fvd_test_thread_allocations() > before)
        #expect(array.count >= 1000)
    }

    @Test(
        "10,000 steady-state 8-byte calls allocate nothing, but the out-of-place forms their output tensor",
        .enabled(if: countsAllocations && optimized, "needs an optimized build without a sanitizer"))
    func noAllocations() throws {
        let calls = 10_000
        let counts = try World.inProcess(size: 2, timeout: 60).run { group -> [UInt64] in
            let peer = 1 - group.rankInGroup
            var x = Tensor([Float(group.rank), 1])
            var gathered = try Tensor(zeros: [4], dtype: .float32)
            var scattered = try Tensor(zeros: [1], dtype: .float32)
            let heads = try Tensor(zeros: [1, 1, 2, 1], dtype: .float32)
            var exchanged = try Tensor(zeros: [1, 2, 1, 1], dtype: .float32)
            var received = Tensor([Float(0), 0])
            let steps: [() throws -> Void] = [
                { try group.allReduce(inPlace: &x) },
                { _ = try group.allReduce(x) },
                { try group.barrier() },
                { try group.allGather(inPlace: &gathered) },
                { try group.broadcast(inPlace: &x) },
                { try group.reduceScatter(x, into: &scattered) },
                { try group.allToAll4D(heads, into: &exchanged) },
                {
                    if peer == 1 {
                        try group.send(x, to: peer)
                        try group.recv(into: &received, from: peer)
                    } else {
                        try group.recv(into: &received, from: peer)
                        try group.send(x, to: peer)
                    }
                },
            ]
            for step in steps { for _ in 0..<100 { try step() } }
            return try steps.map { step in
                let before = fvd_test_thread_allocations()
                for _ in 0..<calls { try step() }
                return fvd_test_thread_allocations() - before
            }
        }
        let names = ["in-place all-reduce", "out-of-place all-reduce", "barrier", "in-place all-gather", "in-place broadcast",
                     "reduce-scatter into", "all-to-all into", "send and recv into"]
        for rank in counts {
            #expect(rank[1] >= UInt64(calls), "the counter sees the rank thread's allocations")
            for (i, name) in names.enumerated() {
                // The out-of-place all-reduce allocates its output: the storage object and its bytes.
                #expect(rank[i] <= (i == 1 ? UInt64(2 * calls) : 0), "\(name): \(rank[i]) allocations in \(calls) calls")
            }
        }
    }
}

@Suite("Waiting: the adaptive spin budget")
struct SpinBudgetTests {
    @Test("halves when the peer needed this CPU, down to none; doubles back when it was late, up to the most")
    func adapts() {
        let budget = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        defer { budget.deallocate() }
        budget.pointee = FVD_SPIN_BUDGET_MAX_NS
        var seen: [UInt32] = []
        for _ in 0..<8 {
            GroupRegion.adapt(budget, peerNeededThisCore: true)
            seen.append(budget.pointee)
        }
        #expect(seen == [100_000, 50_000, 25_000, 12_500, 6_250, 3_125, 0, 0])
        GroupRegion.adapt(budget, peerNeededThisCore: false)
        #expect(budget.pointee == 4_000, "from none, a late peer restarts the spin at 4 µs")
        for _ in 0..<10 { GroupRegion.adapt(budget, peerNeededThisCore: false) }
        #expect(budget.pointee == FVD_SPIN_BUDGET_MAX_NS, "and it grows back to the most, no further")
    }

    @Test("a new thread starts with the whole budget; each thread has its own")
    func perThread() {
        let mine = fvd_thread_spin_budget()!
        let saved = mine.pointee
        defer { mine.pointee = saved }
        mine.pointee = 0
        let other = Locked<UInt32?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            other.withLock { $0 = fvd_thread_spin_budget().pointee }
            done.signal()
        }.start()
        done.wait()
        #expect(other.withLock { $0 } == FVD_SPIN_BUDGET_MAX_NS)
        #expect(mine.pointee == 0)
    }
}
