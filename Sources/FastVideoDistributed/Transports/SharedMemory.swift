import CFVDShims
import Dispatch
import Foundation
import Synchronization

/// The POSIX shared-memory segment of a multi-process world, mapped by every rank.
///
/// Layout (offsets from the start; the file is sparse and starts zero-filled, which
/// is a valid initial state, so no rank has to initialise it before the others):
/// - header page: magic, world size, attach count, the failed rank (+1), the bump
///   pointer of the channel area, the pid of a process removing the object as stale;
/// - one 1 KiB control line per rank: pid, state (running, exited, failed) and the
///   failure message;
/// - the group registry: 1024 slots of (state, channel offset, key);
/// - the channel area (1 GiB): per group, its ``GroupRegion`` (wake words, one line per
///   member and two ``CallSlot``s per member);
/// - one tensor heap per rank (``SharedHeap``).
///
/// Invariant: the mapping is never unmapped while the process lives.
package final class SharedSegment: @unchecked Sendable {
    static let magic: UInt64 = 0x4656_4453_484D_0002  // "FVDSHM", version 2
    static let headerBytes = 4096
    static let controlBytes = 1024
    static let registrySlots = 1024
    static let registrySlotBytes = 512
    static let channelAreaBytes = 1 << 30

    enum RankState: UInt32 { case absent = 0, running = 1, exited = 2, failed = 3 }

    let name: String
    let worldSize: Int
    let rank: Int
    let base: UnsafeMutableRawPointer
    /// The segment's file, kept open for ``SharedHeap`` to allocate and release pages.
    let fd: Int32
    let byteCount: Int
    let controlOffset: Int, registryOffset: Int, channelOffset: Int, heapOffset: Int, heapBytes: Int

    /// Creates or attaches the segment `name` as `rank` of `worldSize`, mode 0600.
    ///
    /// The last rank to attach unlinks the name: from then on nothing is left in
    /// `/dev/shm` whatever happens to the processes (the launcher unlinks it too).
    init(name: String, worldSize: Int, rank: Int) throws {
        self.name = name
        self.worldSize = worldSize
        self.rank = rank
        controlOffset = Self.headerBytes
        registryOffset = Self.roundUp(controlOffset + worldSize * Self.controlBytes, 4096)
        channelOffset = registryOffset + Self.registrySlots * Self.registrySlotBytes
        heapOffset = Self.roundUp(channelOffset + Self.channelAreaBytes, 2 << 20)
        // Sparse: only touched pages use memory. At most 2 TiB of address space in all
        // (64 GiB per rank up to 32 ranks, 2 GiB per rank at 1024), which also fits the
        // smaller address space of a process under ThreadSanitizer.
        heapBytes = min(64 << 30, (2 << 40) / worldSize) & ~4095
        let total = heapOffset + worldSize * heapBytes
        byteCount = total

        let fd = try Self.openReclaimingStale(name: name, worldSize: worldSize)
        self.fd = fd
        var mapped: UnsafeMutableRawPointer?
        var attached = false
        defer {
            if !attached {
                if let mapped { munmap(mapped, total) }
                close(fd)
            }
        }
        _ = fchmod(fd, 0o600)
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FVDError.file(path: "/dev/shm\(name)", problem: "fstat: \(errnoText(errno))") }
        if Int(info.st_size) > byteCount {
            throw FVDError.invalidArgument(
                "WORLD_SIZE differs between ranks: \(worldSize) here, but shared-memory object /dev/shm\(name) is sized "
                    + "for a larger world; start every rank with the same WORLD_SIZE")
        }
        if Int(info.st_size) < byteCount {
            guard ftruncate(fd, off_t(byteCount)) == 0 else {
                throw FVDError.file(
                    path: "/dev/shm\(name)",
                    problem: "cannot size the segment to \(byteCount) bytes (it has \(info.st_size)): \(errnoText(errno))")
            }
        }
        guard let address = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED else {
            throw FVDError.file(path: "/dev/shm\(name)", problem: "mmap: \(errnoText(errno))")
        }
        mapped = address
        base = address
        // The control and registry pages are written without SharedHeap: allocate them now
        // so a full /dev/shm is an error here rather than SIGBUS later.
        let metadataBytes = channelOffset
        guard fvd_fallocate(fd, 0, Int64(metadataBytes)) == 0 else {
            throw FVDError.file(path: "/dev/shm\(name)", problem: "no room for the segment's \(metadataBytes) control bytes (is /dev/shm full?)")
        }

        // Claim the world: the first rank writes the magic and size, the others check them.
        if fvd_atomic_cas_u64(word(0), 0, Self.magic) != 0 {
            fvd_atomic_store_u64(word(8), UInt64(worldSize))
        } else {
            try Self.spin(until: { fvd_atomic_load_u64(word(8)) != 0 }, what: "the segment's first rank to write its size")
        }
        guard fvd_atomic_load_u64(word(0)) == Self.magic, fvd_atomic_load_u64(word(8)) == UInt64(worldSize) else {
            throw FVDError.invalidArgument(
                "shared-memory segment \(name) belongs to another world (size \(fvd_atomic_load_u64(word(8)))); "
                    + "remove /dev/shm\(name) or use a new job id")
        }
        guard fvd_atomic_cas_u64(controlWord(rank, 0), 0, UInt64(getpid())) != 0 else {
            let owner = pid(of: rank)
            if !processIsGone(owner) {
                throw FVDError.invalidArgument(
                    "shared-memory world \(name) is in use: its rank \(rank) is pid \(owner), still running (another job on "
                        + "the same MASTER_PORT, or two ranks with RANK=\(rank)); give each job its own MASTER_PORT or FVD_SHM_NAME")
            }
            throw FVDError.invalidArgument(
                "rank \(rank) of shared-memory world \(name) was taken by pid \(owner), which has ended while others of its job "
                    + "still run; remove /dev/shm\(name) once they are gone, or use another MASTER_PORT")
        }
        setState(.running, of: rank)
        if fvd_atomic_add_u64(word(16), 1) == UInt64(worldSize) { _ = fvd_shm_unlink(name) }
        attached = true
    }

    /// Opens (or creates) the object `name` for a world of `worldSize`, first removing an
    /// object left by an earlier job whose every process is gone (killed before the last
    /// rank attached, or failed cleanly): such an object would hand this job the dead job's
    /// ranks and errors.
    ///
    /// When several ranks find the same stale object, the one that claims it (a CAS on a
    /// header word) unlinks it; the others reopen the name until it is a new object.
    /// - Throws: ``FVDError/invalidArgument(_:)`` when a live job's object has another
    ///   world size (ranks that disagree on `WORLD_SIZE`, or two jobs on one port).
    private static func openReclaimingStale(name: String, worldSize: Int) throws -> Int32 {
        let deadline = DispatchTime.now().uptimeNanoseconds + 10_000_000_000
        while true {
            let fd = fvd_shm_create_or_open(name)
            guard fd >= 0 else { throw FVDError.file(path: "/dev/shm\(name)", problem: "shm_open: \(errnoText(-fd))") }
            let inspection: Inspection
            do { inspection = try inspect(fd: fd, name: name, worldSize: worldSize) } catch {
                close(fd)
                throw error
            }
            switch inspection {
            case .usable:
                return fd
            case .stale(claimed: true):
                _ = fvd_shm_unlink(name)
            case .stale(claimed: false):
                guard DispatchTime.now().uptimeNanoseconds < deadline else {
                    close(fd)
                    throw FVDError.invalidArgument(
                        "shared-memory object /dev/shm\(name) was left by a job that is gone, and another process "
                            + "claimed it for removal but did not remove it within 10 s; remove it by hand")
                }
                usleep(1000)
            }
            close(fd)
        }
    }

    private enum Inspection { case usable, stale(claimed: Bool) }

    /// Reads the header and control lines of an existing object: usable (new, or a live
    /// world of this size), or stale (claimed for removal by this process or another).
    private static func inspect(fd: Int32, name: String, worldSize: Int) throws -> Inspection {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FVDError.file(path: "/dev/shm\(name)", problem: "fstat: \(errnoText(errno))") }
        guard Int(info.st_size) >= headerBytes else { return .usable }
        guard let header = mmap(nil, headerBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), header != MAP_FAILED else {
            throw FVDError.file(path: "/dev/shm\(name)", problem: "mmap: \(errnoText(errno))")
        }
        defer { munmap(header, headerBytes) }
        func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> { (header + offset).assumingMemoryBound(to: UInt64.self) }
        guard fvd_atomic_load_u64(word(0)) == magic, case let size = Int(fvd_atomic_load_u64(word(8))), size > 0 else {
            return .usable  // new, or being set up right now by its first rank
        }
        // The pids of the ranks that attached, read through a mapping of their control lines.
        let linesBytes = min(size, 1 << 16) * controlBytes
        guard Int(info.st_size) >= headerBytes + linesBytes,
            let lines = mmap(nil, headerBytes + linesBytes, PROT_READ, MAP_SHARED, fd, 0), lines != MAP_FAILED
        else { return .usable }
        defer { munmap(lines, headerBytes + linesBytes) }
        let pids = (0..<min(size, 1 << 16)).map { r in
            Int32(truncatingIfNeeded: fvd_atomic_load_u64((lines + headerBytes + r * controlBytes).assumingMemoryBound(to: UInt64.self)))
        }.filter { $0 > 0 }
        let stale = !pids.isEmpty && pids.allSatisfy(processIsGone)
        if stale {
            let claimed = fvd_atomic_cas_u64(word(40), 0, UInt64(getpid())) != 0
            return .stale(claimed: claimed)
        }
        guard size == worldSize else {
            throw FVDError.invalidArgument(
                "WORLD_SIZE differs between ranks: \(worldSize) here, \(size) in shared-memory object /dev/shm\(name) "
                    + "(made by pid \(pids.first ?? 0)); start every rank with the same WORLD_SIZE, and give each job its own "
                    + "MASTER_PORT (or FVD_SHM_NAME)")
        }
        return .usable
    }

    /// Waits (yielding) until `condition` holds, at most 10 s: for a step another rank
    /// does in a few instructions, so only a rank that died in the middle makes it throw.
    static func spin(until condition: () -> Bool, what: String) throws {
        let deadline = DispatchTime.now().uptimeNanoseconds + 10_000_000_000
        while !condition() {
            guard DispatchTime.now().uptimeNanoseconds < deadline else {
                throw FVDError.invalidArgument("shared-memory segment: gave up after 10 s waiting for \(what); did a rank die?")
            }
            sched_yield()
        }
    }

    static func roundUp(_ n: Int, _ to: Int) -> Int { (n + to - 1) / to * to }

    /// How long joining a world waits for every rank to start, like torchrun's rendezvous
    /// `join_timeout`: `FVD_JOIN_TIMEOUT` (seconds) when set, else the larger of the
    /// collective timeout and 300 s, since process start-up (and a user's model loading
    /// before it) skews ranks far more than a collective does.
    static func joinTimeout(collectiveTimeout: Double) throws -> Double {
        // Positive or inf, as FVD_TIMEOUT: 0 would fail every join but a lucky one.
        try World.secondsFromEnvironment("FVD_JOIN_TIMEOUT") ?? max(collectiveTimeout, 300)
    }

    /// Waits until every rank of the world has attached, so that the collective timeout
    /// starts counting with every rank present (like torch.distributed's rendezvous).
    ///
    /// - Throws: ``FVDError/peerFailed(rank:message:)`` when a rank failed meanwhile;
    ///   ``FVDError/invalidArgument(_:)`` naming the ranks that never started after `seconds`.
    func waitForEveryRank(seconds: Double) throws {
        let (deadline, overflow) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(timeoutNanoseconds(seconds))
        var round = 0
        while fvd_atomic_load_u64(word(16)) < UInt64(worldSize) {
            if let failure = failure() { throw FVDError.peerFailed(rank: failure.rank, message: failure.message) }
            // A rank that ended before joining (the launcher marks it) or died after
            // attaching will never complete the count. /proc is read every 20 ms.
            round += 1
            if let gone = (0..<worldSize).first(where: { r in
                r != rank && (state(of: r) == .exited || (round % 20 == 0 && state(of: r) == .running && isDead(r)))
            }) {
                throw FVDError.peerExited(rank: gone, op: "the join", group: "world")
            }
            guard overflow || DispatchTime.now().uptimeNanoseconds < deadline else {
                let missing = (0..<worldSize).filter { pid(of: $0) == 0 }
                throw FVDError.invalidArgument(
                    "shared-memory world \(name): waited \(formatSeconds(seconds)) s for rank(s) \(missing.map(String.init).joined(separator: ", ")) to start; "
                        + "start every rank with the same WORLD_SIZE and FVD_SHM_NAME (fvd launch does)")
            }
            usleep(1000)
        }
    }

    /// Tells the ranks of the world in shared-memory object `name` that `rank` (process
    /// `pid`) has ended without joining, so that their ``waitForEveryRank(seconds:)`` throws
    /// ``FVDError/peerExited(rank:op:group:)`` at once instead of at the join timeout.
    ///
    /// For a launcher that sees a rank end: it creates the object if no rank has yet (it is
    /// sparse and zero-filled, which the ranks accept as new) and, if `rank` never attached,
    /// marks its control line exited. Nothing happens when `rank` attached: then the rank
    /// marked its own exit, or its peers see its process gone. Best effort: errors are ignored.
    package static func markEndedBeforeJoining(name: String, rank: Int, pid: Int32) {
        let fd = fvd_shm_create_or_open(name)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let length = headerBytes + (rank + 1) * controlBytes
        // posix_fallocate grows the object and never shrinks it (a rank may size it meanwhile).
        guard fvd_fallocate(fd, 0, Int64(length)) == 0,
            let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED
        else { return }
        defer { munmap(address, length) }
        let line = address + headerBytes + rank * controlBytes
        if fvd_atomic_cas_u64(line.assumingMemoryBound(to: UInt64.self), 0, UInt64(UInt32(bitPattern: pid))) != 0 {
            fvd_atomic_store_u32((line + 8).assumingMemoryBound(to: UInt32.self), RankState.exited.rawValue)
        }
    }

    func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> { (base + offset).assumingMemoryBound(to: UInt64.self) }
    /// `rank`'s control line: pid (u64) at 0, state (u32) at 8, message length (u32) at 16, message at 24.
    private func controlLine(_ rank: Int) -> UnsafeMutableRawPointer { base + controlOffset + rank * Self.controlBytes }
    func controlWord(_ rank: Int, _ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (controlLine(rank) + offset).assumingMemoryBound(to: UInt64.self)
    }
    private func stateWord(_ rank: Int) -> UnsafeMutablePointer<UInt32> {
        (controlLine(rank) + 8).assumingMemoryBound(to: UInt32.self)
    }

    func state(of rank: Int) -> RankState { RankState(rawValue: fvd_atomic_load_u32(stateWord(rank))) ?? .absent }
    func setState(_ state: RankState, of rank: Int) { fvd_atomic_store_u32(stateWord(rank), state.rawValue) }
    func pid(of rank: Int) -> Int32 { Int32(truncatingIfNeeded: fvd_atomic_load_u64(controlWord(rank, 0))) }

    /// Makes this process allocate its tensors in its heap of the segment, so that its
    /// peers read them in place.
    func activateHeap() {
        SharedHeap.activate(SharedHeap(base: heapBase(of: rank), capacity: heapBytes, fd: fd, fileOffset: heapBase(of: rank) - base))
    }

    /// The heap of `rank`.
    func heapBase(of rank: Int) -> UnsafeMutableRawPointer { base + heapOffset + rank * heapBytes }

    /// Records this rank's failure: its message, then the world's failed-rank word (first one wins).
    func recordFailure(_ message: String) {
        guard state(of: rank) != .failed else { return }  // the first failure's message stands
        let bytes = Array(message.utf8.prefix(Self.controlBytes - 24))
        let line = controlLine(rank)
        bytes.withUnsafeBytes { line.advanced(by: 24).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        (line + 16).assumingMemoryBound(to: UInt32.self).pointee = UInt32(bytes.count)
        // The failed-rank word before the state: a peer that sees this rank gone must find why.
        _ = fvd_atomic_cas_u64(word(24), 0, UInt64(rank + 1))
        setState(.failed, of: rank)
    }

    /// The first rank that recorded a failure, and its message.
    func failure() -> (rank: Int, message: String)? {
        let value = fvd_atomic_load_u64(word(24))
        guard value > 0 else { return nil }
        let r = Int(value - 1)
        let line = controlLine(r)
        let count = Int((line + 16).assumingMemoryBound(to: UInt32.self).pointee)
        let message = String(decoding: UnsafeRawBufferPointer(start: line + 24, count: min(count, Self.controlBytes - 24)), as: UTF8.self)
        return (r, message)
    }

    /// Whether `rank`'s process is gone without having said so (killed, crashed).
    func isDead(_ rank: Int) -> Bool {
        let pid = pid(of: rank)
        return pid > 0 && processIsGone(pid)
    }

    /// The channel region of group `key` with `members` members: found in the registry,
    /// or claimed and carved from the channel area by the first member to ask.
    func channelRegion(key: String, members: Int) throws -> UnsafeMutableRawPointer {
        var keyBytes = Array(key.utf8)
        if keyBytes.count > Self.registrySlotBytes - 24 {
            // Long member lists (large worlds): the key's start and a 64-bit FNV-1a hash of all of it.
            let hash = keyBytes.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
            keyBytes = Array(keyBytes.prefix(Self.registrySlotBytes - 48)) + Array("#\(String(hash, radix: 16))".utf8)
        }
        let regionBytes = Self.roundUp(GroupRegion.byteCount(members: members), 4096)
        for slot in 0..<Self.registrySlots {
            let s = base + registryOffset + slot * Self.registrySlotBytes
            let state = s.assumingMemoryBound(to: UInt64.self)
            if fvd_atomic_cas_u64(state, 0, 1) != 0 {
                let offset = Int(fvd_atomic_add_u64(word(32), UInt64(regionBytes))) - regionBytes
                guard offset + regionBytes <= Self.channelAreaBytes,
                    fvd_fallocate(fd, Int64(channelOffset + offset), Int64(regionBytes)) == 0
                else {
                    fvd_atomic_store_u64(state, 0)
                    throw FVDError.invalidArgument("shared-memory segment: no room for group \(key) (too many groups, or /dev/shm full)")
                }
                (s + 8).assumingMemoryBound(to: UInt64.self).pointee = UInt64(offset)
                (s + 16).assumingMemoryBound(to: UInt32.self).pointee = UInt32(keyBytes.count)
                (s + 20).assumingMemoryBound(to: UInt32.self).pointee = UInt32(members)
                keyBytes.withUnsafeBytes { (s + 24).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                fvd_atomic_store_u64(state, 2)
                return base + channelOffset + offset
            }
            try Self.spin(until: { fvd_atomic_load_u64(state) != 1 }, what: "another rank to register a group")
            if fvd_atomic_load_u64(state) == 0 { continue }  // its claim failed; the slot is free again
            let length = Int((s + 16).assumingMemoryBound(to: UInt32.self).pointee)
            if length == keyBytes.count, memcmp(s + 24, keyBytes, length) == 0 {
                return base + channelOffset + Int((s + 8).assumingMemoryBound(to: UInt64.self).pointee)
            }
        }
        throw FVDError.invalidArgument("shared-memory segment: more than \(Self.registrySlots) groups")
    }

    /// Every registered group's region (for waking all waiters).
    func registeredGroups() -> [GroupRegion] {
        (0..<Self.registrySlots).compactMap { slot in
            let s = base + registryOffset + slot * Self.registrySlotBytes
            guard fvd_atomic_load_u64(s.assumingMemoryBound(to: UInt64.self)) == 2 else { return nil }
            let members = Int((s + 20).assumingMemoryBound(to: UInt32.self).pointee)
            return GroupRegion(members: members, at: base + channelOffset + Int((s + 8).assumingMemoryBound(to: UInt64.self).pointee))
        }
    }
}

/// The state one rank of a multi-process world keeps about it: the segment, the
/// groups it has joined, its own failure, and how often it checks peers' liveness.
final class SharedMemoryWorldState: ChannelFactory, WaitingWorld, Sendable {
    let segment: SharedSegment
    let timeoutNanoseconds: UInt64
    let spin: Bool
    /// Set once `localFailure` holds an error, so the check at every call takes no lock.
    private let failedLocally = Atomic<Bool>(false)
    private let localFailure = Locked<FVDError?>(nil)
    private let groups = Locked<[String: SharedGroupState]>([:])
    private let lastLivenessCheck = Atomic<UInt64>(0)
    private let recorder: FlightRecorder
    /// The world rank of each of the segment's ranks, when they differ (the ranks of one
    /// host of an MPI job, ``MPIHost``); `nil` when a segment rank is the world rank.
    private let worldRanks: [Int]?
    private let segmentRanks: [Int: Int]

    /// - Parameters:
    ///   - worldRanks: the world rank of each segment rank, for a segment that holds only
    ///     some ranks of the world (one host's); default: the segment's ranks are the world's.
    ///   - recorder: the rank's flight recorder, when its world already has one.
    init(segment: SharedSegment, timeout: Double, worldRanks: [Int]? = nil, recorder: FlightRecorder? = nil) {
        self.segment = segment
        self.worldRanks = worldRanks
        segmentRanks = Dictionary(uniqueKeysWithValues: (worldRanks ?? []).enumerated().map { ($1, $0) })
        self.recorder =
            recorder
            ?? FlightRecorder(
                rank: worldRanks?[segment.rank] ?? segment.rank, directory: FlightRecorder.directoryFromEnvironment,
                printsOnBreak: FlightRecorder.printsOnBreakByDefault)
        timeoutNanoseconds = FastVideoDistributed.timeoutNanoseconds(timeout)
        // The online processors, not this process's affinity mask: ranks pinned one per
        // core each see a single CPU. Ranks forced onto one CPU stop spinning by themselves
        // (GroupRegion.wait's adaptive budget).
        spin = segment.worldSize <= ProcessInfo.processInfo.activeProcessorCount
    }

    func makeChannel(name: String, members: [Int], rank: Int) throws -> any PeerMemoryChannel {
        try groupChannel(
            name: name, members: members, cache: groups,
            make: { key in SharedGroupState(label: key, members: members, region: try segment.channelRegion(key: key, members: members.count)) },
            channel: { group in
                RegionChannel(
                    world: self, region: group.region, members: members, index: members.firstIndex(of: rank)!, label: group.label,
                    kept: group.kept, addressBase: UInt(bitPattern: self.segment.base), shared: true)
            })
    }

    func flightRecorder(rank: Int) -> FlightRecorder { recorder }

    /// The world rank of segment rank `r`.
    private func worldRank(_ r: Int) -> Int { worldRanks?[r] ?? r }

    /// This rank's world rank.
    var rank: Int { worldRank(segment.rank) }

    /// The error that ends this rank's use of the world: its own, or a peer's recorded failure.
    var abortError: FVDError? {
        if failedLocally.load(ordering: .acquiring), let local = localFailure.withLock({ $0 }) { return local }
        if let (r, message) = segment.failure(), r != segment.rank { return .peerFailed(rank: worldRank(r), message: message) }
        return nil
    }

    /// Ends this rank's use of the world with `error`; with `tellPeers`, records it in the
    /// segment so every rank's waits end with ``FVDError/peerFailed(rank:message:)``.
    func abort(_ error: FVDError, tellPeers: Bool) {
        localFailure.withLock { if $0 == nil { $0 = error } }
        failedLocally.store(true, ordering: .releasing)
        if tellPeers {
            if case let .peerFailed(failed, message) = error, failed == rank {
                segment.recordFailure(message)
            } else {
                segment.recordFailure(error.description)
            }
        }
        wakeAll()
    }

    /// Marks this rank as finished (normal exit) and wakes every waiter.
    func markExited() {
        if segment.state(of: segment.rank) == .running { segment.setState(.exited, of: segment.rank) }
        wakeAll()
    }

    /// Members (world ranks) that left: exited, failed or died. Process liveness is
    /// checked at most every 20 ms (it reads /proc).
    func goneRanks(among ranks: [Int]) -> [Int] {
        let now = DispatchTime.now().uptimeNanoseconds
        let checkLiveness = now &- lastLivenessCheck.load(ordering: .relaxed) > 20_000_000
        if checkLiveness { lastLivenessCheck.store(now, ordering: .relaxed) }
        return ranks.filter { worldRank in
            guard let r = worldRanks == nil ? worldRank : segmentRanks[worldRank] else { return false }
            switch segment.state(of: r) {
            case .exited, .failed: return true
            case .absent: return false
            case .running: return checkLiveness && r != segment.rank && segment.isDead(r)
            }
        }
    }

    func wakeAll() {
        for region in segment.registeredGroups() { region.wake(shared: true) }
    }
}

/// One group's region of the segment, as this rank sees it.
final class SharedGroupState: Sendable {
    let label: String
    let members: [Int]
    let region: GroupRegion
    /// This rank's buffers, kept alive until its peers have read them.
    let kept = KeptBuffers()

    init(label: String, members: [Int], region: UnsafeMutableRawPointer) {
        self.label = label
        self.members = members
        self.region = GroupRegion(members: members.count, at: region)
    }
}
