// Beyond Ulysses: the ring pass of ring attention (USP), and the neighbour-only halo
// exchange of convolutions over a sharded sequence. Both are collectives of the group
// (one rendezvous, the same header checks as every collective), in which each rank reads
// only its neighbours' data: once, in place, on the in-process and shared-memory
// transports; as point-to-point messages on MPI.

extension GroupCoordinator {
    /// Hands `tensor` to the next rank of the group and returns the previous rank's: one
    /// step of ring attention's key/value rotation.
    ///
    /// Group rank `i` receives the tensor of `(i - 1 + n) % n` (``previousRank``), its own
    /// going to `(i + 1) % n` (``nextRank``); with `reverse`, the other way round, which is
    /// the adjoint (``ringPassVJP(_:shape:)-2r1t4``). After `n` passes every tensor is back where it
    /// started. The tensors may differ in shape from rank to rank (uneven sequence shards);
    /// every rank passes the same dtype and direction. A group of one returns `tensor`.
    ///
    /// - Parameters:
    ///   - tensor: this rank's tensor.
    ///   - shape: the shape this rank expects to receive, if it wants it checked.
    ///   - reverse: pass to the previous rank instead.
    /// - Returns: the previous rank's tensor (the next rank's with `reverse`).
    /// - Throws: ``FVDError/dtypeMismatch(op:group:ranks:dtypes:)`` or
    ///   ``FVDError/argumentMismatch(op:group:ranks:arguments:)`` (directions) on every rank;
    ///   ``FVDError/shapeMismatch(op:group:ranks:shapes:)`` (sender first) on a rank whose
    ///   `shape` differs from what it received; the timeout and peer errors of every
    ///   collective when a rank never arrives, failed or exited.
    /// - Complexity: one rendezvous of the group; each rank copies its neighbour's bytes once.
    public func ringPass(_ tensor: Tensor, shape: [Int]? = nil, reverse: Bool = false) throws -> Tensor {
        guard size > 1 else {
            if let shape, shape != tensor.shape {
                throw FVDError.shapeMismatch(op: "ring_pass", group: description, ranks: [rank, rank], shapes: [tensor.shape, shape])
            }
            return tensor
        }
        let n = size
        let source = { (i: Int) in reverse ? (i + 1) % n : (i - 1 + n) % n }
        return try collective(.ringPass, tensor, arguments: ArgumentList(reverse ? 1 : 0), payload: { $0.byteCount }) { _ in
            let from = source(rankInGroup)
            let sent = try channel.slot(of: from).dataShape()
            let output = Tensor(uninitializedShape: sent, dtype: tensor.dtype)
            try pullFromEveryMember(channel, into: output.storage.pointer, totalBytes: output.byteCount) { j, i in
                let bytes = j == source(i) ? (try? channel.slot(of: j).dataShape().reduce(1, *)) ?? 0 : 0
                return StridedCopy.contiguous(srcOffset: 0, dstOffset: 0, bytes: bytes * tensor.dtype.byteSize)
            }
            // After the data moved: a rank that throws before would leave MPI peers waiting for its messages.
            if let shape, shape != sent {
                throw FVDError.shapeMismatch(op: "ring_pass", group: channel.label, ranks: [ranks[from], rank], shapes: [sent, shape])
            }
            return output
        }
    }

    /// The adjoint of ``ringPass(_:shape:reverse:)-1ukgy``: the gradients passed back around the ring.
    public func ringPassVJP(_ gradient: Tensor, shape: [Int]? = nil) throws -> Tensor {
        try ringPass(gradient, shape: shape, reverse: true)
    }

    /// Starts ``ringPass(_:shape:reverse:)-1ukgy``, so that the next key/value block travels while
    /// this rank attends to the one it holds (ring attention's overlap).
    public func startRingPass(_ tensor: Tensor, shape: [Int]? = nil, reverse: Bool = false) -> CollectiveHandle<Tensor> {
        start { try $0.ringPass(tensor, shape: shape, reverse: reverse) }
    }

