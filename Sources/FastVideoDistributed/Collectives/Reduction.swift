import CFVDShims

/// The elementwise reduction of an all-reduce or reduce-scatter.
///
/// Every element is reduced in group-rank order, `((x0 ⊕ x1) ⊕ x2) ⊕ ...`, so the
/// result is the same bits on every rank, for every transport and chunking.
/// float16 and bfloat16 are accumulated in float32 and rounded once; float32 in
/// float32; float64 in float64. Integers wrap on overflow (as in torch). For `bool`,
/// `sum`/`max` are logical or and `product`/`min` logical and. `max`/`min`
/// propagate NaN and keep the lower rank's value on ties (so `max(+0, -0)` is `+0`). `average` is the sum divided by the group size in the
/// accumulation type, and needs a floating-point dtype.
public enum ReduceOp: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case sum, product, max, min, average

    public var description: String { rawValue }

    var code: Int { ReduceOp.allCases.firstIndex(of: self)! }
}

/// Reduces `count` elements from each of the `groupSize` sources `source(0)`,
/// `source(1)`, … (in that order) into `destination`.
///
/// `destination` may be one of the sources exactly (same address; each tile is read from
/// every source before it is written), but must not partly overlap any. `groupSize` is also
/// the divisor of `average`. With `channel`, it beats there after every ``heartbeatBytes``
/// of output (a chunk boundary never changes a result: each element is reduced alone).
///
/// For an all-reduce chained through hosts (one fold continued host after host), the
/// sources are only `sourceCount` of the group's ranks, and `carried` is the fold of the
/// ranks before them, as accumulators (``DType/accumulatorBytes`` each: float32 for 16-bit
/// floats), which the sources continue; with `carriesOn`, the result is written as
/// accumulators too, for the next host to continue (no rounding to `dtype`, no division
/// for `average`). The bits at the end are those of one fold over every rank.
func reduceElements(
    _ op: ReduceOp, dtype: DType, into destination: UnsafeMutableRawPointer, count: Int, groupSize: Int,
    beatingOn channel: (any PeerMemoryChannel)? = nil, sourceCount: Int? = nil, carried: UnsafeRawPointer? = nil,
    carriesOn: Bool = false, source: (Int) -> UnsafeRawPointer
) {
    let sourceCount = sourceCount ?? groupSize
    precondition(groupSize > 0 && sourceCount >= (carried == nil ? 1 : 0))
    withUnsafeTemporaryAllocation(of: UnsafeRawPointer.self, capacity: max(sourceCount, 1)) { buffer in
        for j in 0..<sourceCount { buffer.initializeElement(at: j, to: source(j)) }
        let es = dtype.byteSize, accumulatorBytes = dtype.accumulatorBytes
        let chunk = channel == nil ? max(count, 1) : max(heartbeatBytes / es, 1)
        var start = 0
        while start < count {
            let n = min(chunk, count - start)
            if start > 0 {
                for j in 0..<sourceCount { buffer[j] = source(j) + start * es }
                channel?.beat()
            }
            reduceElements(
                op, dtype: dtype, into: destination + start * (carriesOn ? accumulatorBytes : es),
                from: UnsafeBufferPointer(start: buffer.baseAddress, count: sourceCount), count: n, groupSize: groupSize,
                carry: Carry(from: carried.map { $0 + start * accumulatorBytes }, on: carriesOn))
            start += n
        }
    }
}

/// The accumulators a chained reduction starts from and whether it ends with them
/// (see ``reduceElements(_:dtype:into:count:groupSize:beatingOn:sourceCount:carried:carriesOn:source:)``).
private struct Carry {
    var from: UnsafeRawPointer?
    var on: Bool
}

private func reduceElements(
    _ op: ReduceOp, dtype: DType, into destination: UnsafeMutableRawPointer,
    from sources: UnsafeBufferPointer<UnsafeRawPointer>, count: Int, groupSize: Int, carry: Carry
) {
    switch dtype {
    case .float32:
        reduceFloating(op, Float.self, destination, sources, count, groupSize, carry, load: { $0 }, store: { $0 })
    case .float64:
        reduceFloating(op, Double.self, destination, sources, count, groupSize, carry, load: { $0 }, store: { $0 })
    case .float16:
        reduceFloating(op, Float16.self, destination, sources, count, groupSize, carry, load: { Float($0) }, store: { Float16($0) })
    case .bfloat16:
        reduceFloating(op, BFloat16.self, destination, sources, count, groupSize, carry, load: { $0.floatValue }, store: { BFloat16($0) })
    case .int8: reduceInteger(op, Int8.self, destination, sources, count, carry)
    case .int16: reduceInteger(op, Int16.self, destination, sources, count, carry)
    case .int32: reduceInteger(op, Int32.self, destination, sources, count, carry)
    case .int64: reduceInteger(op, Int64.self, destination, sources, count, carry)
    case .uint8: reduceInteger(op, UInt8.self, destination, sources, count, carry)
    case .bool:
        let any = op == .sum || op == .max
        reduceTiled(Bool.self, Bool.self, destination, sources, count, carry, load: { $0 }, store: { $0 }) {
            any ? ($0 || $1) : ($0 && $1)
        }
    }
}

