// FastVideo's `fastvideo.distributed.communication_op`, under Swift names.
//
// The free functions use ``ParallelState/current`` (bind it with
// ``ParallelState/withCurrent(_:)``) like FastVideo's use its global groups; the same
// operations are methods of ``ParallelState`` for code that passes the state around.

/// `tensor_model_parallel_all_reduce`: reduction over the tensor-parallel group.
///
/// - Throws: ``FVDError/noParallelState`` outside ``ParallelState/withCurrent(_:)-7uxvz``,
///   and the errors of ``GroupCoordinator/allReduce(_:op:)-3jrs4``.
public func tensorModelParallelAllReduce(_ input: Tensor, op: ReduceOp = .sum) throws -> Tensor {
    try ParallelState.require().tensorModelParallelAllReduce(input, op: op)
}

/// `tensor_model_parallel_all_gather`: concatenation along `dim` over the tensor-parallel group.
public func tensorModelParallelAllGather(_ input: Tensor, dim: Int = -1) throws -> Tensor {
    try ParallelState.require().tensorModelParallelAllGather(input, dim: dim)
}

/// `sequence_model_parallel_all_gather`: concatenation along `dim` over the sequence-parallel group.
public func sequenceModelParallelAllGather(_ input: Tensor, dim: Int = -1) throws -> Tensor {
    try ParallelState.require().sequenceModelParallelAllGather(input, dim: dim)
}

/// `sequence_model_parallel_all_to_all_4D`: the Ulysses all-to-all over the sequence-parallel group.
///
/// `split` (beyond FastVideo) takes uneven sizes and grouped-query key/value heads; see ``AllToAllSplit``.
public func sequenceModelParallelAllToAll4D(
    _ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
) throws -> Tensor {
    try ParallelState.require().sequenceModelParallelAllToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
}

/// `sequence_model_parallel_shard`: this rank's slice of `input` along `dim`, zero-padded.
public func sequenceModelParallelShard(_ input: Tensor, dim: Int = 1) throws -> (shard: Tensor, originalLength: Int) {
    try ParallelState.require().sequenceModelParallelShard(input, dim: dim)
}

/// `sequence_model_parallel_all_gather_with_unpad`: all-gather along `dim`, cut to `originalLength`.
public func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int = -2) throws -> Tensor {
    try ParallelState.require().sequenceModelParallelAllGatherWithUnpad(input, originalLength: originalLength, dim: dim)
}

extension ParallelState {
    /// `tensor_model_parallel_all_reduce`: ``GroupCoordinator/allReduce(_:op:)-3jrs4`` on the TP group.
    ///
    /// Same shape and dtype as the input; reduced in TP-rank order, bitwise equal on every rank.
    public func tensorModelParallelAllReduce(_ input: Tensor, op: ReduceOp = .sum) throws -> Tensor {
        try tensorParallel.allReduce(input, op: op)
    }

    /// `tensor_model_parallel_all_gather`: ``GroupCoordinator/allGather(_:dim:)-1nply`` on the TP group.
    ///
    /// Output `shape[dim] = tp × input.shape[dim]`, inputs concatenated in TP-rank order.
    public func tensorModelParallelAllGather(_ input: Tensor, dim: Int = -1) throws -> Tensor {
        try tensorParallel.allGather(input, dim: dim, op: .tensorModelParallelAllGather)
    }

    /// `sequence_model_parallel_all_gather`: ``GroupCoordinator/allGather(_:dim:)-1nply`` on the SP group.
    public func sequenceModelParallelAllGather(_ input: Tensor, dim: Int = -1) throws -> Tensor {
        try sequenceParallel.allGather(input, dim: dim, op: .sequenceModelParallelAllGather)
    }

    /// `sequence_model_parallel_all_to_all_4D`: the Ulysses all-to-all on the SP group.
    ///
    /// With `n` SP ranks and this rank's index `r`:
    /// - `(scatterDim 2, gatherDim 1)`: input `[B, S/n, H, D]` (a sequence shard, all
    ///   heads), output `[B, S, H/n, D]` with `out[b, j·(S/n) + t, h, d] = in_j[b, t, r·(H/n) + h, d]`;
    /// - `(scatterDim 1, gatherDim 2)`: the exact inverse, `[B, S, H/n, D]` → `[B, S/n, H, D]`.
    ///
    /// Negative dims are accepted (`-2` is 2, `-3` is 1).
    /// - Throws: ``FVDError/wrongRank(op:expected:shape:)`` for a tensor that is not 4-D,
    ///   ``FVDError/unsupportedDimPair(op:scatterDim:gatherDim:)`` for other pairs,
    ///   ``FVDError/indivisible(op:dim:size:parts:)`` when the scattered dimension does not
    ///   divide by `n` — on every rank.
    ///
    /// With a `split` (beyond FastVideo), the sizes need not divide: 30 heads on 4 ranks
    /// go 8, 8, 7, 7 and 1001 tokens 251, 250, 250, 250 by default, or as the split says,
    /// and key/value tensors with fewer heads than the queries go to the ranks whose query
    /// heads use them (see ``AllToAllSplit``). Sizes that do not sum up, or a split that
    /// differs between ranks, throw on every rank.
    /// - Complexity: each rank writes its output once, straight from its peers' inputs;
    ///   no transposes before or after the exchange.
    public func sequenceModelParallelAllToAll4D(
        _ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
    ) throws -> Tensor {
        try sequenceParallel.allToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
    }

    /// `sequence_model_parallel_shard`: pads `input` with zeros along `dim` to a multiple
    /// of the SP size `n` and returns this rank's slice and the original length.
    ///
    /// The slice has `ceil(L / n)` entries along `dim` (`L` the original length); rank
    /// `r` gets entries `r·c ..< (r+1)·c` of the padded tensor. Local: no communication.
    public func sequenceModelParallelShard(_ input: Tensor, dim: Int = 1) throws -> (shard: Tensor, originalLength: Int) {
        let d = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: "sequence_model_parallel_shard")
        let n = sequenceParallel.size, r = sequenceParallel.rankInGroup
        let length = input.shape[d]
        let part = (length + n - 1) / n
        let start = min(r * part, length), end = min(start + part, length)
        if n == 1 { return (input, length) }
        var shape = input.shape
        shape[d] = part
        var shard = try Tensor(zeros: shape, dtype: input.dtype)
        let (outer, _, inner) = Layout.split(input.shape, at: d)
        let plan = Layout.slab(
            outer: outer, innerBytes: inner * input.dtype.byteSize, srcSize: length, srcStart: start,
            dstSize: part, dstStart: 0, length: end - start)
        input.withUnsafeBytes { src in
            shard.withUnsafeMutableBytes { dst in execute(plan, from: src.baseAddress!, to: dst.baseAddress!, streaming: false) }
        }
        return (shard, length)
    }

    /// `sequence_model_parallel_all_gather_with_unpad`: all-gathers along `dim` over the
    /// SP group and keeps the first `originalLength` entries (the inverse of
    /// ``sequenceModelParallelShard(_:dim:)``). Default `dim = -2`, as in FastVideo.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` if `originalLength` exceeds `n × shape[dim]`.
    public func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int = -2) throws -> Tensor {
        try sequenceParallel.allGatherWithUnpad(input, originalLength: originalLength, dim: dim)
    }
}
