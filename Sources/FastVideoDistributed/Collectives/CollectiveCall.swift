import CFVDShims

/// Outputs at least this large are written with streaming (non-temporal) stores, so a
/// copy far larger than the cache does not evict it block by block.
let streamingThresholdBytes = 8 << 20

/// A rank inside a call beats (``PeerMemoryChannel/beat()``) after each this many bytes it
/// copies or reduces, so a copy slower than the timeout is not taken for a stalled rank.
let heartbeatBytes = 4 << 20

/// Executes `plan` from `source` into `destination` (streaming stores end with a fence);
/// a large plan beats on `channel` every ``heartbeatBytes``.
func execute(
    _ plan: StridedCopy, from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, streaming: Bool,
    beatingOn channel: (any PeerMemoryChannel)? = nil
) {
    let flag: Int32 = streaming ? 1 : 0
    if let channel, plan.totalBytes > heartbeatBytes {
        var sinceBeat = 0
        plan.forEachRun { s, d, bytes in
            var offset = 0
            while offset < bytes {
                let n = min(bytes - offset, heartbeatBytes)
                fvd_copy(destination + d + offset, source + s + offset, n, flag)
                offset += n
                sinceBeat += n
                if sinceBeat >= heartbeatBytes {
                    channel.beat()
                    sinceBeat = 0
                }
            }
        }
    } else {
        plan.forEachRun { s, d, bytes in fvd_copy(destination + d, source + s, bytes, flag) }
    }
    if streaming { fvd_store_fence() }
}

/// Copies, for every member in turn (starting with this rank, then its successors,
/// so ranks read different peers at the same time), `plan(member, this rank)` from that
/// member's input into `destination`; on a message-passing transport the channel moves
/// the same bytes itself (see ``PeerMemoryChannel/pullByMessages(into:plan:)``).
func pullFromEveryMember(
    _ channel: any PeerMemoryChannel, into destination: UnsafeMutableRawPointer, totalBytes: Int,
    plan: (_ source: Int, _ destination: Int) -> StridedCopy
) throws {
    if try channel.pullByMessages(into: destination, plan: plan) { return }
    let n = channel.memberCount
    let streaming = totalBytes >= streamingThresholdBytes
    for k in 0..<n {
        let j = (channel.index + k) % n
        execute(plan(j, channel.index), from: channel.input(of: j), to: destination, streaming: streaming, beatingOn: channel)
    }
}

/// Runs one collective call: publish this rank's slot (its input inline when small, else
/// where to read it), wait for every member's, check that every rank called the same
/// thing, run `body` (which reads the peers' data through the channel), and, when some
/// member's data was read in place, rendezvous again so no rank leaves while a peer still
/// reads its memory. A call whose data all travelled inline needs that one rendezvous only.
///
/// Argument checks belong in `body`: it runs after the headers agree, so a bad
/// argument throws the same error on every rank, and the group stays usable.
///
/// `output` is a buffer the peers read in place (the large all-reduce's); `sends` is
/// whether any peer reads this rank's input (not a broadcast's non-root, nor a receiver).
/// `isSend` marks a send on a link: on a transport that allows it (``PeerMemoryChannel/sendsEagerly``)
/// one whose data travels inline returns once its slot is published, and the receiver
/// checks the headers; every send first waits until the receiver has taken the message
/// two before, whose slot it reuses.
@inline(__always)
func performCollective<R>(
    on channel: any PeerMemoryChannel, call: Int, op: CollectiveOp, input: Tensor, arguments: ArgumentList,
    output: Tensor?, sends: Bool, isSend: Bool = false, body: () throws -> R
) throws -> R {
    try channel.checkHealthy()
    let slot = channel.ownSlot(call: call)
    let byteCount = input.byteCount
    let linkSend = isSend && channel.sendsEagerly
    let eager = linkSend && byteCount <= CallSlot.payloadCapacity
    // A send's slot was last used by `call - 2`, which the receiver finished before it arrived
    // at `call - 1`; when that send returned eagerly, nothing else proved it (every send waits
    // here, the large ones too: they may follow eager ones).
    if linkSend, call >= 2 { try channel.waitArrival(call: call - 1, op: op) }
    var payloadBytes = 0
    var inputAddress: UInt64 = 0, outputAddress = CallSlot.noOutput
    if sends, byteCount > CallSlot.payloadCapacity || output != nil {
        // Large data is read in place: from memory the peers can address.
        let storage = input.storage.isPeerVisible ? input.storage : input.storage.copy()
        guard storage.isPeerVisible, output?.storage.isPeerVisible ?? true else {
            let error = FVDError.invalidArgument(
                "\(op.name): no room in shared memory for \(byteCount + (output?.byteCount ?? 0)) bytes "
                    + "(/dev/shm is full, or the rank's heap is)")
            channel.abort(error)
            throw error
        }
        channel.keepAlive(input: storage, output: output?.storage)
        payloadBytes = CallSlot.inPlace
        inputAddress = channel.address(of: storage.pointer)
        outputAddress = output.map { channel.address(of: $0.storage.pointer) } ?? CallSlot.noOutput
    } else if sends, byteCount > 0 {
        fvd_copy(slot.payload, input.storage.pointer, byteCount, 0)
        payloadBytes = byteCount
    }
    slot.write(
        op: op, dtype: input.dtype, shape: input.shape, arguments: arguments, payloadBytes: payloadBytes, input: inputAddress,
        output: outputAddress)
    try channel.publish(call: call)
    if eager { return try body() }
    try channel.waitArrival(call: call, op: op)

    let n = channel.memberCount
    var agree = true, readInPlace = false
    for j in 0..<n {
        let peer = channel.slot(of: j)
        if !peer.isInline { readInPlace = true }
        if !peer.agrees(with: slot) { agree = false }
    }
    let outcome: Result<R, any Error>
    do {
        guard agree else { throw disagreement(channel) }
        try channel.exchangeData()
        outcome = .success(try body())
    } catch let error as FVDError where error.breaksGroup {
        throw error
    } catch {
        outcome = .failure(error)
    }
    if readInPlace {
        channel.post(.done, call: call)
        try channel.wait(.done, call: call, op: op)
        channel.release()
    }
    return try outcome.get()
}

/// The error every rank throws when the published headers of one call differ.
///
/// The call numbers always agree here: a rank waits for its peers' slots of the same call.
func disagreement(_ channel: any PeerMemoryChannel) -> FVDError {
    let slots = (0..<channel.memberCount).map(channel.slot(of:))
    let mine = slots[channel.index], kind = mine.op.kind
    let ranks = channel.members, label = channel.label
    if slots.contains(where: { $0.op.kind != kind }) {
        return .operationMismatch(group: label, ranks: ranks, operations: slots.map(\.op.name))
    }
    // Where the data's shape travels with it (send/recv, object broadcasts), only the
    // sending rank's header describes the data; where shapes may differ by rank, the
    // collective checks them.
    if !kind.dataTravels, slots.contains(where: { $0.dtype != mine.dtype }) {
        return .dtypeMismatch(op: mine.op.name, group: label, ranks: ranks, dtypes: slots.map(\.dtype))
    }
    if kind.comparesShapes, slots.contains(where: { $0.ndim != mine.ndim || $0.shape != mine.shape }) {
        return .shapeMismatch(op: mine.op.name, group: label, ranks: ranks, shapes: slots.map(\.shape))
    }
    return .argumentMismatch(
        op: mine.op.name, group: label, ranks: ranks,
        arguments: slots.map { $0.op.describe(arguments: $0.arguments, members: ranks) })
}
