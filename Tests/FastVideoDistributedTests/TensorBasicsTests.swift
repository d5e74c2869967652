import Testing
@testable import FastVideoDistributed

@Suite("TensorBasics")
struct TensorBasicsTests {
    @Test func zerosHaveShapeCountAndBytes() throws {
        let t = try Tensor(zeros: [2, 3, 4], dtype: .int16)
        #expect(t.shape == [2, 3, 4])
        #expect(t.dimensionCount == 3)
        #expect(t.count == 24)
        #expect(t.byteCount == 48)
        #expect(try t.scalars(as: Int16.self) == [Int16](repeating: 0, count: 24))
    }

    @Test func scalarAndZeroSizeShapes() throws {
        let scalar = try Tensor(shape: [], scalars: [Float(2.5)])
        #expect(scalar.dimensionCount == 0)
        #expect(scalar.count == 1)
        #expect(try scalar.scalars(as: Float.self) == [2.5])

        let empty = try Tensor(zeros: [4, 0, 2], dtype: .float64)
        #expect(empty.count == 0)
        #expect(empty.byteCount == 0)
        #expect(try empty.scalars(as: Double.self).isEmpty)
    }

    @Test func initChecksCountAndShape() throws {
        #expect(throws: FVDError.self) { try Tensor(shape: [2, 2], scalars: [Int32(1), 2, 3]) }
        #expect(throws: FVDError.self) { try Tensor(zeros: [2, -1], dtype: .float32) }
        #expect(throws: FVDError.self) { try Tensor(zeros: [Int.max, 2], dtype: .float32) }
    }

    @Test func scalarsRoundTripForEveryType() throws {
        #expect(try Tensor([Float(1), -2]).scalars(as: Float.self) == [1, -2])
        #expect(try Tensor([1.0, 2.0]).scalars(as: Double.self) == [1, 2])
        #expect(try Tensor([Float16(0.5)]).scalars(as: Float16.self) == [0.5])
        #expect(try Tensor([BFloat16(3)]).scalars(as: BFloat16.self) == [3])
        #expect(try Tensor([Int8(-3)]).scalars(as: Int8.self) == [-3])
        #expect(try Tensor([Int16(-300)]).scalars(as: Int16.self) == [-300])
        #expect(try Tensor([Int32(70000)]).scalars(as: Int32.self) == [70000])
        #expect(try Tensor([Int64.min]).scalars(as: Int64.self) == [Int64.min])
        #expect(try Tensor([UInt8(255)]).scalars(as: UInt8.self) == [255])
        #expect(try Tensor([true, false]).scalars(as: Bool.self) == [true, false])
        let t = Tensor([Float(1), 2, 3])
        #expect(t.dtype == .float32)
        #expect(t.shape == [3])
    }

    @Test func scalarsOfTheWrongTypeThrow() {
        let t = Tensor([Float(1), 2])
        #expect(throws: FVDError.self) { try t.scalars(as: Double.self) }
        #expect(throws: FVDError.self) { try t.withUnsafeBufferPointer(as: Int32.self) { _ in } }
    }

    @Test func reshapedKeepsDataAndInfersOneDimension() throws {
        let t = try Tensor(shape: [2, 3], scalars: (0..<6).map(Int32.init))
        let r = try t.reshaped([3, -1])
        #expect(r.shape == [3, 2])
        #expect(try r.scalars(as: Int32.self) == [0, 1, 2, 3, 4, 5])
        #expect(try t.reshaped([6]).shape == [6])
        #expect(try t.reshaped([1, 2, 1, 3]).shape == [1, 2, 1, 3])
        #expect(throws: FVDError.self) { try t.reshaped([4, -1]) }
        #expect(throws: FVDError.self) { try t.reshaped([7]) }
    }

    @Test func copyOnWriteLeavesTheOriginalAlone() throws {
        let original = Tensor([Float(1), 2, 3])
        var copy = original
        try copy.withUnsafeMutableBufferPointer(as: Float.self) { $0[0] = 99 }
        #expect(try original.scalars(as: Float.self) == [1, 2, 3])
        #expect(try copy.scalars(as: Float.self) == [99, 2, 3])

        // A reshaped view shares storage until written, too.
        var view = try original.reshaped([3, 1])
        view.withUnsafeMutableBytes { $0[0] = 0xFF }
        #expect(try original.scalars(as: Float.self) == [1, 2, 3])

        // A unique tensor is written in place (no copy needed, same values seen).
        var unique = Tensor([Int32(5)])
        try unique.withUnsafeMutableBufferPointer(as: Int32.self) { $0[0] = 6 }
        #expect(try unique.scalars(as: Int32.self) == [6])
    }

