import CFVDShims

/// The collective a rank calls, as a code in its call header; the readable name is
/// built only where a person reads it (errors, logs, the flight recorder).
enum CollectiveOp: UInt8, Sendable, CaseIterable {
    case allReduce, allGather, tensorModelParallelAllGather, sequenceModelParallelAllGather, allGatherInPlace
    case allGatherWithUnpad, reduceScatter, gather, broadcast, barrier, allToAll4D, send, recv, recvInPlace, broadcastInPlace
    case broadcastObject, broadcastTensorDict, gatherVJP
    case ringPass, haloExchange
    /// A header that cannot be any real call (``Fault/Action/corruptHeader``).
    case corrupt

    /// The name the caller knows, e.g. `tensor_model_parallel_all_gather`.
    var name: String {
        switch self {
        case .allReduce: return "all_reduce"
        case .allGather: return "all_gather"
        case .tensorModelParallelAllGather: return "tensor_model_parallel_all_gather"
        case .sequenceModelParallelAllGather: return "sequence_model_parallel_all_gather"
        case .allGatherInPlace: return "all_gather_in_place"
        case .allGatherWithUnpad: return "all_gather_with_unpad"
        case .reduceScatter: return "reduce_scatter"
        case .gather: return "gather"
        case .broadcast: return "broadcast"
        case .barrier: return "barrier"
        case .allToAll4D: return "all_to_all_4D"
        case .send: return "send"
        case .recv: return "recv"
        case .recvInPlace: return "recv_in_place"
        case .broadcastInPlace: return "broadcast_in_place"
        case .broadcastObject: return "broadcast_object"
        case .broadcastTensorDict: return "broadcast_tensor_dict"
        case .gatherVJP: return "gather_vjp"
        case .ringPass: return "ring_pass"
        case .haloExchange: return "halo_exchange"
        case .corrupt: return "<corrupt header>"
        }
    }

    /// What ranks must agree on: the underlying collective (`send` and `recv` are one
    /// transfer; the module-level all-gathers are all-gathers).
    var kind: CollectiveKind {
        switch self {
        case .allReduce: return .allReduce
        case .allGather, .tensorModelParallelAllGather, .sequenceModelParallelAllGather: return .allGather
        case .allGatherInPlace: return .allGatherInPlace
        case .allGatherWithUnpad: return .allGatherWithUnpad
        case .reduceScatter: return .reduceScatter
        case .gather: return .gather
        case .broadcast: return .broadcast
        case .barrier: return .barrier
        case .allToAll4D: return .allToAll4D
        case .send, .recv, .recvInPlace: return .sendRecv
        case .broadcastInPlace: return .broadcast
        case .broadcastObject, .broadcastTensorDict, .gatherVJP: return .broadcastAny
        case .ringPass: return .ringPass
        case .haloExchange: return .haloExchange
        case .corrupt: return .corrupt
        }
    }

    /// The arguments as the error of a disagreement shows them, e.g. `dim=1, op=sum`.
    /// `members` are the channel's world ranks (a transfer names its sender).
    func describe(arguments a: [Int], members: [Int]) -> String {
        func at(_ i: Int) -> Int? { i < a.count ? a[i] : nil }
        func text(_ i: Int) -> String { at(i).map(String.init) ?? "?" }
        func reduceOp(_ i: Int) -> String {
            at(i).flatMap { ReduceOp.allCases.indices.contains($0) ? ReduceOp.allCases[$0].rawValue : nil } ?? text(i)
        }
        switch kind {
        case .allReduce: return "op=\(reduceOp(0))"
        case .allGather, .allGatherInPlace: return "dim=\(text(0))"
        case .allGatherWithUnpad: return "dim=\(text(0)), original_length=\(text(1))"
        case .reduceScatter: return "dim=\(text(0)), op=\(reduceOp(1))"
        case .gather: return "dim=\(text(0)), root=\(text(1))"
        case .broadcast, .broadcastAny: return "root=\(text(0))"
        case .sendRecv:
            let sender = at(0).flatMap { members.indices.contains($0) ? members[$0] : nil }
            return "from rank \(sender.map(String.init) ?? text(0))"
        case .allToAll4D: return AllToAllSplit.describe(arguments: a)
        case .ringPass: return at(0) == 1 ? "reverse" : "forward"
        case .haloExchange: return "dim=\(text(0)), width=\(text(1)), periodic=\(at(2) == 1)"
        case .barrier, .corrupt: return a.map(String.init).joined(separator: ", ")
        }
    }
}

