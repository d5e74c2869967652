import CFVDShims
import FastVideoDistributed
import Foundation

/// A collective that `fvd bench` can time.
public enum BenchOperation: String, CaseIterable, Sendable, Codable {
    case allReduce = "all_reduce"
    case allGather = "all_gather"
    case reduceScatter = "reduce_scatter"
    case allToAll4D = "all_to_all_4d"
    case broadcast
    case barrier
    /// A ping-pong of `send` and `recv` between ranks 0 and 1 (osu_latency): its time is
    /// half the round trip.
    case sendRecv = "sendrecv"
    /// Every rank hands its tensor to the next rank of the ring (ring attention's step).
    case ringPass = "ring_pass"
    /// Every rank's shard `[2, count / 2]` trades its two boundary slices with its
    /// neighbours (periodic, width 1): the same bytes as an all-gather of each rank's
    /// boundary slices (`all_gather` at the same input size), from the neighbours only.
    case haloExchange = "halo_exchange"

    /// nccl-tests' bus-bandwidth factor: how many times the bytes cross the "bus".
    func busFactor(worldSize n: Int) -> Double {
        let f = Double(n - 1) / Double(n)
        switch self {
        case .allReduce: return 2 * f
        case .allGather, .reduceScatter, .allToAll4D: return f
        case .broadcast, .sendRecv, .ringPass, .haloExchange: return 1
        case .barrier: return 0
        }
    }

    /// nccl-tests' "size" of one call, from the per-rank input bytes.
    func reportedBytes(inputBytes: Int, worldSize n: Int) -> Int {
        self == .allGather ? inputBytes * n : inputBytes
    }

    /// Whether the library has a form that writes into the caller's tensor, as torch and
    /// NCCL do: in-place all-reduce, all-gather and broadcast, reduce-scatter and the
    /// all-to-all `into:` an output, `recv(into:)`; all but the barrier.
    var hasInPlaceForm: Bool { self != .barrier && self != .ringPass && self != .haloExchange }

    /// Whether the op moves data (all but the barrier, which is measured once, at size 0).
    var hasSizes: Bool { self != .barrier }

    /// The smallest world the op needs.
    var minimumWorldSize: Int { self == .sendRecv ? 2 : 1 }

    /// Bytes a perfect implementation must copy per rank (the copy model of the team's
    /// performance notes, `shared/PERFORMANCE.md`):
    /// all-gather writes `n × in`; all-to-all, broadcast and a receive write `in`; all-reduce
    /// writes `in/n` in its reduce-scatter pass and `in` in its all-gather pass;
    /// reduce-scatter must read `in`; a barrier moves nothing.
    func modelBytes(inputBytes: Int, worldSize n: Int) -> Int {
        switch self {
        case .allGather: return inputBytes * n
        case .allToAll4D, .reduceScatter, .broadcast, .sendRecv, .ringPass, .haloExchange: return inputBytes
        case .allReduce: return inputBytes + inputBytes / n
        case .barrier: return 0
        }
    }
}

/// The timing of one placement (out-of-place or in-place) of one row.
public struct BenchTiming: Sendable, Codable, Equatable {
    /// The median, in microseconds, of each round's median iteration; fastest and slowest
    /// iteration of all rounds. An iteration's time is the slowest rank's (as mpi_bench
    /// and the OSU benchmarks report); for `sendrecv`, half the round trip.
    public var medianMicroseconds: Double
    public var minMicroseconds: Double
    public var maxMicroseconds: Double
    /// nccl-tests' algbw: the row's `bytes` / median time, in GB/s (10^9 bytes per second).
    public var algorithmBandwidth: Double
    /// nccl-tests' busbw: algbw × the op's bus factor, in GB/s.
    public var busBandwidth: Double
    /// The memcpy time of the copy-model bytes, timed in the same iterations (after
    /// each call), as a percentage of the median time (100 = as fast as a perfect
    /// implementation on this host; 0 for the barrier, which copies nothing).
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
    /// Bandwidth of `memcpy` of the copy-model bytes on every rank at once, timed between
    /// the calls, GB/s (0 for the barrier).
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
    /// Rounds of `warmup + iterations` per row; the reported time is the median round's.
    public var rounds: Int
    public private(set) var rows: [BenchRow]
    /// nccl-tests' "Avg bus bandwidth": the mean of every busbw in `rows`, in GB/s.
    public private(set) var averageBusBandwidth: Double