    @Test func equalityIsBitwise() throws {
        let nan = Tensor([Float.nan, 1])
        #expect(nan == Tensor([Float.nan, 1]))
        #expect(Tensor([Float(0)]) != Tensor([Float(-0.0)]))
        #expect(Tensor([Float(1), 2]) == Tensor([Float(1), 2]))
        #expect(Tensor([Float(1), 2]) != Tensor([Float(1), 3]))
        // Same bytes, other shape or dtype: not equal.
        #expect(try Tensor([Float(1), 2]).reshaped([2, 1]) != Tensor([Float(1), 2]))
        #expect(Tensor([Int32(7)]) != Tensor([UInt8(7), 0, 0, 0]))
        let i32 = Tensor([Int32(1)])
        var f32 = try Tensor(zeros: [1], dtype: .float32)
        f32.withUnsafeMutableBytes { $0[0] = 1 }
        #expect(i32 != f32)
    }
}

@Suite("BFloat16")
struct BFloat16Tests {
    private func bf(_ floatBits: UInt32) -> UInt16 { BFloat16(Float(bitPattern: floatBits)).bitPattern }

    @Test func exactValuesConvertExactly() {
        #expect(BFloat16(Float(1)).bitPattern == 0x3F80)
        #expect(BFloat16(Float(-2)).bitPattern == 0xC000)
        #expect(BFloat16(Float(0.5)).bitPattern == 0x3F00)
        #expect(BFloat16(Float(3)).floatValue == 3)
        #expect(BFloat16(bitPattern: 0x4049).floatValue == 3.140625)
        #expect(Float(BFloat16(Float(-1.5))) == -1.5)
        #expect(Double(BFloat16(Float(256))) == 256)
    }

    @Test func roundsToNearest() {
        #expect(bf(0x3F80_7FFF) == 0x3F80)  // just below half an ulp: down
        #expect(bf(0x3F80_8001) == 0x3F81)  // just above half an ulp: up
        #expect(bf(0xBF80_8001) == 0xBF81)  // same for negatives (away from zero)
    }

    @Test func tiesGoToEven() {
        #expect(bf(0x3F80_8000) == 0x3F80)  // 0x3F80 is even: round down
        #expect(bf(0x3F81_8000) == 0x3F82)  // 0x3F81 is odd: round up
        #expect(bf(0xBF80_8000) == 0xBF80)
        #expect(bf(0xBF81_8000) == 0xBF82)
        // 1 + 2^-8 is exactly between 1 and 1 + 2^-7.
        #expect(BFloat16(Float(1) + 0x1p-8).bitPattern == 0x3F80)
        #expect(BFloat16(Float(1) + 0x1p-7 + 0x1p-8).bitPattern == 0x3F82)
    }

    @Test func overflowGoesToInfinity() {
        #expect(BFloat16(Float.greatestFiniteMagnitude).bitPattern == 0x7F80)
        #expect(BFloat16(-Float.greatestFiniteMagnitude).bitPattern == 0xFF80)
        #expect(bf(0x7F7F_8000) == 0x7F80)  // tie above the largest finite (odd): up to inf
        #expect(bf(0x7F7F_7FFF) == 0x7F7F)
        #expect(BFloat16(Float.infinity) == .infinity)
        #expect(BFloat16(-Float.infinity).bitPattern == 0xFF80)
        #expect(BFloat16.greatestFiniteMagnitude.floatValue == Float(bitPattern: 0x7F7F_0000))
    }

    @Test func nanStaysNaN() {
        #expect(BFloat16(Float.nan).isNaN)
        #expect(BFloat16(-Float.nan).isNaN)
        #expect(BFloat16(-Float.nan).bitPattern & 0x8000 != 0)
        // A NaN whose payload lies only in the low bits must not truncate to infinity.
        let low = BFloat16(Float(bitPattern: 0x7F80_0001))
        #expect(low.isNaN)
        #expect(low.bitPattern == 0x7FC0)
        // Rounding must not carry a NaN over into the sign bit or to zero.
        #expect(BFloat16(Float(bitPattern: 0x7FFF_FFFF)).isNaN)
        #expect(BFloat16(Double.nan).isNaN)
        #expect(BFloat16.nan != BFloat16.nan)
    }

    @Test func signedZeroIsKept() {
        #expect(BFloat16(Float(-0.0)).bitPattern == 0x8000)
        #expect(BFloat16(Float(0)).bitPattern == 0x0000)
        #expect(BFloat16(Float(-0.0)) == BFloat16(Float(0)))  // IEEE equality
        #expect(BFloat16(Float(-0.0)).floatValue.sign == .minus)
    }

    @Test func subnormalsRoundToNearestEven() {
        #expect(bf(0x0001_0000) == 0x0001)  // smallest bf16 subnormal, exact
        #expect(bf(0x0000_8000) == 0x0000)  // tie with even 0: down
        #expect(bf(0x0001_8000) == 0x0002)  // tie with odd 1: up
        #expect(bf(0x0000_8001) == 0x0001)
        #expect(bf(0x8001_8000) == 0x8002)
        #expect(BFloat16(bitPattern: 0x0001).floatValue == Float(bitPattern: 0x0001_0000))
        #expect(BFloat16(bitPattern: 0x0001).floatValue > 0)
        #expect(bf(0x007F_FFFF) == 0x0080)  // the largest float subnormal rounds up to the smallest normal
    }

