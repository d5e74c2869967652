#if MPI
import Testing

@testable import FastVideoDistributed

@Suite("MPI: a group's members by host")
struct MPIHostLayoutTests {
    @Test("consecutive members of one host form one block; a host that comes back after another gives none")
    func blocks() {
        #expect(MPIGroupState.blocks(of: [0, 0, 2, 2]) == [0..<2, 2..<4])
        #expect(MPIGroupState.blocks(of: [0, 0, 0, 3, 3]) == [0..<3, 3..<5])
        #expect(MPIGroupState.blocks(of: [4]) == [0..<1])
        #expect(MPIGroupState.blocks(of: [0, 1, 2]) == [0..<1, 1..<2, 2..<3])
        #expect(MPIGroupState.blocks(of: [0, 2, 0, 2]) == nil)
        #expect(MPIGroupState.blocks(of: []) == [])
    }
}
#endif
