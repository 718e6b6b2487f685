import VLMModels

/// Runs prompt tokens through the model in chunks, filling the KV cache; returns the logits after the last one.
/// Chunking bounds activation memory for long prompts while keeping matrix-matrix efficiency.
public struct TextPrefiller {
    public let model: LanguageModel
    public let chunkSize: Int

    public init(model: LanguageModel, chunkSize: Int) {
        self.model = model
        self.chunkSize = max(1, chunkSize)
    }

    public func prefill(_ tokens: [Int], cache: KVCache, shouldStop: () -> Bool = { false }) throws -> [Float]? {
        var logits: [Float]?
        var start = 0
        while start < tokens.count {
            if shouldStop() { return nil }
            let end = min(tokens.count, start + chunkSize)
            logits = try model.forward(tokens: Array(tokens[start..<end]), cache: cache)
            start = end
        }
        return logits
    }
}

/// One decoding step: the token just generated in, the next logits out.
public struct DecoderStep {
    public let model: LanguageModel

    public init(model: LanguageModel) { self.model = model }

    public func step(_ token: Int, cache: KVCache) throws -> [Float] {
        try model.forward(tokens: [token], cache: cache)
    }
}
