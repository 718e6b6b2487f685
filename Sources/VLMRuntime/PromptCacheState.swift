import Foundation
import VLMModels

/// A runner's KV cache together with what it holds (token ids, which pictures fill which positions), detached
/// from the runner. A server keeps several of these, one per recent conversation, and attaches the one that
/// shares the longest prefix with a request, so that conversations taking turns do not evict each other.
public final class PromptCacheState: @unchecked Sendable {
    let cache: KVCache
    let tokenIDs: [Int]
    let images: [CachedImage]

    init(cache: KVCache, tokenIDs: [Int], images: [CachedImage]) {
        self.cache = cache
        self.tokenIDs = tokenIDs
        self.images = images
    }

    /// Tokens held.
    public var tokenCount: Int { tokenIDs.count }
    /// Memory the keys and values take.
    public var byteCount: Int { cache.byteCount }
}

extension ChatRunner {
    /// Takes the runner's KV cache and what it holds; the runner continues with a new, empty cache.
    /// nil when the runner is not loaded or is not one of ours.
    public func detachPromptCache() -> PromptCacheState? {
        guard let backend = self as? ConversationBackend, let lm = languageModel, let cache = backend.kvCache else { return nil }
        let state = PromptCacheState(cache: cache, tokenIDs: backend.tokenIDsInCache, images: backend.imagesInCache)
        backend.replaceCache(lm.makeCache(maxTokens: cache.maxTokens), tokenIDs: [], images: [])
        return state
    }

    /// Makes `state` the runner's cache (the runner's current cache is dropped). `state` must come from a runner
    /// of the same model; a state of another geometry is ignored and the runner starts empty.
    public func attachPromptCache(_ state: PromptCacheState) {
        guard let backend = self as? ConversationBackend, let current = backend.kvCache else { return }
        guard state.cache.layers == current.layers, state.cache.rowWidth == current.rowWidth,
              state.cache.maxTokens == current.maxTokens, state.cache.count == state.tokenIDs.count else {
            reset()
            return
        }
        backend.replaceCache(state.cache, tokenIDs: state.tokenIDs, images: state.images)
    }
}