    enum CodingKeys: String, CodingKey {
        case schema, transport, dtype, warmup, iterations, rounds, rows
        case worldSize = "world_size"
        case averageBusBandwidth = "avg_busbw_gbps"
    }

    public init(transport: String, worldSize: Int, dtype: DType, warmup: Int, iterations: Int, rounds: Int, rows: [BenchRow]) {
        self.transport = transport
        self.worldSize = worldSize
        self.dtype = dtype
        self.warmup = warmup
        self.iterations = iterations
        self.rounds = rounds
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
    public var rounds = 1
    public init() {}

    /// Throws ``FVDError/invalidArgument(_:)`` naming the first setting out of range.
    public func validate() throws {
        guard worldSize >= 1 else { throw FVDError.invalidArgument("world size must be at least 1") }
        guard iterations >= 1, warmup >= 0, rounds >= 1 else {
            throw FVDError.invalidArgument("iterations and rounds must be >= 1 and warmup >= 0")
        }
        if let op = operations.first(where: { $0.minimumWorldSize > worldSize }) {
            throw FVDError.invalidArgument("\(op.rawValue) needs a world of at least \(op.minimumWorldSize) ranks")
        }
        guard factor >= 2, minBytes >= 1, minBytes <= maxBytes else {
            throw FVDError.invalidArgument(
                "sizes: need 1 <= -b <= -e and a factor -f of at least 2 (got -b \(minBytes), -e \(maxBytes), -f \(factor))")
        }
    }

    /// The bytes of memory the largest row needs, on every rank together (this host runs
    /// them all): an input and an output tensor (the out-of-place and the in-place form
    /// run one after the other) and the memcpy baseline's source and destination;
    /// `tensors` is the part in the ranks' tensors (shared memory, with `--transport shm`).
    public var memoryNeeded: (total: Int, tensors: Int) {
        var worst = (total: 0, tensors: 0)
        for op in operations where op.hasSizes {
            guard let count = inputCounts(for: op).max() else { continue }
            let input = count * dtype.byteSize
            let output = op == .allGather ? input * worldSize : input
            let tensors = input + output
            let total = tensors + 2 * op.modelBytes(inputBytes: input, worldSize: worldSize)
            let (all, overflow) = total.multipliedReportingOverflow(by: worldSize)
            let shared = tensors.multipliedReportingOverflow(by: worldSize)
            if overflow || shared.overflow { return (.max, .max) }
            if all > worst.total { worst = (all, shared.partialValue) }
        }
        return worst
    }

    /// The sizes of the sweep from `minBytes` to `maxBytes`, multiplying by `factor` (≥ 2),
    /// before each op rounds them (see ``inputCounts(for:)``).
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

    /// The per-rank input element counts `op` is measured at, smallest first.
    ///
    /// As in nccl-tests, each size of the sweep is the op's reported size (the table's
    /// `size` column: the gathered output for all_gather, each rank's input otherwise), and
    /// it is rounded down to the nearest size the op can use
    /// (``BenchOperation/usableCount(_:worldSize:)``), so every row lies within `-b`…`-e`.
    /// A size that would round below `-b` is rounded up to the smallest usable size from
    /// `-b` instead; one that rounds to a size already measured is skipped. Only when no
    /// usable size lies in `-b`…`-e` does the op get a row outside it: the largest
    /// usable size below `-b`, or the op's smallest size when even that is above `-e`.
    func inputCounts(for op: BenchOperation) -> [Int] {
        guard op.hasSizes else { return [0] }
        let n = worldSize, element = dtype.byteSize
        let unit = op == .allGather ? n * element : element  // reported bytes per input element
        var counts: [Int] = []
        for size in sizes {
            var count = op.usableCount(size / unit, worldSize: n)
            if count * unit < minBytes { count = op.usableCount(atLeast: (minBytes + unit - 1) / unit, worldSize: n) }
            if count > 0, count * unit <= maxBytes, !counts.contains(count) { counts.append(count) }
        }
        if counts.isEmpty {
            let below = op.usableCount(maxBytes / unit, worldSize: n)
            counts = [below > 0 ? below : op.smallestCount(worldSize: n)]
        }
        return counts
    }

    /// The table's comment line that says how the sizes were chosen.
    public var sizesLine: String {
        "# sizes: -b \(minBytes) to -e \(maxBytes) B, ×\(factor), each rounded down (-b: up) to one the op can use: "
            + "whole elements; all_gather's size is the gathered output (\(worldSize) × each rank's input); "
            + "reduce_scatter and all_to_all_4d use multiples of \(worldSize) elements "
            + "(all_to_all_4d: [1, S, \(4 * worldSize), D ≥ 128], multiples of \(4 * worldSize), from \(512 * worldSize) elements)"
    }
}

extension BenchOperation {
    /// The largest per-rank element count not above `count` that the op's input can have
    /// (0 if none): any for most ops; a multiple of `n` for the reduce-scatter; for the
    /// all-to-all a multiple of `n` (`[1, 1, n, count/n]`), or of `4n` from `512n` on
    /// (`[1, S, 4n, D]`, FastVideo's head layout with 4 heads per rank and D ≥ 128).
    func usableCount(_ count: Int, worldSize n: Int) -> Int {
        switch self {
        case .allReduce, .allGather, .broadcast, .sendRecv, .ringPass: return max(0, count)
        case .barrier: return 0
        case .haloExchange: return max(0, count / 2 * 2)
        case .reduceScatter: return max(0, count / n * n)
        case .allToAll4D: return count >= 512 * n ? count / (4 * n) * (4 * n) : max(0, count / n * n)
        }
    }

