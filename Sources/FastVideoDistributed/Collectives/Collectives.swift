/// The collectives, written once against ``PeerMemoryChannel``: each output byte is
/// copied once, straight from the peer's input into its final place.
extension GroupCoordinator {
    /// Elementwise reduction over the group; every rank gets the same bits.
    ///
    /// - Parameters:
    ///   - input: any shape; all ranks pass the same shape and dtype.
    ///   - op: `sum` (default), `product`, `max`, `min` or `average`; see ``ReduceOp``
    ///     for the deterministic order and the 16-bit accumulation.
    /// - Returns: a tensor of the input's shape and dtype. A size-1 group returns `input`.
    /// - Throws: ``FVDError/shapeMismatch(op:group:ranks:shapes:)`` and the other
    ///   mismatch errors on every rank; ``FVDError/unsupportedDType(op:dtype:reason:)``
    ///   for `average` of integers.
    /// - Complexity: up to 8 KiB per rank, one rendezvous: the inputs travel with the call
    ///   headers and every rank reduces all of them itself, in rank order. Larger, each rank
    ///   reads its chunk of every input in place and writes it once (reduce-scatter in rank
    ///   order), then copies the other reduced chunks (all-gather), over three rendezvous.
    public func allReduce(_ input: Tensor, op: ReduceOp = .sum) throws -> Tensor {
        if size == 1 {
            try validateReduction(op, dtype: input.dtype, opName: "all_reduce")
            return input
        }
        let output = Tensor(uninitializedShape: input.shape, dtype: input.dtype)
        try reduceAndShare(input, op: op, into: output)
        return output
    }

    /// In-place all-reduce, like `torch.distributed.all_reduce(tensor)`: `tensor` is
    /// replaced by the elementwise reduction over the group.
    ///
    /// The same bits as ``allReduce(_:op:)-3jrs4`` (which ranks may mix with this one in one
    /// call), without allocating an output. If `tensor` shares storage with another
    /// value, it is copied first (copy-on-write); the other value is untouched.
    /// - Throws: the errors of ``allReduce(_:op:)-3jrs4``. Argument and mismatch errors leave
    ///   `tensor` unchanged; after ``FVDError/peerFailed(rank:message:)`` or a timeout
    ///   its contents are unspecified (as with NCCL).
    public func allReduce(inPlace tensor: inout Tensor, op: ReduceOp = .sum) throws {
        if size == 1 {
            try validateReduction(op, dtype: tensor.dtype, opName: "all_reduce")
            return
        }
        if Self.readsInPlace(tensor) { tensor.makeUniqueAndPeerVisible() } else { tensor.makeUnique() }
        try reduceAndShare(tensor, op: op, into: tensor)
    }

    /// Whether a call's data is read in place by the peers rather than travelling inline
    /// with its header (the same on every rank that passes the same shape and dtype).
    static func readsInPlace(_ tensor: Tensor) -> Bool { tensor.byteCount > CallSlot.payloadCapacity }

    /// The all-reduce. Small inputs travel inline and every rank reduces all of them into
    /// `output`, in rank order. Large ones: each rank reduces its balanced chunk from every
    /// member's input in rank order into `output`, then copies the other chunks from their
    /// owners' outputs. `output` may be `input` itself: a rank writes only its own chunk while
    /// peers read theirs, and copies peers' chunks only after every rank has reduced.
    private func reduceAndShare(_ input: Tensor, op: ReduceOp, into output: Tensor) throws {
        let inPlace = Self.readsInPlace(input)
        let es = input.dtype.byteSize
        try collective(.allReduce, input, arguments: ArgumentList(op.code), output: inPlace ? output : nil) { call in
            try validateReduction(op, dtype: input.dtype, opName: "all_reduce")
            if try channel.reduceByMessages(
                op, dtype: input.dtype, input: input.storage.pointer, output: output.storage.pointer, count: input.count)
            {
                return
            }
            guard inPlace else {
                reduceElements(
                    op, dtype: input.dtype, into: output.storage.pointer, count: input.count, groupSize: size, beatingOn: channel
                ) { channel.input(of: $0) }
                return
            }
            let ranges = Layout.balancedRanges(count: input.count, parts: size)
            let mine = ranges[rankInGroup]
            if !mine.isEmpty {
                reduceElements(
                    op, dtype: input.dtype, into: output.storage.pointer + mine.lowerBound * es, count: mine.count, groupSize: size,
                    beatingOn: channel
                ) { channel.input(of: $0) + mine.lowerBound * es }
            }
            channel.post(.reduced, call: call)
            try channel.wait(.reduced, call: call, op: .allReduce)
            for k in 1..<size {
                let j = (rankInGroup + k) % size
                let chunk = ranges[j]
                let plan = StridedCopy.contiguous(
                    srcOffset: chunk.lowerBound * es, dstOffset: chunk.lowerBound * es, bytes: chunk.count * es)
                execute(plan, from: channel.output(of: j)!, to: output.storage.pointer, streaming: false, beatingOn: channel)
            }
        }
    }

