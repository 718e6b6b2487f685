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

    /// Multiply-add work of encoding one tile (vision transformer + connector), in floating-point operations,
    /// for comparing measured speed with the machine's FMA peak.
    var visionFLOPsPerTile: Double { get }

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

/// FLOPs of a pre-norm ViT over `tokens` tokens: per layer the q/k/v/o projections (4·N·D² MACs), the MLP
/// (2·N·D·I MACs) and attention scores and weighted sum (2·N²·D MACs); 2 FLOPs per MAC.
func vitFLOPs(tokens n: Int, width d: Int, intermediate i: Int, layers: Int, patchInputs: Int) -> Double {
    let N = Double(n), D = Double(d), I = Double(i)
    let perLayer = 4 * N * D * D + 2 * N * D * I + 2 * N * N * D
    return 2 * (Double(layers) * perLayer + N * Double(patchInputs) * D)
}