/// The collective underneath a ``CollectiveOp``: what every member's header must name.
enum CollectiveKind: UInt8, Sendable {
    case allReduce, allGather, allGatherInPlace, allGatherWithUnpad, reduceScatter, gather, broadcast, barrier
    case allToAll4D, sendRecv, broadcastAny, corrupt, ringPass, haloExchange

    /// Only the sending rank's header describes the data (its shape and dtype travel with
    /// it), so the others' shapes and dtypes are not compared. The first argument is the
    /// sender's index in the channel.
    var dataTravels: Bool { self == .sendRecv || self == .broadcastAny }
    /// Ranks may pass different shapes (the uneven all-to-all, a ring pass, the shards of a
    /// halo exchange): the body checks every member's shape, so the error is the same on
    /// every rank.
    var comparesShapes: Bool { !dataTravels && self != .allToAll4D && self != .ringPass && self != .haloExchange }
}

extension DType {
    /// A one-byte code for call headers.
    var code: UInt8 {
        switch self {
        case .float32: return 0
        case .float64: return 1
        case .float16: return 2
        case .bfloat16: return 3
        case .int8: return 4
        case .int16: return 5
        case .int32: return 6
        case .int64: return 7
        case .uint8: return 8
        case .bool: return 9
        }
    }

    /// The dtype of a header's code (an unknown code reads as `uint8`).
    init(code: UInt8) {
        switch code {
        case 0: self = .float32
        case 1: self = .float64
        case 2: self = .float16
        case 3: self = .bfloat16
        case 4: self = .int8
        case 5: self = .int16
        case 6: self = .int32
        case 7: self = .int64
        case 9: self = .bool
        default: self = .uint8
        }
    }
}

/// One member's record of one call: its header, and its input itself when that is small.
///
/// The first 48 bytes are all a peer reads to check a call: the arrival word (written
/// last), a 64-bit signature of everything the ranks must agree on, the codes, and where
/// the data is. Small inputs travel inline right after them (NCCL's LL idea: the data
/// comes with the header, so one rendezvous ends the call), the first 16 bytes in the
/// header's own cache line; larger ones are read in place at the published address. The
/// full shape and arguments follow the payload, read only by collectives that need a
/// peer's shape (all-to-all, receive) and by error messages.
///
/// Layout (bytes): `0` arrival (`call + 1`), `8` signature, `16` op, `17` dtype, `20` ndim
/// (u16), `22` argument count (u16), `24` inline payload bytes (-1: read in place), `32`
/// input address, `40` output address, `48` payload, then the shape (``maxDims`` Int64)
/// and the arguments (``maxArguments`` Int64).
///
/// Invariant: `base` points to ``byteCount`` bytes that outlive the view.
struct CallSlot {
    let base: UnsafeMutableRawPointer

    static let headerBytes = 48
    /// Inputs of at most this many bytes travel inline.
    static let payloadCapacity = 8 << 10
    static let maxDims = 64
    static let maxArguments = 128
    static let shapeOffset = headerBytes + payloadCapacity
    static let argumentsOffset = shapeOffset + maxDims * 8
    /// A multiple of the cache line, so slots do not share lines.
    static let byteCount = (argumentsOffset + maxArguments * 8 + 63) / 64 * 64
    /// The output address of a call without one.
    static let noOutput = UInt64.max
    /// `payloadBytes` of a member whose data is read in place.
    static let inPlace = -1

    init(_ base: UnsafeMutableRawPointer) { self.base = base }

    /// `call + 1` once the member published call `call` (0: never).
    var arrivalWord: UnsafeMutablePointer<UInt64> { base.assumingMemoryBound(to: UInt64.self) }

