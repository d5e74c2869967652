import Foundation
import Testing

@testable import FastVideoDistributed

@Suite("Point to point: send and recv carry shape and dtype; misuse is an error on every rank")
struct PointToPointTests {
    /// Every rank sends a tensor of its own shape to every other rank (in an order that
    /// cannot deadlock: lower ranks send first), and checks what it received.
    @Test("send/recv between every pair, every dtype, W = 2…8, empty and odd shapes", arguments: 2...8)
    func everyPair(worldSize n: Int) throws {
        let results = try World.inProcess(size: n, timeout: 30).run { world -> [Bool] in
            var checks: [Bool] = []
            for (d, dtype) in DType.allCases.enumerated() {
                func payload(from s: Int, to t: Int) -> Tensor {
                    let shape = (s + t + d) % 4 == 0 ? [0, 3] : [s + 1, t + 2, (d % 3) + 1]
                    return randomTensor(shape, dtype, seed: UInt64(1000 * s + 10 * t + d))
                }
                for peer in 0..<n where peer != world.rankInGroup {
                    if world.rankInGroup < peer {
                        try world.send(payload(from: world.rankInGroup, to: peer), to: peer)
                        let got = try world.recv(from: peer)
                        checks.append(got == payload(from: peer, to: world.rankInGroup))
                    } else {
                        let got = try world.recv(from: peer, dtype: dtype)
                        checks.append(got == payload(from: peer, to: world.rankInGroup))
                        try world.send(payload(from: world.rankInGroup, to: peer), to: peer)
                    }
                }
            }
            return checks
        }
        for (rank, checks) in results.enumerated() {
            #expect(checks.count == (n - 1) * DType.allCases.count && checks.allSatisfy { $0 }, "rank \(rank)")
        }
    }

    @Test("a large tensor (48 MB, above the streaming-copy threshold) and an empty one arrive intact")
    func largeAndEmpty() throws {
        let large = randomTensor([3, 1024, 4096], .float32, seed: 7)
        let results = try World.inProcess(size: 2, timeout: 60).run { world -> [Tensor] in
            if world.rankInGroup == 0 {
                try world.send(large)
                try world.send(try Tensor(zeros: [4, 0, 2], dtype: .float16))
                return []
            }
            return [try world.recv(shape: [3, 1024, 4096], dtype: .float32), try world.recv()]
        }
        #expect(results[1].count == 2 && results[1][0] == large)
        #expect(results[1].last?.shape == [4, 0, 2] && results[1].last?.dtype == .float16)
    }

    @Test("sends on one link arrive in order; the default peers are the ring's next and previous")
    func orderAndRing() throws {
        let results = try World.inProcess(size: 3, timeout: 30).run { world -> [Tensor] in
            if world.rankInGroup == 0 {
                for k in 0..<5 { try world.send(try Tensor(shape: [k + 1], scalars: (0...k).map(Float.init)), to: 1) }
            }
            var got: [Tensor] = []
            if world.rankInGroup == 1 { for _ in 0..<5 { got.append(try world.recv(from: 0)) } }
            // A ring: send to the next, receive from the previous (rank 0 receives first to avoid waiting in a cycle).
            let mine = try Tensor(shape: [1], scalars: [Int32(world.rank)])
            if world.rankInGroup == 0 {
                got.append(try world.recv())
                try world.send(mine)
            } else {
                try world.send(mine)
                got.append(try world.recv())
            }
            return got
        }
        #expect(results[1].prefix(5).map(\.shape) == [[1], [2], [3], [4], [5]])
        #expect(try results[1].prefix(5).map { try $0.scalars(as: Float.self).last } == [0, 1, 2, 3, 4])
        #expect(try results.map { try $0.last!.scalars(as: Int32.self) } == [[2], [0], [1]])
    }

    @Test("a subgroup's links use group ranks")
    func subgroupRanks() throws {
        let results = try World.inProcess(size: 4, timeout: 30).run { world -> [Int32] in
            let state = try ParallelState(world: world, tensorParallel: 2, sequenceParallel: 1)
            let tp = state.tensorParallel
            if tp.rankInGroup == 0 {
                try tp.send(try Tensor(shape: [1], scalars: [Int32(world.rank)]), to: 1)
                return []
            }
            return try tp.recv(from: 0, shape: [1], dtype: .int32).scalars(as: Int32.self)
        }
        #expect(results == [[], [0], [], [2]])
    }

