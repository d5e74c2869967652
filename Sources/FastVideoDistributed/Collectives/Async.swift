import CFVDShims
import Dispatch
import Foundation
import Synchronization

/// A collective started with ``GroupCoordinator/start(_:)`` (or a `start…` method) that
/// runs while this rank computes: torch.distributed's `async_op=True` work handle.
///
/// ``wait()`` blocks until the collective has finished and returns its result or throws
/// its error; ``value`` is the same for Swift concurrency, suspending the task instead of
/// blocking its thread. Either may be asked again and returns the same. A handle that is
/// never waited on still runs, in order; wait for every handle before the rank's work returns.
public final class CollectiveHandle<Value: Sendable>: Sendable {
    private struct State {
        var outcome: Result<Value, any Error>?
        /// Tasks suspended in ``value`` until the outcome is known.
        var waiters: [CheckedContinuation<Value, any Error>] = []
    }

    private let state = Locked(State())
    private let done = DispatchSemaphore(value: 0)

    init() {}

    /// A handle whose work failed before it could start.
    static func failed(_ error: any Error) -> CollectiveHandle {
        let handle = CollectiveHandle()
        handle.finish(.failure(error))
        return handle
    }

    func finish(_ result: Result<Value, any Error>) {
        let waiters = state.withLock { state in
            state.outcome = result
            defer { state.waiters = [] }
            return state.waiters
        }
        done.signal()
        for waiter in waiters { waiter.resume(with: result) }
    }

    /// Whether the collective has finished (successfully or not); never blocks.
    public var isCompleted: Bool { state.withLock { $0.outcome != nil } }

    /// Blocks until the collective has finished; returns its result or throws its error.
    ///
    /// In Swift concurrency use ``value``: this call would hold a thread of the
    /// cooperative pool for the whole collective.
    public func wait() throws -> Value {
        if let result = state.withLock({ $0.outcome }) { return try result.get() }
        done.wait()
        done.signal()  // later waits return at once
        return try state.withLock { $0.outcome! }.get()
    }

    /// The collective's result once it has finished, or its error: ``wait()`` for Swift
    /// concurrency. The task suspends; no thread blocks.
    ///
    /// Cancelling the waiting task does not stop the collective (its peers take part in
    /// it): the result is still returned when it ends.
    public var value: Value {
        get async throws {
            try await withCheckedThrowingContinuation { waiter in
                let outcome = state.withLock { state -> Result<Value, any Error>? in
                    if state.outcome == nil { state.waiters.append(waiter) }
                    return state.outcome
                }
                if let outcome { waiter.resume(with: outcome) }
            }
        }
    }
}

/// The thread on which a coordinator runs its started collectives and its `async` calls,
/// one after the other.
///
/// A collective called directly while started ones are still pending waits for them
/// first, so every rank issues its calls on a group in program order. The thread is the
/// lane's own (not a dispatch or cooperative pool's: a collective blocks); it starts with
/// the first job and ends once no job has come for ``lingering``, so an idle coordinator
/// holds no thread and a rank calling `async` collectives in a loop starts it once.
final class AsyncLane: Sendable {
    private struct State {
        /// Jobs in order.
        var jobs: [@Sendable () -> Void] = []
        /// The thread running them, while there are any or it lingers.
        var thread: Thread?
        /// Whether the thread sleeps on ``arrived`` (and the next job must signal it).
        var sleeping = false
    }

    /// How long the thread waits for another job before it ends.
    static let lingering: DispatchTimeInterval = .milliseconds(100)
    /// How long the thread yields its CPU, looking for the next job, before it sleeps: a
    /// task that calls `async` collectives in a loop submits the next one within
    /// microseconds, sooner than a sleep and a wake would take.
    static let yieldingNanoseconds: UInt64 = 20_000

    private let state = Locked(State())
    private let pending = Atomic<Int>(0)
    /// Signalled when a job comes for a sleeping thread.
    private let arrived = DispatchSemaphore(value: 0)
    private let label: String

    init(label: String) { self.label = label }

    private var isCurrent: Bool { state.withLock { $0.thread } === Thread.current }

    /// Whether a direct call must wait for started work: some is pending and the caller
    /// is not the lane itself.
    var mustDrain: Bool { pending.load(ordering: .acquiring) > 0 && !isCurrent }

    func submit<Value: Sendable>(_ work: @escaping @Sendable () throws -> Value) -> CollectiveHandle<Value> {
        let handle = CollectiveHandle<Value>()
        pending.add(1, ordering: .acquiringAndReleasing)
        let job: @Sendable () -> Void = {
            let result = Result { try work() }
            self.pending.subtract(1, ordering: .acquiringAndReleasing)
            handle.finish(result)
        }
        let (start, wake) = state.withLock { state -> (Thread?, Bool) in
            state.jobs.append(job)
            if state.thread == nil {
                let thread = Thread { self.runJobs() }
                state.thread = thread
                return (thread, false)
            }
            defer { state.sleeping = false }
            return (nil, state.sleeping)
        }
        if let start {
            start.name = label
            start.start()
        } else if wake {
            arrived.signal()
        }
        return handle
    }

