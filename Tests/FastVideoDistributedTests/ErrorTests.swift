import Foundation
import Testing
@testable import FastVideoDistributed

/// Runs `body` on `n` ranks with a short timeout and returns each rank's error (nil if it succeeded).
private func errors(
    _ n: Int, timeout: Double = 5, _ body: @escaping @Sendable (GroupCoordinator) throws -> Void
) throws -> [FVDError?] {
    try World.inProcess(size: n, timeout: timeout).runEach(body).map { result in
        if case .failure(let e) = result { return e as? FVDError ?? .invalidArgument("unexpected \(e)") }
        return nil
    }
}

private struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }

@Suite("Errors end on every rank, never hang")
struct ErrorTests {
    @Test("mismatched shapes: every rank throws naming all ranks and shapes")
    func shapeMismatch() throws {
        let errs = try errors(3) { world in
            _ = try world.allGather(try Tensor(zeros: [2, world.rank == 1 ? 4 : 3], dtype: .float32))
        }
        let expected = FVDError.shapeMismatch(op: "all_gather", group: "world [0, 1, 2]", ranks: [0, 1, 2], shapes: [[2, 3], [2, 4], [2, 3]])
        #expect(errs == [expected, expected, expected])
        #expect(expected.description.contains("rank 1 [2, 4]"))
    }

    @Test("mismatched dtypes")
    func dtypeMismatch() throws {
        let errs = try errors(2) { world in
            _ = try world.allReduce(try Tensor(zeros: [4], dtype: world.rank == 0 ? .float32 : .bfloat16))
        }
        let expected = FVDError.dtypeMismatch(op: "all_reduce", group: "world [0, 1]", ranks: [0, 1], dtypes: [.float32, .bfloat16])
        #expect(errs == [expected, expected])
    }

    @Test("a different collective on one rank")
    func operationMismatch() throws {
        let errs = try errors(2) { world in
            let x = try Tensor(zeros: [4], dtype: .float32)
            if world.rank == 0 { _ = try world.allReduce(x) } else { _ = try world.allGather(x) }
        }
        let expected = FVDError.operationMismatch(group: "world [0, 1]", ranks: [0, 1], operations: ["all_reduce", "all_gather"])
        #expect(errs == [expected, expected])
    }

    @Test("in-place all-gather: mixing it with the out-of-place form, or an indivisible dim, throws on every rank")
    func inPlaceAllGatherErrors() throws {
        let mixed = try errors(2) { world in
            var x = try Tensor(zeros: [4], dtype: .float32)
            if world.rank == 0 { try world.allGather(inPlace: &x) } else { _ = try world.allGather(x) }
        }
        let expected = FVDError.operationMismatch(group: "world [0, 1]", ranks: [0, 1], operations: ["all_gather_in_place", "all_gather"])
        #expect(mixed == [expected, expected])
        let indivisible = try errors(3) { world in
            var x = try Tensor(zeros: [2, 4], dtype: .float32)
            try world.allGather(inPlace: &x, dim: 1)
        }
        let e = FVDError.indivisible(op: "all_gather_in_place", dim: 1, size: 4, parts: 3)
        #expect(indivisible == [e, e, e])
    }

    @Test("different arguments (dim, reduce op) on one rank")
    func argumentMismatch() throws {
        let errs = try errors(2) { world in
            let x = try Tensor(zeros: [2, 2], dtype: .float32)
            _ = try world.allGather(x, dim: world.rank == 0 ? 0 : 1)
        }
        #expect(errs.allSatisfy { if case .argumentMismatch(_, _, [0, 1], ["dim=0", "dim=1"])? = $0 { true } else { false } })
        let same = try errors(2) { world in
            _ = try world.allGather(try Tensor(zeros: [2, 2], dtype: .float32), dim: world.rank == 0 ? -1 : 1)
        }
        #expect(same == [nil, nil], "-1 and 1 are the same dim of a 2-D tensor")
    }

