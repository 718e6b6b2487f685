import Foundation
import VLMCore
import VLMModels
import VLMTokenizers

/// Runs a text-only Hugging Face model folder (llama, qwen2): a prefiller, a decoder step, a token generator and
/// a sampler around one KV cache. Successive `generate` calls continue the same cache until `reset()`.
public final class TextRunner: Runner {
    public let modelDirectory: URL
    public let pool: ThreadPool
    /// Load-time quantization of the weights (none by default).
    public let quantization: QuantizationOptions
    public private(set) var model: LanguageModel?
    public private(set) var tokenizer: Tokenizer?
    /// nil when the folder has no chat template.
    public private(set) var chatPrompt: ChatPromptBuilder?
    public private(set) var eosTokenIDs: Set<Int> = []
    /// Token ids held by the KV cache, in order.
    public internal(set) var cachedTokenIDs: [Int] = []
    internal var cache: KVCache?
    private var loadStartMs: Int64 = 0, loadEndMs: Int64 = 0
    private let stopFlag = StopFlag()

    public init(modelDirectory: URL, threads: Int = ThreadPool.defaultThreadCount(), quantization: QuantizationOptions = .none) {
        self.modelDirectory = modelDirectory
        self.quantization = quantization
        pool = ThreadPool(threadCount: threads)
    }

    /// A runner over an already-built model and tokenizer (tests, embedding apps); it is loaded at once.
    public init(model: LanguageModel, tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                eosTokenIDs: Set<Int>? = nil, threads: Int = 1) {
        modelDirectory = URL(fileURLWithPath: "/")
        quantization = .none
        pool = ThreadPool(threadCount: threads)
        self.model = model
        self.tokenizer = tokenizer
        self.chatPrompt = chatTemplate.map { ChatPromptBuilder(template: $0, tokenizer: tokenizer) }
        self.eosTokenIDs = eosTokenIDs ?? Set(model.eosTokenIDs)
        cache = model.makeCache(maxTokens: nil)
    }

    public var isLoaded: Bool { model != nil }

    public func load() throws {
        guard !isLoaded else { return }
        loadStartMs = wallClockMilliseconds()
        let tokenizer = try Tokenizer(directory: modelDirectory)
        let model = try ModelRegistry.loadLanguageModel(directory: modelDirectory, pool: pool, quantization: quantization)
        let defaults = try GenerationDefaults.load(directory: modelDirectory)
        eosTokenIDs = Set(defaults.eosTokenIDs.isEmpty ? model.eosTokenIDs : defaults.eosTokenIDs)
        if let template = try ChatTemplateLoader.load(directory: modelDirectory) {
            chatPrompt = ChatPromptBuilder(template: template, tokenizer: tokenizer)
        }
        self.tokenizer = tokenizer
        self.model = model
        cache = model.makeCache(maxTokens: nil)
        loadEndMs = wallClockMilliseconds()
    }

