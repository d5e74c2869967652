// Beyond Ulysses: the ring pass of ring attention (USP), and the neighbour-only halo
// exchange of convolutions over a sharded sequence. Both move data between neighbours
// only, over the group's one-way links (``GroupCoordinator/send(_:to:)-3j66f`` and
// ``GroupCoordinator/recv(from:shape:dtype:)-9ii5c``): each byte is copied once out of the
// sender's tensor on the in-process and shared-memory transports, and travels as a
// point-to-point message on MPI.

extension GroupCoordinator {
    /// Hands `tensor` to the next rank of the group and returns the previous rank's: one
    /// step of ring attention's key/value rotation.
    ///
    /// Group rank `i` sends to `(i + 1) % n` (``nextRank``) and receives from
    /// `(i - 1 + n) % n` (``previousRank``); with `reverse`, the other way round, which is
    /// the adjoint (``ringPassVJP(_:)``). After `n` passes every tensor is back where it
    /// started. The tensors may differ in shape from rank to rank (uneven sequence shards);
    /// their dtypes must agree. A group of one returns `tensor`.
    ///
    /// - Parameters:
    ///   - tensor: this rank's tensor.
    ///   - shape: the shape this rank expects to receive, if it wants it checked.
    ///   - reverse: pass to the previous rank instead.
    /// - Returns: the previous rank's tensor (the next rank's with `reverse`).
    /// - Throws: on the receiving rank, ``FVDError/dtypeMismatch(op:group:ranks:dtypes:)``
    ///   when the sender's dtype is not this rank's, ``FVDError/shapeMismatch(op:group:ranks:shapes:)``
    ///   when `shape` is given and differs (sender first); the timeout and peer errors of a
    ///   collective when a neighbour never arrives, failed or exited.
    /// - Complexity: two point-to-point messages per rank (one out, one in); even ranks
    ///   send first and odd ranks receive first, so a ring of blocking sends cannot
    ///   deadlock, whatever the group size.
    public func ringPass(_ tensor: Tensor, shape: [Int]? = nil, reverse: Bool = false) throws -> Tensor {
        guard size > 1 else {
            if let shape, shape != tensor.shape {
                throw FVDError.shapeMismatch(op: "ring_pass", group: description, ranks: [rank, rank], shapes: [tensor.shape, shape])
            }
            return tensor
        }
        let (next, previous) = ((rankInGroup + 1) % size, (rankInGroup - 1 + size) % size)
        return try shift(tensor, to: reverse ? previous : next, from: reverse ? next : previous, shape: shape)!
    }

    /// The adjoint of ``ringPass(_:shape:reverse:)``: the gradients passed back around the ring.
    public func ringPassVJP(_ gradient: Tensor, shape: [Int]? = nil) throws -> Tensor {
        try ringPass(gradient, shape: shape, reverse: true)
    }

    /// Starts ``ringPass(_:shape:reverse:)``, so that the next key/value block travels while
    /// this rank attends to the one it holds (ring attention's overlap).
    public func startRingPass(_ tensor: Tensor, shape: [Int]? = nil, reverse: Bool = false) -> CollectiveHandle<Tensor> {
        start { try $0.ringPass(tensor, shape: shape, reverse: reverse) }
    }

