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

/// Writes `bytes` to `path`, atomically where the target is a regular file.
///
/// - A regular file (or a new name) is written into a temporary file in the same
///   directory, which is then renamed over it: readers see the old file or the new one,
///   never a part; on any failure the temporary file is removed and the file is untouched.
/// - A symbolic link is followed first, so the file it points to is replaced and the
///   link stays a link.
/// - Anything else — a character device such as `/dev/null`, a FIFO, `/dev/stdout`,
///   `/dev/stderr`, `/dev/fd/N` or `/proc/self/fd/N` — is written straight through, as
///   `cat > PATH` would; the path is never replaced (as root, a rename would turn
///   `/dev/null` into a regular file).
///
/// - Throws: ``FVDError/file(path:problem:)`` with the system's reason.
package func writeFileAtomically(_ bytes: [UInt8], to path: String) throws {
    guard !path.isEmpty else { throw FVDError.file(path: path, problem: "empty file name") }
    if let fd = standardStreamDescriptor(path) {
        let failure = bytes.withUnsafeBytes { StandardStreams.write($0, to: fd) }
        if let failure { throw FVDError.file(path: path, problem: "cannot write: \(errnoText(failure))") }
        return
    }
    let target = try resolvingSymbolicLinks(path)
    var info = stat()
    if stat(target, &info) == 0 {
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw FVDError.file(path: path, problem: "is a directory, not a file")
        default: return try writeThrough(bytes, to: target, reportedAs: path)
        }
    }
    try replaceRegularFile(bytes, at: target, reportedAs: path)
}

/// The descriptor `path` names when it is one of the process's own streams:
/// `/dev/stdin|stdout|stderr`, `/dev/fd/N`, `/proc/self/fd/N`.
private func standardStreamDescriptor(_ path: String) -> Int32? {
    switch path {
    case "/dev/stdout": return 1
    case "/dev/stderr": return 2
    default:
        for prefix in ["/dev/fd/", "/proc/self/fd/"] where path.hasPrefix(prefix) {
            if let fd = Int32(path.dropFirst(prefix.count)), fd >= 0 { return fd }
        }
        return nil
    }
}

/// `path` with symbolic links in its last component followed (at most 40, as Linux does),
/// relative targets taken from the link's folder. A dangling link gives the name it points to.
private func resolvingSymbolicLinks(_ path: String) throws -> String {
    var current = path
    for _ in 0..<40 {
        var info = stat()
        guard lstat(current, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK else { return current }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(current, &buffer, buffer.count - 1)
        guard count >= 0 else { throw FVDError.file(path: path, problem: "cannot read the symbolic link: \(errnoText(errno))") }
        let destination = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if destination.hasPrefix("/") {
            current = destination
        } else if let slash = current.lastIndex(of: "/") {
            current = String(current[...slash]) + destination
        } else {
            current = destination
        }
    }
    throw FVDError.file(path: path, problem: "too many levels of symbolic links (a loop?)")
}

/// Writes `bytes` into the existing non-regular file `target` (a device, a FIFO).
private func writeThrough(_ bytes: [UInt8], to target: String, reportedAs path: String) throws {
    let fd = open(target, O_WRONLY | O_CLOEXEC | O_NOCTTY)
    guard fd >= 0 else { throw FVDError.file(path: path, problem: "cannot open for writing: \(errnoText(errno))") }
    defer { close(fd) }
    if let failure = bytes.withUnsafeBytes({ StandardStreams.write($0, to: fd) }) {
        throw FVDError.file(path: path, problem: "cannot write: \(errnoText(failure))")
    }
}

/// The temporary-file-and-rename write of ``writeFileAtomically(_:to:)``.
private func replaceRegularFile(_ bytes: [UInt8], at path: String, reportedAs reported: String) throws {
    let directory: String
    let name: String
    if let slash = path.lastIndex(of: "/") {
        directory = String(path[...slash])
        name = String(path[path.index(after: slash)...])
    } else {
        directory = ""
        name = path
    }
    guard !name.isEmpty else { throw FVDError.file(path: reported, problem: "is a directory name, not a file name") }

    let temporary = "\(directory).\(name).tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF_FFFF)"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        throw FVDError.file(path: reported, problem: "cannot create a temporary file in its directory: \(errnoText(errno))")
    }
    var closed = false
    var renamed = false
    defer {
        if !closed { close(fd) }
        if !renamed { unlink(temporary) }
    }
    if let failure = bytes.withUnsafeBytes({ StandardStreams.write($0, to: fd) }) {
        throw FVDError.file(path: reported, problem: "cannot write: \(errnoText(failure))")
    }
    guard fsync(fd) == 0 else {
        throw FVDError.file(path: reported, problem: "cannot flush to disk: \(errnoText(errno))")
    }
    closed = true
    guard close(fd) == 0 else {
        throw FVDError.file(path: reported, problem: "cannot close: \(errnoText(errno))")
    }
    guard rename(temporary, path) == 0 else {
        throw FVDError.file(path: reported, problem: "cannot rename the temporary file into place: \(errnoText(errno))")
    }
    renamed = true
}
