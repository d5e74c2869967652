// Ulysses sequence-parallel attention, written against FastVideoDistributed's public API
// only, as a downstream package would: each rank holds a shard of the sequence, an
// all-to-all gives it the whole sequence for its share of the heads, it runs attention
// there, and a second all-to-all brings the result back to sequence shards. Every rank
// then checks its shard against attention computed on one rank.
//
//     swift run UlyssesAttention                                   # 4 in-process ranks
//     swift build && swift run fvd launch -n 4 -- .build/debug/UlyssesAttention
//     swift build --traits MPI && mpirun -n 4 .build/debug/UlyssesAttention
//
// One program for all three: `World.main` (see `World.start(defaultSize:)`) joins the
// launcher's world when there is one and starts four in-process ranks otherwise.
//
// The kernels are plain Swift loops standing in for the user's own compute (a GPU kernel,
// Accelerate, a C library): they write their outputs straight into tensors made with
// `Tensor(unsafeUninitializedShape:dtype:initializingWith:)`, which the collectives then
// read in place.
import FastVideoDistributed
import Foundation

/// Batch 1, `tokens` positions, `heads` heads of `headDim`.
let tokens = 96, heads = 8, headDim = 16
/// The largest difference allowed from the one-rank result (float32 sums in another order).
let tolerance: Float = 1e-4

/// Element `(s, h, d)` of q (`which` 0), k (1) or v (2): a fixed pseudo-random number in
/// [-1, 1), the same on every rank (splitmix64 of the element's index).
func element(_ which: Int, _ s: Int, _ h: Int, _ d: Int) -> Float {
    var z = UInt64(((which * tokens + s) * heads + h) * headDim + d) &* 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    z ^= z >> 31
    return Float(z >> 40) / Float(1 << 24) * 2 - 1
}

/// The "projection kernel": q, k or v for sequence positions `rows`, `[1, rows, heads, headDim]`,
/// written straight into the new tensor's storage.
func project(_ which: Int, rows: Range<Int>) throws -> Tensor {
    try Tensor(unsafeUninitializedShape: [1, rows.count, heads, headDim], dtype: .float32) { bytes in
        let out = bytes.bindMemory(to: Float.self)
        var i = 0
        for s in rows {
            for h in 0..<heads {
                for d in 0..<headDim {
                    out[i] = element(which, s, h, d)
                    i += 1
                }
            }
        }
    }
}

/// The "attention kernel": `softmax(q kᵀ / √D) v` for every head of `[1, S, h, D]` tensors,
/// into a new tensor of the same shape.
func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor) throws -> Tensor {
    let (length, headCount, dim) = (q.shape[1], q.shape[2], q.shape[3])
    let scale = 1 / Float(dim).squareRoot()
    return try q.withUnsafeBufferPointer(as: Float.self) { q in
        try k.withUnsafeBufferPointer(as: Float.self) { k in
            try v.withUnsafeBufferPointer(as: Float.self) { v in
                try Tensor(unsafeUninitializedShape: [1, length, headCount, dim], dtype: .float32) { bytes in
                    let out = bytes.bindMemory(to: Float.self)
                    var weights = [Float](repeating: 0, count: length)
                    for h in 0..<headCount {
                        for i in 0..<length {
                            let row = (i * headCount + h) * dim
                            var largest = -Float.infinity
                            for j in 0..<length {
                                let column = (j * headCount + h) * dim
                                var dot: Float = 0
                                for c in 0..<dim { dot += q[row + c] * k[column + c] }
                                weights[j] = dot * scale
                                largest = max(largest, weights[j])
                            }
                            var total: Float = 0
                            for j in 0..<length {
                                weights[j] = exp(weights[j] - largest)
                                total += weights[j]
                            }
                            for c in 0..<dim {
                                var sum: Float = 0
                                for j in 0..<length { sum += weights[j] * v[(j * headCount + h) * dim + c] }
                                out[row + c] = sum / total
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One rank's work: Ulysses attention on its shard, checked against one rank. Throws when
/// any rank's shard is off by more than ``tolerance``.
@Sendable func rankMain(_ world: GroupCoordinator) async throws {
    let state = try ParallelState(world: world, tensorParallel: 1, sequenceParallel: world.size)
    let sp = state.sequenceParallel
    guard tokens % sp.size == 0, heads % sp.size == 0 else {
        throw FVDError.invalidArgument("\(tokens) tokens and \(heads) heads must divide by the \(sp.size) sequence-parallel ranks")
    }
    if world.rankInGroup == 0 { print(state.describe()) }
    let shard = tokens / sp.size
    let rows = sp.rankInGroup * shard..<(sp.rankInGroup + 1) * shard

    // This rank's sequence shard of q, k and v, stacked along the batch: [3, S/n, H, D].
    let qkv = try Tensor.concatenated([project(0, rows: rows), project(1, rows: rows), project(2, rows: rows)], dim: 0)
    // Ulysses, one exchange for all three: the whole sequence for this rank's H/n heads.
    let heads = try await state.sequenceModelParallelAllToAll4D(qkv, scatterDim: 2, gatherDim: 1).chunked(3, dim: 0)
    let local = try attention(heads[0], heads[1], heads[2])
    // And back to this rank's sequence shard with every head, [1, S/n, H, D].
    let output = try await state.sequenceModelParallelAllToAll4D(local, scatterDim: 1, gatherDim: 2)

    // One rank's answer: attention over the whole q, k, v; this rank's rows of it.
    let all = 0..<tokens
    let reference = try attention(project(0, rows: all), project(1, rows: all), project(2, rows: all)).slice(dim: 1, range: rows)
    let error = try output.withUnsafeBufferPointer(as: Float.self) { got in
        try reference.withUnsafeBufferPointer(as: Float.self) { want in zip(got, want).map { abs($0 - $1) }.max() ?? 0 }
    }
    print("rank \(world.rank) of \(world.size): rows \(rows), max error \(error)")
    // Every rank learns the worst error, so that all of them end alike.
    let worst = try await world.allReduce(Tensor([error]), op: .max).scalar(at: [0], as: Float.self)
    guard worst <= tolerance else { throw FVDError.invalidArgument("max error \(worst) exceeds \(tolerance)") }
    if world.rank == 0 { print("ok: max error \(worst) <= \(tolerance)") }
}

// Alone: four ranks as tasks of this process. Under `fvd launch -n W` (or torchrun-style
// variables, or `mpirun -n W` with the trait MPI): this process is one rank of W. An error
// is one `error:` line and a non-zero exit status.
await World.main(defaultSize: 4, rankMain)
