// `fvd demo`'s engine: runs the video-DiT block on in-process ranks with tensor and
// sequence parallelism, checks every rank against a single-rank reference, and times
// every collective.

import FastVideoDistributed
import Logging

/// The settings of one demo run: the world layout and the size of the video-DiT block.
///
/// The defaults are the `fvd demo` defaults: 4 ranks, tensor parallel 2, sequence
/// parallel 2, a 4-frame 8×8-patch latent (S = 256 tokens), hidden size 128, 8 heads,
/// conditioning size 64, MLP ratio 4, and a tolerance of `1e-4` on the max abs error.
public struct DemoConfiguration: Sendable, Equatable {
    /// Number of in-process ranks.
    public var worldSize: Int
    /// Tensor-parallel size: the adaLN projection and the MLP are split over it.
    public var tensorParallel: Int
    /// Sequence-parallel (Ulysses) size: the attention's sequence is split over it.
    public var sequenceParallel: Int
    /// Latent frames.
    public var frames: Int
    /// Latent height, in patches.
    public var height: Int
    /// Latent width, in patches.
    public var width: Int
    /// Hidden size `C` of the block.
    public var hidden: Int
    /// Attention heads; must divide `hidden` (and, for Ulysses, by the sequence-parallel size).
    public var heads: Int
    /// Size of the text/timestep conditioning vector.
    public var textDim: Int
    /// MLP hidden size as a multiple of `hidden`.
    public var mlpRatio: Int
    /// Seed of the weights and inputs (SplitMix64).
    public var seed: UInt64
    /// Seconds a collective waits for missing ranks before failing.
    public var timeout: Double
    /// The largest max abs error vs the single-rank reference that still passes (default `1e-4`).
    public var tolerance: Double

    /// Log the step's collectives at `debug` (``Diagnostics``): each rank's layout and one
    /// line per collective, through the process's logging backend (stderr by default).
    public var verbose = false

    /// Exchange q/k/v in this many groups of heads, started at once, so attention on one
    /// group overlaps the exchange of the next (`fvd demo --overlap`); 1: one exchange.
    public var overlapChunks = 1

    /// USP's ring degree (`fvd demo --ring R`): each sequence-parallel group is `sp / R`
    /// Ulysses ranks × `R` ring ranks, and attention runs as ring attention over the ring
    /// groups after the all-to-all inside each Ulysses group; 1: Ulysses only.
    public var ringDegree = 1

    /// Add a 3-tap temporal convolution over the frames of the sequence shards, with the
    /// halo exchange (`fvd demo --temporal-conv`).
    public var temporalConvolution = false

    /// Test hook: change one element of one rank's share of the weights, to prove the check can fail.
    var perturbation: DemoPerturbation?

    /// Creates a configuration; every parameter defaults to the `fvd demo` default.
    public init(
        worldSize: Int = 4, tensorParallel: Int = 2, sequenceParallel: Int = 2,
        frames: Int = 4, height: Int = 8, width: Int = 8,
        hidden: Int = 128, heads: Int = 8, textDim: Int = 64, mlpRatio: Int = 4,
        seed: UInt64 = 0, timeout: Double = 60, tolerance: Double = 1e-4
    ) {
        self.worldSize = worldSize
        self.tensorParallel = tensorParallel
        self.sequenceParallel = sequenceParallel
        self.frames = frames
        self.height = height
        self.width = width
        self.hidden = hidden
        self.heads = heads
        self.textDim = textDim
        self.mlpRatio = mlpRatio
        self.seed = seed
        self.timeout = timeout
        self.tolerance = tolerance
    }

    /// Tokens per sample: `frames × height × width`.
    public var tokens: Int { frames * height * width }

    /// Ranks per model replica: `lcm(tp, sp)` consecutive ranks process one sample.
    public var replicaSize: Int { lcm(tensorParallel, sequenceParallel) }

    /// Samples in the batch: one per replica, `worldSize / replicaSize`.
    public var samples: Int { replicaSize == 0 ? 0 : worldSize / replicaSize }
}

/// A deliberate fault for tests: which rank changes which weight.
struct DemoPerturbation: Sendable, Equatable {
    enum Weight: Sendable { case wada, wq, wk, wo, w1, w2 }
    var rank: Int
    var weight: Weight
    var delta: Float = 0.01
}

