import Foundation
import Testing

@testable import FVDCommandLine

#if canImport(Glibc)
import Glibc
#endif

// MARK: Helpers

/// A number for `sleep` that no other test uses, so its processes can be found in /proc.
private func uniqueSleep() -> String { "29.\(Int.random(in: 100_000...999_999))" }

/// Whether `/dev/shm/<name>` exists.
private func shmExists(_ name: String) -> Bool {
    FileManager.default.fileExists(atPath: "/dev/shm/\(name)")
}

/// Creates `/dev/shm/<name>` with mode 0600, as `shm_open` would.
private func createShmEntry(_ name: String) throws {
    let fd = open("/dev/shm/\(name)", O_CREAT | O_RDWR, 0o600)
    try #require(fd >= 0, "cannot create /dev/shm/\(name): \(String(cString: strerror(errno)))")
    close(fd)
}

/// The `error:` lines of a run.
private func errors(_ result: ProcessResult) -> [String] {
    result.errorLines.filter { $0.hasPrefix("error:") }.map(String.init)
}

// MARK: Unit tests of the launcher's parts

@Suite("fvd launch: parts")
struct LaunchPartsTests {
    @Test("waitpid statuses decode and read like the error line")
    func childExit() {
        #expect(ChildExit(waitStatus: 0) == .exited(0))
        #expect(ChildExit(waitStatus: 3 << 8) == .exited(3))
        #expect(ChildExit(waitStatus: 9) == .signaled(9))
        #expect(ChildExit(waitStatus: 0x80 | 11) == .signaled(11))  // core dumped
        #expect(ChildExit.exited(0).succeeded)
        #expect(!ChildExit.exited(3).succeeded && !ChildExit.signaled(15).succeeded)
        #expect(LaunchOutcome.rankFailed(rank: 1, exit: .exited(3)).message == "rank 1 exited with status 3")
        #expect(LaunchOutcome.rankFailed(rank: 1, exit: .signaled(9)).message == "rank 1 was killed by signal 9 (SIGKILL)")
        #expect(LaunchOutcome.rankFailed(rank: 0, exit: .signaled(2)).message == "rank 0 was killed by signal 2 (SIGINT)")
        #expect(LaunchOutcome.succeeded.message == nil && LaunchOutcome.succeeded.exitStatus == 0)
        #expect(LaunchOutcome.interrupted(signal: SIGTERM).exitStatus == 1)
        #expect(signalName(SIGTERM) == "SIGTERM" && signalName(SIGSEGV) == "SIGSEGV" && signalName(64) == nil)
    }

