import FastVideoDistributed
import Foundation

/// One of the four seed operations, under FastVideo's snake_case name.
public enum ApplyOperation: String, CaseIterable, Sendable {
    case tensorModelParallelAllReduce = "tensor_model_parallel_all_reduce"
    case tensorModelParallelAllGather = "tensor_model_parallel_all_gather"
    case sequenceModelParallelAllGather = "sequence_model_parallel_all_gather"
    case sequenceModelParallelAllToAll4D = "sequence_model_parallel_all_to_all_4D"

    /// Whether the operation runs on the tensor-parallel group (else the sequence-parallel one).
    var usesTensorParallelGroup: Bool {
        self == .tensorModelParallelAllReduce || self == .tensorModelParallelAllGather
    }
}

/// Settings of one `fvd apply` run. Unset options take FastVideo's defaults.
public struct ApplyConfiguration: Sendable {
    public var operation: ApplyOperation
    public var worldSize: Int
    /// Tensor-parallel size; `nil` means `worldSize` for a TP operation and 1 otherwise.
    public var tensorParallel: Int?
    /// Sequence-parallel size; `nil` means `worldSize` for an SP operation and 1 otherwise.
    public var sequenceParallel: Int?
    /// All-gather dimension (default -1). Only for the all-gathers.
    public var dim: Int?
    /// All-to-all dimensions (default 2 and 1). Only for the all-to-all.
    public var scatterDim: Int?
    public var gatherDim: Int?
    /// Reduction (default sum). Only for the all-reduce.
    public var reduceOp: ReduceOp?
    public var inputDirectory: String
    public var outputDirectory: String
    /// Seconds a collective waits for its peers.
    public var timeout: Double = 60

    public init(operation: ApplyOperation, worldSize: Int, inputDirectory: String, outputDirectory: String) {
        self.operation = operation
        self.worldSize = worldSize
        self.inputDirectory = inputDirectory
        self.outputDirectory = outputDirectory
    }

    /// The group layout with the defaults filled in.
    public func layout() throws -> GroupLayout {
        let tp = tensorParallel ?? (operation.usesTensorParallelGroup ? worldSize : 1)
        let sp = sequenceParallel ?? (operation.usesTensorParallelGroup ? 1 : worldSize)
        return try GroupLayout(worldSize: worldSize, tensorParallel: tp, sequenceParallel: sp)
    }

    /// Throws when an option is given that the operation does not take, or when the
    /// output folder is the input folder (after following symbolic links: the same
    /// device and inode), whose files the outputs would replace.
    func checkOptions() throws {
        var input = stat(), output = stat()
        if stat(inputDirectory, &input) == 0, stat(outputDirectory, &output) == 0,
            input.st_dev == output.st_dev, input.st_ino == output.st_ino
        {
            throw FVDError.invalidArgument(
                "--inputs \(inputDirectory) and --outputs \(outputDirectory) are the same folder: the outputs would replace "
                    + "the inputs; choose another --outputs")
        }
        let name = operation.rawValue
        if dim != nil, operation == .tensorModelParallelAllReduce || operation == .sequenceModelParallelAllToAll4D {
            throw FVDError.invalidArgument("\(name) takes no --dim (use --scatter-dim/--gather-dim for the all-to-all)")
        }
        if scatterDim != nil || gatherDim != nil, operation != .sequenceModelParallelAllToAll4D {
            throw FVDError.invalidArgument("\(name) takes no --scatter-dim/--gather-dim")
        }
        if reduceOp != nil, operation != .tensorModelParallelAllReduce {
            throw FVDError.invalidArgument("\(name) takes no --op (only the all-reduce does)")
        }
    }
}

/// A rank's tensor file: which format it came in, so the output goes out the same way.
struct RankFile: Sendable {
    enum Format: Sendable {
        case npy
        /// The first tensor's name and the file's metadata, kept for the output.
        case safetensors(name: String, metadata: [String: String])
    }
    var format: Format
    var tensor: Tensor

