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
        let link = try self.link(from: rankInGroup, to: target)
        let sender = link.channel.members.firstIndex(of: rank)!
        try collective(.send, tensor, arguments: ArgumentList(sender), on: link, eager: true) { _ in }
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
        let origin = try linkPeer(source ?? (rankInGroup - 1 + size) % size, op: "recv")
        let link = try self.link(from: origin, to: rankInGroup)
        let channel = link.channel
        let sender = channel.members.firstIndex(of: ranks[origin])!
        return try collective(.recv, Tensor.empty, arguments: ArgumentList(sender), on: link, sends: false, payload: { $0.byteCount }) { _ in
            let sent = channel.slot(of: sender)
            if let dtype, dtype != sent.dtype {
                throw FVDError.dtypeMismatch(op: "recv", group: channel.label, ranks: [ranks[origin], rank], dtypes: [sent.dtype, dtype])
            }
            if let shape, shape != sent.shape {
                throw FVDError.shapeMismatch(op: "recv", group: channel.label, ranks: [ranks[origin], rank], shapes: [sent.shape, shape])
            }
            return try copyOfInput(of: sender, on: channel)
        }
    }

    /// A new tensor holding member `index`'s input as its header describes it.
    func copyOfInput(of index: Int, on channel: any PeerMemoryChannel) throws -> Tensor {
        let slot = channel.slot(of: index)
        let bytes = try slot.byteCount()
        let output = Tensor(uninitializedShape: slot.shape, dtype: slot.dtype)
        execute(
            .contiguous(srcOffset: 0, dstOffset: 0, bytes: bytes), from: channel.input(of: index),
            to: output.storage.pointer, streaming: bytes >= streamingThresholdBytes)
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

    /// The link from group rank `source` to group rank `destination` (one of them this
    /// rank), made on first use.
    private func link(from source: Int, to destination: Int) throws -> Endpoint {
        let sending = source == rankInGroup
        return try (sending ? sendLinks : receiveLinks).element(sending ? destination : source) {
            let channel = try factory.makePointToPointChannel(
                group: name, groupMembers: ranks, source: ranks[source], destination: ranks[destination], rank: rank)
            return Endpoint(channel, recorder: flightRecorder)
        }
    }
}
