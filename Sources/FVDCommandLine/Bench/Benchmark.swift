import FastVideoDistributed
import Foundation

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

    /// Whether the library has an in-place form (all-reduce and all-gather, as in torch and NCCL).
    var hasInPlaceForm: Bool { self == .allReduce || self == .allGather }

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

/// The timing of one placement (out-of-place or in-place) of one row.
public struct BenchTiming: Sendable, Codable, Equatable {
    /// Median, fastest and slowest iteration, in microseconds (rank 0's clock).
    public var medianMicroseconds: Double
    public var minMicroseconds: Double
    public var maxMicroseconds: Double
    /// nccl-tests' algbw: the row's `bytes` / median time, in GB/s (10^9 bytes per second).
    public var algorithmBandwidth: Double
    /// nccl-tests' busbw: algbw × the op's bus factor, in GB/s.
    public var busBandwidth: Double
    /// The memcpy time of the copy-model bytes as a percentage of the median time
    /// (100 = as fast as a perfect implementation on this host).
    public var percentOfCopyModel: Double

    enum CodingKeys: String, CodingKey {
        case medianMicroseconds = "time_us"
        case minMicroseconds = "time_us_min"
        case maxMicroseconds = "time_us_max"
        case algorithmBandwidth = "algbw_gbps"
        case busBandwidth = "busbw_gbps"
        case percentOfCopyModel = "percent_of_copy_model"
    }
}

/// One row of `fvd bench`: one operation at one size.
public struct BenchRow: Sendable, Codable, Equatable {
    public var op: BenchOperation
    /// nccl-tests' size column in bytes (all-gather: the gathered output, else each rank's input).
    public var bytes: Int
    /// Bytes of each rank's input.
    public var inputBytes: Int
    /// Elements of each rank's input.
    public var count: Int
    public var dtype: DType
    /// The collective returning a new tensor.
    public var outOfPlace: BenchTiming
    /// The in-place form (`allReduce(inPlace:)`, `allGather(inPlace:)`); `nil` for the
    /// operations that have none.
    public var inPlace: BenchTiming?
    /// Bytes a perfect implementation copies per rank (see ``BenchOperation``).
    public var copyModelBytes: Int
    /// Bandwidth of `memcpy` of the copy-model bytes on every rank at once, in the same run, GB/s.
    public var memcpyBandwidth: Double

    enum CodingKeys: String, CodingKey {
        case op, count, dtype
        case bytes = "size_bytes"
        case inputBytes = "input_bytes"
        case outOfPlace = "out_of_place"
        case inPlace = "in_place"
        case copyModelBytes = "copy_model_bytes"
        case memcpyBandwidth = "memcpy_gbps"
    }

    /// Every bus bandwidth of the row (out-of-place, then in-place when measured).
    var busBandwidths: [Double] { [outOfPlace.busBandwidth] + (inPlace.map { [$0.busBandwidth] } ?? []) }
}

/// A whole `fvd bench` run: its settings and rows; the `--json` document.
public struct BenchReport: Sendable, Codable, Equatable {
    /// `fvd-bench/1`; changes only when a key changes meaning or disappears.
    public var schema = "fvd-bench/1"
    public var transport: String
    public var worldSize: Int
    public var dtype: DType
    public var warmup: Int
    public var iterations: Int
    public private(set) var rows: [BenchRow]
    /// nccl-tests' "Avg bus bandwidth": the mean of every busbw in `rows`, in GB/s.
    public private(set) var averageBusBandwidth: Double

    enum CodingKeys: String, CodingKey {
        case schema, transport, dtype, warmup, iterations, rows
        case worldSize = "world_size"
        case averageBusBandwidth = "avg_busbw_gbps"
    }

    public init(transport: String, worldSize: Int, dtype: DType, warmup: Int, iterations: Int, rows: [BenchRow]) {
        self.transport = transport
        self.worldSize = worldSize
        self.dtype = dtype
        self.warmup = warmup
        self.iterations = iterations
        self.rows = rows
        let all = rows.flatMap(\.busBandwidths)
        averageBusBandwidth = all.isEmpty ? 0 : all.reduce(0, +) / Double(all.count)
    }
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

