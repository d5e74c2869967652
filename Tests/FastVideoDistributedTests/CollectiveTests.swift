import Testing
@testable import FastVideoDistributed

/// Inputs are a function of (world rank, case), so the reference can rebuild any rank's input.
private func input(rank: Int, shape: [Int], dtype: DType, salt: Int) -> Tensor {
    randomTensor(shape, dtype, seed: UInt64(rank * 1_000_003 + salt * 7919))
}

private let gatherShapes: [[Int]] = [[1], [3], [2, 5], [1, 3, 1], [2, 1, 3, 2]]

extension Tensor {
    /// Zeros of `count` elements.
    static func zerosLike(_ count: Int, _ dtype: DType) -> Tensor { try! Tensor(zeros: [count], dtype: dtype) }
}

/// Which group of `layout` holds `rank`, for the three kinds.
private func groupOf(_ rank: Int, in groups: [[Int]]) -> [Int] { groups.first { $0.contains(rank) }! }

@Suite("Collectives against naive references, every layout of 1...8 ranks")
struct CollectiveReferenceTests {
    @Test("all-gather over TP and SP groups, every dtype, positive and negative dims", arguments: everyLayout())
    func allGather(layout: GroupLayout) throws {
        let outputs = try World.inProcess(size: layout.worldSize, timeout: 30).run { world in
            let state = try ParallelState(
                world: world, tensorParallel: layout.tensorParallelSize, sequenceParallel: layout.sequenceParallelSize)
            var results: [Tensor] = []
            for (c, shape) in gatherShapes.enumerated() {
                for (k, dtype) in DType.allCases.enumerated() {
                    let salt = c * 100 + k
                    let dim = (salt % 2 == 0) ? -1 - (salt % shape.count) : salt % shape.count
                    let x = input(rank: world.rank, shape: shape, dtype: dtype, salt: salt)
                    let y = try state.withCurrent { try tensorModelParallelAllGather(x, dim: dim) }
                    let z = try state.withCurrent { try sequenceModelParallelAllGather(x, dim: dim) }
                    #expect(x == input(rank: world.rank, shape: shape, dtype: dtype, salt: salt), "input was modified")
                    results += [y, z]
                    // In place: this rank's block sits at its position, the others hold stale data.
                    let tp = state.tensorParallel
                    let stale = input(rank: world.rank + 77, shape: shape, dtype: dtype, salt: salt)
                    let before = referenceConcat(tp.ranks.map { $0 == world.rank ? x : stale }, dim: dim)
                    var w = before
                    try tp.allGather(inPlace: &w, dim: dim)
                    #expect(w == y, "in-place all-gather differs, rank \(world.rank) \(dtype) \(shape) dim \(dim)")
                    #expect(before == referenceConcat(tp.ranks.map { $0 == world.rank ? x : stale }, dim: dim), "copy-on-write")
                }
            }
            return results
        }
        for rank in 0..<layout.worldSize {
            var i = 0
            for (c, shape) in gatherShapes.enumerated() {
                for (k, dtype) in DType.allCases.enumerated() {
                    let salt = c * 100 + k
                    let dim = (salt % 2 == 0) ? -1 - (salt % shape.count) : salt % shape.count
                    for groups in [layout.tensorParallelGroups, layout.sequenceParallelGroups] {
                        let members = groupOf(rank, in: groups)
                        let expected = referenceConcat(
                            members.map { input(rank: $0, shape: shape, dtype: dtype, salt: salt) }, dim: dim)
                        #expect(outputs[rank][i] == expected, "rank \(rank) \(dtype) shape \(shape) dim \(dim)")
                        i += 1
                    }
                }
            }
        }
    }

