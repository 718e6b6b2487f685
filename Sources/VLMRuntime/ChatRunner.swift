import Foundation
import VLMCore
import VLMModels
import VLMTokenizers

/// A runner that can hold a conversation: it renders messages with the model's chat template and continues
/// from its KV cache. Both the text and the multimodal runner are one.
public protocol ChatRunner: Runner {
    /// The string the chat template writes for an image part (nil for text-only models).
    var imagePlaceholder: String? { get }
    /// The decoder, once loaded.
    var languageModel: LanguageModel? { get }
    /// The vision encoder's FLOPs per tile (nil for text-only models).
    var visionFLOPsPerTile: Double? { get }
    func renderChat(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String
    func generate(continuing fullPrompt: String, images: [ImageInput], config: GenerationConfig,
                  onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult
}

extension TextRunner: ChatRunner {
    public var imagePlaceholder: String? { nil }
    public var languageModel: LanguageModel? { model }
    public var visionFLOPsPerTile: Double? { nil }

    public func generate(continuing fullPrompt: String, images: [ImageInput], config: GenerationConfig,
                         onToken: @escaping (GeneratedToken) -> Void) throws -> GenerationResult {
        guard images.isEmpty else { throw RunnerError.imagesNotSupported }
        return try generate(continuing: fullPrompt, config: config, onToken: onToken)
    }
}

extension MultimodalRunner: ChatRunner {
    public var imagePlaceholder: String? { preprocessor?.placeholder ?? "<image>" }
    public var languageModel: LanguageModel? { model?.languageModel }
    public var visionFLOPsPerTile: Double? { model?.visionFLOPsPerTile }
}

/// Picks the runner for a model folder from its config.json model_type.
public enum RunnerFactory {
    public static func make(modelDirectory: URL, threads: Int, imageOptions: ImageOptions = .init(),
                            quantization: QuantizationOptions = .none) throws -> ChatRunner {
        let (type, _) = try ModelRegistry.modelType(directory: modelDirectory)
        if ModelRegistry.isVisionLanguage(type) {
            return MultimodalRunner(modelDirectory: modelDirectory, threads: threads, imageOptions: imageOptions,
                                    quantization: quantization)
        }
        return TextRunner(modelDirectory: modelDirectory, threads: threads, quantization: quantization)
    }
}

extension ChatMessage {
    /// A user turn from text in which each `<image>` marker stands for the next image: the text around the
    /// markers becomes text parts and each marker an image part, as transformers' processors expect.
    public static func user(_ text: String, imageMarker: String = "<image>") -> (message: ChatMessage, imageCount: Int) {
        let pieces = text.components(separatedBy: imageMarker)
        guard pieces.count > 1 else { return (ChatMessage(role: "user", content: .text(text)), 0) }
        var parts: [ChatContentPart] = []
        for (i, piece) in pieces.enumerated() {
            if i > 0 { parts.append(.image) }
            if !piece.isEmpty { parts.append(.text(piece)) }
        }
        return (ChatMessage(role: "user", content: .parts(parts)), pieces.count - 1)
    }
}
