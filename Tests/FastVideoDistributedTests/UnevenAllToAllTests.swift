import Foundation
import Testing

@testable import FastVideoDistributed

/// The uneven all-to-all by index loops, from the ranks' inputs (`inputs[j]` is rank `j`'s
/// `[B, S_j, H, D]` for `(2, 1)`, `[B, S, H_j, D]` for `(1, 2)`), with rank `r` taking heads
/// `headStart[r] ..< headStart[r] + heads[r]` (`(2, 1)`) or tokens of `seq` (`(1, 2)`).
private func reference(
    _ inputs: [Tensor], scatterHeads: Bool, seq: [Int], heads: [Int], headStart: [Int], rank r: Int
) -> Tensor {
    let b = inputs[0].shape[0], d = inputs[0].shape[3], dtype = inputs[0].dtype
    let seqStart = Layout.offsets(of: seq), totalSeq = seq.reduce(0, +)
    let data = inputs.map(elements)
    if scatterHeads {
        let h = inputs[0].shape[2]
        var out = [[UInt8]](repeating: [], count: b * totalSeq * heads[r] * d)
        for j in inputs.indices {
            for bi in 0..<b { for t in 0..<seq[j] { for hh in 0..<heads[r] { for di in 0..<d {
                out[((bi * totalSeq + seqStart[j] + t) * heads[r] + hh) * d + di] =
                    data[j][((bi * seq[j] + t) * h + headStart[r] + hh) * d + di]
            } } } }
        }
        return tensor(fromElements: out, shape: [b, totalSeq, heads[r], d], dtype: dtype)
    }
    let totalHeads = heads.reduce(0, +), hStart = Layout.offsets(of: heads)
    var out = [[UInt8]](repeating: [], count: b * seq[r] * totalHeads * d)
    for j in inputs.indices {
        for bi in 0..<b { for t in 0..<seq[r] { for hh in 0..<heads[j] { for di in 0..<d {
            out[((bi * seq[r] + t) * totalHeads + hStart[j] + hh) * d + di] =
                data[j][((bi * totalSeq + seqStart[r] + t) * heads[j] + hh) * d + di]
        } } } }
    }
    return tensor(fromElements: out, shape: [b, seq[r], totalHeads, d], dtype: dtype)
}

/// Sequence shards of awkward lengths (0, 1, primes) for `n` ranks.
private func awkwardLengths(_ n: Int, seed: Int) -> [Int] { (0..<n).map { [0, 1, 2, 3, 5, 7, 11][($0 * 5 + seed) % 7] } }

@Suite("Uneven and grouped-query all-to-all 4-D")
struct UnevenAllToAllTests {
    @Test("uneven heads and sequence, W = 1…8, heads smaller than W, primes and 1, every dtype: the reference, and (1,2)∘(2,1) = id", arguments: 1...8)
    func uneven(worldSize n: Int) throws {
        for (k, heads) in [1, n > 1 ? n - 1 : 1, 7, 30, n + 1].enumerated() {
            let dtype = DType.allCases[(n + k) % DType.allCases.count]
            let lengths = awkwardLengths(n, seed: k + n)
            let inputs = (0..<n).map { randomTensor([2, lengths[$0], heads, 3], dtype, seed: UInt64(100 * n + 10 * k + $0)) }
            let splits: [AllToAllSplit] = [.balanced, AllToAllSplit(sequence: lengths, heads: AllToAllSplit.balanced(heads, parts: n).reversed())]
            for split in splits {
                let headSizes = split.heads ?? AllToAllSplit.balanced(heads, parts: n)
                let results = try World.inProcess(size: n, timeout: 30).run { world -> [Tensor] in
                    let x = inputs[world.rankInGroup]
                    let spread = try world.allToAll4D(x, scatterDim: 2, gatherDim: 1, split: split)
                    let back = try world.allToAll4D(spread, scatterDim: 1, gatherDim: 2, split: AllToAllSplit(sequence: lengths, heads: split.heads))
                    return [spread, back]
                }
                for r in 0..<n {
                    let expected = reference(
                        inputs, scatterHeads: true, seq: lengths, heads: headSizes, headStart: Layout.offsets(of: headSizes), rank: r)
                    #expect(results[r][0] == expected, "W=\(n) H=\(heads) \(split) rank \(r)")
                    #expect(results[r][1] == inputs[r], "W=\(n) H=\(heads) \(split) rank \(r): not the inverse")
                }
            }
        }
    }

