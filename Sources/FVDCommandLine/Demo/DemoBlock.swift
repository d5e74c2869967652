// The demo's model: one video-DiT transformer block (DiT/Wan-style adaLN-zero) on plain
// `[Float]` arrays, written once and run both on one rank (the reference) and on many
// ranks with tensor and sequence parallelism. Only the communication differs, and it is
// behind `DemoCommunicator`.
//
// Hot loops run over buffer pointers so that the debug build stays fast (see DESIGN.md).

import FastVideoDistributed

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Random numbers

/// SplitMix64: the demo's seeded generator, so weights and inputs are the same on every
/// rank and in the reference.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform value in `[-1, 1)` (24 random bits, exact in `Float`).
    mutating func nextSigned() -> Float {
        Float(next() >> 40) / Float(1 << 23) - 1
    }

    /// `count` uniform values with standard deviation `std` (uniform in `±std·√3`).
    mutating func values(_ count: Int, std: Float) -> [Float] {
        let a = std * Float(3).squareRoot()
        return (0..<count).map { _ in nextSigned() * a }
    }
}

// MARK: - Matrices

/// A row-major `rows × cols` matrix of `Float`.
struct DemoMatrix: Sendable, Equatable {
    var rows: Int
    var cols: Int
    var data: [Float]

    init(rows: Int, cols: Int, data: [Float]) {
        precondition(data.count == rows * cols, "internal: matrix data does not match its shape")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    init(zeros rows: Int, _ cols: Int) {
        self.init(rows: rows, cols: cols, data: [Float](repeating: 0, count: rows * cols))
    }

    /// Columns `range` of this matrix (a tensor-parallel column split).
    func columns(_ range: Range<Int>) -> DemoMatrix {
        var out = [Float](repeating: 0, count: rows * range.count)
        let n = range.count, c = cols, lo = range.lowerBound
        data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for i in 0..<rows {
                    for j in 0..<n { dst[i * n + j] = src[i * c + lo + j] }
                }
            }
        }
        return DemoMatrix(rows: rows, cols: n, data: out)
    }

    /// Rows `range` of this matrix (a tensor-parallel row split).
    func rowRange(_ range: Range<Int>) -> DemoMatrix {
        DemoMatrix(rows: range.count, cols: cols, data: Array(data[(range.lowerBound * cols)..<(range.upperBound * cols)]))
    }
}

/// The demo's numerical kernels. Everything is single precision, row-major, and each
/// output row depends only on its own input row (so a sequence shard computes exactly
/// the rows the full sequence would).
enum DemoMath {
    /// `a @ b`, summed over `k` in increasing order (i-k-j loop over buffer pointers).
    static func matmul(_ a: DemoMatrix, _ b: DemoMatrix) -> DemoMatrix {
        precondition(a.cols == b.rows, "internal: matmul of \(a.rows)×\(a.cols) by \(b.rows)×\(b.cols)")
        let m = a.rows, kk = a.cols, n = b.cols
        var out = [Float](repeating: 0, count: m * n)
        a.data.withUnsafeBufferPointer { pa in
            b.data.withUnsafeBufferPointer { pb in
                out.withUnsafeMutableBufferPointer { po in
                    let A = pa.baseAddress!, B = pb.baseAddress!, O = po.baseAddress!
                    for i in 0..<m {
                        let orow = O + i * n
                        for k in 0..<kk {
                            let aik = A[i * kk + k]
                            let brow = B + k * n
                            for j in 0..<n { orow[j] += aik * brow[j] }
                        }
                    }
                }
            }
        }
        return DemoMatrix(rows: m, cols: n, data: out)
    }