    @Test("all-reduce is the rank-order reduction, bitwise equal on every rank", arguments: everyLayout())
    func allReduce(layout: GroupLayout) throws {
        let shapes: [[Int]] = [[1], [7], [3, 5], [2, 3, 4]]
        let cases = shapes.flatMap { s in DType.allCases.flatMap { d in ReduceOp.allCases.map { (s, d, $0) } } }
            .filter { $0.1.isFloatingPoint || $0.2 != .average }
        let outputs = try World.inProcess(size: layout.worldSize, timeout: 30).run { world in
            let state = try ParallelState(
                world: world, tensorParallel: layout.tensorParallelSize, sequenceParallel: layout.sequenceParallelSize)
            return try cases.enumerated().map { salt, c in
                let x = input(rank: world.rank, shape: c.0, dtype: c.1, salt: salt)
                let y = try state.withCurrent { try tensorModelParallelAllReduce(x, op: c.2) }
                var z = x
                try state.tensorParallel.allReduce(inPlace: &z, op: c.2)
                #expect(z == y, "in-place all-reduce differs, rank \(world.rank) \(c.1) \(c.2) \(c.0)")
                #expect(x == input(rank: world.rank, shape: c.0, dtype: c.1, salt: salt), "copy-on-write: input changed")
                return y
            }
        }
        for rank in 0..<layout.worldSize {
            let members = groupOf(rank, in: layout.tensorParallelGroups)
            for (salt, c) in cases.enumerated() {
                let expected = referenceReduce(
                    members.map { input(rank: $0, shape: c.0, dtype: c.1, salt: salt) }, op: c.2)
                #expect(outputs[rank][salt] == expected, "rank \(rank) \(c.1) \(c.2) shape \(c.0)")
                #expect(outputs[rank][salt] == outputs[members[0]][salt], "ranks disagree")
            }
        }
    }

    @Test(
        "in place on uniquely owned tensors, repeated, mixed with out-of-place on other ranks",
        arguments: [(2, 1), (3, 2), (4, 5), (2, 1023), (2, 3000), (3, 7001)] as [(Int, Int)])
    func inPlaceUnique(worldSize n: Int, count: Int) throws {
        for dtype in [DType.float32, .float16, .int32] {
            let outputs = try World.inProcess(size: n, timeout: 30).run { world -> [Tensor] in
                var results: [Tensor] = []
                for iteration in 0..<3 {
                    let salt = 500 + iteration
                    // A fresh tensor owned by this binding only: the collective writes the very buffer peers read.
                    var x = input(rank: world.rank, shape: [count], dtype: dtype, salt: salt)
                    if (world.rank + iteration) % 2 == 0 {
                        try world.allReduce(inPlace: &x)
                    } else {
                        x = try world.allReduce(x)
                    }
                    var y = referenceConcat(
                        world.ranks.map { $0 == world.rank ? input(rank: $0, shape: [count], dtype: dtype, salt: salt) : Tensor.zerosLike(count, dtype) },
                        dim: 0)
                    try world.allGather(inPlace: &y, dim: 0)
                    results += [x, y]
                }
                return results
            }
            for rank in 0..<n {
                for iteration in 0..<3 {
                    let inputs = (0..<n).map { input(rank: $0, shape: [count], dtype: dtype, salt: 500 + iteration) }
                    #expect(outputs[rank][2 * iteration] == referenceReduce(inputs, op: .sum), "all-reduce \(dtype) rank \(rank)")
                    #expect(outputs[rank][2 * iteration + 1] == referenceConcat(inputs, dim: 0), "all-gather \(dtype) rank \(rank)")
                }
            }
        }
    }

    @Test("Ulysses all-to-all follows the SPEC's formulas and (1,2) inverts (2,1)", arguments: everyLayout())
    func allToAll(layout: GroupLayout) throws {
        let n = layout.sequenceParallelSize
        let shapes: [[Int]] = [[1, 1, n, 1], [2, 3, 2 * n, 3], [1, 2, n, 5]]
        let dtypes = DType.allCases
        let outputs = try World.inProcess(size: layout.worldSize, timeout: 30).run { world in
            let state = try ParallelState(
                world: world, tensorParallel: layout.tensorParallelSize, sequenceParallel: layout.sequenceParallelSize)
            var results: [Tensor] = []
            for (c, shape) in shapes.enumerated() {
                for (k, dtype) in dtypes.enumerated() {
                    let x = input(rank: world.rank, shape: shape, dtype: dtype, salt: c * 10 + k)
                    let heads = try state.withCurrent { try sequenceModelParallelAllToAll4D(x, scatterDim: 2, gatherDim: 1) }
                    let back = try state.withCurrent { try sequenceModelParallelAllToAll4D(heads, scatterDim: 1, gatherDim: 2) }
                    #expect(back == x, "(1,2) after (2,1) is not the identity")
                    let viaNegative = try state.sequenceModelParallelAllToAll4D(x, scatterDim: -2, gatherDim: -3)
                    #expect(viaNegative == heads)
                    results += [heads]
                }
            }
            return results
        }
        for rank in 0..<layout.worldSize {
            let members = groupOf(rank, in: layout.sequenceParallelGroups)
            let r = members.firstIndex(of: rank)!
            var i = 0
            for (c, shape) in shapes.enumerated() {
                for (k, dtype) in dtypes.enumerated() {
                    let ins = members.map { input(rank: $0, shape: shape, dtype: dtype, salt: c * 10 + k) }
                    #expect(outputs[rank][i] == referenceAllToAll(ins, scatterDim: 2, receiver: r), "rank \(rank) \(dtype) \(shape)")
                    i += 1
                }
            }
        }
    }