    @Test func doublesAndIntegersConvert() {
        #expect(BFloat16(1.0).bitPattern == 0x3F80)
        #expect(BFloat16(257).floatValue == 256)  // 257 is a tie between 256 and 258: even (256)
        #expect(BFloat16(259).floatValue == 260)
        #expect(BFloat16(exactly: 257) == nil)
        #expect(BFloat16(exactly: 256) == 256)
        #expect((BFloat16(1.5) + BFloat16(2.25)).floatValue == 3.75)
    }

    @Test func float16Values() {
        #expect(Float16(1.0).bitPattern == 0x3C00)
        #expect(Float16(-2.0).bitPattern == 0xC000)
        #expect(Float16(65504.0).bitPattern == 0x7BFF)
        #expect(Float16(65520.0).isInfinite)  // beyond the tie above the largest finite
        #expect(Float16(Float(0x1p-24)).bitPattern == 0x0001)
        #expect(Float16(Float(1) + 0x1p-11).bitPattern == 0x3C00)  // tie to even
        #expect(Float16(Float(1) + 0x1p-10 + 0x1p-11).bitPattern == 0x3C02)
        #expect(Float(Float16(bitPattern: 0x3555)) == 0.333251953125)
        #expect(Float16(Float.nan).isNaN)
        #expect(Float16(Float(-0.0)).bitPattern == 0x8000)
    }
}

@Suite("Buffer cache")
struct BufferCacheTests {
    @Test("a full cache frees other sizes (largest first) to keep the size just released, and counts bytes exactly")
    func evictsOtherSizes() {
        let k = 64 << 10
        let cache = BufferCache(limitBytes: 4 * k)
        func buffer(_ bytes: Int) -> UnsafeMutableRawPointer { .allocate(byteCount: bytes, alignment: 64) }
        let a = buffer(k), b = buffer(2 * k), c = buffer(k)
        #expect(cache.give(a, capacity: k))
        #expect(cache.give(b, capacity: 2 * k))
        #expect(cache.cachedBytes == 3 * k)
        // 3k + 2k > 4k: the buffer of another size (k) is freed to keep this 2k one.
        let d = buffer(2 * k)
        #expect(cache.give(d, capacity: 2 * k))
        #expect(cache.cachedBytes == 4 * k)
        #expect(cache.take(capacity: k) == nil, "the 64 KiB buffer was evicted")
        // Same size only, and full: nothing to evict, so it is refused.
        let e = buffer(2 * k)
        #expect(!cache.give(e, capacity: 2 * k))
        e.deallocate()
        // A smaller size evicts the largest other size.
        #expect(cache.give(c, capacity: k))
        #expect(cache.cachedBytes == 3 * k)
        let first = cache.take(capacity: 2 * k), second = cache.take(capacity: 2 * k)
        #expect(first != nil && second == nil, "one of the two 128 KiB buffers was evicted")
        #expect(cache.take(capacity: k) == c)
        #expect(cache.cachedBytes == 0)
        first?.deallocate()
        c.deallocate()
        // Larger than the limit: never cached.
        let f = buffer(8 * k)
        #expect(!cache.give(f, capacity: 8 * k))
        f.deallocate()
    }

    @Test("a tensor filled in place by its initializer holds what it wrote; an error thrown there comes out")
    func uninitializedShapeFilledInPlace() throws {
        let t = try Tensor(unsafeUninitializedShape: [2, 3], dtype: .float32) { bytes in
            let floats = bytes.bindMemory(to: Float.self)
            #expect(floats.count == 6)
            for i in floats.indices { floats[i] = Float(i) * 0.5 }
        }
        #expect(t == (try Tensor(shape: [2, 3], scalars: (0..<6).map { Float($0) * 0.5 })))
        let empty = try Tensor(unsafeUninitializedShape: [3, 0], dtype: .bfloat16) { #expect($0.count == 0) }
        #expect(empty.count == 0)
        #expect(throws: FVDError.self) { try Tensor(unsafeUninitializedShape: [2, -3], dtype: .int8) { _ in } }
        struct KernelFailed: Error {}
        #expect(throws: KernelFailed.self) { try Tensor(unsafeUninitializedShape: [4], dtype: .int32) { _ in throw KernelFailed() } }
    }

    @Test("a tensor copied from raw bytes equals one made from the same scalars; a wrong byte count is named")
    func copyingRawBytes() throws {
        let values: [Int16] = [1, -2, 3, -4, 5, -6]
        let t = try values.withUnsafeBytes { try Tensor(copying: $0, shape: [3, 2], dtype: .int16) }
        #expect(t == (try Tensor(shape: [3, 2], scalars: values)))
        let empty = try Tensor(copying: UnsafeRawBufferPointer(start: nil, count: 0), shape: [0, 5], dtype: .float64)
        #expect(empty.shape == [0, 5])
        #expect {
            try values.withUnsafeBytes { try Tensor(copying: $0, shape: [2, 2], dtype: .int16) }
        } throws: { error in
            String(describing: error).contains("holds 8 bytes but 12 were given")
        }
    }
}
