// InternVL3 in the Hugging Face layout (model_type "internvl": InternVL3-1B/2B-hf): an InternViT vision
// transformer, pixel shuffle, an MLP projector and a Qwen2 decoder.
// Reference: transformers 5.23 models/internvl/modeling_internvl.py.
//
//   tile [3, 448, 448] → patches [1024, 3·14·14] → projection, prepend CLS, + position_embeddings
//   → 24 × layer (pre-norm, layer scale λ1/λ2, optional q/k RMS norm) → (layernorm unless mean pooling)
//   → drop CLS → pixel_shuffle(0.5): [256, 4096] → LayerNorm → linear_1 → GELU → linear_2 → [256, 896]
import Foundation
import VLMCore

// MARK: - Configuration

/// An int or a [height, width] pair (InternVLVisionConfig accepts both for image_size and patch_size).
struct IntOrPair: Decodable, Sendable {
    var height: Int, width: Int
    init(_ v: Int) { height = v; width = v }
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Int.self) { height = v; width = v; return }
        let pair = try c.decode([Int].self)
        guard pair.count == 2 else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected an integer or [height, width]")
        }
        height = pair[0]; width = pair[1]
    }
}

public struct InternVLVisionConfiguration: Decodable, Sendable {
    public var hiddenSize = 1024
    public var numHiddenLayers = 24
    public var numAttentionHeads = 16
    public var attentionBias = false
    public var useQKNorm = false
    public var intermediateSize = 4096
    public var hiddenAct = "gelu"
    public var normType = "layer_norm"
    public var layerNormEps: Float = 1e-6
    public var imageSize = 448
    public var patchSize = 14
    public var useMaskToken = false
    public var useAbsolutePositionEmbeddings = true
    public var useMeanPooling = true

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size", numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case attentionBias = "attention_bias", useQKNorm = "use_qk_norm", intermediateSize = "intermediate_size"
        case hiddenAct = "hidden_act", normType = "norm_type", layerNormEps = "layer_norm_eps"
        case imageSize = "image_size", patchSize = "patch_size", useMaskToken = "use_mask_token"
        case useAbsolutePositionEmbeddings = "use_absolute_position_embeddings", useMeanPooling = "use_mean_pooling"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? hiddenSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? numAttentionHeads
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? attentionBias
        useQKNorm = try c.decodeIfPresent(Bool.self, forKey: .useQKNorm) ?? useQKNorm
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? intermediateSize
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? hiddenAct
        normType = try c.decodeIfPresent(String.self, forKey: .normType) ?? normType
        layerNormEps = try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? layerNormEps
        let image = try c.decodeIfPresent(IntOrPair.self, forKey: .imageSize) ?? IntOrPair(448)
        let patch = try c.decodeIfPresent(IntOrPair.self, forKey: .patchSize) ?? IntOrPair(14)
        guard image.height == image.width, patch.height == patch.width else {
            throw DecodingError.dataCorrupted(.init(codingPath: [CodingKeys.imageSize], debugDescription: "non-square image_size/patch_size is not supported"))
        }
        imageSize = image.height
        patchSize = patch.height
        useMaskToken = try c.decodeIfPresent(Bool.self, forKey: .useMaskToken) ?? useMaskToken
        useAbsolutePositionEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .useAbsolutePositionEmbeddings) ?? useAbsolutePositionEmbeddings
        useMeanPooling = try c.decodeIfPresent(Bool.self, forKey: .useMeanPooling) ?? useMeanPooling
    }
}

public struct InternVLConfiguration: Decodable, Sendable {
    public var vision: InternVLVisionConfiguration
    public var text: LlamaConfiguration
    public var imageTokenID: Int
    public var downsampleRatio: Double
    public var projectorHiddenAct: String
    public var visionFeatureLayer: Int
    public var visionFeatureSelectStrategy: String

