// Every libc call `fvd launch` makes, in one place (the habit of swift-system's
// Syscalls.swift): each wrapper retries on EINTR where a retry is right, and turns a
// failure into a `SystemCallError` that names the call and carries its errno.
// Nothing else in Launch/ calls libc directly for processes, pipes, signals or shared memory.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#else
#error("fvd launch needs Linux (Glibc or Musl)")
#endif

/// A libc call that failed: which call, and the `errno` it left.
struct SystemCallError: Error, Equatable, CustomStringConvertible {
    /// The call, e.g. `"posix_spawnp"`.
    var call: String
    /// The error number (`errno`, or the return value of the `posix_spawn` family).
    var code: Int32

    /// The system's words for `code`, e.g. "No such file or directory".
    var reason: String { String(cString: strerror(code)) }
    var description: String { "\(call): \(reason)" }
}

/// Runs `body` until it does not fail with EINTR; returns its result or throws with `errno`.
@inline(__always)
private func retryingOnInterrupt<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        if errno != EINTR { throw SystemCallError(call: call, code: errno) }
    }
}

// MARK: Pipes and file descriptors

/// A pipe whose both ends are close-on-exec, so no child inherits another child's pipe.
func system_pipe() throws(SystemCallError) -> (read: Int32, write: Int32) {
    // pipe2 is not visible from Swift's Glibc module; the launcher spawns from one thread,
    // so setting FD_CLOEXEC right after pipe() cannot race with another spawn of ours.
    var fds: [Int32] = [-1, -1]
    _ = try retryingOnInterrupt("pipe") { pipe(&fds) }
    for fd in fds where fcntl(fd, F_SETFD, FD_CLOEXEC) == -1 {
        let code = errno
        system_close(fds[0])
        system_close(fds[1])
        throw SystemCallError(call: "fcntl", code: code)
    }
    return (fds[0], fds[1])
}

/// Makes reads and writes on `fd` return EAGAIN instead of blocking.
func system_setNonBlocking(_ fd: Int32) throws(SystemCallError) {
    let flags = try retryingOnInterrupt("fcntl") { fcntl(fd, F_GETFL) }
    _ = try retryingOnInterrupt("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
}

/// Closes `fd`. Never retried: on Linux the descriptor is gone even when close reports EINTR.
func system_close(_ fd: Int32) {
    _ = close(fd)
}

/// Reads at most `buffer.count` bytes; 0 means end of file. EAGAIN is thrown like any error.
func system_read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
    try retryingOnInterrupt("read") { read(fd, buffer.baseAddress, buffer.count) }
}

/// Writes all of `bytes` (looping over short writes). Errors such as EPIPE are thrown.
func system_writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(SystemCallError) {
    var offset = 0
    while offset < bytes.count {
        let n = try retryingOnInterrupt("write") { write(fd, bytes.baseAddress! + offset, bytes.count - offset) }
        offset += n
    }
}

/// Waits up to `timeoutMilliseconds` for events on `fds`; returns how many have events.
/// EINTR returns 0 rather than retrying, so the caller looks at its deadlines again.
func system_poll(_ fds: inout [pollfd], timeoutMilliseconds: Int32) throws(SystemCallError) -> Int {
    let count = nfds_t(fds.count)
    let result = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, count, timeoutMilliseconds) }
    if result >= 0 { return Int(result) }
    if errno == EINTR { return 0 }
    throw SystemCallError(call: "poll", code: errno)
}

/// Raises the soft limit on open descriptors to at least `count` (up to the hard limit).
func system_raiseOpenFileLimit(to count: Int) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(count) else { return }
    limit.rlim_cur = min(rlim_t(count), limit.rlim_max)
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

// MARK: Processes

/// Starts `program` (looked up through `PATH` when it has no slash) with `arguments` and
/// `environment` (`"NAME=value"` strings), its stdout and stderr connected to the given
/// descriptors and its stdin inherited.
///
/// The child starts with every signal at its default disposition and none blocked (the
/// launcher ignores SIGPIPE and catches SIGINT, and may itself have been started with
/// signals blocked), and in a session of its own, like torchrun's `start_new_session`: its
/// process group (id = its pid) then holds the processes it starts, so one `kill(-pid, …)`
/// reaches them all, a Ctrl-C on the terminal reaches the ranks only through the launcher
/// (once, not twice), and a rank that reads the terminal gets an error instead of being
/// stopped by SIGTTIN.
func system_spawn(
    program: String, arguments: [String], environment: [String], stdout: Int32, stderr: Int32
) throws(SystemCallError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdout, 1)
    posix_spawn_file_actions_adddup2(&actions, stderr, 2)

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var everySignal = sigset_t()
    sigfillset(&everySignal)
    posix_spawnattr_setsigdefault(&attributes, &everySignal)
    var noSignal = sigset_t()
    sigemptyset(&noSignal)
    posix_spawnattr_setsigmask(&attributes, &noSignal)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | posixSpawnSetSID))

    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup($0) } + [nil]
    defer { for p in argv + envp { free(p) } }
    var pid = pid_t()
    let result = posix_spawnp(&pid, program, &actions, &attributes, argv, envp)
    if result != 0 { throw SystemCallError(call: "posix_spawnp", code: result) }
    return pid
}

