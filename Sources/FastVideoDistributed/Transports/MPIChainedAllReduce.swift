#if MPI
import CFVDShims
import CMPI

/// The deterministic all-reduce of a group that spans hosts, chained through the hosts:
/// each host reduces its own members in shared memory, and only one partial result per
/// element crosses each host boundary, instead of every remote member's input.
///
/// The group's members, in rank order, form consecutive blocks by host (``MPIGroupState/hostBlocks``),
/// so the rank-order fold `((x0 ⊕ x1) ⊕ x2) ⊕ …` is a fold over host 0's members, continued
/// over host 1's, and so on. Each host splits the elements into balanced ranges, one per
/// member. Member `a` of host `h` receives the fold of the hosts before it for its range
/// (from the members of host `h - 1` whose ranges overlap it), continues it over its own
/// host's inputs, read in place, and hands the result on to host `h + 1`; the last host
/// holds the result, and sends each earlier host's members their ranges of it. Every host
/// then copies its members' ranges from their outputs in place, after a `.reduced` notice.
///
/// What passes between hosts is the fold's accumulators (float32 for float16 and bfloat16,
/// which are rounded once, on the last host; `average` is divided there too), so the bits
/// are those of the flat fold, for every dtype and operation.
extension MPIChannel {
    /// Whether the all-reduce of the call in progress (`header`) runs chained through the hosts.
    func chainsAllReduce(_ header: CallSlot) -> Bool {
        guard group.sharesHosts, let blocks = group.hostBlocks, blocks.count > 1, header.op.kind == .allReduce else {
            return false
        }
        return (0..<members.count).allSatisfy { !slot(of: $0).isInline }
    }

    /// Runs the chained all-reduce of `count` elements of every member's input (this rank's
    /// own among them) into `output`, which may be this rank's input; see the type's description.
    func chainedAllReduce(_ op: ReduceOp, dtype: DType, output: UnsafeMutableRawPointer, count: Int) throws {
        let blocks = group.hostBlocks!, last = blocks.count - 1
        let h = blocks.firstIndex { $0.contains(index) }!
        let es = dtype.byteSize, accumulator = dtype.accumulatorBytes, name = "all_reduce"
        let ranges = blocks.map { Layout.balancedRanges(count: count, parts: $0.count) }
        let mine = ranges[h][index - blocks[h].lowerBound]
        /// The members of host `k` whose ranges overlap `range`, with the overlap.
        func overlaps(_ range: Range<Int>, onHost k: Int) -> [(member: Int, range: Range<Int>)] {
            blocks[k].compactMap { j in
                let other = ranges[k][j - blocks[k].lowerBound]
                let lower = max(range.lowerBound, other.lowerBound), upper = min(range.upperBound, other.upperBound)
                return lower < upper ? (j, lower..<upper) : nil
            }
        }
        var receives: [MPI_Request?] = [], sends: [MPI_Request?] = []
        defer { Self.settle(receives: &receives, sends: &sends) }
        func post(
            _ requests: inout [MPI_Request?], _ j: Int, _ buffer: UnsafeMutableRawPointer, _ range: Range<Int>, elementBytes: Int,
            send: Bool
        ) throws {
            try postData(&requests, to: j, buffer, bytes: range.count * elementBytes, send: send, op: name)
        }
        // The fold of the hosts before this one, for this rank's range, as accumulators.
        let carried = h > 0 && !mine.isEmpty ? TensorStorage(uninitializedByteCount: mine.count * accumulator) : nil
        if let carried {
            for (j, range) in overlaps(mine, onHost: h - 1) {
                try post(
                    &receives, j, carried.pointer + (range.lowerBound - mine.lowerBound) * accumulator, range,
                    elementBytes: accumulator, send: false)
            }
            try mpiCheck(MPI_Waitall(Int32(receives.count), &receives, fvd_mpi_statuses_ignore()), "MPI_Waitall")
        }
        // Continued over this host's inputs: into accumulators for the next host, or, on the
        // last host, into the result.
        let carriesOn = h < last
        let folded = carriesOn && !mine.isEmpty ? TensorStorage(uninitializedByteCount: mine.count * accumulator) : nil
        if !mine.isEmpty {
            let own = Array(blocks[h])
            reduceElements(
                op, dtype: dtype, into: folded?.pointer ?? output + mine.lowerBound * es, count: mine.count,
                groupSize: members.count, beatingOn: self, sourceCount: own.count, carried: carried.map { UnsafeRawPointer($0.pointer) },
                carriesOn: carriesOn
            ) { k in self.input(of: own[k]) + mine.lowerBound * es }
        }
        // Hand it on: the fold so far to the next host, or the result to every earlier one.
        for k in carriesOn ? [h + 1] : Array(0..<last) {
            for (j, range) in overlaps(mine, onHost: k) {
                if let folded {
                    try post(
                        &sends, j, folded.pointer + (range.lowerBound - mine.lowerBound) * accumulator, range,
                        elementBytes: accumulator, send: true)
                } else {
                    try post(&sends, j, output + range.lowerBound * es, range, elementBytes: es, send: true)
                }
            }
        }
        try mpiCheck(MPI_Waitall(Int32(sends.count), &sends, fvd_mpi_statuses_ignore()), "MPI_Waitall")
        // Then the result, from the last host.
        if carriesOn {
            receives.removeAll()
            for (j, range) in overlaps(mine, onHost: last) {
                try post(&receives, j, output + range.lowerBound * es, range, elementBytes: es, send: false)
            }
            try mpiCheck(MPI_Waitall(Int32(receives.count), &receives, fvd_mpi_statuses_ignore()), "MPI_Waitall")
        }
        // This host's other ranges, from their owners' outputs once they hold the result.
        notifyHostPeers(.reduced)
        try awaitHostPeers(.reduced, call: group.calls - 1, op: .allReduce)
        for j in blocks[h] where j != index {
            let range = ranges[h][j - blocks[h].lowerBound]
            guard !range.isEmpty else { continue }
            guard let peer = mappedOutput(of: j) else {
                // Never: a rank of a host with others allocates its outputs in the host's segment.
                throw FVDError.transportFailure(transport: "MPI", message: "all_reduce: rank \(members[j])'s output is not in shared memory")
            }
            execute(
                .contiguous(srcOffset: range.lowerBound * es, dstOffset: range.lowerBound * es, bytes: range.count * es),
                from: peer, to: output, streaming: false, beatingOn: self)
        }
    }
}
#endif
