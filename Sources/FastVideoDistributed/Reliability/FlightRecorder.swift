import CFVDShims
import Foundation
import Synchronization

/// One collective call as a rank's ``FlightRecorder`` saw it.
public struct FlightRecord: Sendable, Codable, Equatable {
    /// Where the call stands.
    public enum Status: String, Sendable, Codable {
        /// The rank is inside the call (or died there).
        case running
        /// The call returned its result.
        case completed
        /// The call threw; ``FlightRecord/error`` says why.
        case failed
    }

    /// The rank's collective count before this call, over all its groups (0 for its first).
    public var sequence: Int
    /// The operation, e.g. `all_gather`, `all_to_all_4D`.
    public var op: String
    /// The group's label, e.g. `tp0 [0, 1]`.
    public var group: String
    /// The call number within the group, as in errors (`call #3`).
    public var call: Int
    /// Shape of this rank's input.
    public var shape: [Int]
    /// Element type of this rank's input.
    public var dtype: DType
    /// When the call started, in seconds since 1970.
    public var start: Double
    /// When it returned or threw; `nil` while running.
    public var end: Double?
    /// Where the call stands.
    public var status: Status
    /// The error's message for a failed call.
    public var error: String?
}

/// The last collective calls of one rank, in a ring buffer: what it was doing when a
/// collective failed, like NCCL's flight recorder.
///
/// Every rank records each collective it starts (op, group, call number, shape, dtype,
/// start and end time, outcome) as a few words in a preallocated ring: no lock, no
/// allocation and no text on the way (records become ``FlightRecord``s when read).
/// When a collective throws, the recorder is written:
/// - to `FVD_FLIGHT_RECORDER_DIR/rank<R>.json` (atomically, replaced on each failure)
///   when that variable names a folder, for every transport;
/// - to standard error as a short table, once per rank, when a multi-process rank's group
///   breaks (timeout, peer failure or exit), since its stderr is all a user sees of it.
///
/// Read it at any time through ``GroupCoordinator/flightRecorder``. Comparing the ranks'
/// last records shows which rank was where: the one still `running` an earlier call, or
/// missing the call the others wait in, is the culprit. A record shows at most the first
/// eight dimensions of a shape.
public final class FlightRecorder: @unchecked Sendable {
    /// The world rank whose calls this records.
    public let rank: Int
    /// How many calls are kept (the oldest is dropped first).
    public let capacity: Int
    let directory: String?
    let printsOnBreak: Bool

    /// A group label registered with ``label(_:)``: what a record stores instead of the text.
    typealias Label = Int

    /// The words of one record. Word 0 is `sequence + 1` once the record is complete (0 while
    /// it is written, so a reader skips it); the others are written with relaxed atomics.
    private enum Word {
        static let version = 0, codes = 1, label = 2, call = 3, start = 4, end = 5, status = 6, shape = 7
        static let storedDims = 8
        static let count = 16
    }
    /// Invariant: one cache line holding the next sequence number (word 0), then `capacity ×
    /// Word.count` words of records, 64-byte aligned, accessed only through C11 atomics
    /// (writers of different threads of the rank, and readers, may meet on a record). The
    /// counter has a line of its own: the ranks of one process each bump theirs on every
    /// call, and sharing a line would make their cores fight over it.
    private let words: UnsafeMutablePointer<UInt64>
    private var next: UnsafeMutablePointer<UInt64> { words }
    private var ring: UnsafeMutablePointer<UInt64> { words + 8 }
    private let labels = Locked<(names: [String], index: [String: Int])>(([], [:]))
    /// The messages of failed calls, by sequence (the last `capacity` at most).
    private let errors = Locked<[Int: String]>([:])
    private let printed = Atomic<Bool>(false)
    /// Whether this rank has warned that its records could not be written.
    private let warnedUnwritable = Atomic<Bool>(false)
    /// Wall-clock time minus monotonic time, to turn record times into dates.
    private let wallOffset: Int64
    // Record times are ``TickClock`` readings.

    /// Default capacity: the last 64 calls.
    public static let defaultCapacity = 64

    /// - Parameters:
    ///   - directory: where failures are written as `rank<R>.json`; `nil` for nowhere.
    ///   - printsOnBreak: print the last calls to stderr when a group breaks.
    init(rank: Int, capacity: Int = FlightRecorder.defaultCapacity, directory: String?, printsOnBreak: Bool) {
        self.rank = rank
        self.capacity = max(1, capacity)
        self.directory = directory
        self.printsOnBreak = printsOnBreak
        let raw = UnsafeMutableRawPointer.allocate(byteCount: (8 + self.capacity * Word.count) * 8, alignment: 64)
        words = raw.initializeMemory(as: UInt64.self, repeating: 0, count: 8 + self.capacity * Word.count)
        wallOffset = Int64(bitPattern: fvd_wall_ns() &- fvd_now_ns())
        TickClock.prepare()
    }

