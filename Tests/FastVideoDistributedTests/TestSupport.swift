@testable import FastVideoDistributed

/// A seeded generator (SplitMix64) so every test input is reproducible.
struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A tensor of random values of `dtype`: floats in [-4, 4), integers over their whole
/// range (so sums wrap), bools 0/1.
func randomTensor(_ shape: [Int], _ dtype: DType, seed: UInt64) -> Tensor {
    var rng = SeededRNG(seed: seed)
    let n = shape.reduce(1, *)
    func floats() -> [Float] { (0..<n).map { _ in Float.random(in: -4..<4, using: &rng) } }
    switch dtype {
    case .float32: return try! Tensor(shape: shape, scalars: floats())
    case .float64: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in Double.random(in: -4..<4, using: &rng) })
    case .float16: return try! Tensor(shape: shape, scalars: floats().map { Float16($0) })
    case .bfloat16: return try! Tensor(shape: shape, scalars: floats().map { BFloat16($0) })
    case .int8: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in Int8.random(in: .min ... .max, using: &rng) })
    case .int16: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in Int16.random(in: .min ... .max, using: &rng) })
    case .int32: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in Int32.random(in: .min ... .max, using: &rng) })
    case .int64: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in Int64.random(in: .min ... .max, using: &rng) })
    case .uint8: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in UInt8.random(in: .min ... .max, using: &rng) })
    case .bool: return try! Tensor(shape: shape, scalars: (0..<n).map { _ in Bool.random(using: &rng) })
    }
}

/// Every (world size, tp, sp) with world size in `sizes` and tp, sp dividing it.
func everyLayout(worldSizes sizes: ClosedRange<Int> = 1...8) -> [GroupLayout] {
    sizes.flatMap { w in
        let divisors = (1...w).filter { w % $0 == 0 }
        return divisors.flatMap { tp in divisors.map { sp in try! GroupLayout(worldSize: w, tensorParallel: tp, sequenceParallel: sp) } }
    }
}

/// The elements of a tensor as one byte array per element (dtype-agnostic reference math).
func elements(_ t: Tensor) -> [[UInt8]] {
    let es = t.dtype.byteSize
    return t.withUnsafeBytes { raw in (0..<t.count).map { Array(raw[($0 * es)..<(($0 + 1) * es)]) } }
}

func tensor(fromElements elements: [[UInt8]], shape: [Int], dtype: DType) -> Tensor {
    var t = try! Tensor(zeros: shape, dtype: dtype)
    t.withUnsafeMutableBytes { raw in
        for (i, e) in elements.enumerated() { for (k, b) in e.enumerated() { raw[i * e.count + k] = b } }
    }
    return t
}

/// Row-major multi-index of flat index `i`.
func multiIndex(_ i: Int, _ shape: [Int]) -> [Int] {
    var rest = i
    var idx = Array(repeating: 0, count: shape.count)
    for d in stride(from: shape.count - 1, through: 0, by: -1) {
        idx[d] = rest % shape[d]
        rest /= shape[d]
    }
    return idx
}

func flatIndex(_ idx: [Int], _ shape: [Int]) -> Int {
    var f = 0
    for d in 0..<shape.count { f = f * shape[d] + idx[d] }
    return f
}

/// Naive concatenation along `dim` with element loops.
func referenceConcat(_ parts: [Tensor], dim: Int) -> Tensor {
    let d = dim < 0 ? dim + parts[0].dimensionCount : dim
    let inShape = parts[0].shape
    var outShape = inShape
    outShape[d] *= parts.count
    let partElements = parts.map(elements)
    let count = outShape.reduce(1, *)
    var out: [[UInt8]] = []
    out.reserveCapacity(count)
    for i in 0..<count {
        var idx = multiIndex(i, outShape)
        let j = idx[d] / inShape[d]
        idx[d] %= inShape[d]
        out.append(partElements[j][flatIndex(idx, inShape)])
    }
    return tensor(fromElements: out, shape: outShape, dtype: parts[0].dtype)
}