/// The time one collective took on one rank.
struct DemoCollectiveRecord: Sendable {
    var name: String
    var bytes: Int
    var duration: Duration
}

/// One collective's timings, summed over every call on every rank.
///
/// A call's time runs from entry to return on its rank, so it includes waiting for
/// slower peers (load imbalance), as NCCL host-side timings do.
public struct DemoCollectiveTiming: Sendable, Equatable {
    /// The operation, by its FastVideo name (the all-to-all with its direction).
    public var name: String
    /// Calls over all ranks.
    public var calls: Int
    /// Input bytes over all calls.
    public var totalBytes: Int
    /// Time over all calls, in microseconds.
    public var totalMicroseconds: Double
    /// `totalMicroseconds / calls`.
    public var meanMicroseconds: Double { calls == 0 ? 0 : totalMicroseconds / Double(calls) }
}

/// What a demo run found.
public struct DemoReport: Sendable {
    /// The configuration that ran.
    public var configuration: DemoConfiguration
    /// Rank 0's view of the layout (``ParallelState/describe()``): one line per group,
    /// rank 0's groups marked `*`.
    public var rankMap: String
    /// Max `|distributed − reference|` over every rank and element (NaN if any output was NaN).
    public var maxAbsError: Double
    /// The tolerance the error was checked against.
    public var tolerance: Double
    /// Per-collective timings over all ranks, in the order the block first calls them.
    public var timings: [DemoCollectiveTiming]
    /// Seconds the distributed run took (all ranks, start to finish).
    public var wallSeconds: Double
    /// Seconds the single-rank reference took (all samples).
    public var referenceSeconds: Double

    /// Whether `maxAbsError <= tolerance`.
    public var passed: Bool { maxAbsError <= tolerance }
}

/// Runs the video-DiT block on `config.worldSize` in-process ranks and checks it.
///
/// Ranks form replicas of `lcm(tp, sp)` consecutive ranks; replica `i` runs sample `i`.
/// Within a replica the adaLN projection and MLP are tensor parallel and the attention is
/// Ulysses sequence parallel. Every rank's output is compared with the same block run on
/// one rank (no collectives); the run passes if the max abs error is at most
/// `config.tolerance` (default `1e-4`). A failed check is reported, not thrown.
///
/// - Throws: the library's ``FVDError``: ``FVDError/invalidLayout(worldSize:tensorParallel:sequenceParallel:)``
///   for a bad layout, ``FVDError/indivisible(op:dim:size:parts:)`` from the all-to-all when
///   the heads do not divide by `sp`, ``FVDError/invalidArgument(_:)`` for sizes the block
///   cannot use (e.g. `hidden` not divisible by `heads`, or the TP splits not even).
/// Runs `body` with the library's log level at `debug` or finer when `verbose`, then
/// restores it.
private func loggingCollectives<R>(_ verbose: Bool, _ body: () throws -> R) rethrows -> R {
    guard verbose else { return try body() }
    let saved = Diagnostics.logger
    var logger = saved
    logger.logLevel = min(saved.logLevel, .debug)
    Diagnostics.logger = logger
    defer { Diagnostics.logger = saved }
    return try body()
}

