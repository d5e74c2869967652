import FastVideoDistributed
import Foundation

// Refusing, before a run, a size that cannot fit: a run that allocates more than the
// host has ends in a crash (`failed to allocate`), SIGBUS in shared memory, or the OOM
// killer, none of which tells the user which option to change.

/// The memory the kernel says can be allocated without swapping (`MemAvailable` in
/// /proc/meminfo), or nil where it cannot be read.
func availableMemoryBytes() -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
        let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
    else { return nil }
    return kilobytes * 1024
}

/// Free bytes in the file system of `path` (for `/dev/shm`), or nil.
func freeBytes(in path: String) -> Int? {
    var info = statvfs()
    guard statvfs(path, &info) == 0 else { return nil }
    return Int(info.f_bavail) * Int(info.f_frsize)
}

/// `12.5 GiB`, `310 MiB`.
func formatBytes(_ bytes: Int) -> String {
    bytes >= 1 << 30 ? String(format: "%.1f GiB", Double(bytes) / Double(1 << 30)) : "\(max(1, bytes >> 20)) MiB"
}

/// Throws unless `needed` bytes fit in the available memory and, with `sharedMemory`,
/// `sharedBytes` fit in /dev/shm. `what` says what needs them.
func checkMemory(needed: Int, sharedBytes: Int = 0, sharedMemory: Bool = false, for what: String) throws {
    if let available = availableMemoryBytes(), needed > available {
        throw FVDError.invalidArgument(
            "\(what) needs about \(formatBytes(needed)) of memory, but \(formatBytes(available)) is available "
                + "(MemAvailable in /proc/meminfo)")
    }
    if sharedMemory, let free = freeBytes(in: "/dev/shm"), sharedBytes > free {
        throw FVDError.invalidArgument(
            "\(what) needs about \(formatBytes(sharedBytes)) in /dev/shm for the ranks' tensors, but it has \(formatBytes(free)) free")
    }
}
