import Foundation
import VLMModels

/// What a `Conversation` needs from its runner beyond `ChatRunner`: prompt lengths before running them, the
/// context limit, and the KV-cache state (for context policies and session files). Both runners provide it.
protocol ConversationBackend: ChatRunner {
    var modelFolder: URL { get }
    var kvCache: KVCache? { get }
    var tokenIDsInCache: [Int] { get }
    var imagesInCache: [CachedImage] { get }
    /// Tokens `prompt` (with `images` for its placeholders) becomes.
    func promptLength(_ prompt: String, images: [ImageInput]) throws -> Int
    /// Replaces what the runner believes its cache holds (after the cache's rows were replaced).
    func installCacheState(tokenIDs: [Int], images: [CachedImage])
    /// Swaps in another KV cache object and what it holds (server cache slots).
    func replaceCache(_ cache: KVCache, tokenIDs: [Int], images: [CachedImage])
}

extension ConversationBackend {
    /// Most positions a generate call with `config` may use.
    func contextLimit(_ config: GenerationConfig) -> Int? {
        guard let lm = languageModel, let cache = kvCache else { return nil }
        return min(config.seqLen ?? lm.maxContextLength, cache.maxTokens)
    }
}

extension TextRunner: ConversationBackend {
    var modelFolder: URL { modelDirectory }
    var kvCache: KVCache? { cache }
    var tokenIDsInCache: [Int] { cachedTokenIDs }
    var imagesInCache: [CachedImage] { [] }

    func promptLength(_ prompt: String, images: [ImageInput]) throws -> Int {
        guard images.isEmpty else { throw RunnerError.imagesNotSupported }
        guard let tokenizer else { throw RunnerError.notLoaded }
        return tokenizer.encode(prompt, addSpecialTokens: false).count
    }

    func installCacheState(tokenIDs: [Int], images: [CachedImage]) {
        cachedTokenIDs = tokenIDs
    }

    func replaceCache(_ cache: KVCache, tokenIDs: [Int], images: [CachedImage]) {
        self.cache = cache
        cachedTokenIDs = tokenIDs
    }
}

extension MultimodalRunner: ConversationBackend {
    var modelFolder: URL { modelDirectory }
    var kvCache: KVCache? { cache }
    var tokenIDsInCache: [Int] { cachedTokenIDs }
    var imagesInCache: [CachedImage] { cachedImages }

    func promptLength(_ prompt: String, images: [ImageInput]) throws -> Int {
        try prepare(text: prompt, images: images).ids.count
    }

    func installCacheState(tokenIDs: [Int], images: [CachedImage]) {
        cachedTokenIDs = tokenIDs
        cachedImages = images
    }

    func replaceCache(_ cache: KVCache, tokenIDs: [Int], images: [CachedImage]) {
        self.cache = cache
        cachedTokenIDs = tokenIDs
        cachedImages = images
    }
}