public func runDemo(_ config: DemoConfiguration, ranks: RankPlacement = .inProcess) throws -> DemoReport {
    _ = try GroupLayout(
        worldSize: config.worldSize, tensorParallel: config.tensorParallel, sequenceParallel: config.sequenceParallel,
        ringDegree: config.ringDegree)
    try validate(config)
    try checkMemory(
        needed: config.memoryEstimate,
        for: "the demo block (hidden \(config.hidden), \(config.heads) heads, \(config.tokens) tokens) on \(config.worldSize) ranks")
    let shape = DemoShape(
        tokens: config.tokens, hidden: config.hidden, heads: config.heads, textDim: config.textDim,
        mlpHidden: config.mlpRatio * config.hidden)
    let weights = DemoWeights(shape: shape, seed: config.seed)
    let clock = ContinuousClock()
    let rankBody: @Sendable (GroupCoordinator) throws -> DemoRankResult = { comm in
        let state = try ParallelState(
            world: comm, tensorParallel: config.tensorParallel, sequenceParallel: config.sequenceParallel,
            ringDegree: config.ringDegree)
        let sample = DemoSample(shape: shape, seed: config.seed, index: comm.rank / config.replicaSize)
        var shard = weights.tensorParallelShard(rank: state.tensorParallel.rankInGroup, of: state.tensorParallel.size)
        if let fault = config.perturbation, fault.rank == comm.rank { shard.perturb(fault) }
        let timed = DemoTimedCollectives(state: state)
        let output = try state.withCurrent {
            try DemoBlock.forward(
                sample: sample, weights: shard, shape: shape, comm: timed, overlapChunks: config.overlapChunks,
                temporalConvolution: config.temporalConvolution ? config.height * config.width : nil)
        }
        return DemoRankResult(output: output, records: timed.records, rankMap: comm.rank == 0 ? state.describe() : "")
    }
    let reference = { (index: Int) throws -> DemoMatrix in
        try DemoBlock.forward(
            sample: DemoSample(shape: shape, seed: config.seed, index: index), weights: weights, shape: shape, comm: DemoLocal(),
            temporalConvolution: config.temporalConvolution ? config.height * config.width : nil)
    }

    switch ranks {
    case .inProcess:
        let world = try World.inProcess(size: config.worldSize, timeout: config.timeout)
        let start = clock.now
        let results = try loggingCollectives(config.verbose) { try world.run(rankBody) }
        let wall = clock.now - start
        let referenceStart = clock.now
        let references = try (0..<config.samples).map(reference)
        let referenceTime = clock.now - referenceStart
        var error = 0.0
        for (rank, result) in results.enumerated() {
            error = maxAbsDifference(result.output, references[rank / config.replicaSize], atLeast: error)
        }
        return DemoReport(
            configuration: config, rankMap: results[0].rankMap, maxAbsError: error, tolerance: config.tolerance,
            timings: aggregate(results.map(\.records)), wallSeconds: seconds(wall), referenceSeconds: seconds(referenceTime))

    case .process(let world):
        guard world.size == config.worldSize else {
            throw FVDError.invalidArgument("--world-size \(config.worldSize) differs from WORLD_SIZE=\(world.size)")
        }
        let start = clock.now
        let result = try loggingCollectives(config.verbose) { try world.run(rankBody)[0] }
        let wall = clock.now - start
        let referenceStart = clock.now
        let mine = try reference(world.rank / config.replicaSize)
        let referenceTime = clock.now - referenceStart
        // Every rank checks its own output; the world agrees on the largest error and sums the timings.
        let error = try world.group.allReduce(
            Tensor([maxAbsDifference(result.output, mine, atLeast: 0)]), op: .max).scalars(as: Double.self)[0]
        let local = aggregate([result.records])
        let summed = try world.group.allReduce(
            Tensor(shape: [local.count, 3], scalars: local.flatMap { [Double($0.calls), Double($0.totalBytes), $0.totalMicroseconds] }))
            .scalars(as: Double.self)
        let timings = local.enumerated().map { i, t in
            DemoCollectiveTiming(
                name: t.name, calls: Int(summed[3 * i]), totalBytes: Int(summed[3 * i + 1]), totalMicroseconds: summed[3 * i + 2])
        }
        return DemoReport(
            configuration: config, rankMap: result.rankMap, maxAbsError: error, tolerance: config.tolerance,
            timings: timings, wallSeconds: seconds(wall), referenceSeconds: seconds(referenceTime))
    }
}

// MARK: - Helpers

/// What one rank hands back.
private struct DemoRankResult: Sendable {
    var output: DemoMatrix
    var records: [DemoCollectiveRecord]
    var rankMap: String
}

/// The library's module-level collectives (bound with `withCurrent`), each call timed.
private final class DemoTimedCollectives: DemoCommunicator {
    let state: ParallelState
    private(set) var records: [DemoCollectiveRecord] = []
    private let clock = ContinuousClock()

    init(state: ParallelState) { self.state = state }

    var tensorParallelSize: Int { state.tensorParallel.size }
    var tensorParallelRank: Int { state.tensorParallel.rankInGroup }

    private func timed<R>(_ name: String, _ input: Tensor, _ body: () throws -> R) rethrows -> R {
        let start = clock.now
        let result = try body()
        records.append(DemoCollectiveRecord(name: name, bytes: input.byteCount, duration: clock.now - start))
        return result
    }