    /// Throws ``FVDError/invalidArgument(_:)`` naming the first setting out of range.
    public func validate() throws {
        guard worldSize >= 1 else { throw FVDError.invalidArgument("world size must be at least 1") }
        guard iterations >= 1, warmup >= 0 else {
            throw FVDError.invalidArgument("iterations must be >= 1 and warmup >= 0")
        }
        guard factor >= 2, minBytes >= 1, minBytes <= maxBytes else {
            throw FVDError.invalidArgument(
                "sizes: need 1 <= -b <= -e and a factor -f of at least 2 (got -b \(minBytes), -e \(maxBytes), -f \(factor))")
        }
    }

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
///
/// `progress(done, total, what)` is called before each row is measured and `row` after.
public func runBenchmark(
    _ config: BenchConfiguration, ranks: RankPlacement = .inProcess,
    progress: (_ done: Int, _ total: Int, _ what: String) -> Void = { _, _, _ in },
    row: (BenchRow) -> Void = { _ in }
) throws -> BenchReport {
    try config.validate()
    let n = config.worldSize
    let everyRank: (_ body: @escaping @Sendable (GroupCoordinator) throws -> [Double]) throws -> [Double]
    switch ranks {
    case .inProcess:
        let world = try World.inProcess(size: n, timeout: 300)
        everyRank = { body in try world.run(body)[0] }
    case .process(let world):
        guard world.size == n else {
            throw FVDError.invalidArgument("--world-size \(n) differs from this process world's size \(world.size)")
        }
        everyRank = { body in try world.run(body) }
    }
    var rows: [BenchRow] = []
    let total = config.operations.count * config.sizes.count
    var step = 0
    for op in config.operations {
        for size in config.sizes {
            progress(step, total, "\(op.rawValue) \(size) bytes")
            step += 1
            let count = max(1, size / config.dtype.byteSize)
            let shape = try inputShape(op, count: count, worldSize: n)
            // Small sizes can round to the same shape (the all-to-all's smallest is [1, 1, 4n, 128]): measure it once.
            if rows.contains(where: { $0.op == op && $0.count == shape.reduce(1, *) }) { continue }
            let elements = shape.reduce(1, *)
            let inputBytes = elements * config.dtype.byteSize
            let outOfPlace = try timeOnRankZero(everyRank, config) { group in
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
            let inPlace: [Double]? = op.hasInPlaceForm ? try timeOnRankZero(everyRank, config) { group in
                var y = try Tensor(zeros: op == .allGather ? [elements * n] : shape, dtype: config.dtype)
                return {
                    if op == .allReduce { try group.allReduce(inPlace: &y) } else { try group.allGather(inPlace: &y, dim: 0) }
                }
            } : nil
            let modelBytes = op.modelBytes(inputBytes: inputBytes, worldSize: n)
            let copyTimes = try timeOnRankZero(everyRank, config) { group in
                let source = try Tensor(zeros: [modelBytes], dtype: .uint8)
                var destination = try Tensor(zeros: [modelBytes], dtype: .uint8)
                return {
                    source.withUnsafeBytes { s in
                        destination.withUnsafeMutableBytes { d in _ = memcpy(d.baseAddress!, s.baseAddress!, modelBytes) }
                    }
                    try group.barrier()
                }
            }
            let copyMedian = copyTimes.median
            let reported = op.reportedBytes(inputBytes: inputBytes, worldSize: n)
            let timing = { (times: [Double]) -> BenchTiming in
                let algbw = Double(reported) / times.median / 1e9
                return BenchTiming(
                    medianMicroseconds: times.median * 1e6, minMicroseconds: times.min()! * 1e6,
                    maxMicroseconds: times.max()! * 1e6, algorithmBandwidth: algbw,
                    busBandwidth: algbw * op.busFactor(worldSize: n), percentOfCopyModel: 100 * copyMedian / times.median)
            }
            rows.append(
                BenchRow(
                    op: op, bytes: reported, inputBytes: inputBytes, count: elements, dtype: config.dtype,
                    outOfPlace: timing(outOfPlace), inPlace: inPlace.map(timing), copyModelBytes: modelBytes,
                    memcpyBandwidth: Double(modelBytes) / copyMedian / 1e9))
            row(rows[rows.count - 1])
        }
    }
    return BenchReport(
        transport: ranks.name, worldSize: n, dtype: config.dtype, warmup: config.warmup, iterations: config.iterations,
        rows: rows)
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
/// each after a barrier; returns this process's durations in seconds (rank 0's in process;
/// the collective's own closing rendezvous makes a rank finish only when every rank has).
private func timeOnRankZero(
    _ everyRank: (_ body: @escaping @Sendable (GroupCoordinator) throws -> [Double]) throws -> [Double],
    _ config: BenchConfiguration,
    prepare: @escaping @Sendable (GroupCoordinator) throws -> () throws -> Void
) throws -> [Double] {
    try everyRank { group -> [Double] in
        let step = try prepare(group)
        var times: [Double] = []
        for i in 0..<(config.warmup + config.iterations) {
            try group.barrier()
            let start = DispatchTime.now().uptimeNanoseconds
            try step()
            let end = DispatchTime.now().uptimeNanoseconds
            // At least 1 ns, so bandwidths stay finite even on a coarse clock.
            if i >= config.warmup { times.append(Double(max(end - start, 1)) / 1e9) }
        }
        return times
    }
}

extension Array where Element == Double {
    var median: Double {
        let s = sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
