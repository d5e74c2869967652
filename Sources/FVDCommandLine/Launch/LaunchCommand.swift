import ArgumentParser
import Foundation

/// `fvd launch`: starts one process per rank with torchrun's environment, like `torchrun`.
///
/// ```
/// fvd launch -n W [--timeout S] [--grace S] [--no-prefix] -- PROGRAM ARGS…
/// ```
///
/// Every rank `r` runs `PROGRAM ARGS…` with the launcher's environment plus `RANK=r`,
/// `WORLD_SIZE=W`, `LOCAL_RANK=r`, `LOCAL_WORLD_SIZE=W`, `MASTER_ADDR=127.0.0.1`,
/// `MASTER_PORT` (a free port), `FVD_JOB_ID=<launcher pid>-<8 hex digits>`,
/// `FVD_SHM_NAME=/fvd-<FVD_JOB_ID>` and, with `--timeout`, `FVD_TIMEOUT`. Each output line
/// appears on the launcher's stdout or stderr prefixed with `[r<rank>] ` (unless `--no-prefix`). Each rank runs in
/// a session and process group of its own; SIGINT, SIGTERM and SIGHUP sent to the launcher
/// are forwarded to every rank's group. When a rank exits non-zero or by a signal, or the
/// launcher was sent one of those signals, the ranks get `--grace` seconds to exit, then
/// SIGTERM, then SIGKILL two seconds later; the launcher prints
/// `error: rank R exited with status S` (or `was killed by signal N (NAME)`) for the first
/// rank that failed and exits 1. It exits 0 only when every rank exited 0 and it was not
/// sent a signal.
/// The shared-memory object `FVD_SHM_NAME` is removed however the launcher ends, and objects
/// of launchers that are no longer running are removed when one starts.
struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Start W processes of PROGRAM, one per rank, with torchrun's environment.",
        usage: "fvd launch -n <n> [--timeout <timeout>] [--grace <grace>] [--no-prefix] -- <program> [<arguments> ...]",
        discussion: """
            Each rank gets the launcher's environment plus RANK, WORLD_SIZE, LOCAL_RANK (= RANK), \
            LOCAL_WORLD_SIZE (= W), MASTER_ADDR=127.0.0.1, MASTER_PORT (a free TCP port), \
            FVD_JOB_ID=<launcher pid>-<8 hex digits>, FVD_SHM_NAME=/fvd-<FVD_JOB_ID> (the shared memory \
            the ranks' transport uses) and, with --timeout, FVD_TIMEOUT. Output lines are prefixed with \
            [r<rank>]. SIGINT, SIGTERM and SIGHUP are forwarded to every rank (each runs in its own \
            session). When a rank exits non-zero or by a signal, the others get --grace seconds to exit, \
            then SIGTERM, then SIGKILL 2 s later, and the launcher exits 1 naming the first failing rank (a rank that exits with status 2 — \
            what fvd's own ranks do when they stop only because another rank failed — is named only when no other rank failed, \
            and then a rank that exited 0 while the others still needed it is named instead; ranks that end after the launcher \
            signalled them are never named). When every rank has exited, whatever they left running in their process groups is \
            killed. A line longer than 64 KiB is passed on unsplit as it arrives. The shared-memory object is removed on \
            every exit, and objects of launchers no longer running are removed at start.
            """
    )

    @Option(name: [.customShort("n"), .customLong("nproc-per-node")], parsing: .unconditional, help: ArgumentHelp("Number of processes (ranks), 1…1024.", valueName: "n"))
    var worldSize: Int

    @Option(parsing: .unconditional, help: "Seconds a collective waits for missing ranks, more than 0 or inf for no limit (passed to the ranks as FVD_TIMEOUT). Joining the world at start waits FVD_JOIN_TIMEOUT seconds instead (default: the larger of this and 300); a rank that ends before joining is reported at once.")
    var timeout: Double?

    @Option(parsing: .unconditional, help: "Seconds the other ranks get to exit on their own after one fails, before SIGTERM.")
    var grace: Double = 5

    @Flag(help: "Pass the ranks' output lines on without the [r<rank>] prefix (still whole lines).")
    var noPrefix = false

    @Argument(
        parsing: .captureForPassthrough,
        help: ArgumentHelp("The program to run (looked up in PATH when it has no slash) and its arguments, after --.", valueName: "program"))
    var command: [String] = []

    /// `command` without the `--` that separates it from the options.
    private var programAndArguments: [String] {
        command.first == "--" ? Array(command.dropFirst()) : command
    }

    /// The launcher settings from the command line.
    var launchConfiguration: LaunchConfiguration {
        let words = programAndArguments
        return LaunchConfiguration(
            worldSize: worldSize, program: words.first ?? "", arguments: Array(words.dropFirst()),
            timeout: timeout, grace: grace, prefixOutput: !noPrefix)
    }

    func validate() throws {
        do {
            try launchConfiguration.validate()
        } catch {
            throw ValidationError(error.description)
        }
    }

    func run() throws {
        let outcome: LaunchOutcome
        do {
            outcome = try runLaunch(launchConfiguration)
        } catch {
            printError(error)
            throw ExitCode.failure
        }
        if let message = outcome.message {
            writeError("error: \(message)\n")
            throw ExitCode(outcome.exitStatus)
        }
    }
}
