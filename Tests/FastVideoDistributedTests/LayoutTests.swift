import Testing
@testable import FastVideoDistributed

/// Executes a plan on byte arrays, run by run.
private func apply(_ plan: StridedCopy, from src: [UInt8], to dst: inout [UInt8]) {
    plan.forEachRun { s, d, n in for k in 0..<n { dst[d + k] = src[s + k] } }
}

@Suite("Layout: pure index math")
struct LayoutTests {
    @Test("normalize accepts -ndim..<ndim and names the dim and rank otherwise")
    func normalize() throws {
        #expect(try Layout.normalize(dim: -1, ndim: 3, op: "x") == 2)
        #expect(try Layout.normalize(dim: -3, ndim: 3, op: "x") == 0)
        #expect(try Layout.normalize(dim: 2, ndim: 3, op: "x") == 2)
        #expect(throws: FVDError.invalidDimension(op: "x", dim: 3, ndim: 3)) { try Layout.normalize(dim: 3, ndim: 3, op: "x") }
        #expect(throws: FVDError.invalidDimension(op: "x", dim: -4, ndim: 3)) { try Layout.normalize(dim: -4, ndim: 3, op: "x") }
        #expect(throws: FVDError.invalidDimension(op: "x", dim: 0, ndim: 0)) { try Layout.normalize(dim: 0, ndim: 0, op: "x") }
    }

    @Test("contiguous levels merge into one run, and the plan still moves the same bytes")
    func merging() {
        let plan = StridedCopy(
            srcOffset: 0, dstOffset: 0, outerCount: 3, srcOuterStride: 8, dstOuterStride: 8,
            innerCount: 2, srcInnerStride: 4, dstInnerStride: 4, runBytes: 4)
        #expect(plan.outerCount == 1 && plan.innerCount == 1 && plan.runBytes == 24)
        let strided = StridedCopy(
            srcOffset: 1, dstOffset: 2, outerCount: 2, srcOuterStride: 10, dstOuterStride: 6,
            innerCount: 2, srcInnerStride: 3, dstInnerStride: 2, runBytes: 2)
        #expect(strided.totalBytes == 8 && strided.outerCount == 2 && strided.innerCount == 2 && strided.runBytes == 2)
        let src = (0..<32).map(UInt8.init)
        var dst = [UInt8](repeating: 0, count: 16)
        apply(strided, from: src, to: &dst)
        #expect(Array(dst[2..<6]) == [1, 2, 4, 5] && Array(dst[8..<12]) == [11, 12, 14, 15])
    }

    @Test("balanced ranges cover the count with sizes differing by at most one", arguments: [0, 1, 5, 16, 17])
    func balanced(count: Int) {
        for parts in 1...6 {
            let ranges = Layout.balancedRanges(count: count, parts: parts)
            #expect(ranges.count == parts && ranges.first!.lowerBound == 0 && ranges.last!.upperBound == count)
            #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
            #expect((ranges.map(\.count).max()! - ranges.map(\.count).min()!) <= 1)
        }
    }

    @Test("the even all-to-all's arithmetic plan is the general plan with equal splits")
    func evenAllToAll() {
        for (shape, n) in [([2, 3, 4, 5], 2), ([1, 1, 6, 1], 3), ([3, 4, 8, 2], 4), ([1, 2, 2, 7], 1)] {
            for scatterHeads in [true, false] {
                var input = shape
                if !scatterHeads { input[1] = shape[1] * n; input[2] = shape[2] / n }
                guard input[scatterHeads ? 2 : 1] % n == 0 else { continue }
                let even = Layout.EvenAllToAll4D(scatterHeads: scatterHeads, shape: input, parts: n, elementSize: 2)
                let seq = Array(repeating: scatterHeads ? input[1] : input[1] / n, count: n)
                let heads = Array(repeating: scatterHeads ? input[2] / n : input[2], count: n)
                let general = Layout.AllToAll4D(
                    scatterHeads: scatterHeads, batch: input[0], seq: seq, heads: heads, headDim: input[3], elementSize: 2)
                #expect(even.outputShape(headDim: input[3]) == general.outputShape(rank: 0))
                for j in 0..<n { for r in 0..<n { #expect(even.copy(from: j, to: r) == general.copy(from: j, to: r)) } }
            }
        }
    }

    @Test("the 4-D all-to-all plan matches the formulas, also for uneven splits")
    func allToAllUneven() {
        let seq = [3, 1, 2], heads = [2, 3, 1], b = 2, d = 2
        let (totalS, totalH) = (seq.reduce(0, +), heads.reduce(0, +))
        for scatterHeads in [true, false] {
            let plan = Layout.AllToAll4D(scatterHeads: scatterHeads, batch: b, seq: seq, heads: heads, headDim: d, elementSize: 1)
            // Element value encodes (sender, b, s, h, d) of the sender's input.
            let inputs = (0..<3).map { j -> [UInt8] in
                let shape = plan.inputShape(rank: j)
                return (0..<shape.reduce(1, *)).map { UInt8((j * 61 + $0) % 251) }
            }
            for r in 0..<3 {
                let outShape = plan.outputShape(rank: r)
                var out = [UInt8](repeating: 0, count: outShape.reduce(1, *))
                for j in 0..<3 { apply(plan.copy(from: j, to: r), from: inputs[j], to: &out) }
                let seqStart = Layout.offsets(of: seq), headStart = Layout.offsets(of: heads)
                for i in 0..<out.count {
                    let idx = multiIndex(i, outShape)
                    let expected: UInt8
                    if scatterHeads {
                        let j = (0..<3).last { seqStart[$0] <= idx[1] }!
                        expected = inputs[j][flatIndex([idx[0], idx[1] - seqStart[j], headStart[r] + idx[2], idx[3]], [b, seq[j], totalH, d])]
                    } else {
                        let j = (0..<3).last { headStart[$0] <= idx[2] }!
                        expected = inputs[j][flatIndex([idx[0], seqStart[r] + idx[1], idx[2] - headStart[j], idx[3]], [b, totalS, heads[j], d])]
                    }
                    #expect(out[i] == expected, "scatterHeads \(scatterHeads) rank \(r) index \(idx)")
                }
            }
        }
    }

    @Test("slab places part j of a concatenation and cuts an unpadded length")
    func slab() {
        // Two parts [2, 3] (outer 2, size 3, inner 1) concatenated along dim 1, keeping 5 of 6.
        let parts: [[UInt8]] = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
        var out = [UInt8](repeating: 0, count: 10)
        for j in 0..<2 {
            let plan = Layout.slab(outer: 2, innerBytes: 1, srcSize: 3, srcStart: 0, dstSize: 5, dstStart: j * 3, length: min(3, 5 - j * 3))
            apply(plan, from: parts[j], to: &out)
        }
        #expect(out == [1, 2, 3, 7, 8, 4, 5, 6, 10, 11])
    }
}
