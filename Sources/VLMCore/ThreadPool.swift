import CKernels
import Dispatch
import Foundation

/// Splits numeric work across a fixed number of threads. Backed by CKernels' persistent pool (`vk_pool`):
/// `threadCount - 1` worker threads that spin briefly between jobs and then sleep, the calling thread taking the
/// first slice. Back-to-back small jobs (a decode step makes hundreds) cost well under a microsecond to hand out,
/// where waking libdispatch's workers for each cost several.
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int

    /// One scratch area per slice, grown on demand; slice `s` only ever touches `scratch[s]`.
    private let scratch: [ScratchBuffer]
    /// nil when threadCount is 1 (or the threads could not be started: then libdispatch runs the slices).
    private let workers: OpaquePointer?

    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
        scratch = (0..<max(1, threadCount)).map { _ in ScratchBuffer() }
        workers = self.threadCount > 1 ? vk_pool_create(self.threadCount) : nil
    }

    deinit {
        if let workers { vk_pool_destroy(workers) }
    }

    /// Scratch memory of at least `floats` floats for slice `slice` (valid until the next call for that slice).
    public func scratch(_ slice: Int, floats: Int) -> UnsafeMutablePointer<Float> {
        scratch[slice].reserve(floats)
    }

    /// Default: one thread per active core.
    public static func defaultThreadCount() -> Int {
        max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Calls `body(thread, range)` for `threadCount` contiguous ranges covering 0..<count (fewer when count is small),
    /// each a multiple of `granularity` long except the last, fixed by the arguments alone, so results never depend on
    /// timing. The pool's threads claim them as they come free (a late worker's range is taken by the caller).
    /// `thread` (< threadCount) names the thread running the range, for per-thread scratch (`scratch(_:floats:)`).
    /// A call made from inside a slice (or while another thread is using the pool) runs its ranges one after another
    /// on the calling thread.
    public func parallelRanges(_ count: Int, granularity: Int = 1, _ body: (_ thread: Int, _ range: Range<Int>) -> Void) {
        guard count > 0 else { return }
        let g = max(1, granularity)
        let units = (count + g - 1) / g
        let slices = min(threadCount, units)
        if slices == 1 || threadCount == 1 {
            body(0, 0..<count)
            return
        }
        withoutActuallyEscaping(body) { body in
            var job = SliceJob(count: count, granularity: g, slices: slices, body: body)
            if let workers {
                withUnsafeMutablePointer(to: &job) { p in
                    vk_pool_run(workers, slices, { context, slice, thread in
                        context!.assumingMemoryBound(to: SliceJob.self).pointee.run(slice, thread: thread)
                    }, p)
                }
            } else {
                let j = job
                DispatchQueue.concurrentPerform(iterations: slices) { j.run($0, thread: $0) }
            }
        }
    }
}

extension ThreadPool {
    /// body(i) for every i in 0..<count, the indices split over the threads as parallelRanges splits them (one
    /// index runs on the caller): for per-row work such as norms, activations and residual adds.
    public func forEachIndex(_ count: Int, _ body: (Int) -> Void) {
        parallelRanges(count) { _, range in for i in range { body(i) } }
    }
}

extension ThreadPool {
    /// Slice `slice`'s part of 0..<count when it is cut into `slices` contiguous parts of whole `granularity` units
    /// (the last unit may be short): the split parallelRanges uses, for callers that split several ranges alike.
    public static func share(_ slice: Int, of slices: Int, count: Int, granularity: Int) -> Range<Int> {
        let units = (count + granularity - 1) / granularity
        let lo = min(count, units * slice / slices * granularity)
        let hi = min(count, units * (slice + 1) / slices * granularity)
        return lo..<max(lo, hi)
    }
}

/// One parallelRanges call as the pool's C trampoline sees it.
private struct SliceJob {
    let count: Int, granularity: Int, slices: Int
    let body: (_ slice: Int, _ range: Range<Int>) -> Void

    func run(_ s: Int, thread: Int) {
        let range = ThreadPool.share(s, of: slices, count: count, granularity: granularity)
        if !range.isEmpty { body(thread, range) }
    }
}

final class ScratchBuffer: @unchecked Sendable {
    private var pointer: UnsafeMutablePointer<Float>?
    private var capacity = 0

    func reserve(_ floats: Int) -> UnsafeMutablePointer<Float> {
        if let pointer, capacity >= floats { return pointer }
        pointer?.deallocate()
        capacity = max(floats, 16)
        let p = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
        pointer = p
        return p
    }

    deinit { pointer?.deallocate() }
}