    @Test("(1,2) follows its formula on its own", arguments: [2, 3, 4])
    func allToAllGatherHeads(n: Int) throws {
        let shape = [2, 2 * n, 3, 2]
        let outputs = try World.inProcess(size: n).run { world in
            try world.allToAll4D(input(rank: world.rank, shape: shape, dtype: .float32, salt: 5), scatterDim: 1, gatherDim: 2)
        }
        let ins = (0..<n).map { input(rank: $0, shape: shape, dtype: .float32, salt: 5) }
        for r in 0..<n { #expect(outputs[r] == referenceAllToAll(ins, scatterDim: 1, receiver: r)) }
    }

    @Test("reduce-scatter is slice r of the reduction", arguments: [1, 2, 3, 4, 5, 8])
    func reduceScatter(n: Int) throws {
        let cases: [([Int], Int, DType, ReduceOp)] = [
            ([2 * n], -1, .float32, .sum), ([3, 2 * n], 1, .bfloat16, .sum), ([n, 3], 0, .int32, .max),
            ([2, n, 3], -2, .float16, .average), ([n, 1, 2], 0, .float64, .product), ([n], 0, .bool, .min),
        ]
        let outputs = try World.inProcess(size: n).run { world in
            try cases.enumerated().map { salt, c in
                try world.reduceScatter(input(rank: world.rank, shape: c.0, dtype: c.2, salt: salt), dim: c.1, op: c.3)
            }
        }
        for (salt, c) in cases.enumerated() {
            let reduced = referenceReduce((0..<n).map { input(rank: $0, shape: c.0, dtype: c.2, salt: salt) }, op: c.3)
            for r in 0..<n {
                #expect(outputs[r][salt] == referenceSlice(reduced, dim: c.1, part: r, of: n), "rank \(r) case \(salt)")
            }
        }
    }

    @Test("reduce-scatter and the all-to-all into the caller's tensor equal the allocating forms; a wrong output is an error on its rank only", arguments: [1, 2, 3, 4])
    func intoOutputs(n: Int) throws {
        let results = try World.inProcess(size: n, timeout: 30).run { world -> [String] in
            let x = input(rank: world.rank, shape: [2, 3 * n], dtype: .float32, salt: 3)
            var reduced = try Tensor(zeros: [2, 3], dtype: .float32)
            let shared = reduced
            try world.reduceScatter(x, into: &reduced, dim: 1)
            let a = input(rank: world.rank, shape: [1, 2, 2 * n, 3], dtype: .bfloat16, salt: 4)
            var exchanged = try Tensor(zeros: [1, 2 * n, 2, 3], dtype: .bfloat16)
            try world.allToAll4D(a, into: &exchanged)
            // A wrong output on the last rank: an error there, the others complete the call.
            func outcome(_ body: () throws -> Void) -> String {
                do {
                    try body()
                    return "ok"
                } catch {
                    return "\(error)"
                }
            }
            var wrong = try Tensor(zeros: world.rank == n - 1 ? [2, 4] : [2, 3], dtype: .float32)
            let wrongReduced = outcome { try world.reduceScatter(x, into: &wrong, dim: 1) }
            var wrongExchanged = try Tensor(zeros: world.rank == n - 1 ? [1, 2 * n, 3, 3] : [1, 2 * n, 2, 3], dtype: .bfloat16)
            let wrongExchange = outcome { try world.allToAll4D(a, into: &wrongExchanged) }
            return [
                reduced == (try world.reduceScatter(x, dim: 1)) ? "same" : "differs",
                shared == (try Tensor(zeros: [2, 3], dtype: .float32)) ? "kept" : "changed",
                exchanged == (try world.allToAll4D(a)) ? "same" : "differs",
                wrongReduced, wrongExchange,
            ]
        }
        for rank in 0..<n {
            #expect(Array(results[rank][0..<3]) == ["same", "kept", "same"], "rank \(rank)")
            #expect(results[rank][3] == (rank == n - 1
                ? "reduce_scatter: the output tensor has shape [2, 4] and dtype float32; the result has shape [2, 3] and dtype float32" : "ok"))
            #expect(results[rank][4] == (rank == n - 1
                ? "all_to_all_4D: the output tensor has shape [1, \(2 * n), 3, 3] and dtype bfloat16; the result has shape [1, \(2 * n), 2, 3] and dtype bfloat16" : "ok"))
        }
    }

    @Test("gather to a root and broadcast from a root", arguments: [1, 2, 3, 6])
    func gatherAndBroadcast(n: Int) throws {
        let shape = [2, 3]
        let outputs = try World.inProcess(size: n).run { world in
            let x = input(rank: world.rank, shape: shape, dtype: .int16, salt: 1)
            let root = n - 1
            let gathered = try world.gather(x, to: root, dim: 0)
            let broadcast = try world.broadcast(x, from: root)
            try world.barrier()
            return (gathered, broadcast)
        }
        let ins = (0..<n).map { input(rank: $0, shape: shape, dtype: .int16, salt: 1) }
        for r in 0..<n {
            #expect(outputs[r].0 == (r == n - 1 ? referenceConcat(ins, dim: 0) : nil))
            #expect(outputs[r].1 == ins[n - 1])
        }
    }

    @Test(
        "broadcast in place, small and large, mixed with the out-of-place form; a shared buffer is copied first",
        arguments: [(1, 5), (2, 5), (3, 3000), (4, 7)] as [(Int, Int)])
    func broadcastInPlace(worldSize n: Int, count: Int) throws {
        let root = n - 1
        let outputs = try World.inProcess(size: n, timeout: 30).run { world -> [Tensor] in
            var x = input(rank: world.rank, shape: [count], dtype: .float32, salt: 9)
            let kept = x
            if world.rank % 2 == 0 { try world.broadcast(inPlace: &x, from: root) } else { x = try world.broadcast(x, from: root) }
            return [x, kept]
        }
        for r in 0..<n {
            #expect(outputs[r][0] == input(rank: root, shape: [count], dtype: .float32, salt: 9))
            #expect(outputs[r][1] == input(rank: r, shape: [count], dtype: .float32, salt: 9), "the other value keeps its bytes")
        }
    }

    @Test("shard then all-gather-with-unpad returns the input, including padded lengths", arguments: [1, 2, 3, 4, 7])
    func shardAndUnpad(n: Int) throws {
        let lengths = [1, n, 2 * n + 1, 10]
        let outputs = try World.inProcess(size: n).run { world in
            let state = try ParallelState(world: world, sequenceParallel: n)
            return try lengths.enumerated().map { salt, length in
                let x = input(rank: 0, shape: [2, length, 3], dtype: .float32, salt: salt)
                return try state.withCurrent {
                    let (shard, original) = try sequenceModelParallelShard(x, dim: 1)
                    #expect(original == length)
                    #expect(shard.shape == [2, (length + n - 1) / n, 3])
                    return try sequenceModelParallelAllGatherWithUnpad(shard, originalLength: original, dim: 1)
                }
            }
        }
        for r in 0..<n {
            for (salt, length) in lengths.enumerated() {
                #expect(outputs[r][salt] == input(rank: 0, shape: [2, length, 3], dtype: .float32, salt: salt))
            }
        }
    }

    @Test("a shard's padding is zeros and its slice is rank r's")
    func shardContents() throws {
        let x = try Tensor(shape: [1, 5], scalars: [1, 2, 3, 4, 5] as [Int32])
        let shards = try World.inProcess(size: 3).run { world in
            try ParallelState(world: world, sequenceParallel: 3).sequenceModelParallelShard(x, dim: -1).shard
        }
        #expect(try shards.map { try $0.scalars(as: Int32.self) } == [[1, 2], [3, 4], [5, 0]])
    }
}

