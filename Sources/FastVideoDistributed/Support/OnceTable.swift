import CFVDShims

/// A fixed number of objects, each made on first use and then read without a lock:
/// per-operation metrics, per-peer links, a coordinator's lane.
///
/// Invariant: each word of `slots` is 0 or an `Unmanaged` pointer this table holds one
/// retain of; a word goes from 0 to its object once (compare-and-swap) and never changes again.
final class OnceTable<Element: AnyObject & Sendable>: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<UInt64>
    let count: Int

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: max(count, 1))
        slots.initialize(repeating: 0, count: max(count, 1))
    }

    deinit {
        for i in 0..<count where slots[i] != 0 { Self.unmanaged(slots[i]).release() }
        slots.deallocate()
    }

    private static func unmanaged(_ bits: UInt64) -> Unmanaged<Element> {
        Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits))!)
    }

    /// Whether element `i` was made (without touching it).
    func isMade(_ i: Int) -> Bool { fvd_atomic_load_u64(slots + i) != 0 }

    /// Element `i` if it was made.
    func existing(_ i: Int) -> Element? {
        let bits = fvd_atomic_load_u64(slots + i)
        return bits == 0 ? nil : Self.unmanaged(bits).takeUnretainedValue()
    }

    /// Runs `body` with element `i` (made by `make` the first time), without counting a
    /// reference to it: the table keeps it alive.
    func withElement<R>(_ i: Int, make: () throws -> Element, _ body: (Element) throws -> R) rethrows -> R {
        var bits = fvd_atomic_load_u64(slots + i)
        if bits == 0 {
            _ = try element(i, make: make)
            bits = fvd_atomic_load_u64(slots + i)
        }
        return try Self.unmanaged(bits)._withUnsafeGuaranteedRef(body)
    }

    /// Element `i`, made by `make` the first time (when two threads race, one made object wins).
    func element(_ i: Int, make: () throws -> Element) rethrows -> Element {
        if let made = existing(i) { return made }
        let made = try make()
        let bits = UInt64(UInt(bitPattern: Unmanaged.passRetained(made).toOpaque()))
        if fvd_atomic_cas_u64(slots + i, 0, bits) != 0 { return made }
        Self.unmanaged(bits).release()
        return existing(i)!
    }
}