    /// LayerNorm over each row, without affine parameters: `(x − mean) / sqrt(var + eps)`.
    static func layerNorm(_ x: DemoMatrix, eps: Float = 1e-6) -> DemoMatrix {
        var out = x.data
        let n = x.cols
        out.withUnsafeMutableBufferPointer { buffer in
            let p = buffer.baseAddress!
            for i in 0..<x.rows {
                let row = p + i * n
                var mean: Float = 0
                for j in 0..<n { mean += row[j] }
                mean /= Float(n)
                var variance: Float = 0
                for j in 0..<n {
                    let d = row[j] - mean
                    variance += d * d
                }
                variance /= Float(n)
                let inv = 1 / (variance + eps).squareRoot()
                for j in 0..<n { row[j] = (row[j] - mean) * inv }
            }
        }
        return DemoMatrix(rows: x.rows, cols: n, data: out)
    }

    /// adaLN modulation of each row: `x · (1 + scale) + shift` (`shift`, `scale` have `x.cols` entries).
    static func modulate(_ x: DemoMatrix, shift: ArraySlice<Float>, scale: ArraySlice<Float>) -> DemoMatrix {
        let shift = Array(shift), scale = Array(scale)
        var out = x.data
        let n = x.cols
        out.withUnsafeMutableBufferPointer { buffer in
            shift.withUnsafeBufferPointer { sh in
                scale.withUnsafeBufferPointer { sc in
                    let p = buffer.baseAddress!
                    for i in 0..<x.rows {
                        let row = p + i * n
                        for j in 0..<n { row[j] = row[j] * (1 + sc[j]) + sh[j] }
                    }
                }
            }
        }
        return DemoMatrix(rows: x.rows, cols: n, data: out)
    }

    /// The gated residual of adaLN-zero: `x += gate · y`, `gate` broadcast over rows.
    static func addGated(_ x: inout DemoMatrix, _ y: DemoMatrix, gate: ArraySlice<Float>) {
        precondition(x.rows == y.rows && x.cols == y.cols, "internal: residual shapes differ")
        let gate = Array(gate)
        let n = x.cols
        x.data.withUnsafeMutableBufferPointer { px in
            y.data.withUnsafeBufferPointer { py in
                gate.withUnsafeBufferPointer { g in
                    for i in 0..<x.rows {
                        for j in 0..<n { px[i * n + j] += g[j] * py[i * n + j] }
                    }
                }
            }
        }
    }

    /// SiLU: `x · sigmoid(x)`.
    static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

