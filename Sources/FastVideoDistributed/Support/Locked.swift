#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A value guarded by a `pthread_mutex_t`; the library's one lock.
///
/// Used instead of `Synchronization.Mutex` because ThreadSanitizer intercepts pthread
/// mutexes but not the futex calls inside the prebuilt Synchronization library, so with
/// `Mutex` every access under the lock would be reported as a race and real races would
/// drown. Uncontended, both cost about the same (one atomic each way).
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

extension Locked {
    /// The value cached under `key`, made by `make` (under the lock) the first time.
    func value<Key: Hashable, Cached>(for key: Key, make: () throws -> Cached) rethrows -> Cached where Value == [Key: Cached] {
        try withLock { cache in
            if let made = cache[key] { return made }
            let made = try make()
            cache[key] = made
            return made
        }
    }
}
