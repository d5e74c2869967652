import Foundation
import Testing

@testable import FastVideoDistributed

/// The reduction an all-reduce chained through hosts runs: the fold of the first ranks kept
/// as accumulators, continued over the rest, must give the bits of one fold over every rank.
@Suite("Chained reduction (the MPI transport's all-reduce across hosts)")
struct ChainedReductionTests {
    @Test(
        "a fold split into hosts, carried as accumulators, equals the fold over every rank bitwise",
        arguments: DType.allCases, ReduceOp.allCases)
    func chained(dtype: DType, op: ReduceOp) throws {
        guard op != .average || dtype.isFloatingPoint else { return }
        let ranks = 5, count = 1_000
        let inputs = (0..<ranks).map { randomTensor([count], dtype, seed: UInt64($0 * 31 + 7)) }
        let pointers = inputs.map { $0.storage.pointer }
        let flat = Tensor(uninitializedShape: [count], dtype: dtype)
        reduceElements(op, dtype: dtype, into: flat.storage.pointer, count: count, groupSize: ranks) { UnsafeRawPointer(pointers[$0]) }
        // Hosts of 2, 1 and 2 ranks: the first two carry their fold on, the last ends it.
        for hosts in [[2, 1, 2], [1, 4], [4, 1]] {
            let carried = UnsafeMutableRawPointer.allocate(byteCount: count * dtype.accumulatorBytes, alignment: 16)
            let next = UnsafeMutableRawPointer.allocate(byteCount: count * dtype.accumulatorBytes, alignment: 16)
            defer {
                carried.deallocate()
                next.deallocate()
            }
            let chained = Tensor(uninitializedShape: [count], dtype: dtype)
            var first = 0
            for (h, size) in hosts.enumerated() {
                let last = h == hosts.count - 1
                reduceElements(
                    op, dtype: dtype, into: last ? chained.storage.pointer : next, count: count, groupSize: ranks,
                    sourceCount: size, carried: h == 0 ? nil : UnsafeRawPointer(carried), carriesOn: !last
                ) { [first] in UnsafeRawPointer(pointers[first + $0]) }
                carried.copyMemory(from: next, byteCount: count * dtype.accumulatorBytes)
                first += size
            }
            #expect(chained == flat, "hosts \(hosts)")
        }
    }
}
