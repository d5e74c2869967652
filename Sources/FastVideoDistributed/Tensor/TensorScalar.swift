/// A Swift type that is the element type of one ``DType``.
///
/// `Float`, `Double`, `Float16`, ``BFloat16``, `Int8`, `Int16`, `Int32`, `Int64`,
/// `UInt8` and `Bool` conform; their memory layout is the dtype's byte layout
/// (little-endian on every platform this library supports).
public protocol TensorScalar: Sendable {
    /// The dtype whose elements this type stores.
    static var dtype: DType { get }
}

extension Float: TensorScalar { public static var dtype: DType { .float32 } }
extension Double: TensorScalar { public static var dtype: DType { .float64 } }
extension Float16: TensorScalar { public static var dtype: DType { .float16 } }
extension BFloat16: TensorScalar { public static var dtype: DType { .bfloat16 } }
extension Int8: TensorScalar { public static var dtype: DType { .int8 } }
extension Int16: TensorScalar { public static var dtype: DType { .int16 } }
extension Int32: TensorScalar { public static var dtype: DType { .int32 } }
extension Int64: TensorScalar { public static var dtype: DType { .int64 } }
extension UInt8: TensorScalar { public static var dtype: DType { .uint8 } }
extension Bool: TensorScalar { public static var dtype: DType { .bool } }
