/// numpy's `.npy` format: a magic string, a version, a Python-dict header naming
/// the dtype, the order and the shape, then the raw elements.
///
/// Reading accepts versions 1.0, 2.0 and 3.0, little-endian (or byte-order-free)
/// dtypes that map onto a ``DType``, C order only. Writing produces exactly the bytes
/// `numpy.save` produces for the same array (version 1.0, or 2.0 for a header too
/// large for 1.0).
extension Tensor {
    /// Reads a `.npy` file.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` naming `path` and what is wrong.
    public static func readNPY(at path: String) throws -> Tensor {
        try Tensor(npyBytes: readWholeFile(path), source: path)
    }

    /// Decodes the bytes of a `.npy` file; `source` names it in errors.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` naming `source` and what is wrong.
    public init(npyBytes bytes: [UInt8], source: String = "<memory>") throws {
        func fail(_ problem: String) -> FVDError { FVDError.file(path: source, problem: problem) }

        guard bytes.count >= NPY.magic.count, Array(bytes[0..<NPY.magic.count]) == NPY.magic else {
            throw fail("not an npy file (it does not start with the magic string \\x93NUMPY)")
        }
        guard bytes.count >= 8 else { throw fail("truncated header: the file ends inside the format version") }
        let major = bytes[6], minor = bytes[7]
        let lengthFieldSize: Int
        switch (major, minor) {
        case (1, 0): lengthFieldSize = 2
        case (2, 0), (3, 0): lengthFieldSize = 4
        default:
            throw fail("unsupported npy format version \(major).\(minor) (supported: 1.0, 2.0, 3.0)")
        }
        guard bytes.count >= 8 + lengthFieldSize else {
            throw fail("truncated header: the file ends inside the header length")
        }
        var headerLength = 0
        for i in 0..<lengthFieldSize { headerLength |= Int(bytes[8 + i]) << (8 * i) }
        let headerStart = 8 + lengthFieldSize
        let available = bytes.count - headerStart
        guard headerLength <= available else {
            throw fail("truncated header: it should be \(headerLength) bytes long but only \(available) bytes follow")
        }
        let headerEnd = headerStart + headerLength

        let header: NPY.Header
        do {
            header = try NPY.parseHeader(bytes[headerStart..<headerEnd], utf8: major == 3)
        } catch let error as NPY.HeaderError {
            throw fail(error.message)
        }
        if header.fortranOrder {
            throw fail("fortran_order is True; only C order is supported (save np.ascontiguousarray(a) instead)")
        }
        let dtype = try NPY.dtype(forDescr: header.descr, fail: fail)

        let count: Int
        do {
            count = try Tensor.elementCount(of: header.shape)
        } catch {
            throw fail("invalid shape \(NPY.pythonTuple(header.shape)): "
                + (header.shape.contains { $0 < 0 } ? "a dimension is negative"
                    : "it is too large (its nonzero dimensions multiply to more elements than a tensor can hold)"))
        }
        let (expected, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else { throw fail("invalid shape \(NPY.pythonTuple(header.shape)): it is too large") }
        let present = bytes.count - headerEnd
        if present < expected {
            throw fail("data is truncated: shape \(NPY.pythonTuple(header.shape)) of \(dtype) needs \(expected) bytes "
                + "but only \(present) bytes follow the header")
        }
        if present > expected {
            throw fail("trailing data: shape \(NPY.pythonTuple(header.shape)) of \(dtype) needs \(expected) bytes "
                + "but \(present) bytes follow the header")
        }

        var tensor = Tensor(uninitializedShape: header.shape, dtype: dtype)
        tensor.withUnsafeMutableBytes { out in
            bytes.withUnsafeBytes { raw in
                if expected > 0 { out.baseAddress!.copyMemory(from: raw.baseAddress! + headerEnd, byteCount: expected) }
            }
            if dtype == .bool { normalizeBoolBytes(out) }
        }
        self = tensor
    }

    /// The bytes `numpy.save` would write for this tensor.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` (path `<memory>`) for a bfloat16
    ///   tensor, which numpy cannot represent.
    public func npyBytes() throws -> [UInt8] {
        try npyBytes(source: "<memory>")
    }

    /// Writes this tensor as a `.npy` file, atomically.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` for a bfloat16 tensor or when the
    ///   file cannot be written.
    public func writeNPY(to path: String) throws {
        try writeFileAtomically(npyBytes(source: path), to: path)
    }

    func npyBytes(source: String) throws -> [UInt8] {
        guard let descr = NPY.descr(for: dtype) else {
            throw FVDError.file(path: source, problem: "\(dtype) has no numpy dtype and cannot be saved as .npy; "
                + "use .safetensors for bfloat16 tensors")
        }
        // As numpy's `_write_array_header`: sorted keys, repr values, then room for the
        // first dimension to grow to 21 digits, then padding to a multiple of 64.
        var dict = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(NPY.pythonTuple(shape)), }"
        if let first = shape.first {
            dict += String(repeating: " ", count: max(NPY.growthAxisMaxDigits - String(first).utf8.count, 0))
        }
        let headerText = Array(dict.utf8)
        var prefix = NPY.magic
        var lengthFieldSize = 2
        var padded = paddedHeaderLength(headerText.count, lengthFieldSize: 2)
        if padded > Int(UInt16.max) {
            lengthFieldSize = 4
            padded = paddedHeaderLength(headerText.count, lengthFieldSize: 4)
            prefix += [2, 0]
        } else {
            prefix += [1, 0]
        }
        for i in 0..<lengthFieldSize { prefix.append(UInt8(truncatingIfNeeded: padded >> (8 * i))) }

        var out = prefix
        out.reserveCapacity(prefix.count + padded + byteCount)
        out += headerText
        out += [UInt8](repeating: UInt8(ascii: " "), count: padded - headerText.count - 1)
        out.append(UInt8(ascii: "\n"))
        withUnsafeBytes { out.append(contentsOf: $0) }
        return out
    }

