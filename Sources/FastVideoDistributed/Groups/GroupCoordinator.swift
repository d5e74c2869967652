import Dispatch

/// One process group as seen from one rank: FastVideo's `GroupCoordinator`.
///
/// It knows the group's members and this rank's place among them, and runs the
/// collectives (``allReduce(_:op:)``, ``allGather(_:dim:)``, ``reduceScatter(_:dim:op:)``,
/// ``gather(_:to:dim:)``, ``broadcast(_:from:)``, ``barrier()``,
/// ``allToAll4D(_:scatterDim:gatherDim:split:)``), point-to-point transfers
/// (``send(_:to:)``, ``recv(from:shape:dtype:)``, ``sendTensorDict(_:to:)``,
/// ``recvTensorDict(_:from:)``) and object broadcasts (``broadcastObject(_:from:)``,
/// ``broadcastTensorDict(_:from:)``). Every member must call the same
/// collectives in the same order; a coordinator is used by its rank's thread only
/// (using it from two threads at once throws ``FVDError/concurrentUse(group:)``).
///
/// Group ranks: `rankInGroup` is the index of this rank in the sorted `ranks`, and
/// every result is assembled in that order. Arguments named `root` are group ranks,
/// as in FastVideo (`src`/`dst` there).
public final class GroupCoordinator: Sendable, CustomStringConvertible {
    /// The group's name, e.g. `world`, `tp0`, `sp1`, `dp0`.
    public let name: String
    /// World ranks of the members, ascending.
    public let ranks: [Int]
    /// This rank's world rank.
    public let rank: Int
    /// This rank's index in ``ranks``.
    public let rankInGroup: Int

    let factory: any ChannelFactory
    let channel: any PeerMemoryChannel
    /// The one-way links of ``send(_:to:)`` and ``recv(from:shape:dtype:)``, made on first
    /// use, by `source * size + destination` (group ranks).
    let links = Locked<[Int: any PeerMemoryChannel]>([:])
    /// The metrics of each operation run on this group, made on first use.
    private let instruments = Locked<[String: CollectiveInstruments]>([:])
    /// The thread of started collectives (``start(_:)``), made on first use.
    private let lanes = Locked<AsyncLane?>(nil)

    var lane: AsyncLane {
        lanes.withLock { lane in
            if let lane { return lane }
            let made = AsyncLane(label: "fvd.\(name).rank\(rank)")
            lane = made
            return made
        }
    }

    init(name: String, ranks: [Int], rank: Int, factory: any ChannelFactory) throws {
        self.name = name
        self.ranks = ranks
        self.rank = rank
        rankInGroup = ranks.firstIndex(of: rank)!
        self.factory = factory
        channel = try factory.makeChannel(name: name, members: ranks, rank: rank)
    }

    /// Number of ranks in the group (FastVideo's `world_size` of a group).
    public var size: Int { ranks.count }
    /// The first member's world rank.
    public var firstRank: Int { ranks[0] }
    /// The last member's world rank.
    public var lastRank: Int { ranks[ranks.count - 1] }
    /// Whether this rank is the group's first member.
    public var isFirstRank: Bool { rank == firstRank }
    /// Whether this rank is the group's last member.
    public var isLastRank: Bool { rank == lastRank }
    /// World rank of the next member, wrapping around (a ring).
    public var nextRank: Int { ranks[(rankInGroup + 1) % size] }
    /// World rank of the previous member, wrapping around (a ring).
    public var previousRank: Int { ranks[(rankInGroup - 1 + size) % size] }

    /// This rank's flight recorder: its last collective calls over all its groups.
    public var flightRecorder: FlightRecorder { factory.flightRecorder(rank: rank) }

    /// `name [r0, r1, ...]`, the label used in errors.
    public var description: String { "\(name) \(ranks)" }

