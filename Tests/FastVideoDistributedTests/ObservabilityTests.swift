import Foundation
import InMemoryLogging
import Logging
import Metrics
import MetricsTestKit
import Testing

@testable import FastVideoDistributed

/// The test process's metrics backend, bootstrapped once (as an application would).
private let testMetrics: TestMetrics = {
    let metrics = TestMetrics()
    MetricsSystem.bootstrap(metrics)
    return metrics
}()

/// Every rank's part of a run on a subgroup of all ranks named `name` (so the metrics and
/// log lines of other tests running at the same time are told apart).
private func runOnNamedGroup<R: Sendable>(
    _ name: String, size: Int, _ body: @escaping @Sendable (GroupCoordinator) throws -> R
) throws -> [R] {
    try World.inProcess(size: size, timeout: 30).run { world in
        try body(try world.subgroup(name: name, ranks: world.ranks))
    }
}

@Suite("Observability: swift-metrics counters and timers, swift-log lines", .serialized)
struct ObservabilityTests {
    @Test("metrics count the calls, the bytes each rank passed or received, the time and the failures")
    func metrics() throws {
        let metrics = testMetrics
        let name = "metrics-\(UUID().uuidString.prefix(8))"
        _ = try runOnNamedGroup(name, size: 3) { group -> Int in
            let x = try Tensor(zeros: [4, 5], dtype: .float32)  // 80 bytes
            for _ in 0..<3 { _ = try group.allGather(x, dim: 0) }
            _ = try group.allReduce(try Tensor(zeros: [10], dtype: .float64))  // 80 bytes
            if group.rankInGroup == 0 { try group.send(try Tensor(zeros: [7], dtype: .int16), to: 1) }  // 14 bytes
            if group.rankInGroup == 1 { _ = try group.recv(from: 0) }
            // A shape mismatch: a failure on every rank.
            _ = try? group.allReduce(try Tensor(zeros: [group.rankInGroup == 2 ? 3 : 2], dtype: .float32))
            return 0
        }
        func dimensions(_ op: String, _ rank: Int) -> [(String, String)] { [("op", op), ("group", name), ("rank", "\(rank)")] }
        for rank in 0..<3 {
            #expect(try metrics.expectCounter("fvd.collective.calls", dimensions("all_gather", rank)).totalValue == 3)
            #expect(try metrics.expectCounter("fvd.collective.bytes", dimensions("all_gather", rank)).totalValue == 240)
            #expect(try metrics.expectCounter("fvd.collective.bytes", dimensions("all_reduce", rank)).totalValue == 80)
            #expect(try metrics.expectCounter("fvd.collective.calls", dimensions("all_reduce", rank)).totalValue == 1)
            #expect(try metrics.expectCounter("fvd.collective.failures", dimensions("all_reduce", rank)).totalValue == 1)
            let timer = try metrics.expectTimer("fvd.collective.duration", dimensions("all_gather", rank))
            #expect(timer.values.count == 3 && timer.values.allSatisfy { $0 > 0 })
        }
        #expect(try metrics.expectCounter("fvd.collective.bytes", dimensions("send", 0)).totalValue == 14)
        #expect(try metrics.expectCounter("fvd.collective.bytes", dimensions("recv", 1)).totalValue == 14)
        #expect(metrics.counters(label: "fvd.collective.calls", dimensions: dimensions("send", 2)).isEmpty)
    }

    @Test("FVD_LOG_LEVEL levels: silent at info; debug logs the layout and one line per collective; trace adds the starts")
    func logLines() throws {
        let saved = Diagnostics.logger
        defer { Diagnostics.logger = saved }
        for level in [Logger.Level.info, .debug, .trace] {
            let handler = InMemoryLogHandler()
            var logger = Logger(label: Diagnostics.loggerLabel, factory: { _ in handler })
            logger.logLevel = level
            Diagnostics.logger = logger
            let name = "log-\(UUID().uuidString.prefix(8))"
            _ = try runOnNamedGroup(name, size: 2) { group -> Int in
                _ = try group.allGather(try Tensor(zeros: [2, 3, 4], dtype: .bfloat16), dim: 1)
                _ = try ParallelState(world: group, tensorParallel: 2, sequenceParallel: 1)
                return 0
            }
            Diagnostics.logger = saved
            let lines = handler.entries.filter { "\($0.message)".contains(name) || "\($0.message)".hasPrefix("layout") }
            switch level {
            case .info:
                #expect(lines.isEmpty, "\(lines)")
            default:
                for rank in 0..<2 {
                    let mine = lines.filter { $0.metadata["rank"] == "\(rank)" }.map { "\($0.message)" }
                    let done = mine.filter { $0.hasPrefix("all_gather \(name) [0, 1] call #0 shape [2, 3, 4] bfloat16 48 B ") }
                    #expect(done.count == 1 && done[0].hasSuffix(" GB/s"), "\(mine)")
                    #expect(mine.contains("layout: tp0: ranks [0, 1] *"), "\(mine)")
                    #expect(mine.contains { $0.hasPrefix("begin all_gather \(name)") } == (level == .trace), "\(mine)")
                    #expect(lines.allSatisfy { $0.level >= level })
                }
            }
        }
    }
}
