// libFuzzer target for the `.safetensors` reader, ``SafeTensorsFile/init(bytes:source:)``.
//
// Built by `Fuzz/run.sh safetensors` together with every source of the
// FastVideoDistributed module (into that module), so it calls the very reader
// `SafeTensorsFile.read(at:)` uses.

/// libFuzzer's entry point: decodes `data` as a `.safetensors` file.
///
/// Any input may be rejected, but only with an ``FVDError/file(path:problem:)``; any
/// other error, a trap, a sanitizer report, a hang or an allocation beyond libFuzzer's
/// limit is a finding. An accepted input must have a shape whose nonzero dimensions
/// multiply without overflow, and must survive a round trip: writing the
/// file back with ``SafeTensorsFile/bytes()`` and reading that again gives the same
/// names, shapes, dtypes, bytes and metadata.
///
/// - Parameters:
///   - data: The input bytes, valid for `size` bytes.
///   - size: The number of input bytes.
/// - Returns: 0 (the input is worth keeping in the corpus if it found new coverage).
@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let file: SafeTensorsFile
    do {
        file = try SafeTensorsFile(bytes: bytes, source: "<fuzz>")
    } catch let error as FVDError {
        guard case let .file(path, problem) = error, path == "<fuzz>", !problem.isEmpty else {
            fatalError("the safetensors reader threw an FVDError that is not .file(path: \"<fuzz>\", …): \(error)")
        }
        return 0
    } catch {
        fatalError("the safetensors reader threw a non-FVDError: \(error)")
    }
    checkRoundTrip(file)
    return 0
}

/// Writes `file` as `.safetensors` and reads it back, trapping unless the result is identical.
///
/// A file the reader accepted can still be refused by the writer, which rejects a
/// tensor named `__metadata__` or two tensors of one name; the reader takes
/// `__metadata__` as the metadata and the JSON decoder keeps one of two equal keys, so
/// neither should get through.
///
/// - Parameter file: A file the reader accepted.
private func checkRoundTrip(_ file: SafeTensorsFile) {
    for (name, tensor) in file.tensors { checkShapeProducts(tensor.shape, of: "'\(name)'") }
    let again: SafeTensorsFile
    do {
        again = try SafeTensorsFile(bytes: file.bytes(), source: "<fuzz round trip>")
    } catch {
        fatalError("an accepted file (\(file.tensors.count) tensors) does not read back: \(error)")
    }
    check(again.metadata == file.metadata, "the round trip changed the metadata")
    check(again.tensors.count == file.tensors.count, "the round trip changed the number of tensors")
    // The order can change: the reader orders tensors by their offsets, and a file may
    // leave gaps in the data that the writer closes up (zero-byte tensors then tie).
    for (name, tensor) in file.tensors {
        guard let other = again[name] else { fatalError("the round trip lost the tensor '\(name)'") }
        check(tensor.shape == other.shape && tensor.dtype == other.dtype,
              "the round trip changed the shape or dtype of '\(name)'")
        let same = tensor.withUnsafeBytes { x in other.withUnsafeBytes { y in x.elementsEqual(y) } }
        check(same, "the round trip changed the data of '\(name)'")
    }
}
