import FastVideoDistributed
import Foundation

/// The text forms of a ``BenchReport``: the nccl-tests-style table, CSV, JSON and the plot's series.
extension BenchReport {
    /// The table header: per op and size, out-of-place then in-place columns, then the memcpy bound.
    static let tableHeader = [
        "#" + pad("", 52) + pad("out-of-place", 33) + pad("in-place", 33),
        "#" + pad("size", 11) + pad("count", 11) + pad("type", 9) + pad("op", 15) + pad("redop", 6)
            + [String](repeating: [pad("time", 10), pad("algbw", 8), pad("busbw", 8), pad("model%", 7)].joined(), count: 2).joined()
            + pad("memcpy", 8),
        "#" + pad("(B)", 11) + pad("(elements)", 11) + pad("", 30)
            + [String](repeating: [pad("(us)", 10), pad("(GB/s)", 8), pad("(GB/s)", 8), pad("", 7)].joined(), count: 2).joined()
            + pad("(GB/s)", 8),
    ].joined(separator: "\n")

    /// One table line.
    static func tableLine(_ r: BenchRow) -> String {
        let placements = [r.outOfPlace, r.inPlace].map { t -> String in
            guard let t else { return [pad("n/a", 10), pad("n/a", 8), pad("n/a", 8), pad("n/a", 7)].joined() }
            // Latencies keep two decimals: 0.29 and 0.35 µs must not both read 0.3.
            return [
                pad(String(format: t.medianMicroseconds < 10 ? "%.2f" : "%.1f", t.medianMicroseconds), 10), pad(String(format: "%.2f", t.algorithmBandwidth), 8),
                pad(String(format: "%.2f", t.busBandwidth), 8), pad(String(format: "%.0f", t.percentOfCopyModel), 7),
            ].joined()
        }
        let redop = (r.op == .allReduce || r.op == .reduceScatter) ? "sum" : "none"
        return " " + pad("\(r.bytes)", 11) + pad("\(r.count)", 11) + pad(r.dtype.rawValue, 9) + pad(r.op.rawValue, 15)
            + pad(redop, 6) + placements.joined() + pad(String(format: "%.2f", r.memcpyBandwidth), 8)
    }

    /// The last line, as nccl-tests prints it.
    var averageLine: String { "# Avg bus bandwidth    : \(String(format: "%.3f", averageBusBandwidth)) GB/s" }

    /// The JSON document (`--json`): stable snake_case keys, sorted, pretty-printed.
    func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// The CSV table (`--csv`): a header and one line per row; in-place cells are empty when not measured.
    func csv() -> String {
        let timingColumns = ["time_us", "time_us_min", "time_us_max", "algbw_gbps", "busbw_gbps", "percent_of_copy_model"]
        let header = ["op", "size_bytes", "input_bytes", "count", "dtype", "world_size"]
            + timingColumns.map { "out_of_place_\($0)" } + timingColumns.map { "in_place_\($0)" }
            + ["copy_model_bytes", "memcpy_gbps"]
        func cells(_ t: BenchTiming?) -> [String] {
            guard let t else { return Array(repeating: "", count: timingColumns.count) }
            return [t.medianMicroseconds, t.minMicroseconds, t.maxMicroseconds, t.algorithmBandwidth, t.busBandwidth, t.percentOfCopyModel]
                .map { String(format: "%.4f", $0) }
        }
        let lines = rows.map { r in
            ([r.op.rawValue, "\(r.bytes)", "\(r.inputBytes)", "\(r.count)", r.dtype.rawValue, "\(worldSize)"]
                + cells(r.outOfPlace) + cells(r.inPlace) + ["\(r.copyModelBytes)", String(format: "%.4f", r.memcpyBandwidth)])
                .joined(separator: ",")
        }
        return ([header.joined(separator: ",")] + lines).joined(separator: "\n") + "\n"
    }

    /// The plot's lines: per op, out-of-place busbw against the input size per rank, and
    /// the in-place form (where measured) dashed in the same colour.
    func plotSeries() -> [PlotSeries] {
        let ops = rows.map(\.op).reduce(into: [BenchOperation]()) { if !$0.contains($1) { $0.append($1) } }
        let outOfPlace = ops.enumerated().map { i, op in
            PlotSeries(
                label: op.rawValue,
                points: rows.filter { $0.op == op }.map { PlotPoint(bytes: $0.inputBytes, gigabytesPerSecond: $0.outOfPlace.busBandwidth) },
                colorIndex: i)
        }
        let inPlace = ops.enumerated().compactMap { i, op -> PlotSeries? in
            let points = rows.filter { $0.op == op }.compactMap { row in
                row.inPlace.map { PlotPoint(bytes: row.inputBytes, gigabytesPerSecond: $0.busBandwidth) }
            }
            return points.isEmpty ? nil : PlotSeries(label: "\(op.rawValue) (in-place)", points: points, dashed: true, colorIndex: i)
        }
        return outOfPlace + inPlace
    }

    /// The plot's title and subtitle.
    var plotTitles: (title: String, subtitle: String) {
        ("fvd bench: bus bandwidth vs message size",
         "\(transport) transport, world size \(worldSize), \(dtype), median of \(iterations) iterations"
            + (rounds > 1 ? " × \(rounds) rounds" : "") + "; dashed: in-place")
    }
}

private func pad(_ s: String, _ width: Int) -> String {
    String(repeating: " ", count: max(1, width - s.count)) + s
}