@Suite("Groups")
struct GroupTests {
    @Test("FastVideo's layout for W=8, tp=2, sp=4")
    func layoutEight() throws {
        let layout = try GroupLayout(worldSize: 8, tensorParallel: 2, sequenceParallel: 4)
        #expect(layout.tensorParallelGroups == [[0, 1], [2, 3], [4, 5], [6, 7]])
        #expect(layout.sequenceParallelGroups == [[0, 1, 2, 3], [4, 5, 6, 7]])
        #expect(layout.dataParallelGroups == [[0, 4], [1, 5], [2, 6], [3, 7]])
        #expect(layout.describe().split(separator: "\n").count == 1 + 4 + 2 + 4)
    }

    @Test("invalid layouts name the three numbers", arguments: [(4, 3, 1), (4, 1, 3), (4, 0, 1), (4, 1, 0), (6, 4, 2), (0, 1, 1)])
    func invalidLayout(w: Int, tp: Int, sp: Int) {
        #expect(throws: FVDError.invalidLayout(worldSize: w, tensorParallel: tp, sequenceParallel: sp)) {
            try GroupLayout(worldSize: w, tensorParallel: tp, sequenceParallel: sp)
        }
        let text = FVDError.invalidLayout(worldSize: w, tensorParallel: tp, sequenceParallel: sp).description
        #expect(text.contains("world size \(w)") && text.contains("tensor parallel \(tp)") && text.contains("sequence parallel \(sp)"))
    }

    @Test("rank helpers and describe() on every rank")
    func rankHelpers() throws {
        let results = try World.inProcess(size: 6).run { world in
            let state = try ParallelState(world: world, tensorParallel: 3, sequenceParallel: 2)
            let sp = state.sequenceParallel, tp = state.tensorParallel, dp = state.dataParallel
            return (
                tp.ranks, tp.rankInGroup, tp.firstRank, tp.lastRank, tp.isFirstRank, tp.isLastRank, tp.nextRank,
                tp.previousRank, sp.ranks, dp.ranks, state.describe()
            )
        }
        #expect(results[4].0 == [3, 4, 5])
        #expect(results[4].1 == 1)
        #expect(results[4].2 == 3 && results[4].3 == 5)
        #expect(results[3].4 && !results[3].5 && results[5].5)
        #expect(results[5].6 == 3 && results[3].7 == 5)
        #expect(results[5].8 == [4, 5])
        #expect(results[5].9 == [1, 3, 5])
        #expect(results[0].10.contains("tp0: ranks [0, 1, 2] *"))
        #expect(results[0].10.contains("dp1: ranks [1, 3, 5]\n") || results[0].10.hasSuffix("dp1: ranks [1, 3, 5]"))
    }

    @Test("a ParallelState over a subgroup lays out the subgroup's members")
    func stateOverSubgroup() throws {
        let out = try World.inProcess(size: 4).run { world -> [Int] in
            let half = try world.subgroup(name: "half\(world.rank / 2)", ranks: world.rank < 2 ? [0, 1] : [2, 3])
            let state = try ParallelState(world: half, tensorParallel: 2)
            let sum = try state.tensorModelParallelAllReduce(Tensor([Int32(world.rank)]))
            return state.tensorParallel.ranks + (try sum.scalars(as: Int32.self)).map(Int.init)
        }
        #expect(out == [[0, 1, 1], [0, 1, 1], [2, 3, 5], [2, 3, 5]])
    }

    @Test("module-level functions need a bound state")
    func noState() throws {
        #expect(throws: FVDError.noParallelState) { try tensorModelParallelAllReduce(Tensor([1.0 as Float])) }
    }

    @Test("a size-1 group returns its input unchanged")
    func sizeOne() throws {
        let x = randomTensor([2, 3, 4, 5], .float32, seed: 3)
        let out = try World.inProcess(size: 1).run { world in
            let s = try ParallelState(world: world)
            return try s.withCurrent {
                [
                    try tensorModelParallelAllReduce(x), try tensorModelParallelAllGather(x, dim: 1),
                    try sequenceModelParallelAllGather(x), try sequenceModelParallelAllToAll4D(x),
                    try sequenceModelParallelAllToAll4D(x, scatterDim: 1, gatherDim: 2),
                ]
            }
        }
        #expect(out[0].allSatisfy { $0 == x })
    }
}
