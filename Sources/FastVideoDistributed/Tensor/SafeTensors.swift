import Foundation

/// The contents of a `.safetensors` file: named tensors of any ``DType`` and
/// string metadata.
///
/// The format is an 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON
/// (`{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
/// "__metadata__": {"key": "value"}}`), then the data buffer that the offsets index.
public struct SafeTensorsFile: Sendable {
    /// The tensors, in the order of their data in the file.
    public var tensors: [(name: String, tensor: Tensor)]
    /// The file's `__metadata__` (string keys and values).
    public var metadata: [String: String]

    /// Files larger than this header are refused (as the reference implementation does).
    static let maxHeaderLength = 100_000_000
    static let metadataKey = "__metadata__"

    public init(tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    /// The first tensor called `name`, if any.
    public subscript(name: String) -> Tensor? {
        tensors.first { $0.name == name }?.tensor
    }

    /// Reads a `.safetensors` file.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` naming `path` and what is wrong.
    public static func read(at path: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(bytes: readWholeFile(path), source: path)
    }

    /// Writes the tensors (in their order) and the metadata as a `.safetensors` file, atomically.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` for duplicate or reserved names or
    ///   when the file cannot be written.
    public func write(to path: String) throws {
        try writeFileAtomically(bytes(source: path), to: path)
    }

    /// The bytes of the `.safetensors` file for these tensors and metadata.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` (path `<memory>`) for duplicate or reserved names.
    public func bytes() throws -> [UInt8] {
        try bytes(source: "<memory>")
    }

    /// Decodes the bytes of a `.safetensors` file; `source` names it in errors.
    ///
    /// - Throws: ``FVDError/file(path:problem:)`` naming `source` and what is wrong.
    public init(bytes: [UInt8], source: String = "<memory>") throws {
        func fail(_ problem: String) -> FVDError { FVDError.file(path: source, problem: problem) }

        guard bytes.count >= 8 else {
            throw fail("not a safetensors file: it is \(bytes.count) bytes long, shorter than the 8-byte header length")
        }
        var length: UInt64 = 0
        for i in 0..<8 { length |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard length <= UInt64(Self.maxHeaderLength) else {
            throw fail("header length \(length) is larger than the 100 MB limit (not a safetensors file?)")
        }
        let headerLength = Int(length)
        guard headerLength <= bytes.count - 8 else {
            throw fail("header length \(headerLength) is larger than the \(bytes.count - 8) bytes that follow it "
                + "(truncated or not a safetensors file)")
        }
        let headerBytes = bytes[8..<(8 + headerLength)]
        let dataStart = 8 + headerLength
        let dataLength = bytes.count - dataStart

        guard let headerText = String(validating: headerBytes, as: UTF8.self) else {
            throw fail("the header is not valid UTF-8")
        }
        guard headerText.first == "{" else {
            throw fail("invalid header: it is not a JSON object (it should start with '{')")
        }
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(headerText.utf8))
        } catch let error as HeaderProblem {
            throw fail("invalid header: \(error.message)")
        } catch let error as DecodingError {
            throw fail("invalid header: \(Self.describe(error))")
        } catch {
            throw fail("invalid header: \(error)")
        }

        // Check every entry before allocating anything.
        struct Checked { var name: String; var dtype: DType; var shape: [Int]; var begin: Int; var end: Int }
        var checked: [Checked] = []
        checked.reserveCapacity(header.entries.count)
        for entry in header.entries {
            let name = entry.name
            guard let dtype = Self.dtype(forName: entry.dtype) else {
                throw fail("tensor '\(name)' has unknown dtype '\(entry.dtype)' "
                    + "(supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)")
            }
            if let negative = entry.shape.first(where: { $0 < 0 }) {
                throw fail("tensor '\(name)' has a negative dimension \(negative) in shape \(entry.shape)")
            }
            guard let count = try? Tensor.elementCount(of: entry.shape) else {
                throw fail("tensor '\(name)' has shape \(entry.shape), which is too large "
                    + "(its nonzero dimensions multiply to more elements than a tensor can hold)")
            }
            guard entry.dataOffsets.count == 2 else {
                throw fail("tensor '\(name)' has data_offsets with \(entry.dataOffsets.count) numbers; expected [begin, end]")
            }
            let begin = entry.dataOffsets[0], end = entry.dataOffsets[1]
            guard begin >= 0, end >= 0 else {
                throw fail("tensor '\(name)' has negative data_offsets [\(begin), \(end)]")
            }
            guard end >= begin else {
                throw fail("tensor '\(name)' has data_offsets [\(begin), \(end)] whose end is before its begin")
            }
            guard end <= dataLength else {
                throw fail("tensor '\(name)' has data_offsets [\(begin), \(end)] beyond the end of the data "
                    + "(\(dataLength) bytes; the file is truncated?)")
            }
            let (expected, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
            guard !overflow, expected == end - begin else {
                throw fail("tensor '\(name)' has \(end - begin) bytes of data (offsets [\(begin), \(end)]) but shape "
                    + "\(entry.shape) of \(entry.dtype) needs \(overflow ? "more than Int.max" : String(expected)) bytes")
            }
            checked.append(Checked(name: name, dtype: dtype, shape: entry.shape, begin: begin, end: end))
        }
        checked.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var previous: Checked?
        for entry in checked where entry.end > entry.begin {
            if let p = previous, entry.begin < p.end {
                throw fail("tensors '\(p.name)' [\(p.begin), \(p.end)] and '\(entry.name)' "
                    + "[\(entry.begin), \(entry.end)] overlap in the data")
            }
            previous = entry
        }

        var tensors: [(name: String, tensor: Tensor)] = []
        tensors.reserveCapacity(checked.count)
        bytes.withUnsafeBytes { raw in
            for entry in checked {
                var tensor = Tensor(uninitializedShape: entry.shape, dtype: entry.dtype)
                tensor.withUnsafeMutableBytes { out in
                    if out.count > 0 {
                        out.baseAddress!.copyMemory(from: raw.baseAddress! + dataStart + entry.begin, byteCount: out.count)
                    }
                    if entry.dtype == .bool { normalizeBoolBytes(out) }
                }
                tensors.append((entry.name, tensor))
            }
        }
        self.tensors = tensors
        metadata = header.metadata
    }

    func bytes(source: String) throws -> [UInt8] {
        func fail(_ problem: String) -> FVDError { FVDError.file(path: source, problem: problem) }
        var seen = Set<String>()
        for (name, _) in tensors {
            if name == Self.metadataKey {
                throw fail("'\(Self.metadataKey)' is reserved for the metadata and cannot name a tensor")
            }
            guard seen.insert(name).inserted else { throw fail("two tensors are named '\(name)'; names must be unique") }
        }

        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += Self.jsonString(Self.metadataKey) + ":{"
            json += metadata.sorted { $0.key < $1.key }
                .map { Self.jsonString($0.key) + ":" + Self.jsonString($0.value) }
                .joined(separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for (name, tensor) in tensors {
            if !first { json += "," }
            first = false
            let end = offset + tensor.byteCount
            json += Self.jsonString(name) + ":{\"dtype\":\"\(Self.name(for: tensor.dtype))\",\"shape\":["
                + tensor.shape.map(String.init).joined(separator: ",") + "],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var header = Array(json.utf8)
        header += [UInt8](repeating: UInt8(ascii: " "), count: (8 - header.count % 8) % 8)

        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + offset)
        let length = UInt64(header.count)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: length >> (8 * UInt64(i)))) }
        out += header
        for (_, tensor) in tensors { tensor.withUnsafeBytes { out.append(contentsOf: $0) } }
        return out
    }

    // MARK: Names and JSON

    static func name(for dtype: DType) -> String {
        switch dtype {
        case .float64: return "F64"
        case .float32: return "F32"
        case .float16: return "F16"
        case .bfloat16: return "BF16"
        case .int64: return "I64"
        case .int32: return "I32"
        case .int16: return "I16"
        case .int8: return "I8"
        case .uint8: return "U8"
        case .bool: return "BOOL"
        }
    }

    static func dtype(forName name: String) -> DType? {
        DType.allCases.first { Self.name(for: $0) == name }
    }

    /// A JSON string literal for `s`.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// A short account of what a JSON decode found wrong.
    static func describe(_ error: DecodingError) -> String {
        switch error {
        case let .dataCorrupted(context) where context.codingPath.isEmpty:
            return "not valid JSON"
        case let .dataCorrupted(context), let .keyNotFound(_, context), let .typeMismatch(_, context),
            let .valueNotFound(_, context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? context.debugDescription : "at \(path): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    /// A thrown check of the header's structure, with the message to show.
    struct HeaderProblem: Error { var message: String }

    /// One tensor's entry in the header.
    struct Entry: Decodable {
        var name = ""
        var dtype: String
        var shape: [Int]
        var dataOffsets: [Int]

        enum CodingKeys: String, CodingKey {
            case dtype, shape
            case dataOffsets = "data_offsets"
        }

        init(from decoder: any Decoder) throws {
            let name = decoder.codingPath.last?.stringValue ?? "?"
            guard let c = try? decoder.container(keyedBy: CodingKeys.self) else {
                throw HeaderProblem(message: "tensor '\(name)' is not a JSON object")
            }
            func field<T: Decodable>(_ key: CodingKeys, _ type: T.Type, _ expected: String) throws -> T {
                guard c.contains(key) else {
                    throw HeaderProblem(message: "tensor '\(name)' has no '\(key.stringValue)' field")
                }
                guard let value = try? c.decode(T.self, forKey: key) else {
                    throw HeaderProblem(message: "tensor '\(name)': '\(key.stringValue)' is not \(expected)")
                }
                return value
            }
            dtype = try field(.dtype, String.self, "a string")
            shape = try field(.shape, [Int].self, "a list of integers")
            dataOffsets = try field(.dataOffsets, [Int].self, "a list of two integers")
        }
    }

    /// The header: tensor entries plus the optional metadata.
    struct Header: Decodable {
        var entries: [Entry] = []
        var metadata: [String: String] = [:]

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Key.self)
            for key in c.allKeys {
                if key.stringValue == SafeTensorsFile.metadataKey {
                    if try c.decodeNil(forKey: key) { continue }
                    guard let m = try? c.decode([String: String].self, forKey: key) else {
                        throw HeaderProblem(message: "'__metadata__' must be an object mapping strings to strings")
                    }
                    metadata = m
                } else {
                    var entry = try c.decode(Entry.self, forKey: key)
                    entry.name = key.stringValue
                    entries.append(entry)
                }
            }
        }
    }
}
