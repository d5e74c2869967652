import FastVideoDistributed
import Foundation
import Synchronization

// What `fvd apply` does so that a staging folder never outlives its run: SIGINT, SIGTERM
// and SIGHUP remove the folder before the process ends, and the next run into the same
// output folder removes those left by runs that ended without a chance to (SIGKILL, a
// power cut).

/// The prefix of every staging folder's name: `.fvd-staging-<pid>@<host>-<8 hex>`.
let stagingPrefix = ".fvd-staging-"

/// A new staging folder's name, which records the process that owns it and its host
/// (so a sweep on another host that shares the folder leaves it alone).
func stagingFolderName() -> String {
    "\(stagingPrefix)\(getpid())@\(hostNameForStaging())-\(UUID().uuidString.prefix(8))"
}

/// This host's name, reduced to the characters a staging folder's name may hold.
func hostNameForStaging() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
    let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let kept = name.unicodeScalars.filter { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "." || $0 == "_") }
    return kept.isEmpty ? "localhost" : String(String.UnicodeScalarView(kept))
}

/// The owner recorded in a staging folder's name: its process id and host (`nil` for a
/// name written before hosts were recorded), or `nil` if `name` is not a staging folder's.
func stagingOwner(of name: String) -> (pid: pid_t, host: String?)? {
    guard name.hasPrefix(stagingPrefix), let dash = name.lastIndex(of: "-") else { return nil }
    let owner = name[name.index(name.startIndex, offsetBy: stagingPrefix.count)..<dash]
    let parts = owner.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false)
    guard let pid = pid_t(parts[0]), pid > 0 else { return nil }
    return (pid, parts.count == 2 ? String(parts[1]) : nil)
}

/// Removes the staging folders in `directory` whose owner no longer runs: the owner's
/// host is this one (or not recorded) and no process has its id. A file the dead run had
/// moved aside (into `previous/`) is put back where no file of that name is, so a run
/// killed while it moved the outputs into place loses no earlier output.
func sweepDeadStagingFolders(in directory: String) {
    let fm = FileManager.default
    guard let names = try? fm.contentsOfDirectory(atPath: directory) else { return }
    let host = hostNameForStaging()
    for name in names {
        guard let owner = stagingOwner(of: name), owner.host == nil || owner.host == host,
            owner.pid != getpid(), kill(owner.pid, 0) != 0, errno == ESRCH
        else { continue }
        let folder = (directory as NSString).appendingPathComponent(name)
        let aside = (folder as NSString).appendingPathComponent("previous")
        for file in (try? fm.contentsOfDirectory(atPath: aside)) ?? [] {
            let destination = (directory as NSString).appendingPathComponent(file)
            if !fm.fileExists(atPath: destination) { rename((aside as NSString).appendingPathComponent(file), destination) }
        }
        try? fm.removeItem(atPath: folder)
    }
}

/// The staging folders of this process's `fvd apply` runs in progress, and whether one of
/// them is moving its outputs into place (a signal then waits until it is done: removing
/// the folder then would lose the earlier outputs moved aside into it).
private struct StagingRegistry {
    var folders: Set<String> = []
    var committing = 0
    var pendingSignal: Int32?
    var handlersInstalled = false
}

private let stagingRegistry = Mutex(StagingRegistry())

/// The signals that remove the staging folders before the process ends.
private let cleanupSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP]

/// The write end of the self-pipe the signal handler writes the signal's number to.
nonisolated(unsafe) private var cleanupSignalPipe: Int32 = -1

/// Registers `staging` for removal on SIGINT, SIGTERM or SIGHUP (installing the handlers
/// on first use; a signal the process was started ignoring, as under `nohup`, stays
/// ignored), and unblocks those signals in the calling thread: a process started from a
/// thread that blocks them (a Dispatch worker, say) inherits that mask, and they would
/// stay pending until the run ended.
/// - Returns: the calling thread's signal mask, for ``unregisterStagingFolder(_:restoring:)``.
func registerStagingFolder(_ staging: String) -> sigset_t {
    let install = stagingRegistry.withLock { registry -> Bool in
        registry.folders.insert(staging)
        defer { registry.handlersInstalled = true }
        return !registry.handlersInstalled
    }
    if install { installCleanupHandlers() }
    var set = sigset_t(), previous = sigset_t()
    sigemptyset(&set)
    for sig in cleanupSignals { sigaddset(&set, sig) }
    pthread_sigmask(SIG_UNBLOCK, &set, &previous)
    return previous
}

