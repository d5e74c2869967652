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
/// start and end time, outcome) at the cost of two uncontended locks and two clock reads.
/// When a collective throws, the recorder is written:
/// - to `FVD_FLIGHT_RECORDER_DIR/rank<R>.json` (atomically, replaced on each failure)
///   when that variable names a folder, for every transport;
/// - to standard error as a short table, once per rank, when a multi-process rank's group
///   breaks (timeout, peer failure or exit), since its stderr is all a user sees of it.
///
/// Read it at any time through ``GroupCoordinator/flightRecorder``. Comparing the ranks'
/// last records shows which rank was where: the one still `running` an earlier call, or
/// missing the call the others wait in, is the culprit.
public final class FlightRecorder: Sendable {
    /// The world rank whose calls this records.
    public let rank: Int
    /// How many calls are kept (the oldest is dropped first).
    public let capacity: Int
    let directory: String?
    let printsOnBreak: Bool

    /// `slots[sequence % capacity]` holds call `sequence`; the newest `min(next, capacity)` are valid.
    private struct Ring {
        var slots: [FlightRecord] = []
        var next = 0
        var printed = false

        var ordered: [FlightRecord] {
            guard slots.count < next else { return slots }
            let head = next % slots.count
            return Array(slots[head...]) + Array(slots[..<head])
        }
    }
    private let ring = Locked(Ring())

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
    }

    /// The folder `FVD_FLIGHT_RECORDER_DIR` names, if any.
    static var directoryFromEnvironment: String? {
        ProcessInfo.processInfo.environment["FVD_FLIGHT_RECORDER_DIR"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The kept calls, oldest first.
    public var records: [FlightRecord] { ring.withLock { $0.ordered } }

    /// Records the start of a call and returns its sequence number.
    func begin(op: String, group: String, call: Int, shape: [Int], dtype: DType) -> Int {
        let now = Date().timeIntervalSince1970
        return ring.withLock { ring in
            let record = FlightRecord(
                sequence: ring.next, op: op, group: group, call: call, shape: shape, dtype: dtype, start: now, end: nil,
                status: .running, error: nil)
            if ring.slots.count < capacity {
                ring.slots.append(record)
            } else {
                ring.slots[ring.next % capacity] = record
            }
            ring.next += 1
            return record.sequence
        }
    }

    /// Records the end of call `sequence`: completed, or failed with `error`.
    func end(_ sequence: Int, error: (any Error)? = nil) {
        let now = Date().timeIntervalSince1970
        ring.withLock { ring in
            let i = sequence % capacity
            guard i < ring.slots.count, ring.slots[i].sequence == sequence else { return }
            ring.slots[i].end = now
            ring.slots[i].status = error == nil ? .completed : .failed
            ring.slots[i].error = error.map { String(describing: $0) }
        }
    }

    /// Writes the records where the environment asked after a collective threw `error`.
    func reportFailure(_ error: any Error) {
        if let directory {
            try? write(toDirectory: directory)
        }
        guard printsOnBreak, (error as? FVDError)?.breaksGroup == true else { return }
        let first = ring.withLock { ring in
            defer { ring.printed = true }
            return !ring.printed
        }
        if first { FileHandle.standardError.write(Data(summary(last: 8).utf8)) }
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
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw FVDError.file(path: directory, problem: "cannot create the flight recorder folder: \(error.localizedDescription)")
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
