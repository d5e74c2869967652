import FastVideoDistributed
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The logic of `fvd launch`: the rank environment, the job's shared-memory name, the
// output prefixing, the shutdown schedule and the event loop that ties them together.
// The libc calls it makes are the `system_*` wrappers in LaunchSyscalls.swift.

// MARK: Configuration and results

/// What `fvd launch` is asked to do.
struct LaunchConfiguration: Sendable, Equatable {
    /// The number of ranks, one process each (`-n`).
    var worldSize: Int
    /// The program to start, looked up through `PATH` when it has no slash.
    var program: String
    /// The program's arguments.
    var arguments: [String] = []
    /// Seconds a collective waits for missing ranks, passed to the ranks as `FVD_TIMEOUT`.
    var timeout: Double? = nil
    /// Seconds the other ranks get to exit on their own after one fails, before SIGTERM.
    var grace: Double = 5
    /// Seconds between SIGTERM and SIGKILL.
    var killAfter: Double = 2
    /// Whether output lines get the `[r<rank>] ` prefix (`--no-prefix` turns it off).
    var prefixOutput = true

    /// The world sizes `fvd launch` accepts.
    static let worldSizes = 1...1024

    /// Throws ``LaunchError/invalidArgument(_:)`` for a value the launcher cannot use.
    func validate() throws(LaunchError) {
        guard Self.worldSizes.contains(worldSize) else {
            throw .invalidArgument("-n must be between \(Self.worldSizes.lowerBound) and \(Self.worldSizes.upperBound), got \(worldSize)")
        }
        guard !program.isEmpty else { throw .invalidArgument("missing PROGRAM: use fvd launch -n W -- PROGRAM ARGS…") }
        if let timeout, !(timeout > 0) {
            throw .invalidArgument("--timeout must be a positive number of seconds (or inf for no limit), got \(timeout)")
        }
        guard grace >= 0, grace.isFinite else { throw .invalidArgument("--grace must be zero or more seconds, got \(grace)") }
        guard killAfter >= 0, killAfter.isFinite else { throw .invalidArgument("the kill delay must be zero or more seconds") }
    }
}

/// Why `fvd launch` could not run the job at all.
enum LaunchError: Error, Equatable, CustomStringConvertible {
    /// An option or argument the launcher cannot use.
    case invalidArgument(String)
    /// `posix_spawnp` failed for PROGRAM, e.g. it does not exist or is not executable.
    case cannotStart(program: String, reason: String)
    /// A pipe, poll or other system call failed.
    case system(SystemCallError)

    var description: String {
        switch self {
        case .invalidArgument(let message): message
        case .cannotStart(let program, let reason): "cannot start \(program): \(reason)"
        case .system(let error): "\(error)"
        }
    }
}

/// How one rank's process ended.
enum ChildExit: Equatable, Sendable, CustomStringConvertible {
    /// It called `exit` with this status.
    case exited(Int32)
    /// A signal ended it.
    case signaled(Int32)
    /// `waitpid` could not report it (someone else collected the status).
    case unknown

    /// Decodes a `waitpid` status (the `WIFEXITED`/`WTERMSIG` macros, which Swift cannot import).
    init(waitStatus status: Int32) {
        let signal = status & 0x7F
        self = signal == 0 ? .exited((status >> 8) & 0xFF) : .signaled(signal)
    }

    /// Whether the rank said it stopped only because another rank failed (fvd's ranks exit
    /// with `consequenceExitStatus` then).
    var isConsequence: Bool {
        if case .exited(let status) = self { return status == consequenceExitStatus }
        return false
    }

    /// Whether the process exited with status 0.
    var succeeded: Bool { self == .exited(0) }

    /// "exited with status 3", "was killed by signal 9 (SIGKILL)".
    var description: String {
        switch self {
        case .exited(let status): "exited with status \(status)"
        case .signaled(let signal): "was killed by signal \(signal)" + (signalName(signal).map { " (\($0))" } ?? "")
        case .unknown: "ended with an unknown status"
        }
    }
}