    enum CodingKeys: String, CodingKey {
        case vision = "vision_config", text = "text_config", imageTokenID = "image_token_id"
        case downsampleRatio = "downsample_ratio", projectorHiddenAct = "projector_hidden_act"
        case visionFeatureLayer = "vision_feature_layer", visionFeatureSelectStrategy = "vision_feature_select_strategy"
        case tieWordEmbeddings = "tie_word_embeddings"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vision = try c.decode(InternVLVisionConfiguration.self, forKey: .vision)
        text = try c.decode(LlamaConfiguration.self, forKey: .text)
        imageTokenID = try c.decodeIfPresent(Int.self, forKey: .imageTokenID) ?? 151667
        downsampleRatio = try c.decodeIfPresent(Double.self, forKey: .downsampleRatio) ?? 0.5
        projectorHiddenAct = try c.decodeIfPresent(String.self, forKey: .projectorHiddenAct) ?? "gelu"
        visionFeatureLayer = (try? c.decodeIfPresent(Int.self, forKey: .visionFeatureLayer)) ?? -1
        visionFeatureSelectStrategy = try c.decodeIfPresent(String.self, forKey: .visionFeatureSelectStrategy) ?? "default"
        // InternVLConfig's default is tied (and a diffed config.json omits a default value).
        text.tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? true
    }

    /// 1 / downsample_ratio: how many patches per side merge into one token.
    var shuffleFactor: Int { Int((1 / downsampleRatio).rounded()) }

    public func validate(file: String = "config.json") throws {
        try text.validate(file: file)
        let v = vision
        guard v.patchSize > 0, v.imageSize % v.patchSize == 0 else {
            throw ModelFileError(file: file, "vision_config.image_size \(v.imageSize) must be a multiple of patch_size \(v.patchSize)")
        }
        guard v.numAttentionHeads > 0, v.hiddenSize % v.numAttentionHeads == 0 else {
            throw ModelFileError(file: file, "vision_config.hidden_size \(v.hiddenSize) must be a multiple of num_attention_heads \(v.numAttentionHeads)")
        }
        guard ["layer_norm", "rms_norm"].contains(v.normType) else {
            throw ModelFileError(file: file, "vision_config.norm_type '\(v.normType)' is not supported (supported: layer_norm, rms_norm)")
        }
        guard v.useAbsolutePositionEmbeddings else {
            throw ModelFileError(file: file, "vision_config.use_absolute_position_embeddings false is not supported")
        }
        let side = v.imageSize / v.patchSize
        guard downsampleRatio > 0, Double(shuffleFactor) * downsampleRatio == 1, side % shuffleFactor == 0 else {
            throw ModelFileError(file: file, "downsample_ratio \(downsampleRatio) must be 1/n with n dividing the \(side) patches per side")
        }
        guard visionFeatureLayer == -1, visionFeatureSelectStrategy == "default" else {
            throw ModelFileError(file: file, "only vision_feature_layer -1 with vision_feature_select_strategy 'default' is supported, found \(visionFeatureLayer) / '\(visionFeatureSelectStrategy)'")
        }
        _ = try Activation.named(v.hiddenAct, file: file, field: "vision_config.hidden_act")
        _ = try Activation.named(projectorHiddenAct, file: file, field: "projector_hidden_act")
    }

    /// Older -hf checkpoints (saved before transformers 4.52) keep the llava layout; transformers renames them
    /// on load ("llava" in conversion_mapping.py) and so do we.
    static func canonicalName(_ name: String) -> String {
        if name.hasPrefix("language_model.lm_head") { return "lm_head" + name.dropFirst("language_model.lm_head".count) }
        if name.hasPrefix("language_model.model.") { return "model.language_model." + name.dropFirst("language_model.model.".count) }
        for p in ["language_model.", "vision_tower.", "multi_modal_projector."] where name.hasPrefix(p) { return "model." + name }
        return name
    }
}

// MARK: - Vision (InternViT)

final class InternViT: @unchecked Sendable {
    let config: InternVLVisionConfiguration
    let patchEmbedding: Linear          // embeddings.patch_embeddings.projection: conv [D, 3, p, p] as [D, 3·p·p]
    let clsToken: [Float]               // embeddings.cls_token [1, 1, D]
    let positionEmbedding: [Float]      // embeddings.position_embeddings [1, 1 + side², D]
    let layers: [VisionEncoderLayer]    // encoder.layer.{i}
    let finalNorm: VisionNorm?          // layernorm (absent with mean pooling)
    let workspace = VisionWorkspace()

