import Foundation
import Testing
@testable import FastVideoDistributed

// MARK: Helpers

private let fixturesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures")

private func fixture(_ name: String) -> String { fixturesDirectory.appendingPathComponent(name).path }

/// A fresh empty directory, removed after `body`.
private func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("fvd-tensorio-\(getpid())-\(UInt64.random(in: 0...UInt64.max))")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    return try body(dir.path)
}

/// A tensor of `dtype` filled with varied bytes (any bit pattern; bools 0 or 1).
private func sample(_ dtype: DType, shape: [Int], seed: UInt64 = 1) throws -> Tensor {
    var t = try Tensor(zeros: shape, dtype: dtype)
    var state = seed &* 0x9E37_79B9_7F4A_7C15
    t.withUnsafeMutableBytes { buffer in
        for i in 0..<buffer.count {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            buffer[i] = UInt8(truncatingIfNeeded: state >> 56)
            if dtype == .bool { buffer[i] &= 1 }
        }
    }
    return t
}

/// Checks that `body` throws `FVDError.file` for `path` with a problem that mentions every needle.
private func expectFileError(
    path: String = "<memory>", mentioning needles: [String],
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    let error = #expect(throws: FVDError.self, sourceLocation: sourceLocation) { try body() }
    guard let error else { return }
    guard case let .file(errorPath, problem) = error else {
        Issue.record("expected FVDError.file, got \(error)", sourceLocation: sourceLocation)
        return
    }
    #expect(errorPath == path, sourceLocation: sourceLocation)
    for needle in needles {
        #expect(problem.contains(needle), "'\(problem)' should mention '\(needle)'", sourceLocation: sourceLocation)
    }
}

/// An npy file with the given header dict text (a newline is appended) and data.
private func npyFile(_ dict: String, major: UInt8 = 1, minor: UInt8 = 0, data: [UInt8] = []) -> [UInt8] {
    let header = Array((dict + "\n").utf8)
    var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [major, minor]
    let fieldSize = major == 1 ? 2 : 4
    for i in 0..<fieldSize { out.append(UInt8(truncatingIfNeeded: header.count >> (8 * i))) }
    return out + header + data
}