/// The usual name of a signal number on Linux, e.g. `"SIGKILL"` for 9.
func signalName(_ signal: Int32) -> String? {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
        SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
        SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
        SIGCHLD: "SIGCHLD", SIGCONT: "SIGCONT", SIGSTOP: "SIGSTOP", SIGTSTP: "SIGTSTP", SIGTTIN: "SIGTTIN",
        SIGTTOU: "SIGTTOU", SIGURG: "SIGURG", SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ", SIGVTALRM: "SIGVTALRM",
        SIGPROF: "SIGPROF", SIGWINCH: "SIGWINCH", SIGIO: "SIGIO", SIGPWR: "SIGPWR", SIGSYS: "SIGSYS",
    ]
    return names[signal]
}

/// How a launched job ended.
enum LaunchOutcome: Equatable, Sendable {
    /// Every rank exited with status 0.
    case succeeded
    /// `rank` was the first to exit non-zero or by a signal.
    case rankFailed(rank: Int, exit: ChildExit)
    /// `rank` exited with status 0 while others still ran, and they then stopped because it
    /// was gone (`nextRank` is the first of them; it exited with ``consequenceExitStatus``).
    case rankLeftEarly(rank: Int, nextRank: Int, nextExit: ChildExit)
    /// The launcher was sent `signal` (SIGINT, SIGTERM or SIGHUP) and forwarded it; every rank still exited 0.
    case interrupted(signal: Int32)

    /// The launcher's exit status: 0 for ``succeeded``, else 1.
    var exitStatus: Int32 { self == .succeeded ? 0 : 1 }

    /// The `error:` line's text, or nil on success.
    var message: String? {
        switch self {
        case .succeeded: nil
        case .rankFailed(let rank, let exit): "rank \(rank) \(exit)"
        case .rankLeftEarly(let rank, let nextRank, let nextExit):
            "rank \(rank) exited with status 0 while the other ranks still needed it (rank \(nextRank) then \(nextExit))"
        case .interrupted(let signal): "stopped by \(signalName(signal) ?? "signal \(signal)") (every rank exited with status 0)"
        }
    }
}

// MARK: The job's identity and environment

/// The job id `<launcher pid>-<8 hex digits>` shared by every rank as `FVD_JOB_ID`.
func makeJobID(pid: Int32, random: UInt32) -> String {
    let hex = String(random, radix: 16)
    return "\(pid)-" + String(repeating: "0", count: 8 - hex.count) + hex
}

/// The POSIX shared-memory name of a job, `/fvd-<job id>` (`FVD_SHM_NAME`).
func sharedMemoryName(jobID: String) -> String { "/fvd-\(jobID)" }

/// Seconds as the ranks read them: `300` for whole numbers, else `0.5`.
func formatSeconds(_ seconds: Double) -> String {
    if seconds == seconds.rounded(), abs(seconds) < 1e15 { return String(Int64(seconds)) }
    return String(seconds)
}

/// The environment of rank `rank`: `base` (the launcher's) plus the torchrun variables and
/// the job's shared-memory name and timeout.
func rankEnvironment(
    base: [String: String], rank: Int, worldSize: Int, masterPort: Int, jobID: String, timeout: Double?
) -> [String: String] {
    var environment = base
    environment["RANK"] = String(rank)
    environment["WORLD_SIZE"] = String(worldSize)
    environment["LOCAL_RANK"] = String(rank)
    environment["LOCAL_WORLD_SIZE"] = String(worldSize)
    environment["MASTER_ADDR"] = "127.0.0.1"
    environment["MASTER_PORT"] = String(masterPort)
    environment["FVD_JOB_ID"] = jobID
    environment["FVD_LAUNCHER_PID"] = String(system_getpid())
    environment["FVD_SHM_NAME"] = sharedMemoryName(jobID: jobID)
    if let timeout { environment["FVD_TIMEOUT"] = formatSeconds(timeout) }
    return environment
}

// MARK: Shared-memory segments left behind

/// Whether `c` is an ASCII hex digit.
private func isHexDigit(_ c: Character) -> Bool { c.isASCII && c.isHexDigit }

