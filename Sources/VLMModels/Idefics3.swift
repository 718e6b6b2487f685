// Idefics3 / SmolVLM (SmolVLM-256M/500M/2.2B-Instruct): a SigLIP vision transformer, a pixel-shuffle connector
// and a Llama decoder. Reference: transformers 5.23 models/idefics3/modeling_idefics3.py.
//
//   tile [3, 512, 512] → patches [1024, 3·16·16] → patch_embedding + position_embedding → 12 × encoder layer
//   → post_layernorm → pixel_shuffle(scale 4): [64, 768·16] → modality_projection → [64, text hidden]
//   The 64 rows replace the 64 `<image>` tokens of that tile in the prompt.
import Foundation
import VLMCore

// MARK: - Configuration

public struct Idefics3VisionConfiguration: Decodable, Sendable {
    public var hiddenSize: Int = 1152
    public var intermediateSize: Int = 3072
    public var numHiddenLayers: Int = 12
    public var numAttentionHeads: Int = 16
    public var numChannels: Int = 3
    public var imageSize: Int = 224
    public var patchSize: Int = 32
    public var hiddenAct: String = "gelu_pytorch_tanh"
    public var layerNormEps: Float = 1e-6

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size", intermediateSize = "intermediate_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", numChannels = "num_channels", imageSize = "image_size"
        case patchSize = "patch_size", hiddenAct = "hidden_act", layerNormEps = "layer_norm_eps"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? hiddenSize
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? intermediateSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? numAttentionHeads
        numChannels = try c.decodeIfPresent(Int.self, forKey: .numChannels) ?? numChannels
        imageSize = try c.decodeIfPresent(Int.self, forKey: .imageSize) ?? imageSize
        patchSize = try c.decodeIfPresent(Int.self, forKey: .patchSize) ?? patchSize
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? hiddenAct
        layerNormEps = try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? layerNormEps
    }
}

public struct Idefics3Configuration: Decodable, Sendable {
    public var vision: Idefics3VisionConfiguration
    public var text: LlamaConfiguration
    public var scaleFactor: Int
    public var imageTokenID: Int

    enum CodingKeys: String, CodingKey {
        case vision = "vision_config", text = "text_config", scaleFactor = "scale_factor"
        case imageTokenID = "image_token_id", tieWordEmbeddings = "tie_word_embeddings"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vision = try c.decode(Idefics3VisionConfiguration.self, forKey: .vision)
        text = try c.decode(LlamaConfiguration.self, forKey: .text)
        scaleFactor = try c.decodeIfPresent(Int.self, forKey: .scaleFactor) ?? 2
        imageTokenID = try c.decodeIfPresent(Int.self, forKey: .imageTokenID) ?? 128257
        // The top-level flag governs the head of the whole model (Idefics3ForConditionalGeneration ties
        // lm_head to the text embeddings when it is set).
        if let tie = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) { text.tieWordEmbeddings = tie }
    }

    public func validate(file: String = "config.json") throws {
        try text.validate(file: file)
        let v = vision
        guard v.patchSize > 0, v.imageSize > 0, v.imageSize % v.patchSize == 0 else {
            throw ModelFileError(file: file, "vision_config.image_size \(v.imageSize) must be a positive multiple of patch_size \(v.patchSize)")
        }
        guard v.hiddenSize > 0, v.numAttentionHeads > 0, v.hiddenSize % v.numAttentionHeads == 0 else {
            throw ModelFileError(file: file, "vision_config.hidden_size \(v.hiddenSize) must be a positive multiple of num_attention_heads \(v.numAttentionHeads)")
        }
        let side = v.imageSize / v.patchSize
        guard scaleFactor > 0, side % scaleFactor == 0 else {
            throw ModelFileError(file: file, "scale_factor \(scaleFactor) must divide the \(side) patches per side")
        }
        guard v.numChannels == 3 else {
            throw ModelFileError(file: file, "vision_config.num_channels must be 3, found \(v.numChannels)")
        }
        _ = try Activation.named(v.hiddenAct, file: file, field: "vision_config.hidden_act")
    }
}

