import Dispatch
import Foundation
import Testing

@testable import FastVideoDistributed

/// A task executor of a fixed number of threads: the cooperative pool of a small machine,
/// made deterministic (the global pool may grow when its threads block).
final class FixedPoolExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    init(threads: Int) {
        for index in 0..<threads {
            let thread = Thread { [self] in run() }
            thread.name = "fixed-pool-\(index)"
            thread.start()
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the threads end once no job is left.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }

    /// Runs `body` with this executor preferred by it and its child tasks, then shuts down.
    static func withThreads<R: Sendable>(_ threads: Int, _ body: @Sendable () async throws -> R) async rethrows -> R {
        let pool = FixedPoolExecutor(threads: threads)
        defer { pool.shutdown() }
        return try await withTaskExecutorPreference(pool, operation: body)
    }
}

/// A metadata value for the dict calls.
private struct Step: Codable, Sendable, Equatable {
    var index: Int
    var label: String
}

@Suite("Swift concurrency: async overloads never block a thread of the cooperative pool")
struct ConcurrencyTests {
    @Test("the issue's example: 8 ranks as child tasks sum their ranks, on the global pool and on 2 threads")
    func issueExample() async throws {
        @Sendable func sums() async throws -> [[Float]] {
            let world = try World.inProcess(size: 8)
            return try await world.run { group async throws -> [Float] in
                let x = try Tensor(shape: [4], scalars: [Float](repeating: Float(group.rank), count: 4))
                return try await group.allReduce(x).scalars(as: Float.self)
            }
        }
        let expected = [[Float]](repeating: [Float](repeating: 28, count: 4), count: 8)
        #expect(try await sums() == expected)
        #expect(try await FixedPoolExecutor.withThreads(2) { try await sums() } == expected)
    }

    /// The scripts' rank, group size, ring neighbours and inputs.
    private static func scriptInputs(_ group: GroupCoordinator) -> (Int, Int, Int, Int, Tensor, Tensor, Tensor) {
        let r = group.rankInGroup, n = group.size
        return (r, n, (r + 1) % n, (r + n - 1) % n, randomTensor([2, 3], .float32, seed: UInt64(r)),
                randomTensor([n * 2], .float64, seed: UInt64(50 + r)), randomTensor([1, 2, n, 3], .bfloat16, seed: UInt64(100 + r)))
    }

