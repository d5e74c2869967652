// The `async` overloads, for callers in Swift concurrency.
//
// Each has the name and arguments of its blocking form and does the same work, on the
// coordinator's own thread (the lane of ``GroupCoordinator/start(_:)``): the calling task
// suspends until the call has ended, and no thread of the cooperative pool blocks. Calls
// keep their program order with the blocking and started ones of the same rank, so ranks
// may mix the three freely.
//
// Cancellation is looked at when a call starts: a task cancelled by then throws
// `CancellationError`, and the group is aborted so that its peers throw
// ``FVDError/peerFailed(rank:message:)`` instead of waiting for it. A call already under
// way is not interrupted, since its peers take part in it: it ends as it would have, and
// the next call sees the cancellation. The group is never left half-way through a call.

extension GroupCoordinator {
    /// Runs `operation` on this coordinator's thread and suspends until it has ended.
    func awaitCall<R: Sendable>(_ op: String, _ operation: @escaping @Sendable (GroupCoordinator) throws -> R) async throws -> R {
        if Task.isCancelled {
            channel.abort(.peerFailed(rank: rank, message: "its task was cancelled before \(op) in group \(description)"))
            throw CancellationError()
        }
        return try await start(operation).value
    }

    /// Runs `operation` on `tensor` in place on this coordinator's thread: the tensor moves
    /// there and back, so no second reference makes the in-place call copy it.
    func awaitCall(
        _ op: String, inPlace tensor: inout Tensor, _ operation: @escaping @Sendable (GroupCoordinator, inout Tensor) throws -> Void
    ) async throws {
        let box = TensorBox(consume tensor)
        defer { tensor = box.tensor }
        try await awaitCall(op) { try operation($0, &box.tensor) }
    }

    /// ``GroupCoordinator/allReduce(_:op:)-3jrs4`` for Swift concurrency: suspends instead of blocking.
    public func allReduce(_ input: Tensor, op: ReduceOp = .sum) async throws -> Tensor {
        try await awaitCall("all_reduce") { try $0.allReduce(input, op: op) }
    }

    /// ``GroupCoordinator/allReduce(inPlace:op:)-6q3ca`` for Swift concurrency: suspends instead of blocking.
    public func allReduce(inPlace tensor: inout Tensor, op: ReduceOp = .sum) async throws {
        try await awaitCall("all_reduce", inPlace: &tensor) { try $0.allReduce(inPlace: &$1, op: op) }
    }

    /// ``GroupCoordinator/allGather(_:dim:)-1nply`` for Swift concurrency: suspends instead of blocking.
    public func allGather(_ input: Tensor, dim: Int = -1) async throws -> Tensor {
        try await awaitCall("all_gather") { try $0.allGather(input, dim: dim) }
    }

    /// ``GroupCoordinator/allGather(inPlace:dim:)-2z5wh`` for Swift concurrency: suspends instead of blocking.
    public func allGather(inPlace tensor: inout Tensor, dim: Int = -1) async throws {
        try await awaitCall("all_gather", inPlace: &tensor) { try $0.allGather(inPlace: &$1, dim: dim) }
    }

    /// ``GroupCoordinator/reduceScatter(_:dim:op:)-2em2i`` for Swift concurrency: suspends instead of blocking.
    public func reduceScatter(_ input: Tensor, dim: Int = -1, op: ReduceOp = .sum) async throws -> Tensor {
        try await awaitCall("reduce_scatter") { try $0.reduceScatter(input, dim: dim, op: op) }
    }

    /// ``GroupCoordinator/reduceScatter(_:into:dim:op:)-wnfd`` for Swift concurrency: suspends instead of blocking.
    public func reduceScatter(_ input: Tensor, into output: inout Tensor, dim: Int = -1, op: ReduceOp = .sum) async throws {
        try await awaitCall("reduce_scatter", inPlace: &output) { try $0.reduceScatter(input, into: &$1, dim: dim, op: op) }
    }

