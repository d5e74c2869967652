/// Pure index math shared by every collective and every transport.
///
/// Nothing here touches memory, threads or files: each function turns shapes and
/// ranks into ``StridedCopy`` plans or element ranges. Offsets and strides are in
/// bytes so that one plan serves every dtype.
enum Layout {
    /// Resolves a possibly negative dimension index (`-ndim <= dim < ndim`).
    static func normalize(dim: Int, ndim: Int, op: String) throws -> Int {
        guard dim >= -ndim, dim < ndim, ndim > 0 else {
            throw FVDError.invalidDimension(op: op, dim: dim, ndim: ndim)
        }
        return dim < 0 ? dim + ndim : dim
    }

    /// Views `shape` as `[outer, shape[dim], inner]` and returns those three sizes.
    static func split(_ shape: [Int], at dim: Int) -> (outer: Int, size: Int, inner: Int) {
        (shape[..<dim].reduce(1, *), shape[dim], shape[(dim + 1)...].reduce(1, *))
    }

    /// Copies `length` slices along the middle axis: source viewed as
    /// `[outer, srcSize, inner]` from index `srcStart`, into a destination viewed as
    /// `[outer, dstSize, inner]` at index `dstStart`. `innerBytes` is the byte size of
    /// one slice (`inner × elementSize`).
    ///
    /// This is the all-gather block (a part placed at its offset in the concatenation),
    /// the reduce-scatter / shard slice (the transpose), and the unpad cut.
    static func slab(
        outer: Int, innerBytes: Int,
        srcSize: Int, srcStart: Int, dstSize: Int, dstStart: Int, length: Int
    ) -> StridedCopy {
        StridedCopy(
            srcOffset: srcStart * innerBytes, dstOffset: dstStart * innerBytes,
            outerCount: outer, srcOuterStride: srcSize * innerBytes, dstOuterStride: dstSize * innerBytes,
            innerCount: 1, srcInnerStride: 0, dstInnerStride: 0,
            runBytes: length * innerBytes)
    }

    /// Splits `count` items into `parts` contiguous ranges, the first `count % parts`
    /// one longer (the split used for the internal reduce-scatter of an all-reduce).
    static func balancedRanges(count: Int, parts: Int) -> [Range<Int>] {
        let base = count / parts, extra = count % parts
        var start = 0
        return (0..<parts).map { p in
            let length = base + (p < extra ? 1 : 0)
            defer { start += length }
            return start..<(start + length)
        }
    }

    /// Offsets of consecutive blocks of the given sizes (`[0, s0, s0+s1, ...]`, one per block).
    static func offsets(of sizes: [Int]) -> [Int] {
        var acc = 0
        return sizes.map { s in defer { acc += s }; return acc }
    }

    /// FastVideo's even all-to-all over `parts` ranks that all pass the same `[B, S, H, D]`:
    /// the same blocks as ``AllToAll4D`` with equal splits, computed without arrays (the
    /// small calls' path).
    struct EvenAllToAll4D: Sendable, Equatable {
        var scatterHeads: Bool
        var batch: Int, sequence: Int, heads: Int, headBytes: Int
        var parts: Int

        /// The plan for input `shape` (4-D, the scattered dimension divisible by `parts`).
        init(scatterHeads: Bool, shape: [Int], parts: Int, elementSize: Int) {
            self.scatterHeads = scatterHeads
            batch = shape[0]
            sequence = shape[1]
            heads = shape[2]
            headBytes = shape[3] * elementSize
            self.parts = parts
        }

        /// Shape of every rank's output, for head dim `headDim`.
        func outputShape(headDim: Int) -> [Int] {
            scatterHeads
                ? [batch, sequence * parts, heads / parts, headDim] : [batch, sequence / parts, heads * parts, headDim]
        }

        /// Whether `shape` is ``outputShape(headDim:)``, compared without building it.
        func produces(_ shape: [Int], headDim: Int) -> Bool {
            guard shape.count == 4, shape[0] == batch, shape[3] == headDim else { return false }
            return scatterHeads
                ? shape[1] == sequence * parts && shape[2] == heads / parts
                : shape[1] == sequence / parts && shape[2] == heads * parts
        }