    /// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    static func gelu(_ x: Float) -> Float {
        let k: Float = 0.797_884_560_802_865_4  // sqrt(2 / pi)
        return 0.5 * x * (1 + tanhf(k * (x + 0.044_715 * x * x * x)))
    }

    /// Applies GELU to every element.
    static func geluInPlace(_ x: inout DemoMatrix) {
        x.data.withUnsafeMutableBufferPointer { p in
            for i in 0..<p.count { p[i] = gelu(p[i]) }
        }
    }

    /// Attention computed one key block at a time, merged by log-sum-exp (the online
    /// softmax of ring and flash attention): per query row and head, the largest score so
    /// far, the sum of the exponentials and the weighted values, rescaled as larger scores come.
    struct OnlineSoftmax {
        let queries: Int, heads: Int, headDim: Int
        var maxima: [Float], sums: [Float], weighted: [Float]

        init(queries: Int, heads: Int, headDim: Int) {
            (self.queries, self.heads, self.headDim) = (queries, heads, headDim)
            maxima = [Float](repeating: -.infinity, count: queries * heads)
            sums = [Float](repeating: 0, count: queries * heads)
            weighted = [Float](repeating: 0, count: queries * heads * headDim)
        }

        /// Merges the block of `keys` keys (`[keys, heads, headDim]`) at sequence positions
        /// `keyOffset…`; those from `validKeys` on are padding and left out.
        mutating func attend(q: [Float], k: ArraySlice<Float>, v: ArraySlice<Float>, keys: Int, keyOffset: Int, validKeys: Int) {
            let stride = heads * headDim, scale = 1 / Float(headDim).squareRoot()
            let valid = max(0, min(keys, validKeys - keyOffset))
            guard valid > 0 else { return }
            var scores = [Float](repeating: 0, count: valid)
            for h in 0..<heads {
                for i in 0..<queries {
                    let row = i * heads + h, query = i * stride + h * headDim
                    var best = maxima[row]
                    for j in 0..<valid {
                        let key = k.startIndex + j * stride + h * headDim
                        var s: Float = 0
                        for d in 0..<headDim { s += q[query + d] * k[key + d] }
                        scores[j] = s * scale
                        best = max(best, scores[j])
                    }
                    let rescale = expf(maxima[row] - best)
                    sums[row] *= rescale
                    for d in 0..<headDim { weighted[row * headDim + d] *= rescale }
                    for j in 0..<valid {
                        let e = expf(scores[j] - best)
                        sums[row] += e
                        let value = v.startIndex + j * stride + h * headDim
                        for d in 0..<headDim { weighted[row * headDim + d] += e * v[value + d] }
                    }
                    maxima[row] = best
                }
            }
        }

        /// `[queries, heads, headDim]`: the weighted values over their sums.
        func result() -> [Float] {
            (0..<(queries * heads * headDim)).map { sums[$0 / headDim] > 0 ? weighted[$0] / sums[$0 / headDim] : 0 }
        }
    }

    /// Softmax attention of one sequence for `heads` heads.
    ///
    /// `q`, `k`, `v` are `[seq, heads, headDim]` row-major; keys at positions
    /// `validKeys..<seq` are masked out (they are sequence padding). Scores are scaled by
    /// `1/sqrt(headDim)`. Returns `[seq, heads, headDim]`.
    static func attention(
        q: UnsafeBufferPointer<Float>, k: UnsafeBufferPointer<Float>, v: UnsafeBufferPointer<Float>,
        seq: Int, heads: Int, headDim: Int, validKeys: Int
    ) -> [Float] {
        let stride = heads * headDim
        let scale = 1 / Float(headDim).squareRoot()
        var out = [Float](repeating: 0, count: seq * stride)
        var scores = [Float](repeating: 0, count: max(validKeys, 1))
        let Q = q.baseAddress!, K = k.baseAddress!, V = v.baseAddress!
        out.withUnsafeMutableBufferPointer { po in
            scores.withUnsafeMutableBufferPointer { ps in
                let O = po.baseAddress!, P = ps.baseAddress!
                for h in 0..<heads {
                    for i in 0..<seq {
                        let qi = Q + i * stride + h * headDim
                        var best = -Float.infinity
                        for j in 0..<validKeys {
                            let kj = K + j * stride + h * headDim
                            var s: Float = 0
                            for d in 0..<headDim { s += qi[d] * kj[d] }
                            s *= scale
                            P[j] = s
                            if s > best { best = s }
                        }
                        var total: Float = 0
                        for j in 0..<validKeys {
                            let e = expf(P[j] - best)
                            P[j] = e
                            total += e
                        }
                        let oi = O + i * stride + h * headDim
                        for j in 0..<validKeys {
                            let w = P[j] / total
                            let vj = V + j * stride + h * headDim
                            for d in 0..<headDim { oi[d] += w * vj[d] }
                        }
                    }
                }
            }
        }
        return out
    }
}

// MARK: - Weights and inputs

/// The block's dimensions, derived from a ``DemoConfiguration``.
struct DemoShape: Sendable, Equatable {
    /// Tokens per sample: frames × height × width patches.
    var tokens: Int
    var hidden: Int
    var heads: Int
    var textDim: Int
    var mlpHidden: Int

    var headDim: Int { hidden / heads }
}

/// The weights of one block, generated from a seed and scaled like `1/sqrt(fan_in)`.
///
/// `wada` is `[textDim, 6C]` (adaLN: shift1, scale1, gate1, shift2, scale2, gate2),
/// `wq`, `wk`, `wv`, `wo` are `[C, C]`, `w1` is `[C, mlpHidden]`, `w2` is `[mlpHidden, C]`.
struct DemoWeights: Sendable, Equatable {
    var wada: DemoMatrix
    var wq: DemoMatrix
    var wk: DemoMatrix
    var wv: DemoMatrix
    var wo: DemoMatrix
    var w1: DemoMatrix
    var w2: DemoMatrix