private func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    values.flatMap { v in (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
}

/// A safetensors file with the given header JSON and data buffer.
private func safetensorsFile(_ json: String, data: [UInt8] = []) -> [UInt8] {
    let header = Array(json.utf8)
    return littleEndianBytes([UInt64(header.count)]) + header + data
}

/// One corrupt file and what its error must say.
struct TensorIOCorruptFile: Sendable, CustomTestStringConvertible {
    var name: String
    var bytes: [UInt8]
    var needles: [String]
    var testDescription: String { name }
}

// MARK: npy

@Suite("TensorIO npy")
struct TensorIONPYTests {
    static let numpyDTypes = DType.allCases.filter { $0 != .bfloat16 }

    @Test(arguments: numpyDTypes)
    func roundTripsInMemory(dtype: DType) throws {
        for shape in [[2, 3], [5], [], [0], [3, 0, 2], [1, 1, 1, 2]] {
            let t = try sample(dtype, shape: shape, seed: UInt64(shape.count + 7))
            let back = try Tensor(npyBytes: t.npyBytes())
            #expect(back == t, "\(dtype) \(shape)")
            #expect(back.shape == shape)
            #expect(back.dtype == dtype)
        }
    }

    @Test(arguments: numpyDTypes)
    func roundTripsThroughAFile(dtype: DType) throws {
        try withTemporaryDirectory { dir in
            let t = try sample(dtype, shape: [3, 4], seed: 3)
            let path = dir + "/t.npy"
            try t.writeNPY(to: path)
            #expect(try Tensor.readNPY(at: path) == t)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["t.npy"])
        }
    }

    @Test func headerIsPaddedSoDataStartsAt64ByteBoundary() throws {
        for shape in [[], [1], [0, 123_456_789_012], [123_456_789_012, 0], [2, 3, 4, 5, 6, 7, 8, 9]] {
            let bytes = try Tensor(zeros: shape, dtype: .float32).npyBytes()
            let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            #expect((10 + headerLength) % 64 == 0)
            #expect(bytes[10 + headerLength - 1] == UInt8(ascii: "\n"))
            #expect(Array(bytes[6..<8]) == [1, 0])
        }
    }

    @Test func refusesToWriteBFloat16() throws {
        let t = try sample(.bfloat16, shape: [2], seed: 1)
        expectFileError(mentioning: ["bfloat16", ".safetensors"]) { _ = try t.npyBytes() }
        try withTemporaryDirectory { dir in
            let path = dir + "/bf.npy"
            expectFileError(path: path, mentioning: ["bfloat16", ".safetensors"]) { try t.writeNPY(to: path) }
            let left = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(left.isEmpty)
        }
    }

    @Test func writesExactlyWhatNumpyWrites() throws {
        let names = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool",
                     "scalar", "empty", "arange", "manydims"]
        for name in names {
            let path = fixture(name + ".npy")
            let fileBytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            let t = try Tensor.readNPY(at: path)
            #expect(try t.npyBytes() == fileBytes, "\(name).npy")
        }
    }

    @Test func readsNumpyFixtures() throws {
        let f32 = try Tensor.readNPY(at: fixture("float32.npy"))
        #expect(f32.shape == [4])
        #expect(try f32.scalars(as: Float.self) == [1.5, -2.25, 0, 3.0e38])

        let f64 = try Tensor.readNPY(at: fixture("float64.npy"))
        #expect(f64.shape == [2, 2])
        #expect(try f64.scalars(as: Double.self) == [1, -0.5, 1e300, Double.leastNonzeroMagnitude])

        let f16 = try Tensor.readNPY(at: fixture("float16.npy"))
        #expect(try f16.scalars(as: Float16.self) == [1, -2.5, 65504, Float16.leastNonzeroMagnitude])

        #expect(try Tensor.readNPY(at: fixture("int8.npy")).scalars(as: Int8.self) == [-128, -1, 0, 127])
        #expect(try Tensor.readNPY(at: fixture("int16.npy")).scalars(as: Int16.self) == [-32768, 1234, 32767])
        let i32 = try Tensor.readNPY(at: fixture("int32.npy"))
        #expect(i32.shape == [2, 2])
        #expect(try i32.scalars(as: Int32.self) == [Int32.min, 7, 42, Int32.max])
        #expect(try Tensor.readNPY(at: fixture("int64.npy")).scalars(as: Int64.self) == [Int64.min, -1, Int64.max])
        #expect(try Tensor.readNPY(at: fixture("uint8.npy")).scalars(as: UInt8.self) == [0, 1, 200, 255])
        #expect(try Tensor.readNPY(at: fixture("bool.npy")).scalars(as: Bool.self) == [true, false, true, true, false])

        let scalar = try Tensor.readNPY(at: fixture("scalar.npy"))
        #expect(scalar.shape == [])
        #expect(try scalar.scalars(as: Double.self) == [3.25])

        let empty = try Tensor.readNPY(at: fixture("empty.npy"))
        #expect(empty.shape == [0, 3])
        #expect(empty.dtype == .float32)
        #expect(empty.count == 0)

        let arange = try Tensor.readNPY(at: fixture("arange.npy"))
        #expect(arange.shape == [2, 3, 4])
        #expect(try arange.scalars(as: Float.self) == (0..<24).map { Float($0) * 0.5 })

        let manyDims = try Tensor.readNPY(at: fixture("manydims.npy"))
        #expect(manyDims.shape == [Int](repeating: 1, count: 15) + [2])
        #expect(try manyDims.scalars(as: Int8.self) == [7, 7])
    }

    @Test func refusesNumpyFixturesItCannotRepresent() {
        let fortran = fixture("fortran.npy")
        expectFileError(path: fortran, mentioning: ["fortran_order is True; only C order is supported"]) {
            _ = try Tensor.readNPY(at: fortran)
        }
        let big = fixture("bigendian.npy")
        expectFileError(path: big, mentioning: ["'>i4'", "big-endian"]) { _ = try Tensor.readNPY(at: big) }
        let object = fixture("object.npy")
        expectFileError(path: object, mentioning: ["'|O'", "object"]) { _ = try Tensor.readNPY(at: object) }
    }

    @Test func readsVersions2And3() throws {
        let data = littleEndianBytes([Int32(5), -6])
        for major: UInt8 in [2, 3] {
            let bytes = npyFile("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", major: major, data: data)
            #expect(try Tensor(npyBytes: bytes) == Tensor([Int32(5), -6]))
        }
    }

    @Test func writesVersion2WhenTheHeaderIsTooLargeForVersion1() throws {
        // 25,000 dimensions of size 1 need a header of about 75 kB.
        let t = try Tensor(shape: [Int](repeating: 1, count: 25_000), scalars: [Float(7.5)])
        let bytes = try t.npyBytes()
        #expect(Array(bytes[6..<8]) == [2, 0])
        let headerLength = (0..<4).reduce(0) { $0 | Int(bytes[8 + $1]) << (8 * $1) }
        #expect(headerLength > 65535)
        #expect((12 + headerLength) % 64 == 0)
        #expect(try Tensor(npyBytes: bytes) == t)
    }

    @Test func acceptsHeaderSpellingVariants() throws {
        let f = littleEndianBytes([Float(1.5).bitPattern])
        let variants: [(String, [UInt8], DType)] = [
            ("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1,)}", f, .float32),
            ("{'shape': (1,), 'fortran_order': False, 'descr': '<f4'}", f, .float32),
            ("  {  'descr' :'<f4' ,'fortran_order':False,'shape':( 1 , ) , }   ", f, .float32),
            ("{'descr': '=f4', 'fortran_order': False, 'shape': (1L,), }", f, .float32),
            ("{'descr': '<u1', 'fortran_order': False, 'shape': (1,), }", [9], .uint8),
            ("{'descr': '>u1', 'fortran_order': False, 'shape': (1,), }", [9], .uint8),
            ("{'descr': '<i1', 'fortran_order': False, 'shape': (1,), }", [9], .int8),
            ("{'descr': '<b1', 'fortran_order': False, 'shape': (1,), }", [1], .bool),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1,), }", f, .float32),
        ]
        for (dict, data, dtype) in variants {
            let t = try Tensor(npyBytes: npyFile(dict, data: data))
            #expect(t.dtype == dtype, "\(dict)")
            #expect(t.count == 1)
            #expect(t.withUnsafeBytes { Array($0) } == data, "\(dict)")
        }
        let scalar = try Tensor(npyBytes: npyFile("{'descr':'<f4','fortran_order':False,'shape':()}", data: f))
        #expect(scalar.shape == [])
    }

    @Test func boolBytesOtherThanZeroOrOneReadAsTrue() throws {
        let t = try Tensor(npyBytes: npyFile("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }", data: [0, 2, 255]))
        #expect(try t.scalars(as: Bool.self) == [false, true, true])
        #expect(t.withUnsafeBytes { Array($0) } == [0, 1, 1])
    }

    static let f4 = "'descr': '<f4', 'fortran_order': False"
    static let corrupt: [TensorIOCorruptFile] = [
        TensorIOCorruptFile(name: "empty file", bytes: [], needles: ["not an npy file"]),
        TensorIOCorruptFile(name: "bad magic", bytes: Array("PK\u{3}\u{4}hello world".utf8), needles: ["not an npy file", "magic"]),
        TensorIOCorruptFile(name: "unknown version", bytes: npyFile("{\(f4), 'shape': (1,), }", major: 4, data: [0, 0, 0, 0]),
                    needles: ["unsupported npy format version 4.0"]),
        TensorIOCorruptFile(name: "version 1.1", bytes: npyFile("{\(f4), 'shape': (1,), }", major: 1, minor: 1),
                    needles: ["version 1.1"]),
        TensorIOCorruptFile(name: "ends after magic", bytes: [0x93] + Array("NUMPY".utf8), needles: ["truncated header"]),
        TensorIOCorruptFile(name: "ends in length", bytes: [0x93] + Array("NUMPY".utf8) + [1, 0, 5], needles: ["truncated header"]),
        TensorIOCorruptFile(name: "header longer than file", bytes: [0x93] + Array("NUMPY".utf8) + [1, 0, 100, 0] + Array("{'descr'".utf8),
                    needles: ["truncated header", "100 bytes", "only 8"]),
        TensorIOCorruptFile(name: "unclosed tuple", bytes: npyFile("{\(f4), 'shape': (2,3}"), needles: ["unparsable header"]),
        TensorIOCorruptFile(name: "not a dict", bytes: npyFile("[1, 2]"), needles: ["unparsable header", "dict"]),
        TensorIOCorruptFile(name: "garbage", bytes: npyFile("{descr: <f4}"), needles: ["unparsable header"]),
        TensorIOCorruptFile(name: "missing shape", bytes: npyFile("{\(f4), }"), needles: ["'shape' is missing"]),
        TensorIOCorruptFile(name: "missing descr", bytes: npyFile("{'fortran_order': False, 'shape': (1,)}"), needles: ["'descr' is missing"]),
        TensorIOCorruptFile(name: "unexpected key", bytes: npyFile("{\(f4), 'shape': (1,), 'extra': 1}"), needles: ["unexpected key 'extra'"]),
        TensorIOCorruptFile(name: "duplicate key", bytes: npyFile("{\(f4), 'shape': (1,), 'shape': (1,)}"), needles: ["duplicate key"]),
        TensorIOCorruptFile(name: "shape is a list", bytes: npyFile("{\(f4), 'shape': [1]}"), needles: ["'shape'", "not a tuple"]),
        TensorIOCorruptFile(name: "shape is a parenthesised int", bytes: npyFile("{\(f4), 'shape': (1)}", data: [0, 0, 0, 0]),
                    needles: ["'shape' is an integer, not a tuple"]),
        TensorIOCorruptFile(name: "shape of strings", bytes: npyFile("{\(f4), 'shape': ('a',)}"), needles: ["'shape'", "integers"]),
        TensorIOCorruptFile(name: "fortran_order not bool", bytes: npyFile("{'descr': '<f4', 'fortran_order': 0, 'shape': ()}"),
                    needles: ["'fortran_order'"]),
        TensorIOCorruptFile(name: "text after dict", bytes: npyFile("{\(f4), 'shape': ()} x"), needles: ["unparsable header", "after the dict"]),
        TensorIOCorruptFile(name: "unterminated string", bytes: npyFile("{'descr': '<f4"), needles: ["unterminated string"]),
        TensorIOCorruptFile(name: "unknown name", bytes: npyFile("{'descr': '<f4', 'fortran_order': Maybe, 'shape': ()}"),
                    needles: ["unknown name 'Maybe'"]),
        TensorIOCorruptFile(name: "structured dtype", bytes: npyFile("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}"),
                    needles: ["structured"]),
        TensorIOCorruptFile(name: "uint32", bytes: npyFile("{'descr': '<u4', 'fortran_order': False, 'shape': ()}", data: [0, 0, 0, 0]),
                    needles: ["unsupported dtype '<u4'", "uint32"]),
        TensorIOCorruptFile(name: "complex64", bytes: npyFile("{'descr': '<c8', 'fortran_order': False, 'shape': ()}"),
                    needles: ["'<c8'", "complex64"]),
        TensorIOCorruptFile(name: "unicode", bytes: npyFile("{'descr': '<U5', 'fortran_order': False, 'shape': ()}"),
                    needles: ["'<U5'"]),
        TensorIOCorruptFile(name: "big-endian float64", bytes: npyFile("{'descr': '>f8', 'fortran_order': False, 'shape': ()}"),
                    needles: ["big-endian"]),
        TensorIOCorruptFile(name: "object", bytes: npyFile("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}"),
                    needles: ["object"]),
        TensorIOCorruptFile(name: "fortran order", bytes: npyFile("{'descr': '<f4', 'fortran_order': True, 'shape': (1,)}", data: [0, 0, 0, 0]),
                    needles: ["fortran_order is True; only C order is supported"]),
        TensorIOCorruptFile(name: "negative shape", bytes: npyFile("{\(f4), 'shape': (-1,)}"), needles: ["(-1,)", "negative"]),
        TensorIOCorruptFile(name: "integer overflow", bytes: npyFile("{\(f4), 'shape': (100000000000000000000000000,)}"),
                    needles: ["integer too large"]),
        TensorIOCorruptFile(name: "huge shape", bytes: npyFile("{\(f4), 'shape': (4294967296, 4294967296)}"),
                    needles: ["too large"]),
        TensorIOCorruptFile(name: "huge shape without data", bytes: npyFile("{\(f4), 'shape': (1073741824, 1024)}"),
                    needles: ["truncated", "needs 4398046511104 bytes", "only 0 bytes"]),
        TensorIOCorruptFile(name: "short data", bytes: npyFile("{\(f4), 'shape': (4,)}", data: [UInt8](repeating: 0, count: 8)),
                    needles: ["truncated", "needs 16 bytes", "only 8 bytes"]),
        TensorIOCorruptFile(name: "trailing data", bytes: npyFile("{\(f4), 'shape': (2,)}", data: [UInt8](repeating: 0, count: 12)),
                    needles: ["trailing data", "needs 8 bytes", "12 bytes"]),
    ]

    @Test(arguments: corrupt)
    func refusesTensorIOCorruptFiles(_ file: TensorIOCorruptFile) {
        expectFileError(mentioning: file.needles) { _ = try Tensor(npyBytes: file.bytes) }
    }

    @Test func errorsNameTheFile() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/short.npy"
            try Data(npyFile("{\(Self.f4), 'shape': (4,)}", data: [1, 2])).write(to: URL(fileURLWithPath: path))
            expectFileError(path: path, mentioning: ["needs 16 bytes"]) { _ = try Tensor.readNPY(at: path) }
            expectFileError(path: "custom name", mentioning: ["not an npy file"]) {
                _ = try Tensor(npyBytes: [1, 2, 3], source: "custom name")
            }
        }
    }

    @Test func missingFileGivesTheSystemsReason() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/nope.npy"
            expectFileError(path: path, mentioning: ["No such file or directory"]) { _ = try Tensor.readNPY(at: path) }
            expectFileError(path: dir, mentioning: ["directory"]) { _ = try Tensor.readNPY(at: dir) }
        }
    }
}