/// Forgets `staging` (its run removed it) and puts back the calling thread's signal mask.
/// If a signal arrived while it was being moved into place, ends the process now, as the
/// signal would have.
func unregisterStagingFolder(_ staging: String, restoring mask: sigset_t) {
    let pending = stagingRegistry.withLock { registry -> Int32? in
        registry.folders.remove(staging)
        return registry.committing == 0 && registry.folders.isEmpty ? registry.pendingSignal : nil
    }
    if let pending { endAfterSignal(pending) }
    var mask = mask
    pthread_sigmask(SIG_SETMASK, &mask, nil)
}

/// Runs `body` (moving outputs into place) with SIGINT, SIGTERM and SIGHUP held back:
/// one that arrives meanwhile takes effect when the staging folder is gone.
func withSignalsHeldBack<T>(_ body: () throws -> T) rethrows -> T {
    stagingRegistry.withLock { $0.committing += 1 }
    defer { stagingRegistry.withLock { $0.committing -= 1 } }
    return try body()
}

private func installCleanupHandlers() {
    var ends: [Int32] = [0, 0]
    guard pipe(&ends) == 0 else { return }
    cleanupSignalPipe = ends[1]
    let readEnd = ends[0]
    let watcher = Thread {
        while true {
            var byte: UInt8 = 0
            let count = read(readEnd, &byte, 1)
            if count == 1 { handleCleanupSignal(Int32(byte)) } else if count < 0, errno == EINTR { continue } else { return }
        }
    }
    watcher.name = "fvd-apply-signals"
    watcher.start()
    for sig in cleanupSignals {
        let previous = signal(sig) { received in
            let saved = errno  // async-signal-safe: one write(2), errno preserved
            var byte = UInt8(truncatingIfNeeded: received)
            _ = write(cleanupSignalPipe, &byte, 1)
            errno = saved
        }
        if let previous, unsafeBitCast(previous, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) {
            signal(sig, SIG_IGN)
        }
    }
}

/// On the watcher thread: `sig` arrived. Without a staging folder, the signal does what it
/// would have done; while outputs are moved into place, it waits; else the folders go and
/// the process ends.
private func handleCleanupSignal(_ sig: Int32) {
    let now = stagingRegistry.withLock { registry -> Bool in
        if registry.folders.isEmpty { return true }
        if registry.committing > 0 {
            registry.pendingSignal = registry.pendingSignal ?? sig
            return false
        }
        return true
    }
    if now { endAfterSignal(sig) }
}

/// Stops the ranks this process started (`fvd apply --transport shm`), removes every
/// registered staging folder, says so in one line, and exits with 128 + `sig` (the status
/// a shell reports for a process killed by `sig`). With no staging folder, the signal
/// takes its default action.
private func endAfterSignal(_ sig: Int32) -> Never {
    let folders = stagingRegistry.withLock { $0.folders }
    if folders.isEmpty {
        signal(sig, SIG_DFL)
        raise(sig)
        _exit(128 + sig)
    }
    processIsEnding.store(true, ordering: .releasing)
    stopChildren(with: sig)
    for folder in folders {
        // A rank may still create a file in it while it is removed: try again.
        for _ in 0..<50 where FileManager.default.fileExists(atPath: folder) {
            if (try? FileManager.default.removeItem(atPath: folder)) == nil { usleep(20_000) }
        }
    }
    let name = signalName(sig) ?? "signal \(sig)"
    // Straight to stderr: `writeError` drops other threads' lines from now on.
    StandardStreams.writeError(
        "error: stopped by \(name); the outputs were left as they were (removed \(folders.sorted().joined(separator: ", ")))\n")
    _exit(128 + sig)
}

/// Sends `sig` to this process's children (the `fvd launch` of `--transport shm`, which
/// forwards it to its ranks) and waits up to 10 s for them to end, so none writes into a
/// staging folder after it is removed.
private func stopChildren(with sig: Int32) {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    let children = tasks.flatMap { task -> [pid_t] in
        let text = (try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
    for child in children { kill(child, sig) }
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline, children.contains(where: { !processIsGone($0) }) { usleep(10_000) }
}

