import FastVideoDistributed
import Foundation
import Testing

@testable import FVDCommandLine

#if canImport(FoundationXML)
import FoundationXML
#endif

/// A timing of `microseconds` for `bytes` (busbw = algbw, as for a broadcast).
private func timing(_ bytes: Int, _ microseconds: Double) -> BenchTiming {
    let bandwidth = Double(bytes) / microseconds / 1e3
    return BenchTiming(
        medianMicroseconds: microseconds, minMicroseconds: microseconds, maxMicroseconds: microseconds,
        algorithmBandwidth: bandwidth, busBandwidth: bandwidth, percentOfCopyModel: 50)
}

/// A run of `op` with a time per input size (and an in-place time where given).
private func run(_ transport: String, world: Int = 2, op: BenchOperation = .allReduce, _ times: [(Int, Double, Double?)]) -> BenchReport {
    BenchReport(
        transport: transport, worldSize: world, dtype: .float32, warmup: 1, iterations: 5, rounds: 1,
        rows: times.map { bytes, time, inPlace in
            BenchRow(
                op: op, bytes: bytes, inputBytes: bytes, count: bytes / 4, dtype: .float32, outOfPlace: timing(bytes, time),
                inPlace: inPlace.map { timing(bytes, $0) }, copyModelBytes: bytes, memcpyBandwidth: 10)
        })
}

@Suite("fvd plot: several bench runs on one chart, with each run's time over the first's")
struct PlotCommandTests {
    @Test("each run's time over the first run's, at the sizes both measured; labels from transport, world size and dtype")
    func ratios() throws {
        let first = run("shm", [(1024, 2, nil), (4096, 4, nil), (16384, 8, nil)])
        let second = run("Open MPI v4.1.4", world: 4, [(1024, 3, nil), (4096, 2, nil), (65536, 9, nil)])
        let chart = try BenchComparison(runs: [first, second])
        #expect(chart.op == .allReduce)
        #expect(chart.labels == ["fvd shared memory · 2 ranks · float32", "Open MPI v4.1.4 · 4 ranks · float32"])
        #expect(chart.bandwidth.map(\.label) == chart.labels)
        #expect(chart.bandwidth[1].points.map(\.bytes) == [1024, 4096, 65536])
        #expect(chart.ratios.series[0].points.map(\.gigabytesPerSecond) == [1, 1, 1])
        // 65536 has no baseline: left out.
        #expect(chart.ratios.series[1].points.map(\.bytes) == [1024, 4096])
        #expect(chart.ratios.series[1].points.map(\.gigabytesPerSecond) == [1.5, 0.5])
    }

    @Test("--in-place plots the caller's-tensor form where a run measured it, else the other")
    func inPlace() throws {
        let fvd = run("shm", [(1024, 4, 2), (4096, 8, nil)])
        let mpi = run("Open MPI", [(1024, 3, nil), (4096, 4, nil)])
        let chart = try BenchComparison(runs: [fvd, mpi], labels: ["fvd", "mpi"], inPlace: true)
        #expect(chart.ratios.series[1].points.map(\.gigabytesPerSecond) == [1.5, 0.5])
        let outOfPlace = try BenchComparison(runs: [fvd, mpi], labels: ["fvd", "mpi"])
        #expect(outOfPlace.ratios.series[1].points.map(\.gigabytesPerSecond) == [0.75, 0.5])
    }

    @Test("--op picks the operation; no runs, a wrong label count, an unknown op and a run without it are named")
    func errors() throws {
        let reduce = run("shm", [(1024, 2, nil)])
        let gather = run("shm", op: .allGather, [(1024, 2, nil)])
        #expect(try BenchComparison(runs: [gather], op: "all_gather").op == .allGather)
        let cases: [(() throws -> BenchComparison, String)] = [
            ({ try BenchComparison(runs: []) }, "give at least one fvd bench --json file"),
            ({ try BenchComparison(runs: [reduce, reduce], labels: ["a"]) }, "1 --label for 2 runs"),
            ({ try BenchComparison(runs: [reduce], op: "all_to_all") }, "unknown --op 'all_to_all'"),
            ({ try BenchComparison(runs: [reduce, gather]) }, "run 2 (fvd shared memory · 2 ranks · float32) has no all_reduce rows (it has: all_gather)"),
        ]
        for (make, message) in cases {
            #expect { _ = try make() } throws: { String(describing: $0).contains(message) }
        }
    }

    @Test("a file that is not fvd-bench/1 JSON is named with what is wrong")
    func loading() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fvd-plot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let files: [(String, String, String)] = [
            ("mpi.json", #"{"schema": "mpi-bench/1", "rows": []}"#, "schema 'mpi-bench/1', not 'fvd-bench/1'"),
            ("text.json", "hello", "schema missing"),
            ("partial.json", #"{"schema": "fvd-bench/1", "transport": "shm", "rows": []}"#, "is missing at the top level"),
        ]
        for (name, text, message) in files {
            let path = folder.appendingPathComponent(name).path
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            #expect { _ = try PlotCommand.load(path) } throws: { String(describing: $0).contains(message) }
        }
        #expect { _ = try PlotCommand.load(folder.appendingPathComponent("absent.json").path) } throws: {
            String(describing: $0).contains("absent.json: cannot read it")
        }
        let good = folder.appendingPathComponent("run.json").path
        let report = run("shm", [(1024, 2, 1)])
        try report.json().write(to: URL(fileURLWithPath: good))
        #expect(try PlotCommand.load(good) == report)
    }

    @Test("fvd plot writes one well-formed SVG: a line per run in each panel, the ratio axis, the line at 1")
    func command() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fvd-plot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var paths: [String] = []
        for (index, transport) in ["shm", "inprocess", "Open MPI"].enumerated() {
            let path = folder.appendingPathComponent("run\(index).json").path
            try run(transport, [(1024, 2, nil), (4096, 3 + Double(index), nil)]).json().write(to: URL(fileURLWithPath: path))
            paths.append(path)
        }
        let output = folder.appendingPathComponent("cmp.svg").path
        let command = try #require(try FVDCommand.parseAsRoot(["plot"] + paths + ["-o", output, "--label", "a", "--label", "b", "--label", "c"]) as? PlotCommand)
        try command.run()
        let svg = try String(contentsOfFile: output, encoding: .utf8)
        #expect(XMLParser(data: Data(svg.utf8)).parse())
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 6)
        #expect(svg.contains("time ÷ first run"))
        #expect(svg.contains("stroke-dasharray=\"2 3\""))
        for label in ["a", "b", "c"] { #expect(svg.contains(">\(label)</text>")) }
    }
}
