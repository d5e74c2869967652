import Synchronization

/// This process's part of a multi-process world's shared-memory segment, from which
/// its tensors are allocated so that the other ranks can read them in place.
///
/// Why tensors live in the segment: a rank that copies its input into shared memory
/// before every collective pays one more pass over the data than MPI's single-copy
/// (cross-memory attach) path and loses to it; with the tensors already in the
/// segment, each output byte is copied once, straight from the peer's tensor — the
/// same one-copy design as the in-process transport (see `shared/PERFORMANCE.md`).
/// The segment is sparse: only pages that tensors touch use memory.
///
/// Only the owning process allocates from and frees into its heap, so the bookkeeping
/// (a bump pointer and free lists by size, like ``StoragePool``) is process-local.
/// Freed blocks are reused for the next tensor of the same rounded size; they are not
/// returned to the system until the world ends.
final class SharedHeap: Sendable {
    /// The heap of this process's multi-process world, if it is a rank of one.
    static var active: SharedHeap? { current.withLock { $0 } }
    private static let current = Mutex<SharedHeap?>(nil)

    /// Makes `heap` the place new tensors are allocated (`nil`: ordinary memory again).
    static func activate(_ heap: SharedHeap?) { current.withLock { $0 = heap } }

    /// Invariant: `[base, base + capacity)` stays mapped for the life of the process.
    private struct Region: @unchecked Sendable { let base: UnsafeMutableRawPointer }
    private let region: Region
    let capacity: Int
    private let state = Mutex<(next: Int, free: [Int: [Int]])>((0, [:]))

    init(base: UnsafeMutableRawPointer, capacity: Int) {
        region = Region(base: base)
        self.capacity = capacity
    }

    /// A 64-byte-aligned block of `bytes` (rounded up to 64), or `nil` when the heap is full.
    func allocate(_ bytes: Int) -> UnsafeMutableRawPointer? {
        let size = (max(bytes, 1) + 63) & ~63
        let offset = state.withLock { state -> Int? in
            if let reused = state.free[size]?.popLast() { return reused }
            guard state.next + size <= capacity else { return nil }
            defer { state.next += size }
            return state.next
        }
        return offset.map { region.base + $0 }
    }

    /// Returns a block from ``allocate(_:)`` (with the same `capacity` it was asked for).
    func free(_ pointer: UnsafeMutableRawPointer, capacity bytes: Int) {
        let size = (max(bytes, 1) + 63) & ~63
        let offset = pointer - region.base
        state.withLock { $0.free[size, default: []].append(offset) }
    }
}