    @Test("a receiver's expected shape or dtype that differs is a clear error there")
    func expectation() throws {
        let results = try World.inProcess(size: 2, timeout: 30).runEach { world -> String in
            if world.rankInGroup == 0 {
                try world.send(try Tensor(zeros: [2, 3], dtype: .float32), to: 1)
                try world.send(try Tensor(zeros: [2, 3], dtype: .float32), to: 1)
                return "sent"
            }
            let first = #expect(throws: FVDError.self) { try world.recv(from: 0, shape: [3, 2]) }
            let second = #expect(throws: FVDError.self) { try world.recv(from: 0, dtype: .float16) }
            return "\(first!) | \(second!)"
        }
        #expect(try results[0].get() == "sent")
        #expect(
            try results[1].get()
                == "recv in group world:0->1 [0, 1]: ranks passed different shapes: rank 0 [2, 3], rank 1 [3, 2] | "
                + "recv in group world:0->1 [0, 1]: ranks passed different dtypes: rank 0 float32, rank 1 float16")
    }

    @Test("a peer outside the group or oneself is an argument error before anything is sent")
    func badPeers() throws {
        let results = try World.inProcess(size: 2, timeout: 30).run { world -> [String] in
            var messages: [String] = []
            for attempt in [{ try world.send(Tensor.empty, to: 2) }, { try world.send(Tensor.empty, to: world.rankInGroup) },
                { _ = try world.recv(from: -1) }, { _ = try world.recv(from: world.rankInGroup) }] as [() throws -> Void] {
                do { try attempt() } catch { messages.append("\(error)") }
            }
            try world.barrier()  // the group is still usable
            return messages
        }
        #expect(results[0] == [
            "send: rank 2 is not a rank of group world [0, 1] (0..<2)",
            "send: rank 0 is this rank (world rank 0) of group world [0, 1]; a rank cannot send to or from itself",
            "recv: rank -1 is not a rank of group world [0, 1] (0..<2)",
            "recv: rank 0 is this rank (world rank 0) of group world [0, 1]; a rank cannot recv to or from itself",
        ])
        let single = try World.inProcess(size: 1).run { world -> Int in
            #expect(throws: FVDError.self) { try world.send(Tensor.empty) }
            #expect(throws: FVDError.self) { _ = try world.recv() }
            return 1
        }
        #expect(single.count == 1)
    }

    @Test("an unmatched recv ends with an error when the sender returns or never sends, not a hang")
    func unmatched() throws {
        let exited = try World.inProcess(size: 2, timeout: 30).runEach { world -> Tensor? in
            world.rankInGroup == 1 ? try world.recv(from: 0) : nil
        }
        #expect(throws: FVDError.self) { try exited[1].get() }
        #expect("\(exited[1])".contains("rank 0 exited"), "\(exited[1])")

        // A large send waits for its receiver; small ones return at once, and the third
        // unreceived small one waits for the first to be taken.
        let start = Date()
        let large = try Tensor(zeros: [4096], dtype: .float32)
        let timedOut = try World.inProcess(size: 2, timeout: 0.5).runEach { world -> Tensor? in
            if world.rankInGroup == 0 {
                try world.send(large, to: 1)  // rank 1 receives from nobody
                return nil
            }
            Thread.sleep(forTimeInterval: 2)
            return nil
        }
        #expect("\(timedOut[0])".contains("send in group world:0->1 [0, 1] (call #0) timed out after 0.5 s waiting for rank 1"), "\(timedOut[0])")
        let eager = try World.inProcess(size: 2, timeout: 0.5).runEach { world -> Int in
            guard world.rankInGroup == 0 else {
                Thread.sleep(forTimeInterval: 2)
                return 0
            }
            var sent = 0
            for _ in 0..<3 {
                try world.send(Tensor([Float(sent)]), to: 1)
                sent += 1
            }
            return sent
        }
        #expect("\(eager[0])".contains("send in group world:0->1 [0, 1] (call #1) timed out after 0.5 s waiting for rank 1"), "\(eager[0])")
        #expect(Date().timeIntervalSince(start) < 15)
    }

    @Test("recv(into:) fills the given tensor, small and large; a different shape or dtype is an error there and leaves it alone")
    func receiveInto() throws {
        let small = randomTensor([3, 2], .int16, seed: 1), large = randomTensor([3000], .float64, seed: 2)
        let zeros = try Tensor(zeros: [3, 2], dtype: .int16)
        let results = try World.inProcess(size: 2, timeout: 30).runEach { world -> [String] in
            if world.rankInGroup == 0 {
                for t in [small, large, small, small] { try world.send(t, to: 1) }
                return []
            }
            var a = zeros, b = try Tensor(zeros: [3000], dtype: .float64)
            try world.recv(into: &a, from: 0)
            try world.recv(into: &b, from: 0)
            var outcomes = [a == small && b == large ? "ok" : "wrong data"]
            for target in [try Tensor(zeros: [6], dtype: .int16), try Tensor(zeros: [3, 2], dtype: .int32)] {
                var received = target
                do {
                    try world.recv(into: &received, from: 0)
                    outcomes.append("received")
                } catch {
                    outcomes.append("\(error)" + (received == target ? "" : " (changed)"))
                }
            }
            return outcomes
        }
        let outcomes = try results[1].get()
        #expect(outcomes[0] == "ok")
        #expect(outcomes[1] == "recv_in_place in group world:0->1 [0, 1]: ranks passed different shapes: rank 0 [3, 2], rank 1 [6]")
        #expect(outcomes[2] == "recv_in_place in group world:0->1 [0, 1]: ranks passed different dtypes: rank 0 int16, rank 1 int32")
        #expect(zeros == (try Tensor(zeros: [3, 2], dtype: .int16)), "the value `a` was copied from keeps its bytes")
    }

    @Test("a large send after eager small ones waits until the receiver took them: a slow receiver gets every message")
    func largeAfterEager() throws {
        let large = randomTensor([5000], .float32, seed: 7)
        let results = try World.inProcess(size: 2, timeout: 30).run { world -> [Tensor] in
            if world.rankInGroup == 0 {
                for round in 0..<3 {
                    try world.send(Tensor([Float(round), 1]), to: 1)
                    try world.send(Tensor([Float(round), 2]), to: 1)
                    try world.send(large, to: 1)
                }
                return []
            }
            var received: [Tensor] = []
            for _ in 0..<9 {
                Thread.sleep(forTimeInterval: 0.01)
                received.append(try world.recv(from: 0))
            }
            return received
        }
        for round in 0..<3 {
            #expect(results[1][3 * round] == Tensor([Float(round), 1]))
            #expect(results[1][3 * round + 1] == Tensor([Float(round), 2]))
            #expect(results[1][3 * round + 2] == large)
        }
    }

    @Test("small sends are eager: two ranks may both send before they receive, and the messages keep their order")
    func eagerSends() throws {
        let results = try World.inProcess(size: 2, timeout: 30).run { world -> [Float] in
            let peer = 1 - world.rankInGroup
            var received: [Float] = []
            for round in 0..<50 {
                try world.send(Tensor([Float(world.rankInGroup * 1000 + round)]), to: peer)
                received += try world.recv(from: peer).scalars(as: Float.self)
            }
            return received
        }
        for rank in 0..<2 { #expect(results[rank] == (0..<50).map { Float((1 - rank) * 1000 + $0) }) }
    }
}

