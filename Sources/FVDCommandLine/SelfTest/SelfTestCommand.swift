import ArgumentParser
import CFVDShims
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

    @Option(name: .customLong("in-process"), parsing: .unconditional, help: "Run a world of this many threads in this process instead of joining the world from the environment.")
    var inProcessSize: Int?

    @Option(help: "A fault to inject, ACTION:rank=R:call=N[:group=G] (repeatable; see Fault).")
    var fault: [String] = []

    @Option(help: "Make one rank call something else at its 3rd case: 'shape', 'dtype', 'op', 'dim' or 'baddim'.")
    var mismatch: String?

    @Option(parsing: .unconditional, help: "The rank that passes the mismatching call.")
    var mismatchRank: Int = 1

    @Option(parsing: .unconditional, help: "Seconds a collective waits for missing ranks (more than 0; inf: no limit).")
    var timeout: Double?

    @Flag(help: "Run only the parts beyond FastVideo's collectives (send/recv, tensor dicts, objects, the uneven and grouped-query all-to-all): quick at larger world sizes.")
    var extrasOnly = false

    @Flag(help: "At the end, the last rank receives once more from rank 0, which sends nothing (an unmatched recv).")
    var unmatchedRecv = false

    @Flag(help: "After the world's run, print 'leaks: none' or the threads and file descriptors it left open.")
    var checkLeaks = false

    @Flag(help: "At the end, print 'peak memory: N MiB' (the process's VmHWM).")
    var printPeakMemory = false

    func validate() throws {
        if let mismatch, !["shape", "dtype", "op", "dim", "baddim"].contains(mismatch) {
            throw ValidationError("--mismatch must be shape, dtype, op, dim or baddim, not '\(mismatch)'")
        }
        try checkTimeout(timeout)
    }

    /// With `--unmatched-recv`, the last rank receives once more from rank 0, which sends nothing.
    private func unmatchedRecvIfAsked(_ group: GroupCoordinator) throws {
        if unmatchedRecv, group.size >= 2, group.rankInGroup == group.size - 1 { _ = try group.recv(from: 0) }
    }

    func run() throws {
        do {
            // No --fault: those in FVD_FAULTS, if any.
            let faults = fault.isEmpty ? nil : try fault.map { try Fault(parsing: $0) }
            let mismatch = mismatch.map { (kind: $0, rank: mismatchRank) }
            if let size = inProcessSize {
                try runInProcess(size: size, faults: faults, mismatch: mismatch)
                return
            }
            // Rank 0 runs the in-process reference of every rank, first and in ordinary memory
            // (once this process joins a multi-process world, its tensors live in the shared
            // segment), and hands each rank its expected digests at the end. Only rank 0
            // runs the W reference threads: when every rank did, a world of W needed W² of them.
            let env = ProcessInfo.processInfo.environment
            // torchrun's variables, or Open MPI's or MPICH's under mpirun.
            let size = Int(env["WORLD_SIZE"] ?? env["OMPI_COMM_WORLD_SIZE"] ?? env["PMI_SIZE"] ?? "1") ?? 1
            let rank = Int(env["RANK"] ?? env["OMPI_COMM_WORLD_RANK"] ?? env["PMI_RANK"] ?? "0") ?? 0
            // The reference runs `size` threads: name the variable, not the in-process limit.
            if let variable = ["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].first(where: { env[$0] != nil }),
                !commandWorldSizes.contains(size)
            {
                throw FVDError.invalidArgument(
                    "\(variable)=\(env[variable] ?? "") is outside \(commandWorldSizes.lowerBound)...\(commandWorldSizes.upperBound), the world sizes fvd selftest runs")
            }
            let reference = rank != 0 ? nil : try World.inProcess(size: size, timeout: 60, faults: []).run { group in
                try runCollectives(group, worldSize: size, mismatch: nil, extrasOnly: extrasOnly)
            }
            let world = try World.fromEnvironment(timeout: timeout, faults: faults)
            let baseline = checkLeaks ? ResourceCount.now() : nil
            defer { if let baseline { printOutput(baseline.leaks()) } }
            let (got, expected) = try world.run { group in
                let got = try runCollectives(group, worldSize: world.size, mismatch: mismatch, extrasOnly: extrasOnly)
                let expected = try group.broadcastObject(reference, from: 0)[group.rankInGroup]
                try unmatchedRecvIfAsked(group)
                return (got, expected)
            }[0]
            try compare(got, expected, rank: world.rank)
            if printPeakMemory { printOutput("peak memory: \(peakResidentMebibytes()) MiB") }
            printOutput("selftest rank \(world.rank) of \(world.size) (\(world.transport)): \(got.count) results equal the in-process transport")
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError(error)
            throw rankExitCode(for: error)
        }
    }

    /// Runs the selftest on `size` threads and prints each rank's outcome as `[rR] …`, the
    /// way `fvd launch` prefixes a process rank's lines.
    private func runInProcess(size: Int, faults: [Fault]?, mismatch: (kind: String, rank: Int)?) throws {
        let expected = try World.inProcess(size: size, timeout: 60, faults: []).run { group in
            try runCollectives(group, worldSize: size, mismatch: nil, extrasOnly: extrasOnly)
        }
        let world = try World.inProcess(size: size, timeout: timeout, faults: faults)
        let baseline = checkLeaks ? ResourceCount.now() : nil
        let outcomes = world.runEach { group in
            let got = try runCollectives(group, worldSize: size, mismatch: mismatch, extrasOnly: extrasOnly)
            try unmatchedRecvIfAsked(group)
            return got
        }
        if let baseline { printOutput(baseline.leaks()) }
        var failed = false
        for (rank, outcome) in outcomes.enumerated() {
            do {
                let got = try outcome.get()
                try compare(got, expected[rank], rank: rank)
                printOutput("[r\(rank)] selftest rank \(rank) of \(size) (in-process): \(got.count) results equal the reference")
            } catch {
                failed = true
                writeError("[r\(rank)] error: \(error)\n")
            }
        }
        if failed { throw ExitCode.failure }
    }
}

