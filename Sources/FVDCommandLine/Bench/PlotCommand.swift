import ArgumentParser
import FastVideoDistributed
import Foundation

/// `fvd plot`: several `fvd bench --json` runs on one chart, with each run's time relative
/// to the first below it.
struct PlotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Draw several fvd bench runs (--json files) on one chart, one colour per run, with each run's time over the first run's below.",
        discussion: """
            Each run is a file in the fvd-bench/1 schema (fvd bench --json; Benchmarks/compare-mpi.sh writes \
            Open MPI's rows in it too). The upper panel is the bus bandwidth of one operation against the \
            message size per rank; the lower one each run's time divided by the first run's at the same size \
            (below 1: faster than the first run).
            """)

    @Argument(help: "fvd bench --json files; the first is the one the others are compared with.")
    var runs: [String] = []

    @Option(name: .shortAndLong, help: "The chart to write: FILE.svg or FILE.html.")
    var output: String

    @Option(help: "A run's label in the legend, once per run in order (default: its transport, world size and dtype).")
    var label: [String] = []

    @Option(help: "The operation to draw (default: the first run's first).")
    var op: String?

    @Flag(name: .customLong("in-place"), help: "Plot the in-place form (the caller's tensor) where a run measured it, as MPI's collectives write into buffers the caller allocated.")
    var inPlace = false

    @Option(help: "The chart's title.")
    var title: String?

    func run() throws {
        do {
            let chart = try BenchComparison(runs: runs.map(Self.load), labels: label, op: op, inPlace: inPlace)
            guard output.lowercased().hasSuffix(".svg") || output.lowercased().hasSuffix(".html") else {
                throw FVDError.invalidArgument("-o \(output): the file name must end in .svg or .html")
            }
            try checkOutputPaths([("-o", output)])
            let heading = title ?? chart.title
            let text = output.lowercased().hasSuffix(".html")
                ? BenchPlot.html(title: heading, subtitle: chart.subtitle, series: chart.bandwidth, ratios: chart.ratios)
                : BenchPlot.svg(title: heading, subtitle: chart.subtitle, series: chart.bandwidth, ratios: chart.ratios)
            try writeFileAtomically(Array(text.utf8), to: output)
            printOutput("plot: \(chart.bandwidth.count) run\(chart.bandwidth.count == 1 ? "" : "s") of \(chart.op.rawValue) drawn in \(output)")
        } catch {
            reportError(error)
            throw ExitCode.failure
        }
    }

    /// The report in the `fvd bench --json` file at `path`.
    static func load(_ path: String) throws -> BenchReport {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw FVDError.file(path: path, problem: "cannot read it: \((error as NSError).localizedDescription)")
        }
        struct Schema: Decodable { var schema: String? }
        let schema = (try? JSONDecoder().decode(Schema.self, from: data))?.schema
        guard schema == "fvd-bench/1" else {
            throw FVDError.file(
                path: path, problem: "not an fvd bench --json file: schema \(schema.map { "'\($0)'" } ?? "missing"), not 'fvd-bench/1'")
        }
        do {
            return try JSONDecoder().decode(BenchReport.self, from: data)
        } catch let DecodingError.keyNotFound(key, context) {
            throw FVDError.file(path: path, problem: "key '\(key.stringValue)' is missing at \(codingPath(context))")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context), let DecodingError.valueNotFound(_, context) {
            throw FVDError.file(path: path, problem: "\(context.debugDescription) at \(codingPath(context))")
        } catch {
            throw FVDError.file(path: path, problem: "not valid fvd-bench/1 JSON: \(error)")
        }
    }

    private static func codingPath(_ context: DecodingError.Context) -> String {
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return path.isEmpty ? "the top level" : path
    }
}

/// Several bench runs of one operation as the plot's two panels: bus bandwidth, and each
/// run's time over the first run's.
struct BenchComparison {
    let op: BenchOperation
    let labels: [String]
    /// Per run, busbw against the input bytes per rank.
    let bandwidth: [PlotSeries]
    /// Per run, its time over the first run's at the sizes both measured.
    let ratios: BenchPlot.Ratios

    /// - Throws: ``FVDError/invalidArgument(_:)`` for no runs, a label count that is not the
    ///   run count, an unknown `op`, or a run without rows of it.
    init(runs: [BenchReport], labels: [String] = [], op: String? = nil, inPlace: Bool = false) throws {
        guard let first = runs.first else { throw FVDError.invalidArgument("give at least one fvd bench --json file") }
        guard labels.isEmpty || labels.count == runs.count else {
            throw FVDError.invalidArgument("\(labels.count) --label for \(runs.count) runs: give one per run, or none")
        }
        let chosen: BenchOperation
        if let op {
            guard let named = BenchOperation(rawValue: op) else {
                throw FVDError.invalidArgument(
                    "unknown --op '\(op)'; use one of \(BenchOperation.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            chosen = named
        } else {
            guard let firstRow = first.rows.first else { throw FVDError.invalidArgument("the first run has no rows") }
            chosen = firstRow.op
        }
        self.op = chosen
        let labels = labels.isEmpty ? runs.map(Self.defaultLabel) : labels
        self.labels = labels
        // Per run: input bytes per rank → the timing plotted.
        let timings = try runs.enumerated().map { index, run -> [(bytes: Int, timing: BenchTiming)] in
            let rows = run.rows.filter { $0.op == chosen }
            guard !rows.isEmpty else {
                let has = Set(run.rows.map(\.op.rawValue)).sorted().joined(separator: ", ")
                throw FVDError.invalidArgument("run \(index + 1) (\(labels[index])) has no \(chosen.rawValue) rows (it has: \(has))")
            }
            return rows.map { ($0.inputBytes, inPlace ? $0.inPlace ?? $0.outOfPlace : $0.outOfPlace) }
        }
        bandwidth = timings.enumerated().map { index, rows in
            PlotSeries(label: labels[index], points: rows.map { PlotPoint(bytes: $0.bytes, gigabytesPerSecond: $0.timing.busBandwidth) })
        }
        let baseline = Dictionary(timings[0].map { ($0.bytes, $0.timing.medianMicroseconds) }, uniquingKeysWith: { a, _ in a })
        ratios = BenchPlot.Ratios(
            series: timings.enumerated().map { index, rows in
                PlotSeries(
                    label: labels[index],
                    points: rows.compactMap { row in
                        guard let base = baseline[row.bytes], base > 0 else { return nil }
                        return PlotPoint(bytes: row.bytes, gigabytesPerSecond: row.timing.medianMicroseconds / base)
                    })
            },
            title: "time ÷ first run")
    }

    /// `fvd shm · 4 ranks · float32`; another library's transport name as it is.
    static func defaultLabel(_ run: BenchReport) -> String {
        let transport = switch run.transport {
        case "inprocess": "fvd in-process"
        case "shm": "fvd shared memory"
        case "mpi": "fvd MPI"
        default: run.transport
        }
        return "\(transport) · \(run.worldSize) ranks · \(run.dtype)"
    }

    var title: String { "\(op.rawValue): bus bandwidth, and time relative to \(labels[0])" }

    var subtitle: String { "message size per rank on the x axis; lower panel: time over \(labels[0])'s (below 1: faster)" }
}