    @Test("the job id, shared-memory name and rank environment")
    func environment() {
        let id = makeJobID(pid: 4242, random: 0xBEEF)
        #expect(id == "4242-0000beef")
        #expect(makeJobID(pid: 1, random: .max) == "1-ffffffff")
        #expect(sharedMemoryName(jobID: id) == "/fvd-4242-0000beef")
        let env = rankEnvironment(
            base: ["PATH": "/bin", "RANK": "stale"], rank: 2, worldSize: 4, masterPort: 29500, jobID: id, timeout: 2.5)
        #expect(env == [
            "PATH": "/bin", "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "FVD_JOB_ID": id,
            "FVD_SHM_NAME": "/fvd-4242-0000beef", "FVD_TIMEOUT": "2.5", "FVD_LAUNCHER_PID": String(getpid()),
        ])
        #expect(rankEnvironment(base: [:], rank: 0, worldSize: 1, masterPort: 1, jobID: id, timeout: nil)["FVD_TIMEOUT"] == nil)
        #expect(formatSeconds(300) == "300" && formatSeconds(0.25) == "0.25")
    }

    @Test("segment names: which belong to which launcher and job")
    func segmentNames() {
        #expect(segmentLauncherPID("fvd-999999-deadbeef") == 999_999)
        #expect(segmentLauncherPID("fvd-12-abc-r0") == 12)
        for name in ["fvd-port-29500", "fvd--abc", "fvd-12-", "fvd-12-xyz", "fvd-12-abcz", "other-12-abc", "fvd-0-ab", "fvd-99999999999-ab"] {
            #expect(segmentLauncherPID(name) == nil, "\(name)")
        }
        let names = ["fvd-10-aa", "fvd-11-bb", "fvd-10-cc-r1", "fvd-port-1", "x"]
        #expect(staleSegments(names) { $0 == 11 } == ["fvd-10-aa", "fvd-10-cc-r1"])
        #expect(jobSegments(["fvd-10-aa", "fvd-10-aa-r0", "fvd-10-aa.lock", "fvd-10-aab", "fvd-1-aa"], jobID: "10-aa")
            == ["fvd-10-aa", "fvd-10-aa-r0", "fvd-10-aa.lock"])
    }

    @Test("output is prefixed line by line; a last line without newline still comes out")
    func prefixer() {
        var p = LinePrefixer(rank: 3)
        #expect(p.consume("a\nb") == "[r3] a\n")
        #expect(p.consume("c") == "")
        #expect(p.consume("d\n\ne\n") == "[r3] bcd\n[r3] \n[r3] e\n")
        #expect(p.consume("tail") == "")
        #expect(String(decoding: p.finish(), as: UTF8.self) == "[r3] tail\n")
        #expect(p.finish().isEmpty)
        var long = LinePrefixer(prefix: "> ")
        long.maxLineLength = 4
        // An over-long line goes out unsplit: no newline added, no prefix in the middle.
        #expect(long.consume("abcdefghij") == "> abcdefghij")
        #expect(long.consume("kl\nmn\n") == "kl\n> mn\n")
        #expect(long.consume("abcdefgh") == "> abcdefgh")
        #expect(String(decoding: long.finish(), as: UTF8.self) == "\n")
    }

    @Test("shutdown: grace, then SIGTERM, then SIGKILL; a second signal skips the grace")
    func schedule() {
        var s = ShutdownSchedule(grace: 5, killAfter: 2)
        #expect(!s.hasBegun && s.signalDue(at: 100) == nil && s.nextDeadline == nil)
        s.begin(at: 10)
        s.begin(at: 12)  // a later failure does not move the deadline
        #expect(s.nextDeadline == 15)
        #expect(s.signalDue(at: 14.9) == nil)
        #expect(s.signalDue(at: 15) == SIGTERM)
        #expect(s.signalDue(at: 15.5) == nil && s.nextDeadline == 17)
        #expect(s.signalDue(at: 17) == SIGKILL)
        #expect(s.signalDue(at: 100) == nil && s.nextDeadline == nil)

        var hurried = ShutdownSchedule(grace: 5, killAfter: 2)
        hurried.begin(at: 10)
        hurried.hurry(at: 11)
        #expect(hurried.signalDue(at: 11) == SIGTERM)
        hurried.hurry(at: 12)  // SIGTERM was sent: SIGKILL stays 2 s after it
        #expect(hurried.signalDue(at: 12) == nil && hurried.signalDue(at: 13) == SIGKILL)
    }

    @Test("the command line: -n, options, and everything after -- goes to the program")
    func parsing() throws {
        let command = try LaunchCommand.parse(["-n", "3", "--timeout", "7", "--grace", "1", "--", "prog", "-n", "9", "--grace"])
        #expect(command.launchConfiguration == LaunchConfiguration(
            worldSize: 3, program: "prog", arguments: ["-n", "9", "--grace"], timeout: 7, grace: 1))
        let plain = try LaunchCommand.parse(["--nproc-per-node", "2", "echo", "hi"])
        #expect(plain.launchConfiguration == LaunchConfiguration(worldSize: 2, program: "echo", arguments: ["hi"]))
        let unprefixed = try LaunchCommand.parse(["-n", "1", "--no-prefix", "--", "echo"])
        #expect(!unprefixed.launchConfiguration.prefixOutput)
        for bad in [["-n", "0", "--", "true"], ["-n", "1025", "--", "true"], ["-n", "2"], ["-n", "2", "--"],
                    ["-n", "2", "--timeout", "0", "--", "true"], ["-n", "2", "--grace", "-1", "--", "true"]] {
            #expect(throws: (any Error).self, "\(bad)") { try LaunchCommand.parse(bad) }
        }
    }
}

