/// How the Ulysses all-to-all splits the sequence and the heads over the ranks, beyond
/// FastVideo's even split: uneven sizes (30 heads on 4 ranks, 1001 tokens on 4 ranks)
/// and grouped-query key/value heads.
///
/// Every rank passes the same split. With a split, the all-to-all takes:
/// - on the side that is complete on every rank (the heads of `(2, 1)`'s input, the
///   sequence of `(1, 2)`'s), the sizes given here, or else the balanced split of the
///   total: the first `total % n` ranks get one more (30 heads on 4 ranks: 8, 8, 7, 7;
///   1001 tokens: 251, 250, 250, 250), the split ``balanced(_:parts:)`` gives;
/// - on the sharded side (the sequence of `(2, 1)`'s input, the heads of `(1, 2)`'s), each
///   rank's own size, which may differ between ranks; sizes given here are checked
///   against them.
///
/// `(2, 1)` and `(1, 2)` with the same split are exact inverses, as in the even case.
public struct AllToAllSplit: Sendable, Equatable, CustomStringConvertible {
    /// The sequence length of each rank's shard, in group-rank order.
    public var sequence: [Int]?
    /// The heads of each rank's slice, in group-rank order; with ``queryHeads``, the
    /// query heads.
    public var heads: [Int]?
    /// For the key and value tensors of grouped-query attention, the number of query
    /// heads `H` (a multiple of the tensor's `Hkv` heads); only with `(scatter 2, gather 1)`.
    ///
    /// Query head `h` uses key/value head `h / (H / Hkv)`. Rank `r`, holding query heads
    /// `qStart ..< qStart + heads[r]` (``heads`` or the balanced split of `H`), receives
    /// the key/value heads `qStart / G ... (qStart + heads[r] - 1) / G` (`G = H / Hkv`),
    /// whole sequence: fewer key/value heads than ranks are replicated on the ranks that
    /// need them instead of failing. Its local query head `i` uses its local key/value
    /// head `(qStart + i) / G - qStart / G`.
    public var queryHeads: Int?

    /// A split with the given sizes; `nil` takes the default described on the type.
    public init(sequence: [Int]? = nil, heads: [Int]? = nil, queryHeads: Int? = nil) {
        self.sequence = sequence
        self.heads = heads
        self.queryHeads = queryHeads
    }

    /// The balanced split of whatever does not divide: no sizes given.
    public static let balanced = AllToAllSplit()

    /// `total` split into `parts` sizes that differ by at most one, larger first.
    public static func balanced(_ total: Int, parts: Int) -> [Int] {
        Layout.balancedRanges(count: total, parts: parts).map(\.count)
    }

    public var description: String {
        var parts: [String] = []
        if let sequence { parts.append("sequence \(sequence)") }
        if let heads { parts.append("heads \(heads)") }
        if let queryHeads { parts.append("query heads \(queryHeads)") }
        return parts.isEmpty ? "balanced" : parts.joined(separator: ", ")
    }

    /// The split as header arguments, compared between ranks.
    var arguments: [Int] {
        func list(_ sizes: [Int]?) -> [Int] { sizes.map { [$0.count] + $0 } ?? [-1] }
        return [1] + list(sequence) + list(heads) + [queryHeads ?? -1]
    }

    /// The all-to-all's header arguments as its errors show them: the dims, the split and
    /// the chunk (see ``GroupCoordinator/allToAll4D(_:scatterDim:gatherDim:split:headChunk:)``).
    static func describe(arguments a: [Int]) -> String {
        var text = "scatter_dim=\(a.first.map(String.init) ?? "?"), gather_dim=\(a.count > 1 ? String(a[1]) : "?")"
        var at = 2
        func take() -> Int? {
            defer { at += 1 }
            return at < a.count ? a[at] : nil
        }
        func list() -> [Int]? {
            guard let count = take(), count >= 0 else { return nil }
            return (0..<count).compactMap { _ in take() }
        }
        if at < a.count, a[at] == 1 {
            _ = take()
            let split = AllToAllSplit(sequence: list(), heads: list(), queryHeads: take().flatMap { $0 < 0 ? nil : $0 })
            text += ", split \(split)"
        }
        if at + 2 < a.count, a[at] == -2 { text += ", chunk \(a[at + 1]) of \(a[at + 2])" }
        return text
    }
}