    @Test("argument errors are thrown on every rank and the group stays usable")
    func argumentErrorsEverywhere() throws {
        let results = try World.inProcess(size: 4, timeout: 5).run { world -> [String] in
            let state = try ParallelState(world: world, sequenceParallel: 4)
            var messages: [String] = []
            func record(_ body: () throws -> Void) {
                do { try body(); messages.append("no error") } catch { messages.append("\(error)") }
            }
            try state.withCurrent {
                let x3 = try Tensor(zeros: [2, 3, 8], dtype: .float32)
                let x4 = try Tensor(zeros: [1, 2, 6, 4], dtype: .float32)
                record { _ = try sequenceModelParallelAllGather(x3, dim: 3) }
                record { _ = try sequenceModelParallelAllGather(x3, dim: -4) }
                record { _ = try sequenceModelParallelAllToAll4D(x3) }
                record { _ = try sequenceModelParallelAllToAll4D(x4, scatterDim: 3, gatherDim: 1) }
                record { _ = try sequenceModelParallelAllToAll4D(x4, scatterDim: 2, gatherDim: 1) }
                record { _ = try state.sequenceParallel.allReduce(try Tensor(zeros: [3], dtype: .int32), op: .average) }
                record { _ = try state.sequenceParallel.reduceScatter(x3, dim: 1) }
                record { _ = try state.sequenceParallel.broadcast(x3, from: 4) }
                // Still in step: a valid collective works after the errors.
                _ = try sequenceModelParallelAllGather(x3, dim: 0)
            }
            return messages
        }
        for r in 0..<4 { #expect(results[r] == results[0]) }
        let m = results[0]
        #expect(m[0].contains("dim 3 is out of range for a tensor with 3 dimensions"))
        #expect(m[1].contains("dim -4"))
        #expect(m[2].contains("expected a 4-D tensor, got shape [2, 3, 8]"))
        #expect(m[3].contains("unsupported (scatter_dim, gather_dim) = (3, 1)"))
        #expect(m[4].contains("dimension 2 has size 6, which is not divisible by the group size 4"))
        #expect(m[5].contains("average needs a floating-point dtype"))
        #expect(m[6].contains("dimension 1 has size 3"))
        #expect(m[7].contains("root 4 is not a rank"))
    }

    @Test("a rank that throws makes the waiting ranks throw peerFailed promptly")
    func throwingRank() throws {
        let start = ContinuousClock.now
        let errs = try errors(4, timeout: 60) { world in
            if world.rank == 2 { throw Boom() }
            _ = try world.allReduce(try Tensor(zeros: [8], dtype: .float32))
        }
        #expect(ContinuousClock.now - start < .seconds(30), "waited for the timeout instead of failing promptly")
        #expect(errs[2] == nil || errs[2] == .invalidArgument("unexpected boom"))
        for r in [0, 1, 3] { #expect(errs[r] == .peerFailed(rank: 2, message: "boom")) }
    }

    @Test("a rank that fails in the middle of a sequence of collectives")
    func failsMidway() throws {
        let errs = try errors(3, timeout: 60) { world in
            for step in 0..<5 {
                if world.rank == 0, step == 3 { throw Boom() }
                _ = try world.allGather(try Tensor(zeros: [2], dtype: .int8))
            }
        }
        #expect(errs[1] == .peerFailed(rank: 0, message: "boom") && errs[2] == .peerFailed(rank: 0, message: "boom"))
    }

    @Test("a rank that returns without calling makes the others throw peerExited")
    func exitedRank() throws {
        let errs = try errors(3, timeout: 60) { world in
            if world.rank == 1 { return }
            try world.barrier()
        }
        #expect(errs[1] == nil)
        for r in [0, 2] {
            #expect(errs[r] == .peerExited(rank: 1, op: "barrier", group: "world [0, 1, 2]"))
        }
    }

    @Test("a rank later than the timeout: every rank throws a timeout naming it")
    func lateRank() throws {
        let errs = try errors(3, timeout: 0.3) { world in
            if world.rank == 2 { Thread.sleep(forTimeInterval: 0.8) }
            _ = try world.allGather(try Tensor(zeros: [1], dtype: .float32))
        }
        for e in errs {
            guard case .timeout(let op, let group, let call, let arrived, let missing, _)? = e else {
                Issue.record("expected a timeout, got \(String(describing: e))")
                continue
            }
            #expect(op == "all_gather" && group == "world [0, 1, 2]" && call == 0 && arrived == [0, 1] && missing == [2])
        }
    }

    @Test("a rank that is late but within the timeout succeeds")
    func lateButInTime() throws {
        let out = try World.inProcess(size: 3, timeout: 10).run { world in
            if world.rank == 0 { Thread.sleep(forTimeInterval: 0.2) }
            return try world.allReduce(Tensor([Float(world.rank)]))
        }
        #expect(out.allSatisfy { $0 == Tensor([3 as Float]) })
    }

    @Test("a rank that calls one collective more than its peers gets peerExited; the others finish")
    func extraCall() throws {
        let errs = try errors(2, timeout: 30) { world in
            let x = try Tensor(zeros: [2], dtype: .float32)
            if world.rank == 0 { _ = try world.allGather(x) }
            _ = try world.allGather(x)
        }
        #expect(errs == [.peerExited(rank: 1, op: "all_gather", group: "world [0, 1]"), nil])
    }

    @Test("two coordinators of the same group on one rank share the call sequence")
    func recreatedGroups() throws {
        let out = try World.inProcess(size: 4, timeout: 10).run { world in
            let first = try ParallelState(world: world, tensorParallel: 2)
            _ = try first.tensorModelParallelAllReduce(Tensor([Float(world.rank)]))
            let second = try ParallelState(world: world, tensorParallel: 2)
            return try second.tensorModelParallelAllReduce(Tensor([Float(world.rank)]))
        }
        #expect(out.map { try! $0.scalars(as: Float.self) } == [[1], [1], [5], [5]])
    }

    @Test("equivalent negative and positive a2a dims agree across ranks")
    func allToAllDimsAgree() throws {
        let out = try World.inProcess(size: 2, timeout: 10).run { world in
            try world.allToAll4D(randomTensor([1, 2, 4, 2], .float32, seed: 1), scatterDim: world.rank == 0 ? -2 : 2, gatherDim: 1)
        }
        #expect(out.count == 2)
    }

    @Test("huge and infinite timeouts are accepted")
    func longTimeouts() throws {
        for t in [1e11, Double.infinity] {
            let out = try World.inProcess(size: 2, timeout: t).run { world in
                if world.rank == 1 { Thread.sleep(forTimeInterval: 0.1) }  // rank 0 reaches the deadline check
                return try world.allReduce(Tensor([1 as Float]))
            }
            #expect(out == [Tensor([2 as Float]), Tensor([2 as Float])])
        }
        #expect(throws: FVDError.self) { try World.inProcess(size: 2, timeout: .nan) }
        #expect(throws: FVDError.self) { try World.inProcess(size: 5000) }
    }

    @Test("two coordinators of one group used at once on one rank: concurrentUse on every rank")
    func concurrentUse() throws {
        let errs = try errors(2, timeout: 10) { world in
            let twin = try world.subgroup(name: "world", ranks: world.ranks)
            if world.rank == 0 { #expect(twin.channel.enter()) }  // as if another thread were inside a call
            _ = try world.allReduce(Tensor([1 as Float]))
        }
        #expect(errs == [.concurrentUse(group: "world [0, 1]"), .concurrentUse(group: "world [0, 1]")])
    }

    @Test("invalid world arguments")
    func invalidWorld() {
        #expect(throws: FVDError.self) { try World.inProcess(size: 0) }
        #expect(throws: FVDError.self) { try World.inProcess(size: 2, timeout: -1) }
    }

    @Test("ParallelState rejects a layout that does not fit the world, on every rank")
    func invalidParallelState() throws {
        let errs = try errors(4) { world in _ = try ParallelState(world: world, tensorParallel: 3) }
        #expect(errs.allSatisfy { $0 == .invalidLayout(worldSize: 4, tensorParallel: 3, sequenceParallel: 1) })
    }
}
