import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Commands that used to end badly (issue: "thirty ways a user's command ends badly"):
// each must end with a clear error line, a status that means what it says, and nothing
// left behind.

/// Whether this test process (and so the fvd it runs, built alike) runs under ThreadSanitizer
/// or AddressSanitizer: their runtimes define these symbols.
private let isSanitized = ["__tsan_init", "__asan_init"].contains { (name: String) in dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) != nil }

/// The `error:` lines of a run.
private func errorLines(_ result: ProcessResult) -> [String] {
    result.errorLines.filter { $0.hasPrefix("error:") }.map(String.init)
}

/// Runs `script` with `sh -c`, `$FVD` set to the fvd executable.
private func runShell(_ script: String, timeout: Double = 60) throws -> ProcessResult {
    try runProgram(URL(fileURLWithPath: "/bin/sh"), ["-c", script], timeout: timeout, environment: ["FVD": try fvdExecutable().path])
}

/// A tiny bench run's arguments; `iterations` makes the processes findable.
private func tinyBench(iterations: Int = 1, _ extra: [String] = []) -> [String] {
    ["bench", "-b", "8", "-e", "8", "--op", "barrier", "--warmup", "0", "--iters", "\(iterations)"] + extra
}

@Suite("Hardening: output files and standard streams")
struct OutputHardeningTests {
    @Test("a --json path that is a character device is written through and stays a device")
    func characterDevice() throws {
        let folder = try temporaryFolder("device")
        defer { try? FileManager.default.removeItem(at: folder) }
        // A private copy of /dev/null (root only; the FIFO test covers the same path otherwise).
        let device = folder.appendingPathComponent("null").path
        let madeDevice = getuid() == 0 && mknod(device, S_IFCHR | 0o666, (1 << 8) | 3) == 0  // makedev(1, 3)
        let target = madeDevice ? device : "/dev/null"
        let result = try runFVD(tinyBench(["--json", target, "--csv", "/dev/null"]))
        #expect(result.status == 0, "\(result.stderr)")
        for path in [target, "/dev/null"] {
            var info = stat()
            #expect(stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFCHR, "\(path) is still a character device")
        }
        #expect(listing(folder) == (target == device ? ["null"] : []), "no temporary file left")
    }

    @Test("a FIFO gets the file's bytes; a symlink keeps being a link and its target is replaced")
    func fifoAndSymlink() throws {
        let folder = try temporaryFolder("fifo")
        defer { try? FileManager.default.removeItem(at: folder) }
        let fifo = folder.appendingPathComponent("pipe").path
        #expect(mkfifo(fifo, 0o600) == 0)
        let received = Mutexed(Data())
        let reader = DispatchGroup()
        reader.enter()
        DispatchQueue.global().async {
            received.set(FileHandle(forReadingAtPath: fifo)?.readDataToEndOfFile() ?? Data())
            reader.leave()
        }
        let target = folder.appendingPathComponent("target.csv"), link = folder.appendingPathComponent("link.csv")
        try Data("old".utf8).write(to: target)
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: "target.csv")
        let result = try runFVD(tinyBench(["--json", fifo, "--csv", link.path]))
        reader.wait()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: received.get(), as: UTF8.self).contains("\"schema\""))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link.path)) == "target.csv")
        #expect(String(decoding: try Data(contentsOf: target), as: UTF8.self).hasPrefix("op,size_bytes"))
        #expect(listing(folder) == ["link.csv", "pipe", "target.csv"])
    }

    @Test("--csv /dev/stdout writes the CSV into stdout after the table")
    func standardOutputPath() throws {
        let result = try runFVD(tinyBench(["--csv", "/dev/stdout"]))
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("# Avg bus bandwidth"))
        #expect(result.stdout.contains("\nop,size_bytes,"))
    }

    @Test("output names are checked before the run: empty, or two options naming one file")
    func outputNameClashes() throws {
        let folder = try temporaryFolder("clash")
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("a.json").path
        let clash = try runFVD(tinyBench(iterations: 1_000_000, ["--json", path, "--csv", folder.path + "/./a.json"]), timeout: 20)
        #expect(clash.status == 1)
        #expect(errorLines(clash) == ["error: --json and --csv name the same file \(folder.path)/./a.json; give each its own"])
        let empty = try runFVD(tinyBench(iterations: 1_000_000, ["--json", ""]), timeout: 20)
        #expect(empty.status == 1)
        #expect(errorLines(empty) == ["error: --json: the file name is empty"])
        #expect(listing(folder).isEmpty)
    }

    @Test("a closed or full stderr never crashes a command", arguments: ["2>&-", "2>/dev/full"])
    func unusableStandardError(_ redirection: String) throws {
        for command in ["demo --world-size 0", "bench -b 0", "apply nosuch", "launch -n 0 -- true"] {
            let result = try runShell("$FVD \(command) \(redirection)")
            #expect(result.status == 1 || result.status == 64, "\(command) \(redirection): status \(result.status)")
        }
    }

    @Test("stdout that cannot be written ends the command non-zero, with a reason on stderr")
    func fullStandardOutput() throws {
        let full = try runShell("$FVD \(tinyBench().joined(separator: " ")) > /dev/full")
        #expect(full.status == 1)
        #expect(errorLines(full) == ["error: cannot write to standard output: No space left on device"])
        let closed = try runShell("$FVD \(tinyBench().joined(separator: " ")) >&-")
        #expect(closed.status == 1)
        #expect(errorLines(closed) == ["error: cannot write to standard output: Bad file descriptor"])
    }
}

