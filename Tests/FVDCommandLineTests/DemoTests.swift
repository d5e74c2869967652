import ArgumentParser
import FastVideoDistributed
import Testing

@testable import FVDCommandLine

/// A small block so the sweep stays fast: 2 frames × 4×4 patches = 32 tokens, hidden 64, 8 heads.
private func small(
    world: Int, tp: Int, sp: Int, frames: Int = 2, height: Int = 4, width: Int = 4, heads: Int = 8, seed: UInt64 = 7
) -> DemoConfiguration {
    DemoConfiguration(
        worldSize: world, tensorParallel: tp, sequenceParallel: sp, frames: frames, height: height, width: width,
        hidden: 64, heads: heads, textDim: 32, mlpRatio: 4, seed: seed, timeout: 30)
}

private let layouts: [(world: Int, tp: Int, sp: Int)] = [
    (1, 1, 1), (2, 2, 1), (2, 1, 2), (4, 2, 2), (4, 4, 1), (4, 1, 4), (4, 4, 2), (4, 2, 4),
    (8, 2, 2), (8, 4, 2), (8, 2, 4), (8, 8, 1), (8, 1, 8),
]

private let collectiveNames = [
    "tensor_model_parallel_all_gather",
    "sequence_model_parallel_shard",
    "sequence_model_parallel_all_to_all_4D (2,1)",
    "sequence_model_parallel_all_to_all_4D (1,2)",
    "sequence_model_parallel_all_gather_with_unpad",
    "tensor_model_parallel_all_reduce",
]

@Suite("fvd demo")
struct DemoTests {
    @Test("the parallel block matches the single-rank reference", arguments: layouts.map { [$0.world, $0.tp, $0.sp] })
    func passes(_ layout: [Int]) throws {
        let config = small(world: layout[0], tp: layout[1], sp: layout[2])
        let report = try runDemo(config)
        #expect(report.passed)
        #expect(report.maxAbsError < 1e-5)
        #expect(report.tolerance == 1e-4)
        #expect(report.rankMap.hasPrefix("world size \(layout[0]): tensor parallel \(layout[1])"))
        // Every rank calls every collective once, in the block's order.
        #expect(report.timings.map(\.name) == collectiveNames)
        for t in report.timings {
            #expect(t.calls == layout[0])
            #expect(t.totalBytes > 0)
            #expect(t.totalMicroseconds >= 0)
        }
    }

    @Test("a sequence that does not divide by sp is padded and its padded keys are masked")
    func padding() throws {
        // 1 × 3 × 5 = 15 tokens over 2 and 4 sequence-parallel ranks.
        for (world, tp, sp) in [(2, 1, 2), (4, 2, 4), (8, 2, 4)] {
            let report = try runDemo(small(world: world, tp: tp, sp: sp, frames: 1, height: 3, width: 5))
            #expect(report.passed, "world \(world) tp \(tp) sp \(sp): error \(report.maxAbsError)")
        }
    }

    @Test("sequence parallelism alone reproduces the reference bitwise")
    func sequenceParallelIsExact() throws {
        // Row-wise kernels and an attention that sums keys in the same order: only TP's
        // split sums can change the rounding.
        for sp in [2, 4, 8] {
            let report = try runDemo(small(world: sp, tp: 1, sp: sp))
            #expect(report.maxAbsError == 0)
        }
    }

    @Test("the default configuration is the one the spec names")
    func defaults() {
        let config = DemoConfiguration()
        #expect(config.worldSize == 4 && config.tensorParallel == 2 && config.sequenceParallel == 2)
        #expect(config.tokens == 256 && config.hidden == 128 && config.heads == 8 && config.textDim == 64)
        #expect(config.mlpRatio == 4 && config.tolerance == 1e-4)
        #expect(config.replicaSize == 2 && config.samples == 2)
        #expect(DemoConfiguration(worldSize: 8, tensorParallel: 2, sequenceParallel: 4).replicaSize == 4)
    }