    func tensorModelParallelAllGather(_ input: Tensor, dim: Int) throws -> Tensor {
        try timed("tensor_model_parallel_all_gather", input) {
            try FastVideoDistributed.tensorModelParallelAllGather(input, dim: dim)
        }
    }

    func tensorModelParallelAllReduce(_ input: Tensor) throws -> Tensor {
        try timed("tensor_model_parallel_all_reduce", input) {
            try FastVideoDistributed.tensorModelParallelAllReduce(input)
        }
    }

    func sequenceModelParallelShard(_ input: Tensor, dim: Int) throws -> (shard: Tensor, originalLength: Int) {
        try timed("sequence_model_parallel_shard", input) {
            try FastVideoDistributed.sequenceModelParallelShard(input, dim: dim)
        }
    }

    func sequenceModelParallelAllToAll4D(_ input: Tensor, scatterDim: Int, gatherDim: Int, split: AllToAllSplit?) throws -> Tensor {
        try timed("sequence_model_parallel_all_to_all_4D (\(scatterDim),\(gatherDim))", input) {
            // With USP the all-to-all runs inside the Ulysses group (the SP group itself without a ring).
            state.ring.size > 1
                ? try state.ulysses.allToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
                : try FastVideoDistributed.sequenceModelParallelAllToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split)
        }
    }

    var ringSize: Int { state.ring.size }
    var ringRank: Int { state.ring.rankInGroup }
    var sequenceParallelRank: Int { state.sequenceParallel.rankInGroup }

    /// The wait is timed: the pass time the attention on the held block did not hide.
    func startRingPass(_ tensor: Tensor) -> () throws -> Tensor {
        timedWait(state.ring.startRingPass(tensor), "ring_pass", bytes: tensor.byteCount)
    }

    func haloExchange(_ shard: Tensor, dim: Int, width: Int) throws -> (before: Tensor, after: Tensor) {
        try timed("halo_exchange", shard) { try state.sequenceParallel.haloExchange(shard, dim: dim, width: width) }
    }

    /// Each chunk's wait is timed: with overlap, that is the exchange time attention did not hide.
    func startSequenceModelParallelAllToAll4D(_ input: Tensor, split: AllToAllSplit?, chunks: Int) -> [() throws -> Tensor] {
        state.sequenceParallel.startAllToAll4D(input, split: split, chunks: chunks).map { handle in
            timedWait(handle, "sequence_model_parallel_all_to_all_4D (2,1)", bytes: input.byteCount / chunks)
        }
    }

    /// A wait for a started collective that records how long the rank waited for it.
    private func timedWait(_ handle: CollectiveHandle<Tensor>, _ name: String, bytes: Int) -> () throws -> Tensor {
        {
            let start = self.clock.now
            let result = try handle.wait()
            self.records.append(DemoCollectiveRecord(name: name, bytes: bytes, duration: self.clock.now - start))
            return result
        }
    }

    func sequenceModelParallelAllGatherWithUnpad(_ input: Tensor, originalLength: Int, dim: Int) throws -> Tensor {
        try timed("sequence_model_parallel_all_gather_with_unpad", input) {
            try FastVideoDistributed.sequenceModelParallelAllGatherWithUnpad(
                input, originalLength: originalLength, dim: dim)
        }
    }
}

extension DemoWeights {
    /// Adds `fault.delta` to the first element of the chosen (already sharded) weight.
    fileprivate mutating func perturb(_ fault: DemoPerturbation) {
        switch fault.weight {
        case .wada: wada.data[0] += fault.delta
        case .wq: wq.data[0] += fault.delta
        case .wk: wk.data[0] += fault.delta
        case .wo: wo.data[0] += fault.delta
        case .w1: w1.data[0] += fault.delta
        case .w2: w2.data[0] += fault.delta
        }
    }
}

extension DemoConfiguration {
    /// About how many bytes a run holds at its peak: the full float32 weights once per rank
    /// and for the reference (each rank derives its shard from them), every rank's shard,
    /// and per rank and for the reference one head's attention scores and the token
    /// activations. An estimate, to refuse sizes that cannot fit before minutes of work.
    var memoryEstimate: Int {
        let c = Double(hidden), s = Double(tokens), mlp = Double(mlpRatio * hidden), w = Double(worldSize)
        let parameters = Double(textDim) * 6 * c + 4 * c * c + 2 * c * mlp
        let activations = s * s + s * (mlp + 12 * c)
        let bytes = 4 * ((w + 1) * parameters + w * parameters / Double(tensorParallel) + (w + 1) * activations)
        return bytes < Double(Int.max / 2) ? Int(bytes) : Int.max / 2
    }
}

