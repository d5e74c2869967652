/// One process group as seen from one rank: FastVideo's `GroupCoordinator`.
///
/// It knows the group's members and this rank's place among them, and runs the
/// collectives (``allReduce(_:op:)-3jrs4``, ``allGather(_:dim:)-1nply``, ``reduceScatter(_:dim:op:)-2em2i``,
/// ``gather(_:to:dim:)-7rwah``, ``broadcast(_:from:)-50ws7``, ``barrier()-9ics7``,
/// ``allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd``), point-to-point transfers
/// (``send(_:to:)-3j66f``, ``recv(from:shape:dtype:)-9ii5c``, ``sendTensorDict(_:to:)-2csf0``,
/// ``recvTensorDict(_:from:)-xnjd``) and object broadcasts (``broadcastObject(_:from:)-24m0o``,
/// ``broadcastTensorDict(_:from:)-rpu3``). Every member must call the same
/// collectives in the same order; a coordinator is used by one thread or task of its
/// rank at a time (using it from two threads at once throws ``FVDError/concurrentUse(group:)``).
/// Every call has an `async` overload for Swift concurrency (see <doc:SwiftConcurrency>).
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
    /// The group's channel with its flight-recorder label.
    let endpoint: Endpoint
    /// The one-way links of ``send(_:to:)`` (by destination) and ``recv(from:shape:dtype:)``
    /// (by source), made on first use.
    let sendLinks: OnceTable<Endpoint>
    let receiveLinks: OnceTable<Endpoint>
    /// The metrics of each operation run on this group, made on first use (by op code).
    private let instruments = OnceTable<CollectiveInstruments>(count: CollectiveOp.allCases.count)
    /// The thread of started collectives (``start(_:)``), made on first use.
    private let lanes = OnceTable<AsyncLane>(count: 1)

    var lane: AsyncLane { lanes.element(0) { AsyncLane(label: "fvd.\(name).rank\(rank)") } }

    init(name: String, ranks: [Int], rank: Int, factory: any ChannelFactory) throws {
        self.name = name
        self.ranks = ranks
        self.rank = rank
        rankInGroup = ranks.firstIndex(of: rank)!
        self.factory = factory
        channel = try factory.makeChannel(name: name, members: ranks, rank: rank)
        endpoint = Endpoint(channel, recorder: factory.flightRecorder(rank: rank))
        sendLinks = OnceTable(count: ranks.count)
        receiveLinks = OnceTable(count: ranks.count)
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

    /// Runs one collective on `endpoint` (the group's, or a send/receive link) with its
    /// next call number, recording it in the flight recorder, the log and the metrics.
    ///
    /// `body` gets the call number and runs after every member has published a header
    /// equal to this one, so argument checks inside it throw on every rank alike. `output`
    /// is a buffer peers read in place (the large all-reduce's); `sends` is whether peers
    /// read this rank's input at all; `isSend` marks a send, which may return before it is
    /// received (see `performCollective`). `payload` gives the call's bytes for the log and
    /// metrics from its result (default: the input's size).
    ///
    /// The steady state of a small call takes no lock and allocates nothing here: codes
    /// instead of strings, the header written into the rank's slot, texts built only for
    /// errors and enabled logs.
    @inline(__always)
    func collective<R>(
        _ op: CollectiveOp, _ input: Tensor, arguments: ArgumentList = ArgumentList(), output: Tensor? = nil,
        on endpoint: Endpoint? = nil, sends: Bool = true, isSend: Bool = false, payload: ((R) -> Int)? = nil,
        _ body: (_ call: Int) throws -> R
    ) throws -> R {
        // Started collectives are pending: this call comes after them.
        if lanes.isMade(0), let lane = lanes.existing(0), lane.mustDrain { lane.drain() }
        // Two calls rather than `endpoint ?? self.endpoint`, whose result would be a new reference to count.
        if let endpoint {
            return try run(
                op, input, arguments: arguments, output: output, on: endpoint, sends: sends, isSend: isSend, payload: payload, body)
        }
        return try run(
            op, input, arguments: arguments, output: output, on: self.endpoint, sends: sends, isSend: isSend, payload: payload, body)
    }

    @inline(__always)
    private func run<R>(
        _ op: CollectiveOp, _ input: Tensor, arguments: ArgumentList, output: Tensor?, on endpoint: Endpoint, sends: Bool,
        isSend: Bool, payload: ((R) -> Int)?, _ body: (_ call: Int) throws -> R
    ) throws -> R {
        let channel = endpoint.channel
        guard channel.enter() else {
            let error = FVDError.concurrentUse(group: description)
            channel.abort(error)
            throw error
        }
        defer { channel.leave() }
        let call = channel.claimCall()
        let recorder = endpoint.recorder
        let start = TickClock.now()
        let sequence = recorder.begin(op: op, label: endpoint.label, call: call, shape: input.shape, dtype: input.dtype, at: start)
        // Texts are built only when their level is on (a log call's closure would retain its captures).
        if Diagnostics.logs(.trace) {
            Diagnostics.log(.trace, rank: rank, "begin \(op.name) \(channel.label) call #\(call) shape \(input.shape) \(input.dtype)")
        }
        let metric = Int(op.rawValue)
        do {
            let result = try performCollective(
                on: channel, call: call, op: op, input: input, arguments: arguments, output: output, sends: sends, isSend: isSend
            ) { try body(call) }
            let end = TickClock.now()
            recorder.end(sequence, at: end)
            let bytes = payload?(result) ?? input.byteCount
            instruments.withElement(metric, make: { makeInstruments(op) }) { $0.record(bytes: bytes, from: start, to: end) }
            if Diagnostics.logs(.debug) {
                Diagnostics.log(.debug, rank: rank, collectiveLogLine(
                    op: op.name, group: channel.label, call: call, shape: input.shape, dtype: input.dtype, bytes: bytes,
                    nanoseconds: TickClock.nanoseconds(from: start, to: end)))
            }
            return result
        } catch {
            recorder.end(sequence, at: TickClock.now(), error: error)
            recorder.reportFailure(error)
            instruments.withElement(metric, make: { makeInstruments(op) }) { $0.failures.increment() }
            Diagnostics.log(.debug, rank: rank, "\(op.name) \(channel.label) call #\(call) failed: \(error)")
            throw error
        }
    }

    private func makeInstruments(_ op: CollectiveOp) -> CollectiveInstruments {
        CollectiveInstruments(op: op.name, group: name, rank: rank)
    }
}

/// A channel and the label its calls carry in this rank's flight recorder.
final class Endpoint: Sendable {
    let channel: any PeerMemoryChannel
    let recorder: FlightRecorder
    let label: FlightRecorder.Label

    init(_ channel: any PeerMemoryChannel, recorder: FlightRecorder) {
        self.channel = channel
        self.recorder = recorder
        label = recorder.label(channel.label)
    }
}
