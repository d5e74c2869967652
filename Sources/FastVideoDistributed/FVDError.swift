/// The one error type of the library: every case carries the facts a user needs to act.
///
/// Ranks in messages are *world* ranks; a group is named by its label and members,
/// e.g. `tp0 [0, 1]`. Errors raised by a collective's argument checks are thrown on
/// every rank of the group alike, because the checks run after the ranks have
/// exchanged their call headers.
public enum FVDError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `tensorParallel`/`sequenceParallel` do not fit `worldSize`.
    case invalidLayout(worldSize: Int, tensorParallel: Int, sequenceParallel: Int)
    /// `dim` is outside `-ndim..<ndim` for a tensor with `ndim` dimensions.
    case invalidDimension(op: String, dim: Int, ndim: Int)
    /// An operation that needs a fixed number of dimensions got another.
    case wrongRank(op: String, expected: Int, shape: [Int])
    /// A `(scatterDim, gatherDim)` pair that the all-to-all does not implement.
    case unsupportedDimPair(op: String, scatterDim: Int, gatherDim: Int)
    /// A dimension that must split evenly over `parts` ranks does not.
    case indivisible(op: String, dim: Int, size: Int, parts: Int)
    /// Ranks of one group passed tensors of different shapes to the same call.
    case shapeMismatch(op: String, group: String, ranks: [Int], shapes: [[Int]])
    /// Ranks of one group passed tensors of different dtypes to the same call.
    case dtypeMismatch(op: String, group: String, ranks: [Int], dtypes: [DType])
    /// Ranks of one group called different collectives at the same point.
    case operationMismatch(group: String, ranks: [Int], operations: [String])
    /// Ranks agreed on the collective but passed different arguments (dim, root, op).
    case argumentMismatch(op: String, group: String, ranks: [Int], arguments: [String])
    /// Some ranks did not reach the collective within the timeout; `arrived` are those that did.
    case timeout(op: String, group: String, call: Int, arrived: [Int], missing: [Int], seconds: Double)
    /// Every rank arrived at the call, but `ranks` then made no progress for `seconds` in
    /// `phase` (stopped with SIGSTOP, frozen, stuck in a debugger) while the others waited.
    case stalled(op: String, group: String, call: Int, phase: String, ranks: [Int], seconds: Double)
    /// Another rank failed (its code threw or its collective failed); this rank cannot go on.
    case peerFailed(rank: Int, message: String)
    /// A rank finished or exited while the others still waited for it in a collective.
    case peerExited(rank: Int, op: String, group: String)
    /// The dtype cannot be used with this operation (e.g. `average` of integers).
    case unsupportedDType(op: String, dtype: DType, reason: String)
    /// A value passed in is out of range or inconsistent; the message names it.
    case invalidArgument(String)
    /// A tensor file could not be read or written.
    case file(path: String, problem: String)
    /// A module-level collective was called outside `ParallelState.withCurrent`.
    case noParallelState
    /// One group's coordinator was used from two threads at once.
    case concurrentUse(group: String)
    /// The transport's own machinery failed, e.g. an MPI call; the message is its own.
    case transportFailure(transport: String, message: String)

    public var description: String {
        switch self {
        case let .invalidLayout(w, tp, sp):
            return "invalid parallel layout: world size \(w), tensor parallel \(tp), sequence parallel \(sp); "
                + "both sizes must be >= 1 and divide the world size"
        case let .invalidDimension(op, dim, ndim):
            return "\(op): dim \(dim) is out of range for a tensor with \(ndim) dimension\(ndim == 1 ? "" : "s") "
                + "(valid: \(-ndim)...\(ndim - 1))"
        case let .wrongRank(op, expected, shape):
            return "\(op): expected a \(expected)-D tensor, got shape \(shape) (\(shape.count)-D)"
        case let .unsupportedDimPair(op, s, g):
            return "\(op): unsupported (scatter_dim, gather_dim) = (\(s), \(g)); supported pairs are (2, 1) and (1, 2)"
        case let .indivisible(op, dim, size, parts):
            return "\(op): dimension \(dim) has size \(size), which is not divisible by the group size \(parts)"
        case let .shapeMismatch(op, group, ranks, shapes):
            return "\(op) in group \(group): ranks passed different shapes: "
                + zip(ranks, shapes).map { "rank \($0) \($1)" }.joined(separator: ", ")
        case let .dtypeMismatch(op, group, ranks, dtypes):
            return "\(op) in group \(group): ranks passed different dtypes: "
                + zip(ranks, dtypes).map { "rank \($0) \($1)" }.joined(separator: ", ")
        case let .operationMismatch(group, ranks, ops):
            return "group \(group): ranks called different collectives at the same point: "
                + zip(ranks, ops).map { "rank \($0) \($1)" }.joined(separator: ", ")
        case let .argumentMismatch(op, group, ranks, args):
            return "\(op) in group \(group): ranks passed different arguments: "
                + zip(ranks, args).map { "rank \($0) (\($1))" }.joined(separator: ", ")
        case let .timeout(op, group, call, arrived, missing, seconds):
            return "\(op) in group \(group) (call #\(call)) timed out after \(formatSeconds(seconds)) s "
                + "waiting for \(rankList(missing)); \(arrived.isEmpty ? "no rank" : rankList(arrived)) arrived"
        case let .stalled(op, group, call, phase, ranks, seconds):
            return "\(op) in group \(group) (call #\(call)) timed out after \(formatSeconds(seconds)) s: \(rankList(ranks)) "
                + "arrived but made no progress since (\(phase)); stopped or frozen?"
        case let .peerFailed(rank, message):
            return "rank \(rank) failed: \(message)"
        case let .peerExited(rank, op, group):
            return "rank \(rank) exited while the others waited for it in \(op) in group \(group)"
        case let .unsupportedDType(op, dtype, reason):
            return "\(op): dtype \(dtype) is not supported: \(reason)"
        case let .invalidArgument(message):
            return message
        case let .file(path, problem):
            return "\(path): \(problem)"
        case .noParallelState:
            return "no parallel state: call the collective inside ParallelState.withCurrent { ... } "
                + "or use the ParallelState's methods directly"
        case let .transportFailure(transport, message):
            return "\(transport): \(message)"
        case let .concurrentUse(group):
            return "group \(group) was used from two threads at once; each rank must call its collectives in order from one thread"
        }
    }

    /// Whether this is ``peerExited(rank:op:group:)``: a peer left, this rank did nothing wrong.
    var isPeerExit: Bool {
        if case .peerExited = self { return true }
        return false
    }

    /// Whether this error means the group can no longer be used (a rank is gone or late),
    /// as opposed to a usage error that every rank saw alike.
    var breaksGroup: Bool {
        switch self {
        case .timeout, .stalled, .peerFailed, .peerExited, .concurrentUse, .transportFailure: return true
        default: return false
        }
    }
}

/// `rank 3` or `ranks 0, 2`.
private func rankList(_ ranks: [Int]) -> String {
    "rank\(ranks.count == 1 ? "" : "s") \(ranks.map(String.init).joined(separator: ", "))"
}

func formatSeconds(_ s: Double) -> String {
    s == s.rounded() ? String(Int(s)) : "\((s * 1000).rounded() / 1000)"
}