/// The launcher pid in a `/dev/shm` entry named `fvd-<pid>-<hex>` (optionally followed by a
/// suffix such as `-r0` or `.lock` that a transport adds), or nil for any other name.
func segmentLauncherPID(_ name: String) -> Int32? {
    guard name.hasPrefix("fvd-") else { return nil }
    let rest = name.dropFirst(4)
    let digits = rest.prefix(while: { $0.isASCII && $0.isNumber })
    guard !digits.isEmpty, digits.count <= 10, let pid = Int32(digits), pid > 0 else { return nil }
    let afterPID = rest.dropFirst(digits.count)
    guard afterPID.first == "-" else { return nil }
    let hex = afterPID.dropFirst().prefix(while: isHexDigit)
    guard !hex.isEmpty else { return nil }
    let suffix = afterPID.dropFirst(1 + hex.count)
    guard suffix.isEmpty || suffix.first == "-" || suffix.first == "." || suffix.first == "_" else { return nil }
    return pid
}

/// The entries among `names` that belong to launchers for which `isAlive` is false.
func staleSegments(_ names: [String], isAlive: (Int32) -> Bool) -> [String] {
    names.filter { name in segmentLauncherPID(name).map { !isAlive($0) } ?? false }
}

/// The entries among `names` that belong to job `jobID`: `fvd-<job id>` and the same name
/// followed by a suffix (`-…`, `.…`, `_…`).
func jobSegments(_ names: [String], jobID: String) -> [String] {
    let base = "fvd-\(jobID)"
    return names.filter { name in
        guard name.hasPrefix(base) else { return false }
        let suffix = name.dropFirst(base.count)
        return suffix.isEmpty || suffix.first == "-" || suffix.first == "." || suffix.first == "_"
    }
}

/// Where Linux shows POSIX shared-memory objects.
let sharedMemoryDirectory = "/dev/shm"

/// The names in `directory`, or none when it cannot be read.
private func entries(of directory: String) -> [String] {
    (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
}

/// Unlinks the segments of launchers that are no longer running and returns their names.
@discardableResult
func sweepStaleSegments(directory: String = sharedMemoryDirectory) -> [String] {
    let ownPID = system_getpid()
    let stale = staleSegments(entries(of: directory)) { $0 == ownPID || system_processExists($0) }
    return stale.filter { (try? system_shm_unlink("/" + $0)) != nil }
}

/// Unlinks the job's segment `FVD_SHM_NAME` and any `fvd-<job id>-…` entries beside it;
/// a name that is already gone is fine.
func removeJobSegments(jobID: String, directory: String = sharedMemoryDirectory) {
    _ = try? system_shm_unlink(sharedMemoryName(jobID: jobID))
    for name in jobSegments(entries(of: directory), jobID: jobID) { _ = try? system_shm_unlink("/" + name) }
}

// MARK: Output

/// Splits a byte stream into lines and puts a prefix such as `[r0] ` before each.
///
/// Only whole lines are emitted, so lines of different ranks never mix; ``finish()`` emits
/// a last line that has no newline (with one added). A line longer than ``maxLineLength``
/// is not held back whole, so that a program without newlines cannot make the launcher
/// hold unbounded memory: its first ``maxLineLength`` bytes go out (prefixed, no newline
/// added) and the rest follows as it arrives, unsplit and unprefixed, up to its newline.
/// Only such a line can have another rank's output inside it.
struct LinePrefixer {
    /// What goes before every line, e.g. `[r3] `.
    let prefix: [UInt8]
    /// The longest line held back while waiting for its newline.
    var maxLineLength = 1 << 16
    private var pending: [UInt8] = []
    /// Part of the current line has been emitted already (it was too long to hold).
    private var midLine = false

    init(prefix: String) { self.prefix = Array(prefix.utf8) }

    /// The prefix `fvd launch` gives rank `rank`'s lines.
    init(rank: Int) { self.init(prefix: "[r\(rank)] ") }

    /// Takes the next bytes of the stream and returns the prefixed lines (and parts of
    /// over-long lines) that can go out.
    mutating func consume(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return [] }
        var output: [UInt8] = []
        var start = 0
        while start < bytes.count, let hit = memchr(base + start, 0x0A, bytes.count - start) {
            let end = base.distance(to: UnsafeRawPointer(hit)) + 1
            if output.isEmpty { output.reserveCapacity(bytes.count + pending.count + 32 * prefix.count) }
            if !midLine { output += prefix }
            output += pending
            output += UnsafeRawBufferPointer(start: base + start, count: end - start)
            pending.removeAll(keepingCapacity: true)
            midLine = false
            start = end
        }
        pending += UnsafeRawBufferPointer(start: base + start, count: bytes.count - start)
        if pending.count >= maxLineLength {
            if !midLine { output += prefix }
            output += pending
            pending.removeAll(keepingCapacity: true)
            midLine = true
        }
        return output
    }

    /// Convenience for tests: ``consume(_:)`` of a string's UTF-8 bytes.
    mutating func consume(_ text: String) -> String {
        var bytes = Array(text.utf8)
        let output = bytes.withUnsafeMutableBytes { consume(UnsafeRawBufferPointer($0)) }
        return String(decoding: output, as: UTF8.self)
    }

    /// At end of file: the end of a last line that had no newline, with one added.
    mutating func finish() -> [UInt8] {
        guard !pending.isEmpty || midLine else { return [] }
        defer { pending.removeAll(); midLine = false }
        return (midLine ? [] : prefix) + pending + [UInt8(ascii: "\n")]
    }
}

