import Foundation
import Testing

@testable import FastVideoDistributed

// Issue 19, "ways a user's command ends badly": library-level checks of the settings a
// user passes (faults, environment variables), each refused with words instead of a
// silent misbehaviour.

@Suite("Hardening: settings the library refuses")
struct LibraryOptionsHardeningTests {
    // MARK: Row 17: faults that could never do what they say

    @Test("an exit status outside 0...255 is refused, in FVD_FAULTS form and in code")
    func faultExitStatusRange() throws {
        for spec in ["exit=300:rank=1:call=0", "exit=-1:rank=1:call=0", "exit=256:rank=0:call=0"] {
            #expect { try Fault(parsing: spec) } throws: { error in
                (error as? FVDError)?.description.contains("is not an exit status in 0...255") == true
            }
        }
        #expect(try Fault(parsing: "exit=255:rank=1:call=0").action == .exit(status: 255))
        #expect(try Fault(parsing: "exit=0:rank=1:call=0").action == .exit(status: 0))
        #expect(throws: FVDError.invalidArgument("fault exit=300:rank=1:call=0: exit=300 is not an exit status in 0...255")) {
            try World.inProcess(size: 2, faults: [Fault(.exit(status: 300), rank: 1, atCall: 0)])
        }
    }

    @Test("a fault on a group the library never names, or one the world or layout lacks, is refused")
    func faultGroupNames() throws {
        for spec in ["fail:rank=1:call=0:group=nosuch", "fail:rank=1:call=0:group=tp", "fail:rank=1:call=0:group=tp01",
            "fail:rank=1:call=0:group=tp-1", "fail:rank=1:call=0:group=World"]
        {
            #expect { try Fault(parsing: spec) } throws: { error in
                (error as? FVDError)?.description.contains("unknown group") == true
            }
        }
        for spec in ["fail:rank=1:call=0:group=world", "fail:rank=1:call=0:group=tp0", "fail:rank=1:call=0:group=sp12",
            "fail:rank=1:call=0:group=dp3"]
        {
            #expect(throws: Never.self) { try Fault(parsing: spec) }
        }
        // A group index the world cannot have.
        #expect(throws: FVDError.invalidArgument("fault fail:rank=1:call=0:group=sp4 names group sp4, which a world of 4 does not have")) {
            try World.inProcess(size: 4, faults: [Fault(.fail, rank: 1, atCall: 0, group: "sp4")])
        }
        // One the layout does not have, or does not put the rank in: ParallelState refuses it on every rank.
        for (group, problem) in [("tp2", "has tp0...tp1"), ("tp1", "rank 1 is not in tp1 [2, 3]")] {
            let results = try World.inProcess(size: 4, timeout: 30, faults: [Fault(.fail, rank: 1, atCall: 0, group: group)])
                .runEach { world in _ = try ParallelState(world: world, tensorParallel: 2, sequenceParallel: 2) }
            for result in results {
                #expect { try result.get() } throws: { error in
                    (error as? FVDError)?.description.contains(problem) == true
                }
            }
        }
        // A group a program named itself can still be targeted in code.
        let results = try World.inProcess(size: 2, timeout: 30, faults: [Fault(.fail, rank: 1, atCall: 0, group: "pair")])
            .runEach { world in try world.subgroup(name: "pair", ranks: [0, 1]).barrier() }
        #expect(throws: FVDError.self) { try results[1].get() }
    }

    // MARK: Row 20: a timeout is positive or infinite

    @Test("a zero, negative or NaN timeout is refused; a tiny or infinite one is kept")
    func timeoutArgument() throws {
        for bad in [0, -1, Double.nan] {
            #expect(throws: FVDError.self) { try World.inProcess(size: 2, timeout: bad) }
        }
        #expect(try World.inProcess(size: 2, timeout: .infinity).timeout == .infinity)
        #expect(try World.inProcess(size: 2, timeout: 1e-9).timeout == 1e-9)
    }

    // MARK: Row 25: MASTER_ADDR must be this host for the shared-memory transport

    @Test("this host's names and addresses are recognized; others are not")
    func thisHost() throws {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        for address in ["127.0.0.1", "127.0.1.1", "localhost", "LOCALHOST", "::1", "[::1]", host] {
            #expect(isThisHost(address), "\(address)")
        }
        for address in ["198.51.100.7", "example.invalid", "2001:db8::1", "node-17"] {
            #expect(!isThisHost(address), "\(address)")
        }
        #expect(throws: (any Error).self) { try World.checkRendezvous(["MASTER_ADDR": "198.51.100.7"]) }
        #expect(throws: (any Error).self) { try World.checkRendezvous(["MASTER_PORT": "0"]) }
        #expect(throws: Never.self) { try World.checkRendezvous(["MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"]) }
        // FVD_SHM_NAME names the segment: MASTER_PORT is then not read.
        #expect(throws: Never.self) { try World.checkRendezvous(["MASTER_PORT": "x", "FVD_SHM_NAME": "/fvd-x"]) }
    }
}