    @Test("an invalid layout throws the library's error")
    func invalidLayout() {
        #expect(throws: FVDError.invalidLayout(worldSize: 4, tensorParallel: 3, sequenceParallel: 2)) {
            try runDemo(small(world: 4, tp: 3, sp: 2))
        }
        #expect(throws: FVDError.invalidLayout(worldSize: 4, tensorParallel: 0, sequenceParallel: 1)) {
            try runDemo(small(world: 4, tp: 0, sp: 1))
        }
    }

    @Test("heads that do not divide by sp take the uneven all-to-all: 30 heads on 4 ranks (8, 8, 7, 7), 8 on 3, 3 on 4", arguments: [
        (4, 1, 4, 30), (4, 2, 2, 30), (3, 1, 3, 8), (4, 1, 4, 3), (6, 2, 3, 5),
    ])
    func unevenHeads(_ layout: (Int, Int, Int, Int)) throws {
        let (world, tp, sp, heads) = layout
        var config = small(world: world, tp: tp, sp: sp, heads: heads)
        config.hidden = 2 * heads
        let report = try runDemo(config)
        #expect(report.passed, "max abs error \(report.maxAbsError)")
    }

    @Test("sizes the block cannot use are rejected")
    func badSizes() {
        #expect(throws: FVDError.self) { try runDemo(small(world: 1, tp: 1, sp: 1, heads: 6)) }  // 64 % 6
        #expect(throws: FVDError.self) { try runDemo(small(world: 1, tp: 1, sp: 1, frames: 0)) }
        var config = small(world: 3, tp: 3, sp: 1)
        config.hidden = 8  // MLP hidden 32 does not split over 3
        config.heads = 8
        #expect(throws: FVDError.self) { try runDemo(config) }
    }

    @Test(
        "a wrong weight on one rank is caught",
        arguments: [
            DemoPerturbation(rank: 3, weight: .wada), DemoPerturbation(rank: 1, weight: .wq),
            DemoPerturbation(rank: 2, weight: .wk), DemoPerturbation(rank: 0, weight: .wo),
            DemoPerturbation(rank: 1, weight: .w1), DemoPerturbation(rank: 3, weight: .w2),
        ])
    func faultIsCaught(_ fault: DemoPerturbation) throws {
        var config = small(world: 4, tp: 2, sp: 2)
        config.perturbation = fault
        let report = try runDemo(config)
        #expect(!report.passed)
        #expect(report.maxAbsError > report.tolerance)
    }

    @Test("--ring: USP (Ulysses inside each Ulysses group, ring attention over the ring) matches one rank, padded tokens too",
          arguments: [(2, 1, 2, 2), (4, 1, 4, 2), (4, 1, 4, 4), (8, 2, 4, 2), (8, 1, 8, 2), (8, 1, 8, 4), (8, 1, 8, 8)])
    func ring(_ layout: (Int, Int, Int, Int)) throws {
        let (world, tp, sp, ring) = layout
        for (frames, height, width) in [(2, 4, 4), (1, 3, 5)] {
            var config = small(world: world, tp: tp, sp: sp, frames: frames, height: height, width: width)
            config.ringDegree = ring
            let report = try runDemo(config)
            #expect(report.passed && report.maxAbsError < 1e-5, "W=\(world) tp \(tp) sp \(sp) ring \(ring) \(frames)×\(height)×\(width): \(report.maxAbsError)")
            #expect(report.rankMap.contains("(ulysses \(sp / ring) × ring \(ring))"))
            let passes = report.timings.first { $0.name == "ring_pass" }?.calls
            #expect(passes == world * (ring - 1), "\(report.timings)")
        }
    }

    @Test("--temporal-conv: the halo-exchanged convolution is the unsharded one, bit for bit (sequence parallelism alone stays exact)")
    func temporalConvolution() throws {
        for sp in [2, 4, 8] {
            // 8 frames of 2 × 2 patches: every rank holds at least one frame.
            var config = small(world: sp, tp: 1, sp: sp, frames: 8, height: 2, width: 2)
            config.temporalConvolution = true
            let report = try runDemo(config)
            #expect(report.passed && report.maxAbsError == 0, "sp \(sp): \(report.maxAbsError)")
            #expect(report.timings.first { $0.name == "halo_exchange" }?.calls == sp)
        }
        var tooShort = small(world: 4, tp: 1, sp: 4)
        tooShort.temporalConvolution = true
        #expect { _ = try runDemo(tooShort) } throws: { "\($0)".contains("--temporal-conv needs at least one frame (16 tokens)") }
        var ringAndOverlap = small(world: 2, tp: 1, sp: 2)
        (ringAndOverlap.ringDegree, ringAndOverlap.overlapChunks) = (2, 2)
        #expect { _ = try runDemo(ringAndOverlap) } throws: { "\($0)".contains("with --ring, the ring passes overlap instead") }
    }

    @Test("--overlap: attention on each group of heads as it arrives gives the same output bits", arguments: [(4, 2, 2, 8), (4, 1, 4, 30), (2, 1, 2, 3)])
    func overlap(_ layout: (Int, Int, Int, Int)) throws {
        let (world, tp, sp, heads) = layout
        var config = small(world: world, tp: tp, sp: sp, heads: heads)
        config.hidden = 2 * heads
        let plain = try runDemo(config)
        config.overlapChunks = 3
        let overlapped = try runDemo(config)
        #expect(overlapped.passed && overlapped.maxAbsError == plain.maxAbsError)
        let calls = overlapped.timings.first { $0.name == "sequence_model_parallel_all_to_all_4D (2,1)" }?.calls
        #expect(calls == 3 * world, "\(overlapped.timings)")
    }

    @Test("fvd demo --verbose logs each rank's layout and one line per collective on stderr; without it, nothing")
    func verbose() throws {
        let quiet = try runFVD(["demo"])
        #expect(quiet.status == 0 && quiet.stderr.isEmpty, "\(quiet.stderr)")
        let result = try runFVD(["demo", "--verbose"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("PASS"), "\(result.stdout)")
        let lines = result.stderr.split(separator: "\n")
        for rank in 0..<4 {
            let mine = lines.filter { $0.contains("debug fastvideo.distributed: rank=\(rank) ") }
            #expect(mine.contains { $0.hasSuffix("layout: tp\(rank / 2): ranks [\(rank / 2 * 2), \(rank / 2 * 2 + 1)] *") }, "\(mine)")
            // The step's collectives: as many lines as the demo's timing table counts for this rank.
            let calls = mine.filter { $0.contains(" call #") && $0.hasSuffix(" GB/s") }
            #expect(calls.count == 5, "\(calls)")
            #expect(calls.contains { $0.contains("all_to_all_4D sp\(rank / 2) [\(rank / 2 * 2), \(rank / 2 * 2 + 1)] call #0 shape [3, 128, 8, 16] float32 196608 B ") }, "\(calls)")
        }
    }

    @Test("the error is measured: a shifted output is far from the reference")
    func errorIsHonest() throws {
        let shape = DemoShape(tokens: 32, hidden: 64, heads: 8, textDim: 32, mlpHidden: 256)
        let weights = DemoWeights(shape: shape, seed: 1)
        let sample = DemoSample(shape: shape, seed: 1, index: 0)
        let out = try DemoBlock.forward(sample: sample, weights: weights, shape: shape, comm: DemoLocal())
        #expect(out.rows == 32 && out.cols == 64)
        #expect(out.data.allSatisfy { $0.isFinite })
        // The block changes its input, and a different sample gives a different output.
        #expect(out != sample.x)
        let other = try DemoBlock.forward(
            sample: DemoSample(shape: shape, seed: 1, index: 1), weights: weights, shape: shape, comm: DemoLocal())
        #expect(other != out)
        // A one-token shift of the output is well beyond the tolerance.
        var shifted = out
        shifted.data = Array(out.data[64...] + out.data[..<64])
        let worst = zip(shifted.data, out.data).map { abs($0 - $1) }.max() ?? 0
        #expect(worst > 0.1)
    }
}