    init(shape: DemoShape, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        func matrix(_ rows: Int, _ cols: Int) -> DemoMatrix {
            DemoMatrix(rows: rows, cols: cols, data: rng.values(rows * cols, std: 1 / Float(rows).squareRoot()))
        }
        let c = shape.hidden
        wada = matrix(shape.textDim, 6 * c)
        wq = matrix(c, c)
        wk = matrix(c, c)
        wv = matrix(c, c)
        wo = matrix(c, c)
        w1 = matrix(c, shape.mlpHidden)
        w2 = matrix(shape.mlpHidden, c)
    }

    /// This tensor-parallel rank's share: `wada` and `w1` split by columns, `w2` by rows,
    /// the attention weights replicated (attention is sequence-parallel).
    func tensorParallelShard(rank: Int, of size: Int) -> DemoWeights {
        var shard = self
        let ada = wada.cols / size, mlp = w1.cols / size
        shard.wada = wada.columns((rank * ada)..<((rank + 1) * ada))
        shard.w1 = w1.columns((rank * mlp)..<((rank + 1) * mlp))
        shard.w2 = w2.rowRange((rank * mlp)..<((rank + 1) * mlp))
        return shard
    }
}

/// One sample of the batch: latent tokens `x` `[S, C]` and the conditioning vector `c` `[textDim]`.
struct DemoSample: Sendable {
    var x: DemoMatrix
    var c: [Float]

    init(shape: DemoShape, seed: UInt64, index: Int) {
        var rng = SplitMix64(seed: seed ^ (0xD1B5_4A32_D192_ED03 &* UInt64(index + 1)))
        x = DemoMatrix(rows: shape.tokens, cols: shape.hidden, data: rng.values(shape.tokens * shape.hidden, std: 1))
        c = rng.values(shape.textDim, std: 1)
    }
}

// MARK: - Communication

/// The collectives the block needs. The reference uses ``DemoLocal`` (a one-rank world,
/// no communication); the distributed run uses the library's module-level functions.
protocol DemoCommunicator {
    /// Size of the tensor-parallel group and this rank's index in it.
    var tensorParallelSize: Int { get }
    var tensorParallelRank: Int { get }
    func tensorModelParallelAllGather(_ input: Tensor, dim: Int) throws -> Tensor
    func tensorModelParallelAllReduce(_ input: Tensor) throws -> Tensor
    func sequenceModelParallelShard(_ input: Tensor, dim: Int) throws -> (shard: Tensor, originalLength: Int)
    func sequenceModelParallelAllToAll4D(_ input: Tensor, scatterDim: Int, gatherDim: Int, split: AllToAllSplit?) throws -> Tensor
    /// The `(2, 1)` all-to-all in `chunks` groups of the received heads, all started at
    /// once; each closure waits for its chunk.
    func startSequenceModelParallelAllToAll4D(_ input: Tensor, split: AllToAllSplit?, chunks: Int) -> [() throws -> Tensor]
    func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int) throws -> Tensor
    /// USP's ring group: its size (1: Ulysses only) and this rank's place in it.
    var ringSize: Int { get }
    var ringRank: Int { get }
    /// This rank's place in the sequence-parallel group, whose sequence shards it holds in order.
    var sequenceParallelRank: Int { get }
    /// Starts passing `tensor` to the next rank of the ring; the closure waits for the previous rank's.
    func startRingPass(_ tensor: Tensor) -> () throws -> Tensor
    /// The `width` slices before and after this rank's sequence shard, from its SP neighbours.
    func haloExchange(_ shard: Tensor, dim: Int, width: Int) throws -> (before: Tensor, after: Tensor)
}

