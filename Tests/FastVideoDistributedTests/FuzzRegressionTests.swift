import Foundation
import Testing
@testable import FastVideoDistributed

// Hostile inputs for the `.npy` and `.safetensors` readers: what the libFuzzer targets in
// Fuzz/ found (`crash-*`) and hand-made ones (`nasty-*`, `valid-*`, written by
// Fixtures/fuzz/make_fuzz_fixtures.py). Every reader must answer each with a tensor or an
// `FVDError.file` naming the file, never a trap, a hang or a huge allocation.

/// Tests/FastVideoDistributedTests/Fixtures/fuzz.
private let fuzzFixturesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures").appendingPathComponent("fuzz")

/// The names of the fixture files in `folder` (`npy` or `safetensors`), sorted.
///
/// - Parameter folder: The subfolder of Fixtures/fuzz.
/// - Returns: The file names, or `[]` if the folder cannot be listed.
private func fuzzFixtureNames(_ folder: String) -> [String] {
    let url = fuzzFixturesDirectory.appendingPathComponent(folder)
    let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
    return names.filter { !$0.hasPrefix(".") }.sorted()
}

/// The path of the fixture `name` in `folder`.
private func fuzzFixturePath(_ folder: String, _ name: String) -> String {
    fuzzFixturesDirectory.appendingPathComponent(folder).appendingPathComponent(name).path
}

/// What a reader must answer for one fixture.
private enum FuzzExpectation: Sendable {
    /// An `FVDError.file` whose problem mentions every one of these texts.
    case rejected(_ mentioning: [String])
    /// A tensor (or a file of tensors), which must also be usable afterwards.
    case accepted
}

/// The answer expected for each file in Fixtures/fuzz/npy.
private let npyExpectations: [String: FuzzExpectation] = [
    // Found by `Fuzz/run.sh npy`: an empty shape whose other dimensions overflow Int when
    // multiplied, which the layout code would trap on.
    "crash-a8ed1afd-zero-dim-overflow.npy": .rejected(["invalid shape (0, 9223372036854775807, 1, 0, 1, 1, 2)", "too large"]),
    "nasty-data-truncated.npy": .rejected(["data is truncated", "needs 16 bytes", "only 15 bytes"]),
    "nasty-deep-nesting.npy": .rejected(["unparsable header", "nesting too deep"]),
    "nasty-dim-beyond-int64.npy": .rejected(["integer too large"]),
    "nasty-dtype-bigendian.npy": .rejected(["'>f8'", "big-endian"]),
    "nasty-dtype-byteorder-only.npy": .rejected(["unsupported dtype '<'", "empty"]),
    "nasty-dtype-empty.npy": .rejected(["unsupported dtype ''", "empty"]),
    "nasty-dtype-not-string.npy": .rejected(["'descr' is an integer"]),
    "nasty-dtype-object.npy": .rejected(["'|O'", "object array"]),
    "nasty-dtype-structured.npy": .rejected(["structured dtypes"]),
    "nasty-dtype-uint16.npy": .rejected(["unsupported dtype '<u2'", "uint16"]),
    "nasty-dtype-unicode.npy": .rejected(["unsupported dtype", "unicode string"]),
    "nasty-duplicate-key.npy": .rejected(["duplicate key 'descr'"]),
    "nasty-empty-file.npy": .rejected(["not an npy file"]),
    "nasty-fortran-order.npy": .rejected(["fortran_order is True"]),
    "nasty-header-length-beyond-file.npy": .rejected(["truncated header", "4294967295 bytes"]),
    "nasty-huge-shape-2d.npy": .rejected(["data is truncated", "needs 2000000000000 bytes", "only 16 bytes"]),
    "nasty-huge-shape.npy": .rejected(["data is truncated", "needs 4000000000000 bytes", "only 4 bytes"]),
    "nasty-magic-only.npy": .rejected(["truncated header", "format version"]),
    "nasty-min-int-dim.npy": .rejected(["integer too large"]),
    "nasty-missing-shape.npy": .rejected(["the key 'shape' is missing"]),
    "nasty-negative-dim.npy": .rejected(["invalid shape (-1, 4)", "negative"]),
    "nasty-non-utf8-v3.npy": .rejected(["unsupported dtype"]),
    "nasty-not-a-dict.npy": .rejected(["Python dict literal"]),
    "nasty-overflowing-shape.npy": .rejected(["invalid shape (9223372036854775807, 9223372036854775807)", "too large"]),
    "nasty-shape-list.npy": .rejected(["'shape' is a list, not a tuple"]),
    "nasty-shape-strings.npy": .rejected(["'shape' holds a string"]),
    "nasty-text-after-dict.npy": .rejected(["unexpected text after the dict"]),
    "nasty-trailing-data.npy": .rejected(["trailing data", "needs 4 bytes", "5 bytes"]),
    "nasty-truncated-header.npy": .rejected(["truncated header", "512 bytes", "only 20 bytes"]),
    "nasty-unknown-key.npy": .rejected(["unexpected key 'x'"]),
    "nasty-unknown-version.npy": .rejected(["unsupported npy format version 9.9"]),
    "nasty-unterminated-string.npy": .rejected(["unterminated string"]),
    "nasty-version-only.npy": .rejected(["truncated header", "header length"]),
    "nasty-zero-dim-overflow.npy": .rejected(["invalid shape (0, 9223372036854775807, 9223372036854775807)", "too large"]),
    "valid-empty-wide.npy": .accepted,
    "valid-v3-scalar.npy": .accepted,
]