@Suite("demo math")
struct DemoMathTests {
    @Test("matmul matches a naive triple loop")
    func matmul() {
        var rng = SplitMix64(seed: 3)
        let a = DemoMatrix(rows: 5, cols: 7, data: rng.values(35, std: 1))
        let b = DemoMatrix(rows: 7, cols: 3, data: rng.values(21, std: 1))
        let c = DemoMath.matmul(a, b)
        for i in 0..<5 {
            for j in 0..<3 {
                var s: Float = 0
                for k in 0..<7 { s += a.data[i * 7 + k] * b.data[k * 3 + j] }
                #expect(abs(c.data[i * 3 + j] - s) <= 1e-5)
            }
        }
    }

    @Test("column and row splits of a matmul sum back to the whole")
    func splits() {
        var rng = SplitMix64(seed: 4)
        let a = DemoMatrix(rows: 3, cols: 8, data: rng.values(24, std: 1))
        let b = DemoMatrix(rows: 8, cols: 6, data: rng.values(48, std: 1))
        let whole = DemoMath.matmul(a, b)
        let left = DemoMath.matmul(a.columns(0..<4), b.rowRange(0..<4))
        let right = DemoMath.matmul(a.columns(4..<8), b.rowRange(4..<8))
        for i in whole.data.indices { #expect(abs(whole.data[i] - (left.data[i] + right.data[i])) <= 1e-5) }
        #expect(DemoMath.matmul(a, b.columns(2..<4)).data == whole.columns(2..<4).data)
    }

    @Test("LayerNorm rows have mean 0 and variance 1; activations match known values")
    func normsAndActivations() {
        var rng = SplitMix64(seed: 5)
        let x = DemoMatrix(rows: 4, cols: 16, data: rng.values(64, std: 3))
        let y = DemoMath.layerNorm(x)
        for i in 0..<4 {
            let row = y.data[(i * 16)..<((i + 1) * 16)]
            let mean = row.reduce(0, +) / 16
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 16
            #expect(abs(mean) < 1e-5)
            #expect(abs(variance - 1) < 1e-3)
        }
        #expect(DemoMath.silu(0) == 0)
        #expect(abs(DemoMath.silu(1) - 0.731_058_6) < 1e-6)
        #expect(abs(DemoMath.gelu(1) - 0.841_192) < 1e-5)
        #expect(abs(DemoMath.gelu(-1) + 0.158_808) < 1e-5)
    }

    @Test("attention ignores masked keys and averages equal keys")
    func attentionMask() {
        // 3 positions, 1 head, headDim 2; position 2 is padding with a huge key and value.
        let q: [Float] = [1, 0, 0, 1, 1, 1]
        let k: [Float] = [1, 0, 1, 0, 1000, 1000]
        let v: [Float] = [2, 4, 6, 8, 1e6, 1e6]
        let out = q.withUnsafeBufferPointer { pq in
            k.withUnsafeBufferPointer { pk in
                v.withUnsafeBufferPointer { pv in
                    DemoMath.attention(q: pq, k: pk, v: pv, seq: 3, heads: 1, headDim: 2, validKeys: 2)
                }
            }
        }
        // Keys 0 and 1 are equal, so every query averages values 0 and 1: (4, 6).
        for i in 0..<3 {
            #expect(abs(out[i * 2] - 4) < 1e-5)
            #expect(abs(out[i * 2 + 1] - 6) < 1e-5)
        }
    }
}

@Suite("fvd demo command")
struct DemoCommandTests {
    @Test("options parse into the configuration")
    func parse() throws {
        let command = try DemoCommand.parse([
            "--world-size", "8", "--tp", "2", "--sp", "4", "--frames", "2", "--height", "4", "--width", "4",
            "--hidden", "64", "--heads", "8", "--seed", "9", "--tolerance", "0.001", "--timeout", "5",
        ])
        #expect(command.worldSize == 8 && command.tp == 2 && command.sp == 4)
        #expect(command.frames == 2 && command.height == 4 && command.width == 4)
        #expect(command.hidden == 64 && command.heads == 8 && command.seed == 9)
        #expect(command.tolerance == 0.001 && command.timeout == 5)
        let defaults = try DemoCommand.parse([])
        #expect(defaults.worldSize == 4 && defaults.tp == 2 && defaults.sp == 2 && defaults.tolerance == 1e-4)
    }

    @Test("a library error exits non-zero")
    func libraryErrorExits() throws {
        let command = try DemoCommand.parse(["--world-size", "3", "--tp", "3", "--sp", "1", "--frames", "1"])  // MLP hidden 512 over 3
        #expect(throws: ExitCode.failure) { try command.run() }
    }

    @Test("the report text has the rank map, the timing table, the error and the verdict")
    func rendering() throws {
        let report = try runDemo(small(world: 4, tp: 2, sp: 2))
        let text = render(report)
        #expect(text.contains("tp0: ranks [0, 1] *"))
        #expect(text.contains("sequence_model_parallel_all_to_all_4D (2,1)"))
        #expect(text.contains("max abs error vs single-rank reference"))
        #expect(text.hasSuffix("PASS"))
        var failing = report
        failing.maxAbsError = 1
        #expect(render(failing).hasSuffix("FAIL"))
    }
}