    var isNPY: Bool {
        if case .npy = format { return true }
        return false
    }

    /// The file name for `rank` in this format.
    static func fileName(rank: Int, npy: Bool) -> String { "rank\(rank).\(npy ? "npy" : "safetensors")" }

    /// Reads `directory/rank{rank}.npy` or, if that is absent, `rank{rank}.safetensors` (first tensor).
    static func read(directory: String, rank: Int) throws -> RankFile {
        let npyPath = (directory as NSString).appendingPathComponent(fileName(rank: rank, npy: true))
        let stPath = (directory as NSString).appendingPathComponent(fileName(rank: rank, npy: false))
        let fm = FileManager.default
        switch (fm.fileExists(atPath: npyPath), fm.fileExists(atPath: stPath)) {
        case (true, true):
            throw FVDError.invalidArgument("rank \(rank) has two input files, \(npyPath) and \(stPath); keep one")
        case (true, false):
            return RankFile(format: .npy, tensor: try Tensor.readNPY(at: npyPath))
        case (false, true):
            let file = try SafeTensorsFile.read(at: stPath)
            guard let first = file.tensors.first else {
                throw FVDError.file(path: stPath, problem: "contains no tensors")
            }
            return RankFile(format: .safetensors(name: first.name, metadata: file.metadata), tensor: first.tensor)
        case (false, false):
            throw FVDError.file(path: npyPath, problem: "missing input for rank \(rank) (no rank\(rank).npy or rank\(rank).safetensors)")
        }
    }

    /// Writes `tensor` to `directory/rank{rank}.<this file's extension>` in this file's format
    /// (atomically, synced), and returns the file name.
    func write(_ tensor: Tensor, rank: Int, into directory: String) throws -> String {
        let name: String
        switch format {
        case .npy:
            name = Self.fileName(rank: rank, npy: true)
            try tensor.writeNPY(to: (directory as NSString).appendingPathComponent(name))
        case let .safetensors(tensorName, metadata):
            name = Self.fileName(rank: rank, npy: false)
            try SafeTensorsFile(tensors: [(name: tensorName, tensor: tensor)], metadata: metadata)
                .write(to: (directory as NSString).appendingPathComponent(name))
        }
        return name
    }
}

/// Runs `config.operation` on `worldSize` in-process ranks over the rank files in
/// `inputDirectory` and writes each rank's result to `outputDirectory/rank{r}.<same extension>`.
///
/// Every output is first written to a staging folder inside `outputDirectory` and moved
/// into place only after all of them were written, so a failure leaves no partial result.
/// - Returns: the paths written, in rank order.
public func runApply(_ config: ApplyConfiguration) throws -> [String] {
    let (layout, files, world) = try config.validatedInputs()
    let inputs = files.map(\.tensor)
    let outputs = try world.run { group in try config.apply(to: inputs[group.rank], on: group, layout: layout) }
    return try writeAllOrNothing(into: config.outputDirectory, superseding: config.otherFormatNames(files)) { staging in
        try zip(files, outputs).enumerated().map { rank, pair in try pair.0.write(pair.1, rank: rank, into: staging) }
    }
}

