import Foundation
import VLMCore
import VLMModels
import VLMTokenizers

/// One generated token as it is streamed: its id, the text it completes (may be empty while a multi-byte
/// character is still incomplete), and its top log-probabilities when requested.
public struct GeneratedToken: Sendable {
    public let id: Int
    public let text: String
    public let topLogprobs: [TokenLogprob]
}

public struct TokenLogprob: Sendable, Equatable {
    public let id: Int
    public let logprob: Float
}

/// Everything one generate call produced.
public struct GenerationResult: Sendable {
    public var promptTokenIDs: [Int] = []
    /// Generated ids, without the end-of-sequence token that stopped generation.
    public var tokenIDs: [Int] = []
    public var text = ""
    public var topLogprobs: [[TokenLogprob]] = []
    public var stopReason: StopReason = .maxTokens
    public var stats = Stats()
}

/// The decode loop: sample, stream, check stop conditions, step. Separate from the model and the runner so
/// text and multimodal runners share it.
public struct TokenGenerator {
    public let decoder: DecoderStep
    public let tokenizer: Tokenizer
    public let eosTokenIDs: Set<Int>

    public init(decoder: DecoderStep, tokenizer: Tokenizer, eosTokenIDs: Set<Int>) {
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.eosTokenIDs = eosTokenIDs
    }

    /// Generates from `logits` (the model's output after the prompt). `history` holds the prompt ids.
    public func generate(from logits: [Float], history: [Int], cache: KVCache, config: GenerationConfig,
                         stats: inout Stats, shouldStop: () -> Bool,
                         onToken: (GeneratedToken) -> Void) throws -> (tokens: [Int], text: String, logprobs: [[TokenLogprob]], reason: StopReason) {
        var sampler = Sampler(config: config)
        var detokenizer = StreamingDetokenizer(tokenizer: tokenizer, skipSpecialTokens: true)
        var logits = logits
        var history = history
        var tokens: [Int] = []
        var text = ""
        var allLogprobs: [[TokenLogprob]] = []
        let maxStop = config.stopStrings.map(\.count).max() ?? 0
        var emittedCount = 0  // characters of `text` already streamed (held back while a stop string may be forming)
        var firstTokenAt: Double?
        defer { if let firstTokenAt { stats.decodeMs = (monotonicSeconds() - firstTokenAt) * 1000 } }

        func emit(_ id: Int, final: Bool, logprobs: [TokenLogprob]) {
            let safe = final ? text.count : max(emittedCount, text.count - max(0, maxStop - 1))
            let piece = String(text.dropFirst(emittedCount).prefix(safe - emittedCount))
            emittedCount = safe
            onToken(GeneratedToken(id: id, text: piece, topLogprobs: logprobs))
        }

        while true {
            if shouldStop() { return (tokens, text, allLogprobs, .cancelled) }
            if tokens.count >= config.maxNewTokens { return (tokens, text, allLogprobs, .maxTokens) }
            let t0 = monotonicSeconds()
            let id = sampler.sample(logits, history: history)
            stats.aggregateSamplingTimeMs += Int64((monotonicSeconds() - t0) * 1000)
            if tokens.isEmpty {
                stats.firstTokenMs = wallClockMilliseconds()
                firstTokenAt = monotonicSeconds()
            }
            let logprobs = config.topLogprobs > 0
                ? Sampler.topLogprobs(logits, count: config.topLogprobs).map { TokenLogprob(id: $0.id, logprob: $0.logprob) }
                : []
            if eosTokenIDs.contains(id) && !config.ignoreEOS {
                text += detokenizer.flush()
                emit(id, final: true, logprobs: [])
                return (tokens, text, allLogprobs, .endOfSequence)
            }
            tokens.append(id)
            history.append(id)
            allLogprobs.append(logprobs)
            stats.generatedTokens = tokens.count
            text += detokenizer.append(id)
            if let range = config.stopStrings.compactMap({ text.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
                text = String(text[..<range.lowerBound])
                emittedCount = min(emittedCount, text.count)
                emit(id, final: true, logprobs: logprobs)
                return (tokens, text, allLogprobs, .stopString)
            }
            let done = tokens.count >= config.maxNewTokens
            if done { text += detokenizer.flush() }
            emit(id, final: done, logprobs: logprobs)
            if done { return (tokens, text, allLogprobs, .maxTokens) }
            if cache.count >= cache.maxTokens { return (tokens, text, allLogprobs, .contextFull) }
            logits = try decoder.step(id, cache: cache)
        }
    }
}