    /// ``GroupCoordinator/gather(_:to:dim:)-7rwah`` for Swift concurrency: suspends instead of blocking.
    public func gather(_ input: Tensor, to root: Int = 0, dim: Int = -1) async throws -> Tensor? {
        try await awaitCall("gather") { try $0.gather(input, to: root, dim: dim) }
    }

    /// ``GroupCoordinator/broadcast(_:from:)-50ws7`` for Swift concurrency: suspends instead of blocking.
    public func broadcast(_ input: Tensor, from root: Int = 0) async throws -> Tensor {
        try await awaitCall("broadcast") { try $0.broadcast(input, from: root) }
    }

    /// ``GroupCoordinator/broadcast(inPlace:from:)-1jp75`` for Swift concurrency: suspends instead of blocking.
    public func broadcast(inPlace tensor: inout Tensor, from root: Int = 0) async throws {
        try await awaitCall("broadcast", inPlace: &tensor) { try $0.broadcast(inPlace: &$1, from: root) }
    }

    /// ``GroupCoordinator/barrier()-9ics7`` for Swift concurrency: suspends instead of blocking.
    public func barrier() async throws {
        try await awaitCall("barrier") { try $0.barrier() }
    }

    /// ``GroupCoordinator/allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd`` for Swift concurrency: suspends instead of blocking.
    public func allToAll4D(_ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil) async throws -> Tensor {
        try await awaitCall("all_to_all_4D") { try $0.allToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split) }
    }

    /// ``GroupCoordinator/allToAll4D(_:into:scatterDim:gatherDim:split:)-8q3on`` for Swift concurrency: suspends instead of blocking.
    public func allToAll4D(
        _ input: Tensor, into output: inout Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
    ) async throws {
        try await awaitCall("all_to_all_4D", inPlace: &output) {
            try $0.allToAll4D(input, into: &$1, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
        }
    }

    /// ``GroupCoordinator/send(_:to:)-3j66f`` for Swift concurrency: suspends instead of blocking.
    public func send(_ tensor: Tensor, to destination: Int? = nil) async throws {
        try await awaitCall("send") { try $0.send(tensor, to: destination) }
    }

    /// ``GroupCoordinator/recv(from:shape:dtype:)-9ii5c`` for Swift concurrency: suspends instead of blocking.
    public func recv(from source: Int? = nil, shape: [Int]? = nil, dtype: DType? = nil) async throws -> Tensor {
        try await awaitCall("recv") { try $0.recv(from: source, shape: shape, dtype: dtype) }
    }

    /// ``GroupCoordinator/recv(into:from:)-63esm`` for Swift concurrency: suspends instead of blocking.
    public func recv(into tensor: inout Tensor, from source: Int? = nil) async throws {
        try await awaitCall("recv", inPlace: &tensor) { try $0.recv(into: &$1, from: source) }
    }

    /// ``GroupCoordinator/broadcastObject(_:from:)-24m0o`` for Swift concurrency: suspends instead of blocking.
    public func broadcastObject<T: Codable & Sendable>(_ value: T?, from root: Int = 0) async throws -> T {
        try await awaitCall("broadcast_object") { try $0.broadcastObject(value, from: root) }
    }

    /// ``GroupCoordinator/broadcastObjectList(_:from:)-4rmqu`` for Swift concurrency: suspends instead of blocking.
    public func broadcastObjectList<T: Codable & Sendable>(_ list: [T]?, from root: Int = 0) async throws -> [T] {
        try await awaitCall("broadcast_object_list") { try $0.broadcastObjectList(list, from: root) }
    }

    /// ``GroupCoordinator/sendObject(_:to:)-9vum7`` for Swift concurrency: suspends instead of blocking.
    public func sendObject<T: Codable & Sendable>(_ value: T, to destination: Int? = nil) async throws {
        try await awaitCall("send_object") { try $0.sendObject(value, to: destination) }
    }

    /// ``GroupCoordinator/recvObject(_:from:)-6dk9k`` for Swift concurrency: suspends instead of blocking.
    public func recvObject<T: Codable & Sendable>(_ type: T.Type = T.self, from source: Int? = nil) async throws -> T {
        try await awaitCall("recv_object") { try $0.recvObject(type, from: source) }
    }

    /// ``GroupCoordinator/sendTensorDict(_:to:)-2csf0`` for Swift concurrency: suspends instead of blocking.
    public func sendTensorDict<M>(_ dict: TensorDict<M>, to destination: Int? = nil) async throws {
        try await awaitCall("send_tensor_dict") { try $0.sendTensorDict(dict, to: destination) }
    }

    /// ``GroupCoordinator/recvTensorDict(_:from:)-xnjd`` for Swift concurrency: suspends instead of blocking.
    public func recvTensorDict<M>(_ metadata: M.Type, from source: Int? = nil) async throws -> TensorDict<M> {
        try await awaitCall("recv_tensor_dict") { try $0.recvTensorDict(metadata, from: source) }
    }

    /// ``GroupCoordinator/recvTensorDict(from:)-4xv69`` for Swift concurrency: suspends instead of blocking.
    public func recvTensorDict(from source: Int? = nil) async throws -> TensorDict<NoMetadata> {
        try await awaitCall("recv_tensor_dict") { try $0.recvTensorDict(from: source) }
    }

    /// ``GroupCoordinator/broadcastTensorDict(_:from:)-rpu3`` for Swift concurrency: suspends instead of blocking.
    public func broadcastTensorDict<M>(_ dict: TensorDict<M>?, from root: Int = 0) async throws -> TensorDict<M> {
        try await awaitCall("broadcast_tensor_dict") { try $0.broadcastTensorDict(dict, from: root) }
    }

    /// ``GroupCoordinator/ringPass(_:shape:reverse:)-1ukgy`` for Swift concurrency: suspends instead of blocking.
    public func ringPass(_ tensor: Tensor, shape: [Int]? = nil, reverse: Bool = false) async throws -> Tensor {
        try await awaitCall("ring_pass") { try $0.ringPass(tensor, shape: shape, reverse: reverse) }
    }

    /// ``GroupCoordinator/ringPassVJP(_:shape:)-2r1t4`` for Swift concurrency: suspends instead of blocking.
    public func ringPassVJP(_ gradient: Tensor, shape: [Int]? = nil) async throws -> Tensor {
        try await awaitCall("ring_pass_vjp") { try $0.ringPassVJP(gradient, shape: shape) }
    }

    /// ``GroupCoordinator/haloExchange(_:dim:width:periodic:)-9ryg0`` for Swift concurrency: suspends instead of blocking.
    public func haloExchange(_ shard: Tensor, dim: Int, width: Int, periodic: Bool = false) async throws -> (before: Tensor, after: Tensor) {
        try await awaitCall("halo_exchange") { try $0.haloExchange(shard, dim: dim, width: width, periodic: periodic) }
    }

    /// ``GroupCoordinator/haloExchangeVJP(before:after:shard:dim:width:periodic:)-p1dx`` for Swift concurrency: suspends
    /// instead of blocking.
    public func haloExchangeVJP(before: Tensor, after: Tensor, shard: Tensor, dim: Int, width: Int, periodic: Bool = false) async throws
        -> Tensor
    {
        try await awaitCall("halo_exchange_vjp") {
            try $0.haloExchangeVJP(before: before, after: after, shard: shard, dim: dim, width: width, periodic: periodic)
        }
    }

    /// ``GroupCoordinator/allReduceVJP(_:)-67ab2`` for Swift concurrency: suspends instead of blocking.
    public func allReduceVJP(_ gradient: Tensor) async throws -> Tensor {
        try await awaitCall("all_reduce_vjp") { try $0.allReduceVJP(gradient) }
    }

    /// ``GroupCoordinator/allGatherVJP(_:dim:)-3hmif`` for Swift concurrency: suspends instead of blocking.
    public func allGatherVJP(_ gradient: Tensor, dim: Int = -1) async throws -> Tensor {
        try await awaitCall("all_gather_vjp") { try $0.allGatherVJP(gradient, dim: dim) }
    }

    /// ``GroupCoordinator/reduceScatterVJP(_:dim:)-9bs09`` for Swift concurrency: suspends instead of blocking.
    public func reduceScatterVJP(_ gradient: Tensor, dim: Int = -1) async throws -> Tensor {
        try await awaitCall("reduce_scatter_vjp") { try $0.reduceScatterVJP(gradient, dim: dim) }
    }

    /// ``GroupCoordinator/allToAll4DVJP(_:scatterDim:gatherDim:split:)-az4f`` for Swift concurrency: suspends instead of blocking.
    public func allToAll4DVJP(_ gradient: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil) async throws
        -> Tensor
    {
        try await awaitCall("all_to_all_4D_vjp") {
            try $0.allToAll4DVJP(gradient, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
        }
    }

    /// ``GroupCoordinator/broadcastVJP(_:from:)-97mo8`` for Swift concurrency: suspends instead of blocking.
    public func broadcastVJP(_ gradient: Tensor, from root: Int = 0) async throws -> Tensor {
        try await awaitCall("broadcast_vjp") { try $0.broadcastVJP(gradient, from: root) }
    }

    /// ``GroupCoordinator/gatherVJP(_:to:dim:)-1pjlw`` for Swift concurrency: suspends instead of blocking.
    public func gatherVJP(_ gradient: Tensor?, to root: Int = 0, dim: Int = -1) async throws -> Tensor {
        try await awaitCall("gather_vjp") { try $0.gatherVJP(gradient, to: root, dim: dim) }
    }
}

/// A tensor moved onto the coordinator's thread for an in-place call and back.
private final class TensorBox: @unchecked Sendable {
    // Touched by the awaiting task before and after the call, by the lane during it: the
    // lane's job queue and the handle's completion order the accesses.
    var tensor: Tensor

    init(_ tensor: consuming Tensor) { self.tensor = tensor }
}

extension ParallelState {
    /// Binds this state as ``current`` while the asynchronous `body` runs, for the
    /// module-level functions (a task-local value, so it follows the task across suspensions).
    public func withCurrent<R>(_ body: () async throws -> R) async rethrows -> R {
        try await ParallelState.$current.withValue(self, operation: body)
    }

    /// ``ParallelState/tensorModelParallelAllReduce(_:op:)-12nb4`` for Swift concurrency: suspends instead of blocking.
    public func tensorModelParallelAllReduce(_ input: Tensor, op: ReduceOp = .sum) async throws -> Tensor {
        try await tensorParallel.awaitCall("tensor_model_parallel_all_reduce") { _ in try self.tensorModelParallelAllReduce(input, op: op) }
    }

    /// ``ParallelState/tensorModelParallelAllGather(_:dim:)-5d1s6`` for Swift concurrency: suspends instead of blocking.
    public func tensorModelParallelAllGather(_ input: Tensor, dim: Int = -1) async throws -> Tensor {
        try await tensorParallel.awaitCall("tensor_model_parallel_all_gather") { _ in try self.tensorModelParallelAllGather(input, dim: dim) }
    }

    /// ``ParallelState/sequenceModelParallelAllGather(_:dim:)-170gl`` for Swift concurrency: suspends instead of blocking.
    public func sequenceModelParallelAllGather(_ input: Tensor, dim: Int = -1) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_all_gather") { _ in
            try self.sequenceModelParallelAllGather(input, dim: dim)
        }
    }

    /// ``ParallelState/sequenceModelParallelAllToAll4D(_:scatterDim:gatherDim:split:)-2qzym`` for Swift concurrency:
    /// suspends instead of blocking.
    public func sequenceModelParallelAllToAll4D(
        _ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
    ) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_all_to_all_4D") { _ in
            try self.sequenceModelParallelAllToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
        }
    }

    /// ``ParallelState/sequenceModelParallelAllGatherWithUnpad(_:originalLength:dim:)-63o2h`` for Swift
    /// concurrency: suspends instead of blocking.
    public func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int = -2) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_all_gather_with_unpad") { _ in
            try self.sequenceModelParallelAllGatherWithUnpad(input, originalLength: originalLength, dim: dim)
        }
    }

    /// ``ParallelState/tensorModelParallelAllReduceVJP(_:)-1j5jw`` for Swift concurrency: suspends instead of blocking.
    public func tensorModelParallelAllReduceVJP(_ gradient: Tensor) async throws -> Tensor {
        try await tensorParallel.awaitCall("tensor_model_parallel_all_reduce_vjp") { _ in try self.tensorModelParallelAllReduceVJP(gradient) }
    }

    /// ``ParallelState/tensorModelParallelAllGatherVJP(_:dim:)-861bl`` for Swift concurrency: suspends instead of blocking.
    public func tensorModelParallelAllGatherVJP(_ gradient: Tensor, dim: Int = -1) async throws -> Tensor {
        try await tensorParallel.awaitCall("tensor_model_parallel_all_gather_vjp") { _ in
            try self.tensorModelParallelAllGatherVJP(gradient, dim: dim)
        }
    }

    /// ``ParallelState/sequenceModelParallelAllGatherVJP(_:dim:)-4liuu`` for Swift concurrency: suspends instead of blocking.
    public func sequenceModelParallelAllGatherVJP(_ gradient: Tensor, dim: Int = -1) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_all_gather_vjp") { _ in
            try self.sequenceModelParallelAllGatherVJP(gradient, dim: dim)
        }
    }

    /// ``ParallelState/sequenceModelParallelAllToAll4DVJP(_:scatterDim:gatherDim:split:)-nj37`` for Swift
    /// concurrency: suspends instead of blocking.
    public func sequenceModelParallelAllToAll4DVJP(
        _ gradient: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
    ) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_all_to_all_4D_vjp") { _ in
            try self.sequenceModelParallelAllToAll4DVJP(gradient, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
        }
    }

    /// ``ParallelState/sequenceModelParallelShardVJP(_:originalLength:dim:)-4h4at`` for Swift concurrency:
    /// suspends instead of blocking.
    public func sequenceModelParallelShardVJP(_ gradient: Tensor, originalLength: Int, dim: Int = 1) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_shard_vjp") { _ in
            try self.sequenceModelParallelShardVJP(gradient, originalLength: originalLength, dim: dim)
        }
    }

    /// ``ParallelState/sequenceModelParallelAllGatherWithUnpadVJP(_:shardLength:dim:)-7d5gj`` for Swift
    /// concurrency: suspends instead of blocking.
    public func sequenceModelParallelAllGatherWithUnpadVJP(_ gradient: Tensor, shardLength: Int, dim: Int = -2) async throws -> Tensor {
        try await sequenceParallel.awaitCall("sequence_model_parallel_all_gather_with_unpad_vjp") { _ in
            try self.sequenceModelParallelAllGatherWithUnpadVJP(gradient, shardLength: shardLength, dim: dim)
        }
    }
}

