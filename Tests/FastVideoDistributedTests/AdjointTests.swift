import Foundation
import Testing

@testable import FastVideoDistributed

/// ⟨a, b⟩ of two tensors of one dtype: in Double for floating point; for integers,
/// exactly, modulo 2^bits (collectives on integers wrap, and so does this).
private struct Dot {
    var value = 0.0
    var magnitude = 0.0
    var wrapped: UInt64 = 0
    var mismatch: String?

    mutating func add(_ a: Tensor, _ b: Tensor) {
        guard a.shape == b.shape, a.dtype == b.dtype else {
            value = .nan  // shapes that do not pair up fail the comparison
            wrapped = 0xDEAD
            mismatch = "\(a.shape) \(a.dtype) vs \(b.shape) \(b.dtype)"
            return
        }
        if a.dtype.isFloatingPoint {
            for (x, y) in zip(floats(a), floats(b)) {
                value += x * y
                magnitude += abs(x * y)
            }
        } else {
            for (x, y) in zip(integers(a), integers(b)) { wrapped = wrapped &+ x &* y }
        }
    }

    /// Whether two sums agree: to a tolerance for floats, exactly modulo 2^bits for integers.
    func agrees(with other: Dot, _ dtype: DType) -> Bool {
        if dtype.isFloatingPoint {
            let tolerance: Double = [.float64: 1e-12, .float32: 1e-5, .float16: 1e-2, .bfloat16: 2e-2][dtype]!
            return abs(value - other.value) <= tolerance * max(1, magnitude, other.magnitude)
        }
        let bits = dtype.byteSize * 8
        let mask: UInt64 = bits == 64 ? .max : (1 << UInt64(bits)) - 1
        return wrapped & mask == other.wrapped & mask
    }
}

private func floats(_ t: Tensor) -> [Double] {
    switch t.dtype {
    case .float64: return try! t.scalars(as: Double.self)
    case .float32: return try! t.scalars(as: Float.self).map(Double.init)
    case .float16: return try! t.scalars(as: Float16.self).map(Double.init)
    case .bfloat16: return try! t.scalars(as: BFloat16.self).map(Double.init)
    default: fatalError("not floating point")
    }
}

private func integers(_ t: Tensor) -> [UInt64] {
    switch t.dtype {
    case .int8: return try! t.scalars(as: Int8.self).map { UInt64(bitPattern: Int64($0)) }
    case .int16: return try! t.scalars(as: Int16.self).map { UInt64(bitPattern: Int64($0)) }
    case .int32: return try! t.scalars(as: Int32.self).map { UInt64(bitPattern: Int64($0)) }
    case .int64: return try! t.scalars(as: Int64.self).map { UInt64(bitPattern: $0) }
    case .uint8: return try! t.scalars(as: UInt8.self).map(UInt64.init)
    default: fatalError("not an integer")
    }
}

/// One operation and its adjoint on a rank: `forward(x)` and `adjoint(y)`, with the
/// rank's input shape. `nil` outputs (gather off the root) count as empty.
private struct AdjointCase: Sendable {
    var name: String
    var floatingOnly = false
    var input: @Sendable (_ rank: Int, _ n: Int) -> [Int]
    /// Whether every rank gets the same input (shard's replicated input).
    var replicated = false
    var forward: @Sendable (ParallelState, Tensor) throws -> Tensor?
    var adjoint: @Sendable (ParallelState, Tensor?) throws -> Tensor
}

private let awkward = [1, 0, 3, 2, 5, 1, 7, 2]