    /// Sends `tensor` to group rank `destination` (if any) and receives from group rank
    /// `source` (if any), even ranks sending first: one step of a shift along a ring or a chain.
    private func shift(_ tensor: Tensor, to destination: Int?, from source: Int?, shape: [Int]?) throws -> Tensor? {
        let sendsFirst = rankInGroup % 2 == 0
        if sendsFirst, let destination { try send(tensor, to: destination) }
        let received = try source.map { try recv(from: $0, shape: shape, dtype: tensor.dtype) }
        if !sendsFirst, let destination { try send(tensor, to: destination) }
        return received
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
    /// - Throws: on every rank, ``FVDError/invalidArgument(_:)`` when the ranks pass different
    ///   `dim`, `width`, `periodic`, dtypes or other dimensions (naming each rank's), a
    ///   negative `width`, or a `width` longer than a shard it must be cut from (naming the
    ///   rank and its length); ``FVDError/invalidDimension(op:dim:ndim:)`` for `dim` out of
    ///   range. The timeout and peer errors of a collective when a neighbour never arrives.
    /// - Complexity: one all-gather of a few integers (every rank checks every rank's
    ///   arguments, so a mismatch is an error everywhere), then two point-to-point messages
    ///   per rank of `width` slices each, none at the ends unless `periodic`.
    public func haloExchange(_ shard: Tensor, dim: Int, width: Int, periodic: Bool = false) throws -> (before: Tensor, after: Tensor) {
        let halo = try HaloPlan(self, shard, dim: dim, width: width, periodic: periodic)
        let (next, previous) = (halo.next, halo.previous)
        // The last `width` slices go forward and arrive as the next rank's `before`; the
        // first `width` go back and arrive as the previous rank's `after`.
        let before = try halo.exchange(halo.tail(of: shard), to: next, from: previous, on: self)
        let after = try halo.exchange(halo.head(of: shard), to: previous, from: next, on: self)
        return (before, after)
    }

    /// The adjoint of ``haloExchange(_:dim:width:periodic:)``: the gradients of this rank's
    /// `before` and `after` go back to the neighbours they came from, which add them to
    /// their boundary slices.
    ///
    /// - Parameters:
    ///   - before: the gradient of this rank's `before` (its shape).
    ///   - after: the gradient of this rank's `after`.
    ///   - shard: this rank's shard of the forward call (its shape and dtype).
    /// - Returns: the gradient of this rank's shard through the exchange: zeros, plus the
    ///   next rank's `before` gradient on its last `width` slices and the previous rank's
    ///   `after` gradient on its first `width` (their sum where they overlap). Add it to the
    ///   shard's own gradient.
    /// - Throws: the errors of ``haloExchange(_:dim:width:periodic:)``;
    ///   ``FVDError/unsupportedDType(op:dtype:reason:)`` for a dtype that is not floating-point.
    public func haloExchangeVJP(before: Tensor, after: Tensor, shard: Tensor, dim: Int, width: Int, periodic: Bool = false) throws
        -> Tensor
    {
        let op = "halo_exchange_vjp"
        let halo = try HaloPlan(self, shard, dim: dim, width: width, periodic: periodic)
        guard shard.dtype.isFloatingPoint else {
            throw FVDError.unsupportedDType(op: op, dtype: shard.dtype, reason: "its gradient sums need a floating-point dtype")
        }
        let expected = halo.haloShape(width: halo.before > 0 ? width : 0), expectedAfter = halo.haloShape(width: halo.after > 0 ? width : 0)
        guard before.shape == expected, after.shape == expectedAfter, before.dtype == shard.dtype, after.dtype == shard.dtype else {
            throw FVDError.invalidArgument(
                "\(op): the gradients have shapes \(before.shape) and \(after.shape); this rank's halos have \(expected) and \(expectedAfter) of \(shard.dtype)")
        }
        // Backward of "tail goes forward as the next rank's before": before-gradients go back.
        let tailGradient = try halo.exchange(before, to: halo.previous, from: halo.next, on: self, length: halo.after)
        let headGradient = try halo.exchange(after, to: halo.next, from: halo.previous, on: self, length: halo.before)
        var gradient = try Tensor(zeros: shard.shape, dtype: shard.dtype)
        let length = shard.shape[halo.dim]
        try gradient.add(tailGradient, dim: halo.dim, at: length - tailGradient.shape[halo.dim])
        try gradient.add(headGradient, dim: halo.dim, at: 0)
        return gradient
    }
}

/// The checked arguments of one halo exchange, and who sends what to whom.
private struct HaloPlan {
    let dim: Int
    let width: Int
    let shape: [Int]
    let dtype: DType
    /// The neighbours this rank sends to and receives from (group ranks), `nil` at an end.
    let next: Int?
    let previous: Int?
    /// The widths this rank receives before and after its shard (0 at an end).
    let before: Int
    let after: Int

