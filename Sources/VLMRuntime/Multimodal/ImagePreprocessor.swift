import Foundation
import VLMMedia
import VLMModels

/// An image after its model family's preprocessing: the tiles for the vision encoder and the text that
/// replaces the image's placeholder in the prompt (which holds exactly one image token per embedding).
public struct PreprocessedImage: Sendable {
    public let tiles: PixelTiles
    public let promptText: String
}

/// Tiling options a user may override (speed versus detail).
public struct ImageOptions: Sendable, Equatable {
    /// Turn Idefics3 image splitting off: the global image only (64 tokens for SmolVLM).
    public var disableImageSplitting = false
    /// Cap on tiles per image (InternVL max_patches); nil keeps the model's setting.
    public var maxTiles: Int?
    public var decoding = ImageDecodingOptions()

    public init() {}
}

/// The preprocessing of one model family, chosen from config.json's model_type.
public protocol ImagePreprocessor: Sendable {
    /// The string the chat template writes where an image goes ("<image>", "<IMG_CONTEXT>").
    var placeholder: String { get }
    func preprocess(_ image: RGBImage) throws -> PreprocessedImage
}

struct Idefics3Preprocessor: ImagePreprocessor {
    var processor: Idefics3ImageProcessor
    var placeholder: String { "<image>" }

    func preprocess(_ image: RGBImage) throws -> PreprocessedImage {
        let out = try processor.preprocess(image)
        return PreprocessedImage(tiles: out.tiles, promptText: processor.promptExpansion(rows: out.rows, cols: out.cols))
    }
}

struct InternVLPreprocessor: ImagePreprocessor {
    var processor: InternVLImageProcessor
    var placeholder: String { "<IMG_CONTEXT>" }

    func preprocess(_ image: RGBImage) throws -> PreprocessedImage {
        let out = try processor.preprocess(image)
        return PreprocessedImage(tiles: out.tiles, promptText: processor.promptExpansion(tileCount: out.tiles.count))
    }
}

enum ImagePreprocessors {
    static func make(modelType: String, directory: URL, options: ImageOptions) throws -> ImagePreprocessor {
        switch modelType {
        case "idefics3":
            var p = try Idefics3ImageProcessor(directory: directory)
            if options.disableImageSplitting { p.doImageSplitting = false }
            if let maxTiles = options.maxTiles { try p.limitTiles(maxTiles) }
            return Idefics3Preprocessor(processor: p)
        case "internvl":
            var p = try InternVLImageProcessor(directory: directory)
            if let maxTiles = options.maxTiles { try p.limitTiles(maxTiles) }
            return InternVLPreprocessor(processor: p)
        default:
            throw RunnerError.imagesNotSupported
        }
    }
}