extension GroupCoordinator {
    /// The Ulysses all-to-all of a `[B, S, H, D]` tensor (see
    /// ``sequenceModelParallelAllToAll4D(_:scatterDim:gatherDim:split:)-2pb61``).
    ///
    /// - Parameters:
    ///   - input: `[B, S, H, D]`: a sequence shard with every head for `(2, 1)`, a slice of
    ///     the heads with the whole sequence for `(1, 2)`.
    ///   - scatterDim: 2 (heads) or 1 (sequence); negative counts from the end.
    ///   - gatherDim: 1 or 2, the other one.
    ///   - split: `nil` for FastVideo's even all-to-all (equal shapes, the scattered
    ///     dimension divisible by the group size); else the uneven or grouped-query split
    ///     (see ``AllToAllSplit``).
    public func allToAll4D(_ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil) throws -> Tensor {
        if split == nil, size > 1, let even = localEvenPlan(input, scatterDim: scatterDim, gatherDim: gatherDim) {
            let output = Tensor(uninitializedShape: even.outputShape(headDim: input.shape[3]), dtype: input.dtype)
            try evenAllToAll(input, even, scatterDim: scatterDim, gatherDim: gatherDim, into: output)
            return output
        }
        return try allToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split, headChunk: nil)
    }

    /// The all-to-all into the caller's `output` (`torch.distributed.all_to_all_single(output,
    /// input)`): no tensor is allocated.
    ///
    /// `output` must have the result's shape and `input`'s dtype (see
    /// ``allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd``); if it shares storage with another
    /// value, it is copied first (copy-on-write).
    /// - Throws: the errors of ``allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd``;
    ///   ``FVDError/invalidArgument(_:)`` on this rank alone (the others complete the call)
    ///   when `output` has another shape or dtype, and `output` is unchanged.
    public func allToAll4D(
        _ input: Tensor, into output: inout Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
    ) throws {
        output.makeUnique()
        let target = output
        if split == nil, size > 1, let even = localEvenPlan(input, scatterDim: scatterDim, gatherDim: gatherDim),
            target.dtype == input.dtype, even.produces(target.shape, headDim: input.shape[3])
        {
            return try evenAllToAll(input, even, scatterDim: scatterDim, gatherDim: gatherDim, into: target)
        }
        _ = try allToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split, headChunk: nil, into: target)
    }

    /// FastVideo's even all-to-all into `target` (of the result's shape and dtype), as this
    /// rank's input asks for it: the small calls' path, whose body touches only numbers and a
    /// pointer. When a member passed another shape, the same call takes the general path,
    /// which names the problem on every rank. The call (op, arguments) is the general one's,
    /// so ranks that take either path meet.
    private func evenAllToAll(
        _ input: Tensor, _ even: Layout.EvenAllToAll4D, scatterDim: Int, gatherDim: Int, into target: Tensor
    ) throws {
        let destination = target.storage.pointer, bytes = target.byteCount
        let (b, s, h, d) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3])
        let arguments = ArgumentList(dimKey(scatterDim, 4), dimKey(gatherDim, 4))
        try collective(.allToAll4D, input, arguments: arguments) { _ in
            guard membersPassed(b, s, h, d) else {
                _ = try pullAllToAll(input, scatterDim: scatterDim, gatherDim: gatherDim, split: nil, headChunk: nil, into: target)
                return
            }
            try pullFromEveryMember(channel, into: destination, totalBytes: bytes) { j, r in even.copy(from: j, to: r) }
        }
    }

    /// The even plan `input` asks for on its own (4-D, valid dims, divisible), or `nil`.
    private func localEvenPlan(_ input: Tensor, scatterDim: Int, gatherDim: Int) -> Layout.EvenAllToAll4D? {
        let shape = input.shape
        guard shape.count == 4, let s = try? Layout.normalize(dim: scatterDim, ndim: 4, op: ""),
            let g = try? Layout.normalize(dim: gatherDim, ndim: 4, op: ""), (s, g) == (2, 1) || (s, g) == (1, 2),
            shape[s] % size == 0
        else { return nil }
        return Layout.EvenAllToAll4D(scatterHeads: s == 2, shape: shape, parts: size, elementSize: input.dtype.byteSize)
    }

    /// Whether every member's header has the 4-D shape `[b, s, h, d]`.
    private func membersPassed(_ b: Int, _ s: Int, _ h: Int, _ d: Int) -> Bool {
        for j in 0..<size {
            let slot = channel.slot(of: j)
            guard slot.ndim == 4, slot.dimension(0) == b, slot.dimension(1) == s, slot.dimension(2) == h, slot.dimension(3) == d
            else { return false }
        }
        return true
    }

    /// The all-to-all, or with `headChunk` (`k` of `count`) only the `k`-th of `count`
    /// balanced groups of each receiver's heads (``startAllToAll4D(_:split:chunks:)``); into
    /// `target` when given (then returned), else into a new tensor.
    func allToAll4D(
        _ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit?, headChunk: (index: Int, count: Int)?,
        into target: Tensor? = nil
    ) throws -> Tensor {
        let name = "all_to_all_4D"
        if size == 1 {
            let plan = try chunked(
                try allToAllPlan(shapes: [input.shape], scatterDim: scatterDim, gatherDim: gatherDim, split: split, input.dtype, op: name),
                headChunk)
            let result = headChunk == nil
                ? input : try Tensor.slice(input, dim: 2, range: plan.headStart[0]..<(plan.headStart[0] + plan.heads[0]))
            guard let target else { return result }
            try target.checkOutput(shape: result.shape, dtype: result.dtype, op: name)
            copyWhole(from: result.storage.pointer, to: target)
            return target
        }
        var arguments = ArgumentList(dimKey(scatterDim, 4), dimKey(gatherDim, 4))
        if let split { for a in split.arguments { arguments.append(a) } }
        if let (k, count) = headChunk { for a in [-2, k, count] { arguments.append(a) } }
        return try collective(.allToAll4D, input, arguments: arguments) { _ in
            try pullAllToAll(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split, headChunk: headChunk, into: target)
        }
    }

    /// The body of an all-to-all with any split: every member's shape checked, its plan
    /// made, and the blocks pulled into `target` or a new tensor.
    private func pullAllToAll(
        _ input: Tensor, scatterDim: Int, gatherDim: Int, split: AllToAllSplit?, headChunk: (index: Int, count: Int)?,
        into target: Tensor?
    ) throws -> Tensor {
        let name = "all_to_all_4D"
        let shapes = (0..<size).map { channel.slot(of: $0).shape }
        let plan = try chunked(
            try allToAllPlan(shapes: shapes, scatterDim: scatterDim, gatherDim: gatherDim, split: split, input.dtype, op: name),
            headChunk)
        // A caller's output of the wrong shape is an error on this rank alone, after the
        // exchange (into scratch), since moving the blocks may be collective (MPI).
        let shape = plan.outputShape(rank: rankInGroup)
        var outputError: (any Error)?
        let output: Tensor
        do {
            output = try target.checkedOutput(shape, input.dtype, op: name)
        } catch {
            outputError = error
            output = Tensor(uninitializedShape: shape, dtype: input.dtype)
        }
        try pullFromEveryMember(channel, into: output.storage.pointer, totalBytes: output.byteCount) { j, destination in
            plan.copy(from: j, to: destination)
        }
        if let outputError { throw outputError }
        return output
    }

    /// `plan` cut to the `k`-th of `count` balanced groups of each receiver's heads, or
    /// `plan` itself without a chunk.
    private func chunked(_ plan: Layout.AllToAll4D, _ headChunk: (index: Int, count: Int)?) throws -> Layout.AllToAll4D {
        guard let (k, count) = headChunk else { return plan }
        guard plan.scatterHeads else {
            throw FVDError.invalidArgument("all_to_all_4D: chunks split the heads a rank receives: scatter_dim 2, gather_dim 1 only")
        }
        var chunk = plan
        for r in plan.heads.indices {
            let sizes = AllToAllSplit.balanced(plan.heads[r], parts: count)
            chunk.heads[r] = sizes[k]
            chunk.headStart[r] = plan.headStart[r] + Layout.offsets(of: sizes)[k]
        }
        return chunk
    }

    /// Checks the all-to-all's arguments against every member's input shape (`shapes`, in
    /// group-rank order) and returns its plan; the same error on every rank.
    func allToAllPlan(
        shapes: [[Int]], scatterDim: Int, gatherDim: Int, split: AllToAllSplit?, _ dtype: DType, op: String
    ) throws -> Layout.AllToAll4D {
        for shape in shapes where shape.count != 4 { throw FVDError.wrongRank(op: op, expected: 4, shape: shape) }
        let s = try Layout.normalize(dim: scatterDim, ndim: 4, op: op)
        let g = try Layout.normalize(dim: gatherDim, ndim: 4, op: op)
        guard (s, g) == (2, 1) || (s, g) == (1, 2) else {
            throw FVDError.unsupportedDimPair(op: op, scatterDim: scatterDim, gatherDim: gatherDim)
        }
        let n = shapes.count, first = shapes[0], scatterHeads = s == 2
        func plan(seq: [Int], heads: [Int], headStart: [Int]? = nil, totalHeads: Int? = nil) -> Layout.AllToAll4D {
            Layout.AllToAll4D(
                scatterHeads: scatterHeads, batch: first[0], seq: seq, heads: heads, headStart: headStart, totalHeads: totalHeads,
                headDim: first[3], elementSize: dtype.byteSize)
        }
        guard let split else {
            // FastVideo's all-to-all: every rank the same shape, the scattered dimension divisible.
            guard shapes.allSatisfy({ $0 == first }) else {
                throw FVDError.shapeMismatch(op: op, group: description, ranks: ranks, shapes: shapes)
            }
            guard first[s] % n == 0 else { throw FVDError.indivisible(op: op, dim: s, size: first[s], parts: n) }
            let even = Array(repeating: first[s] / n, count: n), own = Array(repeating: first[g], count: n)
            return scatterHeads ? plan(seq: own, heads: even) : plan(seq: even, heads: own)
        }
        // Batch, head dim and the complete side agree; the sharded side is each rank's own.
        guard shapes.allSatisfy({ $0[0] == first[0] && $0[3] == first[3] && $0[s] == first[s] }) else {
            throw FVDError.shapeMismatch(op: op, group: description, ranks: ranks, shapes: shapes)
        }
        let own = shapes.map { $0[g] }
        let ownName = scatterHeads ? "sequence" : "heads", splitName = scatterHeads ? "heads" : "sequence"
        if let given = scatterHeads ? split.sequence : split.heads, given != own {
            throw FVDError.invalidArgument(
                "\(op) in group \(description): the split's \(ownName) sizes \(given) differ from the ranks' inputs, "
                    + "whose dim \(g) has sizes \(own)")
        }
        func checked(_ sizes: [Int]?, total: Int, what: String) throws -> [Int] {
            guard let sizes else { return AllToAllSplit.balanced(total, parts: n) }
            guard sizes.count == n, sizes.allSatisfy({ $0 >= 0 }), sizes.reduce(0, +) == total else {
                throw FVDError.invalidArgument(
                    "\(op) in group \(description): \(splitName) sizes \(sizes) must be \(n) non-negative sizes, one per rank, "
                        + "that sum to the \(total) \(what)")
            }
            return sizes
        }
        if let queryHeads = split.queryHeads {
            let kvHeads = first[2]
            guard scatterHeads else {
                throw FVDError.invalidArgument("\(op): a grouped-query split needs scatter_dim 2 and gather_dim 1 (the key/value exchange)")
            }
            guard kvHeads > 0, queryHeads > 0, queryHeads % kvHeads == 0 else {
                throw FVDError.invalidArgument(
                    "\(op) in group \(description): \(queryHeads) query heads are not a multiple of the \(kvHeads) key/value heads of the input")
            }
            let queries = try checked(split.heads, total: queryHeads, what: "query heads")
            let group = queryHeads / kvHeads
            let starts = Layout.offsets(of: queries)
            let kvStart = starts.map { $0 / group }
            let kvCount = (0..<n).map { queries[$0] == 0 ? 0 : (starts[$0] + queries[$0] - 1) / group + 1 - kvStart[$0] }
            return plan(seq: own, heads: kvCount, headStart: kvStart, totalHeads: kvHeads)
        }
        let sizes = try checked(scatterHeads ? split.heads : split.sequence, total: first[s], what: scatterHeads ? "heads" : "tokens")
        return scatterHeads ? plan(seq: own, heads: sizes) : plan(seq: sizes, heads: own)
    }
}
