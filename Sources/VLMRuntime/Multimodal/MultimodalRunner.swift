import Foundation
import VLMCore
import VLMMedia
import VLMModels
import VLMTokenizers

/// Runs a vision-language model folder (idefics3, internvl): images are decoded, preprocessed by the model
/// family's processor, encoded by the vision tower and spliced into the prompt at their placeholder tokens;
/// generation then shares the text runner's token generator, sampler and stats.
public final class MultimodalRunner: Runner {
    public let modelDirectory: URL
    public let pool: ThreadPool
    public var imageOptions: ImageOptions
    public private(set) var model: VisionLanguageModel?
    public private(set) var tokenizer: Tokenizer?
    public private(set) var chatPrompt: ChatPromptBuilder?
    public private(set) var preprocessor: ImagePreprocessor?
    public private(set) var eosTokenIDs: Set<Int> = []
    /// Token ids held by the KV cache, in order (image placeholders included).
    public private(set) var cachedTokenIDs: [Int] = []
    private var cache: KVCache?
    private var loadStartMs: Int64 = 0, loadEndMs: Int64 = 0
    private let stopFlag = StopFlag()

    public init(modelDirectory: URL, threads: Int = ThreadPool.defaultThreadCount(), imageOptions: ImageOptions = .init()) {
        self.modelDirectory = modelDirectory
        self.imageOptions = imageOptions
        pool = ThreadPool(threadCount: threads)
    }

    public var isLoaded: Bool { model != nil }

    public func load() throws {
        guard !isLoaded else { return }
        loadStartMs = wallClockMilliseconds()
        let (type, _) = try ModelRegistry.modelType(directory: modelDirectory)
        let tokenizer = try Tokenizer(directory: modelDirectory)
        let model = try ModelRegistry.loadVisionLanguageModel(directory: modelDirectory, pool: pool)
        preprocessor = try ImagePreprocessors.make(modelType: type, directory: modelDirectory, options: imageOptions)
        let defaults = try GenerationDefaults.load(directory: modelDirectory)
        eosTokenIDs = Set(defaults.eosTokenIDs.isEmpty ? model.languageModel.eosTokenIDs : defaults.eosTokenIDs)
        if let template = try ChatTemplateLoader.load(directory: modelDirectory) {
            chatPrompt = ChatPromptBuilder(template: template, tokenizer: tokenizer)
        }
        self.tokenizer = tokenizer
        self.model = model
        cache = model.languageModel.makeCache(maxTokens: nil)
        loadEndMs = wallClockMilliseconds()
    }