@Suite("Hardening: the launcher")
struct LauncherHardeningTests {
    @Test("with fds 0–2 closed, rank output is passed on, never read as signals")
    func closedStandardStreams() throws {
        let result = try runShell("$FVD launch -n 2 -- sh -c 'seq 1 20000 >&2' <&- >&-", timeout: 30)
        #expect(result.status == 0, "\(result.stderr.suffix(300))")
        #expect(result.errorLines.count == 40_000)
        #expect(!result.stderr.contains("signal"))
        let stdout = try runShell("$FVD launch -n 1 -- echo hi <&- >&-", timeout: 30)
        #expect(errorLines(stdout) == ["error: cannot write to standard output: Bad file descriptor"])
    }

    @Test("a line of 200 000 bytes comes out whole, with one prefix")
    func longLine() throws {
        let result = try runFVD(["launch", "-n", "1", "--", "sh", "-c", "head -c 200000 /dev/zero | tr '\\0' a; echo; echo next"], timeout: 30)
        #expect(result.status == 0)
        #expect(result.stdout == "[r0] " + String(repeating: "a", count: 200_000) + "\n[r0] next\n")
    }

    @Test("what the ranks leave running in the background ends with the job")
    func backgroundProcesses() throws {
        let sleep = "29.\(Int.random(in: 100_000...999_999))"
        let result = try runFVD(["launch", "-n", "2", "--", "sh", "-c", "sleep \(sleep) & echo hi"], timeout: 20)
        #expect(result.status == 0)
        #expect(leftovers(withArgument: sleep).isEmpty)
    }

