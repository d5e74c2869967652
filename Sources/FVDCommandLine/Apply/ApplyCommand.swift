import ArgumentParser
import FastVideoDistributed
import Foundation

/// `fvd apply`: runs one seed operation on rank files, the interface other implementations are compared through.
struct ApplyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Run one of FastVideo's four operations on DIR/rank{r}.npy files and write OUTDIR/rank{r}.npy.",
        discussion: """
            OP is one of \(ApplyOperation.allCases.map(\.rawValue).joined(separator: ", ")). \
            Every rank r < W reads INPUTS/rank{r}.npy, or INPUTS/rank{r}.safetensors (its first tensor), and \
            writes OUTPUTS/rank{r} in the same format and dtype. The TP operations default to --tp W, the SP \
            ones to --sp W; --dim defaults to -1, the all-to-all to --scatter-dim 2 --gather-dim 1, the \
            all-reduce to --op sum (FastVideo's defaults). Outputs appear all together or not at all; \
            a rank's earlier output in the other format is replaced (and named on stderr). OUTPUTS \
            must not be the INPUTS folder. SIGINT, SIGTERM or SIGHUP leave no partial output: the \
            run removes its staging folder and exits with 128 + the signal's number.
            """
    )

    @Argument(help: "The operation, by FastVideo's name.")
    var operation: String

    @Option(parsing: .unconditional, help: "Number of in-process ranks (one input file each).")
    var worldSize: Int

    @Option(parsing: .unconditional, help: "Tensor-parallel size (default: W for the TP operations, else 1).")
    var tp: Int?

    @Option(parsing: .unconditional, help: "Sequence-parallel size (default: W for the SP operations, else 1).")
    var sp: Int?

    @Option(parsing: .unconditional, help: "All-gather dimension (default -1).")
    var dim: Int?

    @Option(parsing: .unconditional, help: "All-to-all scattered dimension (default 2).")
    var scatterDim: Int?

    @Option(parsing: .unconditional, help: "All-to-all gathered dimension (default 1).")
    var gatherDim: Int?

    @Option(help: "All-reduce operation: sum, product, max, min or average (default sum).")
    var op: String?

    @Option(help: "Folder with rank{r}.npy or rank{r}.safetensors for every rank.")
    var inputs: String

    @Option(help: "Folder for the outputs (created if missing).")
    var outputs: String

    @Option(help: "How ranks talk: 'inprocess' (threads), 'shm' (one process per rank, started through fvd launch) or 'mpi' (under mpirun; needs a build with --traits MPI).")
    var transport: String = "inprocess"

    @Option(parsing: .unconditional, help: "Seconds a collective waits for missing ranks (more than 0; inf: no limit).")
    var timeout: Double = 60

    @Option(help: ArgumentHelp("Internal: as a rank of --transport shm, write the output into this folder.", visibility: .private))
    var rankStaging: String?

    func validate() throws {
        try checkTimeout(timeout)
        try checkWorldSize(worldSize, transport: transport)
    }

    func run() throws {
        do {
            try checkTransport(transport)
            guard let operation = ApplyOperation(rawValue: operation) else {
                throw FVDError.invalidArgument(
                    "unknown operation '\(self.operation)'; use one of \(ApplyOperation.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            var config = ApplyConfiguration(operation: operation, worldSize: worldSize, inputDirectory: inputs, outputDirectory: outputs)
            config.tensorParallel = tp
            config.sequenceParallel = sp
            config.dim = dim
            config.scatterDim = scatterDim
            config.gatherDim = gatherDim
            config.timeout = timeout
            if let op {
                guard let reduceOp = ReduceOp(rawValue: op) else {
                    throw FVDError.invalidArgument(
                        "unknown --op '\(op)'; use one of \(ReduceOp.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                config.reduceOp = reduceOp
            }
            if transport == "mpi" {
                guard case .process(let world) = try RankPlacement.forCommand(transport: transport, worldSize: worldSize, timeout: timeout),
                    let paths = try runApplyOverMPI(config, world: world)
                else { return }
                printOutput("\(operation.rawValue): wrote \(paths.count) file\(paths.count == 1 ? "" : "s") to \(outputs)")
                return
            }
            if transport == "shm", isLaunchedRank {
                guard let rankStaging else { throw FVDError.invalidArgument("apply --transport shm runs its own ranks; start it without a launcher") }
                try runApplyAsRank(config, staging: rankStaging)
                return
            }
            let paths = transport == "shm"
                ? try runApplyAsProcesses(config) { staging in
                    try runAsRanks(worldSize: worldSize, extraArguments: ["--rank-staging", staging])
                }
                : try runApply(config)
            printOutput("\(operation.rawValue): wrote \(paths.count) file\(paths.count == 1 ? "" : "s") to \(outputs)")
        } catch let failed as ApplyRanksFailed {
            throw ExitCode(failed.status)  // the ranks and the launcher said why
        } catch let error as FVDError {
            reportError(error)
            throw rankExitCode(for: error)
        }
    }
}