// MARK: - Vision (SigLIP with Idefics3's position buckets)

final class Idefics3Vision: @unchecked Sendable {
    let config: Idefics3VisionConfiguration
    let patchEmbedding: Linear          // embeddings.patch_embedding: conv [D, 3, p, p] seen as [D, 3·p·p]
    let positionEmbedding: [Float]      // embeddings.position_embedding.weight [side², D]
    let layers: [VisionEncoderLayer]    // encoder.layers.{i}
    let postLayerNorm: VisionNorm       // post_layernorm
    let workspace = VisionWorkspace()

    init(config: Idefics3VisionConfiguration, checkpoint: Checkpoint, prefix p: String) throws {
        self.config = config
        let d = config.hiddenSize, patch = config.patchSize, side = config.imageSize / patch
        let eps = config.layerNormEps
        func vector(_ name: String, _ n: Int) throws -> [Float] { try checkpoint.tensor(p + name, shape: [n]).floats() }
        func linear(_ name: String, out: Int, in n: Int) throws -> Linear {
            try checkpoint.linear(p + name, out: out, in: n, bias: true, part: .vision)
        }
        func layerNorm(_ name: String) throws -> VisionNorm {
            .layerNorm(weight: try vector(name + ".weight", d), bias: try vector(name + ".bias", d), eps: eps)
        }
        let conv = try checkpoint.tensor(p + "embeddings.patch_embedding.weight", shape: [d, 3, patch, patch])
        // Conv with stride = kernel over the tile is a matrix product with the flattened kernel.
        patchEmbedding = Linear(weight: conv.reshaped([d, 3 * patch * patch])!,
                                bias: try vector("embeddings.patch_embedding.bias", d))
        positionEmbedding = try checkpoint.tensor(p + "embeddings.position_embedding.weight", shape: [side * side, d]).floats()
        let activation = try Activation.named(config.hiddenAct, file: "config.json", field: "vision_config.hidden_act")
        layers = try (0..<config.numHiddenLayers).map { i in
            let l = "encoder.layers.\(i)."
            return VisionEncoderLayer(
                norm1: try layerNorm(l + "layer_norm1"),
                q: try linear(l + "self_attn.q_proj", out: d, in: d), k: try linear(l + "self_attn.k_proj", out: d, in: d),
                v: try linear(l + "self_attn.v_proj", out: d, in: d), out: try linear(l + "self_attn.out_proj", out: d, in: d),
                qNorm: nil, kNorm: nil, layerScale1: nil,
                norm2: try layerNorm(l + "layer_norm2"),
                fc1: try linear(l + "mlp.fc1", out: config.intermediateSize, in: d),
                fc2: try linear(l + "mlp.fc2", out: d, in: config.intermediateSize),
                activation: activation, layerScale2: nil, heads: config.numAttentionHeads)
        }
        postLayerNorm = try layerNorm("post_layernorm")
    }

    /// Position ids of a tile with `patchesY × patchesX` patches: fractional coordinates bucketed onto the
    /// trained side × side grid (Idefics3VisionEmbeddings), so tiles smaller than image_size still get spread ids.
    func positionIDs(patchesY: Int, patchesX: Int) -> [Int] {
        let side = config.imageSize / config.patchSize
        // torch.arange(1/side, 1.0, 1/side): computed in double, stored as f32.
        let step = 1.0 / Double(side)
        let boundaries = (0..<(side - 1)).map { Float(step + Double($0) * step) }
        func buckets(_ n: Int) -> [Int] {
            let s = Float(1) / Float(n)
            return (0..<n).map { i in
                let frac = min(Float(i) * s, 1 - 1e-6)
                return boundaries.filter { $0 <= frac }.count  // bucketize(right=True)
            }
        }
        let hs = buckets(patchesY), ws = buckets(patchesX)
        return hs.flatMap { h in ws.map { w in h * side + w } }
    }

