import Foundation

/// Named tensors with small `Codable` metadata, what FastVideo's `send_tensor_dict`,
/// `recv_tensor_dict` and `broadcast_tensor_dict` move between pipeline stages.
///
/// Use ``NoMetadata`` when there is none. Tensors travel in the order of their sorted
/// names, each with its shape and dtype; the metadata travels as JSON.
public struct TensorDict<Metadata: Codable & Sendable>: Sendable {
    public var tensors: [String: Tensor]
    public var metadata: Metadata

    public init(_ tensors: [String: Tensor], metadata: Metadata) {
        self.tensors = tensors
        self.metadata = metadata
    }
}

extension TensorDict where Metadata == NoMetadata {
    public init(_ tensors: [String: Tensor]) { self.init(tensors, metadata: NoMetadata()) }
}

/// The metadata of a ``TensorDict`` that has none.
public struct NoMetadata: Codable, Sendable, Equatable {
    public init() {}
}

private struct DictNames: Decodable {
    var names: [String]
}

private struct DictMetadata<Metadata: Decodable>: Decodable {
    var metadata: Metadata
}

/// Objects as JSON in a `uint8` tensor. A rank that has nothing to send (a root without a
/// value, a value that does not encode) sends its reason as an `int8` tensor instead, so
/// its peers throw the same error rather than wait for data that never comes.
private enum ObjectPayload {
    static func encode<T: Encodable>(_ value: T?) -> Tensor {
        do {
            guard let value else { return text("passed no value", dtype: .int8) }
            let data = try JSONEncoder().encode(value)
            return text(String(decoding: data, as: UTF8.self), dtype: .uint8)
        } catch {
            return text("could not encode its \(T.self) as JSON: \(error)", dtype: .int8)
        }
    }

    static func decode<T: Decodable>(_ tensor: Tensor, as type: T.Type, op: String, group: String, sender: Int) throws -> T {
        let bytes = tensor.withUnsafeBytes { Data($0) }
        guard tensor.dtype == .uint8 else {
            throw FVDError.invalidArgument("\(op) in group \(group): rank \(sender) \(String(decoding: bytes, as: UTF8.self))")
        }
        do {
            return try JSONDecoder().decode(T.self, from: bytes)
        } catch {
            throw FVDError.invalidArgument("\(op) in group \(group): the object rank \(sender) sent is not a \(T.self): \(error)")
        }
    }

    private static func text(_ string: String, dtype: DType) -> Tensor {
        let bytes = Array(string.utf8)
        var tensor = Tensor(uninitializedShape: [bytes.count], dtype: dtype)
        tensor.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
        return tensor
    }
}

extension GroupCoordinator {
    /// Returns group rank `root`'s value on every rank, for any `Codable` value
    /// (FastVideo's `broadcast_object`).
    ///
    /// The value travels as JSON: one broadcast of its bytes, whose length only the root
    /// needs to know. Other ranks' `value` is ignored (pass `nil`).
    /// - Throws: ``FVDError/invalidArgument(_:)`` on every rank when the root passes `nil`
    ///   or a value JSON cannot encode (e.g. a `Double.nan`), or `root` is outside the
    ///   group; on a rank whose `T` cannot decode the root's JSON, there.
    public func broadcastObject<T: Codable & Sendable>(_ value: T?, from root: Int = 0) throws -> T {
        let payload = rankInGroup == root ? ObjectPayload.encode(value) : Tensor.empty
        let received = try broadcastAnyShape(payload, from: root, op: .broadcastObject)
        if rankInGroup == root, received.dtype == .uint8, let value { return value }
        return try ObjectPayload.decode(received, as: T.self, op: "broadcast_object", group: description, sender: ranks[root])
    }

    /// Returns group rank `root`'s list on every rank (FastVideo's `broadcast_object_list`).
    ///
    /// Unlike torch, the other ranks need not pass a list of the same length: they get the
    /// root's whole list. Errors as ``broadcastObject(_:from:)-24m0o``.
    public func broadcastObjectList<T: Codable & Sendable>(_ list: [T]?, from root: Int = 0) throws -> [T] {
        try broadcastObject(list, from: root)
    }

    /// Sends any `Codable` value to group rank `destination` (FastVideo's `send_object`).
    ///
    /// One ``send(_:to:)-3j66f`` of its JSON. A value that does not encode is an error here and
    /// at the receiver, which gets the reason instead of the value.
    public func sendObject<T: Codable & Sendable>(_ value: T, to destination: Int? = nil) throws {
        let payload = ObjectPayload.encode(value)
        try send(payload, to: destination)
        if payload.dtype != .uint8 {
            _ = try ObjectPayload.decode(payload, as: T.self, op: "send_object", group: description, sender: rank)
        }
    }