/// One rank of `fvd apply --transport mpi` (started by `mpirun`): every rank reads every
/// input (so a missing file fails on every rank alike, before any collective; the inputs
/// must be visible to every host), runs the operation on its own, and sends its result to
/// rank 0, which writes them all or none, as ``runApply(_:)`` does.
/// - Returns: the paths written on rank 0, `nil` on the others.
func runApplyOverMPI(_ config: ApplyConfiguration, world: ProcessWorld) throws -> [String]? {
    try config.checkOptions()
    let layout = try config.layout()
    let files = try (0..<config.worldSize).map { try RankFile.read(directory: config.inputDirectory, rank: $0) }
    let gathered = try world.run { group -> Tensor? in
        let output = try config.apply(to: files[group.rank].tensor, on: group, layout: layout)
        return try group.gather(output.reshaped([1] + output.shape), to: 0, dim: 0)
    }[0]
    guard let gathered else { return nil }
    let outputs = try (0..<config.worldSize).map { rank in
        var output = try Tensor(zeros: Array(gathered.shape.dropFirst()), dtype: gathered.dtype)
        output.withUnsafeMutableBytes { out in
            gathered.withUnsafeBytes { all in
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[(rank * out.count)..<((rank + 1) * out.count)]))
            }
        }
        return output
    }
    return try writeAllOrNothing(into: config.outputDirectory, superseding: config.otherFormatNames(files)) { staging in
        try zip(files, outputs).enumerated().map { rank, pair in try pair.0.write(pair.1, rank: rank, into: staging) }
    }
}

/// `fvd apply --transport shm`, outside a launcher: checks everything, then runs the
/// same command as `worldSize` processes (``runApplyAsRank(_:staging:)``), which write
/// into one staging folder; the outputs are moved into place only if every rank succeeded.
/// - Returns: the paths written, in rank order.
func runApplyAsProcesses(_ config: ApplyConfiguration, relaunch: (_ staging: String) throws -> Int32) throws -> [String] {
    let (_, files, _) = try config.validatedInputs()
    return try writeAllOrNothing(into: config.outputDirectory, superseding: config.otherFormatNames(files)) { staging in
        let status = try relaunch(staging)
        guard status == 0 else { throw ApplyRanksFailed(status: status) }
        return files.enumerated().map { rank, file in RankFile.fileName(rank: rank, npy: file.isNPY) }
    }
}

/// The ranks of a multi-process `fvd apply` failed; they printed why.
struct ApplyRanksFailed: Error {
    var status: Int32
}

/// One rank of `fvd apply --transport shm`: reads its own file, runs the operation on
/// the world from the environment, and writes its result into `staging`.
func runApplyAsRank(_ config: ApplyConfiguration, staging: String) throws {
    try config.checkOptions()
    let layout = try config.layout()
    let world = try World.fromEnvironment(timeout: config.timeout)
    guard world.size == config.worldSize else {
        throw FVDError.invalidArgument("--world-size \(config.worldSize) differs from WORLD_SIZE=\(world.size)")
    }
    let file = try RankFile.read(directory: config.inputDirectory, rank: world.rank)
    let output = try world.run { group in try config.apply(to: file.tensor, on: group, layout: layout) }[0]
    _ = try file.write(output, rank: world.rank, into: staging)
}

extension ApplyConfiguration {
    /// The checked options and layout, every rank's file (read, so that a missing or
    /// unreadable file is reported before any rank runs), and the in-process world of
    /// `worldSize` ranks (which also checks the size and timeout).
    func validatedInputs() throws -> (GroupLayout, [RankFile], InProcessWorld) {
        try checkOptions()
        let layout = try layout()
        let world = try World.inProcess(size: worldSize, timeout: timeout)
        let files = try (0..<worldSize).map { try RankFile.read(directory: inputDirectory, rank: $0) }
        return (layout, files, world)
    }

    /// The operation on one rank's tensor, with `world` the world group.
    func apply(to x: Tensor, on world: GroupCoordinator, layout: GroupLayout) throws -> Tensor {
        let state = try ParallelState(
            world: world, tensorParallel: layout.tensorParallelSize, sequenceParallel: layout.sequenceParallelSize)
        switch operation {
        case .tensorModelParallelAllReduce:
            return try state.tensorModelParallelAllReduce(x, op: reduceOp ?? .sum)
        case .tensorModelParallelAllGather:
            return try state.tensorModelParallelAllGather(x, dim: dim ?? -1)
        case .sequenceModelParallelAllGather:
            return try state.sequenceModelParallelAllGather(x, dim: dim ?? -1)
        case .sequenceModelParallelAllToAll4D:
            return try state.sequenceModelParallelAllToAll4D(x, scatterDim: scatterDim ?? 2, gatherDim: gatherDim ?? 1)
        }
    }

