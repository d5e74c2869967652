import FastVideoDistributed
import Foundation
import Testing

@testable import FVDCommandLine

/// The shared-memory objects in /dev/shm that jobs of this test process's launchers could leave.
private func leftoverSegments() -> [String] {
    listing(URL(fileURLWithPath: "/dev/shm")).filter { $0.hasPrefix("fvd-") }
}

/// `fvd launch -n W -- fvd ARGS…`.
private func launch(_ n: Int, _ arguments: [String], timeout: Double = 60) throws -> ProcessResult {
    try runFVD(["launch", "-n", "\(n)", "--", try fvdExecutable().path] + arguments, timeout: timeout)
}

@Suite("Shared-memory transport, one process per rank", .serialized)
struct SharedMemoryTests {
    @Test("every collective equals the in-process transport bitwise", arguments: [2, 3, 4])
    func selftest(worldSize n: Int) throws {
        let result = try launch(n, ["selftest"])
        #expect(result.status == 0, "\(result.stderr)")
        for rank in 0..<n {
            #expect(result.stdout.contains("[r\(rank)] selftest rank \(rank) of \(n) (shared memory)"), "\(result.stdout)")
        }
        #expect(leftoverSegments().filter { $0.hasPrefix("fvd-\(result.pid)-") }.isEmpty, "the job's segment was left behind")
    }

    @Test("send/recv, tensor dicts, objects, the uneven and grouped-query all-to-all, started collectives, ring passes and halo exchanges equal the in-process transport bitwise at W = 5…8", arguments: 5...8)
    func pointToPoint(worldSize n: Int) throws {
        let result = try launch(n, ["selftest", "--extras-only"])
        #expect(result.status == 0, "\(result.stderr)")
        for rank in 0..<n {
            #expect(result.stdout.contains("[r\(rank)] selftest rank \(rank) of \(n) (shared memory): 45 results equal"), "\(result.stdout)")
        }
    }

    @Test("a rank that never joins: the others time out naming it; SIGINT to the launcher ends all and removes the 0600 segment")
    func missingRankAndInterrupt() throws {
        let fvd = try fvdExecutable().path
        // Rank 1 never starts its world: rank 0 creates the segment and waits for it.
        let script = "if [ \"$RANK\" = 0 ]; then exec \(fvd) selftest --timeout 1; else sleep 30; fi"
        let timedOut = try runFVD(
            ["launch", "-n", "2", "--grace", "1", "--", "/bin/sh", "-c", script], timeout: 30, environment: ["FVD_JOIN_TIMEOUT": "1"])
        #expect(timedOut.status != 0)
        #expect(timedOut.stderr.contains("waited 1 s for rank(s) 1 to start"), "\(timedOut.stderr)")

        let process = Process()
        process.executableURL = URL(fileURLWithPath: fvd)
        process.arguments = ["launch", "-n", "2", "--", "/bin/sh", "-c", script.replacingOccurrences(of: "--timeout 1", with: "--timeout 60")]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let job = "fvd-\(process.processIdentifier)-"
        var segment: String?
        // Rank 0 first runs the selftest's reference (seconds under a sanitizer).
        for _ in 0..<1500 where segment == nil {
            usleep(20_000)
            segment = leftoverSegments().first { $0.hasPrefix(job) }
        }
        let name = try #require(segment, "rank 0 never created its segment")
        let attributes = try FileManager.default.attributesOfItem(atPath: "/dev/shm/\(name)")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let start = Date()
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(process.terminationStatus != 0)
        #expect(leftoverSegments().filter { $0.hasPrefix(job) }.isEmpty, "the job's segment was left behind")
    }

    @Test("fvd apply --transport shm writes FastVideo's bytes", arguments: ["a2a_21_sp4_float32", "tp_all_reduce_sum_tp3_float16", "a2a_21_sp3_bfloat16_safetensors"])
    func applyOverProcesses(_ name: String) throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/apply/\(name)")
        let args = try String(contentsOf: folder.appendingPathComponent("args"), encoding: .utf8)
            .split(whereSeparator: \.isWhitespace).map(String.init)
        let output = try temporaryFolder("apply-shm")
        defer { try? FileManager.default.removeItem(at: output) }
        let result = try runFVD(["apply"] + args + ["--transport", "shm", "--inputs", folder.appendingPathComponent("in").path, "--outputs", output.path])
        #expect(result.status == 0, "\(result.stderr)")
        for file in listing(folder.appendingPathComponent("expected")) {
            #expect(try Data(contentsOf: output.appendingPathComponent(file)) == Data(contentsOf: folder.appendingPathComponent("expected/\(file)")))
        }
        #expect(listing(output) == listing(folder.appendingPathComponent("expected")))
    }

    @Test("fvd apply --transport shm: a failure leaves no output")
    func applyFailure() throws {
        let input = try temporaryFolder("apply-in"), output = try temporaryFolder("apply-out")
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        for (rank, n) in [4, 5].enumerated() {
            try Tensor(zeros: [n], dtype: .float32).writeNPY(to: input.appendingPathComponent("rank\(rank).npy").path)
        }
        let result = try runFVD(["apply", "tensor_model_parallel_all_reduce", "--world-size", "2", "--transport", "shm",
                                 "--inputs", input.path, "--outputs", output.path], timeout: 30)
        #expect(result.status != 0)
        #expect(result.stderr.contains("ranks passed different shapes: rank 0 [4], rank 1 [5]"), "\(result.stderr)")
        #expect(listing(output).isEmpty)
    }

    @Test("fvd bench --transport shm runs the ranks as processes and reports transport shm")
    func bench() throws {
        let folder = try temporaryFolder("bench-shm")
        defer { try? FileManager.default.removeItem(at: folder) }
        let json = folder.appendingPathComponent("r.json")
        let result = try runFVD(["bench", "--transport", "shm", "--world-size", "3", "-b", "64K", "-e", "64K", "--warmup", "0", "--iters", "2", "--json", json.path])
        #expect(result.status == 0, "\(result.stderr)")
        // One row per op; the barrier has no sizes.
        let ops = BenchOperation.allCases.count
        #expect(result.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }.count == ops, "\(result.stdout)")
        let report = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: json))
        #expect(report.transport == "shm" && report.worldSize == 3 && report.rows.count == ops)
    }

    @Test("fvd demo --transport shm: the block on 4 processes matches one rank")
    func demo() throws {
        let result = try runFVD(["demo", "--transport", "shm"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("world 4 processes (shared memory): tp 2, sp 2"))
        #expect(result.stdout.contains("max abs error vs single-rank reference: 2.861e-06"))
        #expect(result.stdout.hasSuffix("PASS\n"))
    }

    @Test("fvd demo --transport shm --ring 2 --temporal-conv: USP attention and the halo-exchanged convolution on 4 processes match one rank")
    func demoRing() throws {
        let result = try runFVD([
            "demo", "--transport", "shm", "--world-size", "4", "--tp", "1", "--sp", "4", "--ring", "2", "--temporal-conv",
            "--frames", "8", "--height", "2", "--width", "4",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("sequence parallel 4 (ulysses 2 × ring 2)") && result.stdout.contains("ring_pass"))
        #expect(result.stdout.contains("halo_exchange") && result.stdout.hasSuffix("PASS\n"), "\(result.stdout)")
    }
}