/// What the selftest keeps of a result: its shape, dtype and two 64-bit hashes of its
/// bytes, so that a rank holds a few bytes per result instead of the tensors (of every
/// rank, for the reference world), which made its memory grow with the cube of the world size.
struct ResultDigest: Equatable, Codable, Sendable {
    var shape: [Int]
    var dtype: DType
    var hashes: [UInt64]

    init(_ tensor: Tensor) {
        shape = tensor.shape
        dtype = tensor.dtype
        // Two differently seeded hashes: equal digests mean equal bytes. In C, so that a
        // debug or sanitizer build hashes megabytes quickly.
        hashes = tensor.withUnsafeBytes { bytes in
            [fvd_hash_bytes(bytes.baseAddress, bytes.count, 1), fvd_hash_bytes(bytes.baseAddress, bytes.count, 2)]
        }
    }
}

/// Throws unless `got` equals `expected` bitwise (as far as their digests tell).
private func compare(_ got: [ResultDigest], _ expected: [ResultDigest], rank: Int) throws {
    let mismatches = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
    guard mismatches.isEmpty, got.count == expected.count else {
        throw FVDError.invalidArgument(
            "rank \(rank): results \(mismatches) of \(got.count) differ from the in-process transport")
    }
}

/// The process's peak resident memory in MiB (`VmHWM` in /proc/self/status), or -1.
private func peakResidentMebibytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
        let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
    else { return -1 }
    return kilobytes / 1024
}

/// The threads and open file descriptors of this process, to find what a world left behind.
private struct ResourceCount {
    var threads: Int
    var descriptors: Int

    static func now() -> ResourceCount {
        ResourceCount(threads: entries("/proc/self/task"), descriptors: entries("/proc/self/fd"))
    }

