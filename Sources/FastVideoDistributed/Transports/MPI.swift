#if MPI
import CFVDShims
import CMPI
import Foundation
import Synchronization

/// Throws ``FVDError/transportFailure(transport:message:)`` with MPI's own text when
/// `code` is not `MPI_SUCCESS` (communicators return errors: `MPI_ERRORS_RETURN`).
func mpiCheck(_ code: Int32, _ call: String) throws {
    guard code != fvd_mpi_success() else { return }
    var text = [CChar](repeating: 0, count: Int(fvd_mpi_max_error_string()) + 1)
    var length: Int32 = 0
    MPI_Error_string(code, &text, &length)
    let message = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    throw FVDError.transportFailure(transport: "MPI", message: "\(call) failed: \(message)")
}

/// MPI counts are 32-bit: the byte count of one message, or an error naming the limit.
func mpiCount(_ bytes: Int, _ op: String) throws -> Int32 {
    guard let count = Int32(exactly: bytes) else {
        throw FVDError.invalidArgument(
            "\(op): \(bytes) bytes in one MPI message; the MPI transport sends at most \(Int32.max) bytes per rank and call")
    }
    return count
}

/// One rank of a world started by `mpirun`: MPI's world communicator, a communicator
/// per group, and this rank's flight recorder.
final class MPIWorldState: ChannelFactory, @unchecked Sendable {
    let rank: Int
    let size: Int
    let timeoutNanoseconds: UInt64
    /// `FVD_MPI_NATIVE_ALLREDUCE=1`: all-reduces of the types and ops MPI has run as
    /// `MPI_Allreduce`, in MPI's order rather than rank order.
    let nativeAllReduce = ProcessInfo.processInfo.environment["FVD_MPI_NATIVE_ALLREDUCE"] == "1"
    private let failure = Locked<FVDError?>(nil)
    private let groups = Locked<[String: MPIGroupState]>([:])
    private let recorder: FlightRecorder
    /// This host's ranks and their shared memory, when this rank shares its host.
    let host: MPIHost?
    /// The host of each world rank: the lowest world rank on it.
    let hostOf: [Int]

    /// Initializes MPI (`MPI_Init_thread`, asking for `MPI_THREAD_MULTIPLE`), makes
    /// communicators return errors instead of aborting, and joins this host's ranks
    /// (``MPIHost``).
    init(timeout: Double) throws {
        var provided: Int32 = 0
        try mpiCheck(MPI_Init_thread(nil, nil, fvd_mpi_thread_multiple(), &provided), "MPI_Init_thread")
        try mpiCheck(MPI_Comm_set_errhandler(fvd_mpi_comm_world(), fvd_mpi_errors_return()), "MPI_Comm_set_errhandler")
        var rank: Int32 = 0, size: Int32 = 0
        try mpiCheck(MPI_Comm_rank(fvd_mpi_comm_world(), &rank), "MPI_Comm_rank")
        try mpiCheck(MPI_Comm_size(fvd_mpi_comm_world(), &size), "MPI_Comm_size")
        self.rank = Int(rank)
        self.size = Int(size)
        timeoutNanoseconds = FastVideoDistributed.timeoutNanoseconds(timeout)
        recorder = FlightRecorder(
            rank: Int(rank), directory: FlightRecorder.directoryFromEnvironment,
            printsOnBreak: FlightRecorder.printsOnBreakByDefault)
        (host, hostOf) =
            size > 1
            ? try MPIHost.join(worldRank: Int(rank), worldSize: Int(size), timeout: timeout, recorder: recorder) : (nil, [0])
    }

    func flightRecorder(rank: Int) -> FlightRecorder { recorder }

    /// The error that ends this rank's use of the world: its own or, within its host, a
    /// peer's (failures between hosts end the job with `MPI_Abort`).
    var abortError: FVDError? { failure.withLock { $0 } ?? host?.shared.abortError }

    /// Ends this rank's use of the world with `error`, in its groups of both kinds.
    func abort(_ error: FVDError) {
        failure.withLock { if $0 == nil { $0 = error } }
        host?.shared.abort(error, tellPeers: false)
    }

    /// Tells this host's peers that `error` ended this rank's run (its failure hook), unless
    /// it is a consequence of another rank's failure or exit, which they see themselves.
    func recordFailure(_ error: any Error) {
        guard let host else { return }
        switch error as? FVDError {
        case .peerFailed?, .peerExited?: break
        default: host.shared.abort(.peerFailed(rank: rank, message: String(describing: error)), tellPeers: true)
        }
    }