// MARK: Shutdown

/// When the launcher sends SIGTERM and SIGKILL once a job has to end.
///
/// ``begin(at:)`` starts the clock (a rank failed, or the launcher was sent SIGINT, SIGTERM or SIGHUP):
/// the ranks get `grace` seconds to exit on their own, then SIGTERM, then SIGKILL
/// `killAfter` seconds later. ``hurry(at:)`` (a second such signal) skips what is left of
/// the grace period. Times are seconds on any monotonic clock.
struct ShutdownSchedule: Equatable {
    var grace: Double
    var killAfter: Double
    /// When SIGTERM is due, once the clock has started.
    private(set) var terminateAt: Double?
    /// When SIGKILL is due, once SIGTERM was sent.
    private(set) var killAt: Double?
    private var killSent = false

    init(grace: Double, killAfter: Double) {
        self.grace = grace
        self.killAfter = killAfter
    }

    /// Whether the job is being ended.
    var hasBegun: Bool { terminateAt != nil }

    /// Starts the grace period at `now`, unless it already started.
    mutating func begin(at now: Double) {
        if terminateAt == nil { terminateAt = now + grace }
    }

    /// Makes SIGTERM due now if it was not sent yet.
    mutating func hurry(at now: Double) {
        guard killAt == nil else { return }
        terminateAt = min(terminateAt ?? now, now)
    }

    /// The signal to send to the remaining ranks at `now`, if one is due; each is returned once.
    mutating func signalDue(at now: Double) -> Int32? {
        if killAt == nil, let terminateAt, now >= terminateAt {
            killAt = now + killAfter
            return SIGTERM
        }
        if !killSent, let killAt, now >= killAt {
            killSent = true
            return SIGKILL
        }
        return nil
    }

    /// The next time ``signalDue(at:)`` will return a signal.
    var nextDeadline: Double? { killAt == nil ? terminateAt : (killSent ? nil : killAt) }
}

// MARK: The launcher

