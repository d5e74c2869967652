import Foundation
import Testing

/// How the ranks of a matrix cell run.
enum MatrixTransport: String, CaseIterable, Sendable {
    /// `fvd selftest --in-process W`: W threads in one process.
    case inProcess = "in-process"
    /// `fvd launch -n W -- fvd selftest`: W processes joined by shared memory.
    case sharedMemory = "shm"
}

/// One failure of the matrix: what goes wrong, and what every rank must then report.
struct FailureCell: Sendable, CustomTestStringConvertible {
    var name: String
    var worldSize = 3
    /// Arguments of `fvd selftest`.
    var arguments: [String]
    var environment: [String: String] = [:]
    /// Per rank, a part of its error message; `nil` for a rank that succeeds.
    var errors: [String?]
    /// A rank whose process is gone (exit, kill): it prints nothing on a process transport.
    var gone: Int? = nil
    /// On a process transport, a part of `fvd launch`'s last line.
    var launcherError: String? = nil
    /// Seconds the whole run may take, process start included: far below the default
    /// 300 s timeout, so a rank that waits for a peer's timeout instead of seeing its
    /// failure fails the test; generous enough for a sanitizer build (10× slower).
    var bound: Double = 20

    var testDescription: String { "\(name) (W=\(worldSize))" }

    static func allRanks(_ message: String, _ n: Int = 3) -> [String?] { Array(repeating: message, count: n) }
}

/// Timeouts are 2 s: processes join (`waitForEveryRank`) before the first call, but the
/// host has 2 cores and runs sanitizer builds, so ranks still drift apart a little.
private let timedOut = "all_gather_in_place in group world [0, 1, 2] (call #4) timed out after 2 s waiting for rank 1; ranks 0, 2 arrived"

/// The matrix: every failure SPEC §6 names, rank 1 of 3 misbehaving, plus worlds of one.
/// A misbehaving rank makes every rank throw; a bad argument every rank passes too.
/// Call 4 of the selftest is an in-place all-gather; call 10 an all-gather; its case 3
/// (where mismatches happen) is an all-reduce of shape [1, 6, 6, 4].
let failureCells: [FailureCell] = [
    FailureCell(
        name: "shape mismatch", arguments: ["--mismatch", "shape"],
        errors: FailureCell.allRanks(
            "all_reduce in group world [0, 1, 2]: ranks passed different shapes: rank 0 [1, 6, 6, 4], rank 1 [1, 6, 6, 4, 1], rank 2 [1, 6, 6, 4]")),
    FailureCell(
        name: "dtype mismatch", arguments: ["--mismatch", "dtype"],
        errors: FailureCell.allRanks(
            "all_reduce in group world [0, 1, 2]: ranks passed different dtypes: rank 0 float32, rank 1 float64, rank 2 float32")),
    FailureCell(
        name: "a different operation", arguments: ["--mismatch", "op"],
        errors: FailureCell.allRanks(
            "group world [0, 1, 2]: ranks called different collectives at the same point: rank 0 all_reduce, rank 1 all_gather, rank 2 all_reduce")),
    FailureCell(
        name: "a different dim argument", arguments: ["--mismatch", "dim"],
        errors: FailureCell.allRanks(
            "all_gather in group world [0, 1, 2]: ranks passed different arguments: rank 0 (dim=0), rank 1 (dim=1), rank 2 (dim=0)")),
    FailureCell(
        name: "an invalid dim on one rank", arguments: ["--mismatch", "baddim"],
        errors: FailureCell.allRanks(
            "all_gather in group world [0, 1, 2]: ranks passed different arguments: rank 0 (dim=0), rank 1 (dim=9), rank 2 (dim=0)")),
    FailureCell(
        name: "a rank throws before its first collective", arguments: ["--fault", "fail:rank=1:call=0"],
        errors: [
            "rank 1 failed: injected failure on rank 1 at all_reduce in group world [0, 1, 2] (call #0)",
            "injected failure on rank 1 at all_reduce in group world [0, 1, 2] (call #0)",
            "rank 1 failed: injected failure on rank 1 at all_reduce in group world [0, 1, 2] (call #0)",
        ]),
    FailureCell(
        name: "a rank throws in the middle of a sequence", arguments: ["--fault", "fail:rank=1:call=10"],
        errors: [
            "rank 1 failed: injected failure on rank 1 at all_gather in group world [0, 1, 2] (call #10)",
            "injected failure on rank 1 at all_gather in group world [0, 1, 2] (call #10)",
            "rank 1 failed: injected failure on rank 1 at all_gather in group world [0, 1, 2] (call #10)",
        ]),
    FailureCell(
        name: "a rank exits", arguments: ["--fault", "exit=3:rank=1:call=10"],
        errors: FailureCell.allRanks("rank 1 exited while the others waited for it in all_gather in group world [0, 1, 2]"),
        gone: 1, launcherError: "error: rank 1 exited with status 3"),
    FailureCell(
        name: "a rank is killed (FVD_FAULTS)", arguments: [], environment: ["FVD_FAULTS": "kill:rank=1:call=10"],
        errors: FailureCell.allRanks("rank 1 exited while the others waited for it in all_gather in group world [0, 1, 2]"),
        gone: 1, launcherError: "error: rank 1 was killed by signal 9"),
    FailureCell(
        name: "a rank arrives late but within the timeout", arguments: ["--fault", "delay=1:rank=1:call=4", "--timeout", "10"],
        errors: [nil, nil, nil]),
    FailureCell(
        name: "a rank never arrives (FVD_TIMEOUT)", arguments: ["--fault", "delay=5:rank=1:call=4"],
        environment: ["FVD_TIMEOUT": "2"], errors: FailureCell.allRanks(timedOut), bound: 5 + 20),
    FailureCell(
        name: "a rank's arrival is dropped", arguments: ["--fault", "drop:rank=1:call=4", "--timeout", "2"],
        errors: FailureCell.allRanks(timedOut), bound: 2 + 20),
    FailureCell(
        name: "a rank's call header is corrupt", arguments: ["--fault", "corrupt:rank=1:call=4"],
        errors: FailureCell.allRanks(
            "group world [0, 1, 2]: ranks called different collectives at the same point: "
                + "rank 0 all_gather_in_place, rank 1 <corrupt header>, rank 2 all_gather_in_place")),
    FailureCell(
        name: "an unmatched recv at shutdown", arguments: ["--unmatched-recv"],
        errors: [nil, nil, "rank 0 exited while the others waited for it in recv in group world:0->2 [0, 2]"]),
    // A world of one: its collectives are local (they return the input), so they never
    // wait, never time out and never reach a fault; argument checks still throw.
    FailureCell(name: "one rank never waits, whatever the timeout", worldSize: 1, arguments: ["--timeout", "1e-9"], errors: [nil]),
    FailureCell(name: "one rank: a fault is never reached", worldSize: 1, arguments: ["--fault", "fail:rank=0:call=0"], errors: [nil]),
    FailureCell(
        name: "one rank passes an invalid dim", worldSize: 1, arguments: ["--mismatch", "baddim", "--mismatch-rank", "0"],
        errors: ["all_gather: dim 9 is out of range for a tensor with 4 dimensions (valid: -4...3)"]),
]