    /// tile [3, H, W] → [patches, D]
    func encode(tile: UnsafePointer<Float>, height: Int, width: Int, pool: ThreadPool) -> [Float] {
        let d = config.hiddenSize, patch = config.patchSize
        let py = height / patch, px = width / patch, n = py * px
        let patches = patchify(tile, channels: 3, height: height, width: width, patch: patch)
        var x = [Float](repeating: 0, count: n * d)
        x.withUnsafeMutableBufferPointer { xb in
            let xp = xb.baseAddress!
            patches.withUnsafeBufferPointer { patchEmbedding.apply($0.baseAddress!, rows: n, into: xp, pool: pool) }
            for (r, id) in positionIDs(patchesY: py, patchesX: px).enumerated() {
                for i in 0..<d { xp[r * d + i] += positionEmbedding[id * d + i] }
            }
            for layer in layers { layer.apply(xp, rows: n, workspace: workspace, pool: pool) }
            postLayerNorm.apply(xp, rows: n, width: d, into: xp)
        }
        return x
    }
}

// MARK: - Model

public final class Idefics3Model: VisionLanguageModel, @unchecked Sendable {
    public let config: Idefics3Configuration
    public let languageModel: LanguageModel
    let vision: Idefics3Vision
    let projection: Linear              // connector.modality_projection.proj [text hidden, D·s²], no bias
    let pool: ThreadPool
    private let lock = NSLock()

    public var imageTokenID: Int { config.imageTokenID }
    public var tokensPerTile: Int {
        let side = config.vision.imageSize / config.vision.patchSize
        return side * side / (config.scaleFactor * config.scaleFactor)
    }
    public var tileSize: (height: Int, width: Int) { (config.vision.imageSize, config.vision.imageSize) }

    public var visionFLOPsPerTile: Double {
        let v = config.vision, side = v.imageSize / v.patchSize, s = config.scaleFactor
        let encoder = vitFLOPs(tokens: side * side, width: v.hiddenSize, intermediate: v.intermediateSize,
                               layers: v.numHiddenLayers, patchInputs: 3 * v.patchSize * v.patchSize)
        let connector = 2 * Double(tokensPerTile) * Double(v.hiddenSize * s * s) * Double(config.text.hiddenSize)
        return encoder + connector
    }

    public init(config: Idefics3Configuration, checkpoint: Checkpoint, pool: ThreadPool) throws {
        try config.validate()
        self.config = config
        self.pool = pool
        languageModel = try LlamaModel(config: config.text, checkpoint: checkpoint, pool: pool,
                                       prefix: "model.text_model.", checkUnused: false)
        vision = try Idefics3Vision(config: config.vision, checkpoint: checkpoint, prefix: "model.vision_model.")
        let s = config.scaleFactor
        projection = try checkpoint.linear("model.connector.modality_projection.proj", out: config.text.hiddenSize,
                                           in: config.vision.hiddenSize * s * s, bias: false, part: .vision)
        try checkpoint.checkAllUsed()
    }

    public func encodeImage(tiles: UnsafePointer<Float>, count: Int, height: Int, width: Int) throws -> [Float] {
        let size = config.vision.imageSize
        // The connector's pixel shuffle assumes the full square grid of patches.
        guard height == size, width == size else { throw VisionInputError.tileSize(expected: size, foundHeight: height, foundWidth: width) }
        lock.lock(); defer { lock.unlock() }
        let d = config.vision.hiddenSize, side = size / config.vision.patchSize, s = config.scaleFactor
        let hidden = config.text.hiddenSize
        var out = [Float](repeating: 0, count: count * tokensPerTile * hidden)
        for t in 0..<count {
            let features = vision.encode(tile: tiles + t * 3 * height * width, height: height, width: width, pool: pool)
            let shuffled = features.withUnsafeBufferPointer { pixelShuffle($0.baseAddress!, side: side, dim: d, factor: s) }
            out.withUnsafeMutableBufferPointer { o in
                shuffled.withUnsafeBufferPointer {
                    projection.apply($0.baseAddress!, rows: tokensPerTile, into: o.baseAddress! + t * tokensPerTile * hidden, pool: pool)
                }
            }
        }
        return out
    }
}
