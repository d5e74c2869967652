/// The brain floating-point format: 1 sign bit, 8 exponent bits, 7 mantissa bits.
///
/// It is the upper half of a `Float`'s bits. Conversion from `Float` rounds to
/// nearest, ties to even (as torch and JAX do); NaNs stay NaN (quieted). Arithmetic
/// is carried out in `Float` and rounded once per operation.
@frozen
public struct BFloat16: Sendable, Hashable, CustomStringConvertible {
    /// The raw 16 bits.
    public var bitPattern: UInt16

    /// Wraps raw bits without conversion.
    @inlinable
    public init(bitPattern: UInt16) { self.bitPattern = bitPattern }

    /// Rounds a `Float` to the nearest `BFloat16` (ties to even).
    @inlinable
    public init(_ value: Float) {
        let bits = value.bitPattern
        if value.isNaN {
            // Keep the sign and the top of the payload, force a quiet NaN.
            bitPattern = UInt16(truncatingIfNeeded: bits >> 16) | 0x0040
            return
        }
        let roundingBias: UInt32 = 0x7FFF &+ ((bits >> 16) & 1)
        bitPattern = UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    /// Rounds a `Double` to the nearest `BFloat16`, through `Float`.
    ///
    /// The double rounding can differ from a direct rounding in rare ties; torch does the same.
    @inlinable
    public init(_ value: Double) { self.init(Float(value)) }

    /// Converts an integer (through `Float`).
    @inlinable
    public init<I: BinaryInteger>(_ value: I) { self.init(Float(value)) }

    /// The exact value as a `Float`.
    @inlinable
    public var floatValue: Float { Float(bitPattern: UInt32(bitPattern) << 16) }

    public var isNaN: Bool { floatValue.isNaN }
    public var isFinite: Bool { floatValue.isFinite }
    public var description: String { floatValue.description }

    public static let zero = BFloat16(bitPattern: 0)
    public static let infinity = BFloat16(bitPattern: 0x7F80)
    public static let nan = BFloat16(bitPattern: 0x7FC0)
    /// The largest finite value, 3.3895e38.
    public static let greatestFiniteMagnitude = BFloat16(bitPattern: 0x7F7F)
    /// The distance from 1 to the next larger value, 2^-7.
    public static let ulpOfOne = BFloat16(bitPattern: 0x3C00)
}

extension Float {
    /// The exact value of a `BFloat16`.
    @inlinable
    public init(_ value: BFloat16) { self = value.floatValue }
}

extension Double {
    /// The exact value of a `BFloat16`.
    @inlinable
    public init(_ value: BFloat16) { self = Double(value.floatValue) }
}

extension BFloat16: Comparable {
    @inlinable
    public static func < (lhs: BFloat16, rhs: BFloat16) -> Bool { lhs.floatValue < rhs.floatValue }
    /// IEEE equality: `-0 == +0`, NaN is unequal to everything.
    @inlinable
    public static func == (lhs: BFloat16, rhs: BFloat16) -> Bool { lhs.floatValue == rhs.floatValue }
    public func hash(into hasher: inout Hasher) { hasher.combine(floatValue) }
}

extension BFloat16: ExpressibleByFloatLiteral, ExpressibleByIntegerLiteral {
    public init(floatLiteral value: Double) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(Float(value)) }
}

extension BFloat16: SignedNumeric {
    public typealias Magnitude = BFloat16

    public init?<T: BinaryInteger>(exactly source: T) {
        guard let f = Float(exactly: source) else { return nil }
        let b = BFloat16(f)
        guard b.floatValue == f else { return nil }
        self = b
    }

    public var magnitude: BFloat16 { BFloat16(bitPattern: bitPattern & 0x7FFF) }

    @inlinable
    public static func + (lhs: BFloat16, rhs: BFloat16) -> BFloat16 { BFloat16(lhs.floatValue + rhs.floatValue) }
    @inlinable
    public static func - (lhs: BFloat16, rhs: BFloat16) -> BFloat16 { BFloat16(lhs.floatValue - rhs.floatValue) }
    @inlinable
    public static func * (lhs: BFloat16, rhs: BFloat16) -> BFloat16 { BFloat16(lhs.floatValue * rhs.floatValue) }
    @inlinable
    public static func / (lhs: BFloat16, rhs: BFloat16) -> BFloat16 { BFloat16(lhs.floatValue / rhs.floatValue) }
    public static func += (lhs: inout BFloat16, rhs: BFloat16) { lhs = lhs + rhs }
    public static func -= (lhs: inout BFloat16, rhs: BFloat16) { lhs = lhs - rhs }
    public static func *= (lhs: inout BFloat16, rhs: BFloat16) { lhs = lhs * rhs }
    public static func /= (lhs: inout BFloat16, rhs: BFloat16) { lhs = lhs / rhs }
    public mutating func negate() { bitPattern ^= 0x8000 }
    public static prefix func - (operand: BFloat16) -> BFloat16 { BFloat16(bitPattern: operand.bitPattern ^ 0x8000) }
}
