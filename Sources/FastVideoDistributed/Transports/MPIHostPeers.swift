#if MPI
import CMPI
import Dispatch
import Foundation

/// A group that spans hosts, seen from one rank whose host holds other members too: those
/// read each other's buffers in the host's shared memory (``MPIHost``), as on the
/// shared-memory transport, and only bytes between hosts travel as MPI messages.
///
/// A buffer in the host's segment is published as its offset in the segment with
/// ``segmentBit`` set (the segment is mapped at a different address in each process); any
/// other buffer as its address, which only its own process can use. Member `s`'s input is
/// read in place by member `d` when both run on this host and it lies in the segment: both
/// ends decide that from the exchanged headers alone, so neither sends what the other
/// reads. Readers and owners of this host then meet at the call's phases with zero-byte
/// notices (``notifyHostPeers(_:)``, ``awaitHostPeers(_:call:op:)``): after `.reduced` a
/// peer's reduced chunk may be read, after `.done` its buffers are its own again.
extension MPIChannel {
    /// Marks a published address as an offset in the host's segment; user-space addresses
    /// stay below 2^47, and ``CallSlot/noOutput`` is checked first.
    static let segmentBit: UInt64 = 1 << 62
    /// The tags of the phase notices, beyond every call header's and data message's.
    static let reducedNoticeTag: Int32 = 32_003
    static let doneNoticeTag: Int32 = 32_004

    private var segment: SharedSegment? { world.host?.shared.segment }

    func address(of pointer: UnsafeRawPointer) -> UInt64 {
        if let segment, pointer >= UnsafeRawPointer(segment.base), pointer < UnsafeRawPointer(segment.base + segment.byteCount) {
            return UInt64(pointer - UnsafeRawPointer(segment.base)) | Self.segmentBit
        }
        return UInt64(UInt(bitPattern: pointer))
    }

    /// This rank's own buffer at a published address.
    func ownBuffer(at address: UInt64) -> UnsafeMutableRawPointer {
        if address & Self.segmentBit != 0, let segment { return segment.base + Int(address & ~Self.segmentBit) }
        return UnsafeMutableRawPointer(bitPattern: UInt(address))!
    }

    /// Member `i`'s buffer at a published address, where this rank can read it in place.
    private func mapped(_ address: UInt64, of i: Int) -> UnsafeMutableRawPointer? {
        guard group.sameHost[i], address != CallSlot.noOutput, address & Self.segmentBit != 0, let segment else { return nil }
        return segment.base + Int(address & ~Self.segmentBit)
    }

    /// Whether member `destination` reads member `source`'s input of the call in progress in
    /// place (one of them is this rank).
    func readsInPlace(_ source: Int, by destination: Int) -> Bool {
        let slot = slot(of: source)
        return source != destination && group.sameHost[source] && group.sameHost[destination] && !slot.isInline
            && slot.inputAddress & Self.segmentBit != 0
    }

    /// Member `i`'s input, when this rank reads it in place.
    func mappedInput(of i: Int) -> UnsafeRawPointer? {
        readsInPlace(i, by: index) ? mapped(slot(of: i).inputAddress, of: i).map(UnsafeRawPointer.init) : nil
    }

    /// Member `i`'s output (the all-reduce's), when this rank can read it in place.
    func mappedOutput(of i: Int) -> UnsafeMutableRawPointer? { mapped(slot(of: i).outputAddress, of: i) }

    private static func noticeTag(_ phase: Phase) -> Int32 { phase == .reduced ? reducedNoticeTag : doneNoticeTag }

    /// Sends a zero-byte notice of `phase` to each member of this host.
    func notifyHostPeers(_ phase: Phase) {
        for j in group.hostPeers {
            var request = fvd_mpi_request_null()
            if MPI_Isend(group.sendBuffer, 0, fvd_mpi_byte(), group.commRanks[j], Self.noticeTag(phase), group.comm, &request)
                == fvd_mpi_success()
            {
                MPI_Request_free(&request)
            }
        }
    }

