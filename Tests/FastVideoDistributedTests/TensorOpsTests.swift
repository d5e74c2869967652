import Testing

@testable import FastVideoDistributed

/// Every multi-index of `shape`, in row-major order.
private func indices(of shape: [Int]) -> [[Int]] {
    shape.reduce([[]]) { prefixes, size in prefixes.flatMap { prefix in (0..<size).map { prefix + [$0] } } }
}

/// The element at `index` of row-major `values` of `shape`: the reference the tensor
/// operations are checked against.
private func element(_ values: [Int32], _ shape: [Int], _ index: [Int]) -> Int32 {
    values[zip(index, shape).reduce(0) { $0 * $1.1 + $1.0 }]
}

/// A tensor of `shape` whose elements are distinct (offset by `base`).
private func counting(_ shape: [Int], base: Int32 = 0) -> Tensor {
    try! Tensor(shape: shape, scalars: (0..<Int32(shape.reduce(1, *))).map { $0 + base })
}

@Suite("Tensor: concatenated, stacked, slice, chunked and scalar(at:) equal index loops")
struct TensorOpsTests {
    @Test("concatenated along every dimension, negative dims too", arguments: [0, 1, 2, -1, -3])
    func concatenated(dim: Int) throws {
        let shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]].enumerated().map { i, shape -> [Int] in
            var shape = shape
            shape[(dim + 3) % 3] = i + 1  // sizes 1, 2, 3 along the joined dimension
            return shape
        }
        let parts = shapes.enumerated().map { counting($1, base: Int32($0 * 1000)) }
        let joined = try Tensor.concatenated(parts, dim: dim)
        let d = (dim + 3) % 3
        #expect(joined.shape[d] == 6)
        let values = try joined.scalars(as: Int32.self)
        for index in indices(of: joined.shape) {
            var source = 0, at = index[d]
            while at >= parts[source].shape[d] { at -= parts[source].shape[d]; source += 1 }
            var local = index
            local[d] = at
            #expect(element(values, joined.shape, index) == element(try parts[source].scalars(as: Int32.self), parts[source].shape, local))
        }
    }

    @Test("stacked inserts a dimension at 0…n (and -1), like torch.stack", arguments: [0, 1, 2, -1])
    func stacked(dim: Int) throws {
        let parts = (0..<3).map { counting([2, 4], base: Int32($0 * 100)) }
        let stacked = try Tensor.stacked(parts, dim: dim)
        let d = dim < 0 ? dim + 3 : dim
        var shape = [2, 4]
        shape.insert(3, at: d)
        #expect(stacked.shape == shape)
        let values = try stacked.scalars(as: Int32.self)
        for index in indices(of: shape) {
            var local = index
            let which = local.remove(at: d)
            #expect(element(values, shape, index) == element(try parts[which].scalars(as: Int32.self), [2, 4], local))
        }
    }

    @Test("slice and chunked cut what index loops cut; the chunks concatenate back")
    func sliceAndChunks() throws {
        let x = counting([3, 5, 2])
        let xs = try x.scalars(as: Int32.self)
        let cut = try x.slice(dim: 1, range: 1..<4)
        #expect(cut.shape == [3, 3, 2])
        for index in indices(of: cut.shape) {
            #expect(try cut.scalar(at: index, as: Int32.self) == element(xs, x.shape, [index[0], index[1] + 1, index[2]]))
        }
        #expect(try x.slice(dim: -1, range: 0..<0).shape == [3, 5, 0])
        // torch.chunk: ceil(5 / 3) = 2 per chunk: 2, 2, 1; ceil(5 / 4) = 2: 2, 2, 1 (three, not four).
        #expect(try x.chunked(3, dim: 1).map(\.shape) == [[3, 2, 2], [3, 2, 2], [3, 1, 2]])
        #expect(try x.chunked(4, dim: 1).map(\.shape) == [[3, 2, 2], [3, 2, 2], [3, 1, 2]])
        #expect(try x.chunked(1, dim: 0) == [x])
        #expect(try x.chunked(7, dim: -1).count == 2)
        for (chunks, dim) in [(2, 0), (3, 1), (5, 2)] {
            #expect(try Tensor.concatenated(x.chunked(chunks, dim: dim), dim: dim) == x)
        }
        #expect(try counting([0, 3]).chunked(2).map(\.shape) == [[0, 3]])
    }

    @Test("scalar(at:) reads one element of every dtype; negative entries count from the end")
    func scalarAt() throws {
        let x = randomTensor([2, 3, 4], .float32, seed: 9)
        let xs = try x.scalars(as: Float.self)
        for index in indices(of: x.shape) {
            #expect(try x.scalar(at: index, as: Float.self) == xs[(index[0] * 3 + index[1]) * 4 + index[2]])
        }
        #expect(try x.scalar(at: [-1, -1, -1], as: Float.self) == xs.last)
        #expect(try Tensor(shape: [], scalars: [Int64(-7)]).scalar(at: [], as: Int64.self) == -7)
        let h = try Tensor(shape: [2], scalars: [BFloat16(1.5), BFloat16(-2)])
        #expect(try h.scalar(at: [1], as: BFloat16.self) == BFloat16(-2))
        let b = try Tensor(shape: [3], scalars: [true, false, true])
        #expect(try b.scalar(at: [1], as: Bool.self) == false)
    }

    @Test("misuse is a clear error: no tensors, mismatched shapes or dtypes, bad dims, ranges and indices")
    func errors() throws {
        let a = counting([2, 3]), b = counting([2, 4]), c = try Tensor(zeros: [2, 3], dtype: .float32)
        let cases: [(() throws -> Any, String)] = [
            ({ try Tensor.concatenated([]) }, "concatenated: give at least one tensor"),
            ({ try Tensor.concatenated([a, b], dim: 0) }, "tensor 1 has shape [2, 4] and dtype int32, which does not join tensor 0's [2, 3] and int32 along dim 0"),
            ({ try Tensor.concatenated([a, c], dim: 0) }, "tensor 1 has shape [2, 3] and dtype float32"),
            ({ try Tensor.concatenated([a, counting([6])], dim: 0) }, "tensor 1 has shape [6]"),
            ({ try Tensor.concatenated([a], dim: 2) }, "dim 2"),
            ({ try Tensor.stacked([a, b]) }, "stacked: tensor 1 has shape [2, 4] and dtype int32; tensor 0 has [2, 3] and int32"),
            ({ try Tensor.stacked([a], dim: 3) }, "dim 3"),
            ({ try a.slice(dim: 1, range: 2..<4) }, "slice 2..<4 is outside 0..<3 along dim 1"),
            ({ try a.chunked(0) }, "chunks must be at least 1, got 0"),
            ({ try a.scalar(at: [0], as: Int32.self) }, "index [0] has 1 entries; the tensor has 2 dimensions [2, 3]"),
            ({ try a.scalar(at: [0, 3], as: Int32.self) }, "entry 3 is outside dimension 1 of size 3"),
            ({ try a.scalar(at: [0, 0], as: Float.self) }, "tensor has dtype int32, not float32"),
        ]
        for (call, message) in cases {
            #expect { _ = try call() } throws: { String(describing: $0).contains(message) }
        }
    }
}
