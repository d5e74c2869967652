import CFVDAllocationCounter
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
        "10,000 steady-state 8-byte calls allocate nothing (in place, barrier) or only their output tensor",
        .enabled(if: countsAllocations && optimized, "needs an optimized build without a sanitizer"))
    func noAllocations() throws {
        let calls = 10_000
        let counts = try World.inProcess(size: 2, timeout: 60).run { group -> [UInt64] in
            var x = Tensor([Float(group.rank), 1])
            var gathered = try Tensor(zeros: [4], dtype: .float32)
            func inPlace() throws { try group.allReduce(inPlace: &x) }
            func outOfPlace() throws { _ = try group.allReduce(x) }
            func barrier() throws { try group.barrier() }
            func gatherInPlace() throws { try group.allGather(inPlace: &gathered) }
            let steps = [inPlace, outOfPlace, barrier, gatherInPlace]
            for step in steps { for _ in 0..<100 { try step() } }
            return try steps.map { step in
                let before = fvd_test_thread_allocations()
                for _ in 0..<calls { try step() }
                return fvd_test_thread_allocations() - before
            }
        }
        for rank in counts {
            #expect(rank[0] == 0, "in-place all-reduce")
            #expect(rank[1] <= UInt64(2 * calls), "out-of-place all-reduce: the output's storage object and bytes")
            #expect(rank[2] == 0, "barrier")
            #expect(rank[3] == 0, "in-place all-gather")
        }
    }
}
