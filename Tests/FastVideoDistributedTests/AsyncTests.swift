import Dispatch
import Foundation
import Testing

@testable import FastVideoDistributed

@Suite("Asynchronous collectives: start… returns a handle; wait() gives the result")
struct AsyncTests {
    @Test("started and direct calls interleaved give the results of the same calls made directly, W = 1…8", arguments: 1...8)
    func interleaved(worldSize n: Int) throws {
        @Sendable func inputs(_ r: Int) -> (Tensor, Tensor, Tensor) {
            (randomTensor([2, 3], .float32, seed: UInt64(r)), randomTensor([5], .float64, seed: UInt64(100 + r)),
             randomTensor([1, 2, 3 * n, 2], .bfloat16, seed: UInt64(200 + r)))
        }
        let direct = try World.inProcess(size: n, timeout: 30).run { world -> [Tensor] in
            let (a, b, c) = inputs(world.rankInGroup)
            return [try world.allGather(a, dim: 0), try world.allReduce(b), try world.allToAll4D(c), try world.reduceScatter(b.reshapedForTest(n), dim: 0)]
        }
        let started = try World.inProcess(size: n, timeout: 30).run { world -> [Tensor] in
            let (a, b, c) = inputs(world.rankInGroup)
            let first = world.startAllGather(a, dim: 0)
            let second = try world.allReduce(b)  // direct, while the first may still run: after it
            let third = world.startAllToAll4D(c)
            let fourth = world.start { try $0.reduceScatter(b.reshapedForTest(n), dim: 0) }
            return [try first.wait(), second, try third.wait(), try fourth.wait()]
        }
        #expect(started == direct)
    }

    @Test("start returns before a late peer arrives; wait then completes")
    func returnsAtOnce() throws {
        let peerMayGo = DispatchSemaphore(value: 0)
        let results = try World.inProcess(size: 2, timeout: 30).run { world -> Bool in
            if world.rankInGroup == 1 {
                peerMayGo.wait()  // rank 1 arrives only after rank 0 has looked at its handle
                _ = try world.allReduce(try Tensor(shape: [1], scalars: [Float(2)]))
                return true
            }
            let handle = world.startAllReduce(try Tensor(shape: [1], scalars: [Float(1)]))
            let pendingBeforePeer = !handle.isCompleted
            peerMayGo.signal()
            let value = try handle.wait().scalars(as: Float.self)
            return pendingBeforePeer && value == [3] && handle.isCompleted
        }
        #expect(results == [true, true])
    }

    @Test("an error surfaces at wait() on every rank, and the group goes on")
    func errorAtWait() throws {
        let results = try World.inProcess(size: 3, timeout: 30).run { world -> String in
            let bad = world.startAllReduce(try Tensor(zeros: [world.rankInGroup == 1 ? 3 : 2], dtype: .float32))
            let good = world.startAllGather(try Tensor(zeros: [1], dtype: .int32), dim: 0)
            var message = ""
            do { _ = try bad.wait() } catch { message = "\(error)" }
            #expect(try good.wait().shape == [3])
            #expect(throws: FVDError.self) { _ = try bad.wait() }  // the same error again
            return message
        }
        #expect(results.allSatisfy { $0.contains("ranks passed different shapes") }, "\(results)")
    }

    @Test("chunked all-to-all: the chunks, joined along the heads, are the all-to-all, for even and uneven splits, W = 1…8", arguments: 1...8)
    func chunks(worldSize n: Int) throws {
        for (heads, split) in [(2 * n, nil), (7, AllToAllSplit.balanced), (30, AllToAllSplit.balanced)] as [(Int, AllToAllSplit?)] {
            for count in [1, 2, 3, 5] {
                let results = try World.inProcess(size: n, timeout: 30).run { world -> Bool in
                    let x = randomTensor([2, split == nil ? 2 : world.rankInGroup + 1, heads, 3], .float32, seed: UInt64(world.rankInGroup))
                    let whole = try world.allToAll4D(x, split: split)
                    let parts = try world.startAllToAll4D(x, split: split, chunks: count).map { try $0.wait() }
                    let joined = try concatenateHeads(parts, like: whole)
                    return parts.count == count && joined == whole
                }
                #expect(results.allSatisfy { $0 }, "W=\(n) heads \(heads) chunks \(count)")
            }
        }
    }

    @Test("chunks < 1 is an error at wait()")
    func badChunks() throws {
        let results = try World.inProcess(size: 2, timeout: 30).run { world -> String in
            let handles = world.startAllToAll4D(try Tensor(zeros: [1, 2, 2, 1], dtype: .float32), chunks: 0)
            do { _ = try handles[0].wait() } catch { return "\(error)" }
            return "no error"
        }
        #expect(results == Array(repeating: "all_to_all_4D: chunks must be at least 1, got 0", count: 2))
    }
}

/// The chunks `[B, S, h_k, D]` joined along dim 2 into `like`'s shape.
private func concatenateHeads(_ parts: [Tensor], like whole: Tensor) throws -> Tensor {
    var out = try Tensor(zeros: whole.shape, dtype: whole.dtype)
    let (b, s, h, d) = (whole.shape[0], whole.shape[1], whole.shape[2], whole.shape[3])
    let es = whole.dtype.byteSize
    var start = 0
    for part in parts {
        let hk = part.shape[2]
        part.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                for row in 0..<(b * s) {
                    (dst.baseAddress! + (row * h + start) * d * es).copyMemory(from: src.baseAddress! + row * hk * d * es, byteCount: hk * d * es)
                }
            }
        }
        start += hk
    }
    return out
}

extension Tensor {
    /// A `[5]` tensor repeated to `[5n]`, so it reduce-scatters over `n` ranks.
    fileprivate func reshapedForTest(_ n: Int) throws -> Tensor {
        try Tensor(shape: [5 * n], scalars: Array(repeating: try scalars(as: Double.self), count: n).flatMap { $0 })
    }
}
