import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// What a finished `fvd` process left behind.
struct ProcessResult {
    var pid: Int32
    var status: Int32
    var stdout: String
    var stderr: String
    var seconds: Double
    /// The stderr lines that are not empty.
    var errorLines: [Substring] { stderr.split(separator: "\n") }
}

/// The `fvd` executable built beside the test bundle (`swift test` builds every product).
func fvdExecutable() throws -> URL {
    var directory = Bundle.main.bundleURL
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("fvd")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory.deleteLastPathComponent()
    }
    Issue.record("fvd executable not found near \(Bundle.main.bundleURL.path); run `swift build` first")
    throw CancellationError()
}

/// Runs `fvd arguments…` and returns its exit status and output; kills it and records a
/// test failure if it runs longer than `timeout` seconds (a hang is a failure, never a wait).
/// `environment` is added to this process's.
func runFVD(_ arguments: [String], timeout: Double = 60, environment: [String: String] = [:]) throws -> ProcessResult {
    try runProgram(try fvdExecutable(), arguments, timeout: timeout, environment: environment)
}

/// Runs `executable arguments…` as ``runFVD(_:timeout:environment:)`` runs fvd.
func runProgram(
    _ executable: URL, _ arguments: [String], timeout: Double = 60, environment: [String: String] = [:]
) throws -> ProcessResult {
    try runProgram(executable, arguments, timeout: timeout, environment: environment, when: { false }, { _ in }).result
}

/// Runs `executable arguments…`, calls `whileRunning` with its process id once `ready` is
/// true (checked every 2 ms; never if the process ends first), and returns whether it did
/// and how the process ended; kills it and records a test failure after `timeout` seconds.
func runProgram(
    _ executable: URL, _ arguments: [String], timeout: Double = 60, environment: [String: String] = [:],
    when ready: () -> Bool, _ whileRunning: (pid_t) -> Void
) throws -> (ran: Bool, result: ProcessResult) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let start = Date()
    try process.run()
    // Read both pipes while the process runs so a full pipe cannot block it.
    let outData = Mutexed(Data()), errData = Mutexed(Data())
    let readers = DispatchGroup()
    for (pipe, box) in [(out, outData), (err, errData)] {
        readers.enter()
        DispatchQueue.global().async {
            box.set(pipe.fileHandleForReading.readDataToEndOfFile())
            readers.leave()
        }
    }
    let deadline = Date().addingTimeInterval(timeout)
    var ran = false
    while process.isRunning, Date() < deadline {
        if !ran, ready() {
            whileRunning(process.processIdentifier)
            ran = true
        }
        usleep(2_000)
    }
    if process.isRunning {
        process.terminate()
        Issue.record("\(executable.lastPathComponent) \(arguments.joined(separator: " ")) ran longer than \(timeout) s and was killed")
        // A process that blocks SIGTERM (a hung mpirun does) must not hang the test run.
        let killBy = Date().addingTimeInterval(5)
        while process.isRunning, Date() < killBy { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
    process.waitUntilExit()
    readers.wait()
    return (ran, ProcessResult(
        pid: process.processIdentifier, status: process.terminationStatus, stdout: String(decoding: outData.get(), as: UTF8.self),
        stderr: String(decoding: errData.get(), as: UTF8.self), seconds: Date().timeIntervalSince(start)))
}

/// The pids of processes whose command line has `argument` as one of its words.
func processes(withArgument argument: String) -> [Int32] {
    let proc = URL(fileURLWithPath: "/proc")
    return listing(proc).compactMap { entry -> Int32? in
        guard let pid = Int32(entry), let data = try? Data(contentsOf: proc.appendingPathComponent("\(entry)/cmdline")) else { return nil }
        return data.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == argument } ? pid : nil
    }
}

/// Processes whose environment contains `marker` (ranks or launchers of one run).
func processes(marked marker: String) -> [String] {
    listing(URL(fileURLWithPath: "/proc")).filter { pid in
        guard Int(pid) != nil, let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
        return environ.split(separator: 0).contains { $0.elementsEqual(marker.utf8) }
    }
}

/// Waits up to `seconds` for every process with `argument` on its command line to be gone;
/// returns the ones left.
func leftovers(withArgument argument: String, within seconds: Double = 3) -> [Int32] {
    let deadline = Date().addingTimeInterval(seconds)
    while true {
        let left = processes(withArgument: argument)
        if left.isEmpty || Date() > deadline { return left }
        usleep(20_000)
    }
}

/// A value shared between the reader threads and the test.
final class Mutexed<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func set(_ v: Value) { lock.withLock { value = v } }
    func get() -> Value { lock.withLock { value } }
}

/// A fresh empty folder under the system temporary folder, removed by the caller.
func temporaryFolder(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("fvd-\(label)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// The names in `folder`, sorted; hidden ones included.
func listing(_ folder: URL) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).sorted()
}

/// What `--transport mpi` says outside `mpirun`: in a build without the MPI trait, that
/// it is not built; with it, how to start the ranks.
#if MPI
let mpiUnavailableOrNotUnderMPIRun = "--transport mpi: start the ranks with mpirun"
#else
let mpiUnavailableOrNotUnderMPIRun = "transport 'mpi' is not in this build: build with `swift build --traits MPI`"
#endif
