import Foundation
import VLMCore

/// Maps config.json's `model_type` to the code that builds the model. Adding an architecture means adding its
/// file and one entry here.
public enum ModelRegistry {
    public typealias LanguageModelLoader = (_ config: Data, _ checkpoint: Checkpoint, _ pool: ThreadPool) throws -> LanguageModel

    public static let languageModels: [String: LanguageModelLoader] = [
        "llama": { data, checkpoint, pool in
            try LlamaModel(config: decodeConfig(LlamaConfiguration.self, from: data, file: "config.json"), checkpoint: checkpoint, pool: pool)
        },
        "qwen2": { data, checkpoint, pool in
            try Qwen2.load(config: decodeConfig(LlamaConfiguration.self, from: data, file: "config.json"), checkpoint: checkpoint, pool: pool)
        },
    ]

    public typealias VisionLanguageModelLoader = (_ config: Data, _ checkpoint: Checkpoint, _ pool: ThreadPool) throws -> VisionLanguageModel

    public static let visionLanguageModels: [String: VisionLanguageModelLoader] = [
        "idefics3": { data, checkpoint, pool in
            try Idefics3Model(config: decodeConfig(Idefics3Configuration.self, from: data, file: "config.json"),
                              checkpoint: checkpoint, pool: pool)
        },
        "internvl": { data, checkpoint, pool in
            try InternVLModel(config: decodeConfig(InternVLConfiguration.self, from: data, file: "config.json"),
                              checkpoint: checkpoint, pool: pool)
        },
    ]

    /// Architectures whose checkpoints may use older tensor names: stored name → the name the model asks for.
    static let checkpointRenames: [String: @Sendable (String) -> String] = [
        "internvl": { InternVLConfiguration.canonicalName($0) },
    ]

    /// The checkpoint of a `model_type` folder, with its renames and the load-time quantization options.
    public static func checkpoint(modelType: String, directory: URL, quantization: QuantizationOptions = .none) throws -> Checkpoint {
        try Checkpoint(directory: directory, rename: checkpointRenames[modelType], quantization: quantization)
    }

    public static var supportedModelTypes: [String] { (Array(languageModels.keys) + Array(visionLanguageModels.keys)).sorted() }

    /// True when `model_type` names a vision-language architecture.
    public static func isVisionLanguage(_ modelType: String) -> Bool { visionLanguageModels[modelType] != nil }

    /// Loads the vision-language model in `directory`.
    public static func loadVisionLanguageModel(directory: URL, pool: ThreadPool,
                                               quantization: QuantizationOptions = .none) throws -> VisionLanguageModel {
        let (type, data) = try modelType(directory: directory)
        guard let loader = visionLanguageModels[type] else {
            throw ModelFileError(file: "config.json", "model_type '\(type)' is not a supported vision-language model (supported: \(visionLanguageModels.keys.sorted().joined(separator: ", ")))")
        }
        return try loader(data, checkpoint(modelType: type, directory: directory, quantization: quantization), pool)
    }

    /// Reads `model_type` from the folder's config.json.
    public static func modelType(directory: URL) throws -> (type: String, config: Data) {
        let url = directory.appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ModelFileError(file: directory.path, "no config.json (is this a Hugging Face model folder?)")
        }
        let data = try Data(contentsOf: url)
        let header = try decodeConfig(ModelTypeHeader.self, from: data, file: "config.json")
        guard let type = header.modelType else {
            throw ModelFileError(file: "config.json", "missing field 'model_type' (supported: \(supportedModelTypes.joined(separator: ", ")))")
        }
        return (type, data)
    }

    /// Loads the language model in `directory`, weights memory-mapped from its safetensors.
    public static func loadLanguageModel(directory: URL, pool: ThreadPool,
                                         quantization: QuantizationOptions = .none) throws -> LanguageModel {
        try loadModel(directory: directory, pool: pool, quantization: quantization).languageModel
    }

    /// Loads whichever model the folder holds and returns it with the checkpoint it was read from (whose
    /// `quantizedWeights` are what `vlm quantize` writes out).
    public static func loadModel(directory: URL, pool: ThreadPool, quantization: QuantizationOptions = .none) throws
        -> (languageModel: LanguageModel, visionLanguageModel: VisionLanguageModel?, checkpoint: Checkpoint) {
        let (type, data) = try modelType(directory: directory)
        if let vlm = visionLanguageModels[type] {
            let checkpoint = try checkpoint(modelType: type, directory: directory, quantization: quantization)
            let model = try vlm(data, checkpoint, pool)
            return (model.languageModel, model, checkpoint)  // text-only callers use its decoder
        }
        guard let loader = languageModels[type] else {
            throw ModelFileError(file: "config.json", "model_type '\(type)' is not supported (supported: \(supportedModelTypes.joined(separator: ", ")))")
        }
        let checkpoint = try checkpoint(modelType: type, directory: directory, quantization: quantization)
        return (try loader(data, checkpoint, pool), nil, checkpoint)
    }
}