// MARK: safetensors

@Suite("TensorIO safetensors")
struct TensorIOSafeTensorsTests {
    @Test func roundTripsEveryDTypeWithMetadata() throws {
        var tensors: [(name: String, tensor: Tensor)] = []
        for (i, dtype) in DType.allCases.enumerated() {
            tensors.append(("layer.\(i).\(dtype)", try sample(dtype, shape: [i % 3 + 1, 5], seed: UInt64(i))))
        }
        tensors.append(("scalar", try Tensor(shape: [], scalars: [BFloat16(1.5)])))
        tensors.append(("empty", try Tensor(zeros: [0, 7], dtype: .int64)))
        tensors.append(("odd \"name\" \\ é\n\u{1}", Tensor([UInt8(1), 2, 3])))  // 3 bytes: later data is unaligned
        tensors.append(("after", try sample(.float64, shape: [2], seed: 99)))
        let metadata = ["format": "pt", "quote\"": "line\nbreak", "ünïcode": "✓"]
        let file = SafeTensorsFile(tensors: tensors, metadata: metadata)

        let back = try SafeTensorsFile(bytes: file.bytes())
        #expect(back.tensors.map(\.name) == tensors.map(\.name))
        for ((name, original), (_, read)) in zip(tensors, back.tensors) {
            #expect(read == original, "\(name)")
        }
        #expect(back.metadata == metadata)
        #expect(back["scalar"]?.shape == [])
        #expect(back["empty"]?.shape == [0, 7])
        #expect(back["missing"] == nil)

        try withTemporaryDirectory { dir in
            let path = dir + "/model.safetensors"
            try file.write(to: path)
            let fromDisk = try SafeTensorsFile.read(at: path)
            #expect(fromDisk.tensors.map(\.name) == tensors.map(\.name))
            #expect(fromDisk.tensors.map(\.tensor) == tensors.map(\.tensor))
            #expect(fromDisk.metadata == metadata)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["model.safetensors"])
        }
    }

