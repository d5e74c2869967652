import ArgumentParser
import FastVideoDistributed
import Foundation

/// `fvd bench`: nccl-tests-style timing of the collectives, with a memcpy baseline.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the collectives over a range of sizes (nccl-tests style) beside memcpy of the same bytes.",
        discussion: """
            Sizes (-b, -e) are the size column, from 1 byte: each rank's input, and for all_gather the \
            gathered output, as in nccl-tests. Each size is rounded down to the nearest the op can use \
            (whole elements; multiples of W elements for reduce_scatter and all_to_all_4d, whose smallest \
            shape is [1, 1, W, 1]), or up to stay at -b; the '# sizes:' line says how. \
            Columns follow nccl-tests: size, count, dtype, \
            then for the out-of-place and the in-place form (into the caller's tensor: all_reduce, \
            all_gather and broadcast in place, reduce_scatter and all_to_all_4d into an output, sendrecv \
            with recv(into:)) the time, \
            algbw = size / time and busbw = algbw × the op's bus factor (all_reduce 2(n-1)/n; all_gather, \
            reduce_scatter, all_to_all_4d (n-1)/n; broadcast and sendrecv 1). Each iteration starts at a \
            barrier and counts as its slowest rank's time; the time is the median iteration, or with \
            --rounds R the median of the R rounds' medians. sendrecv is a ping-pong between ranks 0 and 1 \
            (osu_latency): its time is half the round trip. barrier is one row, of size 0. 'model%' is the \
            time of memcpy of the op's copy-model bytes on every rank at once, timed between the same \
            iterations, as a percentage of the collective's time (100% = as fast as a perfect \
            implementation on this host); 'memcpy' is that copy's bandwidth. --json, --csv and --plot \
            (.svg or .html, in either case) write the results to files. Build with -c release.
            """
    )

    @Option(help: "all_reduce, all_gather, reduce_scatter, all_to_all_4d, broadcast, barrier, sendrecv, ring_pass, halo_exchange, or all.")
    var op: String = "all"
    @Option(name: .customLong("world-size"), parsing: .unconditional, help: "Number of ranks.")
    var worldSize: Int = 2
    @Option(help: "How ranks talk: 'inprocess' (threads), 'shm' (one process per rank, started through fvd launch) or 'mpi' (under mpirun; needs a build with --traits MPI).")
    var transport: String = "inprocess"
    @Option(help: "Element type.")
    var dtype: String = "float32"
    @Option(name: .customShort("b"), parsing: .unconditional, help: "Smallest size in bytes (K, M, G suffixes; all_gather: the gathered output).")
    var minBytes: String = "8K"
    @Option(name: .customShort("e"), parsing: .unconditional, help: "Largest size in bytes.")
    var maxBytes: String = "64M"
    @Option(name: .customShort("f"), parsing: .unconditional, help: "Multiplication factor between sizes.")
    var factor: Int = 2
    @Option(parsing: .unconditional, help: "Untimed iterations before timing.")
    var warmup: Int = 5
    @Option(parsing: .unconditional, help: "Timed iterations; the median is reported.")
    var iters: Int = 20
    @Option(parsing: .unconditional, help: "Rounds of warmup and iterations per row; the median round is reported.")
    var rounds: Int = 1
    @Option(help: "Write the results as JSON to this file (schema fvd-bench/1).")
    var json: String?
    @Option(help: "Write the results as CSV to this file.")
    var csv: String?
    @Option(help: "Write a plot of busbw vs size to this file: FILE.svg or FILE.html.")
    var plot: String?

    func validate() throws {
        try checkWorldSize(worldSize, transport: transport)
    }

    func run() throws {
        let progress = ProgressLine()
        do {
            let config = try configuration()
            try config.validate()
            try checkTransport(transport)
            let (needed, tensors) = config.memoryNeeded
            try checkMemory(
                needed: needed, sharedBytes: tensors, sharedMemory: transport == "shm",
                for: "-e \(maxBytes) on \(worldSize) ranks (per rank: input, output and the memcpy baseline)")
            if let plot, !(plot.lowercased().hasSuffix(".svg") || plot.lowercased().hasSuffix(".html")) {
                throw FVDError.invalidArgument("--plot \(plot): the file name must end in .svg or .html")
            }
            // Fail before a long run, not after it, when an output cannot be written.
            try checkOutputPaths([("--json", json), ("--csv", csv), ("--plot", plot)].compactMap { o, p in p.map { (o, $0) } })
            let ranks = try RankPlacement.forCommand(transport: transport, worldSize: worldSize)
            let printing = if case .process(let world) = ranks { world.rank == 0 } else { true }
            if printing {
                printOutput("# fvd bench: \(transport) transport, world size \(worldSize), \(config.dtype), "
                    + "median of \(iters) iterations after \(warmup) warmup"
                    + (rounds > 1 ? ", median of \(rounds) rounds" : ""))
                printOutput(config.sizesLine)
                printOutput(BenchReport.tableHeader)
            }
            let report = try runBenchmark(config, ranks: ranks) { done, total, what in
                if printing { progress.show("[\(done + 1)/\(total)] \(what)") }
            } row: { row in
                guard printing else { return }
                progress.clear()
                printOutput(BenchReport.tableLine(row))
            }
            if printing {
                printOutput(report.averageLine)
                try writeOutputs(report)
            }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            progress.clear()
            reportError(error)
            throw rankExitCode(for: error)
        }
    }

    /// The benchmark settings from the options.
    private func configuration() throws -> BenchConfiguration {
        var config = BenchConfiguration()
        config.worldSize = worldSize
        guard let d = DType(name: dtype) else {
            throw FVDError.invalidArgument("unknown dtype '\(dtype)'; use one of \(DType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        config.dtype = d
        config.minBytes = try parseByteSize(minBytes, option: "-b")
        config.maxBytes = try parseByteSize(maxBytes, option: "-e")
        config.factor = factor
        config.warmup = warmup
        config.iterations = iters
        config.rounds = rounds
        if op != "all" {
            guard let o = BenchOperation(rawValue: op) else {
                throw FVDError.invalidArgument(
                    "unknown op '\(op)'; use one of \(BenchOperation.allCases.map(\.rawValue).joined(separator: ", ")) or all")
            }
            config.operations = [o]
        }
        return config
    }

    /// Writes the --json, --csv and --plot files (each atomically where it is a regular file).
    private func writeOutputs(_ report: BenchReport) throws {
        if let json { try writeFileAtomically(Array(try report.json()), to: json) }
        if let csv { try writeFileAtomically(Array(report.csv().utf8), to: csv) }
        if let plot {
            let (title, subtitle) = report.plotTitles
            let series = report.plotSeries()
            let text = plot.lowercased().hasSuffix(".html")
                ? BenchPlot.html(title: title, subtitle: subtitle, series: series)
                : BenchPlot.svg(title: title, subtitle: subtitle, series: series)
            try writeFileAtomically(Array(text.utf8), to: plot)
        }
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal.
final class ProgressLine {
    private let enabled = isatty(STDERR_FILENO) != 0

    /// Replaces the line with `text`.
    func show(_ text: String) {
        if enabled { writeError("\r\u{1B}[K  running \(text)...") }
    }

    /// Erases the line.
    func clear() {
        if enabled { writeError("\r\u{1B}[K") }
    }
}

/// Checks the output files before a long run: each name is non-empty, is not a folder,
/// can be written (a device such as `/dev/null` or a FIFO must be writable; for a regular
/// file, its folder), and no two options name the same regular file.
///
/// - Parameter outputs: (option, path) pairs, e.g. `("--json", "a.json")`.
func checkOutputPaths(_ outputs: [(option: String, path: String)]) throws {
    var seen: [String: String] = [:]  // resolved path → option
    for (option, path) in outputs {
        guard !path.isEmpty else { throw FVDError.invalidArgument("\(option): the file name is empty") }
        var info = stat()
        let exists = stat(path, &info) == 0
        let kind = info.st_mode & S_IFMT
        if exists, kind == S_IFDIR { throw FVDError.file(path: path, problem: "\(option) names a directory, not a file") }
        if exists, kind != S_IFREG {
            guard access(path, W_OK) == 0 else {
                throw FVDError.file(path: path, problem: "\(option): cannot write to it: \(String(cString: strerror(errno)))")
            }
            continue  // written straight through; /dev/null may take several outputs
        }
        let resolved = exists ? (realpath(path, nil).map { p in defer { free(p) }; return String(cString: p) } ?? path) : path
        let folder = (resolved as NSString).deletingLastPathComponent.isEmpty ? "." : (resolved as NSString).deletingLastPathComponent
        var folderInfo = stat()
        guard stat(folder, &folderInfo) == 0, folderInfo.st_mode & S_IFMT == S_IFDIR else {
            throw FVDError.file(path: path, problem: "\(option): its folder \(folder) does not exist")
        }
        guard access(folder, W_OK) == 0 else {
            throw FVDError.file(path: path, problem: "\(option): its folder \(folder) is not writable")
        }
        let canonicalFolder = realpath(folder, nil).map { p in defer { free(p) }; return String(cString: p) } ?? folder
        let key = canonicalFolder + "/" + (resolved as NSString).lastPathComponent
        if let earlier = seen[key] {
            throw FVDError.invalidArgument("\(earlier) and \(option) name the same file \(path); give each its own")
        }
        seen[key] = option
    }
}

/// Parses `1048576`, `64K`, `1M`, `2G` (powers of 1024).
func parseByteSize(_ text: String, option: String) throws -> Int {
    do {
        return try parseByteSize(text)
    } catch FVDError.invalidArgument(let message) {
        throw FVDError.invalidArgument("\(option): \(message)")
    }
}

/// Bytes in `text`: a whole number, at least 1, with an optional K, M or G suffix (up to 1T).
func parseByteSize(_ text: String) throws -> Int {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    var digits = text.uppercased()
    var scale = 1
    if let last = digits.last, let unit = units[last] {
        scale = unit
        digits.removeLast()
    }
    guard let value = Int(digits) else {
        throw FVDError.invalidArgument("invalid size '\(text)'; use bytes with an optional K, M or G suffix")
    }
    guard value > 0 else { throw FVDError.invalidArgument("size '\(text)' must be at least 1 byte") }
    let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
    guard !overflow, bytes <= 1 << 40 else { throw FVDError.invalidArgument("size '\(text)' is larger than 1T") }
    return bytes
}