/// A nested Codable value, as pipelines pass between stages.
private struct StepInfo: Codable, Sendable, Equatable {
    struct Schedule: Codable, Sendable, Equatable {
        var timesteps: [Double]
        var name: String?
    }
    var step: Int
    var guidance: Double
    var shapes: [String: [Int]]
    var schedule: Schedule
    var flags: [Bool]
}

private let sampleInfo = StepInfo(
    step: 7, guidance: 5.5, shapes: ["latents": [1, 16, 21, 60, 104], "text": []],
    schedule: .init(timesteps: [999, 875.5, 0.25], name: nil), flags: [true, false])

@Suite("Objects and tensor dicts: Codable values and named tensors between ranks")
struct ObjectTests {
    @Test("broadcastObject and broadcastObjectList of nested values, from every root, W = 1…8", arguments: 1...8)
    func broadcastObjects(worldSize n: Int) throws {
        let results = try World.inProcess(size: n, timeout: 30).run { world -> [Bool] in
            var checks: [Bool] = []
            for root in 0..<n {
                var info = sampleInfo
                info.step = root
                let got = try world.broadcastObject(world.rankInGroup == root ? info : nil, from: root)
                checks.append(got == info)
                let list = try world.broadcastObjectList(world.rankInGroup == root ? [info, sampleInfo] : nil, from: root)
                checks.append(list == [info, sampleInfo])
                let empty = try world.broadcastObjectList(world.rankInGroup == root ? [Int]() : nil, from: root)
                checks.append(empty.isEmpty)
            }
            return checks
        }
        #expect(results.allSatisfy { $0.count == 3 * n && $0.allSatisfy { $0 } })
    }

