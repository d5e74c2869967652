import CFVDShims
import Foundation

/// This process's rank of a world of processes, as started by `fvd launch` (or any
/// launcher that sets torchrun's variables): see ``World/fromEnvironment(timeout:faults:)-(Double?,_)``.
public struct ProcessWorld: Sendable {
    /// This process's rank (`RANK`).
    public let rank: Int
    /// Number of ranks (`WORLD_SIZE`).
    public let size: Int
    /// The group of every rank; build a ``ParallelState`` over it.
    public let group: GroupCoordinator
    /// ``WorldTransport/sharedMemory`` or ``WorldTransport/mpi`` for a multi-process
    /// world, ``WorldTransport/singleProcess`` for a world of one.
    public let transport: WorldTransport
    /// Tells the peers that `body` of ``run(_:)-3vhwb`` threw this error.
    let failureHook: (@Sendable (any Error) -> Void)?
    /// Tells the peers that this process is exiting.
    let exitHook: (@Sendable () -> Void)?

    /// Runs `body` with the world group and returns its result, the only element of the
    /// array (this process runs one rank; the shape is ``DistributedWorld``'s, so that one
    /// program runs on every world).
    ///
    /// If `body` throws, the peers are told at once, so they do not wait for this rank:
    /// - shared memory: the failure is recorded in the segment, so every other rank's
    ///   current or next collective throws ``FVDError/peerFailed(rank:message:)``
    ///   (unless the error is itself another rank's failure or exit, which the peers
    ///   detect on their own, so the root cause is what they report);
    /// - MPI: the error is recorded in the host's segment for the ranks of this host, as
    ///   above, printed to standard error (`error: …`), and the job is ended with
    ///   `MPI_Abort`, MPI's only way to stop ranks blocked in a collective.
    @discardableResult
    public func run<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) throws -> R) throws -> [R] {
        do {
            return [try body(group)]
        } catch {
            failureHook?(error)
            throw error
        }
    }

    /// Runs the asynchronous `body` with the world group: ``run(_:)-5ydcj`` for Swift
    /// concurrency (use the collectives' `async` overloads inside). A thrown error tells
    /// the peers as there.
    @discardableResult
    public func run<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) async throws -> R) async throws -> [R] {
        do {
            return [try await body(group)]
        } catch {
            failureHook?(error)
            throw error
        }
    }
}

/// The shared-memory world of this process, for the exit hook.
private let processWorldState = Locked<(world: ProcessWorld?, exitHookInstalled: Bool)>((nil, false))