    @Test("a rank that ends before joining the world is named at once, not after the join timeout")
    func rankEndsBeforeJoining() throws {
        let result = try runShell(
            "$FVD launch -n 3 -- sh -c 'if [ $RANK = 1 ]; then exit 0; fi; exec $FVD selftest'", timeout: 60)
        #expect(result.status == 1)
        #expect(errorLines(result).last == "error: rank 1 exited with status 0 while the other ranks still needed it (rank 0 then exited with status 2)"
            || errorLines(result).last == "error: rank 1 exited with status 0 while the other ranks still needed it (rank 2 then exited with status 2)",
            "\(result.stderr)")
        #expect(result.stderr.contains("rank 1 exited while the others waited for it in the join"))
        #expect(result.seconds < 60, "\(result.seconds) s")
    }

    @Test("the rank named is the one that caused the failure, not one the launcher ended")
    func blame() throws {
        let killed = try runShell(
            "FVD_JOIN_TIMEOUT=30 $FVD launch -n 3 --grace 0.5 -- sh -c 'if [ $RANK = 1 ]; then exit 2; fi; exec sleep 29.4242'", timeout: 30)
        #expect(errorLines(killed) == ["error: rank 1 exited with status 2"])
        let leftEarly = try runFVD(["launch", "-n", "2", "--", try fvdExecutable().path, "selftest"], timeout: 60,
                                   environment: ["FVD_FAULTS": "exit=0:rank=1:call=2"])
        #expect(leftEarly.status == 1)
        #expect(errorLines(leftEarly).last == "error: rank 1 exited with status 0 while the other ranks still needed it (rank 0 then exited with status 2)",
                "\(leftEarly.stderr)")
    }

    @Test("an in-process command under a launcher is refused: each rank would run a world of its own")
    func inProcessUnderLauncher() throws {
        let result = try runShell("$FVD launch -n 2 -- $FVD \(tinyBench().joined(separator: " "))", timeout: 30)
        #expect(result.status == 1)
        #expect(result.stderr.contains("this process is one of WORLD_SIZE=2 launched ranks, but --transport inprocess"))
    }

    @Test("Ctrl-C, timeout or kill of a shm command ends its launcher and ranks", arguments: ["INT", "TERM"])
    func signalToRelaunchedCommand(_ signal: String) throws {
        let iterations = Int.random(in: 100_000_000...900_000_000)
        let arguments = tinyBench(iterations: iterations, ["--transport", "shm"]).joined(separator: " ")
        let result = try runShell("timeout -s \(signal) 1.5 $FVD \(arguments)", timeout: 30)
        #expect(result.status != 0)
        #expect(leftovers(withArgument: "\(iterations)").isEmpty, "ranks still running after the signal")
        #expect(result.seconds < 10)
    }
}

@Suite("Hardening: timeouts")
struct TimeoutHardeningTests {
    @Test("an in-process rank delayed far past the timeout ends the job at the timeout", arguments: [
        ["demo", "--timeout", "2"], ["selftest", "--in-process", "4", "--timeout", "2"],
    ])
    func delayedRank(_ arguments: [String]) throws {
        // A delay of 1000 s: a job that waited for it would be killed at the runner's 120 s.
        // The bound leaves room for the reference world a sanitizer build runs slowly first.
        let result = try runFVD(arguments, timeout: 120, environment: ["FVD_FAULTS": "delay=1000:rank=2:call=3"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("timed out after 2 s waiting for rank 2"), "\(result.stderr)")
        #expect(result.seconds < 90, "\(result.seconds) s")
    }
}

@Suite("Hardening: ranks started without fvd launch (torchrun-style variables)")
struct UnlaunchedRankTests {
    /// A port no other test uses; the shared-memory object is `/dev/shm/fvd-port-<port>`.
    private let port = String(Int.random(in: 40_000...60_000))
    private var objectPath: String { "/dev/shm/fvd-port-\(port)" }

