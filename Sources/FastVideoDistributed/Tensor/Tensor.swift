import CFVDShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The bytes behind a ``Tensor``: one 64-byte-aligned heap allocation.
///
/// Invariant: `pointer` is valid for `byteCount` bytes (at least one byte is
/// allocated) for the life of the object; it is only written through a tensor
/// that holds the sole reference (copy-on-write), so sharing it between threads
/// for reading is safe.
final class TensorStorage: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    let byteCount: Int
    private let capacity: Int
    /// The shared-memory heap the bytes come from, when this process is a rank of a
    /// multi-process world (so peers can read them in place).
    private let heap: SharedHeap?

    /// Allocates uninitialised storage: from this process's shared-memory heap when it
    /// is a rank of a multi-process world and the tensor is larger than what travels
    /// inline with a call's header (``CallSlot/payloadCapacity``, so peers may read it in
    /// place), else from ``StoragePool`` or the allocator.
    init(uninitializedByteCount byteCount: Int) {
        self.byteCount = byteCount
        capacity = StoragePool.capacity(for: byteCount)
        if byteCount > CallSlot.payloadCapacity, let heap = SharedHeap.active, let p = heap.allocate(capacity) {
            pointer = p
            self.heap = heap
        } else if capacity <= CallSlot.payloadCapacity {
            // A plain malloc (16-byte aligned): a raw allocation of any alignment up to 16
            // asks the runtime for its "default" alignment, which goes through memalign.
            pointer = UnsafeMutableRawPointer(UnsafeMutablePointer<UInt64>.allocate(capacity: (capacity + 7) / 8))
            heap = nil
        } else {
            pointer = StoragePool.take(capacity: capacity) ?? UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
            heap = nil
        }
    }

    /// Whether the other ranks of this process's world can read these bytes in place
    /// (always in one process; in a multi-process world only shared-heap memory).
    var isPeerVisible: Bool { heap != nil || !SharedHeap.isActive }

    /// Allocates zero-filled storage.
    convenience init(zeroedByteCount byteCount: Int) {
        self.init(uninitializedByteCount: byteCount)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
    }

    func copy() -> TensorStorage {
        let new = TensorStorage(uninitializedByteCount: byteCount)
        fvd_copy(new.pointer, pointer, byteCount, 0)
        return new
    }

    deinit {
        if let heap {
            heap.free(pointer, capacity: capacity)
        } else if capacity <= CallSlot.payloadCapacity {
            pointer.assumingMemoryBound(to: UInt64.self).deallocate()
        } else if !StoragePool.give(pointer, capacity: capacity) {
            pointer.deallocate()
        }
    }
}

/// A cache of freed tensor buffers, keyed by size, like PyTorch's caching allocator.
///
/// Collectives return new tensors; in a loop of equal-sized calls a fresh allocation
/// would page-fault its memory in on every call (the allocator returns large blocks
/// to the OS), which costs more than the copy itself. Freed buffers of 64 KiB and
/// more are kept, up to `FVD_TENSOR_CACHE_MB` MiB in all (default 1024; 0 turns the
/// cache off), and handed to the next tensor of the same rounded size. Creating a world
/// checks the variable: anything but a whole number of MiB from 0 to 2^40 is an error.
enum StoragePool {
    static let minimumBytes = 64 << 10
    /// The process-wide cache.
    static let shared = BufferCache(limitBytes: ((try? limitFromEnvironment()) ?? nil) ?? 1 << 30)

    /// The largest `FVD_TENSOR_CACHE_MB`: 2^40 MiB (an exbibyte), far past any memory.
    static let maximumMegabytes = 1 << 40

    /// `FVD_TENSOR_CACHE_MB` in bytes, or `nil` when it is unset.
    /// - Throws: ``FVDError/invalidArgument(_:)`` naming the variable unless it is a whole
    ///   number of MiB in `0...2^40` (`-5`, `abc`, `1.5` are refused).
    static func limitFromEnvironment() throws -> Int? {
        guard let value = getenv("FVD_TENSOR_CACHE_MB") else { return nil }
        let text = String(cString: value)
        guard let mb = Int(text.trimmingCharacters(in: .whitespaces)), (0...maximumMegabytes).contains(mb) else {
            throw FVDError.invalidArgument(
                "FVD_TENSOR_CACHE_MB=\(text) is not a whole number of MiB from 0 (no cache) to \(maximumMegabytes)")
        }
        return mb << 20
    }