    private func field<T>(_ offset: Int, _: T.Type) -> T { base.load(fromByteOffset: offset, as: T.self) }
    private func set<T>(_ offset: Int, _ value: T) { base.storeBytes(of: value, toByteOffset: offset, as: T.self) }

    var signature: UInt64 {
        get { field(8, UInt64.self) }
        nonmutating set { set(8, newValue) }
    }
    var op: CollectiveOp { CollectiveOp(rawValue: field(16, UInt8.self)) ?? .corrupt }
    var dtype: DType { DType(code: field(17, UInt8.self)) }
    var ndim: Int { Int(field(20, UInt16.self)) }
    var argumentCount: Int { Int(field(22, UInt16.self)) }
    /// Bytes of input inline in ``payload``, or ``inPlace``.
    var payloadBytes: Int { Int(field(24, Int64.self)) }
    var isInline: Bool { payloadBytes >= 0 }
    var inputAddress: UInt64 { field(32, UInt64.self) }
    var outputAddress: UInt64 { field(40, UInt64.self) }
    var payload: UnsafeMutableRawPointer { base + Self.headerBytes }

    /// The stored dimensions (all of them up to ``maxDims``).
    var shape: [Int] {
        let stored = min(ndim, Self.maxDims)
        return (0..<stored).map { Int(field(Self.shapeOffset + $0 * 8, Int64.self)) }
    }
    /// The stored arguments (all of them up to ``maxArguments``).
    var arguments: [Int] {
        let stored = min(argumentCount, Self.maxArguments)
        return (0..<stored).map { Int(field(Self.argumentsOffset + $0 * 8, Int64.self)) }
    }
    func dimension(_ i: Int) -> Int { Int(field(Self.shapeOffset + i * 8, Int64.self)) }
    func argument(_ i: Int) -> Int { Int(field(Self.argumentsOffset + i * 8, Int64.self)) }

    /// The shape of the data the header describes, or an error if it is impossible (more
    /// dimensions than a header holds, or too large).
    func dataShape() throws -> [Int] {
        guard ndim <= Self.maxDims else {
            throw FVDError.invalidArgument("\(op.name): a tensor of \(ndim) dimensions; a transfer carries at most \(Self.maxDims)")
        }
        let shape = shape
        _ = try Tensor.elementCount(of: shape)
        return shape
    }

    /// The bytes of the data the header describes, or an error as ``dataShape()``.
    func byteCount() throws -> Int { try Tensor.elementCount(of: dataShape()) * dtype.byteSize }

    /// Whether the header's shape is `shape` (compared in place, without building an array).
    func hasShape(_ shape: [Int]) -> Bool {
        guard ndim == shape.count, ndim <= Self.maxDims else { return false }
        for (i, d) in shape.enumerated() where dimension(i) != d { return false }
        return true
    }

    /// Writes everything but the arrival word and the payload.
    func write(
        op: CollectiveOp, dtype: DType, shape: [Int], arguments: ArgumentList, payloadBytes: Int, input: UInt64,
        output: UInt64
    ) {
        set(16, op.rawValue)
        set(17, dtype.code)
        set(20, UInt16(clamping: shape.count))
        set(22, UInt16(clamping: arguments.count))
        set(24, Int64(payloadBytes))
        set(32, input)
        set(40, output)
        let kind = op.kind
        var hasher = SignatureHasher()
        hasher.mix(UInt64(kind.rawValue))
        hasher.mix(UInt64(arguments.count))
        if !kind.dataTravels { hasher.mix(UInt64(dtype.code)) }
        let compareShape = kind.comparesShapes
        if compareShape { hasher.mix(UInt64(shape.count)) }
        for (i, d) in shape.enumerated() {
            if i < Self.maxDims { set(Self.shapeOffset + i * 8, Int64(d)) }
            if compareShape { hasher.mix(UInt64(bitPattern: Int64(d))) }
        }
        for i in 0..<arguments.count {
            let a = arguments[i]
            if i < Self.maxArguments { set(Self.argumentsOffset + i * 8, Int64(a)) }
            hasher.mix(UInt64(bitPattern: Int64(a)))
        }
        signature = hasher.value
    }

