import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Cells of the failure matrix beyond a rank's own failure: the launcher killed, a rank
// stalled inside a call. Each must end every surviving process, in bounded time, with
// nothing left in /dev/shm.

/// Waits up to `seconds` until `condition` holds; returns whether it did.
private func eventually(within seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() > deadline { return false }
        usleep(20_000)
    }
    return true
}

@Suite("Failure matrix: the launcher and stalled ranks")
struct ReliabilityCellTests {
    @Test("a launcher killed with SIGKILL takes its ranks with it within 5 s, leaving /dev/shm clean")
    func launcherKilled() throws {
        let iterations = "\(Int.random(in: 100_000_000...900_000_000))"
        let fvd = try fvdExecutable()
        let launcher = Process()
        launcher.executableURL = fvd
        launcher.arguments = ["launch", "-n", "2", "--", fvd.path, "bench", "--transport", "shm", "-b", "8", "-e", "8",
                              "--op", "all_reduce", "--warmup", "0", "--iters", iterations]
        launcher.standardOutput = FileHandle.nullDevice
        launcher.standardError = FileHandle.nullDevice
        try launcher.run()
        #expect(eventually(within: 20) { processes(withArgument: iterations).count == 3 }, "the launcher and both ranks run")
        usleep(300_000)  // into the collectives
        kill(launcher.processIdentifier, SIGKILL)
        launcher.waitUntilExit()
        #expect(eventually(within: 5) { processes(withArgument: iterations).isEmpty }, "ranks still running 5 s after the launcher died")
        let prefix = "fvd-\(launcher.processIdentifier)-"
        #expect(listing(URL(fileURLWithPath: "/dev/shm")).filter { $0.hasPrefix(prefix) }.isEmpty)
    }

    @Test("a rank stopped inside a call (SIGSTOP) makes the others throw a stall naming it; the job ends, nothing left")
    func stalledRank() throws {
        let marker = UUID().uuidString
        let fvd = try fvdExecutable()
        let result = try runFVD(["launch", "-n", "2", "--grace", "1", "--", fvd.path, "selftest", "--timeout", "2"], timeout: 60,
                                environment: ["FVD_FAULTS": "stall:rank=1:call=28", "FVD_STALL_TEST": marker])
        #expect(result.status == 1)
        #expect(result.stderr.contains("[r0] error: all_reduce in group world [0, 1] (call #28) timed out after 2 s: rank 1 arrived but made no progress"),
                "\(result.stderr)")
        #expect(result.seconds < 20, "\(result.seconds) s")
        let left = processes(marked: "FVD_STALL_TEST=\(marker)")
        #expect(left.isEmpty, "the stopped rank is killed (SIGKILL reaches a stopped process)")
    }
}
