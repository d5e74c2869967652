import Foundation
import Testing

@testable import FastVideoDistributed

@Suite("Fault injection and the flight recorder")
struct ReliabilityTests {
    @Test("fault specs parse, print back, and bad ones name the problem")
    func faultSpecs() throws {
        let specs = [
            "delay=1.5:rank=1:call=3", "drop:rank=0:call=0", "corrupt:rank=2:call=7:group=tp0", "fail:rank=1:call=0",
            "exit=3:rank=1:call=10", "kill:rank=3:call=2",
        ]
        for spec in specs { #expect(try Fault(parsing: spec).description == spec) }
        #expect(try Fault(parsing: "kill:rank=3:call=2") == Fault(.kill, rank: 3, atCall: 2))
        for (spec, problem) in [
            ("explode:rank=1:call=0", "unknown action 'explode'"), ("delay:rank=1:call=0", "delay needs a number of seconds"),
            ("delay=-1:rank=1:call=0", "delay needs a number of seconds"), ("fail:rank=1", "rank and call are required"),
            ("fail:rank=-1:call=0", "'rank=-1' needs a non-negative integer"), ("fail:rank=1:call=0:when=now", "unknown key 'when'"),
            ("exit=x:rank=1:call=0", "exit needs a status"), ("kill=9:rank=1:call=0", "kill takes no value"), ("fail:rank:call=0", "'rank' is not KEY=VALUE"),
        ] {
            #expect { try Fault(parsing: spec) } throws: { error in
                (error as? FVDError)?.description.hasPrefix("fault '\(spec)': \(problem); expected ACTION:rank=R:call=N") == true
            }
        }
        #expect(throws: FVDError.invalidArgument("fault fail:rank=4:call=0 names rank 4 of a world of 4")) {
            try World.inProcess(size: 4, faults: [Fault(.fail, rank: 4, atCall: 0)])
        }
    }

    @Test("an in-process rank that 'exits' leaves: it and its peers report peerExited, nobody hangs")
    func exitInProcess() throws {
        for action in [Fault.Action.exit(status: 3), .kill] {
            let results = try World.inProcess(size: 3, timeout: 30, faults: [Fault(action, rank: 1, atCall: 1)]).runEach { world in
                for _ in 0..<3 { try world.barrier() }
            }
            for result in results {
                #expect(throws: FVDError.peerExited(rank: 1, op: "barrier", group: "world [0, 1, 2]")) { try result.get() }
            }
        }
    }

    @Test("a fault for one group counts that group's calls only")
    func groupFault() throws {
        let fault = Fault(.fail, rank: 2, atCall: 1, group: "tp1")
        let results = try World.inProcess(size: 4, timeout: 30, faults: [fault]).runEach { world -> Int in
            let state = try ParallelState(world: world, tensorParallel: 2, sequenceParallel: 2)
            for _ in 0..<3 {
                _ = try state.sequenceModelParallelAllGather(Tensor([Float(world.rank)]))
                _ = try state.tensorModelParallelAllReduce(Tensor([Float(world.rank)]))
            }
            try world.barrier()  // every rank meets rank 2's failure here at the latest
            return world.flightRecorder.records.count
        }
        // tp1 is ranks [2, 3]; rank 2 fails at tp1's call #1 (its 4th collective overall).
        #expect(throws: FVDError.invalidArgument("injected failure on rank 2 at all_reduce in group tp1 [2, 3] (call #1)")) {
            try results[2].get()
        }
        for rank in [0, 1, 3] {
            #expect(throws: FVDError.peerFailed(rank: 2, message: "injected failure on rank 2 at all_reduce in group tp1 [2, 3] (call #1)")) {
                try results[rank].get()
            }
        }
    }

    @Test("faults with no effect leave the results alone: a short delay, a fault at a call never reached")
    func harmlessFaults() throws {
        let faults = [Fault(.delay(seconds: 0.05), rank: 0, atCall: 0), Fault(.kill, rank: 1, atCall: 99)]
        let out = try World.inProcess(size: 2, timeout: 30, faults: faults).run { world in
            try world.allReduce(Tensor([Float(world.rank + 1)]))
        }
        #expect(out == [Tensor([3 as Float]), Tensor([3 as Float])])
    }

    @Test("the flight recorder keeps the last calls of each rank with their outcome")
    func recorderInWorld() throws {
        let records = try World.inProcess(size: 2, timeout: 30).run { world -> [FlightRecord] in
            _ = try world.allReduce(Tensor([1 as Float, 2]))
            _ = try world.allGather(try Tensor(zeros: [2, 3], dtype: .float16), dim: 0)
            _ = try? world.broadcast(try Tensor(zeros: [world.rank + 1], dtype: .int32), from: 1)
            try world.barrier()
            return world.flightRecorder.records
        }
        for (rank, records) in records.enumerated() {
            #expect(records.map(\.sequence) == [0, 1, 2, 3])
            #expect(records.map(\.op) == ["all_reduce", "all_gather", "broadcast", "barrier"])
            #expect(records.map(\.call) == [0, 1, 2, 3])
            #expect(records.map(\.status) == [.completed, .completed, .failed, .completed])
            #expect(records[1].shape == [2, 3] && records[1].dtype == .float16 && records[1].group == "world [0, 1]")
            #expect(records[2].shape == [rank + 1] && records[2].error?.contains("ranks passed different shapes") == true)
            #expect(records.allSatisfy { ($0.end ?? 0) >= $0.start && $0.start > 1.7e9 })
        }
    }

    @Test("the ring drops the oldest calls; JSON and text show the rest, oldest first")
    func ring() throws {
        let recorder = FlightRecorder(rank: 5, capacity: 4, directory: nil, printsOnBreak: false)
        #expect(recorder.records.isEmpty)
        let label = recorder.label("sp0 [4, 5]")
        for i in 0..<10 {
            let sequence = recorder.begin(op: .allGather, label: label, call: i, shape: [i], dtype: .bfloat16)
            #expect(sequence == i)
            if i != 9 { recorder.end(sequence, error: i == 7 ? FVDError.invalidArgument("boom") : nil) }
        }
        let records = recorder.records
        #expect(records.map(\.sequence) == [6, 7, 8, 9])
        #expect(records.map(\.status) == [.completed, .failed, .completed, .running])
        #expect(records[1].error == "boom" && records[3].end == nil)
        recorder.end(2)  // long gone: ignored
        #expect(recorder.records == records)

        let summary = recorder.summary(last: 2)
        #expect(summary.hasPrefix("flight recorder of rank 5: last 2 of 10 calls\n"))
        #expect(summary.contains("  #8 all_gather sp0 [4, 5] call #8 [8] bfloat16: completed in "))
        #expect(summary.contains("  #9 all_gather sp0 [4, 5] call #9 [9] bfloat16: running for "))

        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fvd-ring-\(UUID().uuidString)/nested")
        defer { try? FileManager.default.removeItem(at: folder.deletingLastPathComponent()) }
        try recorder.write(toDirectory: folder.path)
        struct Dump: Decodable {
            var rank: Int
            var capacity: Int
            var records: [FlightRecord]
        }
        let dump = try JSONDecoder().decode(Dump.self, from: Data(contentsOf: folder.appendingPathComponent("rank5.json")))
        #expect(dump.rank == 5 && dump.capacity == 4 && dump.records == records)
    }
}
