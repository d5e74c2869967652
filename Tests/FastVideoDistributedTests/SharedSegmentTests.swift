import Foundation
import Testing

@testable import FastVideoDistributed

@Suite("Shared segment")
struct SharedSegmentTests {
    @Test("large worlds' group keys fit the registry; the heap reuses blocks and reports exhaustion")
    func registryAndHeap() throws {
        let name = "/fvd-unittest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let segment = try SharedSegment(name: name, worldSize: 128, rank: 0)
        defer { shm_unlink(name) }
        let members = Array(0..<128)
        let world = try segment.channelRegion(key: "world \(members)", members: 128)
        #expect(try segment.channelRegion(key: "world \(members)", members: 128) == world)
        let other = try segment.channelRegion(key: "world \(Array(0..<127) + [500])", members: 128)
        #expect(other != world, "keys that differ only after the cut still get their own region")
        #expect(segment.registeredGroups().count == 2)

        let heapBase = segment.heapBase(of: 0)
        let heap = SharedHeap(base: heapBase, capacity: 1 << 20, fd: segment.fd, fileOffset: heapBase - segment.base)
        let block = try #require(heap.allocate(5000))
        block.storeBytes(of: 42, as: UInt8.self)
        heap.free(block, capacity: 5000)
        #expect(heap.allocate(5000) == block, "a freed block is reused for the same size")
        #expect(heap.allocate(2 << 20) == nil, "larger than the heap: nil, not a crash")
    }
}