    init(config: InternVLVisionConfiguration, checkpoint: Checkpoint, prefix p: String) throws {
        self.config = config
        let d = config.hiddenSize, patch = config.patchSize, side = config.imageSize / patch
        let eps = config.layerNormEps
        func vector(_ name: String, _ n: Int) throws -> [Float] { try checkpoint.tensor(p + name, shape: [n]).floats() }
        func linear(_ name: String, out: Int, in n: Int, bias: Bool = true) throws -> Linear {
            try checkpoint.linear(p + name, out: out, in: n, bias: bias, part: .vision)
        }
        func norm(_ name: String) throws -> VisionNorm {
            config.normType == "rms_norm"
                ? .rmsNorm(weight: try vector(name + ".weight", d), eps: eps)
                : .layerNorm(weight: try vector(name + ".weight", d), bias: try vector(name + ".bias", d), eps: eps)
        }
        let conv = try checkpoint.tensor(p + "embeddings.patch_embeddings.projection.weight", shape: [d, 3, patch, patch])
        patchEmbedding = Linear(weight: conv.reshaped([d, 3 * patch * patch])!,
                                bias: try vector("embeddings.patch_embeddings.projection.bias", d))
        clsToken = try checkpoint.tensor(p + "embeddings.cls_token", shape: [1, 1, d]).floats()
        positionEmbedding = try checkpoint.tensor(p + "embeddings.position_embeddings", shape: [1, 1 + side * side, d]).floats()
        if config.useMaskToken { _ = try checkpoint.tensor(p + "embeddings.mask_token", shape: [1, 1, d]) }  // pre-training only
        let activation = try Activation.named(config.hiddenAct, file: "config.json", field: "vision_config.hidden_act")
        layers = try (0..<config.numHiddenLayers).map { i in
            let l = "encoder.layer.\(i)."
            let qkNorm = config.useQKNorm
            return VisionEncoderLayer(
                norm1: try norm(l + "layernorm_before"),
                q: try linear(l + "attention.q_proj", out: d, in: d, bias: config.attentionBias),
                k: try linear(l + "attention.k_proj", out: d, in: d, bias: config.attentionBias),
                v: try linear(l + "attention.v_proj", out: d, in: d, bias: config.attentionBias),
                out: try linear(l + "attention.projection_layer", out: d, in: d),
                qNorm: qkNorm ? .rmsNorm(weight: try vector(l + "attention.q_norm.weight", d), eps: 1e-6) : nil,
                kNorm: qkNorm ? .rmsNorm(weight: try vector(l + "attention.k_norm.weight", d), eps: 1e-6) : nil,
                layerScale1: try vector(l + "lambda_1", d),
                norm2: try norm(l + "layernorm_after"),
                fc1: try linear(l + "mlp.fc1", out: config.intermediateSize, in: d),
                fc2: try linear(l + "mlp.fc2", out: d, in: config.intermediateSize),
                activation: activation, layerScale2: try vector(l + "lambda_2", d), heads: config.numAttentionHeads)
        }
        finalNorm = config.useMeanPooling ? nil
            : .layerNorm(weight: try vector("layernorm.weight", d), bias: try vector("layernorm.bias", d), eps: eps)
    }

    /// tile [3, H, W] → [1 + patches, D] (row 0 is the CLS token)
    func encode(tile: UnsafePointer<Float>, height: Int, width: Int, pool: ThreadPool) -> [Float] {
        let d = config.hiddenSize, patch = config.patchSize
        let n = (height / patch) * (width / patch) + 1
        let patches = patchify(tile, channels: 3, height: height, width: width, patch: patch)
        var x = [Float](repeating: 0, count: n * d)
        x.withUnsafeMutableBufferPointer { xb in
            let xp = xb.baseAddress!
            for i in 0..<d { xp[i] = clsToken[i] }
            patches.withUnsafeBufferPointer { patchEmbedding.apply($0.baseAddress!, rows: n - 1, into: xp + d, pool: pool) }
            for i in 0..<(n * d) { xp[i] += positionEmbedding[i] }
            for layer in layers { layer.apply(xp, rows: n, workspace: workspace, pool: pool) }
            finalNorm?.apply(xp, rows: n, width: d, into: xp)
        }
        return x
    }
}

// MARK: - Model