    @Test("(1,2) scatters an awkward total sequence: 1001 tokens on 4 ranks go 251, 250, 250, 250; heads per rank may differ", arguments: [1, 2, 3, 4, 5, 8])
    func unevenSequence(worldSize n: Int) throws {
        for total in [1001, 13, max(1, n - 1)] {
            let heads = awkwardLengths(n, seed: total)
            let inputs = (0..<n).map { randomTensor([1, total, heads[$0], 2], .float32, seed: UInt64(total + $0)) }
            let results = try World.inProcess(size: n, timeout: 30).run { world -> Tensor in
                try world.allToAll4D(inputs[world.rankInGroup], scatterDim: 1, gatherDim: 2, split: .balanced)
            }
            let seq = AllToAllSplit.balanced(total, parts: n)
            if n == 4, total == 1001 { #expect(seq == [251, 250, 250, 250]) }
            for r in 0..<n {
                #expect(results[r] == reference(inputs, scatterHeads: false, seq: seq, heads: heads, headStart: [], rank: r))
            }
        }
    }

    @Test("sizes that do not sum up, a split that differs between ranks, and a wrong shard size are errors on every rank")
    func errors() throws {
        func messages(_ split: @escaping @Sendable (Int) -> AllToAllSplit?, seq: @escaping @Sendable (Int) -> Int = { _ in 2 }, heads: Int = 6)
            throws -> [String]
        {
            try World.inProcess(size: 3, timeout: 30).runEach { world -> Tensor in
                let x = try Tensor(zeros: [1, seq(world.rankInGroup), heads, 2], dtype: .float32)
                return try world.allToAll4D(x, split: split(world.rankInGroup))
            }.map { result in
                guard case .failure(let error) = result else { return "no error" }
                return "\(error)"
            }
        }
        let notSumming = try messages { _ in AllToAllSplit(heads: [3, 2, 2]) }
        #expect(notSumming == Array(repeating: "all_to_all_4D in group world [0, 1, 2]: heads sizes [3, 2, 2] must be 3 non-negative sizes, one per rank, that sum to the 6 heads", count: 3))
        let differing = try messages { $0 == 1 ? AllToAllSplit(heads: [2, 2, 2]) : .balanced }
        #expect(differing.allSatisfy { $0.contains("ranks passed different arguments") && $0.contains("split heads [2, 2, 2]") }, "\(differing)")
        let wrongShard = try messages({ _ in AllToAllSplit(sequence: [2, 2, 2]) }, seq: { $0 == 2 ? 3 : 2 })
        #expect(wrongShard.allSatisfy { $0.contains("the split's sequence sizes [2, 2, 2] differ from the ranks' inputs, whose dim 1 has sizes [2, 2, 3]") }, "\(wrongShard)")
        // Without a split, FastVideo's rules: equal shapes, a divisible scattered dimension.
        let unequal = try messages({ _ in nil }, seq: { $0 == 2 ? 3 : 2 })
        #expect(unequal.allSatisfy { $0.contains("ranks passed different shapes: rank 0 [1, 2, 6, 2], rank 1 [1, 2, 6, 2], rank 2 [1, 3, 6, 2]") }, "\(unequal)")
        let indivisible = try messages({ _ in nil }, heads: 7)
        #expect(indivisible.allSatisfy { $0.contains("not divisible") || $0.contains("divide") }, "\(indivisible)")
        let balanced7 = try messages({ _ in .balanced }, heads: 7)
        #expect(balanced7 == Array(repeating: "no error", count: 3))
        let gqa = try messages({ _ in AllToAllSplit(queryHeads: 8) }, heads: 3)
        #expect(gqa.allSatisfy { $0.contains("8 query heads are not a multiple of the 3 key/value heads") }, "\(gqa)")
    }

    @Test("grouped-query key/value heads: each rank gets the kv heads its query heads use, replicated when Hkv < W", arguments: [(4, 6, 2), (3, 4, 1), (2, 8, 4), (5, 10, 2), (8, 8, 2), (1, 4, 2)])
    func groupedQueryMapping(_ layout: (Int, Int, Int)) throws {
        let (n, queryHeads, kvHeads) = layout
        let lengths = awkwardLengths(n, seed: 3)
        let inputs = (0..<n).map { randomTensor([1, lengths[$0], kvHeads, 2], .float64, seed: UInt64($0)) }
        let results = try World.inProcess(size: n, timeout: 30).run { world -> Tensor in
            try world.allToAll4D(inputs[world.rankInGroup], split: AllToAllSplit(queryHeads: queryHeads))
        }
        let queries = AllToAllSplit.balanced(queryHeads, parts: n), starts = Layout.offsets(of: queries)
        let group = queryHeads / kvHeads
        for r in 0..<n {
            let first = starts[r] / group
            let count = queries[r] == 0 ? 0 : (starts[r] + queries[r] - 1) / group + 1 - first
            let expected = reference(inputs, scatterHeads: true, seq: lengths, heads: Array(repeating: count, count: n), headStart: Array(repeating: first, count: n), rank: r)
            #expect(results[r] == expected, "rank \(r)")
        }
    }

    @Test("grouped-query attention on W ranks (Ulysses, uneven heads) equals the same attention on one rank", arguments: [(4, 6, 2), (3, 4, 1), (2, 8, 4), (4, 30, 5)])
    func groupedQueryAttention(_ layout: (Int, Int, Int)) throws {
        let (n, queryHeads, kvHeads) = layout
        let tokens = 11, headDim = 4
        let q = randomTensor([1, tokens, queryHeads, headDim], .float64, seed: 1)
        let k = randomTensor([1, tokens, kvHeads, headDim], .float64, seed: 2)
        let v = randomTensor([1, tokens, kvHeads, headDim], .float64, seed: 3)
        let expected = try attention(q: q, k: k, v: v, queryStart: 0, kvStart: 0, group: queryHeads / kvHeads)
        let lengths = AllToAllSplit.balanced(tokens, parts: n)
        let starts = Layout.offsets(of: lengths)
        let results = try World.inProcess(size: n, timeout: 30).run { world -> Tensor in
            let r = world.rankInGroup
            let range = starts[r]..<(starts[r] + lengths[r])
            let split = AllToAllSplit.balanced
            let kvSplit = AllToAllSplit(queryHeads: queryHeads)
            let localQ = try world.allToAll4D(try Tensor.slice(q, dim: 1, range: range), split: split)
            let localK = try world.allToAll4D(try Tensor.slice(k, dim: 1, range: range), split: kvSplit)
            let localV = try world.allToAll4D(try Tensor.slice(v, dim: 1, range: range), split: kvSplit)
            let queryStart = Layout.offsets(of: AllToAllSplit.balanced(queryHeads, parts: n))[r]
            let group = queryHeads / kvHeads
            let out = try attention(q: localQ, k: localK, v: localV, queryStart: queryStart, kvStart: queryStart / group, group: group)
            return try world.allToAll4D(out, scatterDim: 1, gatherDim: 2, split: AllToAllSplit(sequence: lengths))
        }
        for r in 0..<n {
            let mine = try Tensor.slice(expected, dim: 1, range: starts[r]..<(starts[r] + lengths[r]))
            let got = try results[r].scalars(as: Double.self), want = try mine.scalars(as: Double.self)
            #expect(results[r].shape == mine.shape)
            #expect(zip(got, want).allSatisfy { abs($0 - $1) < 1e-12 }, "rank \(r)")
        }
    }
}

/// Grouped-query attention over a `[1, S, H, D]` query and `[1, S, Hkv, D]` keys and
/// values: query head `i` (global `queryStart + i`) uses key/value head
/// `(queryStart + i) / group - kvStart` of these tensors.
private func attention(q: Tensor, k: Tensor, v: Tensor, queryStart: Int, kvStart: Int, group: Int) throws -> Tensor {
    let s = q.shape[1], h = q.shape[2], d = q.shape[3], hkv = k.shape[2]
    let qs = try q.scalars(as: Double.self), ks = try k.scalars(as: Double.self), vs = try v.scalars(as: Double.self)
    var out = [Double](repeating: 0, count: s * h * d)
    for i in 0..<h {
        let kv = (queryStart + i) / group - kvStart
        for t in 0..<s {
            var scores = (0..<s).map { u in
                (0..<d).reduce(0.0) { $0 + qs[(t * h + i) * d + $1] * ks[(u * hkv + kv) * d + $1] } / Double(d).squareRoot()
            }
            let top = scores.max()!
            scores = scores.map { exp($0 - top) }
            let total = scores.reduce(0, +)
            for e in 0..<d {
                out[(t * h + i) * d + e] = (0..<s).reduce(0.0) { $0 + scores[$1] / total * vs[($1 * hkv + kv) * d + e] }
            }
        }
    }
    return try Tensor(shape: [1, s, h, d], scalars: out)
}
