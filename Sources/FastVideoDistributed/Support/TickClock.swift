import CFVDShims

/// Times calls with ``fvd_ticks()`` (the CPU's time-stamp counter), whose rate is measured
/// once per process against the monotonic clock, so the hot path reads no system clock.
///
/// The first use spins 2 ms to measure the rate; later conversions are arithmetic.
enum TickClock {
    private struct Calibration {
        let originTicks: UInt64
        let originNanoseconds: UInt64
        let nanosecondsPerTick: Double
    }

    private static let calibration: Calibration = {
        let ticks0 = fvd_ticks(), ns0 = fvd_now_ns()
        var ns1 = ns0
        while ns1 &- ns0 < 2_000_000 { ns1 = fvd_now_ns() }
        let ticks1 = fvd_ticks()
        let rate = ticks1 > ticks0 ? Double(ns1 &- ns0) / Double(ticks1 &- ticks0) : 1
        return Calibration(originTicks: ticks0, originNanoseconds: ns0, nanosecondsPerTick: rate)
    }()

    /// Makes sure the rate is measured (so the first timed call does not pay for it).
    static func prepare() { _ = calibration }

    /// The counter now.
    @inline(__always)
    static func now() -> UInt64 { fvd_ticks() }

    /// The nanoseconds between two readings (0 if the counter went backwards).
    static func nanoseconds(from start: UInt64, to end: UInt64) -> UInt64 {
        end > start ? UInt64(Double(end &- start) * calibration.nanosecondsPerTick) : 0
    }

    /// A reading as CLOCK_MONOTONIC nanoseconds.
    static func monotonicNanoseconds(_ ticks: UInt64) -> UInt64 {
        let c = calibration
        let offset = Double(Int64(bitPattern: ticks &- c.originTicks)) * c.nanosecondsPerTick
        return UInt64(max(0, Double(c.originNanoseconds) + offset))
    }
}