    /// The smallest per-rank element count from `count` on that the op can use.
    func usableCount(atLeast count: Int, worldSize n: Int) -> Int {
        let count = max(count, smallestCount(worldSize: n))
        let roundUp = { (step: Int) in (count + step - 1) / step * step }
        switch self {
        case .allReduce, .allGather, .broadcast, .sendRecv, .ringPass: return count
        case .barrier: return 0
        case .haloExchange: return roundUp(2)
        case .reduceScatter: return roundUp(n)
        case .allToAll4D: return roundUp(n) < 512 * n ? roundUp(n) : roundUp(4 * n)
        }
    }

    /// The smallest per-rank element count the op can use.
    func smallestCount(worldSize n: Int) -> Int {
        switch self {
        case .reduceScatter, .allToAll4D: return n
        case .haloExchange: return 2
        default: return 1
        }
    }
}

/// Times the collectives on `ranks`, with `memcpy` of each call's copy-model bytes timed
/// between its iterations.
///
/// `progress(done, total, what)` is called before each row is measured and `row` after.
public func runBenchmark(
    _ config: BenchConfiguration, ranks: RankPlacement = .inProcess,
    progress: (_ done: Int, _ total: Int, _ what: String) -> Void = { _, _, _ in },
    row: (BenchRow) -> Void = { _ in }
) throws -> BenchReport {
    try config.validate()
    let n = config.worldSize
    let world: any DistributedWorld
    switch ranks {
    case .inProcess:
        world = try World.inProcess(size: n, timeout: 300)
    case .process(let process):
        guard process.size == n else {
            throw FVDError.invalidArgument("--world-size \(n) differs from this process world's size \(process.size)")
        }
        world = process
    }
    // The first rank of this process reports: rank 0 in-process, this rank's own in a launched process.
    let everyRank = { (body: @escaping @Sendable (GroupCoordinator) throws -> [Double]) throws -> [Double] in try world.run(body)[0] }
    var rows: [BenchRow] = []
    let plan = config.operations.flatMap { op in config.inputCounts(for: op).map { (op, $0) } }
    for (step, (op, count)) in plan.enumerated() {
        let inputBytes = count * config.dtype.byteSize
        let size = op.reportedBytes(inputBytes: inputBytes, worldSize: n)
        progress(step, plan.count, op.hasSizes ? "\(op.rawValue) \(size) bytes" : op.rawValue)
        let shape = inputShape(op, count: count, worldSize: n)
        let elements = shape.reduce(1, *)
        let modelBytes = op.modelBytes(inputBytes: inputBytes, worldSize: n)
        let outOfPlace = try measure(everyRank, config, modelBytes: modelBytes) { group in
            let x = try Tensor(zeros: shape, dtype: config.dtype)
            switch op {
            case .allReduce: return { _ = try group.allReduce(x) }
            case .allGather: return { _ = try group.allGather(x, dim: 0) }
            case .reduceScatter: return { _ = try group.reduceScatter(x, dim: 0) }
            case .allToAll4D: return { _ = try group.allToAll4D(x) }
            case .broadcast: return { _ = try group.broadcast(x) }
            case .barrier: return { try group.barrier() }
            case .sendRecv:
                // Ranks 0 and 1 play ping-pong; the others wait at the iteration's barrier.
                switch group.rankInGroup {
                case 0: return { try group.send(x, to: 1); _ = try group.recv(from: 1) }
                case 1: return { try group.send(try group.recv(from: 0), to: 0) }
                default: return {}
                }
            case .ringPass: return { _ = try group.ringPass(x) }
            case .haloExchange: return { _ = try group.haloExchange(x, dim: 0, width: 1, periodic: true) }
            }
        }
        let inPlace: Measurement? = op.hasInPlaceForm ? try measure(everyRank, config, modelBytes: modelBytes) { group in
            var y = try Tensor(zeros: op == .allGather ? [elements * n] : shape, dtype: config.dtype)
            switch op {
            case .allReduce: return { try group.allReduce(inPlace: &y) }
            case .allGather: return { try group.allGather(inPlace: &y, dim: 0) }
            case .broadcast: return { try group.broadcast(inPlace: &y) }
            case .reduceScatter:
                let x = y
                var out = try Tensor(zeros: [shape[0] / n], dtype: config.dtype)
                return { try group.reduceScatter(x, into: &out, dim: 0) }
            case .allToAll4D:
                let x = y
                var out = try group.allToAll4D(x)
                return { try group.allToAll4D(x, into: &out) }
            default:
                // As mpi_bench: rank 0 sends one tensor and receives into another; rank 1
                // sends back what it received.
                let x = y
                var received = try Tensor(zeros: shape, dtype: config.dtype)
                switch group.rankInGroup {
                case 0: return { try group.send(x, to: 1); try group.recv(into: &received, from: 1) }
                case 1: return { try group.recv(into: &received, from: 0); try group.send(received, to: 0) }
                default: return {}
                }
            }
        } : nil
        // A ping-pong's iteration is a round trip: the op's time is half of it.
        let scale = op == .sendRecv ? 0.5 : 1
        let copyTime = outOfPlace.copy.median
        let reported = op.reportedBytes(inputBytes: inputBytes, worldSize: n)
        let timing = { (m: Measurement) -> BenchTiming in
            let time = m.time * scale
            let algbw = Double(reported) / time / 1e9
            return BenchTiming(
                medianMicroseconds: time * 1e6, minMicroseconds: m.fastest * scale * 1e6, maxMicroseconds: m.slowest * scale * 1e6,
                algorithmBandwidth: algbw, busBandwidth: algbw * op.busFactor(worldSize: n),
                percentOfCopyModel: modelBytes == 0 ? 0 : 100 * copyTime / time)
        }
        rows.append(
            BenchRow(
                op: op, bytes: reported, inputBytes: inputBytes, count: elements, dtype: config.dtype,
                outOfPlace: timing(outOfPlace), inPlace: inPlace.map(timing), copyModelBytes: modelBytes,
                memcpyBandwidth: modelBytes == 0 ? 0 : Double(modelBytes) / copyTime / 1e9))
        row(rows[rows.count - 1])
    }
    return BenchReport(
        transport: ranks.name, worldSize: n, dtype: config.dtype, warmup: config.warmup, iterations: config.iterations,
        rounds: config.rounds, rows: rows)
}

/// The input shape for `op` with `count` elements (a count from
/// ``BenchOperation/usableCount(_:worldSize:)``): `[count]`, `[0]` for the barrier, and
/// for the all-to-all a divisible 4-D shape: from `512n` elements FastVideo's layout
/// `[1, S, 4n, D]` (4 heads per rank, S the largest sequence length that leaves a head
/// dimension D of at least 128: `[1, S, 4n, 128]` when 128 × 4n divides the count),
/// below that `[1, 1, n, count/n]`.
func inputShape(_ op: BenchOperation, count: Int, worldSize n: Int) -> [Int] {
    switch op {
    case .allReduce, .allGather, .broadcast, .sendRecv, .barrier, .reduceScatter, .ringPass: return [count]
    case .haloExchange: return [2, count / 2]
    case .allToAll4D:
        let heads = 4 * n
        guard count >= 128 * heads else { return [1, 1, n, count / n] }
        let perHead = count / heads
        let sequence = stride(from: perHead / 128, to: 1, by: -1).first { perHead % $0 == 0 } ?? 1
        return [1, sequence, heads, perHead / sequence]
    }
}

/// What ``measure(_:_:modelBytes:prepare:)`` found, in seconds: the median of the rounds'
/// median iterations, the fastest and slowest iteration, and the memcpy baseline's median.
private struct Measurement {
    var time: Double
    var fastest: Double
    var slowest: Double
    var copy: [Double]
}

/// Runs `prepare` on every rank, then `config.rounds` rounds of `warmup + iterations`
/// iterations. Each iteration starts at a barrier and times the prepared step, then, after
/// another barrier, `memcpy` of `modelBytes` on every rank at once (so the baseline sees
/// the same machine state as the collective, not a quieter or busier moment). An
/// iteration's time is the slowest rank's, read from CLOCK_MONOTONIC as mpi_bench does.
private func measure(
    _ everyRank: (_ body: @escaping @Sendable (GroupCoordinator) throws -> [Double]) throws -> [Double],
    _ config: BenchConfiguration, modelBytes: Int,
    prepare: @escaping @Sendable (GroupCoordinator) throws -> () throws -> Void
) throws -> Measurement {
    let samples = config.rounds * config.iterations
    let times = try everyRank { group -> [Double] in
        let step = try prepare(group)
        let source = UnsafeMutableRawPointer.allocate(byteCount: max(modelBytes, 1), alignment: 64)
        let destination = UnsafeMutableRawPointer.allocate(byteCount: max(modelBytes, 1), alignment: 64)
        defer {
            source.deallocate()
            destination.deallocate()
        }
        memset(source, 1, modelBytes)
        memset(destination, 0, modelBytes)
        var mine: [Double] = []
        mine.reserveCapacity(2 * samples)
        var copies: [Double] = []
        copies.reserveCapacity(samples)
        for _ in 0..<config.rounds {
            for i in 0..<(config.warmup + config.iterations) {
                try group.barrier()
                let start = fvd_now_ns()
                try step()
                let end = fvd_now_ns()
                var copy: UInt64 = 0
                if modelBytes > 0 {
                    try group.barrier()
                    let copyStart = fvd_now_ns()
                    memcpy(destination, source, modelBytes)
                    copy = fvd_now_ns() - copyStart
                }
                if i >= config.warmup {
                    // At least 1 ns, so bandwidths stay finite even on a coarse clock.
                    mine.append(Double(max(end - start, 1)) / 1e9)
                    copies.append(Double(max(copy, 1)) / 1e9)
                }
            }
        }
        mine += copies
        // Every rank's samples, so each iteration counts as its slowest rank's.
        let all = try group.allGather(Tensor(mine), dim: 0).scalars(as: Double.self)
        return (0..<(2 * samples)).map { i in stride(from: i, to: all.count, by: 2 * samples).map { all[$0] }.max()! }
    }
    let op = Array(times[..<samples]), copy = Array(times[samples...])
    let rounds = (0..<config.rounds).map { r in Array(op[(r * config.iterations)..<((r + 1) * config.iterations)]).median }
    return Measurement(time: rounds.median, fastest: op.min()!, slowest: op.max()!, copy: copy)
}

extension Array where Element == Double {
    var median: Double {
        let s = sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
