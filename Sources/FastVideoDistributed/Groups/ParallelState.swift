/// The tensor-, sequence- and data-parallel groups of one rank, laid out as FastVideo does.
///
/// With world size `W`, tensor-parallel size `tp` and sequence-parallel size `sp`:
/// - tensor-parallel groups are consecutive blocks of `tp` ranks: `[0..<tp], [tp..<2tp], ...`;
/// - sequence-parallel groups are consecutive blocks of `sp` ranks;
/// - data-parallel groups are the ranks with the same index inside their SP block:
///   `{i, i+sp, i+2sp, ...}` for `i in 0..<sp` (`sp` groups of `W/sp` ranks).
///
/// Unlike FastVideo, the sizes are validated. Tensor and sequence parallelism share
/// ranks (FastVideo runs TP in the text encoder and SP in the DiT on the same GPUs).
///
/// The module-level functions (``tensorModelParallelAllReduce(_:op:)-12nb4`` and the others)
/// find the state the way FastVideo's find their global groups: through
/// ``ParallelState/current``, a task-local (thread-local outside tasks) value bound with
/// ``withCurrent(_:)-7uxvz``. Calling the coordinators directly needs no binding.
public struct ParallelState: Sendable, CustomStringConvertible {
    /// The whole world.
    public let world: GroupCoordinator
    /// This rank's tensor-parallel group.
    public let tensorParallel: GroupCoordinator
    /// This rank's sequence-parallel group.
    public let sequenceParallel: GroupCoordinator
    /// This rank's data-parallel group.
    public let dataParallel: GroupCoordinator
    /// This rank's Ulysses group: the part of its sequence-parallel group that exchanges
    /// heads with the all-to-all (USP). The sequence-parallel group itself when the ring
    /// degree is 1.
    public let ulysses: GroupCoordinator
    /// This rank's ring group: the ranks at this rank's position in each Ulysses group of
    /// its sequence-parallel group, which pass key/value blocks around (ring attention). A
    /// group of one when the ring degree is 1.
    public let ring: GroupCoordinator

    /// Builds this rank's groups. Every rank of `world` must call it with the same sizes.
    ///
    /// With `ringDegree` r > 1 (USP, as in yunchang and xDiT), each sequence-parallel
    /// group of `sp = u × r` ranks is split further: its Ulysses groups are consecutive
    /// blocks of `u` ranks, and its ring groups take the ranks at the same position in each
    /// Ulysses group (stride `u`; yunchang's `use_ulysses_low`). The default, 1, is
    /// FastVideo's layout: ``ulysses`` is the sequence-parallel group, ``ring`` a group of one.
    ///
    /// - Throws: ``FVDError/invalidLayout(worldSize:tensorParallel:sequenceParallel:)``
    ///   unless `tp >= 1`, `sp >= 1` and both divide the world size;
    ///   ``FVDError/invalidArgument(_:)`` unless `ringDegree >= 1` divides `sp`;
    ///   ``FVDError/invalidArgument(_:)`` if a ``Fault`` of the world names a group
    ///   `tpN`, `spN` or `dpN` this layout does not have, or does not put the fault's
    ///   rank in (it would never fire).
    public init(world: GroupCoordinator, tensorParallel tp: Int = 1, sequenceParallel sp: Int = 1, ringDegree: Int = 1) throws {
        let layout = try GroupLayout(worldSize: world.size, tensorParallel: tp, sequenceParallel: sp, ringDegree: ringDegree)
        try (world.factory as? FaultInjectingFactory)?.checkGroups(of: layout, ranks: world.ranks)
        self.world = world
        // The layout numbers the members of `world` 0..<size; map them to world ranks.
        let me = world.rankInGroup
        func make(_ prefix: String, _ groups: [[Int]]) throws -> GroupCoordinator {
            let i = groups.firstIndex { $0.contains(me) }!
            return try world.subgroup(name: "\(prefix)\(i)", ranks: groups[i].map { world.ranks[$0] })
        }
        tensorParallel = try make("tp", layout.tensorParallelGroups)
        sequenceParallel = try make("sp", layout.sequenceParallelGroups)
        dataParallel = try make("dp", layout.dataParallelGroups)
        if ringDegree == 1 {
            ulysses = sequenceParallel
            ring = try world.subgroup(name: "ring\(me)", ranks: [world.rank])
        } else {
            ulysses = try make("ulysses", layout.ulyssesGroups)
            ring = try make("ring", layout.ringGroups)
        }
        if Diagnostics.logs(.debug) {
            let rank = world.rank
            Diagnostics.log(.debug, rank: rank, "layout: world of \(world.size), tp \(tp), sp \(sp), dp \(world.size / sp); my groups are marked *")
            for line in describe().split(separator: "\n") { Diagnostics.log(.debug, rank: rank, "layout: \(line)") }
        }
    }

    /// The layout of the whole world (every group, not only this rank's).
    public var layout: GroupLayout {
        // The sizes were validated in init.
        try! GroupLayout(
            worldSize: world.size, tensorParallel: tensorParallel.size, sequenceParallel: sequenceParallel.size, ringDegree: ring.size)
    }