    /// The prompt text for `messages` under the model's chat template.
    public func renderChat(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> String {
        guard let chatPrompt else { throw RunnerError.noChatTemplate(modelDirectory.path) }
        return try chatPrompt.render(messages, addGenerationPrompt: addGenerationPrompt)
    }

    /// Token ids of `inputs`, in order. Text is tokenized without adding special tokens: chat templates
    /// write them into the text, as transformers' apply_chat_template(tokenize=True) does.
    public func tokenize(_ inputs: [InputPart]) throws -> [Int] {
        guard let tokenizer else { throw RunnerError.notLoaded }
        var ids: [Int] = []
        for part in inputs {
            switch part {
            case .text(let s): ids += tokenizer.encode(s, addSpecialTokens: false)
            case .tokens(let t): ids += t
            case .image: throw RunnerError.imagesNotSupported
            }
        }
        return ids
    }

    @discardableResult
    public func prefill(_ inputs: [InputPart]) throws -> Int {
        guard let model, let cache else { throw RunnerError.notLoaded }
        let ids = try tokenize(inputs)
        guard cache.count + ids.count <= cache.maxTokens else {
            throw RunnerError.promptTooLong(promptTokens: cache.count + ids.count, limit: cache.maxTokens)
        }
        _ = try TextPrefiller(model: model, chunkSize: GenerationConfig().prefillChunkSize).prefill(ids, cache: cache)
        cachedTokenIDs += ids
        return ids.count
    }

    public func generate(_ inputs: [InputPart], config: GenerationConfig,
                         onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult {
        guard let model, let cache, let tokenizer else { throw RunnerError.notLoaded }
        try config.validate()
        stopFlag.clear()
        var result = GenerationResult()
        result.stats.modelLoadStartMs = loadStartMs
        result.stats.modelLoadEndMs = loadEndMs
        result.stats.inferenceStartMs = wallClockMilliseconds()
        result.stats.cachedTokens = cache.count

        let ids = try tokenize(inputs)
        guard !ids.isEmpty || cache.count > 0 else { throw RunnerError.emptyPrompt }
        let limit = min(config.seqLen ?? model.maxContextLength, cache.maxTokens)
        guard cache.count + ids.count <= limit else {
            throw RunnerError.promptTooLong(promptTokens: cache.count + ids.count, limit: limit)
        }
        result.promptTokenIDs = ids
        result.stats.promptTokens = ids.count
        result.stats.prefilledTokens = ids.count
        if config.echo { onToken(GeneratedToken(id: -1, text: tokenizer.decode(ids, skipSpecialTokens: false), topLogprobs: [])) }

        let prefillStart = monotonicSeconds()
        guard let logits = try TextPrefiller(model: model, chunkSize: config.prefillChunkSize)
            .prefill(ids, cache: cache, shouldStop: { stopFlag.isRaised }) else {
            cachedTokenIDs = Array((cachedTokenIDs + ids).prefix(cache.count))
            result.stopReason = .cancelled
            result.stats.inferenceEndMs = wallClockMilliseconds()
            return result
        }
        cachedTokenIDs += ids
        result.stats.promptEvalEndMs = wallClockMilliseconds()
        result.stats.prefillMs = (monotonicSeconds() - prefillStart) * 1000

        // The last sampled token is never fed back, so the context allows one more token than free positions.
        var effective = config
        let room = limit - cache.count + 1
        effective.maxNewTokens = min(config.maxNewTokens, room)
        let generator = TokenGenerator(decoder: DecoderStep(model: model), tokenizer: tokenizer, eosTokenIDs: eosTokenIDs)
        let out = try generator.generate(from: logits, history: cachedTokenIDs, cache: cache, config: effective,
                                         stats: &result.stats, shouldStop: { stopFlag.isRaised }, onToken: onToken)
        // Every generated token but the last was fed through the model and now sits in the cache.
        cachedTokenIDs += out.tokens.prefix(cache.count - cachedTokenIDs.count)
        result.tokenIDs = out.tokens
        result.text = out.text
        result.topLogprobs = out.logprobs
        result.stopReason = out.reason == .maxTokens && effective.maxNewTokens < config.maxNewTokens ? .contextFull : out.reason
        result.stats.inferenceEndMs = wallClockMilliseconds()
        result.stats.peakRSSBytes = peakResidentBytes()
        result.stats.totalTokens = cache.count
        return result
    }

    public func stop() { stopFlag.raise() }

    public func reset() {
        cache?.reset()
        cachedTokenIDs = []
        stopFlag.clear()
    }
}

extension TextRunner {
    /// Prefills `tokens` after the cache's contents and returns the logits at the last position (for parity
    /// tests and scoring).
    public func lastLogits(afterPrefilling tokens: [Int]) throws -> [Float] {
        guard let model, let cache else { throw RunnerError.notLoaded }
        guard let logits = try TextPrefiller(model: model, chunkSize: GenerationConfig().prefillChunkSize).prefill(tokens, cache: cache) else {
            throw RunnerError.emptyPrompt
        }
        cachedTokenIDs += tokens
        return logits
    }
}

extension TextRunner {
    /// Generates a reply to `fullPrompt`, the text of the whole conversation so far. The tokens it shares with
    /// the KV cache are kept and only the rest is prefilled; if an earlier part was rewritten, the cache is
    /// rolled back to the longest common prefix. `promptTokenIDs` of the result is the whole prompt, and
    /// `stats.cachedTokens` how many of its tokens were reused.
    public func generate(continuing fullPrompt: String, config: GenerationConfig,
                         onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult {
        guard let tokenizer, let cache else { throw RunnerError.notLoaded }
        let ids = tokenizer.encode(fullPrompt, addSpecialTokens: false)
        guard !ids.isEmpty else { throw RunnerError.emptyPrompt }
        var common = 0
        while common < min(ids.count, cachedTokenIDs.count), ids[common] == cachedTokenIDs[common] { common += 1 }
        // At least one token must run through the model to produce the next logits.
        let keep = min(common, ids.count - 1)
        cache.truncate(to: keep)
        cachedTokenIDs.removeSubrange(keep...)
        var result = try generate([.tokens(Array(ids[keep...]))], config: config, onToken: onToken)
        result.promptTokenIDs = ids
        result.stats.promptTokens = ids.count
        return result
    }
}
