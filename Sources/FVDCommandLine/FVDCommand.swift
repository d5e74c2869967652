import ArgumentParser
import FastVideoDistributed
import Foundation

/// The `fvd` command: FastVideo's collectives, from the command line.
public struct FVDCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fvd",
        abstract: "FastVideo-style collectives for parallel video-diffusion: demo, benchmark, plot, apply, launch.",
        subcommands: [DemoCommand.self, BenchCommand.self, PlotCommand.self, ApplyCommand.self, SelfTestCommand.self, LaunchCommand.self]
    )

    public init() {}

    /// Parses the command line and runs the command; a usage error is one `error:` line.
    ///
    /// ArgumentParser prints usage errors over several lines with the usage text; here
    /// every failure is one line on stderr and a non-zero exit (64 for usage errors),
    /// so scripts comparing implementations can rely on it. `--help` is unchanged.
    /// Closed standard streams are replaced by `/dev/null` first (see `StandardStreams`),
    /// and a command that succeeded but could not write its stdout (a full disk, a closed
    /// stream) exits 1 with `error: cannot write to standard output: …` (141, silently,
    /// for a closed pipe, as if killed by SIGPIPE).
    public static func runFromCommandLine(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        StandardStreams.prepare()
        do {
            try checkHelpTopic(arguments)
            var command = try parseAsRoot(arguments)
            try command.run()
            exitChecking(0)
        } catch let error as ExitCode {
            exitChecking(error.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }  // --help, --version
            let message = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            let line = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
            writeError("error: \(line) (see --help)\n")
            exitChecking(code.rawValue)
        }
    }

    /// Exits with `status`, or with 1 (141 for a closed pipe) when it is 0 but a write to
    /// stdout failed.
    private static func exitChecking(_ status: Int32) -> Never {
        while processIsEnding.load(ordering: .acquiring) { pause() }  // that thread exits
        fflush(nil)  // what ArgumentParser printed (help) through stdio
        if status == 0, let code = StandardStreams.stdoutError {
            if code == EPIPE { Foundation.exit(141) }
            writeError("error: cannot write to standard output: \(String(cString: strerror(code)))\n")
            Foundation.exit(1)
        }
        Foundation.exit(status)
    }
}