    /// The `width` slices along `dim` just before and just after this rank's shard, from
    /// its neighbours only: the boundary a convolution over a sequence sharded across the
    /// group needs.
    ///
    /// The ranks hold consecutive shards of one sequence along `dim`, in group-rank order;
    /// the shards may differ in length. `before` is the last `width` slices of the previous
    /// rank's shard and `after` the first `width` of the next rank's. At the ends of the
    /// sequence they are empty (size 0 along `dim`) unless `periodic`, when the sequence
    /// wraps around. Every rank passes the same `dim`, `width` and `periodic`, and shards of
    /// the same dtype and the same size in every other dimension.
    ///
    /// - Returns: `before` and `after`, each this rank's shape with `width` (or 0) along `dim`.
    /// - Throws: on every rank: ``FVDError/argumentMismatch(op:group:ranks:arguments:)`` when
    ///   the ranks pass different `dim`, `width` or `periodic`;
    ///   ``FVDError/dtypeMismatch(op:group:ranks:dtypes:)``;
    ///   ``FVDError/shapeMismatch(op:group:ranks:shapes:)`` when shards differ in another
    ///   dimension; ``FVDError/invalidArgument(_:)`` for a negative `width` or one longer
    ///   than a shard a halo is cut from (naming its rank and length);
    ///   ``FVDError/invalidDimension(op:dim:ndim:)``. The timeout and peer errors of every
    ///   collective.
    /// - Complexity: one rendezvous of the group; each rank copies `2 × width` slices, from
    ///   its two neighbours only (an all-gather of the same boundaries copies `n` times as many).
    public func haloExchange(_ shard: Tensor, dim: Int, width: Int, periodic: Bool = false) throws -> (before: Tensor, after: Tensor) {
        let op = CollectiveOp.haloExchange
        guard size > 1 else {
            // A group of one is its own neighbour when the sequence wraps around.
            let d = try Layout.normalize(dim: dim, ndim: shard.dimensionCount, op: op.name)
            let plan = try HaloPlan(
                shard.shape, lengths: [shard.shape[d]], dim: d, width: width, periodic: periodic, group: description, ranks: ranks)
            return periodic ? (try plan.tail(of: shard), try plan.head(of: shard)) : (plan.empty(shard.dtype), plan.empty(shard.dtype))
        }
        return try collective(op, shard, arguments: ArgumentList([dimKey(dim, shard.dimensionCount), width, periodic ? 1 : 0])) { _ in
            let d = try Layout.normalize(dim: dim, ndim: shard.dimensionCount, op: op.name)
            _ = try channel.slot(of: rankInGroup).dataShape()  // at most the dimensions a header holds
            // Every member's shard: this one's size in every dimension but `d` (read in place, no arrays).
            let nd = shard.dimensionCount
            let fits = (0..<size).allSatisfy { j in
                let peer = channel.slot(of: j)
                return peer.ndim == nd && (0..<nd).allSatisfy { $0 == d || peer.dimension($0) == shard.shape[$0] }
            }
            guard fits else {
                throw FVDError.shapeMismatch(op: op.name, group: channel.label, ranks: ranks, shapes: (0..<size).map { channel.slot(of: $0).shape })
            }
            let plan = try HaloPlan(
                shard.shape, lengths: (0..<size).map { channel.slot(of: $0).dimension(d) }, dim: d, width: width, periodic: periodic,
                group: channel.label, ranks: ranks)
            let es = shard.dtype.byteSize
            let before = Tensor(uninitializedShape: plan.haloShape(plan.hasBefore(rankInGroup) ? width : 0), dtype: shard.dtype)
            let after = Tensor(uninitializedShape: plan.haloShape(plan.hasAfter(rankInGroup) ? width : 0), dtype: shard.dtype)
            try pullFromEveryMember(channel, into: before.storage.pointer, totalBytes: before.byteCount) { j, i in
                plan.hasBefore(i) && j == plan.previous(i) ? plan.slab(from: j, start: plan.lengths[j] - width, elementBytes: es) : .empty
            }
            try pullFromEveryMember(channel, into: after.storage.pointer, totalBytes: after.byteCount) { j, i in
                plan.hasAfter(i) && j == plan.next(i) ? plan.slab(from: j, start: 0, elementBytes: es) : .empty
            }
            return (before, after)
        }
    }

