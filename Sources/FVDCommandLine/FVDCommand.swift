import ArgumentParser

/// The `fvd` command: FastVideo's collectives, from the command line.
public struct FVDCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fvd",
        abstract: "FastVideo-style collectives for parallel video-diffusion: demo, benchmark, apply.",
        subcommands: [DemoCommand.self, BenchCommand.self, ApplyCommand.self]
    )

    public init() {}
}