/// Starts `configuration.worldSize` processes, forwards their output and signals, ends them
/// all when one fails, removes the job's shared memory and returns how the job ended.
///
/// Output of rank `r` goes to `standardOutput`/`standardError` prefixed with `[r<r>] `.
/// Throws ``LaunchError/cannotStart(program:reason:)`` when the program cannot be started (the
/// ranks already started are killed first), ``LaunchError/system(_:)`` when a pipe or poll
/// fails (all ranks are killed).
func runLaunch(
    _ configuration: LaunchConfiguration, standardOutput: Int32 = STDOUT_FILENO, standardError: Int32 = STDERR_FILENO
) throws(LaunchError) -> LaunchOutcome {
    try configuration.validate()
    sweepStaleSegments()
    let jobID = makeJobID(pid: system_getpid(), random: UInt32.random(in: .min ... .max))
    defer { removeJobSegments(jobID: jobID) }
    do {
        let launcher = try Launcher(configuration: configuration, jobID: jobID,
                                    standardOutput: standardOutput, standardError: standardError)
        defer { launcher.close() }
        try launcher.start()
        return try launcher.run()
    } catch let error as LaunchError {
        throw error
    } catch let error as SystemCallError {
        throw .system(error)
    } catch {
        throw .system(SystemCallError(call: "\(error)", code: EIO))
    }
}

/// One launched job: its children, their output pipes and the signal self-pipe.
/// Single-threaded: everything happens in ``run()``'s poll loop.
private final class Launcher {
    /// One rank's process.
    struct Child {
        var rank: Int
        var pid: pid_t
        /// How it ended, once reaped.
        var exit: ChildExit?
        /// Its process group is known to be empty, so it is never signalled again.
        var groupGone = false
    }

    /// One pipe carrying a rank's stdout or stderr.
    struct Stream {
        var fd: Int32
        var destination: Int32
        var prefixer: LinePrefixer
    }

    let configuration: LaunchConfiguration
    let jobID: String
    let standardOutput: Int32
    let standardError: Int32
    /// How long output may keep arriving after the last rank exited (from its own children).
    let drainSeconds = 0.5
    /// The signals passed on to the ranks: SIGINT and SIGTERM, and SIGHUP (a closed terminal),
    /// which reaches only the launcher because each rank runs in a session of its own.
    static let forwardedSignals = [SIGINT, SIGTERM, SIGHUP]

    private var children: [Child] = []
    private var streams: [Stream] = []
    private var signalPipe: (read: Int32, write: Int32)
    private var savedHandlers: [SavedSignalHandler] = []
    private var savedSignalMask: sigset_t
    private var brokenDestinations: Set<Int32> = []
    /// The launcher has sent the ranks a signal (its own or a forwarded one): exits from
    /// then on are its doing, not the ranks' own failures.
    private var signalledRanks = false
    private let clockStart = ContinuousClock.now

    init(configuration: LaunchConfiguration, jobID: String, standardOutput: Int32, standardError: Int32) throws(SystemCallError) {
        self.configuration = configuration
        self.jobID = jobID
        self.standardOutput = standardOutput
        self.standardError = standardError
        signalPipe = try system_pipe()
        do {
            try system_setNonBlocking(signalPipe.read)
            try system_setNonBlocking(signalPipe.write)
        } catch {
            system_close(signalPipe.read)
            system_close(signalPipe.write)
            throw error
        }
        savedHandlers = [system_ignoreSignal(SIGPIPE)]
            + system_catchSignals(Self.forwardedSignals + [SIGCHLD], pipeWriteEnd: signalPipe.write)
        savedSignalMask = system_unblockSignals(Self.forwardedSignals + [SIGCHLD])
    }