    init(_ group: GroupCoordinator, _ shard: Tensor, dim: Int, width: Int, periodic: Bool) throws {
        let op = "halo_exchange"
        let d = try Layout.normalize(dim: dim, ndim: shard.dimensionCount, op: op)
        guard width >= 0 else { throw FVDError.invalidArgument("\(op): width must be at least 0, got \(width)") }
        // Every rank learns every rank's arguments, so that a mismatch is an error on each.
        var others = shard.shape
        others.remove(at: d)
        let mine = [Int64(d), Int64(width), periodic ? 1 : 0, Int64(shard.shape[d]), Int64(DType.allCases.firstIndex(of: shard.dtype)!)]
            + others.map(Int64.init)
        let all = try group.allGather(Tensor(shape: [1, mine.count], scalars: mine), dim: 0).scalars(as: Int64.self)
        let n = group.size
        let rows = (0..<n).map { Array(all[($0 * mine.count)..<(($0 + 1) * mine.count)]) }
        // Every row but the shard's length must be rank 0's (so every rank names the same two).
        func differs(_ row: [Int64]) -> Bool { row[0..<3] != rows[0][0..<3] || row[4...] != rows[0][4...] }
        if let j = rows.firstIndex(where: differs) {
            func text(_ row: [Int64]) -> String {
                "dim \(row[0]), width \(row[1]), periodic \(row[2] == 1), \(DType.allCases[Int(row[4])]), other dimensions \(Array(row[5...]))"
            }
            throw FVDError.invalidArgument(
                "\(op) in group \(group.description): rank \(group.ranks[0]) passed \(text(rows[0])) but rank \(group.ranks[j]) "
                    + "passed \(text(rows[j])); every rank passes the same dim, width, periodic, dtype and other dimensions")
        }
        // Every shard has a neighbour that cuts a halo from it (its own, periodic in a group
        // of one), except the shard of a group of one without `periodic`.
        if periodic || n > 1, let j = rows.firstIndex(where: { Int($0[3]) < width }) {
            throw FVDError.invalidArgument(
                "\(op) in group \(group.description): width \(width) is longer than rank \(group.ranks[j])'s shard of "
                    + "\(rows[j][3]) along dim \(d), which a neighbour's halo is cut from")
        }
        self.dim = d
        self.width = width
        shape = shard.shape
        dtype = shard.dtype
        let r = group.rankInGroup
        next = periodic || r < n - 1 ? (r + 1) % n : nil
        previous = periodic || r > 0 ? (r - 1 + n) % n : nil
        before = previous == nil ? 0 : width
        after = next == nil ? 0 : width
    }

    /// This rank's shape with `width` entries along the exchanged dimension.
    func haloShape(width: Int) -> [Int] {
        var halo = shape
        halo[dim] = width
        return halo
    }

    /// The first `width` slices of `shard`.
    func head(of shard: Tensor) throws -> Tensor { try Tensor.slice(shard, dim: dim, range: 0..<width) }

    /// The last `width` slices of `shard`.
    func tail(of shard: Tensor) throws -> Tensor {
        let length = shard.shape[dim]
        return try Tensor.slice(shard, dim: dim, range: (length - width)..<length)
    }

    /// Sends `part` to `destination` and receives `length` (default `width`) slices from
    /// `source`: an empty tensor when there is no source or nothing to move. A group of one
    /// (periodic) is its own neighbour.
    func exchange(_ part: Tensor, to destination: Int?, from source: Int?, on group: GroupCoordinator, length: Int? = nil) throws
        -> Tensor
    {
        let count = source == nil ? 0 : (length ?? width)
        guard width > 0, count > 0 || destination != nil else { return Tensor(uninitializedShape: haloShape(width: count), dtype: dtype) }
        if group.size == 1 { return part }
        let sendsFirst = group.rankInGroup % 2 == 0
        if sendsFirst, let destination { try group.send(part, to: destination) }
        let received = try source.map { try group.recv(from: $0, shape: haloShape(width: count), dtype: dtype) }
        if !sendsFirst, let destination { try group.send(part, to: destination) }
        return received ?? Tensor(uninitializedShape: haloShape(width: 0), dtype: dtype)
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
