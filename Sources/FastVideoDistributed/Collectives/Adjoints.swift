/// Vector-Jacobian products (adjoints) of the collectives, for hand-written backward passes.
///
/// Convention: a collective maps every rank's input to every rank's output, and its
/// adjoint satisfies the dot-product identity summed over the ranks,
/// `Σ_r ⟨op(x)_r, y_r⟩ = Σ_r ⟨x_r, op*(y)_r⟩`: given each rank's gradient of the loss
/// with respect to its output, `op*` returns each rank's gradient with respect to its input.
/// The pairs: all-gather ↔ reduce-scatter (sum), all-reduce (sum) ↔ itself, the all-to-all
/// `(2, 1)` ↔ `(1, 2)` with the same split, broadcast ↔ sum onto the root, gather ↔
/// scatter from the root.
///
/// Shard takes a tensor that is the same on every rank (replicated); its adjoint is the
/// all-gather of the gradients divided by the group size `n` (Megatron's and FastVideo's
/// "gather forward, split backward" with `grad_scale="down"` seen from the other side):
/// each rank's share, summed over the ranks as a data-parallel all-reduce of a replicated
/// parameter's gradient does, is the whole gradient.
///
/// Each is one collective (or one all-reduce) of the same cost as the forward operation.
extension GroupCoordinator {
    /// The adjoint of ``allReduce(_:op:)-3jrs4`` with `sum`: the gradients summed over the group.
    public func allReduceVJP(_ gradient: Tensor) throws -> Tensor {
        try allReduce(gradient, op: .sum)
    }

    /// The adjoint of ``allGather(_:dim:)-1nply``: the gradients summed over the group, this
    /// rank's block along `dim` kept (a reduce-scatter).
    public func allGatherVJP(_ gradient: Tensor, dim: Int = -1) throws -> Tensor {
        try reduceScatter(gradient, dim: dim, op: .sum)
    }

    /// The adjoint of ``reduceScatter(_:dim:op:)-2em2i`` with `sum`: the all-gather of the gradients.
    public func reduceScatterVJP(_ gradient: Tensor, dim: Int = -1) throws -> Tensor {
        try allGather(gradient, dim: dim)
    }

    /// The adjoint of ``allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd``: the all-to-all the
    /// other way with the same split (the exchange is a permutation).
    ///
    /// With a split, the adjoint scatters what the forward call gathered, so it needs the
    /// forward inputs' sizes on that side: the split's `sequence` for `(2, 1)`, its `heads`
    /// for `(1, 2)`. The forward call took them from the ranks' shapes; here they must be
    /// given (``AllToAllSplit/balanced(_:parts:)`` when the shards were balanced).
    /// - Throws: ``FVDError/invalidArgument(_:)`` when they are missing, and for a
    ///   grouped-query split, whose replication is not a permutation (its adjoint would
    ///   sum the replicas); and the errors of the all-to-all.
    public func allToAll4DVJP(_ gradient: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil) throws -> Tensor {
        let op = "all_to_all_4D_vjp"
        if let split {
            guard split.queryHeads == nil else {
                throw FVDError.invalidArgument("\(op): the adjoint of a grouped-query split (which replicates heads) is not provided")
            }
            let scatterHeads = (try? Layout.normalize(dim: scatterDim, ndim: 4, op: op)) == 2
            guard (scatterHeads ? split.sequence : split.heads) != nil else {
                throw FVDError.invalidArgument(
                    "\(op): give the split's \(scatterHeads ? "sequence" : "heads") sizes, those of the forward inputs, which the adjoint scatters")
            }
        }
        return try allToAll4D(gradient, scatterDim: gatherDim, gatherDim: scatterDim, split: split)
    }

    /// The adjoint of ``broadcast(_:from:)-50ws7``: on `root`, the gradients summed over the
    /// group; zeros elsewhere (their inputs were not read).
    public func broadcastVJP(_ gradient: Tensor, from root: Int = 0) throws -> Tensor {
        let sum = try allReduce(gradient, op: .sum)
        return rankInGroup == root ? sum : try Tensor(zeros: gradient.shape, dtype: gradient.dtype)
    }

    /// The adjoint of ``gather(_:to:dim:)-7rwah``: the root's gradient (pass `nil` elsewhere),
    /// sliced along `dim`, each rank getting its block.
    ///
    /// - Throws: ``FVDError/indivisible(op:dim:size:parts:)`` when the root's gradient does
    ///   not split into the group size along `dim`.
    public func gatherVJP(_ gradient: Tensor?, to root: Int = 0, dim: Int = -1) throws -> Tensor {
        let op = "gather_vjp"
        let whole = try broadcastAnyShape(rankInGroup == root ? gradient ?? Tensor.empty : Tensor.empty, from: root, op: .gatherVJP)
        let d = try Layout.normalize(dim: dim, ndim: whole.dimensionCount, op: op)
        guard whole.shape[d] % size == 0 else { throw FVDError.indivisible(op: op, dim: d, size: whole.shape[d], parts: size) }
        let part = whole.shape[d] / size
        return try Tensor.slice(whole, dim: d, range: (rankInGroup * part)..<((rankInGroup + 1) * part))
    }
}