/// One rank alone: every collective is the identity (what a size-1 group does).
struct DemoLocal: DemoCommunicator {
    var tensorParallelSize: Int { 1 }
    var tensorParallelRank: Int { 0 }
    func tensorModelParallelAllGather(_ input: Tensor, dim: Int) throws -> Tensor { input }
    func tensorModelParallelAllReduce(_ input: Tensor) throws -> Tensor { input }
    func sequenceModelParallelShard(_ input: Tensor, dim: Int) throws -> (shard: Tensor, originalLength: Int) {
        (input, input.shape[dim])
    }
    func sequenceModelParallelAllToAll4D(_ input: Tensor, scatterDim: Int, gatherDim: Int, split: AllToAllSplit?) throws -> Tensor {
        input
    }
    /// One chunk holding every head: nothing to overlap on one rank.
    func startSequenceModelParallelAllToAll4D(_ input: Tensor, split: AllToAllSplit?, chunks: Int) -> [() throws -> Tensor] {
        [{ input }]
    }
    func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int) throws -> Tensor {
        input
    }
    var ringSize: Int { 1 }
    var ringRank: Int { 0 }
    var sequenceParallelRank: Int { 0 }
    func startRingPass(_ tensor: Tensor) -> () throws -> Tensor { { tensor } }
    /// The whole sequence: nothing before or after it.
    func haloExchange(_ shard: Tensor, dim: Int, width: Int) throws -> (before: Tensor, after: Tensor) {
        var empty = shard.shape
        empty[dim] = 0
        let none = try Tensor(zeros: empty, dtype: shard.dtype)
        return (none, none)
    }
}

// MARK: - The block

/// The video-DiT block (adaLN-zero), parallel over whatever `comm` provides.
enum DemoBlock {
    /// Ring attention (USP): `gathered` is `[3, T, h, D]`, q, k and v of this rank's Ulysses
    /// group's `T` tokens for its heads. The k/v blocks of the ring's other Ulysses groups
    /// pass by, each pass overlapped with the attention on the block held, and merge by
    /// log-sum-exp (online softmax). Keys at global positions from `validKeys` are padding.
    /// Returns `[T, h, D]`.
    static func ringAttention(_ gathered: Tensor, headDim: Int, validKeys: Int, comm: some DemoCommunicator) throws -> [Float] {
        let (tokens, heads) = (gathered.shape[1], gathered.shape[2])
        let qkv = try gathered.chunked(3, dim: 0)
        let q = try qkv[0].scalars(as: Float.self)
        var kv = try Tensor.concatenated([qkv[1], qkv[2]], dim: 0)
        var softmax = DemoMath.OnlineSoftmax(queries: tokens, heads: heads, headDim: headDim)
        for step in 0..<comm.ringSize {
            let next = step + 1 < comm.ringSize ? comm.startRingPass(kv) : nil
            // The Ulysses group these keys come from, and so their place in the sequence.
            let block = (comm.ringRank - step + comm.ringSize) % comm.ringSize
            let values = try kv.scalars(as: Float.self)
            let half = values.count / 2
            softmax.attend(q: q, k: values[..<half], v: values[half...], keys: tokens, keyOffset: block * tokens, validKeys: validKeys)
            if let next { kv = try next() }
        }
        return softmax.result()
    }