    /// Ends MPI for this process: `MPI_Finalize` after a clean run, `MPI_Abort` (which
    /// ends every rank of the job) after a failure that peers may still be waiting on.
    /// A rank that failed only because a peer left normally (``FVDError/peerExited(rank:op:group:)``)
    /// finalizes too, with its own exit notices: that peer is inside `MPI_Finalize`, and
    /// an `MPI_Abort` racing with it can leave `mpirun` hung (Open MPI 4.1) — the
    /// notices end every other waiter the same way.
    ///
    /// Before `MPI_Finalize`, the rank sends each member of each of its groups an exit
    /// notice (one byte, ``exitNoticeTag``, on the group's communicator, after every call
    /// header it sent there, so MPI's ordering delivers those first): a peer still waiting
    /// for this rank's call header sees it and throws ``FVDError/peerExited(rank:op:group:)``
    /// at once, as on the other transports, instead of at the timeout.
    func finish(failed: Bool) {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        guard finalized == 0 else { return }
        // This host's peers see the exit in the segment before this rank blocks in MPI_Finalize.
        host?.shared.markExited()
        if failed || !(abortError?.isPeerExit ?? true) {
            // The peers that met the same failure (a mismatch, found by every rank at once)
            // print it within this grace; MPI_Abort would stop them before they do.
            usleep(abortGraceMicroseconds)
            MPI_Abort(fvd_mpi_comm_world(), 1)
        } else {
            var notice: UInt8 = 1
            // Links share their group's communicator: one notice per group and member.
            for group in groups.withLock({ Array($0.values) }) where group.tags == MPIGroupState.groupTags {
                for j in group.members.indices where j != group.index {
                    var request = fvd_mpi_request_null()
                    if MPI_Isend(&notice, 1, fvd_mpi_byte(), group.commRanks[j], Self.exitNoticeTag, group.comm, &request)
                        == fvd_mpi_success()
                    {
                        MPI_Request_free(&request)
                    }
                }
            }
            MPI_Finalize()
        }
    }

    /// How long a failed rank waits before `MPI_Abort` ends the job: 0.25 s.
    let abortGraceMicroseconds: UInt32 = 250_000

    /// The tag of the exit notice (``finish(failed:)``), beyond every call header's.
    static let exitNoticeTag: Int32 = 32_001

    /// Whether the member at `commRank` of `comm` has sent its exit notice (it left its `run`).
    static func hasExited(_ commRank: Int32, on comm: MPI_Comm) -> Bool {
        var flag: Int32 = 0
        var status = MPI_Status()
        return MPI_Iprobe(commRank, exitNoticeTag, comm, &flag, &status) == fvd_mpi_success() && flag != 0
    }

    /// A communicator for the group, created by its members only (`MPI_Comm_create_group`).
    func makeChannel(name: String, members: [Int], rank: Int) throws -> any PeerMemoryChannel {
        if let host, host.holds(members) { return try host.shared.makeChannel(name: name, members: members, rank: rank) }
        return try groupChannel(
            name: name, members: members, cache: groups,
            make: { key in
                MPIGroupState(
                    comm: try Self.communicator(members: members, key: key), label: key, members: members,
                    index: members.firstIndex(of: rank)!, host: host, hostOf: hostOf)
            },
            channel: { MPIChannel(world: self, group: $0) })
    }

    /// A link over the group's own communicator, in a tag range of its own, so making it
    /// needs nothing from the other end (`MPI_Comm_create_group` would wait for it).
    func makePointToPointChannel(group: String, groupMembers: [Int], source: Int, destination: Int, rank: Int) throws
        -> any PeerMemoryChannel
    {
        if let host, host.holds([source, destination]) {
            return try host.shared.makePointToPointChannel(
                group: group, groupMembers: groupMembers, source: source, destination: destination, rank: rank)
        }
        let parent = try makeChannel(name: group, members: groupMembers, rank: rank)
        guard let parent = parent as? MPIChannel else { throw FVDError.invalidArgument("a group of one has no links") }
        let members = [source, destination].sorted()
        return try groupChannel(
            name: pointToPointName(group: group, source: source, destination: destination), members: members, cache: groups,
            make: { key in
                MPIGroupState(
                    comm: parent.group.comm, label: key, members: members, index: members.firstIndex(of: rank)!, host: host,
                    hostOf: hostOf, commRanks: members.map { Int32(groupMembers.firstIndex(of: $0)!) },
                    tags: source < destination ? MPIGroupState.upwardLinkTags : MPIGroupState.downwardLinkTags)
            },
            channel: { MPIChannel(world: self, group: $0) })
    }

    private static func communicator(members: [Int], key: String) throws -> MPI_Comm {
        var worldGroup: MPI_Group?
        try mpiCheck(MPI_Comm_group(fvd_mpi_comm_world(), &worldGroup), "MPI_Comm_group")
        defer { MPI_Group_free(&worldGroup) }
        var group: MPI_Group?
        let ranks = members.map(Int32.init)
        try mpiCheck(MPI_Group_incl(worldGroup, Int32(ranks.count), ranks, &group), "MPI_Group_incl")
        defer { MPI_Group_free(&group) }
        var comm: MPI_Comm?
        // Groups made at the same time by the same ranks are told apart by their key's hash.
        let tag = Int32(key.utf8.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 } % 30_000)
        try mpiCheck(MPI_Comm_create_group(fvd_mpi_comm_world(), group, tag, &comm), "MPI_Comm_create_group")
        try mpiCheck(MPI_Comm_set_errhandler(comm, fvd_mpi_errors_return()), "MPI_Comm_set_errhandler")
        return comm!
    }
}