extension World {
    /// This process's rank of the world described by the environment, like FastVideo's
    /// `init_distributed_environment`.
    ///
    /// Reads `RANK` and `WORLD_SIZE` (defaults 0 and 1). With more than one rank, the
    /// ranks are processes on this host joined by a POSIX shared-memory segment named by
    /// `FVD_SHM_NAME` (set by `fvd launch`; else derived from `MASTER_PORT`), created
    /// mode 0600 by the first rank to arrive and unlinked by the last, so nothing is
    /// left in `/dev/shm` once all ranks attached (`fvd launch` also removes it when a
    /// rank dies before). From this call on, tensors of this process are allocated in
    /// its part of the segment, so peers read them in place: every collective copies
    /// each byte once, as in-process. A tensor created before is staged there once per
    /// collective. A rank that exits makes its peers' collectives throw
    /// ``FVDError/peerExited(rank:op:group:)`` within milliseconds (exit flag or process
    /// liveness); one that fails inside ``ProcessWorld/run(_:)-5ydcj`` makes them throw
    /// ``FVDError/peerFailed(rank:message:)``.
    ///
    /// In a build with the package trait `MPI`, a process started by `mpirun` joins the MPI
    /// job instead (`OMPI_COMM_WORLD_SIZE` or `PMI_SIZE` set, or `FVD_TRANSPORT=mpi`); its
    /// ranks of one host share a segment the same way, and only bytes between hosts travel as
    /// MPI messages (see <doc:Backends>).
    ///
    /// The shared-memory transport joins ranks of this host only: a `MASTER_ADDR` that is
    /// not this host (loopback, `localhost`, its name or an address of its interfaces) is
    /// an error, not a wait for ranks that never come; use `mpirun` and the MPI transport
    /// across hosts. A `MASTER_PORT` that names the segment must be a port number.
    ///
    /// - Parameters:
    ///   - timeout: seconds a collective waits for ranks that have not arrived;
    ///     default `FVD_TIMEOUT` or 300.
    ///   - faults: failures to inject (see ``Fault``); default those in `FVD_FAULTS`, or none.
    /// - Returns: the same world on every call in this process.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for malformed variables or a segment
    ///   that belongs to another job; ``FVDError/file(path:problem:)`` when the segment
    ///   cannot be created or mapped.
    public static func fromEnvironment(timeout: Double? = nil, faults: [Fault]? = nil) throws -> ProcessWorld {
        let env = ProcessInfo.processInfo.environment
        #if MPI
        if World.launchedByMPI(env) { return try fromMPI(timeout: timeout, faults: faults) }
        #endif
        func integer(_ key: String, default value: Int) throws -> Int {
            guard let text = env[key] else { return value }
            guard let v = Int(text) else { throw FVDError.invalidArgument("\(key)=\(text) is not an integer") }
            return v
        }
        let size = try integer("WORLD_SIZE", default: 1)
        if size > 1, env["RANK"] == nil {
            throw FVDError.invalidArgument("WORLD_SIZE=\(size) is set but RANK is not: set RANK (0...\(size - 1)) for every rank, or start them with fvd launch")
        }
        let rank = try integer("RANK", default: 0)
        guard size >= 1, size <= maximumInProcessRanks, (0..<size).contains(rank) else {
            throw FVDError.invalidArgument("RANK=\(rank) and WORLD_SIZE=\(size) do not describe a rank of a world of 1...1024 ranks")
        }
        let seconds = try World.resolvedTimeout(timeout)
        let faults = try World.resolvedFaults(faults, worldSize: size)
        return try processWorldState.withLock { state in
            if let world = state.world {
                guard world.rank == rank, world.size == size else {
                    throw FVDError.invalidArgument("this process is already rank \(world.rank) of a world of \(world.size)")
                }
                return world
            }
            let world: ProcessWorld
            if size == 1 {
                let state = InProcessWorldState(size: 1, timeout: seconds)
                let factory: any ChannelFactory =
                    faults.isEmpty ? state : FaultInjectingFactory(wrapping: state, faults: faults, ranksAreProcesses: true)
                world = ProcessWorld(
                    rank: 0, size: 1, group: try GroupCoordinator(name: "world", ranks: [0], rank: 0, factory: factory),
                    transport: .singleProcess, failureHook: nil, exitHook: nil)
            } else {
                try World.checkRendezvous(env)
                let name = env["FVD_SHM_NAME"] ?? "/fvd-port-\(env["MASTER_PORT"] ?? "29500")"
                guard name.hasPrefix("/"), name.dropFirst().allSatisfy({ $0 != "/" }), name.count < 200 else {
                    throw FVDError.invalidArgument("FVD_SHM_NAME=\(name) must be '/' followed by a name without '/'")
                }
                if let local = env["LOCAL_WORLD_SIZE"], local != String(size) {
                    throw FVDError.invalidArgument(
                        "LOCAL_WORLD_SIZE=\(local) but WORLD_SIZE=\(size): the shared-memory transport joins ranks on one host only")
                }
                let segment = try SharedSegment(name: name, worldSize: size, rank: rank)
                let shared = SharedMemoryWorldState(segment: segment, timeout: seconds)
                // From here on, a launcher killed with SIGKILL takes this rank with it.
                try LauncherWatch.start(environment: env, rank: rank) {
                    shared.abort(.peerFailed(rank: rank, message: "its launcher died"), tellPeers: true)
                    _ = fvd_shm_unlink(name)
                }
                let group: GroupCoordinator
                do {
                    try segment.waitForEveryRank(seconds: try SharedSegment.joinTimeout(collectiveTimeout: seconds))
                    let factory: any ChannelFactory =
                        faults.isEmpty ? shared : FaultInjectingFactory(wrapping: shared, faults: faults, ranksAreProcesses: true)
                    group = try GroupCoordinator(name: "world", ranks: Array(0..<size), rank: rank, factory: factory)
                } catch let error as FVDError {
                    shared.abort(.peerFailed(rank: rank, message: error.description), tellPeers: true)
                    // The job failed before it began: nothing of it may block the next job on this name.
                    _ = fvd_shm_unlink(name)
                    throw error
                }
                segment.activateHeap()
                world = ProcessWorld(
                    rank: rank, size: size, group: group, transport: .sharedMemory,
                    failureHook: { error in
                        switch error as? FVDError {
                        case .peerFailed?, .peerExited?:
                            break  // a consequence of another rank's failure, which its peers see themselves
                        default:
                            shared.abort(.peerFailed(rank: rank, message: String(describing: error)), tellPeers: true)
                        }
                    },
                    exitHook: { shared.markExited() })
            }
            installExitHook(&state, world)
            return world
        }
    }

    /// Records `world` as this process's and calls its exit hook at process exit.
    private static func installExitHook(
        _ state: inout (world: ProcessWorld?, exitHookInstalled: Bool), _ world: ProcessWorld
    ) {
        state.world = world
        if world.exitHook != nil, !state.exitHookInstalled {
            state.exitHookInstalled = true
            atexit { runProcessWorldExitHook() }
        }
    }
}

/// At process exit: tell the peers this rank is gone, so their waits end at once.
private func runProcessWorldExitHook() {
    let hook = processWorldState.withLock { $0.world?.exitHook }
    hook?()
}

#if MPI
extension World {
    /// Whether this build has the MPI transport (the package trait `MPI`).
    public static let isMPIAvailable = true

    /// This process's rank of the job `mpirun` started: see ``fromEnvironment(timeout:faults:)-(Double?,_)``.
    static func fromMPI(timeout: Double?, faults: [Fault]?) throws -> ProcessWorld {
        let seconds = try resolvedTimeout(timeout)
        return try processWorldState.withLock { state in
            if let world = state.world { return world }
            let mpi = try MPIWorldState(timeout: seconds)
            let faults = try resolvedFaults(faults, worldSize: mpi.size)
            let factory: any ChannelFactory =
                faults.isEmpty ? mpi : FaultInjectingFactory(wrapping: mpi, faults: faults, ranksAreProcesses: true)
            let group = try GroupCoordinator(name: "world", ranks: Array(0..<mpi.size), rank: mpi.rank, factory: factory)
            let world = ProcessWorld(
                rank: mpi.rank, size: mpi.size, group: group, transport: .mpi,
                failureHook: { error in
                    mpi.recordFailure(error)
                    StandardStreams.writeError("error: \(error)\n")
                    mpi.finish(failed: !((error as? FVDError)?.isPeerExit ?? false))
                },
                exitHook: { mpi.finish(failed: false) })
            installExitHook(&state, world)
            return world
        }
    }
}
#else
extension World {
    /// Whether this build has the MPI transport (the package trait `MPI`).
    public static let isMPIAvailable = false
}
#endif
