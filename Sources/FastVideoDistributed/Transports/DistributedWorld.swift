import Foundation

/// How the ranks of a world talk to each other.
public enum WorldTransport: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Ranks are threads (or tasks) of one process: ``World/inProcess(size:timeout:faults:)-(_,Double?,_)``.
    case inProcess = "in-process"
    /// One process per rank on one host, joined by a POSIX shared-memory segment:
    /// `fvd launch`, or torchrun-style `RANK` and `WORLD_SIZE`.
    case sharedMemory = "shared memory"
    /// Ranks started by `mpirun` in a build with the package trait `MPI`; ranks of one host
    /// share memory as above.
    case mpi = "MPI"
    /// A launched process that is the whole world (`WORLD_SIZE=1`).
    case singleProcess = "single process"

    public var description: String { rawValue }
}

/// A world of ranks, however they were started: the ranks of ``InProcessWorld`` (threads or
/// tasks of this process) or this process's rank of a launched job (``ProcessWorld``).
///
/// Write the program once against it; ``World/start(defaultSize:timeout:faults:)-(_,Double?,_)`` gives
/// the launcher's world when there is one and in-process ranks otherwise:
///
/// ```swift
/// let world = try World.start(defaultSize: 4)
/// let sums = try await world.run { group async throws -> Float in
///     try await group.allReduce(Tensor([Float(group.rank)])).scalar(at: [0], as: Float.self)
/// }
/// print(world.transport, world.localRanks, sums)  // in-process [0, 1, 2, 3] [6.0, 6.0, 6.0, 6.0]
/// ```
public protocol DistributedWorld: Sendable {
    /// Number of ranks in the whole world.
    var size: Int { get }
    /// The world ranks this process runs, ascending: every rank in-process, one rank in a
    /// launched process.
    var localRanks: [Int] { get }
    /// How the ranks talk.
    var transport: WorldTransport { get }
    /// Runs `body` once for every rank of this process (``localRanks``) with its group of
    /// the whole world, and returns their results in that order.
    ///
    /// - Throws: the error of the first rank that failed in the chain of causes (see
    ///   ``InProcessWorld/run(_:)-7vkdf`` and ``ProcessWorld/run(_:)-5ydcj``).
    @discardableResult
    func run<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) throws -> R) throws -> [R]
    /// Runs the asynchronous `body` once for every rank of this process; ranks in-process
    /// are child tasks. Use the collectives' `async` overloads inside (see <doc:SwiftConcurrency>).
    @discardableResult
    func run<R: Sendable>(_ body: @escaping @Sendable (GroupCoordinator) async throws -> R) async throws -> [R]
}

extension InProcessWorld: DistributedWorld {
    /// Every rank: `0..<size`.
    public var localRanks: [Int] { Array(0..<size) }
    /// ``WorldTransport/inProcess``.
    public var transport: WorldTransport { .inProcess }
}

extension ProcessWorld: DistributedWorld {
    /// This process's rank.
    public var localRanks: [Int] { [rank] }
}

extension World {
    /// The world this program runs in: the launcher's when one started this process, else
    /// `defaultSize` ranks in this process. One program then runs alone, under
    /// `fvd launch -n W`, under torchrun-style variables and under `mpirun -n W`.
    ///
    /// - `RANK` or `WORLD_SIZE` set (`fvd launch`, torchrun): ``fromEnvironment(timeout:faults:)-(Double?,_)``,
    ///   a rank of the shared-memory world (or a world of one for `WORLD_SIZE=1`);
    /// - `mpirun`'s variables (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`) or `FVD_TRANSPORT=mpi`:
    ///   ``fromEnvironment(timeout:faults:)-(Double?,_)``, a rank of the MPI job, in a build with the
    ///   package trait `MPI` (``isMPIAvailable``); an error in a build without it, rather
    ///   than W separate worlds;
    /// - otherwise: ``inProcess(size:timeout:faults:)-(_,Double?,_)`` of `defaultSize` ranks.
    ///
    /// - Parameters:
    ///   - defaultSize: the number of in-process ranks when no launcher started this process.
    ///   - timeout: seconds a collective waits for ranks that have not arrived; default
    ///     `FVD_TIMEOUT` or 300.
    ///   - faults: failures to inject (see ``Fault``); default those in `FVD_FAULTS`, or none.
    /// - Throws: the errors of the world it starts; ``FVDError/invalidArgument(_:)`` for a
    ///   process started by `mpirun` in a build without the MPI transport.
    public static func start(defaultSize: Int, timeout: Double? = nil, faults: [Fault]? = nil) throws -> any DistributedWorld {
        let environment = ProcessInfo.processInfo.environment
        if launchedByMPI(environment) {
            guard isMPIAvailable else {
                throw FVDError.invalidArgument(
                    "this process was started by mpirun, but this build has no MPI transport: build with `swift build --traits MPI`")
            }
            return try fromEnvironment(timeout: timeout, faults: faults)
        }
        if environment["RANK"] != nil || environment["WORLD_SIZE"] != nil {
            return try fromEnvironment(timeout: timeout, faults: faults)
        }
        return try inProcess(size: defaultSize, timeout: timeout, faults: faults)
    }