/// One group's communicator and the current call's exchanged slots and buffers, on one rank.
///
/// Invariant: used only by the thread that holds `busy` (``PeerMemoryChannel/enter()``).
final class MPIGroupState: @unchecked Sendable {
    let comm: MPI_Comm
    let label: String
    let members: [Int]
    let index: Int
    let busy = Atomic<Bool>(false)
    /// Calls started; the one in progress is `calls - 1`.
    var calls = 0
    /// This rank's two slots (by the call's parity) and a received copy of every peer's
    /// slot of the call in progress, each ``CallSlot/byteCount`` bytes.
    let ownSlots: UnsafeMutableRawPointer
    let peerSlots: UnsafeMutableRawPointer
    /// The packed form of this rank's slot, sent to every peer, and the sends, for the
    /// call `sentCall`.
    let sendBuffer: UnsafeMutableRawPointer
    var sends: [MPI_Request?] = []
    var sentCall = -1
    /// Where member `j`'s input (and all-reduce output) can be read during this call, when
    /// it did not travel inline.
    var inputs: [UnsafeRawPointer] = []
    var outputs: [UnsafeMutableRawPointer?] = []
    /// Received copies of the peers' data, and this rank's buffers, kept until ``MPIChannel/release()``.
    var received: [TensorStorage] = []
    var kept: [TensorStorage] = []

    /// The rank in `comm` of each member: its index, except for a send/receive link,
    /// which uses its group's communicator.
    let commRanks: [Int32]
    /// The tags of the call headers: a group's collectives use 0..<30000, a link from a
    /// lower to a higher group rank 30000..<31000, the other way 31000..<32000 (a link's
    /// data message is tag 32000); MPI allows at least 0...32767.
    let tags: Range<Int32>
    static let groupTags: Range<Int32> = 0..<30_000
    static let upwardLinkTags: Range<Int32> = 30_000..<31_000
    static let downwardLinkTags: Range<Int32> = 31_000..<32_000
    static let linkDataTag: Int32 = 32_000

    /// Whether each member runs on this rank's host (``MPIHost``), whose members read each
    /// other's buffers in the host's shared memory; and those members but this rank.
    let sameHost: [Bool]
    let hostPeers: [Int]
    /// Whether some members of the group share a host (then every member moves data point
    /// to point, as each pair allows, instead of by MPI's collectives): the same on every member.
    let sharesHosts: Bool
    /// The members of each host as consecutive ranges of member indices, in member order,
    /// when each host's members are consecutive (`mpirun`'s default mapping); else nil.
    let hostBlocks: [Range<Int>]?

    /// The maximal runs of equal values in `hosts`; nil when a value comes back after another.
    static func blocks(of hosts: [Int]) -> [Range<Int>]? {
        guard !hosts.isEmpty else { return [] }
        var blocks: [Range<Int>] = [], seen: Set<Int> = []
        var start = 0
        for i in 1...hosts.count where i == hosts.count || hosts[i] != hosts[start] {
            guard seen.insert(hosts[start]).inserted else { return nil }
            blocks.append(start..<i)
            start = i
        }
        return blocks
    }

    init(
        comm: MPI_Comm, label: String, members: [Int], index: Int, host: MPIHost?, hostOf: [Int], commRanks: [Int32]? = nil,
        tags: Range<Int32> = groupTags
    ) {
        self.comm = comm
        let sameHost = members.map { host?.contains($0) ?? false }
        self.sameHost = sameHost
        hostPeers = members.indices.filter { $0 != index && sameHost[$0] }
        sharesHosts = Set(members.map { hostOf[$0] }).count < members.count
        hostBlocks = Self.blocks(of: members.map { hostOf[$0] })
        self.label = label
        self.members = members
        self.index = index
        self.commRanks = commRanks ?? members.indices.map(Int32.init)
        self.tags = tags
        ownSlots = .allocate(byteCount: 2 * CallSlot.byteCount, alignment: 64)
        ownSlots.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * CallSlot.byteCount)
        peerSlots = .allocate(byteCount: members.count * CallSlot.byteCount, alignment: 64)
        peerSlots.initializeMemory(as: UInt8.self, repeating: 0, count: members.count * CallSlot.byteCount)
        sendBuffer = .allocate(byteCount: CallSlot.byteCount, alignment: 64)
    }

    deinit {
        ownSlots.deallocate()
        peerSlots.deallocate()
        sendBuffer.deallocate()
    }

    /// The tag of call `call`'s header.
    func tag(_ call: Int) -> Int32 { tags.lowerBound + Int32(call % tags.count) }
}