    /// `x[t] += ¼·x[t − F] + ½·x[t] + ¼·x[t + F]` on this rank's shard of the sequence, `F`
    /// tokens a frame: a 3-tap temporal convolution, frames beyond the sequence (and its
    /// padding) zero. The frames next to the shard come from the SP neighbours' halo
    /// exchange; each element is the same sum as on one rank, so the result is the same bits.
    static func temporalConvolve(_ x: inout DemoMatrix, frame: Int, validTokens: Int, comm: some DemoCommunicator) throws {
        let (rows, c) = (x.rows, x.cols)
        let offset = comm.sequenceParallelRank * rows  // the shards are equal (padded)
        var input = x
        for t in 0..<rows where offset + t >= validTokens {
            input.data.replaceSubrange((t * c)..<((t + 1) * c), with: repeatElement(0, count: c))
        }
        let (before, after) = try comm.haloExchange(Tensor(shape: [rows, c], scalars: input.data), dim: 0, width: frame)
        let (b, a) = (try before.scalars(as: Float.self), try after.scalars(as: Float.self))
        /// Element `j` of row `t` of the sequence around the shard (0 beyond it).
        func value(_ t: Int, _ j: Int) -> Float {
            if t < 0 { return t + before.shape[0] >= 0 ? b[(t + before.shape[0]) * c + j] : 0 }
            if t >= rows { return t - rows < after.shape[0] ? a[(t - rows) * c + j] : 0 }
            return input.data[t * c + j]
        }
        for t in 0..<rows {
            for j in 0..<c { x.data[t * c + j] += 0.25 * value(t - frame, j) + 0.5 * value(t, j) + 0.25 * value(t + frame, j) }
        }
    }

