import Dispatch
import Foundation
import Logging
import Metrics
import Synchronization

/// What the library reports about itself: a swift-log logger and swift-metrics instruments.
///
/// **Logging.** Every rank logs through ``logger`` (label `fastvideo.distributed`, with
/// the rank as `rank` metadata). The library logs at `debug` and `trace` only, so it is
/// silent unless asked: `FVD_LOG_LEVEL=debug` (like `NCCL_DEBUG=INFO`) prints each rank's
/// group layout when it is made and one line per collective (operation, group, call
/// number, shape, dtype, bytes, time, GB/s); `trace` adds a line when each call starts,
/// so a stuck rank shows where it waits. Lines go to the process's logging backend
/// (`LoggingSystem.bootstrap`; swift-log's default writes to stdout, `fvd` to stderr).
///
/// **Metrics.** Per operation, group and rank: counters `fvd.collective.calls`,
/// `fvd.collective.bytes` and `fvd.collective.failures`, and the timer
/// `fvd.collective.duration` (nanoseconds), made through `MetricsSystem`'s factory when a
/// group first runs that operation (bootstrap the backend before making the world).
/// Dimensions: `op` (e.g. `all_gather`, `send`), `group` (e.g. `tp0`), `rank` (world rank).
/// Bytes are the payload of the call on that rank: the input tensor's size (nccl-tests'
/// "size"); for `recv`, the received tensor's.
public enum Diagnostics {
    /// The label of the library's logger.
    public static let loggerLabel = "fastvideo.distributed"

    private static let state = Locked<Logger?>(nil)
    /// The ordinal (``ordinal(_:)``) of the logger's level, read without a lock on every
    /// collective; -1 until the logger is made.
    private static let levelOrdinal = Atomic<Int>(-1)

    /// The library's logger: made on first use with the level `FVD_LOG_LEVEL` names
    /// (`trace`, `debug`, `info`, `notice`, `warning`, `error`, `critical`), `info` when
    /// unset. Set it to use another logger or level (`fvd demo --verbose` sets `debug`).
    public static var logger: Logger {
        get { state.withLock { current in current ?? makeLogger(&current) } }
        set {
            state.withLock { $0 = newValue }
            levelOrdinal.store(ordinal(newValue.logLevel), ordering: .relaxed)
        }
    }

    /// Whether messages of `level` are logged, without taking a lock once the logger exists.
    static func logs(_ level: Logger.Level) -> Bool {
        var current = levelOrdinal.load(ordering: .relaxed)
        if current < 0 { current = ordinal(logger.logLevel) }
        return ordinal(level) >= current
    }

    /// A level's place from `trace` (0) to `critical` (6), without building `allCases`.
    private static func ordinal(_ level: Logger.Level) -> Int {
        switch level {
        case .trace: return 0
        case .debug: return 1
        case .info: return 2
        case .notice: return 3
        case .warning: return 4
        case .error: return 5
        case .critical: return 6
        }
    }

    private static func makeLogger(_ slot: inout Logger?) -> Logger {
        var logger = Logger(label: loggerLabel)
        let text = ProcessInfo.processInfo.environment["FVD_LOG_LEVEL"]
        let level = text.flatMap { Logger.Level(rawValue: $0.lowercased()) }
        logger.logLevel = level ?? .info
        if let text, level == nil {
            logger.warning("FVD_LOG_LEVEL=\(text) is not one of trace, debug, info, notice, warning, error, critical; using info")
        }
        slot = logger
        levelOrdinal.store(ordinal(logger.logLevel), ordering: .relaxed)
        return logger
    }

    /// Logs `message` at `level` with the rank as metadata, if that level is on.
    static func log(_ level: Logger.Level, rank: Int, _ message: @autoclosure () -> String) {
        guard logs(level) else { return }
        logger.log(level: level, "\(message())", metadata: ["rank": "\(rank)"])
    }
}

/// The metrics of one operation on one group and rank.
final class CollectiveInstruments: Sendable {
    let calls: Counter
    let bytes: Counter
    let failures: Counter
    let duration: Metrics.Timer
    /// Whether no metrics backend was bootstrapped when these were made: swift-metrics'
    /// instruments keep the backend of their creation, so recording is skipped for good.
    let discarded: Bool

    init(op: String, group: String, rank: Int) {
        let dimensions = [("op", op), ("group", group), ("rank", String(rank))]
        discarded = MetricsSystem.factory is NOOPMetricsHandler
        calls = Counter(label: "fvd.collective.calls", dimensions: dimensions)
        bytes = Counter(label: "fvd.collective.bytes", dimensions: dimensions)
        failures = Counter(label: "fvd.collective.failures", dimensions: dimensions)
        duration = Metrics.Timer(label: "fvd.collective.duration", dimensions: dimensions)
    }

    /// Counts one completed call of `bytes` that ran between the ``TickClock`` readings
    /// `start` and `end` (converted only when recorded).
    func record(bytes count: Int, from start: UInt64, to end: UInt64) {
        if discarded { return }
        calls.increment()
        bytes.increment(by: count)
        duration.recordNanoseconds(Int64(clamping: TickClock.nanoseconds(from: start, to: end)))
    }
}

/// The line `FVD_LOG_LEVEL=debug` prints for one finished call.
func collectiveLogLine(op: String, group: String, call: Int, shape: [Int], dtype: DType, bytes: Int, nanoseconds: UInt64) -> String {
    let micros = Double(nanoseconds) / 1e3
    let rate = nanoseconds > 0 ? Double(bytes) / Double(nanoseconds) : 0
    return "\(op) \(group) call #\(call) shape \(shape) \(dtype) \(bytes) B "
        + String(format: "%.1f µs %.2f GB/s", micros, rate)
}