    /// The allocation size for `byteCount`: whole pages for pooled sizes.
    static func capacity(for byteCount: Int) -> Int {
        byteCount < minimumBytes ? max(byteCount, 1) : (byteCount + 4095) & ~4095
    }

    static func take(capacity: Int) -> UnsafeMutableRawPointer? {
        capacity >= minimumBytes ? shared.take(capacity: capacity) : nil
    }

    /// Keeps `pointer` for reuse; `false` if it cannot be cached (the caller frees it).
    static func give(_ pointer: UnsafeMutableRawPointer, capacity: Int) -> Bool {
        capacity >= minimumBytes && shared.give(pointer, capacity: capacity)
    }
}

/// Freed buffers by size, up to `limitBytes` in all; the storage behind ``StoragePool``.
final class BufferCache: Sendable {
    let limitBytes: Int
    /// A freed buffer. Invariant: owned by the cache alone until `take` hands it out.
    private struct Buffer: @unchecked Sendable { let pointer: UnsafeMutableRawPointer }
    private let state = Locked<(free: [Int: [Buffer]], bytes: Int)>(([:], 0))

    init(limitBytes: Int) { self.limitBytes = limitBytes }

    /// Bytes held now.
    var cachedBytes: Int { state.withLock { $0.bytes } }

    /// A cached buffer of exactly `capacity` bytes, if there is one.
    func take(capacity: Int) -> UnsafeMutableRawPointer? {
        state.withLock { state -> Buffer? in
            guard let buffer = state.free[capacity]?.popLast() else { return nil }
            state.bytes -= capacity
            return buffer
        }?.pointer
    }

    /// Keeps `pointer` (of `capacity` bytes) for reuse; `false` if it cannot be cached.
    ///
    /// When the cache is full, buffers of *other* sizes are freed, largest first, to make
    /// room: the size just released is the one a loop of equal calls needs next, while a
    /// cache full of sizes from earlier work would make every new allocation fault in again.
    func give(_ pointer: UnsafeMutableRawPointer, capacity: Int) -> Bool {
        guard capacity <= limitBytes else { return false }
        var evicted: [Buffer] = []
        defer { for buffer in evicted { buffer.pointer.deallocate() } }
        return state.withLock { state in
            while state.bytes + capacity > limitBytes,
                let size = state.free.keys.filter({ $0 != capacity }).max(),
                let victim = state.free[size]?.popLast()
            {
                if state.free[size]?.isEmpty == true { state.free[size] = nil }
                state.bytes -= size
                evicted.append(victim)
            }
            guard state.bytes + capacity <= limitBytes else { return false }
            state.free[capacity, default: []].append(Buffer(pointer: pointer))
            state.bytes += capacity
            return true
        }
    }
}

/// An n-dimensional array: shape, dtype and contiguous row-major (C order) storage.
///
/// `Tensor` is a value type with copy-on-write storage: copies are cheap until one
/// of them is written. Equality (`==`) is *bitwise*: same shape, same dtype, same
/// bytes (so a NaN equals the same NaN, and `-0.0` differs from `0.0`), which is the
/// comparison the library's determinism promises are stated in.
public struct Tensor: Sendable, Equatable, CustomStringConvertible {
    /// The size of each dimension, outermost first. `[]` is a scalar (one element).
    public let shape: [Int]
    /// The element type.
    public let dtype: DType
    var storage: TensorStorage

    /// A zero-filled tensor.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a negative dimension or a size
    ///   that overflows.
    public init(zeros shape: [Int], dtype: DType) throws {
        let count = try Tensor.elementCount(of: shape)
        self.shape = shape
        self.dtype = dtype
        storage = TensorStorage(zeroedByteCount: count * dtype.byteSize)
    }

