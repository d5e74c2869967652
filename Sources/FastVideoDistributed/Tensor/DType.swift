/// The element type of a ``Tensor``.
///
/// The raw values are the names torch and numpy use (`float32`, `bfloat16`, ...),
/// which is also what the CLI accepts.
public enum DType: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    case float32, float64, float16, bfloat16
    case int8, int16, int32, int64
    case uint8
    case bool

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float64, .int64: return 8
        case .float32, .int32: return 4
        case .float16, .bfloat16, .int16: return 2
        case .int8, .uint8, .bool: return 1
        }
    }

    /// Bytes of one element's accumulator in a reduction: float32 for the 16-bit floats
    /// (accumulated in float32 and rounded once), else the element itself.
    var accumulatorBytes: Int { self == .float16 || self == .bfloat16 ? 4 : byteSize }

    /// Whether the type is a floating-point type.
    public var isFloatingPoint: Bool {
        switch self {
        case .float32, .float64, .float16, .bfloat16: return true
        default: return false
        }
    }

    public var description: String { rawValue }

    /// Parses a dtype name; accepts the torch/numpy spellings and short aliases
    /// (`fp32`, `f32`, `bf16`, `half`, `int`, ...).
    public init?(name: String) {
        let aliases: [String: DType] = [
            "fp32": .float32, "f32": .float32, "float": .float32,
            "fp64": .float64, "f64": .float64, "double": .float64,
            "fp16": .float16, "f16": .float16, "half": .float16,
            "bf16": .bfloat16,
            "i8": .int8, "i16": .int16, "i32": .int32, "int": .int32, "i64": .int64, "long": .int64,
            "u8": .uint8,
        ]
        let lower = name.lowercased()
        if let d = DType(rawValue: lower) ?? aliases[lower] { self = d } else { return nil }
    }
}
