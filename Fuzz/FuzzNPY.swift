// libFuzzer target for the `.npy` reader, ``Tensor/init(npyBytes:source:)``.
//
// Built by `Fuzz/run.sh npy` together with every source of the FastVideoDistributed
// module (into that module), so it calls the very reader `Tensor.readNPY(at:)` uses.

/// libFuzzer's entry point: decodes `data` as a `.npy` file.
///
/// Any input may be rejected, but only with an ``FVDError/file(path:problem:)``; any
/// other error, a trap, a sanitizer report, a hang or an allocation beyond libFuzzer's
/// limit is a finding. An accepted input must have a shape whose nonzero dimensions
/// multiply without overflow, and must survive a round trip: writing the
/// tensor back with ``Tensor/npyBytes()`` and reading that again gives the same shape,
/// dtype and bytes.
///
/// - Parameters:
///   - data: The input bytes, valid for `size` bytes.
///   - size: The number of input bytes.
/// - Returns: 0 (the input is worth keeping in the corpus if it found new coverage).
@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let tensor: Tensor
    do {
        tensor = try Tensor(npyBytes: bytes, source: "<fuzz>")
    } catch let error as FVDError {
        guard case let .file(path, problem) = error, path == "<fuzz>", !problem.isEmpty else {
            fatalError("the npy reader threw an FVDError that is not .file(path: \"<fuzz>\", …): \(error)")
        }
        return 0
    } catch {
        fatalError("the npy reader threw a non-FVDError: \(error)")
    }
    checkRoundTrip(tensor)
    return 0
}

/// Writes `tensor` as `.npy` and reads it back, trapping unless the result is identical.
///
/// - Parameter tensor: A tensor the reader accepted.
private func checkRoundTrip(_ tensor: Tensor) {
    check(tensor.byteCount >= 0 && tensor.shape.allSatisfy { $0 >= 0 }, "accepted a negative shape \(tensor.shape)")
    // bfloat16 has no numpy dtype, and the reader never produces it.
    check(tensor.dtype != .bfloat16, "the npy reader produced a bfloat16 tensor")
    checkShapeProducts(tensor.shape, of: "a tensor")
    let again: Tensor
    do {
        again = try Tensor(npyBytes: tensor.npyBytes(), source: "<fuzz round trip>")
    } catch {
        fatalError("an accepted tensor (shape \(tensor.shape), \(tensor.dtype)) does not read back: \(error)")
    }
    check(again.shape == tensor.shape && again.dtype == tensor.dtype, "the round trip changed shape or dtype")
    let same = tensor.withUnsafeBytes { a in again.withUnsafeBytes { b in a.elementsEqual(b) } }
    check(same, "the round trip changed the data")
}
