import Foundation
import VLMRuntime

/// Runs jobs one at a time, in arrival order, on one thread with a large stack (chat templates and the model
/// recurse deeply). At most `maxQueue` jobs wait behind the running one; `submit` refuses more.
final class GenerationWorker: @unchecked Sendable {
    let maxQueue: Int
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var busy = false
    private var stopping = false
    private var thread: Thread?

    init(maxQueue: Int) {
        self.maxQueue = max(0, maxQueue)
    }

    func start() {
        condition.lock(); defer { condition.unlock() }
        guard thread == nil else { return }
        let t = Thread { [unowned self] in self.loop() }
        t.stackSize = 16 << 20
        t.name = "vlm-generation"
        thread = t
        t.start()
    }

    /// Queues `job`; false when `maxQueue` jobs already wait.
    func submit(_ job: @escaping () -> Void) -> Bool {
        condition.lock(); defer { condition.unlock() }
        guard !stopping, jobs.count < maxQueue || (!busy && jobs.isEmpty) else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Jobs waiting (not counting the running one), and whether one runs.
    var state: (queued: Int, busy: Bool) {
        condition.lock(); defer { condition.unlock() }
        return (jobs.count, busy)
    }

    /// Ends the thread after the running job; waiting jobs still run.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty { condition.unlock(); return }
            let job = jobs.removeFirst()
            busy = true
            condition.unlock()
            job()
            condition.lock()
            busy = false
            condition.unlock()
        }
    }
}

/// One request's claim on the runner: lets a disconnecting client stop its own generation (and only its own).
final class GenerationTicket: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    private var running = false
    private weak var runner: AnyObject?
    private let stopRunner: () -> Void

    init(runner: ChatRunner) {
        self.runner = runner
        stopRunner = { [weak runner] in runner?.stop() }
    }

    var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return cancelled }

    /// Marks the job as running; false when it was cancelled while waiting.
    func begin() -> Bool {
        lock.lock(); defer { lock.unlock() }
        running = !cancelled
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
