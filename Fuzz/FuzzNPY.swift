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

/// Traps unless the product of the nonzero dimensions of `shape` fits in an `Int`.
///
/// The rest of the library multiplies runs of dimensions together (for example the
/// outer and inner sizes around a gather dimension), which must not overflow even when
/// another dimension is 0 and the tensor is empty; numpy refuses such shapes too.
///
/// - Parameters:
///   - shape: The shape of a tensor the reader accepted.
///   - name: What to call the tensor in the message.
private func checkShapeProducts(_ shape: [Int], of name: String) {
    var product = 1
    for d in shape where d != 0 {
        let (next, overflow) = product.multipliedReportingOverflow(by: d)
        check(!overflow, "the reader accepted \(name) of shape \(shape), whose nonzero dimensions overflow Int")
        product = next
    }
}

/// Traps with `message` unless `condition` holds.
///
/// Used instead of `precondition`, whose message `-O` drops, and which `-O` (Swift 6.3.1)
/// was seen to delete outright when it tests the overflow flag of a
/// `multipliedReportingOverflow` whose product is not used afterwards.
///
/// - Parameters:
///   - condition: The invariant.
///   - message: What went wrong, for the crash report.
private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError(message()) }
}
