import FastVideoDistributed
import Foundation
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif

@testable import FVDCommandLine

@Suite("fvd bench")
struct BenchCommandTests {
    @Test("a run writes JSON with the documented keys, CSV, an SVG and an HTML plot")
    func writesOutputs() throws {
        let folder = try temporaryFolder("bench")
        defer { try? FileManager.default.removeItem(at: folder) }
        let json = folder.appendingPathComponent("r.json"), csv = folder.appendingPathComponent("r.csv")
        let svg = folder.appendingPathComponent("r.svg"), html = folder.appendingPathComponent("r.html")
        let result = try runFVD([
            "bench", "--world-size", "3", "-b", "8K", "-e", "32K", "-f", "2", "--warmup", "0", "--iters", "1",
            "--json", json.path, "--csv", csv.path, "--plot", svg.path,
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.isEmpty, "no progress noise when stderr is not a terminal: \(result.stderr)")
        // Three sizes of every op but the barrier, which has one row of size 0.
        let rowCount = (BenchOperation.allCases.count - 1) * 3 + 1
        let tableLines = result.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }
        #expect(tableLines.count == rowCount)
        #expect(result.stdout.contains("# Avg bus bandwidth"))

        // JSON: the documented keys, one row per (op, size), in-place only where it exists.
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any])
        #expect(Set(document.keys) == ["schema", "transport", "world_size", "dtype", "warmup", "iterations", "rounds", "rows", "avg_busbw_gbps"])
        #expect(document["schema"] as? String == "fvd-bench/1")
        #expect(document["world_size"] as? Int == 3)
        let rows = try #require(document["rows"] as? [[String: Any]])
        #expect(rows.count == rowCount)
        let timingKeys: Set = ["time_us", "time_us_min", "time_us_max", "algbw_gbps", "busbw_gbps", "percent_of_copy_model"]
        for row in rows {
            let op = try #require(row["op"] as? String)
            let keys: Set = ["op", "size_bytes", "input_bytes", "count", "dtype", "out_of_place", "copy_model_bytes", "memcpy_gbps"]
            let hasInPlace = !["barrier", "ring_pass", "halo_exchange"].contains(op)
            #expect(Set(row.keys) == keys.union(hasInPlace ? ["in_place"] : []), "\(op): \(row.keys.sorted())")
            let timing = try #require(row["out_of_place"] as? [String: Any])
            #expect(Set(timing.keys) == timingKeys)
            let min = try #require(timing["time_us_min"] as? Double), median = try #require(timing["time_us"] as? Double)
            #expect(min > 0 && min <= median)
        }
        let decoded = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: json))
        #expect(decoded.rows.map(\.inputBytes).prefix(3) == [8192, 16384, 32768])
        // As in nccl-tests, all_gather's size is the gathered output, kept within -b…-e: whole elements × 3 ranks.
        #expect(decoded.rows.filter { $0.op == .allGather }.map(\.bytes) == [8196, 16380, 32760])

        // CSV: a header and a line per row, all of the same width.
        let csvLines = try String(contentsOf: csv, encoding: .utf8).split(separator: "\n")
        #expect(csvLines.count == rowCount + 1)
        let width = csvLines[0].split(separator: ",", omittingEmptySubsequences: false).count
        #expect(csvLines.allSatisfy { $0.split(separator: ",", omittingEmptySubsequences: false).count == width })

        // The SVG parses as XML and names every op.
        let svgText = try String(contentsOf: svg, encoding: .utf8)
        #expect(XMLParser(data: Data(svgText.utf8)).parse())
        for op in BenchOperation.allCases { #expect(svgText.contains(op.rawValue)) }

        let htmlRun = try runFVD(["bench", "--op", "all_to_all_4d", "-b", "8K", "-e", "8K", "--iters", "1", "--warmup", "0", "--plot", html.path])
        #expect(htmlRun.status == 0, "\(htmlRun.stderr)")
        let htmlText = try String(contentsOf: html, encoding: .utf8)
        #expect(htmlText.contains("<svg") && htmlText.contains("all_to_all_4d"))
    }

    @Test("every op runs from 8 bytes (the all-to-all as [1, 1, n, 1]); rounds and the ping-pong's half round trip are reported")
    func smallSizes() throws {
        let folder = try temporaryFolder("bench-small")
        defer { try? FileManager.default.removeItem(at: folder) }
        let json = folder.appendingPathComponent("r.json")
        let result = try runFVD([
            "bench", "-b", "8", "-e", "8", "--warmup", "1", "--iters", "3", "--rounds", "2", "--json", json.path,
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: json))
        #expect(report.rounds == 2 && report.rows.count == BenchOperation.allCases.count)
        for row in report.rows {
            let expected = row.op == .barrier ? 0 : 8
            #expect(row.bytes == expected, "\(row.op)")
            #expect(row.outOfPlace.medianMicroseconds > 0 && row.outOfPlace.minMicroseconds <= row.outOfPlace.medianMicroseconds)
        }
        let a2a = try #require(report.rows.first { $0.op == .allToAll4D })
        #expect(a2a.count == 2, "[1, 1, 2, 1]")
    }

    @Test(
        "bad options are one-line errors",
        arguments: [
            (["--op", "gather"], "unknown op 'gather'"),
            (["--op", "sendrecv", "--world-size", "1"], "sendrecv needs a world of at least 2 ranks"),
            (["--rounds", "0"], "iterations and rounds must be >= 1"),
            (["--dtype", "float8"], "unknown dtype 'float8'"),
            (["-b", "1M", "-e", "4K"], "need 1 <= -b <= -e"),
            (["-b", "12Q"], "invalid size '12Q'"),
            (["--plot", "out.png"], "must end in .svg or .html"),
            (["--transport", "nccl"], "unknown transport 'nccl'; use 'inprocess', 'shm' or 'mpi'"),
            (["--transport", "mpi"], mpiUnavailableOrNotUnderMPIRun),
            (["--world-size", "0"], "world size must be at least 1"),
            (["--json", "/nonexistent-folder/r.json"], "--json: its folder /nonexistent-folder does not exist"),
        ] as [([String], String)]
    )
    func badOptions(_ arguments: [String], _ message: String) throws {
        let result = try runFVD(["bench", "--iters", "1", "--warmup", "0", "-b", "4K", "-e", "4K"] + arguments, timeout: 20)
        #expect(result.status != 0)
        #expect(result.errorLines.count == 1 && result.stderr.contains(message), "\(result.stderr)")
    }
}
