import ArgumentParser
import FastVideoDistributed
import Foundation

/// `fvd bench`: nccl-tests-style timing of the collectives, with a memcpy baseline.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the collectives over a range of sizes (nccl-tests style) beside memcpy of the same bytes.",
        discussion: """
            Sizes (-b, -e) are bytes of each rank's input. Columns follow nccl-tests: size (all_gather: the \
            gathered output), count, dtype, median time, algbw = size / time and busbw = algbw × the op's bus \
            factor (all_reduce 2(n-1)/n, the others (n-1)/n). 'memcpy' is the bandwidth of every rank copying \
            its copy-model bytes at once in the same run, and 'model%' the collective's time as a percentage \
            of that copy (100% = as fast as a perfect implementation on this host). Build with -c release.
            """
    )

    @Option(help: "all_reduce, all_gather, reduce_scatter, all_to_all_4d or all.")
    var op: String = "all"
    @Option(name: .customLong("world-size"), help: "Number of in-process ranks.")
    var worldSize: Int = 2
    @Option(help: "Element type.")
    var dtype: String = "float32"
    @Option(name: .customShort("b"), help: "Smallest per-rank size in bytes (K, M, G suffixes).")
    var minBytes: String = "8K"
    @Option(name: .customShort("e"), help: "Largest per-rank size in bytes.")
    var maxBytes: String = "64M"
    @Option(name: .customShort("f"), help: "Multiplication factor between sizes.")
    var factor: Int = 2
    @Option(help: "Untimed iterations before timing.")
    var warmup: Int = 5
    @Option(help: "Timed iterations; the median is reported.")
    var iters: Int = 20

    func run() throws {
        do {
            var config = BenchConfiguration()
            config.worldSize = worldSize
            guard let d = DType(name: dtype) else { throw FVDError.invalidArgument("unknown dtype '\(dtype)'") }
            config.dtype = d
            config.minBytes = try parseByteSize(minBytes)
            config.maxBytes = try parseByteSize(maxBytes)
            config.factor = factor
            config.warmup = warmup
            config.iterations = iters
            if op != "all" {
                guard let o = BenchOperation(rawValue: op) else {
                    throw FVDError.invalidArgument(
                        "unknown op '\(op)'; use one of \(BenchOperation.allCases.map(\.rawValue).joined(separator: ", ")) or all")
                }
                config.operations = [o]
            }
            let interactive = isatty(STDERR_FILENO) != 0
            print("# fvd bench: in-process transport, world size \(worldSize), \(d), median of \(iters) iterations after \(warmup) warmup")
            print(BenchTable.header)
            let rows = try runBenchmark(config) { message in
                if interactive { FileHandle.standardError.write(Data("\r\u{1B}[K  running \(message)...".utf8)) }
            }
            if interactive { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            for row in rows { print(BenchTable.line(row)) }
            let average = rows.map(\.busBandwidth).reduce(0, +) / Double(max(rows.count, 1))
            print("# Avg bus bandwidth    : \(String(format: "%.3f", average)) GB/s")
        } catch let error as FVDError {
            printError(error)
            throw ExitCode.failure
        }
    }
}

/// Formatting of the nccl-tests-style table.
enum BenchTable {
    static let header = [
        pad("size", 12), pad("count", 11), pad("type", 9), pad("op", 15), pad("time(us)", 11),
        pad("algbw(GB/s)", 12), pad("busbw(GB/s)", 12), pad("memcpy(GB/s)", 13), pad("model%", 8),
    ].joined()

    static func line(_ r: BenchRow) -> String {
        [
            pad("\(r.bytes)", 12), pad("\(r.count)", 11), pad(r.dtype.rawValue, 9), pad(r.op.rawValue, 15),
            pad(String(format: "%.1f", r.medianMicroseconds), 11), pad(String(format: "%.2f", r.algorithmBandwidth), 12),
            pad(String(format: "%.2f", r.busBandwidth), 12), pad(String(format: "%.2f", r.memcpyBandwidth), 13),
            pad(String(format: "%.0f", r.percentOfCopyModel), 8),
        ].joined()
    }

    private static func pad(_ s: String, _ width: Int) -> String {
        String(repeating: " ", count: max(1, width - s.count)) + s
    }
}

/// Parses `1048576`, `64K`, `1M`, `2G` (powers of 1024).
func parseByteSize(_ text: String) throws -> Int {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    var digits = text.uppercased()
    var scale = 1
    if let last = digits.last, let unit = units[last] {
        scale = unit
        digits.removeLast()
    }
    guard let value = Int(digits), value > 0 else {
        throw FVDError.invalidArgument("invalid size '\(text)'; use bytes with an optional K, M or G suffix")
    }
    let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
    guard !overflow, bytes <= 1 << 40 else { throw FVDError.invalidArgument("size '\(text)' is larger than 1T") }
    return bytes
}

/// Prints a library error as one line on stderr.
func printError(_ error: any Error) {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
}
