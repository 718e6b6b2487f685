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
    /// Load-time quantization of the weights (none by default).
    public let quantization: QuantizationOptions
    public private(set) var model: VisionLanguageModel?
    public private(set) var tokenizer: Tokenizer?
    public private(set) var chatPrompt: ChatPromptBuilder?
    public private(set) var preprocessor: ImagePreprocessor?
    public private(set) var eosTokenIDs: Set<Int> = []
    /// Token ids held by the KV cache, in order (image placeholders included).
    public internal(set) var cachedTokenIDs: [Int] = []
    /// Which picture fills each image's positions in the KV cache (placeholder ids alone cannot tell two
    /// images with the same tiling apart).
    public internal(set) var cachedImages: [CachedImage] = []
    /// Preprocessed images of recent prompts by content hash, so later turns do not decode them again.
    var preprocessMemo: [UInt64: PreprocessedImage] = [:]
    var preprocessMemoOptions: ImageOptions?
    internal var cache: KVCache?
    private var loadStartMs: Int64 = 0, loadEndMs: Int64 = 0
    private let stopFlag = StopFlag()

    public init(modelDirectory: URL, threads: Int = ThreadPool.defaultThreadCount(), imageOptions: ImageOptions = .init(),
                quantization: QuantizationOptions = .none) {
        self.modelDirectory = modelDirectory
        self.imageOptions = imageOptions
        self.quantization = quantization
        pool = ThreadPool(threadCount: threads)
    }

    public var isLoaded: Bool { model != nil }

    public func load() throws {
        guard !isLoaded else { return }
        loadStartMs = wallClockMilliseconds()
        let (type, _) = try ModelRegistry.modelType(directory: modelDirectory)
        let tokenizer = try Tokenizer(directory: modelDirectory)
        let model = try ModelRegistry.loadVisionLanguageModel(directory: modelDirectory, pool: pool, quantization: quantization)
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

    /// A prompt ready to run: token ids, the preprocessed images, and where each image's embeddings go.
    public struct PreparedPrompt {
        /// One contiguous run of image tokens: image `image`'s embedding rows featureRow ..< featureRow + count.
        /// (Idefics3 separates an image's tiles with row/column tokens, so one image can own several runs.)
        public struct Run { public var start: Int; public var count: Int; public var image: Int; public var featureRow: Int }
        public var ids: [Int]
        public var images: [PreprocessedImage]
        public var runs: [Run]
        public var preprocessMs: Double
        /// Content hash of each image (ImageInput.contentHash).
        public var imageHashes: [UInt64] = []

        /// Positions [first run start, last run end) of image `i`.
        func extent(of i: Int) -> Range<Int>? {
            let mine = runs.filter { $0.image == i }
            guard let first = mine.first, let last = mine.last else { return nil }
            return first.start..<(last.start + last.count)
        }
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
        let hashed = try images.map { try preprocessedImage($0, preprocessor: preprocessor) }
        let processed = hashed.map(\.image)
        let preprocessMs = (monotonicSeconds() - t0) * 1000
        var expanded = pieces[0]
        for (i, image) in processed.enumerated() { expanded += image.promptText + pieces[i + 1] }
        let ids = tokenizer.encode(expanded, addSpecialTokens: false)

        // Image tokens, in order, belong to image 0's tiles, then image 1's, ...: split them into runs and give
        // each run the next rows of its image's embeddings.
        let imageToken = model.imageTokenID
        let rowsPerImage = processed.map { $0.tiles.count * model.tokensPerTile }
        let totalTokens = ids.reduce(0) { $0 + ($1 == imageToken ? 1 : 0) }
        guard totalTokens == rowsPerImage.reduce(0, +) else {
            throw VisionInputError.featureCountMismatch(imageTokens: totalTokens, features: rowsPerImage.reduce(0, +))
        }
        var runs: [PreparedPrompt.Run] = []
        var image = 0, row = 0, i = 0
        while i < ids.count {
            guard ids[i] == imageToken else { i += 1; continue }
            while image < rowsPerImage.count, row == rowsPerImage[image] { image += 1; row = 0 }
            var j = i
            while j < ids.count, ids[j] == imageToken, row + (j - i) < rowsPerImage[image] { j += 1 }
            runs.append(.init(start: i, count: j - i, image: image, featureRow: row))
            row += j - i
            i = j
        }
        return PreparedPrompt(ids: ids, images: processed, runs: runs, preprocessMs: preprocessMs, imageHashes: hashed.map(\.hash))
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
        var text = "", images: [ImageInput] = []
        var combined = PreparedPrompt(ids: cachedTokenIDs, images: [], runs: [], preprocessMs: 0)
        func flush() throws {
            guard !text.isEmpty || !images.isEmpty else { return }
            let p = try prepare(text: text, images: images)
            combined.runs += p.runs.map { .init(start: $0.start + combined.ids.count, count: $0.count,
                                                image: $0.image + combined.images.count, featureRow: $0.featureRow) }
            combined.ids += p.ids
            combined.images += p.images
            combined.imageHashes += p.imageHashes
            combined.preprocessMs += p.preprocessMs
            text = ""; images = []
        }
        for part in inputs {
            switch part {
            case .text(let s): text += s
            case .image(let image): text += preprocessor.placeholder; images.append(image)
            case .tokens(let t): try flush(); combined.ids += t
            }
        }
        try flush()
        return try run(combined, keep: cache.count, config: config, onToken: onToken)
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
        // Never keep part of an image: its remaining rows would need the encoder anyway. Keep a whole image only
        // if the cache holds the same picture there.
        for i in prepared.images.indices {
            guard let extent = prepared.extent(of: i), extent.lowerBound < keep else { continue }
            if keep < extent.upperBound || !cachedImages.contains(CachedImage(range: extent, contentHash: prepared.imageHashes[i])) {
                keep = extent.lowerBound
            }
        }
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
        cachedImages.removeAll { $0.range.upperBound > keep }
        result.stats.cachedTokens = keep
        result.promptTokenIDs = ids
        result.stats.promptTokens = ids.count
        result.stats.prefilledTokens = ids.count - keep

        // Encode the images that are not (entirely) in the cache.
        let t0 = monotonicSeconds()
        let hidden = model.languageModel.hiddenSize
        var features: [Int: [Float]] = [:]
        var tilesEncoded = 0
        for (i, image) in prepared.images.enumerated() {
            guard let extent = prepared.extent(of: i), extent.upperBound > keep else { continue }
            let tiles = image.tiles
            features[i] = try tiles.values.withUnsafeBufferPointer {
                try model.encodeImage(tiles: $0.baseAddress!, count: tiles.count, height: tiles.height, width: tiles.width)
            }
            tilesEncoded += tiles.count
        }
        let spans = prepared.runs.map { run -> MultimodalPrefiller.ImageSpan in
            let rows = features[run.image].map { Array($0[(run.featureRow * hidden)..<((run.featureRow + run.count) * hidden)]) }
            return MultimodalPrefiller.ImageSpan(start: run.start, count: run.count, features: rows)
        }
        result.stats.visionEncodeMs = (monotonicSeconds() - t0) * 1000
        result.stats.imageTilesEncoded = tilesEncoded

        let prefillStart = monotonicSeconds()
        let logitsOrStopped = try MultimodalPrefiller(model: model, chunkSize: config.prefillChunkSize)
            .prefill(ids, from: keep, spans: spans, cache: cache, shouldStop: { stopFlag.isRaised })
        updateCachedImages(prepared, keep: keep)
        guard let logits = logitsOrStopped else {
            cachedTokenIDs = Array(ids.prefix(cache.count))
            result.stopReason = .cancelled
            result.stats.inferenceEndMs = wallClockMilliseconds()
            return result
        }
        cachedTokenIDs = ids
        result.stats.promptEvalEndMs = wallClockMilliseconds()
        result.stats.prefillMs = (monotonicSeconds() - prefillStart) * 1000

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
        cachedImages = []
        stopFlag.clear()
    }
}