    /// Every async overload once, in the order of ``blockingScript(_:)``.
    @Sendable private static func asyncScript(_ group: GroupCoordinator) async throws -> [Tensor] {
        let (r, n, next, previous, x, long, heads) = scriptInputs(group)
        var results: [Tensor] = []
        results.append(try await group.allReduce(x))
        var inPlace = x
        try await group.allReduce(inPlace: &inPlace, op: .max)
        results.append(inPlace)
        results.append(try await group.allGather(x, dim: 0))
        var gathered = long
        try await group.allGather(inPlace: &gathered, dim: 0)
        results.append(gathered)
        results.append(try await group.reduceScatter(long, dim: 0))
        var scattered = try Tensor(zeros: [2], dtype: .float64)
        try await group.reduceScatter(long, into: &scattered, dim: 0, op: .min)
        results.append(scattered)
        results.append(try await group.gather(x, to: 1, dim: 0) ?? Tensor.empty)
        results.append(try await group.broadcast(x, from: 2 % n))
        var broadcast = x
        try await group.broadcast(inPlace: &broadcast, from: n - 1)
        results.append(broadcast)
        try await group.barrier()
        let exchanged = try await group.allToAll4D(heads)
        results.append(exchanged)
        var back = heads
        try await group.allToAll4D(exchanged, into: &back, scatterDim: 1, gatherDim: 2)
        results.append(back)
        // Point to point around the ring: even ranks send first, odd ranks receive first.
        if n > 1 {
            if r % 2 == 0 { try await group.send(x, to: next) }
            results.append(try await group.recv(from: previous, shape: [2, 3], dtype: .float32))
            if r % 2 == 1 { try await group.send(x, to: next) }
            if r % 2 == 0 { try await group.sendObject(Step(index: r, label: "s"), to: next) }
            let step = try await group.recvObject(Step.self, from: previous)
            if r % 2 == 1 { try await group.sendObject(Step(index: r, label: "s"), to: next) }
            if r % 2 == 0 { try await group.send(long, to: next) }
            var received = try Tensor(zeros: [n * 2], dtype: .float64)
            try await group.recv(into: &received, from: previous)
            if r % 2 == 1 { try await group.send(long, to: next) }
            results.append(received)
            let dict = TensorDict(["x": x], metadata: step)
            if r % 2 == 0 { try await group.sendTensorDict(dict, to: next) }
            let got = try await group.recvTensorDict(Step.self, from: previous)
            if r % 2 == 1 { try await group.sendTensorDict(dict, to: next) }
            results.append(try Tensor(shape: [1], scalars: [Float(got.metadata.index)]))
            results.append(got.tensors["x"]!)
            if r % 2 == 0 { try await group.sendTensorDict(TensorDict(["l": long]), to: next) }
            results.append(try await group.recvTensorDict(from: previous).tensors["l"]!)
            if r % 2 == 1 { try await group.sendTensorDict(TensorDict(["l": long]), to: next) }
        }
        let object = try await group.broadcastObject(r == 0 ? Step(index: 7, label: "root") : nil)
        let list = try await group.broadcastObjectList(r == 0 ? [1, 2, 3] : nil)
        results.append(try Tensor(shape: [4], scalars: [Float(object.index)] + list.map(Float.init)))
        let dict = try await group.broadcastTensorDict(r == 0 ? TensorDict(["x": x], metadata: Step(index: 1, label: "d")) : nil)
        results.append(dict.tensors["x"]!)
        results.append(try await group.allReduceVJP(x))
        results.append(try await group.allGatherVJP(long, dim: 0))
        results.append(try await group.reduceScatterVJP(x, dim: 0))
        results.append(try await group.allToAll4DVJP(exchanged))
        results.append(try await group.broadcastVJP(x, from: 0))
        results.append(try await group.gatherVJP(r == 0 ? long : nil, to: 0, dim: 0))
        // The companions, on a FastVideo layout over the group, through the task-local state.
        let tp = n % 2 == 0 ? 2 : 1
        let state = try ParallelState(world: group, tensorParallel: tp, sequenceParallel: n / tp)
        let sp = state.sequenceParallel.size
        let video = randomTensor([1, 2, sp * 2, 4], .float32, seed: UInt64(200 + r))
        try await state.withCurrent {
            results.append(try await tensorModelParallelAllReduce(x))
            results.append(try await tensorModelParallelAllGather(x, dim: 1))
            results.append(try await sequenceModelParallelAllGather(x, dim: 0))
            results.append(try await sequenceModelParallelAllToAll4D(video))
            results.append(try await sequenceModelParallelAllGatherWithUnpad(video, originalLength: 2 * sp - 1, dim: 1))
        }
        results.append(try await state.tensorModelParallelAllReduceVJP(x))
        results.append(try await state.tensorModelParallelAllGatherVJP(long, dim: 0))
        results.append(try await state.sequenceModelParallelAllGatherVJP(long, dim: 0))
        results.append(try await state.sequenceModelParallelAllToAll4DVJP(video, scatterDim: 1, gatherDim: 2))
        results.append(try await state.sequenceModelParallelShardVJP(x, originalLength: 2 * sp - 1, dim: 0))
        results.append(try await state.sequenceModelParallelAllGatherWithUnpadVJP(x, shardLength: 3, dim: 1))
        return results
    }

