import FastVideoDistributed
import Foundation
import Testing

@testable import FVDCommandLine

/// The fixture cases: inputs, FastVideo's outputs (numpy emulation of its code) and the arguments.
private let fixtureRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures/apply")
private let fixtureCases = listing(fixtureRoot).filter { !$0.hasSuffix(".py") }

@Suite("fvd apply")
struct ApplyTests {
    @Test("outputs equal FastVideo's byte for byte", arguments: fixtureCases)
    func matchesFastVideo(_ name: String) throws {
        let folder = fixtureRoot.appendingPathComponent(name)
        let args = try String(contentsOf: folder.appendingPathComponent("args"), encoding: .utf8)
            .split(whereSeparator: \.isWhitespace).map(String.init)
        let output = try temporaryFolder("apply-\(name)")
        defer { try? FileManager.default.removeItem(at: output) }
        let result = try runFVD(["apply"] + args + ["--inputs", folder.appendingPathComponent("in").path, "--outputs", output.path])
        #expect(result.status == 0, "\(result.stderr)")
        let expected = listing(folder.appendingPathComponent("expected"))
        #expect(!expected.isEmpty)
        #expect(listing(output) == expected)
        for file in expected {
            let want = try Data(contentsOf: folder.appendingPathComponent("expected/\(file)"))
            let got = try Data(contentsOf: output.appendingPathComponent(file))
            #expect(got == want, "\(name)/\(file) differs from FastVideo's output")
        }
    }