    /// Whether `mpirun` (Open MPI, MPICH, or `FVD_TRANSPORT=mpi`) started this process.
    static func launchedByMPI(_ environment: [String: String]) -> Bool {
        environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["PMI_SIZE"] != nil || environment["FVD_TRANSPORT"] == "mpi"
    }

    /// The exit status of a launched rank that stopped only because another rank failed or
    /// left: `fvd launch` then names a rank that failed for its own reason, when there is one.
    public static let consequenceExitStatus: Int32 = 2

    /// The exit status a launched rank tells `fvd launch` it failed with.
    ///
    /// `2` when `error` is only the consequence of another rank's failure or exit
    /// (``FVDError/peerFailed(rank:message:)``, ``FVDError/peerExited(rank:op:group:)``)
    /// in a process started by a launcher (`RANK` set): `fvd launch` then names the rank
    /// that failed first, not this one. `1` for every other error. (MPI ends a failed job
    /// itself, with `MPI_Abort`.)
    public static func exitStatus(for error: any Error) -> Int32 {
        exitStatus(for: error, launched: ProcessInfo.processInfo.environment["RANK"] != nil)
    }

    static func exitStatus(for error: any Error, launched: Bool) -> Int32 {
        switch error as? FVDError {
        case .peerFailed?, .peerExited?: return launched ? consequenceExitStatus : 1
        default: return 1
        }
    }

    /// Runs `body` on every rank of ``start(defaultSize:timeout:faults:)-(_,Double?,_)``'s world, then
    /// exits the process: status 0 when every rank returned; else one `error: …` line on
    /// standard error and ``exitStatus(for:)``. A program's whole `main.swift` can be:
    ///
    /// ```swift
    /// import FastVideoDistributed
    ///
    /// World.main(defaultSize: 4) { group in
    ///     let sum = try group.allReduce(Tensor([Float(group.rank)]))
    ///     if group.rank == 0 { print(try sum.scalar(at: [0], as: Float.self)) }  // 6.0
    /// }
    /// ```
    ///
    /// Use it instead of a top-level `try`, whose error ends the program with a crash report.
    public static func main(
        defaultSize: Int, timeout: Double? = nil, _ body: @escaping @Sendable (GroupCoordinator) throws -> Void
    ) -> Never {
        exit(status { try start(defaultSize: defaultSize, timeout: timeout).run(body) })
    }

    /// ``main(defaultSize:timeout:_:)-5uqm5`` with an asynchronous `body`
    /// (ranks in-process are child tasks; use the collectives' `async` overloads).
    public static func main(
        defaultSize: Int, timeout: Double? = nil, _ body: @escaping @Sendable (GroupCoordinator) async throws -> Void
    ) async -> Never {
        do {
            try await start(defaultSize: defaultSize, timeout: timeout).run(body)
            exit(0)
        } catch {
            exit(report(error))
        }
    }

    /// 0 once `work` has returned; else its error reported and ``exitStatus(for:)``.
    static func status(_ work: () throws -> Void) -> Int32 {
        do {
            try work()
            return 0
        } catch {
            return report(error)
        }
    }

    /// Writes `error: …` on standard error; returns the exit status for it.
    private static func report(_ error: any Error) -> Int32 {
        StandardStreams.writeError("error: \(error)\n")
        return exitStatus(for: error)
    }
}

extension World {
    /// ``inProcess(size:timeout:faults:)-(_,Double?,_)`` with the timeout as a `Duration`
    /// (`.seconds(30)`, `.milliseconds(500)`); the `Double` form takes `.infinity`.
    public static func inProcess(size: Int, timeout: Duration, faults: [Fault]? = nil) throws -> InProcessWorld {
        try inProcess(size: size, timeout: timeout.seconds, faults: faults)
    }

    /// ``fromEnvironment(timeout:faults:)-(Double?,_)`` with the timeout as a `Duration`.
    public static func fromEnvironment(timeout: Duration, faults: [Fault]? = nil) throws -> ProcessWorld {
        try fromEnvironment(timeout: timeout.seconds, faults: faults)
    }

    /// ``start(defaultSize:timeout:faults:)-(_,Double?,_)`` with the timeout as a `Duration`.
    public static func start(defaultSize: Int, timeout: Duration, faults: [Fault]? = nil) throws -> any DistributedWorld {
        try start(defaultSize: defaultSize, timeout: timeout.seconds, faults: faults)
    }
}

extension Duration {
    /// The duration in seconds, for the `Double` forms.
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }
}
