import Foundation
import Testing

@testable import FastVideoDistributed

@Suite("Beyond Ulysses: the USP layout, the ring pass and the halo exchange")
struct RingAndHaloTests {
    @Test("USP layout: Ulysses groups are consecutive blocks of u, ring groups stride u within each SP group")
    func layout() throws {
        let usp = try GroupLayout(worldSize: 8, tensorParallel: 2, sequenceParallel: 4, ringDegree: 2)
        #expect(usp.ulyssesDegree == 2)
        #expect(usp.ulyssesGroups == [[0, 1], [2, 3], [4, 5], [6, 7]])
        #expect(usp.ringGroups == [[0, 2], [1, 3], [4, 6], [5, 7]])
        let ringOnly = try GroupLayout(worldSize: 4, tensorParallel: 1, sequenceParallel: 4, ringDegree: 4)
        #expect(ringOnly.ulyssesGroups == [[0], [1], [2], [3]] && ringOnly.ringGroups == [[0, 1, 2, 3]])
        let description = usp.describe(marking: 5)
        #expect(description.hasPrefix("world size 8: tensor parallel 2, sequence parallel 4 (ulysses 2 × ring 2), data parallel 2"))
        #expect(description.contains("ulysses2: ranks [4, 5] *") && description.contains("ring3: ranks [5, 7] *"))
        // Ring degree 1 is FastVideo's layout, to the letter.
        let plain = try GroupLayout(worldSize: 8, tensorParallel: 2, sequenceParallel: 4)
        #expect(try GroupLayout(worldSize: 8, tensorParallel: 2, sequenceParallel: 4, ringDegree: 1).describe(marking: 3) == plain.describe(marking: 3))
        #expect(!plain.describe().contains("ring"))
        for bad in [3, 0, -1, 8] {
            #expect { _ = try GroupLayout(worldSize: 8, tensorParallel: 1, sequenceParallel: 4, ringDegree: bad) } throws: {
                String(describing: $0).contains("ring degree \(bad) does not divide the sequence-parallel size 4")
            }
        }
    }

    @Test("ParallelState builds this rank's Ulysses and ring groups; ring degree 1 keeps the SP group and a ring of one")
    func parallelState() throws {
        let groups = try World.inProcess(size: 8, timeout: 60).run { world -> [[Int]] in
            let state = try ParallelState(world: world, tensorParallel: 2, sequenceParallel: 4, ringDegree: 2)
            let plain = try ParallelState(world: world, tensorParallel: 2, sequenceParallel: 4)
            #expect(plain.ulysses === plain.sequenceParallel && plain.ring.size == 1)
            return [state.ulysses.ranks, state.ring.ranks]
        }
        let layout = try GroupLayout(worldSize: 8, tensorParallel: 2, sequenceParallel: 4, ringDegree: 2)
        for rank in 0..<8 {
            #expect(groups[rank] == [layout.ulyssesGroups.first { $0.contains(rank) }!, layout.ringGroups.first { $0.contains(rank) }!])
        }
    }

    @Test("ring pass: each rank gets the previous rank's tensor (uneven shapes), reverse the next's; n passes come home", arguments: 1...8)
    func ringPass(worldSize n: Int) async throws {
        let results = try await World.inProcess(size: n, timeout: 60).run { group async throws -> Bool in
            let r = group.rankInGroup
            let mine = try Tensor(shape: [r + 1, 2], scalars: [Int32](repeating: Int32(r), count: 2 * (r + 1)))
            let previous = (r - 1 + n) % n, next = (r + 1) % n
            let got = try await group.ringPass(mine)
            let back = try await group.ringPass(mine, reverse: true)
            var travelling = mine
            for _ in 0..<n { travelling = try await group.startRingPass(travelling).value }
            return try got.shape == [previous + 1, 2] && got.scalar(at: [0, 0], as: Int32.self) == Int32(previous)
                && back.shape == [next + 1, 2] && back.scalar(at: [0, 0], as: Int32.self) == Int32(next) && travelling == mine
        }
        #expect(results.allSatisfy { $0 })
    }

    @Test("ring pass errors name the ranks: another dtype (on every rank), a shape this rank did not expect")
    func ringPassErrors() throws {
        let outcomes = try World.inProcess(size: 3, timeout: 60).runEach { group -> Tensor in
            let dtype: DType = group.rank == 1 ? .float64 : .float32
            return try group.ringPass(Tensor(zeros: [2], dtype: dtype))
        }
        // Every rank names every rank's dtype.
        for outcome in outcomes {
            guard case .failure(let error) = outcome else { Issue.record("\(outcome)"); continue }
            #expect("\(error)".contains("ring_pass in group world [0, 1, 2]: ranks passed different dtypes: rank 0 float32, rank 1 float64, rank 2 float32"), "\(error)")
        }
        let shaped = try World.inProcess(size: 2, timeout: 60).runEach { group -> Tensor in
            try group.ringPass(Tensor(zeros: [group.rank + 1], dtype: .float32), shape: [1])
        }
        guard case .failure(let shapeError) = shaped[0] else { Issue.record("rank 0: \(shaped[0])"); return }
        #expect("\(shapeError)".contains("rank 1 [2], rank 0 [1]"), "\(shapeError)")
    }

    @Test("a ring peer that fails mid-rotation: every other rank's pass ends with an error naming it, none hangs")
    func ringPeerDies() throws {
        let outcomes = try World.inProcess(size: 4, timeout: 60).runEach { group -> Tensor in
            var block = try Tensor(shape: [3], scalars: [Float](repeating: Float(group.rank), count: 3))
            for step in 0..<4 {
                if group.rank == 2 && step == 2 { throw FVDError.invalidArgument("rank 2 stops mid-rotation") }
                block = try group.ringPass(block)
            }
            return block
        }
        for (rank, outcome) in outcomes.enumerated() {
            guard case .failure(let error) = outcome else { Issue.record("rank \(rank) finished: \(outcome)"); continue }
            let text = "\(error)"
            #expect(rank == 2 ? text.contains("stops mid-rotation") : text.contains("rank 2 failed: rank 2 stops mid-rotation"), "rank \(rank): \(text)")
        }
    }

    /// Every rank's shard of one sequence along dim 1: rank `r` holds `lengths[r]` slices.
    private static func shards(_ lengths: [Int], _ dtype: DType) -> (whole: Tensor, shards: [Tensor]) {
        let whole = randomTensor([2, lengths.reduce(0, +), 3], dtype, seed: 41)
        var start = 0
        let shards = lengths.map { length in
            defer { start += length }
            return try! whole.slice(dim: 1, range: start..<(start + length))
        }
        return (whole, shards)
    }

    @Test("halo exchange: the neighbours' boundary slices, as cut from the whole sequence; widths 0, 1, 2; periodic or not; every dtype",
          arguments: [[3], [2, 3], [3, 2, 4], [2, 5, 2, 3, 2]])
    func halo(lengths: [Int]) throws {
        let n = lengths.count
        for dtype in DType.allCases {
            let (whole, shards) = Self.shards(lengths, dtype)
            let total = lengths.reduce(0, +)
            let starts = lengths.indices.map { lengths.prefix($0).reduce(0, +) }
            for width in 0...2 {
                for periodic in [false, true] {
                    let halos = try World.inProcess(size: n, timeout: 60).run { group in
                        try group.haloExchange(shards[group.rankInGroup], dim: -2, width: width, periodic: periodic)
                    }
                    for r in 0..<n {
                        let start = starts[r], end = start + lengths[r]
                        // The reference: the whole sequence, wrapped around when periodic.
                        func cut(_ from: Int, _ count: Int) throws -> Tensor {
                            let parts = try (0..<count).map { k in try whole.slice(dim: 1, range: ((from + k + total) % total)..<((from + k + total) % total + 1)) }
                            return parts.isEmpty ? try whole.slice(dim: 1, range: 0..<0) : try Tensor.concatenated(parts, dim: 1)
                        }
                        let hasBefore = periodic || r > 0, hasAfter = periodic || r < n - 1
                        #expect(halos[r].before == (try cut(start - width, hasBefore ? width : 0)), "rank \(r) before, width \(width) periodic \(periodic) \(dtype)")
                        #expect(halos[r].after == (try cut(end, hasAfter ? width : 0)), "rank \(r) after, width \(width) periodic \(periodic) \(dtype)")
                    }
                }
            }
        }
    }

    @Test("halo exchange errors are on every rank: a width longer than a shard it is cut from, ranks with different widths")
    func haloErrors() throws {
        // Rank 1's shard is empty: width 0 is fine, width 1 is not.
        let lengths = [2, 0, 3]
        let (_, shards) = Self.shards(lengths, .float32)
        let fine = try World.inProcess(size: 3, timeout: 60).run { group in
            try group.haloExchange(shards[group.rankInGroup], dim: 1, width: 0).before.shape
        }
        #expect(fine == [[2, 0, 3], [2, 0, 3], [2, 0, 3]])
        let tooWide = try World.inProcess(size: 3, timeout: 60).runEach { group in
            try group.haloExchange(shards[group.rankInGroup], dim: 1, width: 1)
        }
        for outcome in tooWide {
            guard case .failure(let error) = outcome else { Issue.record("\(outcome)"); continue }
            #expect("\(error)".contains("width 1 is longer than rank 1's shard of 0 along dim 1"), "\(error)")
        }
        let mismatched = try World.inProcess(size: 3, timeout: 60).runEach { group in
            try group.haloExchange(shards[0], dim: 1, width: group.rank == 2 ? 2 : 1)
        }
        for outcome in mismatched {
            guard case .failure(let error) = outcome else { Issue.record("\(outcome)"); continue }
            #expect("\(error)".contains("halo_exchange in group world [0, 1, 2]: ranks passed different arguments: rank 0 (dim=1, width=1, periodic=false), rank 1 (dim=1, width=1, periodic=false), rank 2 (dim=1, width=2, periodic=false)"), "\(error)")
        }
    }

    /// Attention of `q` `[1, Sq, h, D]` over `k`, `v` `[1, Sk, hkv, D]`, query head `i` using key/value head
    /// `kvHead(i)`: the running (maximum, sum, weighted values) of the online softmax, merged into `state`.
    private static func attend(
        _ q: [Float], _ k: [Float], _ v: [Float], queries: Int, keys: Int, heads: Int, kvHeads: Int, dim: Int,
        kvHead: (Int) -> Int, into state: inout [(m: Float, l: Float, acc: [Float])]
    ) {
        let scale = 1 / Float(dim).squareRoot()
        for t in 0..<queries {
            for h in 0..<heads {
                var row = state[t * heads + h]
                let g = kvHead(h)
                for j in 0..<keys {
                    var score: Float = 0
                    for c in 0..<dim { score += q[(t * heads + h) * dim + c] * k[(j * kvHeads + g) * dim + c] }
                    score *= scale
                    let m = max(row.m, score)
                    let (old, new) = (exp(row.m - m), exp(score - m))
                    row.l = row.l * old + new
                    for c in 0..<dim { row.acc[c] = row.acc[c] * old + new * v[(j * kvHeads + g) * dim + c] }
                    row.m = m
                }
                state[t * heads + h] = row
            }
        }
    }

    /// The finished rows of an online softmax, `[1, queries, heads, dim]`.
    private static func finish(_ state: [(m: Float, l: Float, acc: [Float])], queries: Int, heads: Int, dim: Int) throws -> Tensor {
        try Tensor(shape: [1, queries, heads, dim], scalars: state.flatMap { row in row.acc.map { $0 / row.l } })
    }

    @Test("USP: Ulysses inside each Ulysses group, then ring attention over the ring group, equals full attention; W = 1…8, every (u, r), uneven shards, GQA", arguments: 1...8)
    func uspAttention(worldSize n: Int) throws {
        let (heads, kvHeads, dim) = (6, 2, 4)
        let lengths = (0..<n).map { 1 + ($0 * 5 + 2) % 4 }  // uneven: 3, 4, 1, 2, 3, …
        let total = lengths.reduce(0, +)
        let q = randomTensor([1, total, heads, dim], .float32, seed: 1)
        let k = randomTensor([1, total, kvHeads, dim], .float32, seed: 2)
        let v = randomTensor([1, total, kvHeads, dim], .float32, seed: 3)
        var full = [(m: Float, l: Float, acc: [Float])](repeating: (-.infinity, 0, [Float](repeating: 0, count: dim)), count: total * heads)
        Self.attend(try q.scalars(as: Float.self), try k.scalars(as: Float.self), try v.scalars(as: Float.self), queries: total, keys: total,
                    heads: heads, kvHeads: kvHeads, dim: dim, kvHead: { $0 / (heads / kvHeads) }, into: &full)
        let reference = try Self.finish(full, queries: total, heads: heads, dim: dim)
        for ring in (1...n).filter({ n % $0 == 0 }) {
            let outputs = try World.inProcess(size: n, timeout: 60).run { world -> Tensor in
                let state = try ParallelState(world: world, tensorParallel: 1, sequenceParallel: n, ringDegree: ring)
                let r = world.rankInGroup, start = lengths.prefix(r).reduce(0, +)
                let rows = start..<(start + lengths[r])
                let u = state.ulysses
                let groupLengths = u.ranks.map { lengths[$0] }
                // 1. Ulysses: this rank's query heads (and the kv heads they use) for its Ulysses group's tokens.
                let qLocal = try u.allToAll4D(q.slice(dim: 1, range: rows), split: .balanced)
                let kvSplit = AllToAllSplit(queryHeads: heads)
                let kLocal = try u.allToAll4D(k.slice(dim: 1, range: rows), split: kvSplit)
                let vLocal = try u.allToAll4D(v.slice(dim: 1, range: rows), split: kvSplit)
                let myHeads = AllToAllSplit.balanced(heads, parts: u.size)
                let qStart = myHeads.prefix(u.rankInGroup).reduce(0, +), group = heads / kvHeads
                let (h, hkv, queries) = (qLocal.shape[2], kLocal.shape[2], qLocal.shape[1])
                // 2. Ring attention: the key/value blocks of the ring's Ulysses groups pass by, merged online.
                var merged = [(m: Float, l: Float, acc: [Float])](repeating: (-.infinity, 0, [Float](repeating: 0, count: dim)), count: queries * h)
                var (kBlock, vBlock) = (kLocal, vLocal)
                for step in 0..<state.ring.size {
                    let next = step + 1 < state.ring.size ? (state.ring.startRingPass(kBlock), state.ring.startRingPass(vBlock)) : nil
                    Self.attend(try qLocal.scalars(as: Float.self), try kBlock.scalars(as: Float.self), try vBlock.scalars(as: Float.self),
                                queries: queries, keys: kBlock.shape[1], heads: h, kvHeads: hkv, dim: dim,
                                kvHead: { (qStart + $0) / group - qStart / group }, into: &merged)
                    if let next { (kBlock, vBlock) = (try next.0.wait(), try next.1.wait()) }
                }
                // 3. Back to this rank's tokens, every head.
                let attended = try Self.finish(merged, queries: queries, heads: h, dim: dim)
                return try u.allToAll4D(attended, scatterDim: 1, gatherDim: 2, split: AllToAllSplit(sequence: groupLengths))
            }
            for (rank, output) in outputs.enumerated() {
                let start = lengths.prefix(rank).reduce(0, +)
                let want = try reference.slice(dim: 1, range: start..<(start + lengths[rank])).scalars(as: Float.self)
                let error = zip(try output.scalars(as: Float.self), want).map { abs($0 - $1) }.max() ?? 0
                #expect(output.shape == [1, lengths[rank], heads, dim] && error <= 1e-4, "W=\(n) ring \(ring) rank \(rank): error \(error)")
            }
        }
    }
}
