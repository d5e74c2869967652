import CFVDShims
import Foundation
import Synchronization

/// This process's part of a multi-process world's shared-memory segment, from which
/// its tensors are allocated so that the other ranks can read them in place.
///
/// Why tensors live in the segment: a rank that copies its input into shared memory
/// before every collective pays one more pass over the data than MPI's single-copy
/// (cross-memory attach) path and loses to it; with the tensors already in the
/// segment, each output byte is copied once, straight from the peer's tensor — the
/// same one-copy design as the in-process transport (see `shared/PERFORMANCE.md`).
///
/// The segment is sparse. A block's pages are allocated (`posix_fallocate`) when the
/// block is handed out, so a full `/dev/shm` makes ``allocate(_:)`` return `nil`
/// (and the collective throw) instead of killing the process with SIGBUS on a write.
/// Only the owning process allocates from and frees into its heap, so the bookkeeping
/// (a bump pointer and free lists by size, like ``StoragePool``) is process-local.
/// Freed blocks are kept for the next tensor of the same size up to
/// `FVD_TENSOR_CACHE_MB` MiB (default 1024); beyond that their pages are given back.
final class SharedHeap: Sendable {
    /// The heap of this process's multi-process world, if it is a rank of one.
    static var active: SharedHeap? { isActive ? current.withLock { $0 } : nil }
    /// Whether a heap is active, read without a lock (every small tensor asks).
    static var isActive: Bool { activeFlag.load(ordering: .acquiring) }
    private static let current = Locked<SharedHeap?>(nil)
    private static let activeFlag = Atomic<Bool>(false)

    /// Makes `heap` the place new tensors are allocated (`nil`: ordinary memory again).
    static func activate(_ heap: SharedHeap?) {
        current.withLock { $0 = heap }
        activeFlag.store(heap != nil, ordering: .releasing)
    }

    /// Invariant: `[base, base + capacity)` stays mapped for the life of the process, and
    /// is bytes `[fileOffset, fileOffset + capacity)` of the segment's file `fd`.
    private struct Region: @unchecked Sendable { let base: UnsafeMutableRawPointer }
    private let region: Region
    let capacity: Int
    private let fd: Int32
    private let fileOffset: Int
    private let cacheLimit: Int
    private struct FreeBlock { var offset: Int; var backed: Bool }
    private let state = Locked<(next: Int, free: [Int: [FreeBlock]], cachedBytes: Int)>((0, [:], 0))

    init(base: UnsafeMutableRawPointer, capacity: Int, fd: Int32, fileOffset: Int) {
        region = Region(base: base)
        self.capacity = capacity
        self.fd = fd
        self.fileOffset = fileOffset
        cacheLimit = StoragePool.shared.limitBytes
    }

    /// Blocks are whole pages, so their memory can be given back.
    private static func blockSize(_ bytes: Int) -> Int { (max(bytes, 1) + 4095) & ~4095 }

    /// A page-aligned block of at least `bytes`, with its memory allocated, or `nil` when
    /// the heap or `/dev/shm` is full.
    func allocate(_ bytes: Int) -> UnsafeMutableRawPointer? {
        let size = Self.blockSize(bytes)
        let offset = state.withLock { state -> Int? in
            if var block = state.free[size]?.popLast() {
                if block.backed {
                    state.cachedBytes -= size
                } else if fvd_fallocate(fd, Int64(fileOffset + block.offset), Int64(size)) == 0 {
                    block.backed = true
                } else {
                    state.free[size]?.append(block)
                    return nil
                }
                return block.offset
            }
            guard state.next + size <= capacity, fvd_fallocate(fd, Int64(fileOffset + state.next), Int64(size)) == 0 else {
                return nil
            }
            defer { state.next += size }
            return state.next
        }
        return offset.map { region.base + $0 }
    }

    /// Returns a block from ``allocate(_:)`` (with the same `capacity` it was asked for).
    func free(_ pointer: UnsafeMutableRawPointer, capacity bytes: Int) {
        let size = Self.blockSize(bytes)
        let offset = pointer - region.base
        state.withLock { state in
            var block = FreeBlock(offset: offset, backed: true)
            if state.cachedBytes + size > cacheLimit {
                block.backed = fvd_punch_hole(fd, Int64(fileOffset + offset), Int64(size)) != 0
            }
            if block.backed { state.cachedBytes += size }
            state.free[size, default: []].append(block)
        }
    }

    /// Whether `pointer` lies in this heap.
    func contains(_ pointer: UnsafeRawPointer) -> Bool {
        pointer >= UnsafeRawPointer(region.base) && pointer < UnsafeRawPointer(region.base + capacity)
    }
}