/// A group's endpoint on MPI: the peers' slots and data are made readable by receiving them.
///
/// The collectives are the same code as on the peer-memory transports. At its arrival a
/// rank sends its slot (header, and its input when it travels inline) point to point to
/// every member, and receives theirs with a deadline (so a missing rank is named at the
/// timeout, and a mismatch is found before any more data moves). If the headers agree,
/// the data that did not travel inline moves as the collective reads it: the
/// all-gathers' and all-to-all's plans become messages of packed, contiguous bytes
/// (``pullByMessages(into:plan:)``), the all-reduce's chunks an `MPI_Alltoallv` and,
/// reduced, an `MPI_Allgatherv` at `.reduced`; the root's input an `MPI_Bcast`; the
/// rest (gather, reduce-scatter) an `MPI_Allgather` of the inputs. Reductions run
/// locally in rank order, so results are bitwise those of the other transports.
///
/// In a group whose members share hosts (``MPIGroupState/sharesHosts``), the members of
/// one host read each other's data in place instead, the rest moves point to point (see
/// the extension in MPIHostPeers.swift), and the all-reduce is chained through the hosts
/// (MPIChainedAllReduce.swift); a group within one host never gets here
/// (``MPIWorldState/makeChannel(name:members:rank:)`` makes it a shared-memory channel).
final class MPIChannel: PeerMemoryChannel {
    let world: MPIWorldState
    let group: MPIGroupState

    init(world: MPIWorldState, group: MPIGroupState) {
        self.world = world
        self.group = group
    }

    var members: [Int] { group.members }
    var index: Int { group.index }
    var memberCount: Int { group.members.count }
    /// Every send waits for its header's exchange: the send buffer is reused.
    var sendsEagerly: Bool { false }
    var label: String { group.label }

    func claimCall() -> Int {
        defer { group.calls += 1 }
        return group.calls
    }

    func ownSlot(call: Int) -> CallSlot { CallSlot(group.ownSlots + (call & 1) * CallSlot.byteCount) }

    func slot(of i: Int) -> CallSlot {
        i == index ? ownSlot(call: group.calls - 1) : CallSlot(group.peerSlots + i * CallSlot.byteCount)
    }

    func input(of i: Int) -> UnsafeRawPointer {
        let slot = slot(of: i)
        if slot.isInline { return UnsafeRawPointer(slot.payload) }
        if i == index { return UnsafeRawPointer(ownBuffer(at: slot.inputAddress)) }
        return group.inputs[i]
    }

    func output(of i: Int) -> UnsafeMutableRawPointer? { group.outputs.isEmpty ? nil : group.outputs[i] }

    /// This rank's own output buffer of the call in progress.
    private var ownOutput: UnsafeMutableRawPointer? {
        let address = slot(of: index).outputAddress
        return address == CallSlot.noOutput ? nil : ownBuffer(at: address)
    }

    func publish(call: Int) { sendHeader(call: call) }

    func waitArrival(call: Int, op: CollectiveOp) throws {
        do {
            try exchangeHeaders(call: call, op: op)
        } catch let error as FVDError where error.breaksGroup {
            world.abort(error)
            throw error
        }
    }

    func exchangeData() throws {
        do {
            try exchangeInputs()
        } catch let error as FVDError where error.breaksGroup {
            world.abort(error)
            throw error
        }
    }

    /// Tells this host's members of the group that this rank reached `phase` (they may
    /// read its reduced chunk, or it has finished reading theirs); nothing without them.
    func post(_ phase: Phase, call: Int) { notifyHostPeers(phase) }

    func wait(_ phase: Phase, call: Int, op: CollectiveOp) throws {
        do {
            try awaitHostPeers(phase, call: call, op: op)
            if phase == .reduced { try exchangeReducedChunks() }
        } catch let error as FVDError where error.breaksGroup {
            world.abort(error)
            throw error
        }
    }

    func enter() -> Bool { group.busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged }
    func leave() { group.busy.store(false, ordering: .releasing) }

    func keepAlive(input: TensorStorage, output: TensorStorage?) { group.kept = [input] + (output.map { [$0] } ?? []) }

    func release() {
        group.received = []
        group.inputs = []
        group.outputs = []
        group.kept = []
    }

    func checkHealthy() throws {
        if let error = world.abortError { throw error }
    }

    func abort(_ error: FVDError) { world.abort(error) }

    /// Starts sending this rank's slot, packed, to every member (`MPI_Isend`).
    ///
    /// A failure to start a send is kept as the world's error; the wait then throws it.
    private func sendHeader(call: Int) {
        let count = ownSlot(call: call).pack(into: group.sendBuffer)
        group.sentCall = call
        group.sends = [MPI_Request?](repeating: fvd_mpi_request_null(), count: members.count)
        for j in 0..<members.count where j != index {
            do {
                try mpiCheck(
                    MPI_Isend(group.sendBuffer, Int32(count), fvd_mpi_byte(), group.commRanks[j], group.tag(call), group.comm, &group.sends[j]),
                    "MPI_Isend")
            } catch let error as FVDError {
                world.abort(error)
            } catch {}
        }
    }

