#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The process's standard output and error, written with `write(2)` so that a closed,
/// full or broken stream is an error code, never a trap (`FileHandle.write` traps).
///
/// ``prepare()`` (called first thing by `fvd`) puts `/dev/null` on any of fds 0–2 that are
/// closed, so that files and pipes opened later can never take those numbers, and
/// remembers which were closed: a write to one of them counts as failed (`EBADF`), as
/// coreutils report `echo hi >&-`.
package enum StandardStreams {
    private static let closedAtStart = Atomic<UInt8>(0)
    /// The `errno` of the first failed write to stdout (0: none).
    private static let stdoutFailure = Atomic<Int32>(0)

    /// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed.
    package static func prepare() {
        var closed: UInt8 = 0
        for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) == -1 && errno == EBADF {
            let opened = open("/dev/null", O_RDWR)
            if opened == fd { closed |= 1 << UInt8(fd) } else if opened >= 0 { close(opened) }
        }
        closedAtStart.store(closed, ordering: .relaxed)
    }

    /// Writes all of `bytes` to `fd`; returns the `errno` of a failure, nil on success.
    /// A write to stdout that fails is remembered for ``stdoutError``.
    @discardableResult
    package static func write(_ bytes: UnsafeRawBufferPointer, to fd: Int32) -> Int32? {
        guard !bytes.isEmpty else { return nil }
        var failure: Int32?
        if (0...2).contains(fd), closedAtStart.load(ordering: .relaxed) & (1 << UInt8(fd)) != 0 {
            failure = EBADF
        } else {
            var offset = 0
            while offset < bytes.count {
                let n = systemWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    break
                }
                offset += n
            }
        }
        if let failure, fd == 1 { _ = stdoutFailure.compareExchange(expected: 0, desired: failure, ordering: .relaxed) }
        return failure
    }

    /// Writes `text` to `fd` (see ``write(_:to:)``).
    @discardableResult
    package static func write(_ text: String, to fd: Int32) -> Int32? {
        var text = text
        return text.withUTF8 { write(UnsafeRawBufferPointer($0), to: fd) }
    }

    /// Writes `text` to stderr; a failure loses the text and is otherwise ignored.
    package static func writeError(_ text: String) { write(text, to: 2) }

    /// The `errno` of the first write to stdout that failed, or nil.
    package static var stdoutError: Int32? {
        let code = stdoutFailure.load(ordering: .relaxed)
        return code == 0 ? nil : code
    }
}

private func systemWrite(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, pointer, count)
}
