import ArgumentParser
import FastVideoDistributed
import Foundation

// What the commands share about choosing and starting a transport.

/// Throws unless `name` is a transport this build can run.
func checkTransport(_ name: String) throws {
    if name == "mpi", !World.isMPIAvailable {
        throw FVDError.invalidArgument(
            "transport 'mpi' is not in this build: build with `swift build --traits MPI` (needs libopenmpi-dev or libmpich-dev)")
    }
    guard ["inprocess", "shm", "mpi"].contains(name) else {
        throw FVDError.invalidArgument("unknown transport '\(name)'; use 'inprocess', 'shm' or 'mpi'")
    }
}

/// Whether this process was started as a rank by a launcher (`RANK` is set).
var isLaunchedRank: Bool { ProcessInfo.processInfo.environment["RANK"] != nil }

/// Runs this process's own command line again as `worldSize` ranks under `fvd launch`
/// (output unprefixed, so rank 0's table reads as usual) and returns the launcher's
/// exit status.
func relaunchAsRanks(worldSize: Int, extraArguments: [String] = []) throws -> Int32 {
    let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = ["launch", "-n", "\(worldSize)", "--no-prefix", "--", executable] + CommandLine.arguments.dropFirst() + extraArguments
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}


/// Where a command runs its ranks.
public enum RankPlacement: Sendable {
    /// Threads of this process.
    case inProcess
    /// This process is one rank of a multi-process world; every rank runs the same command.
    case process(ProcessWorld)

    /// Where a command with `--transport` runs: threads for `inprocess`; for `shm`, this
    /// process as its rank of the world from the environment. Outside a launcher, `shm`
    /// first runs this same command as `worldSize` ranks and then ends with their exit
    /// status (thrown as an `ExitCode`). `mpi` must be started by `mpirun` with
    /// `worldSize` ranks.
    static func forCommand(transport: String, worldSize: Int, timeout: Double? = nil) throws -> RankPlacement {
        switch transport {
        case "shm":
            guard isLaunchedRank else { throw ExitCode(try relaunchAsRanks(worldSize: worldSize)) }
            return .process(try World.fromEnvironment(timeout: timeout))
        case "mpi":
            let world = try World.fromEnvironment(timeout: timeout)
            guard world.transport == "MPI" else {
                throw FVDError.invalidArgument(
                    "--transport mpi: start the ranks with mpirun, e.g. mpirun -n \(worldSize) fvd … --transport mpi")
            }
            guard world.size == worldSize else {
                throw FVDError.invalidArgument("--world-size is \(worldSize) but mpirun started \(world.size) ranks")
            }
            return .process(world)
        default:
            return .inProcess
        }
    }

    /// The transport's name in the report.
    var name: String {
        switch self {
        case .inProcess: return "inprocess"
        case .process(let world): return world.size == 1 ? "inprocess" : world.transport == "MPI" ? "mpi" : "shm"
        }
    }
}


/// The exit status of a launched rank that stops only because another rank failed or
/// left (``FVDError/peerFailed(rank:message:)``, ``FVDError/peerExited(rank:op:group:)``):
/// `fvd launch` then names a rank that failed for its own reason, when there is one.
let consequenceExitStatus: Int32 = 2

/// The exit code for a command that failed with `error`: ``consequenceExitStatus`` for
/// a launched rank stopped by another rank's failure, 1 otherwise.
func rankExitCode(for error: any Error) -> ExitCode {
    switch error as? FVDError {
    case .peerFailed?, .peerExited?: return isLaunchedRank ? ExitCode(consequenceExitStatus) : .failure
    default: return .failure
    }
}

/// Prints `error` as one line, except on a launched rank other than 0 when every rank
/// sees the same failure (rank 0 reports it; the others would only repeat it).
func reportError(_ error: any Error) {
    let rank = ProcessInfo.processInfo.environment["RANK"]
    if let error = error as? FVDError, error.isCollectiveFailure, let rank, rank != "0" { return }
    printError(error)
}

extension FVDError {
    /// Whether every rank of the group sees this error alike (a mismatch, a bad argument
    /// checked after the exchange, another rank's failure), so one rank's report suffices.
    var isCollectiveFailure: Bool {
        switch self {
        case .file, .noParallelState, .concurrentUse: return false
        default: return true
        }
    }
}