    deinit { words.deallocate() }

    /// The folder `FVD_FLIGHT_RECORDER_DIR` names, if any.
    static var directoryFromEnvironment: String? {
        ProcessInfo.processInfo.environment["FVD_FLIGHT_RECORDER_DIR"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Whether a multi-process rank prints its last calls to standard error when a group
    /// breaks: yes unless `FVD_FLIGHT_RECORDER_STDERR=0` (for programs whose stderr is
    /// their users'; the records still go to `FVD_FLIGHT_RECORDER_DIR` when it is set).
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a value other than `0` or `1`.
    static func printsOnBreakFromEnvironment() throws -> Bool {
        switch ProcessInfo.processInfo.environment["FVD_FLIGHT_RECORDER_STDERR"] {
        case nil, "1": return true
        case "0": return false
        case let text?: throw FVDError.invalidArgument("FVD_FLIGHT_RECORDER_STDERR=\(text) is not 0 or 1")
        }
    }

    /// ``printsOnBreakFromEnvironment()`` for a recorder made after the world checked the
    /// variable (a malformed value has been reported there).
    static var printsOnBreakByDefault: Bool { (try? printsOnBreakFromEnvironment()) ?? true }

    /// The label a group's records carry (the same for the same text).
    func label(_ text: String) -> Label {
        labels.withLock { labels in
            if let known = labels.index[text] { return known }
            labels.names.append(text)
            labels.index[text] = labels.names.count - 1
            return labels.names.count - 1
        }
    }

    private func record(_ sequence: Int) -> UnsafeMutablePointer<UInt64> { ring + (sequence % capacity) * Word.count }

    /// The kept calls, oldest first.
    public var records: [FlightRecord] {
        let end = Int(fvd_atomic_load_u64(next))
        let names = labels.withLock { $0.names }
        let messages = errors.withLock { $0 }
        return (max(0, end - capacity)..<end).compactMap { read($0, names: names, messages: messages) }
    }

    /// Record `sequence` if it is still in the ring and complete.
    private func read(_ sequence: Int, names: [String], messages: [Int: String]) -> FlightRecord? {
        let r = record(sequence)
        guard fvd_atomic_load_u64(r) == UInt64(sequence + 1) else { return nil }
        func word(_ i: Int) -> UInt64 { fvd_atomic_load_relaxed_u64(r + i) }
        let codes = word(Word.codes), label = Int(word(Word.label))
        let ndim = Int(codes >> 16 & 0xFFFF)
        let shape = (0..<min(ndim, Word.storedDims)).map { Int(Int64(bitPattern: word(Word.shape + $0))) }
        let start = word(Word.start), end = word(Word.end), status = word(Word.status)
        let result = FlightRecord(
            sequence: sequence, op: (CollectiveOp(rawValue: UInt8(codes & 0xFF)) ?? .corrupt).name,
            group: names.indices.contains(label) ? names[label] : "?", call: Int(Int64(bitPattern: word(Word.call))),
            shape: shape, dtype: DType(code: UInt8(codes >> 8 & 0xFF)), start: date(start), end: end == 0 ? nil : date(end),
            status: status == 0 ? .running : status == 1 ? .completed : .failed, error: status == 2 ? messages[sequence] : nil)
        // A writer that reused the record meanwhile makes this read meaningless.
        return fvd_atomic_load_u64(r) == UInt64(sequence + 1) ? result : nil
    }

    private func date(_ ticks: UInt64) -> Double {
        Double(Int64(bitPattern: TickClock.monotonicNanoseconds(ticks)) &+ wallOffset) / 1e9
    }

    /// Records the start of a call at `time` (a ``TickClock`` reading) and returns its sequence number.
    func begin(op: CollectiveOp, label: Label, call: Int, shape: [Int], dtype: DType, at time: UInt64 = TickClock.now()) -> Int {
        let sequence = Int(fvd_atomic_add_u64(next, 1) - 1)
        let r = record(sequence)
        fvd_atomic_store_u64(r, 0)
        func set(_ i: Int, _ value: UInt64) { fvd_atomic_store_relaxed_u64(r + i, value) }
        set(Word.codes, UInt64(op.rawValue) | UInt64(dtype.code) << 8 | UInt64(min(shape.count, 0xFFFF)) << 16)
        set(Word.label, UInt64(label))
        set(Word.call, UInt64(bitPattern: Int64(call)))
        set(Word.start, time)
        set(Word.end, 0)
        set(Word.status, 0)
        for (i, d) in shape.prefix(Word.storedDims).enumerated() { set(Word.shape + i, UInt64(bitPattern: Int64(d))) }
        fvd_atomic_store_u64(r, UInt64(sequence + 1))
        return sequence
    }

    /// Records the end of call `sequence` at `time` (a ``TickClock`` reading): completed, or
    /// failed with `error`. Ignored when the record has been reused.
    func end(_ sequence: Int, at time: UInt64 = TickClock.now(), error: (any Error)? = nil) {
        let r = record(sequence)
        guard fvd_atomic_load_u64(r) == UInt64(sequence + 1) else { return }
        if let error {
            let message = String(describing: error)
            errors.withLock { errors in
                errors[sequence] = message
                if errors.count > capacity { errors = errors.filter { $0.key > sequence - capacity } }
            }
        }
        fvd_atomic_store_relaxed_u64(r + Word.end, time)
        fvd_atomic_store_relaxed_u64(r + Word.status, error == nil ? 1 : 2)
    }

    /// Writes the records where the environment asked after a collective threw `error`.
    ///
    /// When they cannot be written there (the folder is a file, is read-only…), the rank
    /// says so once, in one `warning:` line on stderr naming the path and the reason; the
    /// collective's own error is reported as usual.
    func reportFailure(_ error: any Error) {
        if let directory {
            do {
                try write(toDirectory: directory)
            } catch {
                if !warnedUnwritable.exchange(true, ordering: .relaxed) {
                    let reason = (error as? FVDError).map { "\($0)" } ?? error.localizedDescription
                    StandardStreams.writeError(
                        "warning: rank \(rank): flight recorder not saved (FVD_FLIGHT_RECORDER_DIR=\(directory)): \(reason)\n")
                }
            }
        }
        guard printsOnBreak, (error as? FVDError)?.breaksGroup == true else { return }
        if !printed.exchange(true, ordering: .relaxed) { StandardStreams.writeError(summary(last: 8)) }
    }

    /// The records as JSON: `{"rank": R, "capacity": N, "records": [...]}`, oldest first.
    public func jsonData() throws -> Data {
        struct Dump: Encodable {
            var rank: Int
            var capacity: Int
            var records: [FlightRecord]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(Dump(rank: rank, capacity: capacity, records: records))
    }

    /// Writes ``jsonData()`` to `directory/rank<R>.json` atomically, creating the folder.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` when the folder or file cannot be written.
    public func write(toDirectory directory: String) throws {
        let path = "\(directory)/rank\(rank).json"
        // Like `mkdir -p`, with the system's reason when a level cannot be made.
        var prefix = directory.hasPrefix("/") ? "/" : ""
        for component in directory.split(separator: "/") {
            prefix += component
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: prefix, isDirectory: &isDirectory) {
                guard isDirectory.boolValue else { throw FVDError.file(path: prefix, problem: "is not a folder") }
            } else if mkdir(prefix, 0o777) != 0, errno != EEXIST {
                throw FVDError.file(path: prefix, problem: "cannot create the flight recorder folder: \(errnoText(errno))")
            }
            prefix += "/"
        }
        try writeFileAtomically(Array(try jsonData()), to: path)
    }

    /// The last `count` records as text, one line each, e.g.
    /// `#12 all_gather tp0 [0, 1] call #5 [4, 8] float32: completed in 0.120 ms`.
    public func summary(last count: Int = FlightRecorder.defaultCapacity) -> String {
        let all = records
        let shown = all.suffix(count)
        var text = "flight recorder of rank \(rank): last \(shown.count) of \(all.last.map { $0.sequence + 1 } ?? 0) calls\n"
        for r in shown {
            let milliseconds = ((r.end ?? Date().timeIntervalSince1970) - r.start) * 1000
            let time = String(format: "%.3f ms", milliseconds)
            let outcome: String
            switch r.status {
            case .running: outcome = "running for \(time)"
            case .completed: outcome = "completed in \(time)"
            case .failed: outcome = "failed after \(time): \(r.error ?? "")"
            }
            text += "  #\(r.sequence) \(r.op) \(r.group) call #\(r.call) \(r.shape) \(r.dtype): \(outcome)\n"
        }
        return text
    }
}
