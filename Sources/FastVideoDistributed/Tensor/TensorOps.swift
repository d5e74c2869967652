// Joining, cutting and reading tensors: what a user reaches for around the collectives
// (stacking q, k and v for one all-to-all, cutting a batch, reading one value). Each
// returns a new tensor (or value) and leaves its inputs unchanged; each copies once.

extension Tensor {
    /// The tensors joined along `dim`: `torch.cat(tensors, dim)`.
    ///
    /// - Parameters:
    ///   - tensors: at least one; the same dtype and number of dimensions (at least one),
    ///     and the same size in every dimension but `dim`.
    ///   - dim: the dimension to join along; negative counts from the end.
    /// - Returns: a tensor whose size along `dim` is the sum of the inputs'.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for no tensors, or one whose dtype or
    ///   shape does not fit the first (naming both); ``FVDError/invalidDimension(op:dim:ndim:)``
    ///   for `dim` outside the tensors' dimensions.
    public static func concatenated(_ tensors: [Tensor], dim: Int = 0) throws -> Tensor {
        try join(tensors, dim: dim, op: "concatenated")
    }

    /// The tensors stacked along a new dimension `dim`: `torch.stack(tensors, dim)`.
    ///
    /// - Parameters:
    ///   - tensors: at least one, all of the same shape and dtype.
    ///   - dim: where the new dimension goes in the result, `0...n` for tensors of `n`
    ///     dimensions; negative counts from the end of the result (`-1` is last).
    /// - Returns: a tensor of shape `shape[..<dim] + [tensors.count] + shape[dim...]`.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for no tensors or one of another shape or
    ///   dtype; ``FVDError/invalidDimension(op:dim:ndim:)`` for `dim` out of range.
    public static func stacked(_ tensors: [Tensor], dim: Int = 0) throws -> Tensor {
        guard let first = tensors.first else { throw FVDError.invalidArgument("stacked: give at least one tensor") }
        let d = try Layout.normalize(dim: dim, ndim: first.shape.count + 1, op: "stacked")
        if let (index, other) = tensors.enumerated().first(where: { $0.element.shape != first.shape || $0.element.dtype != first.dtype }) {
            throw FVDError.invalidArgument(
                "stacked: tensor \(index) has shape \(other.shape) and dtype \(other.dtype); tensor 0 has \(first.shape) and \(first.dtype)")
        }
        var shape = first.shape
        shape.insert(1, at: d)
        return try join(tensors.map { Tensor(shape: shape, dtype: $0.dtype, storage: $0.storage) }, dim: d, op: "stacked")
    }

    /// `tensors` joined along `dim` into one new tensor.
    private static func join(_ tensors: [Tensor], dim: Int, op: String) throws -> Tensor {
        guard let first = tensors.first else { throw FVDError.invalidArgument("\(op): give at least one tensor") }
        let d = try Layout.normalize(dim: dim, ndim: first.shape.count, op: op)
        var total = 0
        for (index, tensor) in tensors.enumerated() {
            var expected = first.shape
            if tensor.shape.count == expected.count { expected[d] = tensor.shape[d] }
            guard tensor.dtype == first.dtype, tensor.shape == expected else {
                throw FVDError.invalidArgument(
                    "\(op): tensor \(index) has shape \(tensor.shape) and dtype \(tensor.dtype), which does not join tensor 0's "
                        + "\(first.shape) and \(first.dtype) along dim \(d)")
            }
            total += tensor.shape[d]
        }
        var shape = first.shape
        shape[d] = total
        _ = try elementCount(of: shape)
        let output = Tensor(uninitializedShape: shape, dtype: first.dtype)
        var offset = 0
        for tensor in tensors {
            let (outer, size, inner) = Layout.split(tensor.shape, at: d)
            let plan = Layout.slab(
                outer: outer, innerBytes: inner * tensor.dtype.byteSize, srcSize: size, srcStart: 0,
                dstSize: total, dstStart: offset, length: size)
            if tensor.byteCount > 0 {
                tensor.withUnsafeBytes { execute(plan, from: $0.baseAddress!, to: output.storage.pointer, streaming: false) }
            }
            offset += size
        }
        return output
    }

    /// The entries `range` along `dim`, a copy: `x[..., a:b, ...]` in numpy,
    /// `torch.narrow(x, dim, a, b - a)`.
    ///
    /// - Throws: ``FVDError/invalidDimension(op:dim:ndim:)`` for `dim` out of range;
    ///   ``FVDError/invalidArgument(_:)`` for a range outside `0..<shape[dim]`.
    public func slice(dim: Int, range: Range<Int>) throws -> Tensor {
        let d = try Layout.normalize(dim: dim, ndim: shape.count, op: "slice")
        return try Tensor.slice(self, dim: d, range: range)
    }

    /// `chunks` pieces along `dim`, as `torch.chunk` cuts them: each
    /// `ceil(shape[dim] / chunks)` entries, the last smaller, and fewer than `chunks` pieces
    /// when the size does not fill them (at least one; an empty dimension gives one empty piece).
    ///
    /// Concatenated along `dim`, the pieces are the tensor.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for `chunks < 1`;
    ///   ``FVDError/invalidDimension(op:dim:ndim:)`` for `dim` out of range.
    public func chunked(_ chunks: Int, dim: Int = 0) throws -> [Tensor] {
        guard chunks >= 1 else { throw FVDError.invalidArgument("chunked: chunks must be at least 1, got \(chunks)") }
        let d = try Layout.normalize(dim: dim, ndim: shape.count, op: "chunked")
        let size = shape[d]
        let step = max((size + chunks - 1) / chunks, 1)
        return try stride(from: 0, to: max(size, 1), by: step).map { start in
            try Tensor.slice(self, dim: d, range: start..<min(start + step, size))
        }
    }

    /// The element at `index`, one entry per dimension (negative entries count from the
    /// end, as in numpy), without copying the tensor.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` when `T` is not the dtype's element type,
    ///   the index has another number of entries than the tensor has dimensions, or an
    ///   entry is out of range.
    public func scalar<T: TensorScalar>(at index: [Int], as type: T.Type = T.self) throws -> T {
        guard T.dtype == dtype else { throw FVDError.invalidArgument("tensor has dtype \(dtype), not \(T.dtype)") }
        guard index.count == shape.count else {
            throw FVDError.invalidArgument("index \(index) has \(index.count) entries; the tensor has \(shape.count) dimensions \(shape)")
        }
        var offset = 0
        for (axis, (entry, size)) in zip(index, shape).enumerated() {
            guard entry >= -size, entry < size else {
                throw FVDError.invalidArgument("index \(index): entry \(entry) is outside dimension \(axis) of size \(size)")
            }
            offset = offset * size + (entry < 0 ? entry + size : entry)
        }
        return storage.pointer.loadUnaligned(fromByteOffset: offset * MemoryLayout<T>.stride, as: T.self)
    }
}