private let adjointCases: [AdjointCase] = [
    AdjointCase(name: "all_reduce", input: { _, _ in [3, 5] }, forward: { try $0.world.allReduce($1) }, adjoint: { try $0.world.allReduceVJP($1!) }),
    AdjointCase(name: "all_gather dim 0", input: { _, _ in [2, 3, 4] }, forward: { try $0.world.allGather($1, dim: 0) }, adjoint: { try $0.world.allGatherVJP($1!, dim: 0) }),
    AdjointCase(name: "all_gather dim -1", input: { _, _ in [2, 3, 1] }, forward: { try $0.world.allGather($1, dim: -1) }, adjoint: { try $0.world.allGatherVJP($1!, dim: -1) }),
    AdjointCase(name: "TP all_gather dim 1", input: { _, _ in [2, 3, 2] }, forward: { try $0.tensorModelParallelAllGather($1, dim: 1) }, adjoint: { try $0.tensorModelParallelAllGatherVJP($1!, dim: 1) }),
    AdjointCase(name: "reduce_scatter dim 1", input: { _, n in [2, 3 * n, 2] }, forward: { try $0.world.reduceScatter($1, dim: 1) }, adjoint: { try $0.world.reduceScatterVJP($1!, dim: 1) }),
    AdjointCase(name: "all_to_all (2,1)", input: { _, n in [2, 3, 2 * n, 2] },
        forward: { try $0.sequenceModelParallelAllToAll4D($1) }, adjoint: { try $0.sequenceModelParallelAllToAll4DVJP($1!) }),
    AdjointCase(name: "all_to_all (1,2)", input: { _, n in [1, 2 * n, 3, 2] },
        forward: { try $0.sequenceModelParallelAllToAll4D($1, scatterDim: 1, gatherDim: 2) },
        adjoint: { try $0.sequenceModelParallelAllToAll4DVJP($1!, scatterDim: 1, gatherDim: 2) }),
    AdjointCase(name: "uneven all_to_all (2,1), 7 heads", input: { r, _ in [2, awkward[r], 7, 2] },
        forward: { try $0.sequenceModelParallelAllToAll4D($1, split: .balanced) },
        adjoint: { try $0.sequenceModelParallelAllToAll4DVJP($1!, split: AllToAllSplit(sequence: Array(awkward.prefix($0.sequenceParallel.size)))) }),
    AdjointCase(name: "uneven all_to_all (1,2), 11 tokens", input: { r, _ in [1, 11, awkward[r], 3] },
        forward: { try $0.sequenceModelParallelAllToAll4D($1, scatterDim: 1, gatherDim: 2, split: .balanced) },
        adjoint: {
            try $0.sequenceModelParallelAllToAll4DVJP(
                $1!, scatterDim: 1, gatherDim: 2, split: AllToAllSplit(heads: Array(awkward.prefix($0.sequenceParallel.size))))
        }),
    AdjointCase(name: "broadcast", input: { _, _ in [4, 3] }, forward: { try $0.world.broadcast($1, from: $0.world.size - 1) },
        adjoint: { try $0.world.broadcastVJP($1!, from: $0.world.size - 1) }),
    AdjointCase(name: "gather", input: { _, _ in [2, 3] }, forward: { try $0.world.gather($1, to: 0, dim: 1) },
        adjoint: { try $0.world.gatherVJP($1, to: 0, dim: 1) }),
    AdjointCase(name: "shard (replicated input, 1/n)", floatingOnly: true, input: { _, _ in [2, 7, 3] }, replicated: true,
        forward: { try $0.sequenceModelParallelShard($1, dim: 1).shard },
        adjoint: { try $0.sequenceModelParallelShardVJP($1!, originalLength: 7, dim: 1) }),
    AdjointCase(name: "all_gather_with_unpad", input: { _, _ in [2, 3, 2] },
        forward: { try $0.sequenceModelParallelAllGatherWithUnpad($1, originalLength: 3 * $0.sequenceParallel.size - 1, dim: 1) },
        adjoint: { try $0.sequenceModelParallelAllGatherWithUnpadVJP($1!, shardLength: 3, dim: 1) }),
    AdjointCase(name: "ring pass, uneven shapes", input: { r, _ in [awkward[r], 3] },
        forward: { try $0.world.ringPass($1) }, adjoint: { try $0.world.ringPassVJP($1!) }),
    haloCase(periodic: false),
    haloCase(periodic: true),
]