/// Checks that `op` can reduce `dtype`.
func validateReduction(_ op: ReduceOp, dtype: DType, opName: String) throws {
    if op == .average, !dtype.isFloatingPoint {
        throw FVDError.unsupportedDType(op: opName, dtype: dtype, reason: "average needs a floating-point dtype")
    }
}

/// The accumulator tile: 4 KiB, the calling thread's scratch area (1 KiB tiles reduce 15–20 %
/// slower; a 4 KiB `withUnsafeTemporaryAllocation` asks the system for the stack's bounds,
/// which allocates, on every call).
private let tileBytes = Int(FVD_THREAD_SCRATCH_BYTES)

/// Reduces through a small accumulator tile that stays in L1, reading each source once.
@inline(__always)
private func reduceTiled<T, A>(
    _: T.Type, _: A.Type,
    _ destination: UnsafeMutableRawPointer, _ sources: UnsafeBufferPointer<UnsafeRawPointer>, _ count: Int, _ carry: Carry,
    load: (T) -> A, store: (A) -> T, finish: ((A) -> A)? = nil, combine: (A, A) -> A
) {
    let dst = destination.assumingMemoryBound(to: T.self)
    let tileElements = tileBytes / MemoryLayout<A>.stride
    let accBase = fvd_thread_scratch().bindMemory(to: A.self, capacity: tileElements)
    var start = 0
    while start < count {
        let n = Swift.min(tileElements, count - start)
        var next = 1
        if let carried = carry.from {
            let c = carried.assumingMemoryBound(to: A.self) + start
            for i in 0..<n { (accBase + i).initialize(to: c[i]) }
            next = 0
        } else {
            let first = sources[0].assumingMemoryBound(to: T.self) + start
            for i in 0..<n { (accBase + i).initialize(to: load(first[i])) }
        }
        for j in next..<sources.count {
            let s = sources[j].assumingMemoryBound(to: T.self) + start
            for i in 0..<n { accBase[i] = combine(accBase[i], load(s[i])) }
        }
        if carry.on {
            let d = destination.assumingMemoryBound(to: A.self) + start
            for i in 0..<n { d[i] = accBase[i] }
            start += n
            continue
        }
        let d = dst + start
        if let finish {
            for i in 0..<n { d[i] = store(finish(accBase[i])) }
        } else {
            for i in 0..<n { d[i] = store(accBase[i]) }
        }
        start += n
    }
}

@inline(__always)
private func reduceFloating<T, A: BinaryFloatingPoint>(
    _ op: ReduceOp, _ type: T.Type,
    _ destination: UnsafeMutableRawPointer, _ sources: UnsafeBufferPointer<UnsafeRawPointer>, _ count: Int, _ groupSize: Int,
    _ carry: Carry, load: (T) -> A, store: (A) -> T
) {
    switch op {
    case .sum:
        reduceTiled(T.self, A.self, destination, sources, count, carry, load: load, store: store, combine: +)
    case .average:
        let divisor = A(groupSize)
        reduceTiled(T.self, A.self, destination, sources, count, carry, load: load, store: store, finish: { $0 / divisor }, combine: +)
    case .product:
        reduceTiled(T.self, A.self, destination, sources, count, carry, load: load, store: store, combine: *)
    case .max:
        reduceTiled(T.self, A.self, destination, sources, count, carry, load: load, store: store) { a, b in
            a.isNaN ? a : ((b.isNaN || b > a) ? b : a)
        }
    case .min:
        reduceTiled(T.self, A.self, destination, sources, count, carry, load: load, store: store) { a, b in
            a.isNaN ? a : ((b.isNaN || b < a) ? b : a)
        }
    }
}

@inline(__always)
private func reduceInteger<T: FixedWidthInteger>(
    _ op: ReduceOp, _ type: T.Type,
    _ destination: UnsafeMutableRawPointer, _ sources: UnsafeBufferPointer<UnsafeRawPointer>, _ count: Int, _ carry: Carry
) {
    switch op {
    case .sum, .average:  // average is rejected before any data moves
        reduceTiled(T.self, T.self, destination, sources, count, carry, load: { $0 }, store: { $0 }, combine: &+)
    case .product:
        reduceTiled(T.self, T.self, destination, sources, count, carry, load: { $0 }, store: { $0 }, combine: &*)
    case .max:
        reduceTiled(T.self, T.self, destination, sources, count, carry, load: { $0 }, store: { $0 }, combine: Swift.max)
    case .min:
        reduceTiled(T.self, T.self, destination, sources, count, carry, load: { $0 }, store: { $0 }, combine: Swift.min)
    }
}