    private func paddedHeaderLength(_ textLength: Int, lengthFieldSize: Int) -> Int {
        let unpadded = textLength + 1  // the final newline
        let pad = NPY.alignment - ((NPY.magic.count + 2 + lengthFieldSize + unpadded) % NPY.alignment)
        return unpadded + pad
    }
}

/// Sets every nonzero byte to 1, so that a `Bool` view of the bytes is valid
/// (numpy treats any nonzero byte of a bool array as True).
func normalizeBoolBytes(_ buffer: UnsafeMutableRawBufferPointer) {
    for i in 0..<buffer.count where buffer[i] > 1 { buffer[i] = 1 }
}

/// The details of the `.npy` format.
enum NPY {
    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
    static let alignment = 64
    static let growthAxisMaxDigits = 21

    struct Header {
        var descr: String
        var fortranOrder: Bool
        var shape: [Int]
    }

    struct HeaderError: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }

    static func descr(for dtype: DType) -> String? {
        switch dtype {
        case .float32: return "<f4"
        case .float64: return "<f8"
        case .float16: return "<f2"
        case .bfloat16: return nil
        case .int8: return "|i1"
        case .int16: return "<i2"
        case .int32: return "<i4"
        case .int64: return "<i8"
        case .uint8: return "|u1"
        case .bool: return "|b1"
        }
    }

    /// Maps a numpy type string such as `<f4` to a ``DType``.
    static func dtype(forDescr descr: String, fail: (String) -> FVDError) throws -> DType {
        var rest = Substring(descr)
        var order: Character = "|"
        if let first = rest.first, "<>|=".contains(first) {
            order = first
            rest = rest.dropFirst()
        }
        guard let kind = rest.first else { throw fail("unsupported dtype '\(descr)': it is empty") }
        if kind == "O" {
            throw fail("dtype '\(descr)' is an object array (pickled Python objects); only numeric and bool arrays are supported")
        }
        let size = Int(rest.dropFirst())
        let known: [String: DType] = [
            "f4": .float32, "f8": .float64, "f2": .float16,
            "i1": .int8, "i2": .int16, "i4": .int32, "i8": .int64,
            "u1": .uint8, "b1": .bool,
        ]
        guard let dtype = known[String(rest)], let size else {
            throw fail("unsupported dtype '\(descr)'\(numpyName(String(rest)).map { " (\($0))" } ?? ""); supported: "
                + "float32, float64, float16, int8, int16, int32, int64, uint8, bool")
        }
        if order == ">" && size > 1 {
            throw fail("dtype '\(descr)' is big-endian; only little-endian data is supported "
                + "(save a.astype(a.dtype.newbyteorder('<')) instead)")
        }
        return dtype
    }

    /// A readable name for a numpy type code, for error messages.
    private static func numpyName(_ code: String) -> String? {
        let names: [String: String] = [
            "u2": "uint16", "u4": "uint32", "u8": "uint64", "f16": "float128", "f12": "float96",
            "c8": "complex64", "c16": "complex128", "c32": "complex256", "?": "bool",
        ]
        if let name = names[code] { return name }
        switch code.first {
        case "U": return "unicode string"
        case "S", "a": return "byte string"
        case "V": return "void / raw bytes"
        case "M": return "datetime64"
        case "m": return "timedelta64"
        default: return nil
        }
    }

    /// `(2, 3)`, `(3,)` or `()`, as Python's `repr` of a tuple.
    static func pythonTuple(_ shape: [Int]) -> String {
        switch shape.count {
        case 0: return "()"
        case 1: return "(\(shape[0]),)"
        default: return "(" + shape.map(String.init).joined(separator: ", ") + ")"
        }
    }

    // MARK: Header parsing

    /// A value of the small subset of Python literals an npy header uses.
    indirect enum Literal {
        case string(String)
        case integer(Int)
        case boolean(Bool)
        case none
        case tuple([Literal])
        case list([Literal])
        case dict([(String, Literal)])

        var kindName: String {
            switch self {
            case .string: return "a string"
            case .integer: return "an integer"
            case .boolean: return "a boolean"
            case .none: return "None"
            case .tuple: return "a tuple"
            case .list: return "a list"
            case .dict: return "a dict"
            }
        }
    }

    /// Parses the header dict and checks its keys and value types.
    static func parseHeader(_ bytes: ArraySlice<UInt8>, utf8: Bool) throws -> Header {
        var parser = LiteralParser(bytes: Array(bytes), utf8: utf8)
        parser.skipWhitespace()
        guard parser.peek() == UInt8(ascii: "{") else {
            throw HeaderError("unparsable header: it should be a Python dict literal starting with '{'")
        }
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.atEnd else {
            throw HeaderError("unparsable header: unexpected text after the dict at byte \(parser.position) of the header")
        }
        guard case let .dict(items) = value else {
            throw HeaderError("unparsable header: it is not a dict")
        }
        var descr: String?, fortran: Bool?, shape: [Int]?
        for (key, item) in items {
            switch key {
            case "descr":
                switch item {
                case let .string(s): descr = s
                case .list: throw HeaderError("structured dtypes (a descr list) are not supported")
                default: throw HeaderError("unparsable header: 'descr' is \(item.kindName), not a string")
                }
            case "fortran_order":
                guard case let .boolean(b) = item else {
                    throw HeaderError("unparsable header: 'fortran_order' is \(item.kindName), not True or False")
                }
                fortran = b
            case "shape":
                guard case let .tuple(elements) = item else {
                    throw HeaderError("unparsable header: 'shape' is \(item.kindName), not a tuple")
                }
                shape = try elements.map {
                    guard case let .integer(n) = $0 else {
                        throw HeaderError("unparsable header: 'shape' holds \($0.kindName), not only integers")
                    }
                    return n
                }
            default:
                throw HeaderError("unparsable header: unexpected key '\(key)' (expected 'descr', 'fortran_order', 'shape')")
            }
        }
        guard let descr else { throw HeaderError("unparsable header: the key 'descr' is missing") }
        guard let fortran else { throw HeaderError("unparsable header: the key 'fortran_order' is missing") }
        guard let shape else { throw HeaderError("unparsable header: the key 'shape' is missing") }
        return Header(descr: descr, fortranOrder: fortran, shape: shape)
    }

    /// A recursive-descent parser for Python literals: dicts, tuples, lists, strings
    /// in single or double quotes, integers, True, False, None.
    struct LiteralParser {
        let bytes: [UInt8]
        let utf8: Bool
        var position = 0
        static let maxDepth = 32

        init(bytes: [UInt8], utf8: Bool) {
            self.bytes = bytes
            self.utf8 = utf8
        }

        var atEnd: Bool { position >= bytes.count }
        func peek() -> UInt8? { atEnd ? nil : bytes[position] }

        mutating func skipWhitespace() {
            while let c = peek(), c == 0x20 || c == 0x0A || c == 0x09 || c == 0x0D || c == 0x0C || c == 0x0B {
                position += 1
            }
        }

        func error(_ what: String) -> HeaderError {
            HeaderError("unparsable header: \(what) at byte \(position) of the header")
        }

        mutating func expect(_ c: UInt8) throws {
            skipWhitespace()
            guard peek() == c else { throw error("expected '\(Character(Unicode.Scalar(c)))'") }
            position += 1
        }

        mutating func parseValue(depth: Int) throws -> Literal {
            guard depth < Self.maxDepth else { throw error("nesting too deep") }
            skipWhitespace()
            guard let c = peek() else { throw error("unexpected end") }
            switch c {
            case UInt8(ascii: "{"):
                position += 1
                var items: [(String, Literal)] = []
                while true {
                    skipWhitespace()
                    if peek() == UInt8(ascii: "}") { position += 1; return .dict(items) }
                    guard case let .string(key) = try parseValue(depth: depth + 1) else {
                        throw error("dict keys must be strings")
                    }
                    try expect(UInt8(ascii: ":"))
                    let value = try parseValue(depth: depth + 1)
                    if items.contains(where: { $0.0 == key }) { throw error("duplicate key '\(key)'") }
                    items.append((key, value))
                    skipWhitespace()
                    if peek() == UInt8(ascii: ",") { position += 1; continue }
                    try expect(UInt8(ascii: "}"))
                    return .dict(items)
                }
            case UInt8(ascii: "("), UInt8(ascii: "["):
                let isTuple = c == UInt8(ascii: "(")
                let close = isTuple ? UInt8(ascii: ")") : UInt8(ascii: "]")
                position += 1
                var elements: [Literal] = []
                var sawComma = false
                while true {
                    skipWhitespace()
                    if peek() == close { position += 1; break }
                    elements.append(try parseValue(depth: depth + 1))
                    skipWhitespace()
                    if peek() == UInt8(ascii: ",") { position += 1; sawComma = true; continue }
                    try expect(close)
                    break
                }
                // `(3)` is just a parenthesised 3 in Python, not a tuple.
                if isTuple && elements.count == 1 && !sawComma { return elements[0] }
                return isTuple ? .tuple(elements) : .list(elements)
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                return .string(try parseString(quote: c))
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "+"):
                return .integer(try parseInteger())
            default:
                let start = position
                while let d = peek(), (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(d | 0x20) || d == UInt8(ascii: "_") {
                    position += 1
                }
                let word = String(decoding: bytes[start..<position], as: UTF8.self)
                switch word {
                case "True": return .boolean(true)
                case "False": return .boolean(false)
                case "None": return .none
                default:
                    position = start
                    throw error(word.isEmpty ? "unexpected character '\(Character(Unicode.Scalar(c)))'" : "unknown name '\(word)'")
                }
            }
        }

        mutating func parseInteger() throws -> Int {
            var negative = false
            if peek() == UInt8(ascii: "-") || peek() == UInt8(ascii: "+") {
                negative = peek() == UInt8(ascii: "-")
                position += 1
            }
            var value = 0
            var digits = 0
            while let d = peek(), d >= UInt8(ascii: "0"), d <= UInt8(ascii: "9") {
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(Int(d - UInt8(ascii: "0")))
                guard !o1, !o2 else { throw error("integer too large") }
                value = sum
                digits += 1
                position += 1
            }
            guard digits > 0 else { throw error("expected digits") }
            // Python 2 era files may write longs as `3L`.
            if peek() == UInt8(ascii: "L") { position += 1 }
            return negative ? -value : value
        }

        mutating func parseString(quote: UInt8) throws -> String {
            position += 1
            var raw: [UInt8] = []
            while true {
                guard let c = peek() else { throw error("unterminated string") }
                position += 1
                if c == quote { break }
                if c == UInt8(ascii: "\\") {
                    guard let e = peek() else { throw error("unterminated string") }
                    position += 1
                    switch e {
                    case UInt8(ascii: "n"): raw.append(0x0A)
                    case UInt8(ascii: "t"): raw.append(0x09)
                    default: raw.append(e)
                    }
                    continue
                }
                if c == 0x0A { throw error("unterminated string (it runs into the end of the line)") }
                raw.append(c)
            }
            if utf8 { return String(decoding: raw, as: UTF8.self) }
            // Versions 1.0 and 2.0 headers are latin-1.
            var s = ""
            s.unicodeScalars.append(contentsOf: raw.map { Unicode.Scalar($0) })
            return s
        }
    }
}