    public func renderChat(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> String {
        guard let chatPrompt else { throw RunnerError.noChatTemplate(modelDirectory.path) }
        return try chatPrompt.render(messages, addGenerationPrompt: addGenerationPrompt)
    }

    // MARK: Building the prompt

    /// A prompt ready to run: token ids with each image's placeholder run, and the preprocessed images.
    public struct PreparedPrompt {
        public var ids: [Int]
        public var spans: [(start: Int, count: Int, image: PreprocessedImage)]
        public var preprocessMs: Double
    }

    /// Expands every placeholder in `text` with its image's tokens and tokenizes the result as one string, as
    /// transformers' processors do.
    public func prepare(text: String, images: [ImageInput]) throws -> PreparedPrompt {
        guard let tokenizer, let model, let preprocessor else { throw RunnerError.notLoaded }
        let pieces = text.components(separatedBy: preprocessor.placeholder)
        guard pieces.count - 1 == images.count else {
            throw RunnerError.imageCountMismatch(markers: pieces.count - 1, images: images.count)
        }
        let t0 = monotonicSeconds()
        let processed = try images.map { try preprocessor.preprocess($0.decode(options: imageOptions.decoding)) }
        let preprocessMs = (monotonicSeconds() - t0) * 1000
        var expanded = pieces[0]
        for (i, image) in processed.enumerated() { expanded += image.promptText + pieces[i + 1] }
        let ids = tokenizer.encode(expanded, addSpecialTokens: false)

        // Each image owns the next tiles × tokensPerTile image tokens, in order.
        var spans: [(start: Int, count: Int, image: PreprocessedImage)] = []
        var position = 0
        let imageToken = model.imageTokenID
        for image in processed {
            while position < ids.count, ids[position] != imageToken { position += 1 }
            let count = image.tiles.count * model.tokensPerTile
            let end = position + count
            guard end <= ids.count, ids[position..<end].allSatisfy({ $0 == imageToken }) else {
                throw VisionInputError.featureCountMismatch(imageTokens: ids.filter { $0 == imageToken }.count,
                                                            features: processed.reduce(0) { $0 + $1.tiles.count * model.tokensPerTile })
            }
            spans.append((position, count, image))
            position = end
        }
        let stray = ids[position...].filter { $0 == imageToken }.count
        guard stray == 0 else {
            throw VisionInputError.featureCountMismatch(imageTokens: ids.filter { $0 == imageToken }.count,
                                                        features: spans.reduce(0) { $0 + $1.count })
        }
        return PreparedPrompt(ids: ids, spans: spans, preprocessMs: preprocessMs)
    }

    // MARK: Runner

    @discardableResult
    public func prefill(_ inputs: [InputPart]) throws -> Int {
        var config = GenerationConfig()
        config.maxNewTokens = 0
        return try generate(inputs, config: config) { _ in }.stats.prefilledTokens
    }

    public func generate(_ inputs: [InputPart], config: GenerationConfig,
                         onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult {
        guard let preprocessor, let cache else { throw RunnerError.notLoaded }
        // Text and images become one string with placeholders (tokenized at once); token parts are appended as is.
        var text = "", images: [ImageInput] = [], ids: [Int] = [], spans: [(start: Int, count: Int, image: PreprocessedImage)] = []
        var preprocessMs = 0.0
        func flush() throws {
            guard !text.isEmpty || !images.isEmpty else { return }
            let p = try prepare(text: text, images: images)
            spans += p.spans.map { ($0.start + ids.count, $0.count, $0.image) }
            ids += p.ids
            preprocessMs += p.preprocessMs
            text = ""; images = []
        }
        for part in inputs {
            switch part {
            case .text(let s): text += s
            case .image(let image): text += preprocessor.placeholder; images.append(image)
            case .tokens(let t): try flush(); ids += t
            }
        }
        try flush()
        let start = cache.count
        let prepared = PreparedPrompt(ids: cachedTokenIDs + ids, spans: spans.map { ($0.start + start, $0.count, $0.image) },
                                      preprocessMs: preprocessMs)
        return try run(prepared, keep: start, config: config, onToken: onToken)
    }

    /// Generates a reply to `fullPrompt`, the whole conversation so far with one placeholder per image in
    /// `images`. Tokens shared with the KV cache are kept (images inside them are not encoded again) and only
    /// the rest is prefilled; a rewritten earlier part rolls the cache back to the longest common prefix.
    public func generate(continuing fullPrompt: String, images: [ImageInput], config: GenerationConfig,
                         onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult {
        let prepared = try prepare(text: fullPrompt, images: images)
        guard !prepared.ids.isEmpty else { throw RunnerError.emptyPrompt }
        var keep = 0
        while keep < min(prepared.ids.count, cachedTokenIDs.count), prepared.ids[keep] == cachedTokenIDs[keep] { keep += 1 }
        keep = min(keep, prepared.ids.count - 1)
        // Never keep half an image: its remaining rows would need the encoder anyway.
        for span in prepared.spans where span.start < keep && keep < span.start + span.count { keep = span.start }
        return try run(prepared, keep: keep, config: config, onToken: onToken)
    }

    /// Rolls the cache back to `keep` tokens of `prepared.ids`, encodes the images after that point, prefills
    /// the rest and generates.
    private func run(_ prepared: PreparedPrompt, keep: Int, config: GenerationConfig,
                     onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult {
        guard let model, let cache, let tokenizer else { throw RunnerError.notLoaded }
        try config.validate()
        stopFlag.clear()
        var result = GenerationResult()
        result.stats.modelLoadStartMs = loadStartMs
        result.stats.modelLoadEndMs = loadEndMs
        result.stats.inferenceStartMs = wallClockMilliseconds()
        result.stats.imagePreprocessMs = prepared.preprocessMs
        let ids = prepared.ids
        let limit = min(config.seqLen ?? model.languageModel.maxContextLength, cache.maxTokens)
        guard ids.count <= limit else { throw RunnerError.promptTooLong(promptTokens: ids.count, limit: limit) }
        cache.truncate(to: keep)
        cachedTokenIDs = Array(ids.prefix(keep))
        result.stats.cachedTokens = keep
        result.promptTokenIDs = ids
        result.stats.promptTokens = ids.count
        result.stats.prefilledTokens = ids.count - keep

        // Encode the images that are not in the cache.
        let t0 = monotonicSeconds()
        var spans: [MultimodalPrefiller.ImageSpan] = []
        var tilesEncoded = 0
        for span in prepared.spans {
            guard span.start + span.count > keep else {
                spans.append(.init(start: span.start, count: span.count, features: nil))
                continue
            }
            let tiles = span.image.tiles
            let features = try tiles.values.withUnsafeBufferPointer {
                try model.encodeImage(tiles: $0.baseAddress!, count: tiles.count, height: tiles.height, width: tiles.width)
            }
            tilesEncoded += tiles.count
            spans.append(.init(start: span.start, count: span.count, features: features))
        }
        result.stats.visionEncodeMs = (monotonicSeconds() - t0) * 1000
        result.stats.imageTilesEncoded = tilesEncoded

        guard let logits = try MultimodalPrefiller(model: model, chunkSize: config.prefillChunkSize)
            .prefill(ids, from: keep, spans: spans, cache: cache, shouldStop: { stopFlag.isRaised }) else {
            cachedTokenIDs = Array(ids.prefix(cache.count))
            result.stopReason = .cancelled
            result.stats.inferenceEndMs = wallClockMilliseconds()
            return result
        }
        cachedTokenIDs = ids
        result.stats.promptEvalEndMs = wallClockMilliseconds()

        var effective = config
        effective.maxNewTokens = min(config.maxNewTokens, limit - cache.count + 1)
        let generator = TokenGenerator(decoder: DecoderStep(model: model.languageModel), tokenizer: tokenizer, eosTokenIDs: eosTokenIDs)
        let out = try generator.generate(from: logits, history: cachedTokenIDs, cache: cache, config: effective,
                                         stats: &result.stats, shouldStop: { stopFlag.isRaised }, onToken: onToken)
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
