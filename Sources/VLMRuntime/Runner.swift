import Foundation
import VLMCore
import VLMModels
import VLMTokenizers

/// The interface every runner implements, after ExecuTorch's IRunner: load once, then prefill and generate
/// against a KV cache that persists across calls until `reset()`.
public protocol Runner: AnyObject {
    var isLoaded: Bool { get }
    func load() throws
    /// Adds `inputs` to the KV cache without generating; returns how many tokens were prefilled.
    @discardableResult func prefill(_ inputs: [InputPart]) throws -> Int
    /// Prefills `inputs` after what the cache already holds, then generates, streaming each token.
    func generate(_ inputs: [InputPart], config: GenerationConfig, onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult
    /// Asks a running `generate` (from any thread) to end after the current token.
    func stop()
    /// Empties the KV cache.
    func reset()
}

extension Runner {
    /// `generate` as an async stream of tokens; cancelling the consuming task stops generation within a token.
    public func stream(_ inputs: [InputPart], config: GenerationConfig) -> AsyncThrowingStream<GenerationEvent, Error> {
        let box = UncheckedBox(self)
        return AsyncThrowingStream { continuation in
            let thread = Thread {
                do {
                    let result = try box.value.generate(inputs, config: config) { continuation.yield(.token($0)) }
                    continuation.yield(.finished(result))
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            thread.stackSize = 8 << 20
            continuation.onTermination = { termination in
                if case .cancelled = termination { box.value.stop() }
            }
            thread.start()
        }
    }
}

/// What `Runner.stream` yields.
public enum GenerationEvent: Sendable {
    case token(GeneratedToken)
    case finished(GenerationResult)
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A thread-safe flag for stop requests.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false
    func raise() { lock.lock(); raised = true; lock.unlock() }
    func clear() { lock.lock(); raised = false; lock.unlock() }
    var isRaised: Bool { lock.lock(); defer { lock.unlock() }; return raised }
}