    /// Creates the coordinator of a subgroup that contains this rank.
    ///
    /// Every member must create the group with the same name and ranks (like
    /// `torch.distributed.new_group`); ranks that are not members don't call it.
    /// - Throws: ``FVDError/invalidArgument(_:)`` if `ranks` is empty, has duplicates,
    ///   leaves this group, or does not contain this rank.
    public func subgroup(name: String, ranks: [Int]) throws -> GroupCoordinator {
        let sorted = ranks.sorted()
        guard !sorted.isEmpty, Set(sorted).count == sorted.count else {
            throw FVDError.invalidArgument("group \(name): ranks \(ranks) must be non-empty and distinct")
        }
        guard sorted.allSatisfy(self.ranks.contains) else {
            throw FVDError.invalidArgument("group \(name): ranks \(ranks) are not all members of \(description)")
        }
        guard sorted.contains(rank) else {
            throw FVDError.invalidArgument("group \(name): rank \(rank) is not a member of \(ranks)")
        }
        return try GroupCoordinator(name: name, ranks: sorted, rank: rank, factory: factory)
    }

    /// Runs one collective on `channel` (the group's, or a send/receive link) with its
    /// next call number, recording it in the flight recorder, the log and the metrics.
    ///
    /// `body` gets the call number and runs after every member has published a header equal to this one, so
    /// argument checks inside it throw on every rank alike. `payload` gives the call's
    /// bytes for the log and metrics from its result (default: the input's size).
    func collective<R>(
        _ op: String, kind: String? = nil, _ input: Tensor, arguments: [Int] = [], text: String = "",
        output: Tensor? = nil, on channel: (any PeerMemoryChannel)? = nil, payload: ((R) -> Int)? = nil,
        _ body: (_ call: Int) throws -> R
    ) throws -> R {
        // Started collectives are pending: this call comes after them.
        if let lane = lanes.withLock({ $0 }), lane.mustDrain { lane.drain() }
        let channel = channel ?? self.channel
        let recorder = flightRecorder
        let call = channel.nextCall
        let sequence = recorder.begin(op: op, group: channel.label, call: call, shape: input.shape, dtype: input.dtype)
        Diagnostics.log(.trace, rank: rank, "begin \(op) \(channel.label) call #\(call) shape \(input.shape) \(input.dtype)")
        let start = DispatchTime.now().uptimeNanoseconds
        let metrics = instruments(for: op)
        do {
            let result = try runCollective(op, kind: kind, input, arguments: arguments, text: text, output: output, on: channel, body)
            let elapsed = DispatchTime.now().uptimeNanoseconds &- start
            recorder.end(sequence)
            let bytes = payload?(result) ?? input.byteCount
            metrics.calls.increment()
            metrics.bytes.increment(by: bytes)
            metrics.duration.recordNanoseconds(Int64(clamping: elapsed))
            Diagnostics.log(.debug, rank: rank, collectiveLogLine(
                op: op, group: channel.label, call: call, shape: input.shape, dtype: input.dtype, bytes: bytes, nanoseconds: elapsed))
            return result
        } catch {
            recorder.end(sequence, error: error)
            recorder.reportFailure(error)
            metrics.failures.increment()
            Diagnostics.log(.debug, rank: rank, "\(op) \(channel.label) call #\(call) failed: \(error)")
            throw error
        }
    }

    private func instruments(for op: String) -> CollectiveInstruments {
        instruments.value(for: op) { CollectiveInstruments(op: op, group: name, rank: rank) }
    }

    private func runCollective<R>(
        _ op: String, kind: String?, _ input: Tensor, arguments: [Int], text: String, output: Tensor?,
        on channel: any PeerMemoryChannel, _ body: (_ call: Int) throws -> R
    ) throws -> R {
        guard channel.enter() else {
            let error = FVDError.concurrentUse(group: description)
            channel.abort(error)
            throw error
        }
        defer { channel.leave() }
        let call = channel.nextCall
        let header = CallHeader(
            op: op, kind: kind ?? op, dtype: input.dtype, shape: input.shape, arguments: arguments, argumentText: text, call: call)
        // A multi-process peer can read only shared-heap memory: stage other inputs there (one copy).
        let input = input.peerVisible
        guard input.storage.isPeerVisible, output?.storage.isPeerVisible ?? true else {
            let error = FVDError.invalidArgument(
                "\(op): no room in shared memory for \(input.byteCount + (output?.byteCount ?? 0)) bytes "
                    + "(/dev/shm is full, or the rank's heap is)")
            channel.abort(error)
            throw error
        }
        let buffers = PeerBuffers(
            input: input.storage.pointer, output: output?.storage.pointer,
            storage: [input.storage] + (output.map { [$0.storage] } ?? []))
        return try performCollective(on: channel, header: header, buffers: buffers) { try body(call) }
    }
}
