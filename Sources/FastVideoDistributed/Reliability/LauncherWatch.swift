import CFVDShims
import Foundation

/// Ends a rank whose launcher has died, so that no rank of a killed `fvd launch` (the OOM
/// killer, a job scheduler's `kill -9`) runs on forever.
///
/// `fvd launch` gives its ranks `FVD_LAUNCHER_PID`. A rank that joins a world starts one
/// thread that blocks until that process ends (a pidfd: no polling, no cost meanwhile).
/// Then the rank prints `error: rank R: its launcher (pid P) died; ending`, records the
/// failure for its peers, removes the job's shared-memory name and exits with status 1
/// at once (`_exit`: the process's other threads may be inside collectives). Ranks
/// started without `fvd launch` have no `FVD_LAUNCHER_PID` and are not watched.
enum LauncherWatch {
    /// Starts watching the launcher named in `environment`, if any.
    ///
    /// - Parameters:
    ///   - onDeath: called on the watching thread before the process exits (records the
    ///     failure in shared memory, unlinks the name); must not block.
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a malformed `FVD_LAUNCHER_PID`.
    static func start(environment: [String: String], rank: Int, onDeath: @escaping @Sendable () -> Void) throws {
        guard let text = environment["FVD_LAUNCHER_PID"] else { return }
        guard let pid = Int32(text), pid > 1 else {
            throw FVDError.invalidArgument("FVD_LAUNCHER_PID=\(text) is not a process id")
        }
        // The pidfd and the thread exist before this returns: they belong to the world
        // from its creation (a leak check that starts after it must not count them).
        let pidfd = fvd_pidfd_open(pid)
        if pidfd == -ESRCH {
            onDeath()
            throw FVDError.invalidArgument("rank \(rank): its launcher (FVD_LAUNCHER_PID=\(pid)) has already ended")
        }
        let started = DispatchSemaphore(value: 0)
        let thread = Thread {
            started.signal()
            fvd_wait_for_process_end(pid, pidfd)
            onDeath()  // first: the message below may meet a closed pipe and SIGPIPE
            StandardStreams.writeError("error: rank \(rank): its launcher (pid \(pid)) died; ending\n")
            _exit(1)
        }
        thread.name = "fvd-launcher-watch"
        thread.stackSize = 64 << 10
        thread.start()
        started.wait()
    }
}