    /// `fvd selftest` as `rank` of `size`, started and not waited for.
    private func startRank(_ rank: Int, of size: Int, joinTimeout: String = "20") throws -> Process {
        let process = Process()
        process.executableURL = try fvdExecutable()
        process.arguments = ["selftest"]
        process.environment = ProcessInfo.processInfo.environment.merging(
            ["RANK": "\(rank)", "WORLD_SIZE": "\(size)", "MASTER_PORT": port, "FVD_JOIN_TIMEOUT": joinTimeout]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    private func runRank(_ rank: Int, of size: Int, joinTimeout: String = "20", extra: [String: String] = [:]) throws -> ProcessResult {
        try runFVD(["selftest"], timeout: 60, environment: [
            "RANK": "\(rank)", "WORLD_SIZE": "\(size)", "MASTER_PORT": port, "FVD_JOIN_TIMEOUT": joinTimeout,
        ].merging(extra) { $1 })
    }

    private func waitForObject() {
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: objectPath), Date() < deadline { usleep(5_000) }
    }

    @Test("a rank that fails at the join removes the object, so the next job on the port starts clean")
    func joinFailureLeavesNothing() throws {
        let alone = try runRank(0, of: 2, joinTimeout: "0.5")
        #expect(alone.status == 1)
        #expect(alone.stderr.contains("waited 0.5 s for rank(s) 1 to start"), "\(alone.stderr)")
        #expect(!FileManager.default.fileExists(atPath: objectPath))
    }

    @Test("the object of a job whose ranks were all killed is reclaimed by the next job")
    func staleObjectIsReclaimed() throws {
        let doomed = try startRank(0, of: 2)
        waitForObject()
        kill(doomed.processIdentifier, SIGKILL)
        doomed.waitUntilExit()
        #expect(FileManager.default.fileExists(atPath: objectPath), "the killed rank left its object")
        let other = try startRank(1, of: 2)
        let rank0 = try runRank(0, of: 2)
        other.waitUntilExit()
        #expect(rank0.status == 0, "\(rank0.stderr)")
        #expect(other.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: objectPath))
    }

    @Test("ranks that disagree on WORLD_SIZE, or a second job on a busy port, get an error that says so")
    func disagreeingRanks() throws {
        let first = try startRank(0, of: 2, joinTimeout: "3")
        waitForObject()
        let bigger = try runRank(1, of: 3)
        #expect(bigger.status == 1)
        #expect(bigger.errorLines.last?.hasPrefix("error: WORLD_SIZE differs between ranks: 3 here, 2 in shared-memory object \(objectPath)") == true,
                "\(bigger.stderr)")
        let sameRank = try runRank(0, of: 2)
        #expect(sameRank.status == 1)
        #expect(sameRank.stderr.contains("is in use: its rank 0 is pid \(first.processIdentifier), still running"), "\(sameRank.stderr)")
        first.waitUntilExit()
        #expect(first.terminationStatus == 1)
        #expect(!FileManager.default.fileExists(atPath: objectPath))
    }

    @Test("WORLD_SIZE without RANK is an error, not rank 0")
    func missingRank() throws {
        let result = try runFVD(["selftest"], timeout: 30, environment: ["WORLD_SIZE": "2", "MASTER_PORT": port])
        #expect(result.status == 1)
        #expect(result.errorLines.last == "error: WORLD_SIZE=2 is set but RANK is not: set RANK (0...1) for every rank, or start them with fvd launch")
        #expect(!FileManager.default.fileExists(atPath: objectPath))
    }
}

@Suite("Hardening: memory")
struct MemoryHardeningTests {
    @Test("sizes that cannot fit are refused up front, naming what they need and what there is", arguments: [
        ["bench", "-b", "64G", "-e", "64G", "--op", "all_reduce"],
        ["bench", "-b", "64G", "-e", "64G", "--op", "all_reduce", "--transport", "shm"],
        ["bench", "-b", "16G", "-e", "16G", "--op", "all_gather"],
        ["demo", "--heads", "1000"],
    ])
    func tooLarge(_ arguments: [String]) throws {
        let result = try runFVD(arguments, timeout: 30)
        #expect(result.status == 1)
        let line = try #require(errorLines(result).last)
        #expect(line.contains("of memory, but ") && line.hasSuffix("is available (MemAvailable in /proc/meminfo)"), "\(result.stderr)")
        #expect(result.seconds < 10)
    }

    @Test("a selftest rank's memory does not grow with the world: only rank 0 runs the W-thread reference")
    func selftestMemory() throws {
        let result = try runFVD(["launch", "-n", "4", "--", try fvdExecutable().path, "selftest", "--print-peak-memory"], timeout: 240)
        #expect(result.status == 0, "\(result.stderr.suffix(500))")
        let peaks = result.stdout.split(separator: "\n").filter { $0.contains("peak memory:") }.compactMap { line -> (String, Int)? in
            guard let value = line.split(separator: " ").dropLast().last.flatMap({ Int($0) }) else { return nil }
            return (String(line.prefix(5)), value)
        }
        #expect(peaks.count == 4)
        // Ranks 1…3 ran the reference world too before: 340 MiB each at W = 4 in a debug build
        // (760 at W = 8, 1.6 GiB in a release build), against 70 MiB now. A sanitizer's shadow
        // memory adds about 100–200 MiB to every rank (95–260 MiB seen, by load).
        let limit = isSanitized ? 350 : 200
        for (rank, mebibytes) in peaks where rank != "[r0] " {
            #expect(mebibytes < limit, "\(rank)peak \(mebibytes) MiB")
        }
    }
}