    /// Writes the used part of the slot to `buffer` (at least ``byteCount`` bytes) as one
    /// message: the header, the stored shape and arguments, then the inline payload.
    /// Returns its length.
    func pack(into buffer: UnsafeMutableRawPointer) -> Int {
        let dims = min(ndim, Self.maxDims) * 8, arguments = min(argumentCount, Self.maxArguments) * 8
        let payload = max(payloadBytes, 0)
        buffer.copyMemory(from: base, byteCount: Self.headerBytes)
        var at = Self.headerBytes
        (buffer + at).copyMemory(from: base + Self.shapeOffset, byteCount: dims)
        at += dims
        (buffer + at).copyMemory(from: base + Self.argumentsOffset, byteCount: arguments)
        at += arguments
        (buffer + at).copyMemory(from: self.payload, byteCount: payload)
        return at + payload
    }

    /// Fills the slot from a message of `count` bytes made by ``pack(into:)``; a short or
    /// inconsistent message leaves the missing parts zero.
    func unpack(from buffer: UnsafeRawPointer, count: Int) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerBytes)
        base.copyMemory(from: buffer, byteCount: min(count, Self.headerBytes))
        var at = Self.headerBytes
        func take(_ bytes: Int, to destination: UnsafeMutableRawPointer) {
            let n = max(0, min(bytes, count - at))
            destination.copyMemory(from: buffer + at, byteCount: n)
            at += n
        }
        take(min(ndim, Self.maxDims) * 8, to: base + Self.shapeOffset)
        take(min(argumentCount, Self.maxArguments) * 8, to: base + Self.argumentsOffset)
        take(min(max(payloadBytes, 0), Self.payloadCapacity), to: payload)
    }

    /// Marks the header of a ``Fault/Action/corruptHeader`` fault: an op no rank calls.
    func corrupt() {
        set(16, CollectiveOp.corrupt.rawValue)
        signature = ~signature
    }

    /// Whether `other` describes the same call as this one: the same signature, and the
    /// same collective, argument count, dtype and rank count where those are compared
    /// (dimensions and arguments are compared through the signature).
    func agrees(with other: CallSlot) -> Bool {
        let kind = op.kind
        guard signature == other.signature, kind == other.op.kind, argumentCount == other.argumentCount else { return false }
        if kind.dataTravels { return true }
        return field(17, UInt8.self) == other.field(17, UInt8.self) && (!kind.comparesShapes || ndim == other.ndim)
    }
}

/// The integer arguments of one call (dim, root, reduce op, a split's sizes), without
/// allocating for the usual few: up to four inline, more in an array.
struct ArgumentList {
    private var inline: (Int, Int, Int, Int) = (0, 0, 0, 0)
    private var extra: [Int] = []
    private(set) var count = 0

    init() {}
    init(_ a: Int) { self.init(); append(a) }
    init(_ a: Int, _ b: Int) { self.init(); append(a); append(b) }
    init(_ values: [Int]) {
        self.init()
        for v in values { append(v) }
    }

    mutating func append(_ value: Int) {
        switch count {
        case 0: inline.0 = value
        case 1: inline.1 = value
        case 2: inline.2 = value
        case 3: inline.3 = value
        default: extra.append(value)
        }
        count += 1
    }

    subscript(i: Int) -> Int {
        switch i {
        case 0: return inline.0
        case 1: return inline.1
        case 2: return inline.2
        case 3: return inline.3
        default: return extra[i - 4]
        }
    }
}

/// A 64-bit hash of a call's words (a multiply-rotate mix per word and a final avalanche):
/// two different calls share a signature with probability about 2⁻⁶⁴.
struct SignatureHasher {
    private(set) var state: UInt64 = 0x243F_6A88_85A3_08D3

    mutating func mix(_ word: UInt64) {
        var k = word &* 0x87C3_7B91_1142_53D5
        k = (k << 31) | (k >> 33)
        k = k &* 0x4CF5_AD43_2745_937F
        state ^= k
        state = ((state << 27) | (state >> 37)) &* 5 &+ 0x52DC_E729
    }

    var value: UInt64 {
        var h = state
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        h = h &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 33
        return h
    }
}