        /// The block rank `receiver` takes from rank `sender`'s input into its own output.
        func copy(from sender: Int, to receiver: Int) -> StridedCopy {
            let d = headBytes, n = parts
            if scatterHeads {
                let s = sequence, h = heads / n
                return StridedCopy(
                    srcOffset: receiver * h * d, dstOffset: sender * s * h * d,
                    outerCount: batch, srcOuterStride: s * heads * d, dstOuterStride: n * s * h * d,
                    innerCount: s, srcInnerStride: heads * d, dstInnerStride: h * d, runBytes: h * d)
            } else {
                let s = sequence / n, h = heads
                return StridedCopy(
                    srcOffset: receiver * s * h * d, dstOffset: sender * h * d,
                    outerCount: batch, srcOuterStride: sequence * h * d, dstOuterStride: s * n * h * d,
                    innerCount: s, srcInnerStride: h * d, dstInnerStride: n * h * d, runBytes: h * d)
            }
        }
    }

    /// The Ulysses all-to-all over a 4-D `[B, S, H, D]` tensor.
    ///
    /// With `(scatter 2, gather 1)` rank `j` holds `[B, seq[j], H, D]` and rank `r`
    /// receives `[B, Σseq, heads[r], D]`:
    /// `out[b, seqStart[j] + t, h, d] = in_j[b, t, headStart[r] + h, d]`.
    /// With `(scatter 1, gather 2)` rank `j` holds `[B, Σseq, heads[j], D]` and rank `r`
    /// receives `[B, seq[r], ΣH, D]`:
    /// `out[b, t, headStart[j] + h, d] = in_j[b, seqStart[r] + t, h, d]`.
    /// Balanced splits are `seq = [S/n] * n`, `heads = [H/n] * n`.
    ///
    /// `headStart[r]` is where rank `r`'s heads start among the `totalHeads` of the
    /// head-complete side: by default the running sum of `heads` (a partition), but the
    /// ranges may overlap (grouped-query key/value heads that several ranks need) or leave
    /// heads out (one chunk of the heads).
    struct AllToAll4D: Sendable, Equatable {
        /// `true` for `(scatter 2, gather 1)` (heads scattered, sequence gathered).
        var scatterHeads: Bool
        var batch: Int
        /// Sequence length held by each rank on the sequence-sharded side.
        var seq: [Int]
        /// Heads held by each rank on the head-sharded side.
        var heads: [Int]
        /// First head of each rank's range among `totalHeads`.
        var headStart: [Int]
        /// Heads on the head-complete side.
        var totalHeads: Int
        var headDim: Int
        var elementSize: Int

        init(
            scatterHeads: Bool, batch: Int, seq: [Int], heads: [Int], headStart: [Int]? = nil, totalHeads: Int? = nil,
            headDim: Int, elementSize: Int
        ) {
            self.scatterHeads = scatterHeads
            self.batch = batch
            self.seq = seq
            self.heads = heads
            self.headStart = headStart ?? Layout.offsets(of: heads)
            self.totalHeads = totalHeads ?? heads.reduce(0, +)
            self.headDim = headDim
            self.elementSize = elementSize
        }

        var totalSeq: Int { seq.reduce(0, +) }

        /// Shape of rank `r`'s input.
        func inputShape(rank r: Int) -> [Int] {
            scatterHeads ? [batch, seq[r], totalHeads, headDim] : [batch, totalSeq, heads[r], headDim]
        }

        /// Shape of rank `r`'s output.
        func outputShape(rank r: Int) -> [Int] {
            scatterHeads ? [batch, totalSeq, heads[r], headDim] : [batch, seq[r], totalHeads, headDim]
        }

        /// The block rank `receiver` takes from rank `sender`'s input into its own output.
        func copy(from sender: Int, to receiver: Int) -> StridedCopy {
            let es = elementSize, d = headDim
            let seqStart = Layout.offsets(of: seq)
            let totalH = totalHeads, totalS = totalSeq
            if scatterHeads {
                let sl = seq[sender], hl = heads[receiver]
                return StridedCopy(
                    srcOffset: headStart[receiver] * d * es,
                    dstOffset: seqStart[sender] * hl * d * es,
                    outerCount: batch, srcOuterStride: sl * totalH * d * es, dstOuterStride: totalS * hl * d * es,
                    innerCount: sl, srcInnerStride: totalH * d * es, dstInnerStride: hl * d * es,
                    runBytes: hl * d * es)
            } else {
                let sl = seq[receiver], hl = heads[sender]
                return StridedCopy(
                    srcOffset: seqStart[receiver] * hl * d * es,
                    dstOffset: headStart[sender] * d * es,
                    outerCount: batch, srcOuterStride: totalS * hl * d * es, dstOuterStride: sl * totalH * d * es,
                    innerCount: sl, srcInnerStride: hl * d * es, dstInnerStride: totalH * d * es,
                    runBytes: hl * d * es)
            }
        }
    }
}