/// The halo exchange of width 2 along dim 1 of uneven shards, its two halos concatenated.
private func haloCase(periodic: Bool) -> AdjointCase {
    let shape: @Sendable (Int) -> [Int] = { r in [2, 2 + awkward[r], 3] }
    return AdjointCase(
        name: "halo exchange, width 2\(periodic ? ", periodic" : "")", floatingOnly: true, input: { r, _ in shape(r) },
        forward: {
            let (before, after) = try $0.world.haloExchange($1, dim: 1, width: 2, periodic: periodic)
            return try Tensor.concatenated([before, after], dim: 1)
        },
        adjoint: { state, y in
            let (r, n) = (state.world.rankInGroup, state.world.size)
            let widths = (periodic || r > 0 ? 2 : 0, periodic || r < n - 1 ? 2 : 0)
            return try state.world.haloExchangeVJP(
                before: y!.slice(dim: 1, range: 0..<widths.0), after: y!.slice(dim: 1, range: widths.0..<(widths.0 + widths.1)),
                shard: Tensor(zeros: shape(r), dtype: y!.dtype), dim: 1, width: 2, periodic: periodic)
        })
}

@Suite("Adjoints: Σ_ranks ⟨op(x), y⟩ = Σ_ranks ⟨x, op*(y)⟩ for every collective and companion")
struct AdjointTests {
    @Test("the dot-product test on random data, every dtype but bool, W = 1…8", arguments: 1...8)
    func dotProducts(worldSize n: Int) throws {
        for dtype in DType.allCases where dtype != .bool {
            let cases = adjointCases.filter { !$0.floatingOnly || dtype.isFloatingPoint }
            let sums = try World.inProcess(size: n, timeout: 30).run { world -> [(Dot, Dot)] in
                let state = try ParallelState(world: world, tensorParallel: n, sequenceParallel: n)
                let r = world.rankInGroup
                return try cases.enumerated().map { k, c in
                    let x = randomTensor(c.input(r, n), dtype, seed: UInt64(1000 * k + (c.replicated ? 0 : r + 1)))
                    let out = try c.forward(state, x)
                    // y: random, of the output's shape (none where the op gives this rank nothing).
                    let y = out.map { randomTensor($0.shape, dtype, seed: UInt64(7777 + 1000 * k + r)) }
                    var left = Dot(), right = Dot()
                    if let out, let y { left.add(out, y) }
                    right.add(x, try c.adjoint(state, y))
                    return (left, right)
                }
            }
            for (k, c) in cases.enumerated() {
                var left = Dot(), right = Dot()
                for rank in sums {
                    left.value += rank[k].0.value
                    left.magnitude += rank[k].0.magnitude
                    left.wrapped = left.wrapped &+ rank[k].0.wrapped
                    right.value += rank[k].1.value
                    right.magnitude += rank[k].1.magnitude
                    right.wrapped = right.wrapped &+ rank[k].1.wrapped
                }
                #expect(left.agrees(with: right, dtype) && sums.allSatisfy { $0[k].1.mismatch == nil }, "\(c.name) \(dtype) W=\(n): \(left) vs \(right) \(sums.compactMap { $0[k].1.mismatch })")
            }
        }
    }

    @Test("the adjoint of a grouped-query split, a split without the forward's shard sizes, and the 1/n scaling of integers are clear errors")
    func unsupported() throws {
        let results = try World.inProcess(size: 2, timeout: 30).run { world -> [String] in
            let state = try ParallelState(world: world, tensorParallel: 1, sequenceParallel: 2)
            var messages: [String] = []
            do { _ = try world.allToAll4DVJP(try Tensor(zeros: [1, 4, 1, 2], dtype: .float32), split: AllToAllSplit(queryHeads: 2)) } catch {
                messages.append("\(error)")
            }
            do { _ = try world.allToAll4DVJP(try Tensor(zeros: [1, 4, 1, 2], dtype: .float32), split: .balanced) } catch {
                messages.append("\(error)")
            }
            do { _ = try state.sequenceModelParallelShardVJP(try Tensor(zeros: [1, 2], dtype: .int32), originalLength: 4) } catch {
                messages.append("\(error)")
            }
            return messages
        }
        #expect(results[0].count == 3)
        #expect(results[0][0].contains("grouped-query split"))
        #expect(results[0][1].contains("give the split's sequence sizes, those of the forward inputs"))
        #expect(results[0][2].contains("1/n scaling needs a floating-point dtype"))
    }
}