    @Test func layoutFollowsTheGivenOrderAndPadsTheHeader() throws {
        let a = Tensor([Float(1), 2]), b = Tensor([UInt8(7)]), c = Tensor([Int16(-1)])
        let bytes = try SafeTensorsFile(tensors: [("z", a), ("a", b), ("m", c)]).bytes()
        let n = (0..<8).reduce(0) { $0 | Int(bytes[$1]) << (8 * $1) }
        #expect(n % 8 == 0)
        #expect(bytes.count == 8 + n + 11)
        // The data is the tensors' bytes back to back in the given order.
        let expectedData = a.withUnsafeBytes { Array($0) } + [7] + [0xFF, 0xFF]
        #expect(Array(bytes[(8 + n)...]) == expectedData)
        let json = try #require(String(bytes: bytes[8..<(8 + n)], encoding: .utf8))
        #expect(json.contains("\"z\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"))
        #expect(json.contains("\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[8,9]}"))
        #expect(json.contains("\"m\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[9,11]}"))
        #expect(!json.contains("__metadata__"))
        #expect(try SafeTensorsFile(bytes: bytes).tensors.map(\.name) == ["z", "a", "m"])
        // Deterministic.
        #expect(try SafeTensorsFile(tensors: [("z", a), ("a", b), ("m", c)], metadata: ["k": "v", "a": "b"]).bytes()
            == SafeTensorsFile(tensors: [("z", a), ("a", b), ("m", c)], metadata: ["a": "b", "k": "v"]).bytes())
    }

    @Test func emptyFileRoundTrips() throws {
        let bytes = try SafeTensorsFile(tensors: []).bytes()
        let back = try SafeTensorsFile(bytes: bytes)
        #expect(back.tensors.isEmpty)
        #expect(back.metadata.isEmpty)
    }

    @Test func writerRefusesDuplicateAndReservedNames() throws {
        let t = Tensor([Float(1)])
        expectFileError(mentioning: ["'w'", "unique"]) {
            _ = try SafeTensorsFile(tensors: [("w", t), ("v", t), ("w", t)]).bytes()
        }
        expectFileError(mentioning: ["__metadata__", "reserved"]) {
            _ = try SafeTensorsFile(tensors: [("__metadata__", t)]).bytes()
        }
        try withTemporaryDirectory { dir in
            let path = dir + "/dup.safetensors"
            expectFileError(path: path, mentioning: ["unique"]) {
                try SafeTensorsFile(tensors: [("w", t), ("w", t)]).write(to: path)
            }
            let left = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(left.isEmpty)
        }
    }

    @Test func readsTheReferenceImplementationsFile() throws {
        let file = try SafeTensorsFile.read(at: fixture("reference.safetensors"))
        // The reference writer orders data by alignment, then name.
        #expect(file.tensors.map(\.name) == ["steps", "weight", "half", "bytes", "mask"])
        #expect(file.metadata == ["format": "np", "note": "made by make_fixtures.py"])

        let weight = try #require(file["weight"])
        #expect(weight.shape == [2, 3])
        #expect(try weight.scalars(as: Float.self) == [0, 0.25, 0.5, 0.75, 1, 1.25])
        #expect(try file["half"]?.scalars(as: Float16.self) == [1, -0.5, 2048])
        #expect(try file["steps"]?.scalars(as: Int64.self) == [-5, 0, 1 << 40])
        let bytes = try #require(file["bytes"])
        #expect(bytes.shape == [2, 2])
        #expect(try bytes.scalars(as: UInt8.self) == [0, 7, 128, 255])
        #expect(try file["mask"]?.scalars(as: Bool.self) == [true, false, true])

        // Our writer's output reads back the same.
        let again = try SafeTensorsFile(bytes: file.bytes())
        #expect(again.tensors.map(\.name) == file.tensors.map(\.name))
        #expect(again.tensors.map(\.tensor) == file.tensors.map(\.tensor))
        #expect(again.metadata == file.metadata)
    }

    static let f32x2 = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
    static let corrupt: [TensorIOCorruptFile] = [
        TensorIOCorruptFile(name: "empty", bytes: [], needles: ["shorter than the 8-byte header length"]),
        TensorIOCorruptFile(name: "7 bytes", bytes: [1, 0, 0, 0, 0, 0, 0], needles: ["7 bytes long"]),
        TensorIOCorruptFile(name: "length past end", bytes: littleEndianBytes([UInt64(1000)]) + Array("{}".utf8),
                    needles: ["header length 1000 is larger than the 2 bytes"]),
        TensorIOCorruptFile(name: "length over limit", bytes: littleEndianBytes([UInt64(200_000_000)]) + Array("{}".utf8),
                    needles: ["100 MB"]),
        TensorIOCorruptFile(name: "length near UInt64.max", bytes: littleEndianBytes([UInt64.max]) + Array("{}".utf8),
                    needles: ["100 MB"]),
        TensorIOCorruptFile(name: "invalid UTF-8", bytes: littleEndianBytes([UInt64(3)]) + [0x7B, 0xFF, 0x7D], needles: ["UTF-8"]),
        TensorIOCorruptFile(name: "not JSON", bytes: safetensorsFile("{\"x\": "), needles: ["invalid header", "not valid JSON"]),
        TensorIOCorruptFile(name: "offset too large for Int", bytes: safetensorsFile(
            "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999999]}}"),
                    needles: ["'data_offsets' is not a list of two integers"]),
        TensorIOCorruptFile(name: "not an object", bytes: safetensorsFile("[1, 2]"), needles: ["invalid header"]),
        TensorIOCorruptFile(name: "entry not an object", bytes: safetensorsFile("{\"x\": 5}"), needles: ["invalid header", "tensor 'x' is not a JSON object"]),
        TensorIOCorruptFile(name: "missing dtype", bytes: safetensorsFile("{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data: .init(repeating: 0, count: 8)),
                    needles: ["tensor 'x' has no 'dtype' field"]),
        TensorIOCorruptFile(name: "missing shape", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}"),
                    needles: ["'x' has no 'shape' field"]),
        TensorIOCorruptFile(name: "missing offsets", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}"),
                    needles: ["'x' has no 'data_offsets' field"]),
        TensorIOCorruptFile(name: "fractional shape", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}"),
                    needles: ["invalid header", "tensor 'x': 'shape' is not a list of integers"]),
        TensorIOCorruptFile(name: "dtype not a string", bytes: safetensorsFile("{\"x\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}"),
                    needles: ["invalid header", "tensor 'x': 'dtype' is not a string"]),
        TensorIOCorruptFile(name: "unknown dtype", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", data: [0, 0]),
                    needles: ["'x'", "unknown dtype 'F8_E4M3'"]),
        TensorIOCorruptFile(name: "negative shape", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", data: .init(repeating: 0, count: 8)),
                    needles: ["'x'", "negative dimension -2"]),
        TensorIOCorruptFile(name: "huge shape", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}"),
                    needles: ["'x'", "too large"]),
        TensorIOCorruptFile(name: "three offsets", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}"),
                    needles: ["'x'", "data_offsets"]),
        TensorIOCorruptFile(name: "negative offsets", bytes: safetensorsFile("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-4,0]}}"),
                    needles: ["'x'", "negative"]),
        TensorIOCorruptFile(name: "end before begin", bytes: safetensorsFile("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,4]}}", data: .init(repeating: 0, count: 8)),
                    needles: ["'x'", "end is before its begin"]),
        TensorIOCorruptFile(name: "out of range", bytes: safetensorsFile(f32x2, data: [0, 0, 0, 0]),
                    needles: ["'x'", "beyond the end of the data", "4 bytes"]),
        TensorIOCorruptFile(name: "length mismatch", bytes: safetensorsFile("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data: .init(repeating: 0, count: 8)),
                    needles: ["'x'", "8 bytes", "needs 12 bytes"]),
        TensorIOCorruptFile(name: "overlap", bytes: safetensorsFile(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            data: .init(repeating: 0, count: 12)), needles: ["'a'", "'b'", "overlap"]),
        TensorIOCorruptFile(name: "bad metadata", bytes: safetensorsFile("{\"__metadata__\":{\"k\":1}}"), needles: ["__metadata__", "strings"]),
    ]

    @Test(arguments: corrupt)
    func refusesTensorIOCorruptFiles(_ file: TensorIOCorruptFile) {
        expectFileError(mentioning: file.needles) { _ = try SafeTensorsFile(bytes: file.bytes) }
    }

    @Test func acceptsZeroSizeTensorsAtTheSameOffsetAndNullMetadata() throws {
        let json = "{\"__metadata__\":null,\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
            + "\"e2\":{\"dtype\":\"BOOL\",\"shape\":[2,0],\"data_offsets\":[4,4]},"
            + "\"x\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}   "
        let file = try SafeTensorsFile(bytes: safetensorsFile(json, data: littleEndianBytes([Int32(-9)])))
        #expect(file.tensors.map(\.name) == ["x", "e1", "e2"])
        #expect(try file["x"]?.scalars(as: Int32.self) == [-9])
        #expect(file["e2"]?.shape == [2, 0])
        #expect(file.metadata.isEmpty)
    }

    @Test func errorsNameTheFile() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/bad.safetensors"
            try Data(safetensorsFile(Self.f32x2, data: [1])).write(to: URL(fileURLWithPath: path))
            expectFileError(path: path, mentioning: ["'x'", "beyond the end"]) { _ = try SafeTensorsFile.read(at: path) }
            let missing = dir + "/missing.safetensors"
            expectFileError(path: missing, mentioning: ["No such file or directory"]) {
                _ = try SafeTensorsFile.read(at: missing)
            }
        }
    }
}