    /// Concatenates every rank's tensor along `dim`, in group-rank order.
    ///
    /// - Parameters:
    ///   - input: all ranks pass the same shape and dtype.
    ///   - dim: the dimension to concatenate; negative counts from the end (default -1).
    /// - Returns: the input's shape with `shape[dim]` multiplied by the group size.
    /// - Throws: ``FVDError/invalidDimension(op:dim:ndim:)`` and the mismatch errors, on every rank.
    public func allGather(_ input: Tensor, dim: Int = -1) throws -> Tensor {
        try allGather(input, dim: dim, op: .allGather)
    }

    func allGather(_ input: Tensor, dim: Int, op: CollectiveOp) throws -> Tensor {
        if size == 1 {
            _ = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: op.name)
            return input
        }
        return try collective(op, input, arguments: ArgumentList(dimKey(dim, input.dimensionCount))) { _ in
            let d = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: op.name)
            return try concatenateMembers(input, dim: d)
        }
    }

    /// In-place all-gather (nccl-tests' "in-place"): `tensor` holds the whole result's
    /// shape, with this rank's block already at block position `rankInGroup` along `dim`;
    /// the other blocks are filled from the peers.
    ///
    /// With `n` ranks, `tensor.shape[dim]` must divide by `n` and block `r` is
    /// entries `r·(L/n) ..< (r+1)·(L/n)`. Ranks copy straight from each other's tensors,
    /// so no output is allocated and a rank's own block is never copied. All ranks must
    /// call this form (mixing it with ``allGather(_:dim:)-1nply`` is an operation mismatch).
    /// - Throws: ``FVDError/indivisible(op:dim:size:parts:)``, ``FVDError/invalidDimension(op:dim:ndim:)``
    ///   and the mismatch errors, on every rank, before any data moves.
    public func allGather(inPlace tensor: inout Tensor, dim: Int = -1) throws {
        let name = "all_gather_in_place"
        if size == 1 {
            _ = try Layout.normalize(dim: dim, ndim: tensor.dimensionCount, op: name)
            return
        }
        if Self.readsInPlace(tensor) { tensor.makeUniqueAndPeerVisible() } else { tensor.makeUnique() }
        let target = tensor
        try collective(.allGatherInPlace, target, arguments: ArgumentList(dimKey(dim, target.dimensionCount))) { _ in
            let d = try Layout.normalize(dim: dim, ndim: target.dimensionCount, op: name)
            let (outer, total, inner) = Layout.split(target.shape, at: d)
            guard total % size == 0 else { throw FVDError.indivisible(op: name, dim: d, size: total, parts: size) }
            let part = total / size
            try pullFromEveryMember(channel, into: target.storage.pointer, totalBytes: target.byteCount) { j, destination in
                Layout.slab(
                    outer: outer, innerBytes: inner * target.dtype.byteSize, srcSize: total, srcStart: j * part,
                    dstSize: total, dstStart: j * part, length: j == destination ? 0 : part)
            }
        }
    }

    /// The concatenation of every member's input along `d`, pulled by this rank.
    private func concatenateMembers(_ input: Tensor, dim d: Int, keep lengthLimit: Int? = nil) throws -> Tensor {
        let es = input.dtype.byteSize
        let (outer, partSize, inner) = Layout.split(input.shape, at: d)
        let total = lengthLimit ?? partSize * size
        var shape = input.shape
        shape[d] = total
        let output = Tensor(uninitializedShape: shape, dtype: input.dtype)
        try pullFromEveryMember(channel, into: output.storage.pointer, totalBytes: output.byteCount) { j, _ in
            let start = j * partSize
            return Layout.slab(
                outer: outer, innerBytes: inner * es, srcSize: partSize, srcStart: 0,
                dstSize: total, dstStart: start, length: max(0, min(partSize, total - start)))
        }
        return output
    }

    /// Reduces over the group and leaves rank `r` with slice `r` of the result along `dim`.
    ///
    /// - Returns: the input's shape with `shape[dim]` divided by the group size.
    /// - Throws: ``FVDError/indivisible(op:dim:size:parts:)`` if `shape[dim]` does not
    ///   divide by the group size; the mismatch and dtype errors as ``allReduce(_:op:)-3jrs4``.
    public func reduceScatter(_ input: Tensor, dim: Int = -1, op: ReduceOp = .sum) throws -> Tensor {
        try reduceScatter(input, dim: dim, op: op, into: nil)
    }

    /// Reduce-scatter into the caller's `output` (`torch.distributed.reduce_scatter_tensor(output,
    /// input)`): no tensor is allocated.
    ///
    /// `output` must have the result's shape and `input`'s dtype (see
    /// ``reduceScatter(_:dim:op:)-2em2i``); if it shares storage with another value, it is copied
    /// first (copy-on-write).
    /// - Throws: the errors of ``reduceScatter(_:dim:op:)-2em2i``; ``FVDError/invalidArgument(_:)``
    ///   on this rank alone (the others complete the call) when `output` has another shape
    ///   or dtype, and `output` is unchanged.
    public func reduceScatter(_ input: Tensor, into output: inout Tensor, dim: Int = -1, op: ReduceOp = .sum) throws {
        output.makeUnique()
        _ = try reduceScatter(input, dim: dim, op: op, into: output)
    }

    /// The reduce-scatter into `target` when given (then returned), else into a new tensor.
    private func reduceScatter(_ input: Tensor, dim: Int, op: ReduceOp, into target: Tensor?) throws -> Tensor {
        let name = "reduce_scatter"
        if size == 1 {
            _ = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: name)
            try validateReduction(op, dtype: input.dtype, opName: name)
            guard let target else { return input }
            try target.checkOutput(shape: input.shape, dtype: input.dtype, op: name)
            copyWhole(from: input.storage.pointer, to: target)
            return target
        }
        return try collective(.reduceScatter, input, arguments: ArgumentList(dimKey(dim, input.dimensionCount), op.code)) { _ in
            let d = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: name)
            try validateReduction(op, dtype: input.dtype, opName: name)
            let (outer, full, inner) = Layout.split(input.shape, at: d)
            guard full % size == 0 else { throw FVDError.indivisible(op: name, dim: d, size: full, parts: size) }
            let part = full / size
            // The caller's output is checked without building the result's shape.
            let output: Tensor
            if let target, target.dtype == input.dtype, target.shape.count == input.dimensionCount,
                target.shape.indices.allSatisfy({ target.shape[$0] == ($0 == d ? part : input.shape[$0]) })
            {
                output = target
            } else {
                var shape = input.shape
                shape[d] = part
                output = try target.checkedOutput(shape, input.dtype, op: name)
            }
            let es = input.dtype.byteSize, run = part * inner
            for o in 0..<outer {
                let offset = (o * full + rankInGroup * part) * inner * es
                reduceElements(
                    op, dtype: input.dtype, into: output.storage.pointer + o * run * es, count: run, groupSize: size, beatingOn: channel
                ) { channel.input(of: $0) + offset }
            }
            return output
        }
    }

    /// Concatenates every rank's tensor along `dim` on the rank `root` only.
    ///
    /// - Parameters:
    ///   - input: all ranks pass the same shape and dtype.
    ///   - root: the receiving group rank (FastVideo's `dst`), default 0.
    ///   - dim: the dimension to concatenate; negative counts from the end (default -1).
    /// - Returns: the concatenation on `root`, `nil` on the other ranks.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a `root` outside the group,
    ///   ``FVDError/invalidDimension(op:dim:ndim:)`` and the mismatch errors, on every rank.
    public func gather(_ input: Tensor, to root: Int = 0, dim: Int = -1) throws -> Tensor? {
        let name = "gather"
        if size == 1 {
            try checkRoot(root, op: name)
            _ = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: name)
            return input
        }
        return try collective(.gather, input, arguments: ArgumentList(dimKey(dim, input.dimensionCount), root)) { _ in
            try checkRoot(root, op: name)
            let d = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: name)
            return rankInGroup == root ? try concatenateMembers(input, dim: d) : nil
        }
    }

    /// Returns the tensor of group rank `root` on every rank.
    ///
    /// All ranks pass a tensor of the same shape and dtype (as in torch); non-root
    /// inputs are not read. The input is never modified: a new tensor is returned.
    public func broadcast(_ input: Tensor, from root: Int = 0) throws -> Tensor {
        let name = "broadcast"
        if size == 1 {
            try checkRoot(root, op: name)
            return input
        }
        return try collective(.broadcast, input, arguments: ArgumentList(root), sends: rankInGroup == root) { _ in
            try checkRoot(root, op: name)
            guard rankInGroup != root else { return input }
            let output = Tensor(uninitializedShape: input.shape, dtype: input.dtype)
            copyWhole(from: channel.input(of: root), to: output)
            return output
        }
    }

    /// In-place broadcast, like `torch.distributed.broadcast(tensor, src)`: on every rank
    /// but `root`, `tensor` is replaced by the root's (all ranks pass the same shape and
    /// dtype). No tensor is allocated.
    ///
    /// The same bits as ``broadcast(_:from:)-50ws7``, which ranks may mix with this one in one
    /// call. If `tensor` shares storage with another value, it is copied first
    /// (copy-on-write). Errors as ``broadcast(_:from:)-50ws7``; they leave `tensor` unchanged.
    public func broadcast(inPlace tensor: inout Tensor, from root: Int = 0) throws {
        let name = "broadcast"
        if size == 1 {
            try checkRoot(root, op: name)
            return
        }
        if rankInGroup != root { tensor.makeUnique() }
        let target = tensor
        try collective(.broadcastInPlace, target, arguments: ArgumentList(root), sends: rankInGroup == root) { _ in
            try checkRoot(root, op: name)
            if rankInGroup != root { copyWhole(from: channel.input(of: root), to: target) }
        }
    }

    /// Copies `target.byteCount` bytes from `source` into `target`'s storage.
    func copyWhole(from source: UnsafeRawPointer, to target: Tensor) {
        let bytes = target.byteCount
        execute(
            .contiguous(srcOffset: 0, dstOffset: 0, bytes: bytes), from: source, to: target.storage.pointer,
            streaming: bytes >= streamingThresholdBytes, beatingOn: channel)
    }

    /// Blocks until every member has called `barrier()`.
    public func barrier() throws {
        if size == 1 { return }
        try collective(.barrier, Tensor.empty, sends: false) { _ in }
    }

    /// All-gather along `dim`, then keep the first `originalLength` entries along it
    /// (undoes ``sequenceModelParallelShard(_:dim:)``'s padding with one copy per byte).
    func allGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int) throws -> Tensor {
        let name = "all_gather_with_unpad"
        let check = { () throws -> Int in
            let d = try Layout.normalize(dim: dim, ndim: input.dimensionCount, op: name)
            let capacity = input.shape[d] * self.size
            guard originalLength >= 0, originalLength <= capacity else {
                throw FVDError.invalidArgument(
                    "\(name): original length \(originalLength) is outside 0...\(capacity) "
                        + "(\(self.size) ranks × \(input.shape[d]) along dim \(dim))")
            }
            return d
        }
        if size == 1 {
            let d = try check()
            return try Tensor.slice(input, dim: d, range: 0..<originalLength)
        }
        return try collective(.allGatherWithUnpad, input, arguments: ArgumentList(dimKey(dim, input.dimensionCount), originalLength)) { _ in
            try concatenateMembers(input, dim: try check(), keep: originalLength)
        }
    }

    func checkRoot(_ root: Int, op: String) throws {
        guard (0..<size).contains(root) else {
            throw FVDError.invalidArgument("\(op): root \(root) is not a rank of group \(description) (0..<\(size))")
        }
    }
}