    /// Seconds since the launcher started, on a monotonic clock.
    private func now() -> Double {
        let elapsed = (ContinuousClock.now - clockStart).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) * 1e-18
    }

    private var liveCount: Int { children.count(where: { $0.exit == nil }) }

    /// Spawns every rank; if one cannot be started, kills those that were.
    func start() throws {
        system_raiseOpenFileLimit(to: 2 * configuration.worldSize + 64)
        let port = try system_freeLoopbackPort()
        let base = ProcessInfo.processInfo.environment
        for rank in 0..<configuration.worldSize {
            let environment = rankEnvironment(
                base: base, rank: rank, worldSize: configuration.worldSize, masterPort: port,
                jobID: jobID, timeout: configuration.timeout)
            let out = try system_pipe()
            let err: (read: Int32, write: Int32)
            do { err = try system_pipe() } catch {
                system_close(out.read); system_close(out.write)
                throw error
            }
            let pid: pid_t
            do {
                pid = try system_spawn(
                    program: configuration.program, arguments: configuration.arguments,
                    environment: environment.map { "\($0.key)=\($0.value)" }, stdout: out.write, stderr: err.write)
            } catch {
                for fd in [out.read, out.write, err.read, err.write] { system_close(fd) }
                throw LaunchError.cannotStart(program: configuration.program, reason: error.reason)
            }
            system_close(out.write)
            system_close(err.write)
            children.append(Child(rank: rank, pid: pid))
            let prefixer = configuration.prefixOutput ? LinePrefixer(rank: rank) : LinePrefixer(prefix: "")
            streams.append(Stream(fd: out.read, destination: standardOutput, prefixer: prefixer))
            streams.append(Stream(fd: err.read, destination: standardError, prefixer: prefixer))
        }
    }

    /// Runs the poll loop until every rank has exited and their output is drained.
    func run() throws -> LaunchOutcome {
        var schedule = ShutdownSchedule(grace: configuration.grace, killAfter: configuration.killAfter)
        var firstFailure: (rank: Int, exit: ChildExit)?
        var interruptedBy: Int32?
        var allExitedAt: Double?
        var lastReap = -Double.infinity
        /// The first rank that exited 0: when the only failures are ranks that stopped because
        /// another was gone (a rank that leaves `run` early while its peers wait for it in a
        /// collective), it is the one to name.
        var leftEarly: Int?
        var buffer = [UInt8](repeating: 0, count: 1 << 16)

        while true {
            var time = now()
            if liveCount > 0, let signal = schedule.signalDue(at: time) {
                signalGroups(signal)
                signalledRanks = true
            }
            if liveCount == 0 {
                if allExitedAt == nil {
                    allExitedAt = time
                    // The job is over: whatever the ranks left running in their process groups
                    // (background jobs, which would also hold the pipes open) ends with it.
                    signalGroups(SIGKILL)
                }
                if streams.isEmpty || time - allExitedAt! >= drainSeconds { break }
            }

            var timeout = 0.1
            if liveCount > 0, let deadline = schedule.nextDeadline { timeout = min(timeout, deadline - time) }
            if let allExitedAt { timeout = min(timeout, allExitedAt + drainSeconds - time) }
            var fds = [pollfd(fd: signalPipe.read, events: Int16(POLLIN), revents: 0)]
                + streams.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ready = try system_poll(&fds, timeoutMilliseconds: Int32(max(0, (timeout * 1000).rounded(.up))))
            time = now()

            var reapNow = ready == 0 || time - lastReap >= 0.1
            if fds[0].revents != 0 {
                for signal in drainSignalPipe(&buffer) {
                    if signal == SIGCHLD {
                        reapNow = true
                    } else {
                        signalGroups(signal)
                        signalledRanks = true
                        if interruptedBy == nil {
                            interruptedBy = signal
                            schedule.begin(at: time)
                        } else {
                            schedule.hurry(at: time)
                        }
                    }
                }
            }
            var closed: [Int] = []
            for (index, pollEntry) in fds.enumerated().dropFirst() where pollEntry.revents != 0 {
                if !forward(streamIndex: index - 1, buffer: &buffer) { closed.append(index - 1) }
            }
            for index in closed.reversed() { streams.remove(at: index) }

            if reapNow {
                lastReap = time
                for (rank, exit) in reap() {
                    if liveCount > 0 {
                        // Ranks still joining the world learn at once that this one is gone.
                        SharedSegment.markEndedBeforeJoining(
                            name: sharedMemoryName(jobID: jobID), rank: rank, pid: children[rank].pid)
                    }
                    if exit.succeeded {
                        if leftEarly == nil { leftEarly = rank }
                        continue
                    }
                    // Name the first rank that failed for its own reason: a rank that exits with
                    // `consequenceExitStatus` only stopped because another one failed, and one
                    // that ends after the launcher signalled the ranks was ended by the launcher.
                    if firstFailure == nil || (firstFailure!.exit.isConsequence && !exit.isConsequence && !signalledRanks) {
                        firstFailure = (rank, exit)
                    }
                    schedule.begin(at: time)
                }
            }
        }
        if let firstFailure {
            if firstFailure.exit.isConsequence, let leftEarly {
                return .rankLeftEarly(rank: leftEarly, nextRank: firstFailure.rank, nextExit: firstFailure.exit)
            }
            return .rankFailed(rank: firstFailure.rank, exit: firstFailure.exit)
        }
        if let interruptedBy { return .interrupted(signal: interruptedBy) }
        return .succeeded
    }

    /// The signal numbers written to the self-pipe since the last call.
    private func drainSignalPipe(_ buffer: inout [UInt8]) -> [Int32] {
        var signals: [Int32] = []
        while true {
            let n = buffer.withUnsafeMutableBytes { (try? system_read(signalPipe.read, into: $0)) ?? 0 }
            if n <= 0 { return signals }
            signals += buffer[..<n].map { Int32($0) }
        }
    }

    /// Reads what stream `index` has and writes its complete lines, prefixed; false at end of file.
    private func forward(streamIndex index: Int, buffer: inout [UInt8]) -> Bool {
        let count = buffer.withUnsafeMutableBytes { (try? system_read(streams[index].fd, into: $0)) ?? 0 }
        let output: [UInt8]
        if brokenDestinations.contains(streams[index].destination) {
            output = []  // nowhere to write: only keep the pipe from filling up
            if count <= 0 { system_close(streams[index].fd) }
        } else if count > 0 {
            output = buffer.withUnsafeBytes { streams[index].prefixer.consume(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
        } else {
            output = streams[index].prefixer.finish()
            system_close(streams[index].fd)
        }
        write(output, to: streams[index].destination)
        return count > 0
    }

    /// Writes to the launcher's stdout or stderr; once that fails (say, a closed pipe), output
    /// for it is dropped, but the ranks' pipes are still drained so no rank blocks.
    private func write(_ bytes: [UInt8], to fd: Int32) {
        guard !bytes.isEmpty, !brokenDestinations.contains(fd) else { return }
        if bytes.withUnsafeBytes({ StandardStreams.write($0, to: fd) }) != nil { brokenDestinations.insert(fd) }
    }

    /// Collects every rank that has exited; returns them in rank order.
    private func reap() -> [(rank: Int, exit: ChildExit)] {
        var ended: [(rank: Int, exit: ChildExit)] = []
        for index in children.indices where children[index].exit == nil {
            let exit: ChildExit
            do {
                guard let status = try system_waitpid(children[index].pid, noHang: true) else { continue }
                exit = ChildExit(waitStatus: status)
            } catch {
                exit = .unknown
            }
            children[index].exit = exit
            // An empty group is never signalled again, so its number can be reused safely.
            if system_kill(-children[index].pid, 0) == ESRCH { children[index].groupGone = true }
            ended.append((children[index].rank, exit))
        }
        return ended
    }

    /// Sends `signal` to the process group of every rank whose group may still have processes.
    private func signalGroups(_ signal: Int32) {
        for index in children.indices where !children[index].groupGone {
            if system_kill(-children[index].pid, signal) == ESRCH { children[index].groupGone = true }
        }
    }

    /// Kills and collects any rank still running (after an error), removes the job's shared
    /// memory, closes every pipe and puts the signal handlers back.
    func close() {
        if liveCount > 0 {
            signalGroups(SIGKILL)
            for index in children.indices where children[index].exit == nil {
                children[index].exit = (try? system_waitpid(children[index].pid, noHang: false)).flatMap { $0.map(ChildExit.init(waitStatus:)) } ?? .unknown
            }
        }
        for stream in streams { system_close(stream.fd) }
        streams = []
        // Before the handlers go: a SIGINT now must not end the launcher with the segment left.
        removeJobSegments(jobID: jobID)
        system_restoreSignalMask(savedSignalMask)
        system_restoreSignals(savedHandlers)
        savedHandlers = []
        system_close(signalPipe.read)
        system_close(signalPipe.write)
    }
}
