// Checks both fuzz targets share; compiled into each target's binary by Fuzz/run.sh.

/// Traps unless the product of the nonzero dimensions of `shape` fits in an `Int`.
///
/// The rest of the library multiplies runs of dimensions together (for example the
/// outer and inner sizes around a gather dimension), which must not overflow even when
/// another dimension is 0 and the tensor is empty; numpy refuses such shapes too.
///
/// - Parameters:
///   - shape: The shape of a tensor the reader accepted.
///   - name: What to call the tensor in the message.
func checkShapeProducts(_ shape: [Int], of name: String) {
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
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError(message()) }
}
