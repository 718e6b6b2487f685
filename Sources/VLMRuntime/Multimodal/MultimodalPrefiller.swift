import Foundation
import VLMCore
import VLMModels

/// Where the image becomes tokens: runs a prompt whose image-token positions take the vision encoder's
/// embeddings instead of the token embedding, in chunks, filling the KV cache.
public struct MultimodalPrefiller {
    public let model: VisionLanguageModel
    public let chunkSize: Int

    public init(model: VisionLanguageModel, chunkSize: Int) {
        self.model = model
        self.chunkSize = max(1, chunkSize)
    }

    /// One image's run of placeholder tokens in the prompt.
    public struct ImageSpan {
        public let start: Int
        public let count: Int
        /// [count, hidden] embeddings, or nil when the span lies in the part of the prompt already cached.
        public var features: [Float]?

        public init(start: Int, count: Int, features: [Float]?) {
            self.start = start
            self.count = count
            self.features = features
        }
    }

    /// Prefills `ids[from...]` after the cache's first `from` positions. Image-token positions inside that
    /// range take their span's features. Returns the logits after the last token.
    public func prefill(_ ids: [Int], from: Int, spans: [ImageSpan], cache: KVCache,
                        shouldStop: () -> Bool = { false }) throws -> [Float]? {
        let lm = model.languageModel
        let hidden = lm.hiddenSize
        var logits: [Float]?
        var start = from
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: chunkSize * hidden)
        defer { buffer.deallocate() }
        while start < ids.count {
            if shouldStop() { return nil }
            let end = min(ids.count, start + chunkSize)
            // Image tokens carry no embedding of their own; embed the placeholder id, then overwrite.
            try lm.embed(Array(ids[start..<end]), into: buffer)
            for span in spans {
                let lo = max(span.start, start), hi = min(span.start + span.count, end)
                guard lo < hi else { continue }
                guard let features = span.features else {
                    throw RunnerError.invalidConfig("internal: image span at \(span.start) needs features but was treated as cached")
                }
                features.withUnsafeBufferPointer { f in
                    (buffer + (lo - start) * hidden).update(from: f.baseAddress! + (lo - span.start) * hidden, count: (hi - lo) * hidden)
                }
            }
            logits = try lm.forward(embeddings: buffer, rows: end - start, cache: cache)
            start = end
        }
        return logits
    }
}
