import CFVDShims

/// Outputs at least this large are written with streaming (non-temporal) stores, so a
/// copy far larger than the cache does not evict it block by block.
let streamingThresholdBytes = 8 << 20

/// Executes `plan` from `source` into `destination` (streaming stores end with a fence).
func execute(_ plan: StridedCopy, from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, streaming: Bool) {
    let flag: Int32 = streaming ? 1 : 0
    plan.forEachRun { s, d, bytes in fvd_copy(destination + d, source + s, bytes, flag) }
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
    let n = channel.members.count
    let streaming = totalBytes >= streamingThresholdBytes
    for k in 0..<n {
        let j = (channel.index + k) % n
        execute(plan(j, channel.index), from: channel.buffers(of: j).input, to: destination, streaming: streaming)
    }
}

/// Runs one collective call: publish the header and buffers, rendezvous, check that
/// every rank called the same thing, run `body` (which may read the peers' buffers),
/// and rendezvous again so no rank leaves while a peer still reads its memory.
///
/// Argument checks belong in `body`: it runs after the headers agree, so a bad
/// argument throws the same error on every rank, and the group stays usable.
func performCollective<R>(
    on channel: any PeerMemoryChannel, header: CallHeader, buffers: PeerBuffers, body: () throws -> R
) throws -> R {
    try channel.checkHealthy()
    try channel.publish(header, buffers)
    channel.post(.arrived, call: header.call)
    try channel.wait(.arrived, call: header.call, op: header.op)
    let outcome: Result<R, any Error>
    do {
        try checkAgreement(channel)
        outcome = .success(try body())
    } catch let error as FVDError where error.breaksGroup {
        throw error
    } catch {
        outcome = .failure(error)
    }
    channel.post(.done, call: header.call)
    try channel.wait(.done, call: header.call, op: header.op)
    channel.release()
    return try outcome.get()
}

/// Throws the same error on every rank when the published headers differ.
///
/// The call numbers always agree here: a rank waits for its peers' post of the same
/// call, and call numbers live in the group's shared progress words.
private func checkAgreement(_ channel: any PeerMemoryChannel) throws {
    let headers = (0..<channel.members.count).map(channel.header(of:))
    if let error = disagreement(headers, ranks: channel.members, label: channel.label, index: channel.index) { throw error }
}

/// The error every rank throws when the headers of one call differ, or `nil` when they agree.
func disagreement(_ headers: [CallHeader], ranks: [Int], label: String, index: Int) -> FVDError? {
    let mine = headers[index]
    if headers.contains(where: { $0.kind != mine.kind }) {
        return .operationMismatch(group: label, ranks: ranks, operations: headers.map(\.op))
    }
    // Where the data's shape travels with it (send/recv, object broadcasts), only the
    // sending rank's header describes the data; where shapes may differ by rank, the
    // collective checks them.
    if !CallHeader.dataTravelsKinds.contains(mine.kind), headers.contains(where: { $0.dtype != mine.dtype }) {
        return .dtypeMismatch(op: mine.op, group: label, ranks: ranks, dtypes: headers.map(\.dtype))
    }
    if !CallHeader.shapeCheckedInBodyKinds.contains(mine.kind), headers.contains(where: { $0.shape != mine.shape }) {
        return .shapeMismatch(op: mine.op, group: label, ranks: ranks, shapes: headers.map(\.shape))
    }
    if headers.contains(where: { $0.arguments != mine.arguments }) {
        return .argumentMismatch(op: mine.op, group: label, ranks: ranks, arguments: headers.map(\.argumentText))
    }
    return nil
}