    /// The rank map, one line per group; the groups of this rank are marked `*`.
    ///
    /// Ranks are positions in ``world`` (the world ranks when `world` is the whole world).
    public func describe() -> String {
        layout.describe(marking: world.rankInGroup)
    }

    public var description: String { describe() }

    /// The state bound by ``withCurrent(_:)-7uxvz`` on this task or thread.
    @TaskLocal public static var current: ParallelState?

    /// Binds this state as ``current`` while `body` runs, for the module-level functions.
    public func withCurrent<R>(_ body: () throws -> R) rethrows -> R {
        try ParallelState.$current.withValue(self, operation: body)
    }

    static func require() throws -> ParallelState {
        guard let state = current else { throw FVDError.noParallelState }
        return state
    }
}

/// The group lists of a FastVideo layout: pure, no communication.
public struct GroupLayout: Sendable, Equatable {
    public let worldSize: Int
    public let tensorParallelSize: Int
    public let sequenceParallelSize: Int
    /// The ring degree `r` of USP: each sequence-parallel group is `sp / r` Ulysses ranks
    /// × `r` ring ranks (1: FastVideo's Ulysses only).
    public let ringDegree: Int

    /// - Throws: ``FVDError/invalidLayout(worldSize:tensorParallel:sequenceParallel:)``
    ///   unless `worldSize >= 1`, `tp >= 1`, `sp >= 1` and both divide `worldSize`;
    ///   ``FVDError/invalidArgument(_:)`` unless `ringDegree >= 1` divides `sp`.
    public init(worldSize: Int, tensorParallel tp: Int, sequenceParallel sp: Int, ringDegree: Int = 1) throws {
        guard worldSize >= 1, tp >= 1, sp >= 1, worldSize % tp == 0, worldSize % sp == 0 else {
            throw FVDError.invalidLayout(worldSize: worldSize, tensorParallel: tp, sequenceParallel: sp)
        }
        guard ringDegree >= 1, sp % ringDegree == 0 else {
            throw FVDError.invalidArgument(
                "ring degree \(ringDegree) does not divide the sequence-parallel size \(sp): USP splits each sequence-parallel "
                    + "group into sp / r Ulysses ranks × r ring ranks, so r must be at least 1 and divide sp")
        }
        self.worldSize = worldSize
        tensorParallelSize = tp
        sequenceParallelSize = sp
        self.ringDegree = ringDegree
    }

    /// The Ulysses degree `u = sp / r`: the size of each Ulysses group.
    public var ulyssesDegree: Int { sequenceParallelSize / ringDegree }

    /// Within each sequence-parallel group, consecutive blocks of `u` ranks.
    public var ulyssesGroups: [[Int]] { blocks(of: ulyssesDegree) }

    /// Within each sequence-parallel group of `u × r` ranks starting at `b`, the ranks
    /// `b + i, b + i + u, …, b + i + (r - 1)u` for each position `i in 0..<u`.
    public var ringGroups: [[Int]] {
        sequenceParallelGroups.flatMap { group in
            (0..<ulyssesDegree).map { i in Array(stride(from: group[0] + i, to: group[0] + sequenceParallelSize, by: ulyssesDegree)) }
        }
    }

    /// Number of data-parallel replicas, `W / sp` (the size of each DP group).
    public var dataParallelSize: Int { worldSize / sequenceParallelSize }

    /// `[0..<tp], [tp..<2tp], ...`
    public var tensorParallelGroups: [[Int]] { blocks(of: tensorParallelSize) }
    /// `[0..<sp], [sp..<2sp], ...`
    public var sequenceParallelGroups: [[Int]] { blocks(of: sequenceParallelSize) }
    /// `{i, i+sp, ...}` for `i in 0..<sp`.
    public var dataParallelGroups: [[Int]] {
        (0..<sequenceParallelSize).map { i in Array(stride(from: i, to: worldSize, by: sequenceParallelSize)) }
    }

    private func blocks(of size: Int) -> [[Int]] {
        (0..<(worldSize / size)).map { Array(($0 * size)..<(($0 + 1) * size)) }
    }

    /// The rank map, one line per group, optionally marking the groups of one rank with `*`.
    public func describe(marking rank: Int? = nil) -> String {
        let usp = ringDegree > 1 ? " (ulysses \(ulyssesDegree) × ring \(ringDegree))" : ""
        var lines = [
            "world size \(worldSize): tensor parallel \(tensorParallelSize), "
                + "sequence parallel \(sequenceParallelSize)\(usp), data parallel \(dataParallelSize)"
        ]
        var kinds = [("tp", tensorParallelGroups), ("sp", sequenceParallelGroups), ("dp", dataParallelGroups)]
        if ringDegree > 1 { kinds += [("ulysses", ulyssesGroups), ("ring", ringGroups)] }
        for (prefix, groups) in kinds {
            for (i, g) in groups.enumerated() {
                let mark = rank.map { g.contains($0) ? " *" : "" } ?? ""
                lines.append("\(prefix)\(i): ranks \(g)\(mark)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