/// The answer expected for each file in Fixtures/fuzz/safetensors.
private let safetensorsExpectations: [String: FuzzExpectation] = [
    "nasty-deep-nesting.safetensors": .rejected(["invalid header"]),
    "nasty-dim-beyond-int64.safetensors": .rejected(["'shape' is not a list of integers"]),
    "nasty-dim-float.safetensors": .rejected(["'shape' is not a list of integers"]),
    "nasty-dtype-lowercase.safetensors": .rejected(["unknown dtype 'f32'"]),
    "nasty-dtype-not-string.safetensors": .rejected(["'dtype' is not a string"]),
    // JSON keeps one of two equal keys; either way the result is one valid tensor.
    "nasty-duplicate-empty-name.safetensors": .accepted,
    "nasty-duplicate-name.safetensors": .accepted,
    "nasty-empty-file.safetensors": .rejected(["not a safetensors file", "0 bytes long"]),
    "nasty-entry-not-object.safetensors": .rejected(["tensor 'a' is not a JSON object"]),
    "nasty-header-length-beyond-file.safetensors": .rejected(["header length 4096", "58 bytes"]),
    "nasty-header-length-huge.safetensors": .rejected(["header length 18446744073709551615", "100 MB limit"]),
    "nasty-header-length-over-limit.safetensors": .rejected(["header length 100000001", "100 MB limit"]),
    "nasty-header-whitespace-first.safetensors": .rejected(["not a JSON object"]),
    "nasty-huge-shape.safetensors": .rejected(["shape [1000000000000]", "needs 4000000000000 bytes"]),
    "nasty-metadata-list.safetensors": .rejected(["'__metadata__' must be an object"]),
    "nasty-metadata-not-strings.safetensors": .rejected(["'__metadata__' must be an object"]),
    "nasty-negative-dim.safetensors": .rejected(["negative dimension -1"]),
    "nasty-non-utf8-header.safetensors": .rejected(["not valid UTF-8"]),
    "nasty-not-an-object.safetensors": .rejected(["not a JSON object"]),
    "nasty-not-json.safetensors": .rejected(["not valid JSON"]),
    "nasty-offsets-beyond-data.safetensors": .rejected(["data_offsets [0, 4] beyond the end of the data", "2 bytes"]),
    "nasty-offsets-huge.safetensors": .rejected(["beyond the end of the data"]),
    "nasty-offsets-missing.safetensors": .rejected(["no 'data_offsets' field"]),
    "nasty-offsets-negative.safetensors": .rejected(["negative data_offsets [-4, 0]"]),
    "nasty-offsets-reversed.safetensors": .rejected(["[4, 0] whose end is before its begin"]),
    "nasty-offsets-size-mismatch.safetensors": .rejected(["4 bytes of data", "needs 8 bytes"]),
    "nasty-offsets-three.safetensors": .rejected(["3 numbers"]),
    "nasty-overflowing-shape.safetensors": .rejected(["shape [9223372036854775807, 9223372036854775807]", "too large"]),
    "nasty-overlapping.safetensors": .rejected(["'a' [0, 8] and 'b' [4, 8] overlap"]),
    "nasty-same-offsets.safetensors": .rejected(["'a' [0, 4] and 'b' [0, 4] overlap"]),
    "nasty-short-file.safetensors": .rejected(["not a safetensors file", "4 bytes long"]),
    "nasty-unknown-dtype.safetensors": .rejected(["unknown dtype 'F8_E4M3'"]),
    "nasty-zero-dim-overflow.safetensors": .rejected(["shape [0, 9223372036854775807, 9223372036854775807]", "too large"]),
    "valid-empty-inside.safetensors": .accepted,
    "valid-unsorted-offsets.safetensors": .accepted,
]