extension ParallelState {
    /// The adjoint of ``tensorModelParallelAllReduce(_:op:)-12nb4`` (sum): the TP all-reduce.
    public func tensorModelParallelAllReduceVJP(_ gradient: Tensor) throws -> Tensor {
        try tensorParallel.allReduceVJP(gradient)
    }

    /// The adjoint of ``tensorModelParallelAllGather(_:dim:)-5d1s6``: the TP reduce-scatter.
    public func tensorModelParallelAllGatherVJP(_ gradient: Tensor, dim: Int = -1) throws -> Tensor {
        try tensorParallel.allGatherVJP(gradient, dim: dim)
    }

    /// The adjoint of ``sequenceModelParallelAllGather(_:dim:)-170gl``: the SP reduce-scatter.
    public func sequenceModelParallelAllGatherVJP(_ gradient: Tensor, dim: Int = -1) throws -> Tensor {
        try sequenceParallel.allGatherVJP(gradient, dim: dim)
    }

    /// The adjoint of ``sequenceModelParallelAllToAll4D(_:scatterDim:gatherDim:split:)-2qzym``:
    /// the all-to-all the other way, with the same split.
    public func sequenceModelParallelAllToAll4DVJP(
        _ gradient: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
    ) throws -> Tensor {
        try sequenceParallel.allToAll4DVJP(gradient, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
    }

    /// The adjoint of ``sequenceModelParallelShard(_:dim:)`` for an input that is the same
    /// on every SP rank: the all-gather of the shards' gradients, unpadded to
    /// `originalLength`, divided by the SP size (see the convention above).
    ///
    /// - Throws: ``FVDError/unsupportedDType(op:dtype:reason:)`` for a dtype that is not
    ///   floating point (the division).
    public func sequenceModelParallelShardVJP(_ gradient: Tensor, originalLength: Int, dim: Int = 1) throws -> Tensor {
        let gathered = try sequenceParallel.allGatherWithUnpad(gradient, originalLength: originalLength, dim: dim)
        return try gathered.scaled(by: 1 / Double(sequenceParallel.size), op: "sequence_model_parallel_shard_vjp")
    }

    /// The adjoint of ``sequenceModelParallelAllGatherWithUnpad(_:originalLength:dim:)-63o2h``:
    /// the gradient (length `originalLength` along `dim`) zero-padded back to the group's
    /// whole length, summed over the group, this rank's block kept.
    public func sequenceModelParallelAllGatherWithUnpadVJP(_ gradient: Tensor, shardLength: Int, dim: Int = -2) throws -> Tensor {
        let op = "sequence_model_parallel_all_gather_with_unpad_vjp"
        let d = try Layout.normalize(dim: dim, ndim: gradient.dimensionCount, op: op)
        let n = sequenceParallel.size, length = gradient.shape[d]
        guard shardLength >= 0, length <= n * shardLength else {
            throw FVDError.invalidArgument(
                "\(op): a gradient of length \(length) along dim \(dim) does not fit \(n) shards of \(shardLength)")
        }
        var shape = gradient.shape
        shape[d] = n * shardLength
        var padded = try Tensor(zeros: shape, dtype: gradient.dtype)
        let (outer, _, inner) = Layout.split(gradient.shape, at: d)
        let plan = Layout.slab(
            outer: outer, innerBytes: inner * gradient.dtype.byteSize, srcSize: length, srcStart: 0,
            dstSize: n * shardLength, dstStart: 0, length: length)
        gradient.withUnsafeBytes { src in
            padded.withUnsafeMutableBytes { dst in execute(plan, from: src.baseAddress!, to: dst.baseAddress!, streaming: false) }
        }
        return try sequenceParallel.reduceScatter(padded, dim: d, op: .sum)
    }
}

extension Tensor {
    /// Every element times `factor`; 16-bit floats computed in float32 and rounded once.
    ///
    /// - Throws: ``FVDError/unsupportedDType(op:dtype:reason:)`` for a dtype that is not floating point.
    func scaled(by factor: Double, op: String) throws -> Tensor {
        var out = self
        switch dtype {
        case .float64: try out.withUnsafeMutableBufferPointer(as: Double.self) { for i in $0.indices { $0[i] *= factor } }
        case .float32: try out.withUnsafeMutableBufferPointer(as: Float.self) { for i in $0.indices { $0[i] *= Float(factor) } }
        case .float16:
            try out.withUnsafeMutableBufferPointer(as: Float16.self) { for i in $0.indices { $0[i] = Float16(Float($0[i]) * Float(factor)) } }
        case .bfloat16:
            try out.withUnsafeMutableBufferPointer(as: BFloat16.self) { for i in $0.indices { $0[i] = BFloat16(Float($0[i]) * Float(factor)) } }
        default:
            throw FVDError.unsupportedDType(op: op, dtype: dtype, reason: "its 1/n scaling needs a floating-point dtype")
        }
        return out
    }
}
