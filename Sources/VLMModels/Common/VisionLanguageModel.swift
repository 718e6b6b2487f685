import VLMCore

/// A vision-language model: a vision encoder + connector that turns image tiles into embeddings in the
/// language model's space, and the decoder that reads them at the image-token positions.
public protocol VisionLanguageModel: AnyObject, Sendable {
    var languageModel: LanguageModel { get }
    /// The placeholder token whose positions receive image features (`<image>`, `<IMG_CONTEXT>`).
    var imageTokenID: Int { get }
    /// Embeddings produced per tile.
    var tokensPerTile: Int { get }
    /// Tile size the encoder expects (height, width).
    var tileSize: (height: Int, width: Int) { get }

    /// Encodes `tiles` channel-first tiles ([tiles, 3, height, width]) into [tiles * tokensPerTile, hidden]
    /// embeddings for the language model.
    func encodeImage(tiles: UnsafePointer<Float>, count: Int, height: Int, width: Int) throws -> [Float]
}

/// Errors specific to images reaching a model.
public enum VisionInputError: Error, CustomStringConvertible, Equatable {
    case tileSize(expected: Int, foundHeight: Int, foundWidth: Int)
    case featureCountMismatch(imageTokens: Int, features: Int)

    public var description: String {
        switch self {
        case .tileSize(let e, let h, let w):
            return "image tiles must be \(e)×\(e) pixels for this vision encoder, found \(h)×\(w)"
        case .featureCountMismatch(let t, let f):
            return "the prompt has \(t) image tokens but the images produce \(f) embeddings; each <image> marker needs one image"
        }
    }
}
