#if MPI
import CFVDShims
import CMPI
import Foundation

/// The ranks of an MPI job that run on this host, joined by a shared-memory segment as
/// `fvd launch` ranks are: their groups use the shared-memory transport, and only bytes
/// between hosts travel as MPI messages.
///
/// Found with `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`, so it works under any MPI
/// launcher. World rank 0 draws the job's name and broadcasts it; the host's ranks then
/// create or attach the POSIX shared-memory object `/fvd-mpi-<job>-h<lowest world rank
/// of the host>` (mode 0600) and agree, with one `MPI_Allreduce` on the host, that every
/// one of them attached. The last to attach unlinks the name, so nothing is left in
/// `/dev/shm` whatever happens to the processes afterwards; when one fails to attach,
/// every rank of the host throws its error and the name is unlinked. From then on, this
/// process's tensors are allocated in its heap of the segment, where its host's peers
/// read them in place.
///
/// `FVD_MPI_SHARED_MEMORY=0` turns the split off: every group then sends MPI messages,
/// as between hosts. `FVD_MPI_RANKS_PER_HOST=N` splits the world into blocks of N ranks
/// instead of by host, to test groups that span hosts on one machine.
final class MPIHost: Sendable {
    /// The world ranks on this host, ascending; a rank's index is its rank in the segment.
    let ranks: [Int]
    /// The host's shared-memory world, which makes the channels of groups within the host.
    let shared: SharedMemoryWorldState
    private let rankSet: Set<Int>

    private init(ranks: [Int], shared: SharedMemoryWorldState) {
        self.ranks = ranks
        self.shared = shared
        rankSet = Set(ranks)
    }

    /// Whether every one of the world ranks `members` runs on this host.
    func holds(_ members: [Int]) -> Bool { members.allSatisfy(rankSet.contains) }

    /// Whether world rank `rank` runs on this host.
    func contains(_ rank: Int) -> Bool { rankSet.contains(rank) }

    /// Whether the environment turned the host split off (`FVD_MPI_SHARED_MEMORY=0`).
    static var isDisabled: Bool { ProcessInfo.processInfo.environment["FVD_MPI_SHARED_MEMORY"] == "0" }

    /// `FVD_MPI_RANKS_PER_HOST=N`: each block of N consecutive world ranks counts as one
    /// host, whatever the machine; for testing groups that span hosts on one machine.
    private static func ranksPerSimulatedHost() throws -> Int? {
        guard let text = ProcessInfo.processInfo.environment["FVD_MPI_RANKS_PER_HOST"] else { return nil }
        guard let n = Int(text), n >= 1 else {
            throw FVDError.invalidArgument("FVD_MPI_RANKS_PER_HOST=\(text) is not a positive integer")
        }
        return n
    }

    /// Joins this host's ranks; collective over the world communicator (every rank calls it).
    /// - Returns: this host (`nil` when this rank is alone on it or the split is turned
    ///   off), and the host of every world rank, as the lowest world rank on that host
    ///   (every rank its own when the split is off).
    /// - Throws: the error of a rank of this host that could not create or map the segment
    ///   (on every rank of the host), or an MPI failure.
    static func join(worldRank: Int, worldSize: Int, timeout: Double, recorder: FlightRecorder) throws
        -> (host: MPIHost?, hostOf: [Int])
    {
        if isDisabled { return (nil, Array(0..<worldSize)) }
        let world = fvd_mpi_comm_world()
        // The job's name: rank 0's pid and 64 random bits, the same on every rank.
        var token = [UInt8](repeating: 0, count: 32)
        if worldRank == 0 {
            let text = Array(String(format: "%d-%016llx", getpid(), UInt64.random(in: 0...UInt64.max)).utf8.prefix(31))
            token.replaceSubrange(0..<text.count, with: text)
        }
        try mpiCheck(MPI_Bcast(&token, Int32(token.count), fvd_mpi_byte(), 0, world), "MPI_Bcast")
        let job = String(decoding: token.prefix { $0 != 0 }, as: UTF8.self)

        var local: MPI_Comm?
        if let perHost = try ranksPerSimulatedHost() {
            try mpiCheck(MPI_Comm_split(world, Int32(worldRank / perHost), Int32(worldRank), &local), "MPI_Comm_split")
        } else {
            try mpiCheck(
                MPI_Comm_split_type(world, fvd_mpi_comm_type_shared(), Int32(worldRank), fvd_mpi_info_null(), &local),
                "MPI_Comm_split_type")
        }
        defer { MPI_Comm_free(&local) }
        try mpiCheck(MPI_Comm_set_errhandler(local, fvd_mpi_errors_return()), "MPI_Comm_set_errhandler")
        var localSize: Int32 = 0, localRank: Int32 = 0
        try mpiCheck(MPI_Comm_size(local, &localSize), "MPI_Comm_size")
        try mpiCheck(MPI_Comm_rank(local, &localRank), "MPI_Comm_rank")
        var mine = Int32(worldRank)
        var all = [Int32](repeating: 0, count: Int(localSize))
        try mpiCheck(MPI_Allgather(&mine, 1, fvd_mpi_int(), &all, 1, fvd_mpi_int(), local), "MPI_Allgather")
        let ranks = all.map(Int.init)  // ascending: the split's key is the world rank
        var leader = all[0]
        var leaders = [Int32](repeating: 0, count: worldSize)
        try mpiCheck(MPI_Allgather(&leader, 1, fvd_mpi_int(), &leaders, 1, fvd_mpi_int(), world), "MPI_Allgather")
        let hostOf = leaders.map(Int.init)
        guard localSize > 1 else { return (nil, hostOf) }

        let name = "/fvd-mpi-\(job)-h\(ranks[0])"
        var segment: SharedSegment?
        var failure: (any Error)?
        do { segment = try SharedSegment(name: name, worldSize: ranks.count, rank: Int(localRank)) } catch { failure = error }
        var attached: Int32 = segment == nil ? 0 : 1, everyone: Int32 = 0
        try mpiCheck(MPI_Allreduce(&attached, &everyone, 1, fvd_mpi_int(), fvd_mpi_land(), local), "MPI_Allreduce")
        guard everyone != 0, let segment else {
            _ = fvd_shm_unlink(name)
            if let failure { throw failure }
            throw FVDError.transportFailure(
                transport: "MPI",
                message: "another rank of this host (world ranks \(ranks.map(String.init).joined(separator: ", "))) could not "
                    + "map the host's shared memory \(name); it names the cause. FVD_MPI_SHARED_MEMORY=0 sends MPI messages instead")
        }
        let shared = SharedMemoryWorldState(segment: segment, timeout: timeout, worldRanks: ranks, recorder: recorder)
        segment.activateHeap()
        if Diagnostics.logs(.debug) {
            Diagnostics.log(
                .debug, rank: worldRank,
                "MPI: world ranks \(ranks.map(String.init).joined(separator: ", ")) share this host through shared memory \(name)")
        }
        return (MPIHost(ranks: ranks, shared: shared), hostOf)
    }
}
#endif