    /// Receives the next value group rank `source` sent with ``sendObject(_:to:)-9vum7``.
    public func recvObject<T: Codable & Sendable>(_ type: T.Type = T.self, from source: Int? = nil) throws -> T {
        let origin = source ?? (rankInGroup - 1 + size) % size
        let tensor = try recv(from: origin)
        return try ObjectPayload.decode(tensor, as: T.self, op: "recv_object", group: description, sender: ranks[origin])
    }

    /// Sends named tensors and their metadata to group rank `destination`
    /// (FastVideo's `send_tensor_dict`): the names and metadata as one object, then each
    /// tensor with ``send(_:to:)-3j66f`` in name order. Empty tensors and empty dicts are fine.
    public func sendTensorDict<M>(_ dict: TensorDict<M>, to destination: Int? = nil) throws {
        let names = dict.tensors.keys.sorted()
        try sendObject(Manifest(names: names, metadata: dict.metadata), to: destination)
        for name in names { try send(dict.tensors[name]!, to: destination) }
    }

    /// Receives what group rank `source` sent with ``sendTensorDict(_:to:)-2csf0``.
    ///
    /// - Throws: on this rank, ``FVDError/invalidArgument(_:)`` when the metadata is not a
    ///   `M` (after every tensor has arrived, so the sender is never left waiting).
    public func recvTensorDict<M>(_ metadata: M.Type, from source: Int? = nil) throws -> TensorDict<M> {
        let origin = source ?? (rankInGroup - 1 + size) % size
        let manifest = try recv(from: origin)
        let names = try ObjectPayload.decode(manifest, as: DictNames.self, op: "recv_tensor_dict", group: description, sender: ranks[origin]).names
        var tensors: [String: Tensor] = [:]
        for name in names { tensors[name] = try recv(from: origin) }
        let decoded = try ObjectPayload.decode(
            manifest, as: DictMetadata<M>.self, op: "recv_tensor_dict", group: description, sender: ranks[origin])
        return TensorDict(tensors, metadata: decoded.metadata)
    }

    /// Receives a dict without metadata (or ignores its metadata).
    public func recvTensorDict(from source: Int? = nil) throws -> TensorDict<NoMetadata> {
        try recvTensorDict(NoMetadata.self, from: source)
    }

    /// Returns group rank `root`'s named tensors and metadata on every rank
    /// (FastVideo's `broadcast_tensor_dict`): the names and metadata as one object, then
    /// each tensor with its shape and dtype. Other ranks pass `nil`.
    /// - Throws: the errors of ``broadcastObject(_:from:)-24m0o``.
    public func broadcastTensorDict<M>(_ dict: TensorDict<M>?, from root: Int = 0) throws -> TensorDict<M> {
        let names = dict.map { $0.tensors.keys.sorted() }
        let manifest = try broadcastObject(dict.map { Manifest(names: names!, metadata: $0.metadata) }, from: root)
        var tensors: [String: Tensor] = [:]
        for name in manifest.names {
            tensors[name] = try broadcastAnyShape(rankInGroup == root ? dict!.tensors[name]! : Tensor.empty, from: root, op: .broadcastTensorDict)
        }
        return TensorDict(tensors, metadata: manifest.metadata)
    }

    /// Group rank `root`'s tensor, of any shape and dtype, on every rank; the others'
    /// `input` is not read (pass ``Tensor/empty``).
    func broadcastAnyShape(_ input: Tensor, from root: Int, op: CollectiveOp) throws -> Tensor {
        if size == 1 {
            try checkRoot(root, op: op.name)
            return input
        }
        return try collective(op, input, arguments: ArgumentList(root), sends: rankInGroup == root, payload: { $0.byteCount }) { _ in
            try checkRoot(root, op: op.name)
            return rankInGroup == root ? input : try copyOfInput(of: root, on: channel)
        }
    }
}

/// What travels ahead of a dict's tensors: their names and the metadata. Receivers
/// decode the names first (``DictNames``) and the metadata only once every tensor has
/// arrived (``DictMetadata``), so a metadata type that does not match fails on that rank
/// without leaving its peer waiting.
private struct Manifest<Metadata: Codable & Sendable>: Codable, Sendable {
    var names: [String]
    var metadata: Metadata
}