/// Naive Ulysses all-to-all with the SPEC's index formulas, for receiver `r`.
func referenceAllToAll(_ inputs: [Tensor], scatterDim: Int, receiver r: Int) -> Tensor {
    let n = inputs.count
    let s = inputs[0].shape
    let (b, sIn, hIn, d) = (s[0], s[1], s[2], s[3])
    let ins = inputs.map(elements)
    var out: [[UInt8]] = []
    if scatterDim == 2 {
        let hl = hIn / n
        let outShape = [b, sIn * n, hl, d]
        for bi in 0..<b { for si in 0..<(sIn * n) { for h in 0..<hl { for di in 0..<d {
            let j = si / sIn, t = si % sIn
            out.append(ins[j][flatIndex([bi, t, r * hl + h, di], s)])
        } } } }
        return tensor(fromElements: out, shape: outShape, dtype: inputs[0].dtype)
    } else {
        let sl = sIn / n
        let outShape = [b, sl, hIn * n, d]
        for bi in 0..<b { for t in 0..<sl { for hh in 0..<(hIn * n) { for di in 0..<d {
            let j = hh / hIn, h = hh % hIn
            out.append(ins[j][flatIndex([bi, r * sl + t, h, di], s)])
        } } } }
        return tensor(fromElements: out, shape: outShape, dtype: inputs[0].dtype)
    }
}

/// Naive elementwise reduction in rank order, written per dtype with scalar loops.
func referenceReduce(_ inputs: [Tensor], op: ReduceOp) -> Tensor {
    let shape = inputs[0].shape
    func floating<T: TensorScalar, A: BinaryFloatingPoint>(_: T.Type, toAcc: (T) -> A, fromAcc: (A) -> T) -> Tensor {
        let arrays = inputs.map { try! $0.scalars(as: T.self) }
        var out: [T] = []
        for i in 0..<arrays[0].count {
            var acc = toAcc(arrays[0][i])
            for j in 1..<arrays.count {
                let x = toAcc(arrays[j][i])
                switch op {
                case .sum, .average: acc = acc + x
                case .product: acc = acc * x
                case .max: acc = acc.isNaN ? acc : (x.isNaN ? x : (x > acc ? x : acc))
                case .min: acc = acc.isNaN ? acc : (x.isNaN ? x : (x < acc ? x : acc))
                }
            }
            if op == .average { acc = acc / A(arrays.count) }
            out.append(fromAcc(acc))
        }
        return try! Tensor(shape: shape, scalars: out)
    }
    func integer<T: FixedWidthInteger & TensorScalar>(_: T.Type) -> Tensor {
        let arrays = inputs.map { try! $0.scalars(as: T.self) }
        var out: [T] = []
        for i in 0..<arrays[0].count {
            var acc = arrays[0][i]
            for j in 1..<arrays.count {
                let x = arrays[j][i]
                switch op {
                case .sum, .average: acc = acc &+ x
                case .product: acc = acc &* x
                case .max: acc = Swift.max(acc, x)
                case .min: acc = Swift.min(acc, x)
                }
            }
            out.append(acc)
        }
        return try! Tensor(shape: shape, scalars: out)
    }
    switch inputs[0].dtype {
    case .float32: return floating(Float.self, toAcc: { $0 }, fromAcc: { $0 })
    case .float64: return floating(Double.self, toAcc: { $0 }, fromAcc: { $0 })
    case .float16: return floating(Float16.self, toAcc: { Float($0) }, fromAcc: { Float16($0) })
    case .bfloat16: return floating(BFloat16.self, toAcc: { Float($0) }, fromAcc: { BFloat16($0) })
    case .int8: return integer(Int8.self)
    case .int16: return integer(Int16.self)
    case .int32: return integer(Int32.self)
    case .int64: return integer(Int64.self)
    case .uint8: return integer(UInt8.self)
    case .bool:
        let arrays = inputs.map { try! $0.scalars(as: Bool.self) }
        let out = (0..<arrays[0].count).map { i in
            (op == .sum || op == .max) ? arrays.contains { $0[i] } : arrays.allSatisfy { $0[i] }
        }
        return try! Tensor(shape: shape, scalars: out)
    }
}

/// Slice `r` of `n` along `dim` (naive), for the reduce-scatter reference.
func referenceSlice(_ t: Tensor, dim: Int, part r: Int, of n: Int) -> Tensor {
    let d = dim < 0 ? dim + t.dimensionCount : dim
    var outShape = t.shape
    outShape[d] /= n
    let e = elements(t)
    let out = (0..<outShape.reduce(1, *)).map { i -> [UInt8] in
        var idx = multiIndex(i, outShape)
        idx[d] += r * outShape[d]
        return e[flatIndex(idx, t.shape)]
    }
    return tensor(fromElements: out, shape: outShape, dtype: t.dtype)
}
