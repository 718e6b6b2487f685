import VLMCore

/// What the runtime needs from a decoder-only language model. Models compute; the generation loop, sampling
/// and tokenization live elsewhere.
public protocol LanguageModel: AnyObject, Sendable {
    var vocabularySize: Int { get }
    var hiddenSize: Int { get }
    /// The longest context the model supports (max_position_embeddings).
    var maxContextLength: Int { get }
    /// Token ids that end generation, from config.json (generation_config.json may add more).
    var eosTokenIDs: [Int] { get }
    /// Number of weights read per decoded token (for bandwidth bounds in benchmarks).
    var weightBytesPerToken: Int { get }
    var weightDType: DType { get }
    /// How the decoder's Linear weights are held: a safetensors dtype ("BF16") or a quantization ("q8", "q4").
    var weightFormat: String { get }

    func makeCache(maxTokens: Int?) -> KVCache

    /// Token embeddings of `ids` into `out` ([ids.count, hiddenSize]). Throws for ids outside the vocabulary.
    func embed(_ ids: [Int], into out: UnsafeMutablePointer<Float>) throws

    /// Runs `rows` hidden states ([rows, hiddenSize]) at positions cache.count ..< cache.count + rows, appends
    /// their keys and values to `cache`, and returns the logits of the last row ([vocabularySize]).
    func forward(embeddings: UnsafePointer<Float>, rows: Int, cache: KVCache) throws -> [Float]
}

extension LanguageModel {
    public var weightFormat: String { weightDType.safetensorsName }

    /// Embeds and runs `tokens`, returning the logits after the last one.
    public func forward(tokens: [Int], cache: KVCache) throws -> [Float] {
        let x = UnsafeMutablePointer<Float>.allocate(capacity: max(1, tokens.count * hiddenSize))
        defer { x.deallocate() }
        try embed(tokens, into: x)
        return try forward(embeddings: x, rows: tokens.count, cache: cache)
    }
}

/// Errors while running a model on given inputs.
public enum ModelRunError: Error, CustomStringConvertible, Equatable {
    case tokenOutOfRange(id: Int, vocabularySize: Int)
    case contextOverflow(needed: Int, limit: Int)
    case emptyInput

    public var description: String {
        switch self {
        case .tokenOutOfRange(let id, let v):
            return "token id \(id) is outside the model's vocabulary (0..<\(v))"
        case .contextOverflow(let needed, let limit):
            return "the prompt needs \(needed) positions but the context holds \(limit); shorten the prompt or raise --seq-len (up to the model's max_position_embeddings)"
        case .emptyInput:
            return "nothing to run: the input has no tokens"
        }
    }
}