/// Checks that `result` is what `expected` says, for the fixture at `path`.
///
/// A rejection must be an `FVDError.file` naming `path`; an unexpected answer is
/// recorded as an issue. Returns the value when the reader accepted the input.
private func checkAnswer<T>(
    _ result: Result<T, any Error>, expected: FuzzExpectation, path: String,
    sourceLocation: SourceLocation = #_sourceLocation
) -> T? {
    switch (result, expected) {
    case let (.success(value), .accepted):
        return value
    case (.success, .rejected):
        Issue.record("\(path) was accepted but should be rejected", sourceLocation: sourceLocation)
        return nil
    case let (.failure(error), _):
        guard let error = error as? FVDError, case let .file(errorPath, problem) = error else {
            Issue.record("\(path): expected FVDError.file, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
        #expect(errorPath == path, sourceLocation: sourceLocation)
        guard case let .rejected(needles) = expected else {
            Issue.record("\(path) should be accepted but was rejected: \(problem)", sourceLocation: sourceLocation)
            return nil
        }
        for needle in needles {
            #expect(problem.contains(needle), "'\(problem)' should mention '\(needle)'", sourceLocation: sourceLocation)
        }
        return nil
    }
}

/// Checks that an accepted tensor can be used: its sizes are consistent, it can be
/// viewed around every dimension as the collectives do, and it survives a round trip.
private func checkUsable(_ tensor: Tensor, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(tensor.shape.allSatisfy { $0 >= 0 }, sourceLocation: sourceLocation)
    #expect(tensor.byteCount == tensor.count * tensor.dtype.byteSize, sourceLocation: sourceLocation)
    for dim in tensor.shape.indices {
        // Traps (failing the whole run) if a run of dimensions overflows.
        let (outer, size, inner) = Layout.split(tensor.shape, at: dim)
        #expect(size == tensor.shape[dim], sourceLocation: sourceLocation)
        #expect(outer * size * inner == tensor.count, sourceLocation: sourceLocation)
    }
    let copy = try SafeTensorsFile(bytes: SafeTensorsFile(tensors: [("t", tensor)]).bytes())
    #expect(copy["t"] == tensor, sourceLocation: sourceLocation)
}

/// Feeds every file in Fixtures/fuzz to the in-memory and the path readers.
@Suite("Fuzz regressions: hostile tensor files")
struct FuzzRegressionTests {
    /// Each fixture file has an expected answer, and each expected answer a file.
    @Test("Every fixture has an expectation", arguments: ["npy", "safetensors"])
    func everyFixtureHasAnExpectation(_ folder: String) {
        let expectations = folder == "npy" ? npyExpectations : safetensorsExpectations
        let names = fuzzFixtureNames(folder)
        #expect(!names.isEmpty, "no fixtures found in \(fuzzFixturesDirectory.path)/\(folder)")
        for name in names where expectations[name] == nil {
            Issue.record("Fixtures/fuzz/\(folder)/\(name) has no entry in FuzzRegressionTests.swift")
        }
        for name in expectations.keys where !names.contains(name) {
            Issue.record("FuzzRegressionTests.swift expects Fixtures/fuzz/\(folder)/\(name), which does not exist")
        }
    }

    /// The npy readers answer `name` as expected, alike, and an accepted tensor is usable.
    @Test("The npy reader answers every fixture with a tensor or an FVDError", arguments: fuzzFixtureNames("npy"))
    func npyFixture(_ name: String) throws {
        let path = fuzzFixturePath("npy", name)
        let expected = npyExpectations[name] ?? .rejected([])
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))

        let fromBytes = Result<Tensor, any Error> { try Tensor(npyBytes: bytes, source: path) }
        let fromFile = Result<Tensor, any Error> { try Tensor.readNPY(at: path) }
        let tensor = checkAnswer(fromBytes, expected: expected, path: path)
        let same = checkAnswer(fromFile, expected: expected, path: path)
        #expect(tensor == same, "reading \(name) from the file and from its bytes must agree")
        if case let (.failure(a as FVDError), .failure(b as FVDError)) = (fromBytes, fromFile) {
            #expect(a == b)
        }

        if let tensor {
            try checkUsable(tensor)
            #expect(try Tensor(npyBytes: tensor.npyBytes()) == tensor)
        }
    }

    /// The safetensors readers answer `name` as expected, alike, and accepted tensors are usable.
    @Test("The safetensors reader answers every fixture with tensors or an FVDError",
          arguments: fuzzFixtureNames("safetensors"))
    func safetensorsFixture(_ name: String) throws {
        let path = fuzzFixturePath("safetensors", name)
        let expected = safetensorsExpectations[name] ?? .rejected([])
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))

        let fromBytes = Result<SafeTensorsFile, any Error> { try SafeTensorsFile(bytes: bytes, source: path) }
        let fromFile = Result<SafeTensorsFile, any Error> { try SafeTensorsFile.read(at: path) }
        let file = checkAnswer(fromBytes, expected: expected, path: path)
        let same = checkAnswer(fromFile, expected: expected, path: path)
        #expect(file?.tensors.map(\.name) == same?.tensors.map(\.name))
        if case let (.failure(a as FVDError), .failure(b as FVDError)) = (fromBytes, fromFile) {
            #expect(a == b)
        }

        if let file {
            #expect(Set(file.tensors.map(\.name)).count == file.tensors.count, "tensor names must be unique")
            for (name, tensor) in file.tensors {
                try checkUsable(tensor)
                #expect(same?[name] == tensor)
            }
            let copy = try SafeTensorsFile(bytes: file.bytes())
            #expect(copy.metadata == file.metadata)
            for (name, tensor) in file.tensors { #expect(copy[name] == tensor) }
        }
    }

    /// `Tensor.elementCount(of:)` refuses what the fuzzer found: an empty shape whose
    /// other dimensions overflow, for files and for tensors made in memory alike.
    @Test("A zero dimension cannot hide an overflowing shape")
    func zeroDimensionDoesNotHideOverflow() throws {
        #expect(try Tensor.elementCount(of: [0, 1_000_000_000]) == 0)
        #expect(try Tensor.elementCount(of: [2, 3, 0]) == 0)
        #expect(try Tensor.elementCount(of: []) == 1)
        #expect(throws: FVDError.self) { try Tensor.elementCount(of: [0, Int.max, 2]) }
        #expect(throws: FVDError.self) { try Tensor.elementCount(of: [1 << 40, 1 << 40, 0]) }
        #expect(throws: FVDError.self) { try Tensor.elementCount(of: [0, -1]) }
        #expect(throws: FVDError.self) { try Tensor(zeros: [0, 1 << 62, 4], dtype: .float32) }
    }
}
