/// One rectangular block move between two row-major buffers, in bytes.
///
/// It copies `outerCount × innerCount` runs of `runBytes` contiguous bytes; run
/// `(o, i)` starts at `srcOffset + o·srcOuterStride + i·srcInnerStride` in the source
/// and at `dstOffset + o·dstOuterStride + i·dstInnerStride` in the destination.
/// Every placement the collectives need — a block of an all-gather, a head slice
/// of an all-to-all, a chunk of a reduction — is one of these, so the index math
/// lives here once and every transport executes the same plan.
struct StridedCopy: Sendable, Equatable {
    var srcOffset: Int
    var dstOffset: Int
    var outerCount: Int
    var srcOuterStride: Int
    var dstOuterStride: Int
    var innerCount: Int
    var srcInnerStride: Int
    var dstInnerStride: Int
    var runBytes: Int

    /// Builds a plan and merges levels that are contiguous on both sides, so that a
    /// block that is really one run is executed as one `memcpy`.
    init(
        srcOffset: Int, dstOffset: Int,
        outerCount: Int, srcOuterStride: Int, dstOuterStride: Int,
        innerCount: Int, srcInnerStride: Int, dstInnerStride: Int,
        runBytes: Int
    ) {
        self.srcOffset = srcOffset
        self.dstOffset = dstOffset
        self.outerCount = outerCount
        self.srcOuterStride = srcOuterStride
        self.dstOuterStride = dstOuterStride
        self.innerCount = innerCount
        self.srcInnerStride = srcInnerStride
        self.dstInnerStride = dstInnerStride
        self.runBytes = runBytes
        normalize()
    }

    /// A plan that copies nothing (a member this rank takes no bytes from).
    static let empty = contiguous(srcOffset: 0, dstOffset: 0, bytes: 0)

    /// A single contiguous run.
    static func contiguous(srcOffset: Int, dstOffset: Int, bytes: Int) -> StridedCopy {
        StridedCopy(
            srcOffset: srcOffset, dstOffset: dstOffset,
            outerCount: 1, srcOuterStride: 0, dstOuterStride: 0,
            innerCount: 1, srcInnerStride: 0, dstInnerStride: 0, runBytes: bytes)
    }

    /// Bytes written by the whole plan.
    var totalBytes: Int { outerCount * innerCount * runBytes }

    private mutating func normalize() {
        if innerCount == 0 || outerCount == 0 || runBytes == 0 {
            outerCount = 0; innerCount = 0; runBytes = 0
            return
        }
        // Inner runs that touch end to end on both sides form one run.
        if innerCount > 1, srcInnerStride == runBytes, dstInnerStride == runBytes {
            runBytes *= innerCount
            innerCount = 1
        }
        // Outer rows of one inner block that touch end to end on both sides.
        if innerCount == 1, outerCount > 1, srcOuterStride == runBytes, dstOuterStride == runBytes {
            runBytes *= outerCount
            outerCount = 1
        }
        if innerCount == 1 { srcInnerStride = 0; dstInnerStride = 0 }
        if outerCount == 1 { srcOuterStride = 0; dstOuterStride = 0 }
    }

    /// Whether the runs lie back to back in the source (`source`) or the destination, in
    /// ``forEachRun(_:)`` order: that side is the one block of ``totalBytes`` at its offset.
    func isContiguous(atSource source: Bool) -> Bool {
        let inner = source ? srcInnerStride : dstInnerStride, outer = source ? srcOuterStride : dstOuterStride
        return (innerCount <= 1 || inner == runBytes) && (outerCount <= 1 || outer == innerCount * runBytes)
    }

    /// Calls `body(packedOffset, srcOffset, dstOffset, bytes)` for the parts of the runs
    /// that fall in `range` of the packed stream (the runs laid end to end in
    /// ``forEachRun(_:)`` order), in order: what one chunk of a packed message holds.
    func forEachPiece(inPacked range: Range<Int>, _ body: (Int, Int, Int, Int) throws -> Void) rethrows {
        guard runBytes > 0, !range.isEmpty else { return }
        var run = range.lowerBound / runBytes
        var within = range.lowerBound % runBytes
        var packed = range.lowerBound
        while packed < range.upperBound, run < outerCount * innerCount {
            let (o, i) = run.quotientAndRemainder(dividingBy: innerCount)
            let bytes = min(runBytes - within, range.upperBound - packed)
            try body(
                packed, srcOffset + o * srcOuterStride + i * srcInnerStride + within,
                dstOffset + o * dstOuterStride + i * dstInnerStride + within, bytes)
            packed += bytes
            within = 0
            run += 1
        }
    }

    /// Calls `body(srcOffset, dstOffset, bytes)` for every run, in order.
    @inlinable
    func forEachRun(_ body: (Int, Int, Int) throws -> Void) rethrows {
        for o in 0..<outerCount {
            let s = srcOffset + o * srcOuterStride
            let d = dstOffset + o * dstOuterStride
            for i in 0..<innerCount {
                try body(s + i * srcInnerStride, d + i * dstInnerStride, runBytes)
            }
        }
    }
}