    /// The thread's loop: the jobs in order; once none is left, it yields its CPU for
    /// ``yieldingNanoseconds`` looking for the next, then sleeps up to ``lingering`` before
    /// it ends.
    private func runJobs() {
        while true {
            let job = state.withLock { state -> (@Sendable () -> Void)? in
                state.jobs.isEmpty ? nil : state.jobs.removeFirst()
            }
            if let job {
                job()
                continue
            }
            let yieldUntil = fvd_now_ns() &+ Self.yieldingNanoseconds
            while pending.load(ordering: .acquiring) == 0, fvd_now_ns() < yieldUntil { sched_yield() }
            let sleeps = state.withLock { state -> Bool in
                state.sleeping = state.jobs.isEmpty
                return state.sleeping
            }
            guard sleeps else { continue }
            if arrived.wait(timeout: .now() + Self.lingering) == .success { continue }
            let ends = state.withLock { state -> Bool in
                // A job that came just as the wait timed out has signalled (or will): take
                // that signal, then the job.
                guard state.sleeping else { return false }
                state.sleeping = false
                state.thread = nil
                return true
            }
            if ends { return }
            arrived.wait()
        }
    }

    /// Waits until every job submitted so far has run.
    func drain() {
        _ = try? submit { () }.wait()
    }
}

extension GroupCoordinator {
    /// Starts `operation` on this group and returns at once with its handle, so this
    /// rank can compute while it runs (torch.distributed's `async_op=True`).
    ///
    /// `operation` gets this coordinator and may call any collective on it, e.g.
    /// `group.start { try $0.allGather(x, dim: 1) }`. Started collectives run one after
    /// the other on a thread of this coordinator, in the order they were started, and a
    /// collective called directly while some are pending waits for them first, so every rank
    /// still makes its calls on the group in program order. Errors surface at
    /// ``CollectiveHandle/wait()``. Wait for every handle before the rank's work returns.
    public func start<Value: Sendable>(_ operation: @escaping @Sendable (GroupCoordinator) throws -> Value) -> CollectiveHandle<Value> {
        lane.submit { try operation(self) }
    }

    /// Starts ``allReduce(_:op:)-3jrs4``.
    public func startAllReduce(_ input: Tensor, op: ReduceOp = .sum) -> CollectiveHandle<Tensor> {
        start { try $0.allReduce(input, op: op) }
    }

    /// Starts ``allGather(_:dim:)-1nply``.
    public func startAllGather(_ input: Tensor, dim: Int = -1) -> CollectiveHandle<Tensor> {
        start { try $0.allGather(input, dim: dim) }
    }

    /// Starts ``reduceScatter(_:dim:op:)-2em2i``.
    public func startReduceScatter(_ input: Tensor, dim: Int = -1, op: ReduceOp = .sum) -> CollectiveHandle<Tensor> {
        start { try $0.reduceScatter(input, dim: dim, op: op) }
    }

    /// Starts ``allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd``.
    public func startAllToAll4D(_ input: Tensor, scatterDim: Int = 2, gatherDim: Int = 1, split: AllToAllSplit? = nil)
        -> CollectiveHandle<Tensor>
    {
        start { try $0.allToAll4D(input, scatterDim: scatterDim, gatherDim: gatherDim, split: split) }
    }

    /// Starts the `(2, 1)` all-to-all in `chunks` exchanges, one per group of this rank's
    /// output heads, so attention on one group can run while the next is exchanged.
    ///
    /// Chunk `k` holds, of the whole result `[B, S, h, D]` (`h` this rank's heads), the heads
    /// `k`-th of the balanced split of `h` into `chunks` (the first `h % chunks` one
    /// larger; empty chunks when `chunks > h`); concatenated along dim 2 they are the
    /// result of ``allToAll4D(_:scatterDim:gatherDim:split:)-7l3jd``. Each byte is still copied
    /// once. Every rank passes the same `chunks`.
    /// - Throws: at ``CollectiveHandle/wait()``: the all-to-all's errors, and
    ///   ``FVDError/invalidArgument(_:)`` for `chunks < 1`.
    public func startAllToAll4D(_ input: Tensor, split: AllToAllSplit? = nil, chunks: Int) -> [CollectiveHandle<Tensor>] {
        guard chunks >= 1 else {
            return [.failed(FVDError.invalidArgument("all_to_all_4D: chunks must be at least 1, got \(chunks)"))]
        }
        return (0..<chunks).map { k in start { try $0.allToAll4D(input, split: split, headChunk: (k, chunks)) } }
    }
}