    /// Receives every member's slot point to point, waiting at most the world's timeout; a
    /// member whose slot has not come by then is named in the timeout (this rank too, if
    /// its own publish never happened).
    private func exchangeHeaders(call: Int, op: CollectiveOp) throws {
        let n = members.count, size = CallSlot.byteCount
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: n * size, alignment: 16)
        defer { buffer.deallocate() }
        let sent = group.sentCall == call
        let peers = (0..<n).filter { $0 != index }
        var receives = [MPI_Request?](repeating: fvd_mpi_request_null(), count: n)
        var statuses = [MPI_Status](repeating: MPI_Status(), count: n)
        for j in peers {
            try mpiCheck(
                MPI_Irecv(buffer + j * size, Int32(size), fvd_mpi_byte(), group.commRanks[j], group.tag(call), group.comm, &receives[j]),
                "MPI_Irecv")
        }
        let start = DispatchTime.now().uptimeNanoseconds
        var pending = peers
        while !pending.isEmpty || !sent {
            try checkHealthy()
            pending = try pending.filter { j in
                var done: Int32 = 0
                try mpiCheck(MPI_Test(&receives[j], &done, &statuses[j]), "MPI_Test")
                return done == 0
            }
            if pending.isEmpty && sent { break }
            let waited = DispatchTime.now().uptimeNanoseconds &- start
            // A member still missing after a millisecond may have left its run: look for its
            // notice, which comes after every header it sent here, so its header is not in flight.
            if waited > 1_000_000, let gone = pending.first(where: { MPIWorldState.hasExited(group.commRanks[$0], on: group.comm) }) {
                var done: Int32 = 0
                try mpiCheck(MPI_Test(&receives[gone], &done, &statuses[gone]), "MPI_Test")
                if done == 0 {
                    for j in pending { MPI_Cancel(&receives[j]) }
                    throw FVDError.peerExited(rank: members[gone], op: op.name, group: label)
                }
                // Its header had come after all; its request is done now, and testing it again
                // would overwrite its status with an empty one.
                pending.removeAll { $0 == gone }
                continue
            }
            if waited >= world.timeoutNanoseconds {
                for j in pending { MPI_Cancel(&receives[j]) }
                let missing = (pending + (sent ? [] : [index])).sorted().map { members[$0] }
                throw FVDError.timeout(
                    op: op.name, group: label, call: call, arrived: members.filter { !missing.contains($0) }, missing: missing,
                    seconds: Double(world.timeoutNanoseconds) / 1e9)
            }
            if waited > 200_000 { usleep(waited > 10_000_000 ? 1000 : 20) }
        }
        try mpiCheck(MPI_Waitall(Int32(n), &group.sends, fvd_mpi_statuses_ignore()), "MPI_Waitall")
        for j in peers {
            var count: Int32 = 0
            MPI_Get_count(&statuses[j], fvd_mpi_byte(), &count)
            CallSlot(group.peerSlots + j * size).unpack(from: buffer + j * size, count: Int(count))
        }
    }

    /// Makes every member's input readable here, as the collective of the call in
    /// progress needs it, for the data that did not travel inline.
    private func exchangeInputs() throws {
        let n = members.count
        let header = slot(of: index)
        let op = header.op.name
        let mine = input(of: index)
        // Members of this host are read in place; the rest arrive below.
        group.inputs = (0..<n).map { mappedInput(of: $0) ?? mine }
        let allInline = (0..<n).allSatisfy { slot(of: $0).isInline }
        let hybrid = group.sharesHosts
        switch header.op.kind {
        case .barrier, .corrupt:
            break
        case .allGather, .allGatherInPlace, .allGatherWithUnpad, .allToAll4D, .ringPass, .haloExchange:
            break  // the pulled kinds: the collective's pullByMessages moves exactly what it reads
        case .sendRecv:
            // The sender's input, and only that, to the receiver (the link's two members).
            guard header.argumentCount > 0, case let sender = header.argument(0), (0..<n).contains(sender),
                !slot(of: sender).isInline
            else { return }
            let count = try mpiCount(try slot(of: sender).byteCount(), op)
            if sender == index {
                try mpiCheck(
                    MPI_Send(mine, count, fvd_mpi_byte(), group.commRanks[1 - index], MPIGroupState.linkDataTag, group.comm), "MPI_Send")
            } else {
                let copy = TensorStorage(uninitializedByteCount: Int(count))
                try mpiCheck(
                    MPI_Recv(copy.pointer, count, fvd_mpi_byte(), group.commRanks[sender], MPIGroupState.linkDataTag, group.comm, fvd_mpi_status_ignore()),
                    "MPI_Recv")
                group.received = [copy]
                group.inputs[sender] = UnsafeRawPointer(copy.pointer)
            }
        case .broadcast, .broadcastAny:
            // Only the root's input is read; an invalid root throws in the collective's body.
            guard header.argumentCount > 0, case let root = header.argument(0), (0..<n).contains(root), !slot(of: root).isInline
            else { return }
            let rootBytes = try slot(of: root).byteCount()
            let count = try mpiCount(rootBytes, op)
            if hybrid {
                // The root's input, to the members that cannot read it in place.
                let copy = root == index || readsInPlace(root, by: index) ? nil : TensorStorage(uninitializedByteCount: rootBytes)
                try exchangeWithRemoteMembers(
                    op: op, send: { _ in root == index ? (mine, rootBytes) : nil },
                    receive: { j in j == root ? copy.map { ($0.pointer, rootBytes) } : nil })
                if let copy {
                    group.received = [copy]
                    group.inputs[root] = UnsafeRawPointer(copy.pointer)
                }
            } else if root == index {
                try mpiCheck(MPI_Bcast(UnsafeMutableRawPointer(mutating: mine), count, fvd_mpi_byte(), Int32(root), group.comm), "MPI_Bcast")
            } else {
                let copy = TensorStorage(uninitializedByteCount: rootBytes)
                try mpiCheck(MPI_Bcast(copy.pointer, count, fvd_mpi_byte(), Int32(root), group.comm), "MPI_Bcast")
                group.received = [copy]
                group.inputs[root] = UnsafeRawPointer(copy.pointer)
            }
        case .allReduce where allInline || nativeReduction(header) != nil || chainsAllReduce(header):
            break  // reduced here from the slots, or by MPI_Allreduce or chained through the hosts in reduceByMessages
        case .allReduce:
            // Reduce-scatter by all-to-all: member j's chunk of this rank's range, and nothing
            // else, comes here; `inputs[j]` is based so that the chunk sits at its own offset.
            let es = header.dtype.byteSize
            let ranges = Layout.balancedRanges(count: header.shape.reduce(1, *), parts: n)
            let chunk = ranges[index]
            let sendCounts = try ranges.map { try mpiCount($0.count * es, op) }
            let sendOffsets = try ranges.map { try mpiCount($0.lowerBound * es, op) }
            let chunkBytes = try mpiCount(chunk.count * es, op)
            let receiveOffsets = try (0..<n).map { try mpiCount($0 * chunk.count * es, op) }
            let all = TensorStorage(uninitializedByteCount: max(1, n * chunk.count * es))
            if hybrid {
                // This rank's chunk of each remote member's input, and theirs of this rank's.
                try exchangeWithRemoteMembers(
                    op: op, send: { j in (mine + ranges[j].lowerBound * es, ranges[j].count * es) },
                    receive: { j in (all.pointer + j * chunk.count * es, chunk.count * es) })
                group.received = [all]
                for j in 0..<n where j != index && mappedInput(of: j) == nil {
                    group.inputs[j] = UnsafeRawPointer(all.pointer + j * chunk.count * es - chunk.lowerBound * es)
                }
                return
            }
            try mpiCheck(
                MPI_Alltoallv(
                    mine, sendCounts, sendOffsets, fvd_mpi_byte(), all.pointer,
                    [Int32](repeating: chunkBytes, count: n), receiveOffsets, fvd_mpi_byte(), group.comm),
                "MPI_Alltoallv")
            group.received = [all]
            group.inputs = (0..<n).map { UnsafeRawPointer(all.pointer + $0 * chunk.count * es - chunk.lowerBound * es) }
        case .gather, .reduceScatter:
            guard !allInline else { return }
            let bytes = try header.byteCount()
            let count = try mpiCount(bytes, op)
            let all = TensorStorage(uninitializedByteCount: bytes * n)
            group.received = [all]
            if hybrid {
                try exchangeWithRemoteMembers(
                    op: op, send: { _ in (mine, bytes) }, receive: { j in (all.pointer + j * bytes, bytes) })
                for j in 0..<n where j != index && mappedInput(of: j) == nil { group.inputs[j] = UnsafeRawPointer(all.pointer + j * bytes) }
                return
            }
            try mpiCheck(MPI_Allgather(mine, count, fvd_mpi_byte(), all.pointer, count, fvd_mpi_byte(), group.comm), "MPI_Allgather")
            group.inputs = (0..<n).map { UnsafeRawPointer(all.pointer + $0 * bytes) }
        }
    }

    /// The collectives whose every member pulls with ``pullFromEveryMember(_:into:totalBytes:plan:)``
    /// (not `gather`: only its root pulls).
    static let pulledKinds: Set<CollectiveKind> = [.allGather, .allGatherInPlace, .allGatherWithUnpad, .allToAll4D, .ringPass, .haloExchange]

    /// Moves every member's blocks by messages of contiguous bytes: MPI's own
    /// `MPI_Allgather` when every plan is one contiguous block and block j lands at j × its
    /// size; else point-to-point messages (``exchangePacked(from:into:plan:)``). Nothing
    /// when every member's input travelled inline (the collective copies from the
    /// received slots).
    func pullByMessages(into destination: UnsafeMutableRawPointer, plan: (Int, Int) -> StridedCopy) throws -> Bool {
        let n = members.count, op = slot(of: index).op
        guard Self.pulledKinds.contains(op.kind), (0..<n).contains(where: { !slot(of: $0).isInline }) else { return false }
        let mine = input(of: index)
        // Every member sends the same contiguous block and block j lands at j × its size:
        // that is MPI's own all-gather (for a gather along the outermost dimension).
        let block = plan(index, index)
        if !group.sharesHosts, block.totalBytes == block.runBytes,
            (0..<n).allSatisfy({ k in
                let out = plan(index, k), into = plan(k, index)
                return out.srcOffset == block.srcOffset && out.totalBytes == block.totalBytes
                    && into.totalBytes == into.runBytes && into.totalBytes == block.totalBytes
                    && into.dstOffset == k * block.totalBytes
            })
        {
            let count = try mpiCount(block.totalBytes, op.name)
            try mpiCheck(
                MPI_Allgather(mine + block.srcOffset, count, fvd_mpi_byte(), destination, count, fvd_mpi_byte(), group.comm),
                "MPI_Allgather")
            return true
        }
        try exchangePacked(from: mine, into: destination, plan: plan)
        return true
    }

    /// Packed messages travel in chunks of this many bytes, so that packing the next chunk
    /// overlaps sending the last one, and unpacking one overlaps receiving the next.
    static let chunkBytes = 1 << 20
    /// The tag of a collective's data messages (``exchangePacked(from:into:plan:)``).
    static let collectiveDataTag: Int32 = 32_002

    /// Sends `plan(this rank, k)` to every member k and receives `plan(k, this rank)` from
    /// each, as messages of contiguous bytes in ``chunkBytes`` chunks: never a strided MPI
    /// datatype, which Open MPI packs and unpacks itself, slowly.
    ///
    /// Every receive is posted first: straight into the output where the block is
    /// contiguous there (the all-to-all (2,1) with B = 1, any all-gather along the
    /// outermost dimension), else into staging. Then each block is sent straight from the
    /// input when contiguous there, else packed chunk by chunk with the library's copy,
    /// each chunk sent as soon as it is packed; this rank's own block is copied while the
    /// sends travel (with a call into MPI after each chunk, which is when MPI moves them),
    /// and staged blocks are unpacked chunk by chunk as they arrive. Both
    /// ends walk the same plan, so the packed order needs no description on the wire;
    /// MPI's non-overtaking order matches the chunks of one sender in order.
    private func exchangePacked(
        from mine: UnsafeRawPointer, into destination: UnsafeMutableRawPointer, plan: (Int, Int) -> StridedCopy
    ) throws {
        let n = members.count, chunk = Self.chunkBytes, op = slot(of: index).op.name
        func ranges(_ total: Int) -> [Range<Int>] { stride(from: 0, to: total, by: chunk).map { $0..<min(total, $0 + chunk) } }
        var receives: [MPI_Request?] = [], sends: [MPI_Request?] = []
        var incoming: [(plan: StridedCopy, staging: TensorStorage?, first: Int)] = []
        var staged: [TensorStorage] = []  // the packed sends, alive until they completed
        defer {
            Self.settle(receives: &receives, sends: &sends)
            _ = staged
        }
        for k in 1..<n {
            let j = (index - k + n) % n
            let block = plan(j, index)
            guard block.totalBytes > 0, !readsInPlace(j, by: index) else { continue }
            let staging = block.isContiguous(atSource: false) ? nil : TensorStorage(uninitializedByteCount: block.totalBytes)
            let base = staging?.pointer ?? destination + block.dstOffset
            incoming.append((block, staging, receives.count))
            for range in ranges(block.totalBytes) {
                try postData(&receives, to: j, base + range.lowerBound, bytes: range.count, send: false, op: op)
            }
        }
        // MPI moves a posted message only inside MPI calls: one between chunks keeps the sends
        // flowing while this rank packs or copies.
        func progress() {
            var done: Int32 = 0
            if !sends.isEmpty { MPI_Testall(Int32(sends.count), &sends, &done, fvd_mpi_statuses_ignore()) }
        }
        for k in 1..<n {
            let j = (index + k) % n
            let block = plan(index, j)
            guard block.totalBytes > 0, !readsInPlace(index, by: j) else { continue }
            let staging = block.isContiguous(atSource: true) ? nil : TensorStorage(uninitializedByteCount: block.totalBytes)
            if let staging { staged.append(staging) }
            for range in ranges(block.totalBytes) {
                let start: UnsafeRawPointer
                if let staging {
                    block.forEachPiece(inPacked: range) { packed, source, _, bytes in
                        fvd_copy(staging.pointer + packed, mine + source, bytes, 0)
                    }
                    start = UnsafeRawPointer(staging.pointer + range.lowerBound)
                } else {
                    start = mine + block.srcOffset + range.lowerBound
                }
                try postData(&sends, to: j, UnsafeMutableRawPointer(mutating: start), bytes: range.count, send: true, op: op)
                progress()
            }
        }
        let own = plan(index, index)
        for range in ranges(own.totalBytes) {
            own.forEachPiece(inPacked: range) { _, source, target, bytes in fvd_copy(destination + target, mine + source, bytes, 0) }
            progress()
        }
        // Members of this host: copied from their inputs in place while the messages travel.
        for k in 1..<n {
            let j = (index + k) % n
            if let peer = mappedInput(of: j) { execute(plan(j, index), from: peer, to: destination, streaming: false, beatingOn: self) }
        }
        for (block, staging, first) in incoming {
            for (m, range) in ranges(block.totalBytes).enumerated() {
                try mpiCheck(MPI_Wait(&receives[first + m], fvd_mpi_status_ignore()), "MPI_Wait")
                guard let staging else { continue }
                block.forEachPiece(inPacked: range) { packed, _, target, bytes in
                    fvd_copy(destination + target, staging.pointer + packed, bytes, 0)
                }
            }
        }
        try mpiCheck(MPI_Waitall(Int32(sends.count), &sends, fvd_mpi_statuses_ignore()), "MPI_Waitall")
    }

    /// MPI's op and datatype for the all-reduce `header` when the user chose MPI's own
    /// all-reduce and MPI has both (not for 16-bit floats, bool or `average`).
    private func nativeReduction(_ header: CallSlot) -> (MPI_Op?, MPI_Datatype?)? {
        guard world.nativeAllReduce, header.op.kind == .allReduce, header.argumentCount > 0,
            case let code = header.argument(0), ReduceOp.allCases.indices.contains(code)
        else { return nil }
        let op: MPI_Op?
        switch ReduceOp.allCases[code] {
        case .sum: op = fvd_mpi_sum()
        case .product: op = fvd_mpi_prod()
        case .max: op = fvd_mpi_max()
        case .min: op = fvd_mpi_min()
        case .average: return nil
        }
        let type: MPI_Datatype?
        switch header.dtype {
        case .float32: type = fvd_mpi_float()
        case .float64: type = fvd_mpi_double()
        case .int8: type = fvd_mpi_int8()
        case .int16: type = fvd_mpi_int16()
        case .int32: type = fvd_mpi_int32()
        case .int64: type = fvd_mpi_int64()
        case .uint8: type = fvd_mpi_uint8()
        case .float16, .bfloat16, .bool: return nil
        }
        return (op, type)
    }

    func reduceByMessages(
        _ op: ReduceOp, dtype: DType, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
    ) throws -> Bool {
        guard let (mpiOp, type) = nativeReduction(slot(of: index)) else {
            guard chainsAllReduce(slot(of: index)) else { return false }
            try chainedAllReduce(op, dtype: dtype, output: output, count: count)
            return true
        }
        let n = try mpiCount(count, "all_reduce")
        let source = UnsafeRawPointer(output) == input ? UnsafeRawPointer(fvd_mpi_in_place()) : input
        try mpiCheck(MPI_Allreduce(source, output, n, type, mpiOp, group.comm), "MPI_Allreduce")
        return true
    }

    /// The all-reduce's second step: every member's reduced chunk, where its output would be.
    private func exchangeReducedChunks() throws {
        let header = slot(of: index)
        let es = header.dtype.byteSize
        let ranges = Layout.balancedRanges(count: header.shape.reduce(1, *), parts: members.count)
        let counts = try ranges.map { try mpiCount($0.count * es, header.op.name) }
        let offsets = try ranges.map { try mpiCount($0.lowerBound * es, header.op.name) }
        let all = TensorStorage(uninitializedByteCount: max(1, ranges.last!.upperBound * es))
        let mine = ownOutput! + Int(offsets[index])
        if group.sharesHosts {
            // Reduced chunks of this host's members are read from their outputs in place.
            try exchangeWithRemoteMembers(
                op: header.op.name, send: { _ in (UnsafeRawPointer(mine), Int(counts[self.index])) },
                receive: { j in self.mappedOutput(of: j) == nil ? (all.pointer + Int(offsets[j]), Int(counts[j])) : nil })
            group.received.append(all)
            group.outputs = (0..<members.count).map { mappedOutput(of: $0) ?? all.pointer }
            return
        }
        try mpiCheck(
            MPI_Allgatherv(mine, counts[index], fvd_mpi_byte(), all.pointer, counts, offsets, fvd_mpi_byte(), group.comm),
            "MPI_Allgatherv")
        group.received.append(all)
        group.outputs = Array(repeating: all.pointer, count: members.count)
    }
}
#endif