    /// Waits for every member of this host to post `phase`, for as long as the world's
    /// timeout; a member whose process is gone is named within half a second (its notice
    /// may still be on its way).
    /// - Throws: the world's abort error, ``FVDError/peerExited(rank:op:group:)``, or
    ///   ``FVDError/stalled(op:group:call:phase:ranks:seconds:)``.
    func awaitHostPeers(_ phase: Phase, call: Int, op: CollectiveOp) throws {
        let peers = group.hostPeers
        guard !peers.isEmpty, let host = world.host else { return }
        var receives = [MPI_Request?](repeating: fvd_mpi_request_null(), count: peers.count)
        for (k, j) in peers.enumerated() {
            try mpiCheck(
                MPI_Irecv(group.sendBuffer, 0, fvd_mpi_byte(), group.commRanks[j], Self.noticeTag(phase), group.comm, &receives[k]),
                "MPI_Irecv")
        }
        var pending = Array(peers.indices)
        func cancelPending() {
            for k in pending {
                MPI_Cancel(&receives[k])
                MPI_Wait(&receives[k], fvd_mpi_status_ignore())
            }
        }
        let start = DispatchTime.now().uptimeNanoseconds
        var goneSince: UInt64 = 0
        while true {
            pending = try pending.filter { k in
                var done: Int32 = 0
                try mpiCheck(MPI_Test(&receives[k], &done, fvd_mpi_status_ignore()), "MPI_Test")
                return done == 0
            }
            if pending.isEmpty { return }
            if let error = world.abortError {
                cancelPending()
                throw error
            }
            let missing = pending.map { members[peers[$0]] }
            let now = DispatchTime.now().uptimeNanoseconds
            // A member that posted and then left: its notice is on its way (MPI delivers a
            // finished rank's messages), so it is named only if none comes within 0.5 s.
            if let gone = host.shared.goneRanks(among: missing).first {
                if goneSince == 0 { goneSince = now }
                if now &- goneSince > 500_000_000 {
                    cancelPending()
                    throw FVDError.peerExited(rank: gone, op: op.name, group: label)
                }
            }
            let waited = now &- start
            if waited >= world.timeoutNanoseconds {
                cancelPending()
                throw FVDError.stalled(
                    op: op.name, group: label, call: call, phase: phase.activity, ranks: missing,
                    seconds: Double(world.timeoutNanoseconds) / 1e9)
            }
            if waited > 200_000 { usleep(waited > 10_000_000 ? 1000 : 20) }
        }
    }

    /// Ends the requests of an exchange that may have stopped early (an error): cancels the
    /// receives still pending, which may wait for a message that never comes, and waits for
    /// every request, so that none outlives the buffer it reads or writes.
    static func settle(receives: inout [MPI_Request?], sends: inout [MPI_Request?]) {
        for i in receives.indices where receives[i] != fvd_mpi_request_null() { MPI_Cancel(&receives[i]) }
        MPI_Waitall(Int32(receives.count), &receives, fvd_mpi_statuses_ignore())
        MPI_Waitall(Int32(sends.count), &sends, fvd_mpi_statuses_ignore())
    }

    /// Posts a send of `bytes` at `buffer` to member `j` (or a receive from it into `buffer`)
    /// with the data tag, and appends its request to `requests`.
    func postData(
        _ requests: inout [MPI_Request?], to j: Int, _ buffer: UnsafeMutableRawPointer, bytes: Int, send: Bool, op: String
    ) throws {
        let count = try mpiCount(bytes, op)
        requests.append(fvd_mpi_request_null())
        if send {
            try mpiCheck(
                MPI_Isend(buffer, count, fvd_mpi_byte(), group.commRanks[j], Self.collectiveDataTag, group.comm, &requests[requests.count - 1]),
                "MPI_Isend")
        } else {
            try mpiCheck(
                MPI_Irecv(buffer, count, fvd_mpi_byte(), group.commRanks[j], Self.collectiveDataTag, group.comm, &requests[requests.count - 1]),
                "MPI_Irecv")
        }
    }

    /// Exchanges blocks point to point with the members that do not share this rank's
    /// memory: `send(j)` (bytes at a pointer) to each member j that does not read this
    /// rank's input in place, and `receive(j)` (into a buffer) from each member j whose
    /// input this rank does not read in place; either may be nil for none.
    func exchangeWithRemoteMembers(
        op: String, send: (Int) -> (UnsafeRawPointer, Int)?, receive: (Int) -> (UnsafeMutableRawPointer, Int)?
    ) throws {
        var receives: [MPI_Request?] = [], sends: [MPI_Request?] = []
        defer { Self.settle(receives: &receives, sends: &sends) }
        for j in members.indices where j != index && !readsInPlace(j, by: index) {
            guard let (buffer, bytes) = receive(j), bytes > 0 else { continue }
            try postData(&receives, to: j, buffer, bytes: bytes, send: false, op: op)
        }
        for j in members.indices where j != index && !readsInPlace(index, by: j) {
            guard let (buffer, bytes) = send(j), bytes > 0 else { continue }
            try postData(&sends, to: j, UnsafeMutableRawPointer(mutating: buffer), bytes: bytes, send: true, op: op)
        }
        try mpiCheck(MPI_Waitall(Int32(receives.count), &receives, fvd_mpi_statuses_ignore()), "MPI_Waitall")
        try mpiCheck(MPI_Waitall(Int32(sends.count), &sends, fvd_mpi_statuses_ignore()), "MPI_Waitall")
    }
}
#endif
