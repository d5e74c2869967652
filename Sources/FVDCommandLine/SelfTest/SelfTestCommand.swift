import ArgumentParser
import FastVideoDistributed
import Foundation

/// `fvd selftest`: every collective on this process's world, compared bit for bit with
/// the in-process transport; and failure injection for the multi-process tests.
///
/// Run it as a rank: `fvd launch -n 3 -- fvd selftest`. Each rank generates every
/// rank's inputs from a seed, runs the collectives on the world from the environment,
/// runs the same calls on an in-process world of the same size, and compares its own
/// results bitwise. The in-process transport is checked against naive references by
/// the test suite, so equality here checks the shared-memory transport.
struct SelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check every collective of this process's world against the in-process transport (run under fvd launch).",
        shouldDisplay: false
    )

    @Option(help: "Fail on purpose: 'throw' (this rank throws), 'exit' (exits with status 3), 'kill' (SIGKILL itself), 'shape' (passes another shape), 'late' (arrives 1 s late).")
    var inject: String?

    @Option(help: "The rank that injects the failure.")
    var injectRank: Int = 1

    @Option(help: "Seconds a collective waits for missing ranks.")
    var timeout: Double?

    func run() throws {
        do {
            // The reference first, in ordinary memory: once this process joins a multi-process
            // world, its tensors (in-process ones included) live in the shared segment.
            let env = ProcessInfo.processInfo.environment
            let size = Int(env["WORLD_SIZE"] ?? "1") ?? 1, rank = Int(env["RANK"] ?? "0") ?? 0
            let injectRank = injectRank
            let expected = try World.inProcess(size: size, timeout: 60).run { group in
                try runCollectives(group, worldSize: size, inject: nil, injectRank: injectRank)
            }[min(max(rank, 0), size - 1)]
            let world = try World.fromEnvironment(timeout: timeout)
            let got = try world.run { group in
                try runCollectives(group, worldSize: world.size, inject: inject, injectRank: injectRank)
            }
            let mismatches = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            guard mismatches.isEmpty else {
                throw FVDError.invalidArgument(
                    "rank \(world.rank): results \(mismatches) of \(got.count) differ from the in-process transport")
            }
            print("selftest rank \(world.rank) of \(world.size) (\(world.transport)): \(got.count) results equal the in-process transport")
        } catch {
            printError(error)
            throw rankExitCode(for: error)
        }
    }
}

/// Deterministic input of `rank` for case `salt`.
private func input(rank: Int, shape: [Int], dtype: DType, salt: Int) throws -> Tensor {
    var state = UInt64(rank * 7919 + salt * 104_729 + 1)
    let values = (0..<shape.reduce(1, *)).map { _ -> Float in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: state >> 33) % 2001 - 1000) / 64
    }
    switch dtype {
    case .bfloat16: return try Tensor(shape: shape, scalars: values.map { BFloat16($0) })
    case .float16: return try Tensor(shape: shape, scalars: values.map { Float16($0) })
    case .float64: return try Tensor(shape: shape, scalars: values.map { Double($0) })
    case .int32: return try Tensor(shape: shape, scalars: values.map { Int32($0 * 64) })
    default: return try Tensor(shape: shape, scalars: values)
    }
}

/// Every collective, several dtypes and shapes; returns this rank's results in call order.
private func runCollectives(_ world: GroupCoordinator, worldSize n: Int, inject: String?, injectRank: Int) throws -> [Tensor] {
    var results: [Tensor] = []
    var salt = 0
    let me = world.rank
    for dtype in [DType.float32, .bfloat16, .float16, .int32, .float64] {
        for shape in [[7], [2, 3 * n, 5], [1, 2 * n, 2 * n, 4], [40_000 * n]] {
            salt += 1
            if salt == 3, let inject, me == injectRank {
                switch inject {
                case "throw": throw FVDError.invalidArgument("injected failure on rank \(me)")
                case "exit": exit(3)
                case "kill": kill(getpid(), SIGKILL)
                case "late": Thread.sleep(forTimeInterval: 1)
                default: break
                }
            }
            let wrongShape = inject == "shape" && me == injectRank && salt == 3
            let x = try input(rank: me, shape: wrongShape ? shape + [1] : shape, dtype: dtype, salt: salt)
            results.append(try world.allReduce(x))
            var y = x
            try world.allReduce(inPlace: &y, op: dtype.isFloatingPoint ? .average : .max)
            results.append(y)
            results.append(try world.allGather(x, dim: 0))
            results.append(try world.allGather(x, dim: -1))
            // In place: this rank's block at its position along dim 0, zeros elsewhere.
            var z = try Tensor(zeros: [x.shape[0] * n] + x.shape.dropFirst(), dtype: dtype)
            z.withUnsafeMutableBytes { out in
                x.withUnsafeBytes { out.baseAddress!.advanced(by: world.rankInGroup * $0.count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            try world.allGather(inPlace: &z, dim: 0)
            results.append(z)
            if shape.count >= 2, shape[1] % n == 0 {
                results.append(try world.reduceScatter(x, dim: 1))
            }
            if let g = try world.gather(x, to: n - 1, dim: 0) { results.append(g) }
            results.append(try world.broadcast(x, from: salt % n))
            if shape.count == 4 {
                let heads = try world.allToAll4D(x, scatterDim: 2, gatherDim: 1)
                results.append(heads)
                results.append(try world.allToAll4D(heads, scatterDim: 1, gatherDim: 2))
            }
            try world.barrier()
        }
    }
    return results
}