/// glibc's (2.26+) and musl's `POSIX_SPAWN_SETSID`, which Swift's Glibc module does not export.
private let posixSpawnSetSID: Int32 = 0x80

/// How a child ended, as `waitpid` reports it, or nil with `noHang` while it still runs.
func system_waitpid(_ pid: pid_t, noHang: Bool) throws(SystemCallError) -> Int32? {
    var status: Int32 = 0
    let result = try retryingOnInterrupt("waitpid") { waitpid(pid, &status, noHang ? WNOHANG : 0) }
    return result == 0 ? nil : status
}

/// Sends `signal` to `pid` (a process group when negative); returns 0 or the errno.
@discardableResult
func system_kill(_ pid: pid_t, _ signal: Int32) -> Int32 {
    kill(pid, signal) == 0 ? 0 : errno
}

/// Whether a process with this id exists (`kill(pid, 0)` fails with anything but ESRCH).
func system_processExists(_ pid: pid_t) -> Bool {
    pid > 0 && system_kill(pid, 0) != ESRCH
}

/// This process's id.
func system_getpid() -> pid_t { getpid() }

// MARK: Signals

/// The write end of the launcher's self-pipe; the signal handler writes the signal number
/// there. Set before the handler is installed and reset after it is removed, so the handler
/// only ever sees a valid descriptor or -1.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// A signal's previous handler, to put back.
struct SavedSignalHandler {
    var signal: Int32
    var handler: __sighandler_t?
}

/// Makes each of `signals` write its number as one byte to `pipeWriteEnd` (a non-blocking
/// pipe), with restartable system calls, and returns the handlers to put back.
func system_catchSignals(_ signals: [Int32], pipeWriteEnd: Int32) -> [SavedSignalHandler] {
    signalPipeWriteEnd = pipeWriteEnd
    return signals.map { sig in
        let previous = signal(sig) { received in
            let saved = errno  // async-signal-safe: one write(2), errno preserved
            var byte = UInt8(truncatingIfNeeded: received)
            _ = write(signalPipeWriteEnd, &byte, 1)
            errno = saved
        }
        return SavedSignalHandler(signal: sig, handler: previous)
    }
}

/// Unblocks `signals` in the calling thread and returns the mask to put back. A launcher
/// started from a thread that blocks signals (a Dispatch worker, say) inherits that mask;
/// without this, SIGINT and SIGTERM would stay pending and never be forwarded.
func system_unblockSignals(_ signals: [Int32]) -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in signals { sigaddset(&set, signal) }
    var previous = sigset_t()
    pthread_sigmask(SIG_UNBLOCK, &set, &previous)
    return previous
}

/// Puts back a mask returned by `system_unblockSignals`.
func system_restoreSignalMask(_ mask: sigset_t) {
    var mask = mask
    pthread_sigmask(SIG_SETMASK, &mask, nil)
}

/// Sets `signal` to be ignored and returns its previous handler.
func system_ignoreSignal(_ sig: Int32) -> SavedSignalHandler {
    SavedSignalHandler(signal: sig, handler: signal(sig, SIG_IGN))
}

/// Puts back handlers saved by `system_catchSignals` or `system_ignoreSignal`.
func system_restoreSignals(_ saved: [SavedSignalHandler]) {
    for entry in saved { _ = signal(entry.signal, entry.handler) }
    signalPipeWriteEnd = -1
}

// MARK: Shared memory and sockets

/// Removes the POSIX shared-memory object `name` (which starts with "/").
func system_shm_unlink(_ name: String) throws(SystemCallError) {
    _ = try retryingOnInterrupt("shm_unlink") { shm_unlink(name) }
}

/// A TCP port free on 127.0.0.1 now: bind port 0, read the port the kernel chose, close.
func system_freeLoopbackPort() throws(SystemCallError) -> Int {
    let fd = try retryingOnInterrupt("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    defer { system_close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = try retryingOnInterrupt("bind") {
        withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    }
    _ = try retryingOnInterrupt("getsockname") {
        withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