    /// Runs the block on one sample and returns its output `[S, C]`.
    ///
    /// - Parameter weights: this rank's tensor-parallel shard of the weights
    ///   (``DemoWeights/tensorParallelShard(rank:of:)``; the full weights for one rank).
    ///
    /// Steps: (1) `mod = silu(c) @ Wada`, columns split over TP, all-gathered;
    /// (2) Ulysses attention: shard the sequence over SP, project q/k/v, all-to-all to
    /// full sequence × local heads, attend (padded keys masked), all-to-all back,
    /// `x += gate1 · (attn @ Wo)`; (3) all-gather the sequence (unpadded);
    /// (4) Megatron MLP over TP: `gelu(h @ W1_cols) @ W2_rows`, all-reduced,
    /// `x += gate2 · mlp`.
    ///
    /// With `overlapChunks` > 1, the q/k/v all-to-all runs in that many groups of heads,
    /// started at once, and attention on each group starts as soon as it has arrived, while
    /// the next is still being exchanged.
    static func forward(
        sample: DemoSample, weights: DemoWeights, shape: DemoShape, comm: some DemoCommunicator, overlapChunks: Int = 1,
        temporalConvolution frame: Int? = nil
    ) throws -> DemoMatrix {
        let c = shape.hidden, heads = shape.heads, headDim = shape.headDim

        // 1. adaLN modulation, tensor parallel over the columns of Wada.
        let conditioning = DemoMatrix(rows: 1, cols: shape.textDim, data: sample.c.map(DemoMath.silu))
        let modLocal = DemoMath.matmul(conditioning, weights.wada)
        let modTensor = try comm.tensorModelParallelAllGather(
            Tensor(shape: [1, modLocal.cols], scalars: modLocal.data), dim: -1)
        let mod = try modTensor.scalars(as: Float.self)
        guard mod.count == 6 * c else {
            throw FVDError.invalidArgument("demo: modulation has \(mod.count) values, expected \(6 * c)")
        }
        let shift1 = mod[0..<c], scale1 = mod[c..<(2 * c)], gate1 = mod[(2 * c)..<(3 * c)]
        let shift2 = mod[(3 * c)..<(4 * c)], scale2 = mod[(4 * c)..<(5 * c)], gate2 = mod[(5 * c)..<(6 * c)]

        // 2. Self-attention, Ulysses sequence parallel.
        let (shardTensor, length) = try comm.sequenceModelParallelShard(
            Tensor(shape: [1, shape.tokens, c], scalars: sample.x.data), dim: 1)
        let localTokens = shardTensor.shape[1]
        var xLocal = DemoMatrix(rows: localTokens, cols: c, data: try shardTensor.scalars(as: Float.self))
        let h = DemoMath.modulate(DemoMath.layerNorm(xLocal), shift: shift1, scale: scale1)
        // q, k and v travel in one all-to-all, stacked on the batch dimension (as FastVideo does).
        let qkv = DemoMath.matmul(h, weights.wq).data + DemoMath.matmul(h, weights.wk).data
            + DemoMath.matmul(h, weights.wv).data
        // The uneven split: any head count works (30 heads on 4 ranks go 8, 8, 7, 7).
        let qkvTensor = try Tensor(shape: [3, localTokens, heads, headDim], scalars: qkv)
        let chunks = overlapChunks > 1
            ? comm.startSequenceModelParallelAllToAll4D(qkvTensor, split: .balanced, chunks: overlapChunks)
            : [{ try comm.sequenceModelParallelAllToAll4D(qkvTensor, scatterDim: 2, gatherDim: 1, split: .balanced) }]
        // Attention on each group of heads as it arrives, into [fullTokens, localHeads, headDim].
        var parts: [(heads: Int, values: [Float])] = []
        var fullTokens = 0
        for chunk in chunks {
            let gathered = try chunk()
            fullTokens = gathered.shape[1]
            let chunkHeads = gathered.shape[2], perTensor = fullTokens * chunkHeads * headDim
            if comm.ringSize > 1 {
                parts.append((chunkHeads, try ringAttention(gathered, headDim: headDim, validKeys: length, comm: comm)))
                continue
            }
            parts.append((chunkHeads, try gathered.withUnsafeBufferPointer(as: Float.self) { all in
                DemoMath.attention(
                    q: UnsafeBufferPointer(rebasing: all[0..<perTensor]),
                    k: UnsafeBufferPointer(rebasing: all[perTensor..<(2 * perTensor)]),
                    v: UnsafeBufferPointer(rebasing: all[(2 * perTensor)..<(3 * perTensor)]),
                    seq: fullTokens, heads: chunkHeads, headDim: headDim, validKeys: length)
            }))
        }
        let localHeads = parts.reduce(0) { $0 + $1.heads }
        var attended = parts.count == 1 ? parts[0].values : [Float](repeating: 0, count: fullTokens * localHeads * headDim)
        if parts.count > 1 {
            var start = 0
            for part in parts {
                for t in 0..<fullTokens {
                    let row = part.heads * headDim
                    attended.replaceSubrange(
                        (t * localHeads + start) * headDim..<((t * localHeads + start) * headDim + row),
                        with: part.values[(t * row)..<((t + 1) * row)])
                }
                start += part.heads
            }
        }
        let back = try comm.sequenceModelParallelAllToAll4D(
            Tensor(shape: [1, fullTokens, localHeads, headDim], scalars: attended), scatterDim: 1, gatherDim: 2, split: .balanced)
        let attn = DemoMatrix(rows: localTokens, cols: c, data: try back.scalars(as: Float.self))
        DemoMath.addGated(&xLocal, DemoMath.matmul(attn, weights.wo), gate: gate1)
        if let frame { try temporalConvolve(&xLocal, frame: frame, validTokens: length, comm: comm) }

        // 3. The whole sequence on every rank again.
        let full = try comm.sequenceModelParallelAllGatherWithUnpad(
            Tensor(shape: [1, localTokens, c], scalars: xLocal.data), originalLength: length, dim: 1)
        var x = DemoMatrix(rows: length, cols: c, data: try full.scalars(as: Float.self))

        // 4. MLP, Megatron tensor parallel: W1 by columns, W2 by rows, all-reduce.
        var hidden = DemoMath.matmul(DemoMath.modulate(DemoMath.layerNorm(x), shift: shift2, scale: scale2), weights.w1)
        DemoMath.geluInPlace(&hidden)
        let partial = DemoMath.matmul(hidden, weights.w2)
        let mlp = try comm.tensorModelParallelAllReduce(Tensor(shape: [length, c], scalars: partial.data))
        DemoMath.addGated(&x, DemoMatrix(rows: length, cols: c, data: try mlp.scalars(as: Float.self)), gate: gate2)
        return x
    }
}