    @Test("each operation on random files equals the same operation run in the library", arguments: ApplyOperation.allCases)
    func matchesLibrary(_ operation: ApplyOperation) throws {
        let world = 4
        let input = try temporaryFolder("apply-in"), output = try temporaryFolder("apply-out")
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        var rng = UInt64(operation.rawValue.utf8.count)
        let tensors = try (0..<world).map { rank -> Tensor in
            let values = (0..<(2 * 4 * 8 * 3)).map { _ -> Float in
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                return Float(Int64(bitPattern: rng >> 40) % 1000) / 7
            }
            let t = try Tensor(shape: [2, 4, 8, 3], scalars: values)
            try t.writeNPY(to: input.appendingPathComponent("rank\(rank).npy").path)
            return t
        }
        let result = try runFVD(["apply", operation.rawValue, "--world-size", "\(world)", "--inputs", input.path, "--outputs", output.path])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("wrote 4 files"))
        let expected = try World.inProcess(size: world).run { group -> Tensor in
            let state = try ParallelState(
                world: group, tensorParallel: operation.usesTensorParallelGroup ? world : 1,
                sequenceParallel: operation.usesTensorParallelGroup ? 1 : world)
            let x = tensors[group.rank]
            switch operation {
            case .tensorModelParallelAllReduce: return try state.tensorModelParallelAllReduce(x)
            case .tensorModelParallelAllGather: return try state.tensorModelParallelAllGather(x)
            case .sequenceModelParallelAllGather: return try state.sequenceModelParallelAllGather(x)
            case .sequenceModelParallelAllToAll4D: return try state.sequenceModelParallelAllToAll4D(x)
            }
        }
        for rank in 0..<world {
            let got = try Tensor.readNPY(at: output.appendingPathComponent("rank\(rank).npy").path)
            #expect(got == expected[rank])
        }
    }

    /// Writes rank files with the given shapes (float32 zeros) and runs `fvd apply` on them.
    private func failingRun(
        shapes: [[Int]], _ arguments: [String], prepare: (_ input: URL, _ output: URL) throws -> Void = { _, _ in }
    ) throws -> (result: ProcessResult, outputListing: [String]) {
        let input = try temporaryFolder("apply-in"), output = try temporaryFolder("apply-out")
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        for (rank, shape) in shapes.enumerated() {
            try Tensor(zeros: shape, dtype: .float32).writeNPY(to: input.appendingPathComponent("rank\(rank).npy").path)
        }
        try prepare(input, output)
        let result = try runFVD(["apply"] + arguments + ["--inputs", input.path, "--outputs", output.path], timeout: 20)
        return (result, listing(output))
    }

    @Test(
        "every problem is one line on stderr, a non-zero exit, and no output file",
        arguments: [
            // (shapes, arguments, words the message must contain)
            ([[2, 4, 8, 3], [2, 4, 8, 3]], ["sequence_model_parallel_all_to_all_4D", "--world-size", "3"],
             ["rank2.npy", "missing input for rank 2"]),
            ([[2, 4], [2, 5], [2, 4], [2, 4]], ["tensor_model_parallel_all_gather", "--world-size", "4"],
             ["different shapes", "rank 0 [2, 4]", "rank 1 [2, 5]"]),
            ([[2, 4], [2, 4]], ["tensor_model_parallel_all_gather", "--world-size", "2", "--dim", "2"],
             ["dim 2 is out of range", "2 dimensions"]),
            ([[2, 4], [2, 4]], ["sequence_model_parallel_all_gather", "--world-size", "2", "--dim", "-3"],
             ["dim -3 is out of range"]),
            ([[2, 4, 8, 3], [2, 4, 8, 3]], ["tensor_model_parallel_all_reduce", "--world-size", "2", "--tp", "3"],
             ["invalid parallel layout", "world size 2", "tensor parallel 3"]),
            ([[2, 4, 8, 3], [2, 4, 8, 3]], ["tensor_model_parallel_all_reduce", "--world-size", "0"],
             ["--world-size 0", "world size must be at least 1"]),
            ([[2, 4, 6, 3], [2, 4, 6, 3], [2, 4, 6, 3], [2, 4, 6, 3]], ["sequence_model_parallel_all_to_all_4D", "--world-size", "4"],
             ["dimension 2 has size 6", "not divisible by the group size 4"]),
            ([[2, 4, 8], [2, 4, 8]], ["sequence_model_parallel_all_to_all_4D", "--world-size", "2"],
             ["expected a 4-D tensor", "[2, 4, 8]"]),
            ([[2, 4, 8, 3], [2, 4, 8, 3]], ["sequence_model_parallel_all_to_all_4D", "--world-size", "2", "--scatter-dim", "3", "--gather-dim", "1"],
             ["unsupported (scatter_dim, gather_dim) = (3, 1)"]),
            ([[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2", "--dim", "0"],
             ["takes no --dim"]),
            ([[4], [4]], ["tensor_model_parallel_all_gather", "--world-size", "2", "--op", "max"],
             ["takes no --op"]),
            ([[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2", "--op", "median"],
             ["unknown --op 'median'"]),
            ([[4], [4]], ["all_reduce", "--world-size", "2"],
             ["unknown operation 'all_reduce'", "tensor_model_parallel_all_reduce"]),
            ([[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2", "--transport", "nccl"],
             ["unknown transport 'nccl'; use 'inprocess', 'shm' or 'mpi'"]),
            ([[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2", "--transport", "mpi"],
             [mpiUnavailableOrNotUnderMPIRun]),
        ] as [([[Int]], [String], [String])]
    )
    func failsCleanly(_ shapes: [[Int]], _ arguments: [String], _ words: [String]) throws {
        let (result, outputs) = try failingRun(shapes: shapes, arguments)
        #expect(result.status != 0)
        #expect(result.errorLines.count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("error: "))
        for word in words { #expect(result.stderr.contains(word), "'\(word)' not in: \(result.stderr)") }
        #expect(outputs.isEmpty, "output folder has \(outputs)")
        #expect(result.seconds < 20)
    }

    @Test("unreadable, ambiguous and blocked files are errors that name the file")
    func fileProblems() throws {
        // A truncated .npy.
        var (result, outputs) = try failingRun(shapes: [[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2"]) {
            input, _ in try Data([0x93, 0x4E, 0x55]).write(to: input.appendingPathComponent("rank1.npy"))
        }
        #expect(result.status != 0 && result.errorLines.count == 1)
        #expect(result.stderr.contains("rank1.npy"), "\(result.stderr)")
        #expect(outputs.isEmpty)
        // Both formats for one rank.
        (result, outputs) = try failingRun(shapes: [[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2"]) {
            input, _ in
            try SafeTensorsFile(tensors: [(name: "x", tensor: try Tensor(zeros: [4], dtype: .float32))])
                .write(to: input.appendingPathComponent("rank0.safetensors").path)
        }
        #expect(result.status != 0 && result.stderr.contains("two input files"), "\(result.stderr)")
        #expect(outputs.isEmpty)
        // An output name taken by a folder: nothing is moved into place, not even rank 0.
        (result, outputs) = try failingRun(shapes: [[4], [4]], ["tensor_model_parallel_all_reduce", "--world-size", "2"]) {
            _, output in try FileManager.default.createDirectory(at: output.appendingPathComponent("rank1.npy"), withIntermediateDirectories: false)
        }
        #expect(result.status != 0 && result.stderr.contains("rank1.npy: is a directory"), "\(result.stderr)")
        #expect(outputs == ["rank1.npy"])
    }

    @Test("a failed move puts every replaced file back and leaves no new one")
    func rollsBack() throws {
        let folder = try temporaryFolder("rollback")
        defer { try? FileManager.default.removeItem(at: folder) }
        try Data("old".utf8).write(to: folder.appendingPathComponent("a"))
        #expect(throws: FVDError.self) {
            _ = try writeAllOrNothing(into: folder.path, superseding: ["b"]) { staging in
                try Data("new".utf8).write(to: URL(fileURLWithPath: staging).appendingPathComponent("a"))
                return ["a", "never-written"]  // the second move fails
            }
        }
        #expect(listing(folder) == ["a"])
        #expect(try String(contentsOf: folder.appendingPathComponent("a"), encoding: .utf8) == "old")
    }

    @Test("a rerun replaces earlier outputs, including a rank's output in the other format")
    func replacesEarlierOutputs() throws {
        let input = try temporaryFolder("apply-in"), output = try temporaryFolder("apply-out")
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        for rank in 0..<2 {
            try Tensor([Float(rank + 1), 2]).writeNPY(to: input.appendingPathComponent("rank\(rank).npy").path)
        }
        try Data("stale".utf8).write(to: output.appendingPathComponent("rank0.npy"))
        try Data("stale".utf8).write(to: output.appendingPathComponent("rank1.safetensors"))
        var config = ApplyConfiguration(
            operation: .tensorModelParallelAllReduce, worldSize: 2, inputDirectory: input.path, outputDirectory: output.path)
        config.timeout = 10
        _ = try runApply(config)
        #expect(listing(output) == ["rank0.npy", "rank1.npy"])
        #expect(try Tensor.readNPY(at: output.appendingPathComponent("rank0.npy").path) == Tensor([Float(3), 4]))
    }

    @Test("usage errors are one line too", arguments: [
        ["apply", "tensor_model_parallel_all_reduce", "--inputs", "a", "--outputs", "b"],
        ["apply", "tensor_model_parallel_all_reduce", "--world-size", "two", "--inputs", "a", "--outputs", "b"],
        ["bench", "--no-such-flag"],
    ])
    func usageErrors(_ arguments: [String]) throws {
        let result = try runFVD(arguments, timeout: 20)
        #expect(result.status == 64)
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: "), "\(result.stderr)")
    }
}