    /// Each rank's output name in the format it does not use: an earlier run's output there
    /// would make the folder ambiguous as input.
    func otherFormatNames(_ files: [RankFile]) -> [String] {
        files.enumerated().map { rank, file in RankFile.fileName(rank: rank, npy: !file.isNPY) }
    }
}

/// Writes a set of files into `directory`, all or none: `write` puts them in a staging
/// folder inside `directory` and returns their names; they are moved into place only
/// after every one was written. Files they replace, and the files named in `superseding`
/// (e.g. the other format's output of the same rank), are moved aside first and put
/// back if any move fails, so the folder ends with the whole new set or as it was. Each
/// file of `superseding` that was there is named on stderr (`note: replaced DIR/rank1.safetensors
/// by rank1.npy …`): unlike a same-named output, the user may not expect it to go. The
/// staging folder is removed on every path: on SIGINT, SIGTERM or SIGHUP too (the process
/// then exits with status 128 + the signal's number; a signal that arrives while files
/// are moved into place waits until the move is done). A staging folder whose run could
/// not remove it (SIGKILL) is removed by the next run into the same folder.
/// - Returns: the final paths.
func writeAllOrNothing(
    into directory: String, superseding: [String] = [], _ write: (_ staging: String) throws -> [String]
) throws -> [String] {
    let fm = FileManager.default
    do {
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
    } catch {
        throw FVDError.file(path: directory, problem: "cannot create the output folder: \(error.localizedDescription)")
    }
    sweepDeadStagingFolders(in: directory)
    let staging = (directory as NSString).appendingPathComponent(stagingFolderName())
    let signalMask = registerStagingFolder(staging)
    defer {
        try? fm.removeItem(atPath: staging)
        unregisterStagingFolder(staging, restoring: signalMask)
    }
    do {
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: false)
    } catch {
        throw FVDError.file(path: directory, problem: "cannot write in the output folder: \(error.localizedDescription)")
    }
    let names = try write(staging)
    let path = { (folder: String, name: String) in (folder as NSString).appendingPathComponent(name) }
    for name in names + superseding {
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: path(directory, name), isDirectory: &isDirectory), isDirectory.boolValue {
            throw FVDError.file(path: path(directory, name), problem: "is a directory; cannot replace it with an output file")
        }
    }
    let aside = path(staging, "previous")
    try? fm.createDirectory(atPath: aside, withIntermediateDirectories: false)
    var movedAside: [String] = [], placed: [String] = []
    try withSignalsHeldBack {
        do {
            for name in names + superseding where fm.fileExists(atPath: path(directory, name)) {
                try move(path(directory, name), to: path(aside, name))
                movedAside.append(name)
            }
            for name in names {
                try move(path(staging, name), to: path(directory, name))
                placed.append(name)
            }
        } catch {
            for name in placed { unlink(path(directory, name)) }
            for name in movedAside { rename(path(aside, name), path(directory, name)) }
            throw error
        }
    }
    // A file of another name that the new set replaces is worth a word: the user may not expect it.
    for name in superseding where movedAside.contains(name) {
        let stem = (name as NSString).deletingPathExtension
        let by = names.first { ($0 as NSString).deletingPathExtension == stem }.map { " by \($0)" } ?? ""
        writeError("note: replaced \(path(directory, name))\(by) (an earlier output in the other format)\n")
    }
    return names.map { path(directory, $0) }
}

/// `rename(2)` with the library's error.
private func move(_ source: String, to destination: String) throws {
    guard rename(source, destination) == 0 else {
        throw FVDError.file(path: source, problem: "cannot move to \(destination): \(String(cString: strerror(errno)))")
    }
}
