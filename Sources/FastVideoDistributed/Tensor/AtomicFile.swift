#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The text of an `errno` value, e.g. "No such file or directory".
func errnoText(_ code: Int32) -> String {
    guard let cString = strerror(code) else { return "error \(code)" }
    return String(cString: cString)
}

/// Reads a whole file into memory.
///
/// - Throws: ``FVDError/file(path:problem:)`` with the system's reason when the file
///   is missing, unreadable or a directory.
func readWholeFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        throw FVDError.file(path: path, problem: "cannot open for reading: \(errnoText(errno))")
    }
    defer { close(fd) }

    var info = stat()
    guard fstat(fd, &info) == 0 else {
        throw FVDError.file(path: path, problem: "cannot stat: \(errnoText(errno))")
    }
    if (info.st_mode & S_IFMT) == S_IFDIR {
        throw FVDError.file(path: path, problem: "is a directory, not a file")
    }

    // The size is a hint: read until end of file whatever it says.
    var bytes: [UInt8] = []
    bytes.reserveCapacity(max(Int(info.st_size), 0))
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw FVDError.file(path: path, problem: "cannot read: \(errnoText(errno))")
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return bytes
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory,
/// which is then renamed over `path`. Readers see the old file or the new one, never
/// a part. On any failure the temporary file is removed and `path` is untouched.
///
/// - Throws: ``FVDError/file(path:problem:)`` with the system's reason.
func writeFileAtomically(_ bytes: [UInt8], to path: String) throws {
    guard !path.isEmpty else { throw FVDError.file(path: path, problem: "empty file name") }
    let directory: String
    let name: String
    if let slash = path.lastIndex(of: "/") {
        directory = String(path[...slash])
        name = String(path[path.index(after: slash)...])
    } else {
        directory = ""
        name = path
    }
    guard !name.isEmpty else { throw FVDError.file(path: path, problem: "is a directory name, not a file name") }

    let temporary = "\(directory).\(name).tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF_FFFF)"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        throw FVDError.file(path: path, problem: "cannot create a temporary file in its directory: \(errnoText(errno))")
    }
    var closed = false
    var renamed = false
    defer {
        if !closed { close(fd) }
        if !renamed { unlink(temporary) }
    }

    var written = 0
    while written < bytes.count {
        let n = bytes.withUnsafeBytes { raw in
            write(fd, raw.baseAddress! + written, min(raw.count - written, 1 << 30))
        }
        if n < 0 {
            if errno == EINTR { continue }
            throw FVDError.file(path: path, problem: "cannot write: \(errnoText(errno))")
        }
        written += n
    }
    guard fsync(fd) == 0 else {
        throw FVDError.file(path: path, problem: "cannot flush to disk: \(errnoText(errno))")
    }
    closed = true
    guard close(fd) == 0 else {
        throw FVDError.file(path: path, problem: "cannot close: \(errnoText(errno))")
    }
    guard rename(temporary, path) == 0 else {
        throw FVDError.file(path: path, problem: "cannot rename the temporary file into place: \(errnoText(errno))")
    }
    renamed = true
}
