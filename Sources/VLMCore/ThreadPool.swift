import Dispatch
import Foundation

/// Splits numeric work across a fixed number of threads. Backed by libdispatch's persistent worker threads, so
/// no thread is created per call; `threadCount` bounds how many slices run at once.
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int

    /// One scratch area per slice, grown on demand; slice `s` only ever touches `scratch[s]`.
    private let scratch: [ScratchBuffer]

    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
        scratch = (0..<max(1, threadCount)).map { _ in ScratchBuffer() }
    }

    /// Scratch memory of at least `floats` floats for slice `slice` (valid until the next call for that slice).
    public func scratch(_ slice: Int, floats: Int) -> UnsafeMutablePointer<Float> {
        scratch[slice].reserve(floats)
    }

    /// Default: one thread per active core.
    public static func defaultThreadCount() -> Int {
        max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Calls `body(slice, range)` for `threadCount` contiguous slices of 0..<count, each range a multiple of
    /// `granularity` long except the last; slices run concurrently.
    public func parallelRanges(_ count: Int, granularity: Int = 1, _ body: (_ slice: Int, _ range: Range<Int>) -> Void) {
        guard count > 0 else { return }
        let g = max(1, granularity)
        let units = (count + g - 1) / g
        let slices = min(threadCount, units)
        if slices == 1 {
            body(0, 0..<count)
            return
        }
        DispatchQueue.concurrentPerform(iterations: slices) { s in
            let u0 = units * s / slices, u1 = units * (s + 1) / slices
            let lo = min(count, u0 * g), hi = min(count, u1 * g)
            if lo < hi { body(s, lo..<hi) }
        }
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