/// Checks the sizes the block needs; the layout itself is checked by `GroupLayout`.
/// The heads' divisibility by `sp` is deliberately left to the all-to-all, which reports it.
private func validate(_ config: DemoConfiguration) throws {
    let sizes = [
        ("frames", config.frames), ("height", config.height), ("width", config.width),
        ("hidden", config.hidden), ("heads", config.heads), ("text dim", config.textDim),
        ("MLP ratio", config.mlpRatio),
    ]
    for (name, value) in sizes where value < 1 || value > 1 << 16 {
        throw FVDError.invalidArgument("demo: \(name) must be in 1...65536, got \(value)")
    }
    // The single-rank reference holds [tokens, tokens] attention scores and [tokens, mlp] activations.
    let (area, o1) = config.frames.multipliedReportingOverflow(by: config.height)
    let (tokens, o2) = area.multipliedReportingOverflow(by: config.width)
    guard !o1, !o2, tokens <= 16_384, config.mlpRatio * config.hidden <= 1 << 16 else {
        throw FVDError.invalidArgument(
            "demo: the block is too large (at most 16384 tokens = frames × height × width, and hidden × MLP ratio ≤ 65536)")
    }
    guard config.hidden % config.heads == 0 else {
        throw FVDError.invalidArgument("demo: hidden size \(config.hidden) is not divisible by \(config.heads) heads")
    }
    let tp = config.tensorParallel
    for (name, size) in [("6 × hidden (adaLN)", 6 * config.hidden), ("MLP hidden", config.mlpRatio * config.hidden)]
    where size % tp != 0 {
        throw FVDError.invalidArgument("demo: \(name) = \(size) is not divisible by tensor parallel size \(tp)")
    }
    guard config.tolerance >= 0 else {
        throw FVDError.invalidArgument("demo: tolerance must be non-negative, got \(config.tolerance)")
    }
    guard config.ringDegree == 1 || config.overlapChunks == 1 else {
        throw FVDError.invalidArgument("demo: --overlap exchanges heads in chunks for Ulysses attention; with --ring, the ring passes overlap instead")
    }
    let sp = config.sequenceParallel, frame = config.height * config.width
    if config.temporalConvolution, (tokens + sp - 1) / sp < frame {
        throw FVDError.invalidArgument(
            "demo: --temporal-conv needs at least one frame (\(frame) tokens) on each of the \(sp) sequence-parallel ranks; "
                + "they get \((tokens + sp - 1) / sp)")
    }
}

private func maxAbsDifference(_ a: DemoMatrix, _ b: DemoMatrix, atLeast start: Double) -> Double {
    guard a.rows == b.rows, a.cols == b.cols else { return .infinity }
    var worst = start
    a.data.withUnsafeBufferPointer { pa in
        b.data.withUnsafeBufferPointer { pb in
            for i in 0..<pa.count {
                let d = Double(abs(pa[i] - pb[i]))
                if d.isNaN { worst = .nan } else if !worst.isNaN, d > worst { worst = d }
            }
        }
    }
    return worst
}

private func aggregate(_ perRank: [[DemoCollectiveRecord]]) -> [DemoCollectiveTiming] {
    var order: [String] = []
    var table: [String: DemoCollectiveTiming] = [:]
    for records in perRank {
        for r in records {
            if table[r.name] == nil {
                order.append(r.name)
                table[r.name] = DemoCollectiveTiming(name: r.name, calls: 0, totalBytes: 0, totalMicroseconds: 0)
            }
            table[r.name]!.calls += 1
            table[r.name]!.totalBytes += r.bytes
            table[r.name]!.totalMicroseconds += seconds(r.duration) * 1e6
        }
    }
    return order.map { table[$0]! }
}

private func seconds(_ d: Duration) -> Double {
    let (s, atto) = d.components
    return Double(s) + Double(atto) * 1e-18
}

private func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
private func lcm(_ a: Int, _ b: Int) -> Int { a > 0 && b > 0 ? a / gcd(a, b) * b : 0 }