// MARK: atomic files

@Suite("TensorIO atomic files")
struct TensorIOAtomicFileTests {
    @Test func replacesTheFileAndLeavesNoTemporaryFiles() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/data.bin"
            try writeFileAtomically([1, 2, 3], to: path)
            #expect(try readWholeFile(path) == [1, 2, 3])
            try writeFileAtomically([9], to: path)
            #expect(try readWholeFile(path) == [9])
            try writeFileAtomically([], to: path)
            #expect(try readWholeFile(path) == [])
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["data.bin"])
        }
    }

    @Test func readsFilesLargerThanOneChunk() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/big.bin"
            let bytes = (0..<(3 << 20) + 17).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try writeFileAtomically(bytes, to: path)
            #expect(try readWholeFile(path) == bytes)
        }
    }

    @Test func failuresLeaveNothingBehind() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/no/such/dir/t.npy"
            expectFileError(path: path, mentioning: ["No such file or directory"]) {
                try writeFileAtomically([1], to: path)
            }
            // A directory is never replaced (nor written into).
            let blocked = dir + "/blocked"
            try FileManager.default.createDirectory(atPath: blocked + "/inside", withIntermediateDirectories: true)
            expectFileError(path: blocked, mentioning: ["is a directory"]) { try writeFileAtomically([1, 2], to: blocked) }
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["blocked"])
        }
    }
}
