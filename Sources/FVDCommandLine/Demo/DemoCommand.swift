import ArgumentParser
import FastVideoDistributed
import Foundation

/// `fvd demo`: a video-DiT block on in-process ranks with tensor and sequence parallelism,
/// checked against the same block on one rank.
///
/// Prints the rank map, a per-collective timing table, the max abs error against the
/// single-rank reference and `PASS` or `FAIL`. Exits non-zero when the error exceeds the
/// tolerance (default `1e-4`) or when the library rejects the configuration (the error
/// is printed as one line, `error: <description>`).
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a video-DiT block with tensor + sequence parallelism and check it against one rank.",
        discussion: """
            Ranks are threads of this process. Each replica of lcm(tp, sp) consecutive ranks \
            runs one sample: the adaLN projection and the MLP are tensor parallel (all-gather, \
            all-reduce), the attention is Ulysses sequence parallel (shard, all-to-all, \
            all-gather with unpad). Every rank's output is compared with the same block on one \
            rank; the run passes when the max abs error is at most the tolerance (default 1e-4).
            """
    )

    @Option(parsing: .unconditional, help: "Number of in-process ranks.")
    var worldSize: Int = 4

    @Option(parsing: .unconditional, help: "Tensor-parallel size (adaLN projection and MLP).")
    var tp: Int = 2

    @Option(parsing: .unconditional, help: "Sequence-parallel (Ulysses) size (attention).")
    var sp: Int = 2

    @Option(parsing: .unconditional, help: "Latent frames.")
    var frames: Int = 4

    @Option(parsing: .unconditional, help: "Latent height in patches.")
    var height: Int = 8

    @Option(parsing: .unconditional, help: "Latent width in patches.")
    var width: Int = 8

    @Option(parsing: .unconditional, help: "Hidden size of the block (default 16 × heads: 128).")
    var hidden: Int?

    @Option(parsing: .unconditional, help: "Attention heads; any number: heads that do not divide by --sp take the uneven all-to-all (30 heads on 4 ranks: 8, 8, 7, 7).")
    var heads: Int = 8

    @Option(parsing: .unconditional, help: "Seed of the weights and inputs.")
    var seed: UInt64 = 0

    @Option(parsing: .unconditional, help: "Largest max abs error vs the single-rank reference that passes.")
    var tolerance: Double = 1e-4

    @Option(parsing: .unconditional, help: "Seconds a collective waits for missing ranks (more than 0; inf: no limit).")
    var timeout: Double = 60

    @Option(help: "How ranks talk: 'inprocess' (threads), 'shm' (one process per rank, started through fvd launch) or 'mpi' (under mpirun; needs a build with --traits MPI).")
    var transport: String = "inprocess"

    @Flag(help: "Log the step's collectives (FVD_LOG_LEVEL=debug for this step): each rank's group layout and one line per collective with its shape, bytes, time and GB/s, on stderr.")
    var verbose = false

    @Flag(help: "Overlap attention with the all-to-all: exchange q/k/v in --chunks groups of heads, started at once, and attend to each group as it arrives.")
    var overlap = false

    @Option(parsing: .unconditional, help: "Groups of heads with --overlap.")
    var chunks: Int = 4

    @Option(parsing: .unconditional, help: "USP ring degree R: each --sp group is sp / R Ulysses ranks × R ring ranks; attention runs as ring attention over the ring groups after the all-to-all inside each Ulysses group (1: Ulysses only).")
    var ring = 1

    @Flag(name: .customLong("temporal-conv"), help: "Add a 3-tap temporal convolution over the frames of each rank's sequence shard, with the neighbour-only halo exchange.")
    var temporalConvolution = false

    func validate() throws {
        guard chunks >= 1 else { throw ValidationError("--chunks must be at least 1, got \(chunks)") }
        try checkTimeout(timeout)
        try checkWorldSize(worldSize, transport: transport)
        // Before the default hidden size (16 × heads) is computed, which would name hidden instead.
        guard (1...65536).contains(heads) else { throw ValidationError("--heads must be between 1 and 65536, got \(heads)") }
    }

    func run() throws {
        var config = DemoConfiguration(
            worldSize: worldSize, tensorParallel: tp, sequenceParallel: sp, frames: frames, height: height,
            width: width, hidden: hidden ?? 16 * heads, heads: heads, seed: seed, timeout: timeout, tolerance: tolerance)
        config.verbose = verbose
        config.overlapChunks = overlap ? chunks : 1
        config.ringDegree = ring
        config.temporalConvolution = temporalConvolution
        let report: DemoReport
        var placement = RankPlacement.inProcess
        do {
            try checkTransport(transport)
            placement = try RankPlacement.forCommand(transport: transport, worldSize: worldSize, timeout: timeout)
            report = try runDemo(config, ranks: placement)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            reportError(error)
            throw rankExitCode(for: error)
        }
        if case .process(let world) = placement, world.rank != 0 {
            if !report.passed { throw ExitCode.failure }
            return
        }
        printOutput(render(report, transport: placement.name))
        if !report.passed { throw ExitCode.failure }
    }
}

/// The demo's report as text: header, rank map, timing table, error, verdict.
func render(_ report: DemoReport, transport: String = "inprocess") -> String {
    let c = report.configuration
    var lines = [
        "fvd demo: video-DiT block, \(c.frames) frames × \(c.height)×\(c.width) patches = \(c.tokens) tokens, "
            + "hidden \(c.hidden), \(c.heads) heads, text dim \(c.textDim), MLP ×\(c.mlpRatio)",
        "world \(c.worldSize) \(["shm": "processes (shared memory)", "mpi": "processes (MPI)"][transport] ?? "in-process ranks"): tp \(c.tensorParallel), sp \(c.sequenceParallel), "
            + "\(c.samples) replica\(c.samples == 1 ? "" : "s") of \(c.replicaSize) rank\(c.replicaSize == 1 ? "" : "s"), "
            + "one sample each",
        "",
        "rank map (rank 0's groups marked *):",
    ]
    lines += report.rankMap.split(separator: "\n").map { "  " + $0 }
    lines.append("")
    lines.append("collective timings (all ranks):")
    let nameWidth = max(10, report.timings.map(\.name.count).max() ?? 0)
    func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, w - s.count))
        return left ? s + fill : fill + s
    }
    lines.append(
        "  " + pad("collective", nameWidth, left: true) + pad("calls", 7) + pad("bytes", 12) + pad("total µs", 12)
            + pad("mean µs", 10))
    for t in report.timings {
        lines.append(
            "  " + pad(t.name, nameWidth, left: true) + pad(String(t.calls), 7) + pad(String(t.totalBytes), 12)
                + pad(String(format: "%.1f", t.totalMicroseconds), 12) + pad(String(format: "%.1f", t.meanMicroseconds), 10))
    }
    if report.timings.isEmpty { lines.append("  (none)") }
    lines.append("")
    lines.append(
        String(format: "distributed run %.3f s, single-rank reference %.3f s", report.wallSeconds, report.referenceSeconds))
    lines.append(
        "max abs error vs single-rank reference: \(String(format: "%.3e", report.maxAbsError)) "
            + "(tolerance \(String(format: "%.0e", report.tolerance)))")
    lines.append(report.passed ? "PASS" : "FAIL")
    return lines.joined(separator: "\n")
}
