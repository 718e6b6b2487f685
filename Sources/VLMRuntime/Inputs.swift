import Foundation
import VLMMedia

/// One piece of a runner's input, in order (ExecuTorch's MultimodalInput): text to tokenize, token ids used
/// as they are, or (for multimodal runners) an image.
public enum InputPart: Sendable, Equatable {
    /// Text tokenized as is, without the chat template; special-token strings inside it become their ids.
    case text(String)
    case tokens([Int])
    case image(ImageInput)
}

/// An image given to a runner: a file, encoded bytes (JPEG/PNG), or pixels already decoded.
public enum ImageInput: Sendable, Equatable {
    case file(URL)
    case encoded(Data, name: String)
    case pixels(RGBImage)

    /// A short name for error messages.
    public var name: String {
        switch self {
        case .file(let url): return url.lastPathComponent
        case .encoded(_, let name): return name
        case .pixels(let image): return "\(image.width)×\(image.height) image"
        }
    }

    public func decode(options: ImageDecodingOptions) throws -> RGBImage {
        switch self {
        case .file(let url): return try ImageDecoder.decode(contentsOf: url, options: options)
        case .encoded(let data, let name): return try ImageDecoder.decode(data, source: name, options: options)
        case .pixels(let image): return image
        }
    }
}

/// Why generation ended.
public enum StopReason: String, Sendable, Codable {
    case endOfSequence = "eos"
    case maxTokens = "max_tokens"
    case stopString = "stop_string"
    case cancelled
    case contextFull = "context_full"
}

/// Sampling and length settings for one `generate` call.
public struct GenerationConfig: Sendable, Equatable {
    /// Most tokens to generate.
    public var maxNewTokens: Int = 256
    /// Most positions (prompt + generated) the KV cache may hold; nil = the model's max_position_embeddings.
    public var seqLen: Int? = nil
    /// 0 means greedy (argmax).
    public var temperature: Float = 0
    /// 0 disables.
    public var topK: Int = 0
    /// 1 disables.
    public var topP: Float = 1
    /// 0 disables.
    public var minP: Float = 0
    /// 1 disables; >1 penalises tokens already in the prompt or reply (as transformers does).
    public var repetitionPenalty: Float = 1
    public var seed: UInt64 = 0
    /// Keep generating past end-of-sequence tokens (benchmarks).
    public var ignoreEOS = false
    /// Generation stops when the reply contains one of these; the reply is cut before it.
    public var stopStrings: [String] = []
    /// Also emit the prompt text through the token callback before the reply.
    public var echo = false
    /// Record the top-N log-probabilities of every generated token (0 = off).
    public var topLogprobs = 0
    /// Prompt tokens run through the model per forward call. Every chunk converts and packs each weight matrix once
    /// (bf16 / int8 / int4 -> f32 panels), so small chunks spend a larger share on packing: 512 ran a 1024-token
    /// prefill 5-11% faster than 128 (SmolVLM-500M dims, Zen 5) for 10 MB more peak memory (llama.cpp's default
    /// micro-batch is 512 too).
    public var prefillChunkSize = 512

    public init() {}

    /// Checks values a user can set; the message names the option and the allowed range.
    public func validate() throws {
        func fail(_ m: String) -> RunnerError { .invalidConfig(m) }
        guard maxNewTokens >= 0 else { throw fail("max new tokens must be >= 0, found \(maxNewTokens)") }
        if let seqLen, seqLen <= 0 { throw fail("seq len must be positive, found \(seqLen)") }
        guard temperature >= 0, temperature.isFinite else { throw fail("temperature must be >= 0, found \(temperature)") }
        guard topK >= 0 else { throw fail("top-k must be >= 0, found \(topK)") }
        guard topP > 0, topP <= 1 else { throw fail("top-p must be in (0, 1], found \(topP)") }
        guard minP >= 0, minP <= 1 else { throw fail("min-p must be in [0, 1], found \(minP)") }
        guard repetitionPenalty > 0, repetitionPenalty.isFinite else { throw fail("repetition penalty must be > 0, found \(repetitionPenalty)") }
        guard topLogprobs >= 0, topLogprobs <= 100 else { throw fail("top logprobs must be in 0...100, found \(topLogprobs)") }
        guard prefillChunkSize > 0 else { throw fail("prefill chunk size must be positive, found \(prefillChunkSize)") }
    }
}

/// Errors from the runtime layer.
public enum RunnerError: Error, CustomStringConvertible, Equatable {
    case notLoaded
    case invalidConfig(String)
    case promptTooLong(promptTokens: Int, limit: Int)
    case emptyPrompt
    case noChatTemplate(String)
    case imagesNotSupported
    case imageCountMismatch(markers: Int, images: Int)

    public var description: String {
        switch self {
        case .notLoaded: return "the runner is not loaded; call load() first"
        case .invalidConfig(let m): return m
        case .promptTooLong(let n, let limit):
            return "the prompt is \(n) tokens but the context holds \(limit) (seq len); shorten the prompt or raise --seq-len"
        case .emptyPrompt: return "the prompt is empty"
        case .imagesNotSupported:
            return "this model has no vision encoder; it takes text only"
        case .imageCountMismatch(let markers, let images):
            return markers > images
                ? "the prompt has \(markers) <image> marker(s) but only \(images) image(s) were given"
                : "\(images) image(s) were given but the prompt has only \(markers) <image> marker(s); put one <image> where each image goes"
        case .noChatTemplate(let dir):
            return "\(dir) has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json); use --raw to send the prompt as is"
        }
    }
}