/// The shared-memory objects in /dev/shm of jobs that `fvd launch` process `pid` started.
private func segments(ofLauncher pid: Int32) -> [String] {
    listing(URL(fileURLWithPath: "/dev/shm")).filter { $0.hasPrefix("fvd-\(pid)-") }
}

@Suite("Failure matrix: every failure ends with a clear error on every rank, in bounded time, leaving nothing behind", .serialized)
struct FailureMatrixTests {
    @Test(arguments: MatrixTransport.allCases, failureCells)
    func cell(_ transport: MatrixTransport, _ cell: FailureCell) throws {
        let marker = "FVD_MATRIX_RUN=\(UUID().uuidString)"
        let fvd = try fvdExecutable().path
        let selftest = ["selftest", "--check-leaks"] + cell.arguments
        let arguments =
            transport == .inProcess
            ? selftest + ["--in-process", "\(cell.worldSize)"]
            : ["launch", "-n", "\(cell.worldSize)", "--", fvd] + selftest
        var environment = cell.environment
        environment["FVD_MATRIX_RUN"] = String(marker.dropFirst("FVD_MATRIX_RUN=".count))
        let result = try runFVD(arguments, timeout: 60, environment: environment)
        let log = "\(result.stdout)\n\(result.stderr)"

        let fails = cell.errors.contains { $0 != nil }
        #expect((result.status == 0) == !fails, "status \(result.status)\n\(log)")
        #expect(result.seconds < cell.bound, "took \(result.seconds) s, more than \(cell.bound) s")
        for (rank, message) in cell.errors.enumerated() {
            let prefix = "[r\(rank)] "
            let errorLines = result.stderr.split(separator: "\n").filter { $0.hasPrefix(prefix + "error: ") }
            if transport == .sharedMemory, rank == cell.gone {
                #expect(errorLines.isEmpty, "rank \(rank) is gone, yet: \(errorLines)")
                continue
            }
            if let message {
                #expect(errorLines.count == 1 && errorLines[0].contains(message), "rank \(rank): expected \(message)\n\(log)")
            } else {
                #expect(result.stdout.contains(prefix + "selftest rank \(rank) of \(cell.worldSize)"), "rank \(rank)\n\(log)")
            }
            if transport == .sharedMemory {
                #expect(result.stdout.contains(prefix + "leaks: none"), "rank \(rank)\n\(log)")
            }
        }
        if transport == .inProcess {
            #expect(result.stdout.split(separator: "\n").contains("leaks: none"), "\(log)")
        }
        if transport == .sharedMemory, let launcherError = cell.launcherError {
            #expect(result.errorLines.last?.contains(launcherError) == true, "\(log)")
        }
        #expect(segments(ofLauncher: result.pid).isEmpty, "shared memory left behind")
        #expect(processes(marked: marker).isEmpty, "processes left behind")
    }