    @Test("a root without a value, or with one JSON cannot encode, is an error on every rank")
    func objectErrors() throws {
        for bad in [nil, Double.nan] as [Double?] {
            let results = try World.inProcess(size: 3, timeout: 30).runEach { world -> Double in
                try world.broadcastObject(world.rankInGroup == 1 ? bad : 1.0, from: 1)
            }
            for result in results {
                let text = "\(result)"
                #expect(text.contains("broadcast_object in group world [0, 1, 2]: rank 1 "), "\(text)")
                #expect(text.contains(bad == nil ? "passed no value" : "could not encode its Double as JSON"), "\(text)")
            }
        }
        let wrongType = try World.inProcess(size: 2, timeout: 30).runEach { world -> String in
            if world.rankInGroup == 0 { _ = try world.broadcastObject(sampleInfo); return "" }
            return try world.broadcastObject(String?.none)
        }
        #expect("\(wrongType[1])".contains("the object rank 0 sent is not a String"), "\(wrongType[1])")
    }

    @Test("send/recv of objects and tensor dicts (with and without metadata, empty tensors, empty dicts), every dtype, W = 2…8", arguments: 2...8)
    func dicts(worldSize n: Int) throws {
        @Sendable func dict(from s: Int) -> TensorDict<StepInfo> {
            var tensors: [String: Tensor] = [:]
            for (d, dtype) in DType.allCases.enumerated() {
                tensors["t\(d)-\(dtype)"] = randomTensor(d == 3 ? [2, 0, 5] : [s + 1, d + 1], dtype, seed: UInt64(100 * s + d))
            }
            var info = sampleInfo
            info.step = s
            return TensorDict(tensors, metadata: info)
        }
        // A pipeline: rank r sends to r + 1; the last rank sends back to 0.
        let results = try World.inProcess(size: n, timeout: 30).run { world -> [Bool] in
            let r = world.rankInGroup
            var checks: [Bool] = []
            if r > 0 {
                let got = try world.recvTensorDict(StepInfo.self)
                checks.append(got.metadata == dict(from: r - 1).metadata && got.tensors == dict(from: r - 1).tensors)
                let plain = try world.recvTensorDict()
                checks.append(plain.tensors.isEmpty)
                checks.append(try world.recvObject(StepInfo.self) == sampleInfo)
            }
            try world.sendTensorDict(dict(from: r))
            try world.sendTensorDict(TensorDict([:]))
            try world.sendObject(sampleInfo)
            if r == 0 {
                let got = try world.recvTensorDict(StepInfo.self)
                checks.append(got.tensors == dict(from: n - 1).tensors)
                checks.append(try world.recvTensorDict().tensors.isEmpty)
                checks.append(try world.recvObject(StepInfo.self) == sampleInfo)
            }
            return checks
        }
        #expect(results.allSatisfy { $0.count == 3 && $0.allSatisfy { $0 } }, "\(results)")
    }

    @Test("broadcastTensorDict from every root, W = 1…8", arguments: 1...8)
    func broadcastDicts(worldSize n: Int) throws {
        let results = try World.inProcess(size: n, timeout: 30).run { world -> [Bool] in
            var checks: [Bool] = []
            for root in 0..<n {
                let mine = TensorDict(
                    ["x": randomTensor([root + 1, 3], .bfloat16, seed: UInt64(root)), "empty": Tensor.empty,
                     "mask": randomTensor([4], .bool, seed: 9)], metadata: ["root": root])
                let got = try world.broadcastTensorDict(world.rankInGroup == root ? mine : nil, from: root)
                checks.append(got.tensors == mine.tensors && got.metadata == mine.metadata)
            }
            return checks
        }
        #expect(results.allSatisfy { $0.count == n && $0.allSatisfy { $0 } })
    }

    @Test("a dict whose metadata is not the receiver's type fails there, after every tensor arrived")
    func dictMetadataType() throws {
        let results = try World.inProcess(size: 2, timeout: 30).runEach { world -> String in
            if world.rankInGroup == 0 {
                try world.sendTensorDict(TensorDict(["a": Tensor.empty, "b": randomTensor([3], .int64, seed: 1)], metadata: sampleInfo))
                try world.send(Tensor.empty)
                return "sent"
            }
            let error = #expect(throws: FVDError.self) { _ = try world.recvTensorDict([String].self) }
            _ = try world.recv()  // the link is still in step: the next send arrives
            return "\(error!)"
        }
        #expect(try results[0].get() == "sent")
        #expect(try results[1].get().contains("recv_tensor_dict in group world [0, 1]: the object rank 0 sent is not a DictMetadata<Array<String>>"))
    }
}
