import ArgumentParser
import Foundation

/// The `fvd` command: FastVideo's collectives, from the command line.
public struct FVDCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fvd",
        abstract: "FastVideo-style collectives for parallel video-diffusion: demo, benchmark, apply, launch.",
        subcommands: [DemoCommand.self, BenchCommand.self, ApplyCommand.self, SelfTestCommand.self, LaunchCommand.self]
    )

    public init() {}

    /// Parses the command line and runs the command; a usage error is one `error:` line.
    ///
    /// ArgumentParser prints usage errors over several lines with the usage text; here
    /// every failure is one line on stderr and a non-zero exit (64 for usage errors),
    /// so scripts comparing implementations can rely on it. `--help` is unchanged.
    public static func runFromCommandLine(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        do {
            try checkHelpTopic(arguments)
            var command = try parseAsRoot(arguments)
            try command.run()
            Foundation.exit(0)
        } catch let error as ExitCode {
            Foundation.exit(error.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }  // --help, --version
            let message = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            let line = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
            FileHandle.standardError.write(Data("error: \(line) (see --help)\n".utf8))
            Foundation.exit(code.rawValue)
        }
    }
}