    /// The blocking forms of ``asyncScript(_:)``'s calls, in its order: the reference.
    @Sendable private static func blockingScript(_ group: GroupCoordinator) throws -> [Tensor] {
        let (r, n, next, previous, x, long, heads) = scriptInputs(group)
        var results: [Tensor] = []
        results.append(try group.allReduce(x))
        results.append(try group.allReduce(x, op: .max))
        results.append(try group.allGather(x, dim: 0))
        var gathered = long
        try group.allGather(inPlace: &gathered, dim: 0)
        results.append(gathered)
        results.append(try group.reduceScatter(long, dim: 0))
        results.append(try group.reduceScatter(long, dim: 0, op: .min))
        results.append(try group.gather(x, to: 1, dim: 0) ?? Tensor.empty)
        results.append(try group.broadcast(x, from: 2 % n))
        results.append(try group.broadcast(x, from: n - 1))
        try group.barrier()
        let exchanged = try group.allToAll4D(heads)
        results.append(exchanged)
        results.append(try group.allToAll4D(exchanged, scatterDim: 1, gatherDim: 2))
        if n > 1 {
            if r % 2 == 0 { try group.send(x, to: next) }
            results.append(try group.recv(from: previous))
            if r % 2 == 1 { try group.send(x, to: next) }
            if r % 2 == 0 { try group.sendObject(Step(index: r, label: "s"), to: next) }
            let step = try group.recvObject(Step.self, from: previous)
            if r % 2 == 1 { try group.sendObject(Step(index: r, label: "s"), to: next) }
            if r % 2 == 0 { try group.send(long, to: next) }
            results.append(try group.recv(from: previous))
            if r % 2 == 1 { try group.send(long, to: next) }
            let dict = TensorDict(["x": x], metadata: step)
            if r % 2 == 0 { try group.sendTensorDict(dict, to: next) }
            let got = try group.recvTensorDict(Step.self, from: previous)
            if r % 2 == 1 { try group.sendTensorDict(dict, to: next) }
            results.append(try Tensor(shape: [1], scalars: [Float(got.metadata.index)]))
            results.append(got.tensors["x"]!)
            if r % 2 == 0 { try group.sendTensorDict(TensorDict(["l": long]), to: next) }
            results.append(try group.recvTensorDict(from: previous).tensors["l"]!)
            if r % 2 == 1 { try group.sendTensorDict(TensorDict(["l": long]), to: next) }
        }
        let object = try group.broadcastObject(r == 0 ? Step(index: 7, label: "root") : nil)
        let list = try group.broadcastObjectList(r == 0 ? [1, 2, 3] : nil)
        results.append(try Tensor(shape: [4], scalars: [Float(object.index)] + list.map(Float.init)))
        let dict = try group.broadcastTensorDict(r == 0 ? TensorDict(["x": x], metadata: Step(index: 1, label: "d")) : nil)
        results.append(dict.tensors["x"]!)
        results.append(try group.allReduceVJP(x))
        results.append(try group.allGatherVJP(long, dim: 0))
        results.append(try group.reduceScatterVJP(x, dim: 0))
        results.append(try group.allToAll4DVJP(exchanged))
        results.append(try group.broadcastVJP(x, from: 0))
        results.append(try group.gatherVJP(r == 0 ? long : nil, to: 0, dim: 0))
        let tp = n % 2 == 0 ? 2 : 1
        let state = try ParallelState(world: group, tensorParallel: tp, sequenceParallel: n / tp)
        let sp = state.sequenceParallel.size
        let video = randomTensor([1, 2, sp * 2, 4], .float32, seed: UInt64(200 + r))
        results.append(try state.tensorModelParallelAllReduce(x))
        results.append(try state.tensorModelParallelAllGather(x, dim: 1))
        results.append(try state.sequenceModelParallelAllGather(x, dim: 0))
        results.append(try state.sequenceModelParallelAllToAll4D(video))
        results.append(try state.sequenceModelParallelAllGatherWithUnpad(video, originalLength: 2 * sp - 1, dim: 1))
        results.append(try state.tensorModelParallelAllReduceVJP(x))
        results.append(try state.tensorModelParallelAllGatherVJP(long, dim: 0))
        results.append(try state.sequenceModelParallelAllGatherVJP(long, dim: 0))
        results.append(try state.sequenceModelParallelAllToAll4DVJP(video, scatterDim: 1, gatherDim: 2))
        results.append(try state.sequenceModelParallelShardVJP(x, originalLength: 2 * sp - 1, dim: 0))
        results.append(try state.sequenceModelParallelAllGatherWithUnpadVJP(x, shardLength: 3, dim: 1))
        return results
    }

    @Test("every collective, companion, send/recv, object and dict call: async on 2 threads equals blocking on threads", arguments: [2, 8])
    func everyCall(worldSize n: Int) async throws {
        let reference = try World.inProcess(size: n, timeout: 60).run(Self.blockingScript)
        let results = try await FixedPoolExecutor.withThreads(2) {
            try await World.inProcess(size: n, timeout: 60).run(Self.asyncScript)
        }
        #expect(results.count == n)
        for rank in 0..<n {
            #expect(results[rank].count == reference[rank].count)
            for (index, (got, want)) in zip(results[rank], reference[rank]).enumerated() {
                #expect(got == want, "rank \(rank), call result \(index)")
            }
        }
    }

    /// The blocking all-reduce, called from a task: what the async overloads avoid.
    private static func blockingAllReduce(_ group: GroupCoordinator, _ x: Tensor) throws -> Tensor {
        try group.allReduce(x)
    }