    private static func entries(_ folder: String) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: folder).count) ?? -1
    }

    /// `leaks: none`, or what is still open compared with `self`, after up to 2 s for
    /// finished threads to be reaped.
    func leaks() -> String {
        var after = ResourceCount.now()
        for _ in 0..<100 where after.threads > threads || after.descriptors > descriptors {
            usleep(20_000)
            after = ResourceCount.now()
        }
        if after.threads <= threads && after.descriptors <= descriptors { return "leaks: none" }
        return "leaks: \(after.threads - threads) threads, \(after.descriptors - descriptors) file descriptors"
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
///
/// With `mismatch`, its rank calls something else at case 3 (shape `[1, 2n, 2n, 4]`):
/// another shape or dtype, an all-gather where the others all-reduce, or (every rank
/// all-gathering first) an all-gather along dim 1 (`dim`) or the invalid dim 9 (`baddim`)
/// where the others use dim 0.
private func runCollectives(
    _ world: GroupCoordinator, worldSize n: Int, mismatch: (kind: String, rank: Int)?, extrasOnly: Bool = false
) throws -> [ResultDigest] {
    var results: [ResultDigest] = []
    var salt = 0
    let me = world.rank
    for dtype in [DType.float32, .bfloat16, .float16, .int32, .float64] where !extrasOnly {
        for shape in [[7], [2, 3 * n, 5], [1, 2 * n, 2 * n, 4], [40_000 * min(n, 8)]] {
            salt += 1
            let odd = salt == 3 && mismatch?.rank == me ? mismatch?.kind : nil
            let x = try input(rank: me, shape: odd == "shape" ? shape + [1] : shape, dtype: odd == "dtype" ? .float64 : dtype, salt: salt)
            if salt == 3, let mismatch, mismatch.kind.hasSuffix("dim") {
                results.append(ResultDigest(try world.allGather(x, dim: me != mismatch.rank ? 0 : mismatch.kind == "dim" ? 1 : 9)))
            }
            if odd == "op" { results.append(ResultDigest(try world.allGather(x, dim: 0))) }
            results.append(ResultDigest(try world.allReduce(x)))
            var y = x
            try world.allReduce(inPlace: &y, op: dtype.isFloatingPoint ? .average : .max)
            results.append(ResultDigest(y))
            results.append(ResultDigest(try world.allGather(x, dim: 0)))
            results.append(ResultDigest(try world.allGather(x, dim: -1)))
            // In place: this rank's block at its position along dim 0, zeros elsewhere.
            var z = try Tensor(zeros: [x.shape[0] * n] + x.shape.dropFirst(), dtype: dtype)
            z.withUnsafeMutableBytes { out in
                x.withUnsafeBytes { out.baseAddress!.advanced(by: world.rankInGroup * $0.count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            try world.allGather(inPlace: &z, dim: 0)
            results.append(ResultDigest(z))
            if shape.count >= 2, shape[1] % n == 0 {
                results.append(ResultDigest(try world.reduceScatter(x, dim: 1)))
            }
            if let g = try world.gather(x, to: n - 1, dim: 0) { results.append(ResultDigest(g)) }
            results.append(ResultDigest(try world.broadcast(x, from: salt % n)))
            if shape.count == 4 {
                let heads = try world.allToAll4D(x, scatterDim: 2, gatherDim: 1)
                results.append(ResultDigest(heads))
                results.append(ResultDigest(try world.allToAll4D(heads, scatterDim: 1, gatherDim: 2)))
            }
            try world.barrier()
        }
    }
    if !extrasOnly { results += try runIntoForms(world, worldSize: n) }
    if n >= 2 { results += try runExtras(world, worldSize: n) }
    return results
}

/// The forms that write the caller's tensor, after FastVideo's collectives (so their call
/// numbers stay put): reduce-scatter and the all-to-all into an output, broadcast in
/// place, small and large.
private func runIntoForms(_ world: GroupCoordinator, worldSize n: Int) throws -> [ResultDigest] {
    var results: [ResultDigest] = []
    for (k, dtype) in [DType.float32, .bfloat16].enumerated() {
        for shape in [[1, 2 * n, 2 * n, 4], [2, 40 * n, 8 * n, 16]] {
            let x = try input(rank: world.rank, shape: shape, dtype: dtype, salt: 300 + k)
            var reduced = try Tensor(zeros: [shape[0], shape[1] / n] + shape.dropFirst(2), dtype: dtype)
            try world.reduceScatter(x, into: &reduced, dim: 1)
            var broadcast = x
            try world.broadcast(inPlace: &broadcast, from: (k + 1) % n)
            var heads = try Tensor(zeros: [shape[0], shape[1] * n, shape[2] / n, shape[3]], dtype: dtype)
            try world.allToAll4D(x, into: &heads)
            var back = try Tensor(zeros: shape, dtype: dtype)
            try world.allToAll4D(heads, into: &back, scatterDim: 1, gatherDim: 2)
            results += [reduced, broadcast, heads, back].map(ResultDigest.init)
        }
    }
    return results
}

/// Beyond FastVideo's collectives, after them (so their call numbers stay put): the
/// uneven and grouped-query all-to-all with awkward sizes, then sends and receives around
/// the ring (even ranks send first, so no cycle waits), every dtype, an empty and a
/// 2.4 MB tensor, a tensor dict and object broadcasts. Returns this rank's results.
private func runExtras(_ world: GroupCoordinator, worldSize n: Int) throws -> [ResultDigest] {
    let me = world.rankInGroup
    var results: [ResultDigest] = []
    // 7 heads over n ranks, shards of me + 1 tokens; back with the same split.
    let lengths = (0..<n).map { $0 + 1 }
    let spread = try world.allToAll4D(try randomBytes([2, me + 1, 7, 3], .bfloat16, seed: UInt64(me)), split: .balanced)
    results.append(ResultDigest(spread))
    results.append(ResultDigest(try world.allToAll4D(spread, scatterDim: 1, gatherDim: 2, split: AllToAllSplit(sequence: lengths))))
    // 2 key/value heads for 6 query heads, replicated where ranks outnumber them.
    results.append(ResultDigest(try world.allToAll4D(try randomBytes([1, me + 1, 2, 4], .float32, seed: UInt64(me)), split: AllToAllSplit(queryHeads: 6))))
    // Started collectives, on the coordinator's own thread, around a direct one: 3 chunks of the first all-to-all.
    let chunks = world.startAllToAll4D(try randomBytes([2, me + 1, 7, 3], .bfloat16, seed: UInt64(me)), split: .balanced, chunks: 3)
    let sum = world.startAllReduce(try input(rank: me, shape: [5, n], dtype: .float32, salt: 77))
    results.append(ResultDigest(try world.allGather(try randomBytes([2, 2], .int64, seed: UInt64(me)), dim: 1)))
    results += try (chunks.map { try $0.wait() } + [try sum.wait()]).map(ResultDigest.init)
    func ring(_ send: () throws -> Void, _ receive: () throws -> Void) throws {
        if me % 2 == 0 {
            try send()
            try receive()
        } else {
            try receive()
            try send()
        }
    }
    for (k, dtype) in DType.allCases.enumerated() {
        let shape = k == 2 ? [0, 4] : k == 5 ? [300_000] : [k + 1, n]
        let x = try randomBytes(shape, dtype, seed: UInt64(1000 * me + k))
        try ring({ try world.send(x) }, { results.append(ResultDigest(try world.recv(shape: shape, dtype: dtype))) })
        // recv(into:) of the same transfer.
        var into = try Tensor(zeros: shape, dtype: dtype)
        try ring({ try world.send(x) }, { try world.recv(into: &into) })
        results.append(ResultDigest(into))
    }
    let dict = TensorDict(
        ["a": try randomBytes([me + 1, 3], .bfloat16, seed: UInt64(me)), "empty": try randomBytes([0], .int64, seed: 0)],
        metadata: ["rank": me, "step": 7])
    try ring({ try world.sendTensorDict(dict) }, {
        let got = try world.recvTensorDict([String: Int].self)
        results += got.tensors.keys.sorted().map { ResultDigest(got.tensors[$0]!) }
        results.append(ResultDigest(try Tensor(shape: [2], scalars: [Int64(got.metadata["rank"]!), Int64(got.metadata["step"]!)])))
    })
    let object = try world.broadcastObject(me == n - 1 ? ["ranks": Array(0..<n), "steps": [50, 25]] : nil, from: n - 1)
    results.append(ResultDigest(try Tensor(shape: [object["ranks"]!.count + 2], scalars: (object["ranks"]! + object["steps"]!).map(Int64.init))))
    let broadcastDict = try world.broadcastTensorDict(me == 0 ? TensorDict(["x": try randomBytes([5, n], .float16, seed: 42)]) : nil)
    results.append(ResultDigest(broadcastDict.tensors["x"]!))
    // Beyond Ulysses: ring passes of uneven blocks, small and read in place, both ways; halo
    // exchanges of uneven shards, periodic or not.
    for (k, shape) in [[me + 1, 3], [me + 1, 20_000]].enumerated() {
        let block = try randomBytes(shape, .float32, seed: UInt64(500 + 10 * me + k))
        results.append(ResultDigest(try world.ringPass(block)))
        results.append(ResultDigest(try world.ringPass(block, reverse: true)))
    }
    for (k, periodic) in [false, true].enumerated() {
        for inner in [3, 5_000] {
            let shard = try randomBytes([2, 2 + me, inner], .bfloat16, seed: UInt64(600 + 10 * me + k))
            let (before, after) = try world.haloExchange(shard, dim: 1, width: 2, periodic: periodic)
            results += [ResultDigest(before), ResultDigest(after)]
        }
    }
    return results
}

/// A tensor of pseudo-random bytes (bools 0 or 1): for transfers, which copy bits.
private func randomBytes(_ shape: [Int], _ dtype: DType, seed: UInt64) throws -> Tensor {
    var tensor = try Tensor(zeros: shape, dtype: dtype)
    var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1
    tensor.withUnsafeMutableBytes { bytes in
        for i in bytes.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            bytes[i] = UInt8(truncatingIfNeeded: state >> 33) & (dtype == .bool ? 1 : 0xFF)
        }
    }
    return tensor
}
