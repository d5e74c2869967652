import CFVDShims
import Foundation
import Testing

@testable import FastVideoDistributed

/// A world for waiting on a region directly: a short timeout, no peers that leave.
private final class TestWaitingWorld: WaitingWorld, @unchecked Sendable {
    let timeoutNanoseconds: UInt64
    let spin = false
    private let failure = Locked<FVDError?>(nil)
    init(timeout seconds: Double) { timeoutNanoseconds = UInt64(seconds * 1e9) }
    var abortError: FVDError? { failure.withLock { $0 } }
    func goneRanks(among ranks: [Int]) -> [Int] { [] }
    func abort(_ error: FVDError, tellPeers: Bool) { failure.withLock { if $0 == nil { $0 = error } } }
}

@Suite("Stalled ranks: progress, not total time")
struct StallTests {
    /// Member 0 has reached `.done` of call 0; member 1 has not.
    private func regionWaitingForMember1() -> GroupRegion {
        let region = GroupRegion(members: 2)
        region.post(member: 0, .done, call: 0, shared: false)
        return region
    }

    @Test("a member that beats keeps its peers waiting past the timeout, for as long as it works")
    func slowButAlive() throws {
        let region = regionWaitingForMember1()
        let world = TestWaitingWorld(timeout: 0.1)
        let worker = Thread {
            for _ in 0..<25 {  // 0.5 s of work: five timeouts
                usleep(20_000)
                _ = fvd_atomic_add_u64(region.heartbeat(1), 1)
            }
            region.post(member: 1, .done, call: 0, shared: false)
        }
        let start = Date()
        worker.start()
        try region.waitFor(.done, call: 0, op: .allGather, label: "g [0, 1]", members: [0, 1], shared: false, world: world)
        #expect(Date().timeIntervalSince(start) > 0.4)
        #expect(world.abortError == nil)
    }

    @Test("a member that stops beating is a stall after one timeout, naming it and the phase")
    func stalled() throws {
        let region = regionWaitingForMember1()
        let world = TestWaitingWorld(timeout: 0.1)
        let start = Date()
        #expect(throws: FVDError.stalled(
            op: "all_gather", group: "g [0, 1]", call: 0, phase: "reading its peers' data, phase 'done'", ranks: [1], seconds: 0.1)
        ) {
            try region.waitFor(.done, call: 0, op: .allGather, label: "g [0, 1]", members: [0, 1], shared: false, world: world)
        }
        #expect(Date().timeIntervalSince(start) < 2)
        #expect(world.abortError != nil, "the stall breaks the group for every rank")
    }

    @Test("the stall fault in an in-process world: its peers throw the stall, the world ends at the timeout")
    func stallFault() throws {
        let world = try World.inProcess(size: 3, timeout: 0.5, faults: [Fault(.stall, rank: 2, atCall: 1)])
        let x = try Tensor(zeros: [1 << 16], dtype: .float32)  // read in place, so a later phase waits
        let start = Date()
        let outcomes = world.runEach { group in
            _ = try group.allReduce(x)
            return try group.allReduce(x)
        }
        #expect(Date().timeIntervalSince(start) < 5)
        for outcome in outcomes {
            #expect(throws: FVDError.self) { try outcome.get() }
            if case .failure(let error as FVDError) = outcome, case .stalled(_, _, let call, _, let ranks, _) = error {
                #expect(call == 1 && ranks == [2])
            } else if case .failure(let error as FVDError) = outcome, case .peerFailed = error {
                // a rank that saw the first stall error recorded by another
            } else {
                Issue.record("unexpected outcome \(outcome)")
            }
        }
    }
}
