import Foundation
import VLMRuntime

/// Runs jobs in arrival order on `executors` threads with large stacks (chat templates and the model recurse
/// deeply); a job gets the index of the executor that runs it (each executor owns one runner). At most
/// `maxQueue` jobs wait for a free executor; `submit` refuses more.
final class GenerationWorker: @unchecked Sendable {
    let maxQueue: Int
    let executors: Int
    private let condition = NSCondition()
    private var jobs: [(Int) -> Void] = []
    private var running = 0
    private var stopping = false
    private var threads: [Thread] = []
    private var exited = 0

    init(maxQueue: Int, executors: Int = 1) {
        self.maxQueue = max(0, maxQueue)
        self.executors = max(1, executors)
    }

    func start() {
        condition.lock(); defer { condition.unlock() }
        guard threads.isEmpty else { return }
        for i in 0..<executors {
            let t = Thread { [unowned self] in self.loop(executor: i) }
            t.stackSize = 16 << 20
            t.name = "vlm-generation-\(i)"
            threads.append(t)
            t.start()
        }
    }

    /// Queues `job`; false when `maxQueue` jobs already wait (a job that can start at once always fits).
    func submit(_ job: @escaping (Int) -> Void) -> Bool {
        condition.lock(); defer { condition.unlock() }
        let idle = executors - running - jobs.count
        guard !stopping, jobs.count < maxQueue || idle > 0 else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Jobs waiting (not counting running ones), and how many run.
    var state: (queued: Int, running: Int) {
        condition.lock(); defer { condition.unlock() }
        return (jobs.count, running)
    }

    /// Ends the threads once the queue is empty: waiting jobs still run. With `wait`, returns when they are done.
    func shutdown(wait: Bool = false) {
        condition.lock()
        stopping = true
        condition.broadcast()
        while wait && exited < threads.count { condition.wait() }
        condition.unlock()
    }

    private func loop(executor: Int) {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                exited += 1
                condition.broadcast()
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            running += 1
            condition.unlock()
            job(executor)
            condition.lock()
            running -= 1
            condition.unlock()
        }
    }
}

/// One request's claim on the runner: lets a disconnecting client stop its own generation (and only its own).
final class GenerationTicket: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    private var running = false
    private var stopRunner: () -> Void = {}

    init() {}

    var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return cancelled }

    /// Marks the job as running on `runner`; false when it was cancelled while waiting.
    func begin(on runner: ChatRunner) -> Bool {
        lock.lock(); defer { lock.unlock() }
        running = !cancelled
        stopRunner = { [weak runner] in runner?.stop() }
        return running
    }

    func end() { lock.lock(); running = false; lock.unlock() }

    func cancel() {
        lock.lock()
        let wasRunning = running
        cancelled = true
        lock.unlock()
        if wasRunning { stopRunner() }
    }
}
