import FastVideoDistributed
import Foundation
import Synchronization

/// A collective that `fvd bench` can time.
public enum BenchOperation: String, CaseIterable, Sendable, Codable {
    case allReduce = "all_reduce"
    case allGather = "all_gather"
    case reduceScatter = "reduce_scatter"
    case allToAll4D = "all_to_all_4d"

    /// nccl-tests' bus-bandwidth factor: how many times the bytes cross the "bus".
    func busFactor(worldSize n: Int) -> Double {
        let f = Double(n - 1) / Double(n)
        return self == .allReduce ? 2 * f : f
    }

    /// nccl-tests' "size" of one call, from the per-rank input bytes.
    func reportedBytes(inputBytes: Int, worldSize n: Int) -> Int {
        self == .allGather ? inputBytes * n : inputBytes
    }

    /// Bytes a perfect implementation must copy per rank (the copy model of the team's
    /// performance notes, `shared/PERFORMANCE.md`):
    /// all-gather writes `n × in`; all-to-all writes `in`; all-reduce writes `in/n` in its
    /// reduce-scatter pass and `in` in its all-gather pass; reduce-scatter must read `in`.
    func modelBytes(inputBytes: Int, worldSize n: Int) -> Int {
        switch self {
        case .allGather: return inputBytes * n
        case .allToAll4D, .reduceScatter: return inputBytes
        case .allReduce: return inputBytes + inputBytes / n
        }
    }
}

/// One row of `fvd bench`: one operation at one size.
public struct BenchRow: Sendable, Codable {
    public var op: BenchOperation
    /// Bytes of each rank's input.
    public var inputBytes: Int
    /// nccl-tests' size column (all-gather: the gathered output).
    public var bytes: Int
    public var count: Int
    public var dtype: DType
    public var medianMicroseconds: Double
    public var minMicroseconds: Double
    public var maxMicroseconds: Double
    public var algorithmBandwidth: Double
    public var busBandwidth: Double
    /// Bandwidth of `memcpy` of the copy-model bytes on every rank at once, in the same run.
    public var memcpyBandwidth: Double
    /// The collective's time as a percentage of the memcpy time of its copy-model bytes.
    public var percentOfCopyModel: Double
}

/// Settings of one `fvd bench` run.
public struct BenchConfiguration: Sendable {
    public var operations: [BenchOperation] = BenchOperation.allCases
    public var worldSize = 2
    public var dtype: DType = .float32
    public var minBytes = 8 << 10
    public var maxBytes = 64 << 20
    public var factor = 2
    public var warmup = 5
    public var iterations = 20
    public init() {}

    /// Per-rank input sizes from `minBytes` to `maxBytes`, multiplying by `factor` (≥ 2).
    public var sizes: [Int] {
        var out: [Int] = []
        var s = minBytes
        while s >= 1, s <= maxBytes {
            out.append(s)
            let (next, overflow) = s.multipliedReportingOverflow(by: factor)
            if overflow || factor < 2 { break }
            s = next
        }
        return out
    }
}

/// Times the collectives on an in-process world, and `memcpy` of the same bytes beside them.
public func runBenchmark(_ config: BenchConfiguration, progress: (String) -> Void = { _ in }) throws -> [BenchRow] {
    guard config.worldSize >= 1 else { throw FVDError.invalidArgument("world size must be at least 1") }
    guard config.iterations >= 1, config.warmup >= 0 else {
        throw FVDError.invalidArgument("iterations must be >= 1 and warmup >= 0")
    }
    guard config.factor >= 2, config.minBytes >= 1, config.minBytes <= config.maxBytes else {
        throw FVDError.invalidArgument(
            "sizes: need 1 <= -b <= -e and a factor -f of at least 2 (got -b \(config.minBytes), -e \(config.maxBytes), -f \(config.factor))")
    }
    let world = try World.inProcess(size: config.worldSize, timeout: 300)
    var rows: [BenchRow] = []
    for op in config.operations {
        for size in config.sizes {
            progress("\(op.rawValue) \(size) bytes")
            let count = max(1, size / config.dtype.byteSize)
            let shape = try inputShape(op, count: count, worldSize: config.worldSize)
            let elements = shape.reduce(1, *)
            let inputBytes = elements * config.dtype.byteSize
            let times = try timeOnRankZero(world, config) { group in
                let x = try Tensor(zeros: shape, dtype: config.dtype)
                return {
                    switch op {
                    case .allReduce: _ = try group.allReduce(x)
                    case .allGather: _ = try group.allGather(x, dim: 0)
                    case .reduceScatter: _ = try group.reduceScatter(x, dim: 0)
                    case .allToAll4D: _ = try group.allToAll4D(x)
                    }
                }
            }
            let modelBytes = op.modelBytes(inputBytes: inputBytes, worldSize: config.worldSize)
            let copyTimes = try timeOnRankZero(world, config) { group in
                let source = try Tensor(zeros: [modelBytes], dtype: .uint8)
                var destination = try Tensor(zeros: [modelBytes], dtype: .uint8)
                return {
                    source.withUnsafeBytes { s in
                        destination.withUnsafeMutableBytes { d in _ = memcpy(d.baseAddress!, s.baseAddress!, modelBytes) }
                    }
                    try group.barrier()
                }
            }
            let median = times.median, copyMedian = copyTimes.median
            let reported = op.reportedBytes(inputBytes: inputBytes, worldSize: config.worldSize)
            let algbw = Double(reported) / median / 1e9
            rows.append(
                BenchRow(
                    op: op, inputBytes: inputBytes, bytes: reported, count: elements, dtype: config.dtype,
                    medianMicroseconds: median * 1e6, minMicroseconds: times.min()! * 1e6,
                    maxMicroseconds: times.max()! * 1e6, algorithmBandwidth: algbw,
                    busBandwidth: algbw * op.busFactor(worldSize: config.worldSize),
                    memcpyBandwidth: Double(modelBytes) / copyMedian / 1e9,
                    percentOfCopyModel: 100 * copyMedian / median))
        }
    }
    return rows
}

/// The input shape for `op` with about `count` elements (a divisible 4-D shape for the all-to-all).
private func inputShape(_ op: BenchOperation, count: Int, worldSize n: Int) throws -> [Int] {
    switch op {
    case .allReduce, .allGather: return [count]
    case .reduceScatter: return [max(n, count / n * n)]
    case .allToAll4D:
        // [1, S/n, H, D] with H = 4n heads of D = 128: balanced and divisible for any n.
        let heads = 4 * n, headDim = 128
        return [1, max(1, count / (heads * headDim)), heads, headDim]
    }
}

/// Runs `prepare` on every rank, then times the returned step `warmup + iterations` times,
/// each after a barrier; returns rank 0's durations in seconds (the collective's own closing
/// rendezvous makes rank 0 finish only when every rank has).
private func timeOnRankZero(
    _ world: InProcessWorld, _ config: BenchConfiguration,
    prepare: @escaping @Sendable (GroupCoordinator) throws -> () throws -> Void
) throws -> [Double] {
    let results = try world.run { group -> [Double] in
        let step = try prepare(group)
        var times: [Double] = []
        for i in 0..<(config.warmup + config.iterations) {
            try group.barrier()
            let start = DispatchTime.now().uptimeNanoseconds
            try step()
            let end = DispatchTime.now().uptimeNanoseconds
            if i >= config.warmup { times.append(Double(end - start) / 1e9) }
        }
        return times
    }
    return results[0]
}

extension Array where Element == Double {
    var median: Double {
        let s = sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
