import Foundation

/// Whether process `pid` has ended: gone, or exited and not yet reaped by its parent (a
/// zombie, state `Z` or `X` in /proc, which still answers `kill(pid, 0)`). A process of
/// another user (`EPERM`) counts as running.
package func processIsGone(_ pid: Int32) -> Bool {
    if kill(pid, 0) != 0 { return errno == ESRCH }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return false }
    let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
    return state == "Z" || state == "X"
}