    /// The adjoint of ``haloExchange(_:dim:width:periodic:)-9ryg0``: the gradients of this rank's
    /// `before` and `after` go back to the neighbours they came from, which add them to
    /// their boundary slices.
    ///
    /// - Parameters:
    ///   - before: the gradient of this rank's `before` (its shape).
    ///   - after: the gradient of this rank's `after`.
    ///   - shard: this rank's shard of the forward call (its shape and dtype).
    ///   - dim: the forward call's `dim`.
    ///   - width: the forward call's `width`.
    ///   - periodic: the forward call's `periodic`.
    /// - Returns: the gradient of this rank's shard through the exchange: zeros, plus the
    ///   next rank's `before` gradient on its last `width` slices and the previous rank's
    ///   `after` gradient on its first `width` (their sum where they overlap). Add it to the
    ///   shard's own gradient.
    /// - Throws: ``FVDError/unsupportedDType(op:dtype:reason:)`` for a dtype that is not
    ///   floating-point; ``FVDError/invalidArgument(_:)`` on this rank for gradients of
    ///   other shapes than its halos; the errors of ``ringPass(_:shape:reverse:)-1ukgy``.
    /// - Complexity: two ring passes (the halos' sizes differ only at the ends, where they are empty).
    public func haloExchangeVJP(before: Tensor, after: Tensor, shard: Tensor, dim: Int, width: Int, periodic: Bool = false) throws
        -> Tensor
    {
        let op = "halo_exchange_vjp"
        // `before` came from the previous rank: its gradient goes back there; `after` forward.
        let fromNext = try ringPass(before, reverse: true), fromPrevious = try ringPass(after)
        let d = try Layout.normalize(dim: dim, ndim: shard.dimensionCount, op: op)
        guard shard.dtype.isFloatingPoint else {
            throw FVDError.unsupportedDType(op: op, dtype: shard.dtype, reason: "its gradient sums need a floating-point dtype")
        }
        let (r, n) = (rankInGroup, size)
        func halo(_ present: Bool) -> [Int] {
            var shape = shard.shape
            shape[d] = present ? width : 0
            return shape
        }
        // What this rank's neighbours sent back: the gradients of the halos cut from its shard.
        let (tailShape, headShape) = (halo(periodic || r < n - 1), halo(periodic || r > 0))
        guard before.shape == halo(periodic || r > 0), after.shape == halo(periodic || r < n - 1),
            fromNext.shape == tailShape, fromPrevious.shape == headShape, [before.dtype, after.dtype].allSatisfy({ $0 == shard.dtype })
        else {
            throw FVDError.invalidArgument(
                "\(op): the gradients have shapes \(before.shape) and \(after.shape) (\(before.dtype)); this rank's halos have "
                    + "\(halo(periodic || r > 0)) and \(halo(periodic || r < n - 1)) of \(shard.dtype)")
        }
        var gradient = try Tensor(zeros: shard.shape, dtype: shard.dtype)
        try gradient.add(fromNext, dim: d, at: shard.shape[d] - fromNext.shape[d])
        try gradient.add(fromPrevious, dim: d, at: 0)
        return gradient
    }
}

/// Who cuts which halo from whom, from every rank's shard length along the exchanged dimension.
private struct HaloPlan {
    let shape: [Int]
    let lengths: [Int]
    let dim: Int
    let width: Int
    let periodic: Bool
    let outer: Int
    let inner: Int

