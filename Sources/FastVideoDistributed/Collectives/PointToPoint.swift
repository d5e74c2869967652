/// Point-to-point transfers, FastVideo's `GroupCoordinator.send` / `recv`.
///
/// Each ordered pair of members has a one-way link of its own, made by either end when
/// it first uses it; transfers on one link are matched in order (like MPI's
/// non-overtaking rule), and links do not wait for each other.
extension GroupCoordinator {
    /// Sends `tensor` to group rank `destination`; its shape and dtype travel with it.
    ///
    /// Like `MPI_Send`: a tensor of up to 8 KiB travels in the link's slot, and the send
    /// returns as soon as the slot is published (buffered, MPI's eager protocol), on the
    /// shared-memory and in-process transports; a sender runs at most two such messages
    /// ahead of its receiver, so a third unreceived one waits. A larger tensor is read by
    /// the receiver straight from this rank's memory, and the send returns once the receiver
    /// has it (synchronous, like `MPI_Ssend`; every send under MPI is). Two ranks that both
    /// send large tensors to each other before receiving therefore wait for each other; that
    /// ends in a timeout naming the missing rank, never a hang.
    /// - Parameters:
    ///   - tensor: any shape and dtype, empty included.
    ///   - destination: a group rank other than this one; default the next rank in the
    ///     ring, as in FastVideo.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a destination outside the group or
    ///   this rank itself, before anything is sent; the timeout and peer errors of a
    ///   collective when the receiver never receives, failed or exited.
    public func send(_ tensor: Tensor, to destination: Int? = nil) throws {
        let target = try linkPeer(destination ?? (rankInGroup + 1) % size, op: "send")
        let sender = linkIndex(of: rank, peer: ranks[target])
        try withLink(from: rankInGroup, to: target) { link in
            try collective(.send, tensor, arguments: ArgumentList(sender), on: link, isSend: true) { _ in }
        }
    }

    /// Receives the next tensor group rank `source` sends to this rank.
    ///
    /// - Parameters:
    ///   - source: a group rank other than this one; default the previous rank in the ring.
    ///   - shape: the shape this rank expects, if it wants it checked.
    ///   - dtype: the dtype this rank expects, if it wants it checked.
    /// - Returns: the sent tensor, with the sender's shape and dtype.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a source outside the group or this
    ///   rank itself; ``FVDError/shapeMismatch(op:group:ranks:shapes:)`` or
    ///   ``FVDError/dtypeMismatch(op:group:ranks:dtypes:)`` (sender first, then this rank's
    ///   expectation) on this rank when the tensor is not what it expected, like
    ///   `MPI_ERR_TRUNCATE` (the sender's send has completed); the timeout and peer
    ///   errors when the sender never sends, failed or exited.
    public func recv(from source: Int? = nil, shape: [Int]? = nil, dtype: DType? = nil) throws -> Tensor {
        try receive(from: source, op: .recv, payload: { $0.byteCount }, expected: { sent in
            if let dtype, dtype != sent.dtype { return (nil, dtype) }
            if let shape, shape != sent.shape { return (shape, nil) }
            return nil
        }) { _, channel, sender in try copyOfInput(of: sender, on: channel) }
    }

    /// Receives the next tensor group rank `source` sends to this rank into `tensor`, like
    /// `torch.distributed.recv(tensor, src)`: no new tensor is allocated.
    ///
    /// - Throws: the errors of ``recv(from:shape:dtype:)-9ii5c``, with `tensor`'s shape and dtype
    ///   as the expected ones; `tensor` is unchanged then.
    public func recv(into tensor: inout Tensor, from source: Int? = nil) throws {
        tensor.makeUnique()
        let target = tensor
        // The result is the received bytes, for the log and metrics (a closure capturing
        // `target` for them would be allocated on every call).
        _ = try receive(from: source, op: .recvInPlace, payload: { $0 }, expected: { sent in
            if target.dtype != sent.dtype { return (nil, target.dtype) }
            if !sent.hasShape(target.shape) { return (target.shape, nil) }
            return nil
        }) { _, channel, sender in
            copyWhole(from: channel.input(of: sender), to: target)
            return target.byteCount
        }
    }

    /// A receive on the link from group rank `source`: `expected` returns the shape or dtype
    /// this rank expected when the sent one differs (an error on this rank), `take` reads the
    /// data, `payload` gives the received bytes for the log and metrics.
    private func receive<R>(
        from source: Int?, op: CollectiveOp, payload: @escaping (R) -> Int, expected: (CallSlot) -> (shape: [Int]?, dtype: DType?)?,
        take: (CallSlot, any PeerMemoryChannel, Int) throws -> R
    ) throws -> R {
        let origin = try linkPeer(source ?? (rankInGroup - 1 + size) % size, op: op.name)
        let sender = linkIndex(of: ranks[origin], peer: rank)
        return try withLink(from: origin, to: rankInGroup) { link in
            let channel = link.channel
            return try collective(op, Tensor.empty, arguments: ArgumentList(sender), on: link, sends: false, payload: payload) { _ in
                let sent = channel.slot(of: sender)
                if let (shape, dtype) = expected(sent) {
                    let ranks = [ranks[origin], rank]
                    if let dtype { throw FVDError.dtypeMismatch(op: op.name, group: channel.label, ranks: ranks, dtypes: [sent.dtype, dtype]) }
                    throw FVDError.shapeMismatch(op: op.name, group: channel.label, ranks: ranks, shapes: [sent.shape, shape ?? []])
                }
                return try take(sent, channel, sender)
            }
        }
    }

    /// The index in a link's members (its two world ranks, sorted) of `rank`, the other being `peer`.
    private func linkIndex(of rank: Int, peer: Int) -> Int { rank < peer ? 0 : 1 }

    /// A new tensor holding member `index`'s input as its header describes it.
    func copyOfInput(of index: Int, on channel: any PeerMemoryChannel) throws -> Tensor {
        let slot = channel.slot(of: index)
        let shape = try slot.dataShape()
        let output = Tensor(uninitializedShape: shape, dtype: slot.dtype)
        copyWhole(from: channel.input(of: index), to: output)
        return output
    }

    /// Checks that `peer` is another rank of the group.
    private func linkPeer(_ peer: Int, op: String) throws -> Int {
        guard (0..<size).contains(peer) else {
            throw FVDError.invalidArgument("\(op): rank \(peer) is not a rank of group \(description) (0..<\(size))")
        }
        guard peer != rankInGroup else {
            throw FVDError.invalidArgument(
                "\(op): rank \(peer) is this rank (world rank \(rank)) of group \(description); a rank cannot \(op) to or from itself")
        }
        return peer
    }

    /// Runs `body` with the link from group rank `source` to group rank `destination` (one of
    /// them this rank), made on first use.
    private func withLink<R>(from source: Int, to destination: Int, _ body: (Endpoint) throws -> R) throws -> R {
        let sending = source == rankInGroup
        return try (sending ? sendLinks : receiveLinks).withElement(sending ? destination : source, make: {
            let channel = try factory.makePointToPointChannel(
                group: name, groupMembers: ranks, source: ranks[source], destination: ranks[destination], rank: rank)
            return Endpoint(channel, recorder: flightRecorder)
        }, body)
    }
}
