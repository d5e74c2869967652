import FastVideoDistributed
import Foundation
import Testing

@testable import FVDCommandLine

// Issue 19, "ways a user's command ends badly": options, environment variables and
// signals that must end with one `error:` line, a non-zero status and nothing left behind.

/// ``runProgram(_:_:timeout:environment:when:_:)`` of fvd.
private func runFVD(
    _ arguments: [String], timeout: Double = 60, when ready: () -> Bool, _ whileRunning: (pid_t) -> Void
) throws -> (ran: Bool, result: ProcessResult) {
    try runProgram(try fvdExecutable(), arguments, timeout: timeout, when: ready, whileRunning)
}

/// A fresh input folder with `world` rank files of `count` float32 ones, and an output folder.
private func applyFolders(world: Int, count: Int) throws -> (input: URL, output: URL) {
    let input = try temporaryFolder("hardening-in"), output = try temporaryFolder("hardening-out")
    for rank in 0..<world {
        try Tensor(shape: [count], scalars: [Float](repeating: 1, count: count))
            .writeNPY(to: input.appendingPathComponent("rank\(rank).npy").path)
    }
    return (input, output)
}

@Suite("Hardening: options, environment and signals")
struct OptionsHardeningTests {
    // MARK: Row 16: apply's staging folder

    @Test("fvd apply stopped by SIGINT, SIGTERM or SIGHUP while it writes removes its staging folder and exits 128+signal",
        arguments: [SIGTERM, SIGINT, SIGHUP])
    func applySignalRemovesStaging(_ sig: Int32) throws {
        let (input, output) = try applyFolders(world: 4, count: 2 << 20)
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        let (ran, result) = try runFVD(
            ["apply", "tensor_model_parallel_all_gather", "--world-size", "4", "--inputs", input.path, "--outputs", output.path],
            when: { listing(output).contains { $0.hasPrefix(".fvd-staging-") } }
        ) { pid in kill(pid, sig) }
        try #require(ran, "the run ended before its staging folder was seen")
        #expect(result.status == 128 + sig, "\(result.stderr)")
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: stopped by SIG"), "\(result.stderr)")
        #expect(listing(output).isEmpty)
    }

    @Test("fvd apply --transport shm stopped by SIGTERM stops its ranks and removes its staging folder")
    func applyShmSignalRemovesStaging() throws {
        let (input, output) = try applyFolders(world: 2, count: 2 << 20)
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        let (ran, result) = try runFVD(
            ["apply", "tensor_model_parallel_all_gather", "--world-size", "2", "--transport", "shm",
             "--inputs", input.path, "--outputs", output.path],
            when: { listing(output).contains { $0.hasPrefix(".fvd-staging-") } }
        ) { pid in kill(pid, SIGTERM) }
        try #require(ran, "the run ended before its staging folder was seen")
        #expect(result.status == 128 + SIGTERM, "\(result.stderr)")
        #expect(result.stderr.contains("error: stopped by SIGTERM"), "\(result.stderr)")
        #expect(listing(output).isEmpty)
    }

    @Test("a staging folder whose process is gone is removed by the next run; a live one's is kept")
    func applySweepsDeadStaging() throws {
        let (input, output) = try applyFolders(world: 2, count: 4)
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        let fm = FileManager.default
        let host = hostNameForStaging()
        let dead = [".fvd-staging-2147483646-0A1B2C3D", ".fvd-staging-2147483646@\(host)-0A1B2C3E"]
        let kept = [".fvd-staging-\(getppid())-0A1B2C3F", ".fvd-staging-2147483646@another.host-0A1B2C40"]
        for name in dead + kept {
            try fm.createDirectory(at: output.appendingPathComponent(name), withIntermediateDirectories: false)
            try Data(count: 1000).write(to: output.appendingPathComponent("\(name)/rank0.npy"))
        }
        // A run killed while it moved outputs into place: its earlier output comes back.
        try fm.createDirectory(at: output.appendingPathComponent("\(dead[1])/previous"), withIntermediateDirectories: false)
        try Data("earlier".utf8).write(to: output.appendingPathComponent("\(dead[1])/previous/notes.txt"))
        let result = try runFVD(
            ["apply", "tensor_model_parallel_all_reduce", "--world-size", "2", "--inputs", input.path, "--outputs", output.path])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(listing(output) == (kept + ["notes.txt", "rank0.npy", "rank1.npy"]).sorted())
        #expect(stagingOwner(of: "\(stagingPrefix)12@h.x-0A1B2C3D")?.pid == 12)
        #expect(stagingOwner(of: "\(stagingPrefix)12@h.x-0A1B2C3D")?.host == "h.x")
        #expect(stagingOwner(of: "rank0.npy") == nil)
    }