    /// A tensor holding `scalars` in row-major order.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` if `scalars.count` is not the
    ///   product of `shape`.
    public init<T: TensorScalar>(shape: [Int], scalars: [T]) throws {
        let count = try Tensor.elementCount(of: shape)
        guard count == scalars.count else {
            throw FVDError.invalidArgument(
                "shape \(shape) holds \(count) elements but \(scalars.count) \(T.dtype) values were given")
        }
        self.shape = shape
        dtype = T.dtype
        storage = TensorStorage(uninitializedByteCount: count * T.dtype.byteSize)
        scalars.withUnsafeBytes { storage.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// A one-dimensional tensor of `scalars`.
    public init<T: TensorScalar>(_ scalars: [T]) {
        // A 1-D shape always matches its own count.
        self = try! Tensor(shape: [scalars.count], scalars: scalars)
    }

    /// A tensor whose bytes `initializer` writes in place: a kernel's output, with no copy
    /// (like `Array(unsafeUninitializedCapacity:initializingWith:)`).
    ///
    /// `initializer` gets the tensor's ``byteCount`` bytes, row-major, uninitialized (they
    /// may hold an earlier tensor's data), and must write every one; bind them to the
    /// dtype's element type (`$0.bindMemory(to: Float.self)`) to write elements. The bytes
    /// are valid only during the call. They are where collectives read them: with the
    /// shared-memory and MPI transports, this rank's part of the segment its peers map, so
    /// the tensor goes into a collective without being staged.
    ///
    /// ```swift
    /// let q = try Tensor(unsafeUninitializedShape: [1, 1024, 24, 64], dtype: .float32) { bytes in
    ///     myProjectionKernel(x, weights, into: bytes.bindMemory(to: Float.self))
    /// }
    /// ```
    /// - Throws: ``FVDError/invalidArgument(_:)`` for a negative dimension or a size that
    ///   overflows; whatever `initializer` throws (the storage is then released).
    public init(
        unsafeUninitializedShape shape: [Int], dtype: DType, initializingWith initializer: (UnsafeMutableRawBufferPointer) throws -> Void
    ) throws {
        let count = try Tensor.elementCount(of: shape)
        self.init(uninitializedShape: shape, dtype: dtype)
        try initializer(UnsafeMutableRawBufferPointer(start: storage.pointer, count: count * dtype.byteSize))
    }

    /// A tensor holding a copy of `bytes`, row-major, as `shape` elements of `dtype`: data
    /// from another library's buffer (a model file, a GPU download, a C array).
    ///
    /// One copy, into storage the collectives read in place (see
    /// ``init(unsafeUninitializedShape:dtype:initializingWith:)``, which avoids even that one).
    /// - Throws: ``FVDError/invalidArgument(_:)`` when `bytes.count` is not the shape's
    ///   element count times the dtype's size, or for a bad shape.
    public init(copying bytes: UnsafeRawBufferPointer, shape: [Int], dtype: DType) throws {
        let count = try Tensor.elementCount(of: shape)
        guard bytes.count == count * dtype.byteSize else {
            throw FVDError.invalidArgument(
                "shape \(shape) of \(dtype) holds \(count * dtype.byteSize) bytes but \(bytes.count) were given")
        }
        try self.init(unsafeUninitializedShape: shape, dtype: dtype) { destination in
            if let source = bytes.baseAddress, !bytes.isEmpty { destination.baseAddress!.copyMemory(from: source, byteCount: bytes.count) }
        }
    }

    /// Internal: uninitialised storage for a shape already validated by the caller.
    init(uninitializedShape shape: [Int], dtype: DType) {
        self.shape = shape
        self.dtype = dtype
        storage = TensorStorage(uninitializedByteCount: shape.reduce(1, *) * dtype.byteSize)
    }

    init(shape: [Int], dtype: DType, storage: TensorStorage) {
        self.shape = shape
        self.dtype = dtype
        self.storage = storage
    }

    /// Number of dimensions (numpy's `ndim`, torch's `dim()`); `shape.count`.
    public var dimensionCount: Int { shape.count }
    /// Number of dimensions: ``dimensionCount``, under its old name (which reads like the
    /// process rank of ``GroupCoordinator/rank``).
    @available(*, deprecated, renamed: "dimensionCount")
    public var rank: Int { shape.count }
    /// Number of elements (1 for a scalar, 0 if any dimension is 0).
    public var count: Int { shape.reduce(1, *) }
    /// Size of the data in bytes.
    public var byteCount: Int { count * dtype.byteSize }

    /// The elements in row-major order.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` if `T` is not this tensor's dtype.
    public func scalars<T: TensorScalar>(as type: T.Type) throws -> [T] {
        guard T.dtype == dtype else {
            throw FVDError.invalidArgument("tensor has dtype \(dtype), not \(T.dtype)")
        }
        return withUnsafeBytes { raw in Array(raw.bindMemory(to: T.self)) }
    }

    /// The same data under another shape with the same element count (no copy).
    ///
    /// One dimension may be `-1`; it is inferred.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        var resolved = newShape
        if let unknown = newShape.firstIndex(of: -1) {
            var rest = newShape
            rest.remove(at: unknown)
            let known = try Tensor.elementCount(of: rest)
            guard known > 0, count % known == 0 else {
                throw FVDError.invalidArgument("cannot reshape \(shape) to \(newShape)")
            }
            resolved[unknown] = count / known
        }
        guard (try? Tensor.elementCount(of: resolved)) == count else {
            throw FVDError.invalidArgument("cannot reshape \(shape) (\(count) elements) to \(newShape)")
        }
        return Tensor(shape: resolved, dtype: dtype, storage: storage)
    }

    /// Calls `body` with the raw bytes (row-major).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage.pointer, count: byteCount))
    }