/// `tensor_model_parallel_all_reduce` for Swift concurrency: suspends instead of blocking.
public func tensorModelParallelAllReduce(_ input: Tensor, op: ReduceOp = .sum) async throws -> Tensor {
    try await ParallelState.require().tensorModelParallelAllReduce(input, op: op)
}

/// `tensor_model_parallel_all_gather` for Swift concurrency: suspends instead of blocking.
public func tensorModelParallelAllGather(_ input: Tensor, dim: Int = -1) async throws -> Tensor {
    try await ParallelState.require().tensorModelParallelAllGather(input, dim: dim)
}

/// `sequence_model_parallel_all_gather` for Swift concurrency: suspends instead of blocking.
public func sequenceModelParallelAllGather(_ input: Tensor, dim: Int = -1) async throws -> Tensor {
    try await ParallelState.require().sequenceModelParallelAllGather(input, dim: dim)
}

/// `sequence_model_parallel_all_to_all_4D` for Swift concurrency: suspends instead of blocking.
public func sequenceModelParallelAllToAll4D(
    _ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil
) async throws -> Tensor {
    try await ParallelState.require().sequenceModelParallelAllToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
}

/// `sequence_model_parallel_all_gather_with_unpad` for Swift concurrency: suspends instead of blocking.
public func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int = -2) async throws -> Tensor {
    try await ParallelState.require().sequenceModelParallelAllGatherWithUnpad(input, originalLength: originalLength, dim: dim)
}