extension Optional where Wrapped == Tensor {
    /// The caller's output (checked against the result's `shape` and `dtype`), or a new tensor.
    func checkedOutput(_ shape: [Int], _ dtype: DType, op: String) throws -> Tensor {
        guard let self else { return Tensor(uninitializedShape: shape, dtype: dtype) }
        try self.checkOutput(shape: shape, dtype: dtype, op: op)
        return self
    }
}

/// Compares dims by their resolved value when valid, so `-1` and `ndim-1` agree.
func dimKey(_ dim: Int, _ ndim: Int) -> Int {
    (dim < 0 && dim >= -ndim) ? dim + ndim : dim
}

extension Tensor {
    /// Throws unless this caller-given output has the result's `shape` and `dtype`.
    func checkOutput(shape: [Int], dtype: DType, op: String) throws {
        guard self.shape == shape, self.dtype == dtype else {
            throw FVDError.invalidArgument(
                "\(op): the output tensor has shape \(self.shape) and dtype \(self.dtype); the result has shape \(shape) and dtype \(dtype)")
        }
    }

    /// A zero-element placeholder for collectives that carry no data.
    static let empty = Tensor(uninitializedShape: [0], dtype: .uint8)

    /// The entries `range` of `input` along `dim` (a copy).
    static func slice(_ input: Tensor, dim d: Int, range: Range<Int>) throws -> Tensor {
        let (outer, size, inner) = Layout.split(input.shape, at: d)
        guard range.lowerBound >= 0, range.upperBound <= size else {
            throw FVDError.invalidArgument("slice \(range) is outside 0..<\(size) along dim \(d)")
        }
        var shape = input.shape
        shape[d] = range.count
        let output = Tensor(uninitializedShape: shape, dtype: input.dtype)
        let plan = Layout.slab(
            outer: outer, innerBytes: inner * input.dtype.byteSize, srcSize: size, srcStart: range.lowerBound,
            dstSize: range.count, dstStart: 0, length: range.count)
        input.withUnsafeBytes { execute(plan, from: $0.baseAddress!, to: output.storage.pointer, streaming: false) }
        return output
    }
}