// MARK: The launcher as a process

@Suite("fvd launch")
struct LaunchTests {
    @Test("every rank gets the torchrun environment and its output is prefixed")
    func environmentAndPrefixes() throws {
        let result = try runFVD([
            "launch", "-n", "3", "--timeout", "2.5", "--",
            "/bin/sh", "-c",
            "echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $FVD_SHM_NAME; "
                + "echo port=$MASTER_PORT job=$FVD_JOB_ID timeout=$FVD_TIMEOUT path=$PATH; echo to-stderr >&2; printf 'no newline'",
        ], timeout: 20)
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 9)
        let first = try #require(lines.first { $0.hasPrefix("[r0] 0 ") })
        let shmName = try #require(first.split(separator: " ").last.map(String.init))
        #expect(shmName.hasPrefix("/fvd-"))
        let jobID = String(shmName.dropFirst(5))
        let parts = jobID.split(separator: "-")
        #expect(parts.count == 2 && Int32(parts[0]) != nil && parts[1].count == 8 && parts[1].allSatisfy(\.isHexDigit), "\(jobID)")
        let ports = lines.compactMap { line in line.split(separator: " ").first { $0.hasPrefix("port=") }.map { Int($0.dropFirst(5)) } }
        #expect(ports.count == 3 && Set(ports).count == 1)  // one port, the same for every rank
        #expect(ports.first.flatMap { $0 }.map { (1...65535).contains($0) } == true)
        for rank in 0..<3 {
            #expect(lines.contains("[r\(rank)] \(rank) 3 \(rank) 3 127.0.0.1 \(shmName)"))
            #expect(lines.contains { $0.hasPrefix("[r\(rank)] port=") && $0.contains("job=\(jobID) timeout=2.5 path=\(ProcessInfo.processInfo.environment["PATH"] ?? "")") })
            #expect(lines.contains("[r\(rank)] no newline"))
            #expect(result.errorLines.contains("[r\(rank)] to-stderr"))
        }
        #expect(!shmExists(String(shmName.dropFirst())))
    }

    @Test("--no-prefix passes whole lines on as they are")
    func noPrefix() throws {
        let result = try runFVD(["launch", "-n", "2", "--no-prefix", "--", "sh", "-c", "echo line $RANK; echo err $RANK >&2; printf 'last'"], timeout: 20)
        #expect(result.status == 0)
        #expect(result.stdout.split(separator: "\n").sorted() == ["last", "last", "line 0", "line 1"])
        #expect(result.errorLines.sorted() == ["err 0", "err 1"])
    }

    @Test("a lot of output from every rank arrives whole, in order, and never blocks a rank")
    func manyLines() throws {
        let result = try runFVD(["launch", "-n", "2", "--", "sh", "-c", "seq 1 100000; seq 1 50000 >&2"], timeout: 60)
        #expect(result.status == 0)
        for rank in 0..<2 {
            let prefix = "[r\(rank)] "
            let out = result.stdout.split(separator: "\n").filter { $0.hasPrefix(prefix) }.map { Int($0.dropFirst(prefix.count))! }
            let err = result.errorLines.filter { $0.hasPrefix(prefix) }.map { Int($0.dropFirst(prefix.count))! }
            #expect(out == Array(1...100_000))
            #expect(err == Array(1...50_000))
        }
    }

    @Test("a failing rank ends the others after --grace and names the rank and its status")
    func failingRank() throws {
        let sleep = uniqueSleep()
        let result = try runFVD(["launch", "-n", "3", "--grace", "1", "--", "sh", "-c", "if [ $RANK = 1 ]; then exit 3; fi; sleep \(sleep)"], timeout: 20)
        #expect(result.status == 1)
        #expect(errors(result) == ["error: rank 1 exited with status 3"])
        #expect(result.seconds >= 0.9 && result.seconds < 4, "\(result.seconds) s")
        #expect(leftovers(withArgument: sleep).isEmpty)
    }

    @Test("ranks that exit on their own within the grace period are not waited for")
    func othersExitWithinGrace() throws {
        let result = try runFVD(["launch", "-n", "3", "--grace", "20", "--", "sh", "-c", "if [ $RANK = 2 ]; then exit 7; fi; sleep 0.3"], timeout: 20)
        #expect(result.status == 1)
        #expect(errors(result) == ["error: rank 2 exited with status 7"])
        #expect(result.seconds < 5, "\(result.seconds) s")
    }

    @Test("a rank that stopped only because another failed (status 2) is not the one named")
    func consequenceIsNotNamed() throws {
        let script = "if [ $RANK = 0 ]; then exit 2; fi; sleep 0.3; if [ $RANK = 1 ]; then exit 5; fi"
        let result = try runFVD(["launch", "-n", "3", "--", "sh", "-c", script], timeout: 20)
        #expect(result.status == 1)
        #expect(errors(result) == ["error: rank 1 exited with status 5"])
        let onlyConsequences = try runFVD(["launch", "-n", "2", "--", "sh", "-c", "exit 2"], timeout: 20)
        #expect(errors(onlyConsequences).count == 1 && errors(onlyConsequences)[0].hasSuffix("exited with status 2"))
    }

    @Test("a rank killed by a signal is reported with the signal's name")
    func killedRank() throws {
        let sleep = uniqueSleep()
        let result = try runFVD(["launch", "-n", "2", "--grace", "1", "--", "sh", "-c", "if [ $RANK = 1 ]; then kill -9 $$; fi; sleep \(sleep)"], timeout: 20)
        #expect(result.status == 1)
        #expect(errors(result) == ["error: rank 1 was killed by signal 9 (SIGKILL)"])
        #expect(result.seconds < 4, "\(result.seconds) s")
        #expect(leftovers(withArgument: sleep).isEmpty)
    }

    @Test("ranks that ignore SIGTERM are killed 2 s after it, and so are the processes they started")
    func stubbornRanks() throws {
        let sleep = uniqueSleep()
        let result = try runFVD(["launch", "-n", "2", "--grace", "0.2", "--", "sh", "-c",
                                 "if [ $RANK = 0 ]; then exit 1; fi; trap '' TERM; sleep \(sleep) & while :; do sleep 0.1; done"], timeout: 20)
        #expect(result.status == 1)
        #expect(errors(result) == ["error: rank 0 exited with status 1"])
        #expect(result.seconds >= 2 && result.seconds < 5, "\(result.seconds) s")
        #expect(leftovers(withArgument: sleep).isEmpty)
    }

    /// Starts `fvd launch -n 3 -- sh -c SCRIPT`, waits for every rank to print `ready <job id>`,
    /// sends `signal` to the launcher and returns the job id, the seconds until it ended, its
    /// exit status and its stderr.
    private func interruptLaunch(_ script: String, with signal: Int32) throws -> (jobID: String, seconds: Double, status: Int32, stderr: String) {
        let process = Process()
        process.executableURL = try fvdExecutable()
        process.arguments = ["launch", "-n", "3", "--", "sh", "-c", script]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = Mutexed(Data())
        let readers = DispatchGroup()
        readers.enter()
        DispatchQueue.global().async {
            let handle = out.fileHandleForReading
            while case let chunk = handle.availableData, !chunk.isEmpty { stdout.set(stdout.get() + chunk) }
            readers.leave()
        }
        let stderr = Mutexed(Data())
        readers.enter()
        DispatchQueue.global().async {
            stderr.set(err.fileHandleForReading.readDataToEndOfFile())
            readers.leave()
        }
        let readyBy = Date().addingTimeInterval(10)
        func readyLines() -> [Substring] { String(decoding: stdout.get(), as: UTF8.self).split(separator: "\n").filter { $0.contains("ready") } }
        while readyLines().count < 3, Date() < readyBy, process.isRunning { usleep(10_000) }
        #expect(readyLines().count == 3)
        let jobID = try #require(readyLines().first?.split(separator: " ").last.map(String.init))

        let start = Date()
        kill(process.processIdentifier, signal)
        let deadline = start.addingTimeInterval(5)
        while process.isRunning, Date() < deadline { usleep(5_000) }
        if process.isRunning {
            Issue.record("the launcher did not end within 5 s of \(signalName(signal)!)")
            process.terminate()
        }
        process.waitUntilExit()
        readers.wait()
        #expect(process.terminationReason == .exit)
        return (jobID, Date().timeIntervalSince(start), process.terminationStatus, String(decoding: stderr.get(), as: UTF8.self))
    }

    @Test("SIGINT, SIGTERM or SIGHUP to the launcher reaches every rank, ends the job quickly and cleans up",
          arguments: [SIGINT, SIGTERM, SIGHUP])
    func interrupt(_ signal: Int32) throws {
        let sleep = uniqueSleep()
        let run = try interruptLaunch("touch /dev/shm/fvd-$FVD_JOB_ID; echo ready $FVD_JOB_ID; exec sleep \(sleep)", with: signal)
        #expect(run.seconds < 3)
        #expect(run.status == 1)
        let lines = run.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("error: rank "), "\(run.stderr)")
        #expect(run.stderr.contains("was killed by signal \(signal) (\(signalName(signal)!))"), "\(run.stderr)")
        #expect(leftovers(withArgument: sleep).isEmpty)
        #expect(!shmExists("fvd-\(run.jobID)"))
    }

    @Test("a launcher that was sent SIGINT exits non-zero even when every rank then exits 0")
    func interruptHandledByRanks() throws {
        let run = try interruptLaunch("trap 'exit 0' INT; echo ready $FVD_JOB_ID; while :; do sleep 0.05; done", with: SIGINT)
        #expect(run.seconds < 3)
        #expect(run.status == 1)
        #expect(run.stderr == "error: stopped by SIGINT (every rank exited with status 0)\n")
    }

    @Test("segments of launchers that are gone are removed at start; others are left alone")
    func staleSegmentSweep() throws {
        let stale = "fvd-999999-deadbeef"  // above pid_max: never a live process
        let live = "fvd-\(getpid())-0badf00d"  // this test process is alive
        try createShmEntry(stale)
        try createShmEntry(live)
        defer { unlink("/dev/shm/\(live)"); unlink("/dev/shm/\(stale)") }
        let result = try runFVD(["launch", "-n", "1", "--", "true"], timeout: 20)
        #expect(result.status == 0)
        #expect(!shmExists(stale))
        #expect(shmExists(live))
    }

    @Test("the job's segment is gone after the job, whether it succeeded or failed", arguments: [0, 5])
    func jobSegmentRemoved(_ status: Int) throws {
        let result = try runFVD(["launch", "-n", "2", "--grace", "1", "--", "sh", "-c",
                                 "touch /dev/shm/fvd-$FVD_JOB_ID; echo $FVD_JOB_ID; exit \(status)"], timeout: 20)
        #expect(result.status == (status == 0 ? 0 : 1))
        let jobID = try #require(result.stdout.split(separator: "\n").first?.split(separator: " ").last.map(String.init))
        #expect(!jobID.isEmpty && !shmExists("fvd-\(jobID)"))
    }

    @Test("a program that cannot be started is one error line and status 1")
    func cannotStart() throws {
        let missing = try runFVD(["launch", "-n", "2", "--", "fvd-no-such-program", "x"], timeout: 20)
        #expect(missing.status == 1)
        #expect(missing.errorLines == ["error: cannot start fvd-no-such-program: No such file or directory"])
        let directory = try runFVD(["launch", "-n", "2", "--", "/"], timeout: 20)
        #expect(directory.status == 1)
        #expect(directory.errorLines == ["error: cannot start /: Permission denied"])
    }

    @Test("usage errors are one line and status 64", arguments: [
        ["launch", "-n", "0", "--", "true"], ["launch", "-n", "1025", "--", "true"], ["launch", "-n", "2"],
        ["launch", "--", "true"], ["launch", "-n", "2", "--timeout", "-1", "--", "true"],
    ])
    func usageErrors(_ arguments: [String]) throws {
        let result = try runFVD(arguments, timeout: 20)
        #expect(result.status == 64)
        #expect(result.errorLines.count == 1 && result.errorLines.first?.hasPrefix("error: ") == true, "\(result.stderr)")
    }
}
