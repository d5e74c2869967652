#if MPI
import FastVideoDistributed
import Foundation
import Testing

@testable import FVDCommandLine

/// `mpirun -n W fvd ARGS…`, as root if need be, ranks may outnumber the cores.
private func mpirun(_ n: Int, _ arguments: [String], timeout: Double = 120, environment: [String: String] = [:]) throws -> ProcessResult {
    try runProgram(
        URL(fileURLWithPath: "/usr/bin/env"),
        ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "\(n)", try fvdExecutable().path] + arguments,
        timeout: timeout, environment: environment.merging(["OMPI_MCA_btl_vader_single_copy_mechanism": "none"]) { $1 })
}

/// The hosts' shared-memory objects of MPI jobs (``MPIHost``) in /dev/shm now.
private func hostSegments() -> Set<String> {
    Set(((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { $0.hasPrefix("fvd-mpi-") })
}

/// The lines of `text` that report an error (`error: …`).
private func errorLines(_ text: String) -> [Substring] { text.split(separator: "\n").filter { $0.hasPrefix("error: ") } }

@Suite("MPI transport, ranks started by mpirun", .serialized)
struct MPITests {
    /// How the ranks are split into hosts: all on this one (every group shares memory),
    /// none sharing (every group sends MPI messages, as between hosts), or blocks of two
    /// ranks counted as hosts (groups that span "hosts" mix shared memory and messages).
    enum Hosts: String, CustomStringConvertible, CaseIterable {
        case oneHost = "one host", messagesOnly = "messages only", twoRanksPerHost = "two ranks per host"
        var environment: [String: String] {
            switch self {
            case .oneHost: [:]
            case .messagesOnly: ["FVD_MPI_SHARED_MEMORY": "0"]
            case .twoRanksPerHost: ["FVD_MPI_RANKS_PER_HOST": "2"]
            }
        }
        var description: String { rawValue }
    }

    @Test(
        "every collective equals the in-process transport bitwise: one host sharing memory, messages only, and groups that span hosts",
        arguments: [
            (2, Hosts.oneHost), (3, .oneHost), (4, .oneHost), (2, .messagesOnly), (3, .messagesOnly), (3, .twoRanksPerHost),
            (4, .twoRanksPerHost),
        ])
    func selftest(worldSize n: Int, hosts: Hosts) throws {
        let result = try mpirun(n, ["selftest"], environment: hosts.environment)
        #expect(result.status == 0, "\(result.stderr)")
        for rank in 0..<n {
            #expect(result.stdout.contains("selftest rank \(rank) of \(n) (MPI): "), "\(result.stdout)")
        }
    }

    @Test(
        "send/recv, tensor dicts, objects, the uneven and grouped-query all-to-all and started collectives equal the in-process transport bitwise at W = 5…8",
        arguments: [
            (5, Hosts.oneHost), (6, .oneHost), (7, .oneHost), (8, .oneHost), (5, .messagesOnly), (8, .messagesOnly),
            (5, .twoRanksPerHost), (8, .twoRanksPerHost),
        ])
    func pointToPoint(worldSize n: Int, hosts: Hosts) throws {
        let result = try mpirun(n, ["selftest", "--extras-only"], environment: hosts.environment)
        #expect(result.status == 0, "\(result.stderr)")
        for rank in 0..<n {
            #expect(result.stdout.contains("selftest rank \(rank) of \(n) (MPI): 45 results equal"), "\(result.stdout)")
        }
    }

    @Test("FVD_MPI_NATIVE_ALLREDUCE=1: all-reduces run as MPI_Allreduce and give the same results here (the selftest's values sum exactly in any order)")
    func nativeAllReduce() throws {
        let result = try mpirun(3, ["selftest"], environment: ["FVD_MPI_NATIVE_ALLREDUCE": "1"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.split(separator: "\n").filter { $0.contains("results equal the in-process transport") }.count == 3)
    }

    @Test(
        "fvd demo --transport mpi: the block on 4 MPI ranks matches one rank, to the same bits as the other transports",
        arguments: Hosts.allCases)
    func demo(hosts: Hosts) throws {
        let result = try mpirun(4, ["demo", "--transport", "mpi"], environment: hosts.environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("world 4 processes (MPI): tp 2, sp 2"))
        #expect(result.stdout.contains("max abs error vs single-rank reference: 2.861e-06"))
        #expect(result.stdout.hasSuffix("PASS\n"))
    }

    @Test("fvd apply --transport mpi writes FastVideo's bytes", arguments: ["a2a_21_sp4_float32", "tp_all_reduce_sum_tp3_float16", "a2a_21_sp3_bfloat16_safetensors"])
    func apply(_ name: String) throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/apply/\(name)")
        let args = try String(contentsOf: folder.appendingPathComponent("args"), encoding: .utf8)
            .split(whereSeparator: \.isWhitespace).map(String.init)
        let n = Int(args[args.firstIndex(of: "--world-size")! + 1])!
        let output = try temporaryFolder("apply-mpi")
        defer { try? FileManager.default.removeItem(at: output) }
        let result = try mpirun(n, ["apply"] + args + ["--transport", "mpi", "--inputs", folder.appendingPathComponent("in").path, "--outputs", output.path])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(listing(output) == listing(folder.appendingPathComponent("expected")))
        for file in listing(folder.appendingPathComponent("expected")) {
            #expect(try Data(contentsOf: output.appendingPathComponent(file)) == Data(contentsOf: folder.appendingPathComponent("expected/\(file)")))
        }
    }

    @Test("fvd bench --transport mpi reports transport mpi")
    func bench() throws {
        let folder = try temporaryFolder("bench-mpi")
        defer { try? FileManager.default.removeItem(at: folder) }
        let json = folder.appendingPathComponent("r.json")
        let result = try mpirun(2, ["bench", "--transport", "mpi", "--world-size", "2", "-b", "64K", "-e", "64K", "--warmup", "0", "--iters", "2", "--json", json.path])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: json))
        #expect(report.transport == "mpi" && report.worldSize == 2 && report.rows.count == BenchOperation.allCases.count)
    }

    @Test(
        "failures: every rank that sees the cause names it, and the job ends (MPI_Abort) well within the default timeout and leaves nothing in /dev/shm, on one host, over messages only and with groups that span hosts",
        arguments: [
            (["--mismatch", "shape"], 3,
             "all_reduce in group world [0, 1, 2]: ranks passed different shapes: rank 0 [1, 6, 6, 4], rank 1 [1, 6, 6, 4, 1], rank 2 [1, 6, 6, 4]"),
            (["--mismatch", "dim"], 3,
             "all_gather in group world [0, 1, 2]: ranks passed different arguments: rank 0 (dim=0), rank 1 (dim=1), rank 2 (dim=0)"),
            (["--fault", "corrupt:rank=1:call=4"], 3, "rank 0 all_gather_in_place, rank 1 <corrupt header>, rank 2 all_gather_in_place"),
            (["--fault", "fail:rank=1:call=10"], 1, "injected failure on rank 1 at all_gather in group world [0, 1, 2] (call #10)"),
            // A killed rank: mpirun ends the job (its peers may be stopped before they print;
            // its host's peers may see it gone first).
            (["--fault", "kill:rank=1:call=10"], 0, "rank 1 exited while the others waited for it in all_gather in group world [0, 1, 2]"),
            (["--fault", "delay=6:rank=1:call=4", "--timeout", "2"], 2,
             "all_gather_in_place in group world [0, 1, 2] (call #4) timed out after 2 s waiting for rank 1; ranks 0, 2 arrived"),
            // A rank that leaves its run (exit status 0) sends an exit notice before MPI_Finalize:
            // its peers name it at once, not at the 300 s timeout.
            (["--fault", "exit=0:rank=1:call=10"], 1, "rank 1 exited while the others waited for it in all_gather in group world [0, 1, 2]"),
            (["--fault", "drop:rank=1:call=4", "--timeout", "2"], 2,
             "all_gather_in_place in group world [0, 1, 2] (call #4) timed out after 2 s waiting for rank 1; ranks 0, 2 arrived"),
        ] as [([String], Int, String)])
    func failures(_ arguments: [String], _ reporters: Int, _ message: String) throws {
        for hosts in Hosts.allCases {
            try failure(arguments, reporters, message, environment: hosts.environment)
        }
    }

    private func failure(_ arguments: [String], _ reporters: Int, _ message: String, environment: [String: String]) throws {
        let before = hostSegments()
        let result = try mpirun(3, ["selftest"] + arguments, timeout: 60, environment: environment)
        #expect(hostSegments().subtracting(before).isEmpty, "left in /dev/shm: \(hostSegments().subtracting(before))")
        #expect(result.status != 0)
        #expect(result.seconds < 30, "took \(result.seconds) s")
        // MPI_Abort may stop a rank before it prints; at least `reporters` ranks named the cause.
        let lines = errorLines(result.stderr)
        #expect(lines.filter { $0.contains(message) }.count >= reporters, "\(result.stderr)")
        #expect(lines.allSatisfy { $0.contains(message) }, "\(result.stderr)")
    }

    @Test("a world of one under mpirun, --transport mpi with another world size, and a bad FVD_MPI_RANKS_PER_HOST are handled")
    func edges() throws {
        let one = try mpirun(1, ["selftest"])
        #expect(one.status == 0 && one.stdout.contains("selftest rank 0 of 1 (MPI)"), "\(one.stderr)")
        let wrongSize = try mpirun(2, ["demo", "--transport", "mpi", "--world-size", "4"])
        #expect(wrongSize.status != 0)
        #expect(errorLines(wrongSize.stderr).contains { $0.contains("--world-size is 4 but mpirun started 2 ranks") }, "\(wrongSize.stderr)")
        let badSplit = try mpirun(2, ["selftest"], environment: ["FVD_MPI_RANKS_PER_HOST": "zero"])
        #expect(badSplit.status != 0)
        #expect(errorLines(badSplit.stderr).contains { $0 == "error: FVD_MPI_RANKS_PER_HOST=zero is not a positive integer" }, "\(badSplit.stderr)")
    }
}
#endif
