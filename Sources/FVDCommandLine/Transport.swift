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

/// `fvd launch -n worldSize --no-prefix -- fvd <this command line> extraArguments…`, the
/// executable first (output unprefixed, so rank 0's table reads as usual).
private func relaunchCommandLine(worldSize: Int, extraArguments: [String] = []) -> [String] {
    let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    return [executable, "launch", "-n", "\(worldSize)", "--no-prefix", "--", executable]
        + CommandLine.arguments.dropFirst() + extraArguments
}

/// Replaces this process with `fvd launch` running this command line as `worldSize` ranks.
///
/// `exec`, not a child: the launcher takes this process's pid and process group, so Ctrl-C,
/// `timeout` and `kill` reach it, it forwards them to the ranks, and its exit status is
/// the command's.
func relaunchAsRanks(worldSize: Int) throws -> Never {
    let words = relaunchCommandLine(worldSize: worldSize)
    var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    fflush(nil)
    execv(words[0], &argv)
    let code = errno
    for pointer in argv { free(pointer) }
    throw FVDError.invalidArgument("cannot start fvd launch (\(words[0])): \(String(cString: strerror(code)))")
}

/// Runs this command line as `worldSize` ranks under a child `fvd launch` and returns its
/// exit status, for a command with work left after the ranks end (`fvd apply` moves their
/// files into place; on SIGINT, SIGTERM or SIGHUP it stops the launcher itself, see
/// `registerStagingFolder`).
func runAsRanks(worldSize: Int, extraArguments: [String]) throws -> Int32 {
    let words = relaunchCommandLine(worldSize: worldSize, extraArguments: extraArguments)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: words[0])
    process.arguments = Array(words.dropFirst())
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
    /// first replaces itself with `fvd launch` running this same command as `worldSize`
    /// ranks (see ``relaunchAsRanks(worldSize:)``). Under a launcher (`WORLD_SIZE` > 1)
    /// `inprocess` is refused: each rank would run a whole world of its own. `mpi` must be started by `mpirun` with
    /// `worldSize` ranks.
    static func forCommand(transport: String, worldSize: Int, timeout: Double? = nil) throws -> RankPlacement {
        switch transport {
        case "shm":
            guard isLaunchedRank else { try relaunchAsRanks(worldSize: worldSize) }
            return .process(try World.fromEnvironment(timeout: timeout))
        case "mpi":
            let world = try World.fromEnvironment(timeout: timeout)
            guard world.transport == .mpi else {
                throw FVDError.invalidArgument(
                    "--transport mpi: start the ranks with mpirun, e.g. mpirun -n \(worldSize) fvd … --transport mpi")
            }
            guard world.size == worldSize else {
                throw FVDError.invalidArgument("--world-size is \(worldSize) but mpirun started \(world.size) ranks")
            }
            return .process(world)
        default:
            // Under a launcher every rank would run its own copy of the whole in-process world.
            if let size = ProcessInfo.processInfo.environment["WORLD_SIZE"], let n = Int(size), n > 1 {
                throw FVDError.invalidArgument(
                    "this process is one of WORLD_SIZE=\(n) launched ranks, but --transport inprocess runs every rank "
                        + "as a thread of one process: use --transport shm under fvd launch, or run without a launcher")
            }
            return .inProcess
        }
    }

    /// The transport's name in the report.
    var name: String {
        switch self {
        case .inProcess: return "inprocess"
        case .process(let world): return world.size == 1 ? "inprocess" : world.transport == .mpi ? "mpi" : "shm"
        }
    }
}


/// The exit status of a launched rank that stops only because another rank failed or left.
let consequenceExitStatus = World.consequenceExitStatus

/// The exit code for a command that failed with `error`: ``World/exitStatus(for:)``.
func rankExitCode(for error: any Error) -> ExitCode {
    ExitCode(World.exitStatus(for: error))
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