    @Test("the blocking API in the same setting hangs: 8 ranks as tasks on 2 threads time out")
    func blockingCallsStarveTheRanks() async throws {
        // The two ranks that get a thread wait for six that never can arrive, and time out;
        // the six then start on a world already failed.
        await #expect {
            try await FixedPoolExecutor.withThreads(2) {
                try await World.inProcess(size: 8, timeout: 0.5).run { group async throws -> Tensor in
                    try Self.blockingAllReduce(group, try Tensor(shape: [1], scalars: [Float(group.rank)]))
                }
            }
        } throws: { error in
            guard case .timeout(op: let op, group: _, call: _, arrived: let arrived, missing: let missing, seconds: _)? = error as? FVDError
            else { return false }
            return op == "all_reduce" && arrived.count == 2 && missing.count == 6
        }
    }

    @Test("sync, started and async calls mixed across ranks and within a rank keep program order")
    func mixed() async throws {
        @Sendable func input(_ r: Int, _ k: Int) -> Tensor { randomTensor([3, 4], .float32, seed: UInt64(10 * r + k)) }
        let n = 4
        let reference = try World.inProcess(size: n, timeout: 60).run { group -> [Tensor] in
            let r = group.rankInGroup
            return [try group.allReduce(input(r, 0)), try group.allGather(input(r, 1), dim: 0), try group.allReduce(input(r, 2)),
                    try group.allToAll4D(input(r, 3).reshaped([1, 3, 4, 1])), try group.broadcast(input(r, 4), from: 3)]
        }
        // Even ranks block on their threads; odd ranks run the same calls from a task,
        // one started, the rest async, with a blocking one in between on its thread.
        let mixed = try World.inProcess(size: n, timeout: 60).run { group -> [Tensor] in
            let r = group.rankInGroup
            if r % 2 == 0 {
                return [try group.allReduce(input(r, 0)), try group.allGather(input(r, 1), dim: 0), try group.allReduce(input(r, 2)),
                        try group.allToAll4D(input(r, 3).reshaped([1, 3, 4, 1])), try group.broadcast(input(r, 4), from: 3)]
            }
            let started = group.startAllReduce(input(r, 0))
            let fromTask = try runBlocking {
                let gathered = try await group.allGather(input(r, 1), dim: 0)
                let reduced = try await group.allReduce(input(r, 2))
                return [try await started.value, gathered, reduced]
            }
            let exchanged = try group.allToAll4D(input(r, 3).reshaped([1, 3, 4, 1]))
            let broadcast = try runBlocking { try await group.broadcast(input(r, 4), from: 3) }
            return fromTask + [exchanged, broadcast]
        }
        #expect(mixed == reference)
    }

    @Test("a task cancelled before a call throws CancellationError; its peers get peerFailed naming it")
    func cancelledBeforeACall() async throws {
        let outcomes = try await FixedPoolExecutor.withThreads(2) {
            try await World.inProcess(size: 4).runEach { group async throws -> Tensor in
                let x = try Tensor(shape: [2], scalars: [Float(group.rank), 1])
                _ = try await group.allReduce(x)
                if group.rank == 2 { withUnsafeCurrentTask { $0?.cancel() } }
                return try await group.allReduce(x)
            }
        }
        for (rank, outcome) in outcomes.enumerated() {
            switch outcome {
            case .failure(let error) where rank == 2:
                #expect(error is CancellationError)
            case .failure(FVDError.peerFailed(rank: 2, message: let message)):
                #expect(message.contains("cancelled before all_reduce"))
            default:
                Issue.record("rank \(rank): \(outcome)")
            }
        }
    }

    @Test("cancelling a task while its call is under way: the call completes, and the group goes on")
    func cancelledDuringACall() async throws {
        let cancelled = DispatchSemaphore(value: 0)
        let results = try await FixedPoolExecutor.withThreads(2) {
            try await World.inProcess(size: 3).run { group async throws -> [Float] in
                let x = try Tensor(shape: [1], scalars: [Float(group.rank + 1)])
                guard group.rank == 0 else {
                    // Peers arrive only once rank 0's call is under way and its task cancelled.
                    await withCheckedContinuation { resume in
                        Thread.detachNewThread {
                            cancelled.wait()
                            resume.resume()
                        }
                    }
                    let sum = try await group.allReduce(x)
                    try await group.barrier()
                    return try sum.scalars(as: Float.self)
                }
                let call = Task { try await group.allReduce(x) }
                while !group.lane.mustDrain { await Task.yield() }  // the call has started
                call.cancel()
                cancelled.signal()
                cancelled.signal()
                let sum = try await call.value
                try await group.barrier()  // the group is intact
                return try sum.scalars(as: Float.self)
            }
        }
        #expect(results == [[6], [6], [6]])
    }
}

/// Runs `body` in a task on a thread of its own, and blocks this (non-pool) thread until
/// it has ended. (Not on the global pool: other tests block its threads.)
private func runBlocking<R: Sendable>(_ body: @escaping @Sendable () async throws -> R) throws -> R {
    let done = DispatchSemaphore(value: 0)
    let outcome = Locked<Result<R, any Error>?>(nil)
    let pool = FixedPoolExecutor(threads: 1)
    defer { pool.shutdown() }
    Task(executorPreference: pool) {
        let result: Result<R, any Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        outcome.withLock { $0 = result }
        done.signal()
    }
    done.wait()
    return try outcome.withLock { $0! }.get()
}