public final class InternVLModel: VisionLanguageModel, @unchecked Sendable {
    public let config: InternVLConfiguration
    public let languageModel: LanguageModel
    let vision: InternViT
    let projectorNorm: VisionNorm       // multi_modal_projector.layer_norm (eps 1e-5, nn.LayerNorm default)
    let projector1: Linear              // multi_modal_projector.linear_1 [text hidden, D·s²]
    let projector2: Linear              // multi_modal_projector.linear_2 [text hidden, text hidden]
    let projectorActivation: Activation
    let pool: ThreadPool
    private let lock = NSLock()

    public var imageTokenID: Int { config.imageTokenID }
    public var tokensPerTile: Int {
        let side = config.vision.imageSize / config.vision.patchSize / config.shuffleFactor
        return side * side
    }
    public var tileSize: (height: Int, width: Int) { (config.vision.imageSize, config.vision.imageSize) }

    public var visionFLOPsPerTile: Double {
        let v = config.vision, side = v.imageSize / v.patchSize, s = config.shuffleFactor
        let encoder = vitFLOPs(tokens: side * side + 1, width: v.hiddenSize, intermediate: v.intermediateSize,
                               layers: v.numHiddenLayers, patchInputs: 3 * v.patchSize * v.patchSize)
        let h = Double(config.text.hiddenSize)
        let projector = 2 * Double(tokensPerTile) * (Double(v.hiddenSize * s * s) * h + h * h)
        return encoder + projector
    }

    public init(config: InternVLConfiguration, checkpoint: Checkpoint, pool: ThreadPool) throws {
        try config.validate()
        self.config = config
        self.pool = pool
        languageModel = try LlamaModel(config: config.text, checkpoint: checkpoint, pool: pool,
                                       prefix: "model.language_model.", checkUnused: false)
        vision = try InternViT(config: config.vision, checkpoint: checkpoint, prefix: "model.vision_tower.")
        let s = config.shuffleFactor
        let inWidth = config.vision.hiddenSize * s * s, hidden = config.text.hiddenSize
        let p = "model.multi_modal_projector."
        projectorNorm = .layerNorm(weight: try checkpoint.tensor(p + "layer_norm.weight", shape: [inWidth]).floats(),
                                   bias: try checkpoint.tensor(p + "layer_norm.bias", shape: [inWidth]).floats(), eps: 1e-5)
        projector1 = try checkpoint.linear(p + "linear_1", out: hidden, in: inWidth, bias: true, part: .vision)
        projector2 = try checkpoint.linear(p + "linear_2", out: hidden, in: hidden, bias: true, part: .vision)
        projectorActivation = try Activation.named(config.projectorHiddenAct, file: "config.json", field: "projector_hidden_act")
        try checkpoint.checkAllUsed()
    }

    public func encodeImage(tiles: UnsafePointer<Float>, count: Int, height: Int, width: Int) throws -> [Float] {
        let size = config.vision.imageSize
        // Position embeddings are trained for one tile size; transformers would interpolate, the processor never needs it.
        guard height == size, width == size else { throw VisionInputError.tileSize(expected: size, foundHeight: height, foundWidth: width) }
        lock.lock(); defer { lock.unlock() }
        let d = config.vision.hiddenSize, side = size / config.vision.patchSize, s = config.shuffleFactor
        let hidden = config.text.hiddenSize, perTile = tokensPerTile, inWidth = d * s * s
        var out = [Float](repeating: 0, count: count * perTile * hidden)
        var mid = [Float](repeating: 0, count: perTile * hidden)
        for t in 0..<count {
            let features = vision.encode(tile: tiles + t * 3 * height * width, height: height, width: width, pool: pool)
            // Drop CLS (vision_feature_select_strategy "default"), then shuffle the side × side grid.
            var shuffled = features.withUnsafeBufferPointer { pixelShuffle($0.baseAddress! + d, side: side, dim: d, factor: s) }
            shuffled.withUnsafeMutableBufferPointer { sh in
                projectorNorm.apply(sh.baseAddress!, rows: perTile, width: inWidth, into: sh.baseAddress!)
                mid.withUnsafeMutableBufferPointer { m in
                    projector1.apply(sh.baseAddress!, rows: perTile, into: m.baseAddress!, pool: pool)
                    projectorActivation.apply(m.baseAddress!, count: perTile * hidden)
                    out.withUnsafeMutableBufferPointer { o in
                        projector2.apply(m.baseAddress!, rows: perTile, into: o.baseAddress! + t * perTile * hidden, pool: pool)
                    }
                }
            }
        }
        return out
    }
}