    /// `dim` is normalized (0 ..< `shape.count`).
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a negative width or one longer than a
    ///   shard a halo is cut from.
    init(_ shape: [Int], lengths: [Int], dim d: Int, width: Int, periodic: Bool, group: String, ranks: [Int]) throws {
        let op = CollectiveOp.haloExchange.name
        guard width >= 0 else { throw FVDError.invalidArgument("\(op) in group \(group): width must be at least 0, got \(width)") }
        let n = lengths.count
        // Every shard has a neighbour that cuts a halo from it (itself, periodic, in a group
        // of one), except the shard of a group of one without `periodic`.
        if periodic || n > 1, let j = lengths.firstIndex(where: { $0 < width }) {
            throw FVDError.invalidArgument(
                "\(op) in group \(group): width \(width) is longer than rank \(ranks[j])'s shard of \(lengths[j]) along dim \(d), "
                    + "which a neighbour's halo is cut from")
        }
        (self.shape, self.lengths, self.dim, self.width, self.periodic) = (shape, lengths, d, width, periodic)
        (outer, _, inner) = Layout.split(shape, at: d)
    }

    func previous(_ i: Int) -> Int { (i - 1 + lengths.count) % lengths.count }
    func next(_ i: Int) -> Int { (i + 1) % lengths.count }
    func hasBefore(_ i: Int) -> Bool { periodic || i > 0 }
    func hasAfter(_ i: Int) -> Bool { periodic || i < lengths.count - 1 }

    /// This rank's shape with `width` entries along the exchanged dimension.
    func haloShape(_ width: Int) -> [Int] {
        var halo = shape
        halo[dim] = width
        return halo
    }

    /// `width` slices of member `j`'s shard from `start`, into a halo.
    func slab(from j: Int, start: Int, elementBytes: Int) -> StridedCopy {
        Layout.slab(
            outer: outer, innerBytes: inner * elementBytes, srcSize: lengths[j], srcStart: start, dstSize: width, dstStart: 0,
            length: width)
    }

    func empty(_ dtype: DType) -> Tensor { Tensor(uninitializedShape: haloShape(0), dtype: dtype) }

    /// The first `width` slices of `shard`.
    func head(of shard: Tensor) throws -> Tensor { try Tensor.slice(shard, dim: dim, range: 0..<width) }

    /// The last `width` slices of `shard`.
    func tail(of shard: Tensor) throws -> Tensor {
        let length = shard.shape[dim]
        return try Tensor.slice(shard, dim: dim, range: (length - width)..<length)
    }
}

extension Tensor {
    /// Adds `part` into this tensor's entries `at ..< at + part.shape[dim]` along `dim`
    /// (floating-point dtypes; float16 and bfloat16 through float32).
    mutating func add(_ part: Tensor, dim: Int, at offset: Int) throws {
        guard part.shape[dim] > 0 else { return }
        let (outer, size, inner) = Layout.split(shape, at: dim)
        let run = part.shape[dim] * inner
        func addRuns<T: TensorScalar>(_: T.Type, _ plus: (T, T) -> T) throws {
            try part.withUnsafeBufferPointer(as: T.self) { piece in
                try withUnsafeMutableBufferPointer(as: T.self) { whole in
                    for o in 0..<outer {
                        let target = (o * size + offset) * inner, source = o * run
                        for i in 0..<run { whole[target + i] = plus(whole[target + i], piece[source + i]) }
                    }
                }
            }
        }
        switch dtype {
        case .float32: try addRuns(Float.self, +)
        case .float64: try addRuns(Double.self, +)
        case .float16: try addRuns(Float16.self) { Float16(Float($0) + Float($1)) }
        case .bfloat16: try addRuns(BFloat16.self) { BFloat16(Float($0) + Float($1)) }
        default:
            throw FVDError.unsupportedDType(op: "halo_exchange_vjp", dtype: dtype, reason: "its gradient sums need a floating-point dtype")
        }
    }
}