    @Test("A rank that starts late is waited for at the join, not timed out by its first collective")
    func lateStartIsNotATimeout() throws {
        // Rank 1 starts 3 s after rank 0, with a 1 s collective timeout.
        let fvd = try fvdExecutable().path
        let script = "if [ \"$RANK\" = 1 ]; then sleep 3; fi; exec \"$0\" selftest --timeout 1"
        let result = try runFVD(["launch", "-n", "2", "--", "/bin/sh", "-c", script, fvd])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        for rank in 0..<2 { #expect(result.stdout.contains("[r\(rank)] selftest rank \(rank) of 2"), "\(result.stdout)") }
    }

    @Test("FVD_FLIGHT_RECORDER_DIR: every rank writes its last calls as JSON, the failed one last", arguments: MatrixTransport.allCases)
    func flightRecorderFiles(_ transport: MatrixTransport) throws {
        let folder = try temporaryFolder("flight")
        defer { try? FileManager.default.removeItem(at: folder) }
        let selftest = ["selftest", "--fault", "delay=5:rank=1:call=70", "--timeout", "2"]
        let arguments =
            transport == .inProcess
            ? selftest + ["--in-process", "3"] : ["launch", "-n", "3", "--", try fvdExecutable().path] + selftest
        let result = try runFVD(arguments, environment: ["FVD_FLIGHT_RECORDER_DIR": folder.path])
        #expect(result.status != 0)
        #expect(listing(folder) == ["rank0.json", "rank1.json", "rank2.json"], "\(result.stderr)")
        for rank in 0..<3 {
            struct Dump: Decodable {
                struct Record: Decodable {
                    var sequence: Int
                    var op: String
                    var status: String
                    var error: String?
                    var end: Double?
                }
                var rank: Int
                var capacity: Int
                var records: [Record]
            }
            let dump = try JSONDecoder().decode(Dump.self, from: Data(contentsOf: folder.appendingPathComponent("rank\(rank).json")))
            #expect(dump.rank == rank && dump.capacity == 64 && dump.records.count == 64)
            // The ring keeps calls 7...70, oldest first; 70 is the one that failed.
            #expect(dump.records.map(\.sequence) == Array(7...70))
            #expect(dump.records.dropLast().allSatisfy { $0.status == "completed" && $0.end != nil })
            let last = try #require(dump.records.last)
            #expect(last.status == "failed" && last.error?.contains("waiting for rank 1") == true, "\(last)")
        }
    }

    @Test("FVD_FLIGHT_RECORDER_STDERR=0 keeps the last calls off stderr, and still in FVD_FLIGHT_RECORDER_DIR; another value is named")
    func flightRecorderQuiet() throws {
        let folder = try temporaryFolder("flight-quiet")
        defer { try? FileManager.default.removeItem(at: folder) }
        let arguments = ["launch", "-n", "2", "--", try fvdExecutable().path, "selftest", "--fault", "fail:rank=1:call=5", "--timeout", "5"]
        let loud = try runFVD(arguments)
        #expect(loud.status != 0)
        #expect((loud.stdout + loud.stderr).contains("flight recorder of rank 0"), "\(loud.stdout)\n\(loud.stderr)")
        let quiet = try runFVD(arguments, environment: ["FVD_FLIGHT_RECORDER_STDERR": "0", "FVD_FLIGHT_RECORDER_DIR": folder.path])
        #expect(quiet.status != 0)
        #expect(!(quiet.stdout + quiet.stderr).contains("flight recorder of rank"), "\(quiet.stdout)\n\(quiet.stderr)")
        #expect(listing(folder) == ["rank0.json", "rank1.json"])
        let wrong = try runFVD(["selftest", "--in-process", "2"], environment: ["FVD_FLIGHT_RECORDER_STDERR": "quiet"])
        #expect(wrong.status == 1 && wrong.stderr.contains("FVD_FLIGHT_RECORDER_STDERR=quiet is not 0 or 1"), "\(wrong.stderr)")
    }
}

