import Dispatch
import Foundation
import Synchronization

/// A collective started with ``GroupCoordinator/start(_:)`` (or a `start…` method) that
/// runs while this rank computes: torch.distributed's `async_op=True` work handle.
///
/// ``wait()`` blocks until the collective has finished and returns its result or throws
/// its error; calling it again returns the same. A handle that is never waited on still
/// runs, in order; wait for every handle before the rank's work returns.
public final class CollectiveHandle<Value: Sendable>: Sendable {
    private let outcome = Locked<Result<Value, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init() {}

    /// A handle whose work failed before it could start.
    static func failed(_ error: any Error) -> CollectiveHandle {
        let handle = CollectiveHandle()
        handle.finish(.failure(error))
        return handle
    }

    func finish(_ result: Result<Value, any Error>) {
        outcome.withLock { $0 = result }
        done.signal()
    }

    /// Whether the collective has finished (successfully or not); never blocks.
    public var isCompleted: Bool { outcome.withLock { $0 != nil } }

    /// Blocks until the collective has finished; returns its result or throws its error.
    public func wait() throws -> Value {
        if let result = outcome.withLock({ $0 }) { return try result.get() }
        done.wait()
        done.signal()  // later waits return at once
        return try outcome.withLock { $0! }.get()
    }
}

/// The thread on which a coordinator runs its started collectives, one after the other.
///
/// A collective called directly while started ones are still pending waits for them
/// first, so every rank issues its calls on a group in program order. The thread is the
/// lane's own (not a dispatch or cooperative pool's: a collective blocks); it starts with
/// the first job and ends when no job is left, so an idle coordinator holds no thread.
final class AsyncLane: Sendable {
    private struct State {
        /// Jobs in order.
        var jobs: [@Sendable () -> Void] = []
        /// The thread running them, while there are any.
        var thread: Thread?
    }

    private let state = Locked(State())
    private let pending = Atomic<Int>(0)
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
        let shared = state
        let start = shared.withLock { state -> Thread? in
            state.jobs.append(job)
            guard state.thread == nil else { return nil }
            let thread = Thread { AsyncLane.runJobs(shared) }
            state.thread = thread
            return thread
        }
        if let start {
            start.name = label
            start.start()
        }
        return handle
    }

    /// The thread's loop: the jobs in order until none is left.
    private static func runJobs(_ state: Locked<State>) {
        while let job = state.withLock({ state -> (@Sendable () -> Void)? in
            guard !state.jobs.isEmpty else {
                state.thread = nil
                return nil
            }
            return state.jobs.removeFirst()
        }) {
            job()
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

    /// Starts ``allReduce(_:op:)``.
    public func startAllReduce(_ input: Tensor, op: ReduceOp = .sum) -> CollectiveHandle<Tensor> {
        start { try $0.allReduce(input, op: op) }
    }

    /// Starts ``allGather(_:dim:)``.
    public func startAllGather(_ input: Tensor, dim: Int = -1) -> CollectiveHandle<Tensor> {
        start { try $0.allGather(input, dim: dim) }
    }

    /// Starts ``reduceScatter(_:dim:op:)``.
    public func startReduceScatter(_ input: Tensor, dim: Int = -1, op: ReduceOp = .sum) -> CollectiveHandle<Tensor> {
        start { try $0.reduceScatter(input, dim: dim, op: op) }
    }

    /// Starts ``allToAll4D(_:scatterDim:gatherDim:split:)``.
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
    /// result of ``allToAll4D(_:scatterDim:gatherDim:split:)``. Each byte is still copied
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
