import Foundation
import Testing

@testable import FastVideoDistributed

@Suite("One program for every world: World.start, DistributedWorld.run, exit statuses, Duration timeouts")
struct DistributedWorldTests {
    /// A program written once against ``DistributedWorld``: every rank's all-reduced rank sum.
    private static func sums(_ world: any DistributedWorld) throws -> [Float] {
        try world.run { group in try group.allReduce(Tensor([Float(group.rank)])).scalar(at: [0], as: Float.self) }
    }

    private static func asyncSums(_ world: any DistributedWorld) async throws -> [Float] {
        try await world.run { group async throws in
            try await group.allReduce(Tensor([Float(group.rank)])).scalar(at: [0], as: Float.self)
        }
    }

    @Test("without a launcher, World.start is defaultSize in-process ranks, and both run forms give every local rank's result")
    func startsInProcess() async throws {
        // (The test process has no RANK, WORLD_SIZE or mpirun variables; the launched cases
        // run as the example package under fvd launch and mpirun in CI.)
        let world = try World.start(defaultSize: 4, timeout: .seconds(60))
        #expect(world.transport == .inProcess && world.size == 4 && world.localRanks == [0, 1, 2, 3])
        #expect(try Self.sums(world) == [6, 6, 6, 6])
        #expect(try await Self.asyncSums(world) == [6, 6, 6, 6])
        #expect(WorldTransport.allCases.map(\.description) == ["in-process", "shared memory", "MPI", "single process"])
    }

    @Test("mpirun's variables mean MPI; without the trait, World.start refuses rather than starting separate worlds")
    func mpiDetection() {
        #expect(World.launchedByMPI(["OMPI_COMM_WORLD_SIZE": "4"]))
        #expect(World.launchedByMPI(["PMI_SIZE": "4"]))
        #expect(World.launchedByMPI(["FVD_TRANSPORT": "mpi"]))
        #expect(!World.launchedByMPI(["RANK": "0", "WORLD_SIZE": "2", "FVD_TRANSPORT": "shm"]))
    }

    @Test("exit statuses: 2 for another rank's failure in a launched rank (fvd launch names the first), else 1; 0 after success")
    func exitStatuses() {
        let consequence = FVDError.peerFailed(rank: 3, message: "boom")
        let exited = FVDError.peerExited(rank: 1, op: "all_reduce", group: "world [0, 1]")
        #expect(World.exitStatus(for: consequence, launched: true) == 2)
        #expect(World.exitStatus(for: exited, launched: true) == 2)
        #expect(World.exitStatus(for: consequence, launched: false) == 1)
        #expect(World.exitStatus(for: FVDError.invalidArgument("x"), launched: true) == 1)
        struct Other: Error {}
        #expect(World.exitStatus(for: Other(), launched: true) == 1)
        #expect(World.status { } == 0)
        #expect(World.status { throw FVDError.invalidArgument("bad input, printed as one error line") } == 1)
        let world = try? World.inProcess(size: 2, timeout: .seconds(30))
        #expect(World.status { try world!.run { group in if group.rank == 1 { throw Other() } } } == 1)
    }

    @Test("Duration timeouts equal their seconds")
    func durations() throws {
        #expect(try World.inProcess(size: 1, timeout: .milliseconds(1500)).timeout == 1.5)
        #expect(try World.inProcess(size: 1, timeout: .seconds(2)).timeout == 2)
        #expect(throws: FVDError.self) { try World.inProcess(size: 1, timeout: .zero) }
    }
}
