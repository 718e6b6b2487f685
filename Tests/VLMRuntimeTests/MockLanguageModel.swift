import Foundation
import VLMCore
import VLMModels
import VLMRuntime

/// A language model whose next token is a fixed function of the last one, for testing the runner's control
/// flow (EOS, limits, stop, cache positions) without weights. It records every forward call.
final class MockLanguageModel: LanguageModel, @unchecked Sendable {
    let vocabularySize: Int
    let hiddenSize = 1
    let maxContextLength: Int
    let eosTokenIDs: [Int]
    let weightBytesPerToken = 0
    let weightDType = DType.float32
    /// next[t] is the argmax after token t.
    let next: (Int) -> Int
    private(set) var forwardCalls: [(position: Int, rows: Int)] = []
    /// Called at the start of every forward (e.g. to request a stop from "another thread").
    var onForward: (() -> Void)?

    init(vocabularySize: Int = 50, maxContextLength: Int = 64, eos: [Int] = [0], next: @escaping (Int) -> Int) {
        self.vocabularySize = vocabularySize
        self.maxContextLength = maxContextLength
        self.eosTokenIDs = eos
        self.next = next
    }

    func makeCache(maxTokens: Int?) -> KVCache {
        KVCache(layers: 1, kvHeads: 1, headDim: 1, maxTokens: min(maxTokens ?? maxContextLength, maxContextLength))
    }

    func embed(_ ids: [Int], into out: UnsafeMutablePointer<Float>) throws {
        for (i, id) in ids.enumerated() {
            guard id >= 0 && id < vocabularySize else { throw ModelRunError.tokenOutOfRange(id: id, vocabularySize: vocabularySize) }
            out[i] = Float(id)
        }
    }

    func forward(embeddings: UnsafePointer<Float>, rows: Int, cache: KVCache) throws -> [Float] {
        guard cache.count + rows <= cache.maxTokens else {
            throw ModelRunError.contextOverflow(needed: cache.count + rows, limit: cache.maxTokens)
        }
        onForward?()
        forwardCalls.append((cache.count, rows))
        cache.reserve(rows)
        cache.advance(by: rows)
        var logits = [Float](repeating: 0, count: vocabularySize)
        logits[next(Int(embeddings[rows - 1]))] = 10
        return logits
    }
}