    // MARK: Row 17: FVD_FAULTS

    @Test("FVD_FAULTS with an exit status over 255 or an unknown group is one error line", arguments: [
        ("exit=300:rank=1:call=0", "exit=300 is not an exit status in 0...255"),
        ("fail:rank=1:call=0:group=nosuch", "unknown group 'nosuch'"),
        ("fail:rank=1:call=0:group=tp1", "rank 1 is not in tp1 [2, 3]"),
    ])
    func faultsRefused(_ faults: String, _ problem: String) throws {
        let result = try runFVD(["demo"], environment: ["FVD_FAULTS": faults])
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: ") && result.stderr.contains(problem), "\(result.stderr)")
    }

    // MARK: Row 18: FVD_TENSOR_CACHE_MB

    @Test("FVD_TENSOR_CACHE_MB that is not a whole number of MiB is refused like FVD_TIMEOUT=abc",
        arguments: ["-5", "abc", "1.5", "", "99999999999999999999"])
    func tensorCacheRefused(_ value: String) throws {
        let result = try runFVD(["demo", "--world-size", "2", "--tp", "1", "--sp", "2"], environment: ["FVD_TENSOR_CACHE_MB": value])
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: FVD_TENSOR_CACHE_MB=\(value) is not a whole number of MiB"),
            "\(result.stderr)")
    }

    @Test("FVD_TENSOR_CACHE_MB=0 (no cache) and a number of MiB are accepted", arguments: ["0", "64"])
    func tensorCacheAccepted(_ value: String) throws {
        let result = try runFVD(["demo", "--world-size", "2", "--tp", "1", "--sp", "2"], environment: ["FVD_TENSOR_CACHE_MB": value])
        #expect(result.status == 0, "\(result.stderr)")
    }

    // MARK: Row 20: timeouts are positive or inf

    @Test("--timeout 0, negative or nan is a usage error on every command", arguments: [
        ["demo", "--timeout", "0"], ["demo", "--timeout", "-1"], ["demo", "--timeout", "nan"],
        ["apply", "tensor_model_parallel_all_reduce", "--world-size", "1", "--inputs", "a", "--outputs", "b", "--timeout", "0"],
        ["selftest", "--in-process", "2", "--timeout", "0"], ["launch", "-n", "1", "--timeout", "0", "--", "true"],
        ["launch", "-n", "1", "--timeout", "-2", "--", "true"],
    ])
    func zeroTimeoutRefused(_ arguments: [String]) throws {
        let result = try runFVD(arguments)
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: --timeout must be a positive number of seconds (or inf"),
            "\(result.stderr)")
    }

    @Test("FVD_TIMEOUT and FVD_JOIN_TIMEOUT of 0, -1 or a word are refused, naming the variable", arguments: [
        ("FVD_TIMEOUT", "0"), ("FVD_TIMEOUT", "-1"), ("FVD_TIMEOUT", "abc"), ("FVD_JOIN_TIMEOUT", "0"), ("FVD_JOIN_TIMEOUT", "soon"),
    ])
    func zeroTimeoutVariableRefused(_ variable: String, _ value: String) throws {
        // FVD_JOIN_TIMEOUT is read when a rank joins a shared-memory world: a world of one joins nothing.
        let arguments = variable == "FVD_TIMEOUT"
            ? ["demo", "--world-size", "2", "--tp", "1", "--sp", "2"]
            : ["launch", "-n", "2", "--no-prefix", "--", try fvdExecutable().path, "selftest", "--extras-only"]
        let result = try runFVD(arguments, timeout: 60, environment: [variable: value])
        #expect(result.status != 0)
        #expect(result.errorLines.contains("error: \(variable)=\(value) is not a positive number of seconds (or inf for no limit)"),
            "\(result.stderr)")
    }

    @Test("inf means no limit everywhere: --timeout inf, FVD_TIMEOUT=inf, fvd launch --timeout inf")
    func infiniteTimeouts() throws {
        var result = try runFVD(["demo", "--world-size", "2", "--tp", "1", "--sp", "2", "--timeout", "inf"])
        #expect(result.status == 0, "\(result.stderr)")
        result = try runFVD(["demo", "--world-size", "2", "--tp", "1", "--sp", "2"], environment: ["FVD_TIMEOUT": "inf"])
        #expect(result.status == 0, "\(result.stderr)")
        result = try runFVD(["launch", "-n", "2", "--timeout", "inf", "--", "/bin/sh", "-c", "echo $FVD_TIMEOUT"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.split(separator: "\n").sorted() == ["[r0] inf", "[r1] inf"])
    }

    // MARK: Row 19: FVD_FLIGHT_RECORDER_DIR that cannot be written

    @Test("FVD_FLIGHT_RECORDER_DIR naming a file or a read-only folder: one warning per rank naming the path and the reason")
    func flightRecorderUnwritable() throws {
        let folder = try temporaryFolder("hardening-recorder")
        defer {
            chmod(folder.appendingPathComponent("read-only").path, 0o755)
            try? FileManager.default.removeItem(at: folder)
        }
        let file = folder.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: file)
        let readOnly = folder.appendingPathComponent("read-only")
        try FileManager.default.createDirectory(at: readOnly, withIntermediateDirectories: false)
        chmod(readOnly.path, 0o555)
        // root writes into a read-only folder; /proc/1 refuses new files to everyone.
        let readOnlyPath = geteuid() == 0 ? "/proc/1" : readOnly.path
        for (directory, reason) in [(file.path, "\(file.path): is not a folder"), (file.path + "/sub", "\(file.path): is not a folder"),
            (readOnlyPath, "rank0.json: cannot create a temporary file in its directory")]
        {
            let result = try runFVD(["selftest", "--in-process", "2", "--fault", "fail:rank=1:call=3"],
                environment: ["FVD_FLIGHT_RECORDER_DIR": directory])
            #expect(result.status == 1)
            let warnings = result.errorLines.filter { $0.hasPrefix("warning: ") }
            #expect(warnings.count == 2, "\(result.stderr)")
            for rank in 0..<2 {
                #expect(warnings.filter { $0.hasPrefix("warning: rank \(rank): flight recorder not saved (FVD_FLIGHT_RECORDER_DIR=\(directory)): ") }.count == 1,
                    "\(result.stderr)")
            }
            #expect(warnings.contains { $0.contains(reason) }, "\(result.stderr)")
        }
    }

    // MARK: Row 21: bench sizes stay within -b…-e

    @Test("bench rows stay within -b…-e for every op, world size and dtype, one per size of the sweep", arguments: [
        (4, "float64", "4K", "4K", 1), (3, "float32", "1K", "64K", 7), (3, "float64", "1K", "64K", 7), (5, "bfloat16", "1K", "1M", 11),
    ] as [(Int, String, String, String, Int)])
    func benchSizesWithinRange(_ world: Int, _ dtype: String, _ b: String, _ e: String, _ rowsPerOp: Int) throws {
        var config = BenchConfiguration()
        config.worldSize = world
        config.dtype = try #require(DType(name: dtype))
        config.minBytes = try parseByteSize(b)
        config.maxBytes = try parseByteSize(e)
        for op in BenchOperation.allCases where op.hasSizes {
            let counts = config.inputCounts(for: op)
            #expect(counts.count == rowsPerOp, "\(op) at W=\(world): \(counts)")
            #expect(Set(counts).count == counts.count && counts == counts.sorted())
            for count in counts {
                let size = op.reportedBytes(inputBytes: count * config.dtype.byteSize, worldSize: world)
                #expect(size >= config.minBytes && size <= config.maxBytes, "\(op) W=\(world) \(dtype): \(size) B")
                #expect(op.usableCount(count, worldSize: world) == count)
                #expect(inputShape(op, count: count, worldSize: world).reduce(1, *) == count, "\(op) \(count)")
            }
        }
    }

    @Test("fvd bench --world-size 4 -b 4K -e 4K --dtype float64: every row is 4096 B, and the header says how sizes round")
    func benchTableWithinRange() throws {
        let result = try runFVD(["bench", "--world-size", "4", "-b", "4K", "-e", "4K", "--dtype", "float64", "--iters", "1", "--warmup", "0"])
        #expect(result.status == 0, "\(result.stderr)")
        let rows = result.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }
        #expect(rows.count == BenchOperation.allCases.count)
        for row in rows where !row.contains("barrier") {
            #expect(row.split(separator: " ").first == "4096", "\(row)")
        }
        #expect(result.stdout.contains("# sizes: -b 4096 to -e 4096 B"))
    }

    @Test("when no usable size lies within -b…-e, the op still gets one row, its nearest size")
    func benchSizesUnavoidable() throws {
        var config = BenchConfiguration()
        config.worldSize = 3
        config.dtype = .float64
        config.minBytes = 4
        config.maxBytes = 4
        #expect(config.inputCounts(for: .allReduce) == [1])
        #expect(config.inputCounts(for: .allToAll4D) == [3])
        config.minBytes = 1 << 10
        config.maxBytes = 1 << 10
        // 1024 B is not a multiple of 3 × 8: the largest usable size below it.
        #expect(config.inputCounts(for: .reduceScatter) == [126])
        // The all-to-all keeps FastVideo's head layout: 4 heads per rank, head dim 128 for powers of two.
        #expect(inputShape(.allToAll4D, count: 16 << 20, worldSize: 4) == [1, 8192, 16, 128])
        #expect(inputShape(.allToAll4D, count: 8184, worldSize: 3) == [1, 2, 12, 341])
        #expect(inputShape(.allToAll4D, count: 6, worldSize: 3) == [1, 1, 3, 2])
    }

    // MARK: Row 24: apply's outputs never replace its inputs; other-format files are named

    @Test("fvd apply refuses --outputs that is the --inputs folder, also through a symbolic link, on every transport",
        arguments: ["inprocess", "shm"])
    func applySameFolderRefused(_ transport: String) throws {
        let (input, output) = try applyFolders(world: 2, count: 4)
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        let link = output.appendingPathComponent("link")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: input)
        let before = try (0..<2).map { try Data(contentsOf: input.appendingPathComponent("rank\($0).npy")) }
        for outputs in [input.path, input.path + "/", link.path, input.path + "/../" + input.lastPathComponent] {
            let result = try runFVD(["apply", "tensor_model_parallel_all_reduce", "--world-size", "2", "--transport", transport,
                "--inputs", input.path, "--outputs", outputs])
            #expect(result.status == 1, "\(result.stderr)")
            #expect(result.errorLines.count == 1 && result.stderr.contains("are the same folder"), "\(result.stderr)")
        }
        #expect(listing(input) == ["rank0.npy", "rank1.npy"])
        #expect(try (0..<2).map { try Data(contentsOf: input.appendingPathComponent("rank\($0).npy")) } == before)
    }

    @Test("fvd apply names an earlier output in the other format that it replaces")
    func applyNotesReplacedOtherFormat() throws {
        let (input, output) = try applyFolders(world: 2, count: 4)
        defer {
            try? FileManager.default.removeItem(at: input)
            try? FileManager.default.removeItem(at: output)
        }
        try Data("stale".utf8).write(to: output.appendingPathComponent("rank1.safetensors"))
        try Data("stale".utf8).write(to: output.appendingPathComponent("rank0.npy"))
        let result = try runFVD(["apply", "tensor_model_parallel_all_reduce", "--world-size", "2", "--inputs", input.path, "--outputs", output.path])
        #expect(result.status == 0, "\(result.stderr)")
        // A same-named output is replaced quietly, as any rerun does; the other format is named.
        #expect(result.errorLines == ["note: replaced \(output.path)/rank1.safetensors by rank1.npy (an earlier output in the other format)"])
        #expect(listing(output) == ["rank0.npy", "rank1.npy"])
    }

    // MARK: Row 25: messages that point the right way

    @Test("negative numbers parse as values and get a range error naming the option", arguments: [
        (["launch", "-n", "-1", "--", "true"], "-n must be between 1 and 1024, got -1"),
        (["demo", "--world-size", "-1"], "--world-size -1: world size must be at least 1"),
        (["bench", "--world-size", "-1"], "--world-size -1: world size must be at least 1"),
        (["apply", "tensor_model_parallel_all_reduce", "--world-size", "-1", "--inputs", "a", "--outputs", "b"],
         "--world-size -1: world size must be at least 1"),
        (["bench", "-b", "-1M"], "-b: size '-1M' must be at least 1 byte"),
        (["bench", "-e", "-1"], "-e: size '-1' must be at least 1 byte"),
        (["demo", "--tp", "-1"], "tensor parallel -1"),
        (["demo", "--chunks", "-2"], "--chunks must be at least 1, got -2"),
    ] as [([String], String)])
    func negativeNumbers(_ arguments: [String], _ message: String) throws {
        let result = try runFVD(arguments)
        #expect(result.status != 0)
        #expect(!result.stderr.contains("Missing value"), "\(result.stderr)")
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: ") && result.stderr.contains(message), "\(result.stderr)")
    }

    @Test("each message names what the user typed", arguments: [
        (["demo", "--heads", "0"], [:], "--heads must be between 1 and 65536, got 0"),
        (["demo", "--heads", "1000000000000000000"], [:], "--heads must be between 1 and 65536"),
        (["demo", "--transport", "shm", "--world-size", "0"], [:], "--world-size 0: world size must be at least 1"),
        (["demo", "--world-size", "2000"], [:], "--world-size 2000: world size must be at most 1024"),
        (["selftest"], ["RANK": "0", "WORLD_SIZE": "2000"], "WORLD_SIZE=2000 is outside 1...1024"),
        (["selftest"], ["RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "../../etc/x"], "MASTER_PORT=../../etc/x is not a port number in 1...65535"),
        (["selftest"], ["RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "198.51.100.7", "MASTER_PORT": "29517"],
         "MASTER_ADDR=198.51.100.7 is not this host: the shared-memory transport needs every rank on this host"),
        (["help", "bogus"], [:], "no help for 'bogus': fvd has the commands demo, bench, plot, apply, launch"),
    ] as [([String], [String: String], String)])
    func messagesNameTheCause(_ arguments: [String], _ environment: [String: String], _ message: String) throws {
        let result = try runFVD(arguments, timeout: 30, environment: environment)
        #expect(result.status != 0)
        #expect(result.errorLines.count == 1 && result.stderr.hasPrefix("error: ") && result.stderr.contains(message), "\(result.stderr)")
        #expect(result.seconds < 20, "an error, not a wait")
    }

    @Test("fvd help bogus is a usage error (64); fvd help demo still shows the help")
    func helpTopics() throws {
        #expect(try runFVD(["help", "bogus"]).status == 64)
        let help = try runFVD(["help", "demo"])
        #expect(help.status == 0 && help.stdout.contains("OVERVIEW:"))
    }

    @Test("--plot takes .svg and .html in any case")
    func plotExtensionCase() throws {
        let folder = try temporaryFolder("hardening-plot")
        defer { try? FileManager.default.removeItem(at: folder) }
        for name in ["x.SVG", "y.Html"] {
            let file = folder.appendingPathComponent(name)
            let result = try runFVD(["bench", "--op", "all_reduce", "-b", "8", "-e", "16", "--iters", "1", "--warmup", "0", "--plot", file.path])
            #expect(result.status == 0, "\(result.stderr)")
            let text = try String(contentsOf: file, encoding: .utf8)
            #expect(name.hasSuffix("SVG") ? text.hasPrefix("<?xml") : text.contains("<html"), "\(text.prefix(80))")
        }
    }
}