    /// Gives this value its own storage if it shares it (copy-on-write), before a write.
    mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
    }

    /// Gives this value storage of its own that the other ranks can read in place (a
    /// copy when it is shared, or private memory of a multi-process rank), before an
    /// in-place collective writes it.
    mutating func makeUniqueAndPeerVisible() {
        if !isKnownUniquelyReferenced(&storage) || !storage.isPeerVisible { storage = storage.copy() }
    }

    /// Calls `body` with writable raw bytes, row-major, to change the tensor in place
    /// (a kernel that updates its input, say).
    ///
    /// If the storage is shared with another tensor value, it is copied first
    /// (copy-on-write), so the other value never changes; a tensor only this variable holds
    /// is written where it is, in the shared segment on the shared-memory and MPI
    /// transports. The bytes are valid only during the call; bind them to the dtype's
    /// element type to write elements, or use ``withUnsafeMutableBufferPointer(as:_:)``.
    /// For a new tensor, ``init(unsafeUninitializedShape:dtype:initializingWith:)`` skips
    /// the zero fill.
    public mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        makeUnique()
        return try body(UnsafeMutableRawBufferPointer(start: storage.pointer, count: byteCount))
    }

    /// Calls `body` with the elements typed as `T`.
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` if `T` is not this tensor's dtype.
    public func withUnsafeBufferPointer<T: TensorScalar, R>(
        as type: T.Type, _ body: (UnsafeBufferPointer<T>) throws -> R
    ) throws -> R {
        guard T.dtype == dtype else { throw FVDError.invalidArgument("tensor has dtype \(dtype), not \(T.dtype)") }
        return try withUnsafeBytes { try body($0.bindMemory(to: T.self)) }
    }

    /// Calls `body` with the elements typed as `T`, writable (copy-on-write).
    ///
    /// - Throws: ``FVDError/invalidArgument(_:)`` if `T` is not this tensor's dtype.
    public mutating func withUnsafeMutableBufferPointer<T: TensorScalar, R>(
        as type: T.Type, _ body: (UnsafeMutableBufferPointer<T>) throws -> R
    ) throws -> R {
        guard T.dtype == dtype else { throw FVDError.invalidArgument("tensor has dtype \(dtype), not \(T.dtype)") }
        return try withUnsafeMutableBytes { try body($0.bindMemory(to: T.self)) }
    }

    public static func == (lhs: Tensor, rhs: Tensor) -> Bool {
        guard lhs.shape == rhs.shape, lhs.dtype == rhs.dtype else { return false }
        if lhs.storage === rhs.storage { return true }
        return lhs.withUnsafeBytes { a in rhs.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
    }

    public var description: String { "Tensor(\(dtype), shape: \(shape))" }

    /// The product of `shape`, checked for negative sizes and overflow.
    ///
    /// The nonzero dimensions must multiply to at most the limit even when another is 0
    /// and the tensor is empty: the layout code multiplies runs of dimensions (those
    /// before and after a gather dimension), which would overflow for `[0, 2^62, 4]`.
    static func elementCount(of shape: [Int]) throws -> Int {
        var count = 1
        for d in shape where d != 0 {
            guard d > 0 else { throw FVDError.invalidArgument("shape \(shape) has a negative dimension") }
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= Int(Int32.max) * 1024 else {
                throw FVDError.invalidArgument("shape \(shape) is too large")
            }
            count = product
        }
        return shape.contains(0) ? 0 : count
    }
}
