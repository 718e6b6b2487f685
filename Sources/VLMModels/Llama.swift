// Llama-family decoder (SmolLM2, Llama 3.x, and Qwen2 through Qwen2.swift).
// Reference: transformers 5.23 models/llama/modeling_llama.py (LlamaForCausalLM, eager attention).
//
//   x = embed(tokens)
//   for each layer:  h = x + o_proj(attention(rope(q_proj(norm(x))), rope(k_proj(norm(x))), v_proj(norm(x))))
//                    x = h + down_proj(silu(gate_proj(norm(h))) * up_proj(norm(h)))
//   logits = lm_head(norm(x))
import CKernels
import Foundation
import VLMCore

// MARK: - Configuration

/// config.json of `llama` and `qwen2` models, in the transformers 4.x or 5.x layout.
public struct LlamaConfiguration: Decodable, Sendable {
    public var modelType: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var vocabSize: Int
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var rope: RopeConfiguration
    /// Bias on q/k/v projections (Qwen2 always; Llama when attention_bias is set, which also biases o_proj).
    public var qkvBias: Bool
    public var outputBias: Bool
    public var mlpBias: Bool
    public var hiddenAct: String
    public var useSlidingWindow: Bool
    public var eosTokenIDs: [Int]
    public var bosTokenID: Int?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads", headDim = "head_dim", rmsNormEps = "rms_norm_eps"
        case vocabSize = "vocab_size", maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings", ropeTheta = "rope_theta", ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters", attentionBias = "attention_bias", mlpBias = "mlp_bias"
        case hiddenAct = "hidden_act", useSlidingWindow = "use_sliding_window"
        case eosTokenID = "eos_token_id", bosTokenID = "bos_token_id"
    }

    /// transformers writes config.json as a diff against the class defaults, so a field equal to its default may
    /// be missing; these are LlamaConfig's and Qwen2Config's defaults (transformers 5.23).
    static func defaults(for modelType: String) -> (vocab: Int, hidden: Int, intermediate: Int, layers: Int, heads: Int, maxPositions: Int) {
        modelType == "qwen2" ? (151_936, 4096, 22016, 32, 32, 32768) : (32000, 4096, 11008, 32, 32, 2048)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "llama"
        let d = Self.defaults(for: modelType)
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? d.hidden
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? d.intermediate
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? d.layers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? d.heads
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
            ?? (numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0)
        rmsNormEps = try c.decodeIfPresent(Float.self, forKey: .rmsNormEps) ?? 1e-6
        vocabSize = try c.decodeIfPresent(Int.self, forKey: .vocabSize) ?? d.vocab
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? d.maxPositions
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        rope = RopeConfiguration(
            ropeParameters: try c.decodeIfPresent(RopeConfiguration.Fields.self, forKey: .ropeParameters),
            ropeScaling: try c.decodeIfPresent(RopeConfiguration.Fields.self, forKey: .ropeScaling),
            topLevelTheta: try c.decodeIfPresent(Double.self, forKey: .ropeTheta),
            defaultTheta: 10_000)
        let attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? false
        qkvBias = modelType == "qwen2" ? true : attentionBias
        outputBias = modelType == "qwen2" ? false : attentionBias
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? "silu"
        useSlidingWindow = try c.decodeIfPresent(Bool.self, forKey: .useSlidingWindow) ?? false
        eosTokenIDs = try c.decodeIfPresent(OneOrManyInts.self, forKey: .eosTokenID)?.values ?? []
        bosTokenID = try? c.decodeIfPresent(Int.self, forKey: .bosTokenID)
    }

    /// Checks the values make a runnable model; the message names the field and the value.
    public func validate(file: String = "config.json") throws {
        func positive(_ v: Int, _ name: String) throws {
            guard v > 0 else { throw ModelFileError(file: file, "'\(name)' must be positive, found \(v)") }
        }
        try positive(hiddenSize, "hidden_size")
        try positive(intermediateSize, "intermediate_size")
        try positive(numHiddenLayers, "num_hidden_layers")
        try positive(numAttentionHeads, "num_attention_heads")
        try positive(numKeyValueHeads, "num_key_value_heads")
        try positive(headDim, "head_dim")
        try positive(vocabSize, "vocab_size")
        try positive(maxPositionEmbeddings, "max_position_embeddings")
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw ModelFileError(file: file, "num_attention_heads \(numAttentionHeads) is not a multiple of num_key_value_heads \(numKeyValueHeads)")
        }
        guard headDim % 2 == 0 else {
            throw ModelFileError(file: file, "head_dim \(headDim) must be even for rotary embeddings")
        }
        guard hiddenAct == "silu" else {
            throw ModelFileError(file: file, "hidden_act '\(hiddenAct)' is not supported for \(modelType) (supported: silu)")
        }
        guard !useSlidingWindow else {
            throw ModelFileError(file: file, "use_sliding_window true is not supported yet")
        }
        try rope.validate(file: file)
    }
}

// MARK: - Weights

/// One decoder layer's weights, addressed by their checkpoint names `model.layers.{i}.*`.
struct LlamaLayer: @unchecked Sendable {
    let inputNorm: [Float]          // input_layernorm.weight [hidden]
    let q: Linear                   // self_attn.q_proj [heads*headDim, hidden]
    let k: Linear                   // self_attn.k_proj [kvHeads*headDim, hidden]
    let v: Linear                   // self_attn.v_proj [kvHeads*headDim, hidden]
    let o: Linear                   // self_attn.o_proj [hidden, heads*headDim]
    let postAttentionNorm: [Float]  // post_attention_layernorm.weight [hidden]
    let gate: Linear                // mlp.gate_proj [intermediate, hidden]
    let up: Linear                  // mlp.up_proj [intermediate, hidden]
    let down: Linear                // mlp.down_proj [hidden, intermediate]
}

// MARK: - Model

public final class LlamaModel: LanguageModel, @unchecked Sendable {
    public let config: LlamaConfiguration
    let embedTokens: Tensor          // model.embed_tokens.weight [vocab, hidden]
    let layers: [LlamaLayer]
    let finalNorm: [Float]           // model.norm.weight [hidden]
    let lmHead: Linear               // lm_head.weight, or the embedding when tied
    let rotary: RotaryEmbedding
    let pool: ThreadPool
    private let workspace = DecoderWorkspace()
    private let lock = NSLock()

    public var vocabularySize: Int { config.vocabSize }
    public var hiddenSize: Int { config.hiddenSize }
    public var maxContextLength: Int { config.maxPositionEmbeddings }
    public var eosTokenIDs: [Int] { config.eosTokenIDs }
    public var weightDType: DType { embedTokens.dtype }

    /// `prefix` is where the decoder's weights live ("model." for text models, "model.text_model." inside
    /// Idefics3, "model.language_model." inside InternVL); `checkUnused` is off when the decoder is part of a
    /// larger model whose loader checks the whole checkpoint.
    public init(config: LlamaConfiguration, checkpoint: Checkpoint, pool: ThreadPool,
                prefix: String = "model.", checkUnused: Bool = true) throws {
        try config.validate()
        self.config = config
        self.pool = pool
        let d = config.hiddenSize, hd = config.headDim, i = config.intermediateSize
        let qOut = config.numAttentionHeads * hd, kvOut = config.numKeyValueHeads * hd

        var expected = [prefix + "embed_tokens.weight", prefix + "norm.weight"]
        if !config.tieWordEmbeddings { expected.append("lm_head.weight") }
        for l in 0..<config.numHiddenLayers {
            let p = prefix + "layers.\(l)."
            expected += ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                         "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                         "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"].map { p + $0 }
            if config.qkvBias { expected += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"].map { p + $0 } }
            if config.outputBias { expected.append(p + "self_attn.o_proj.bias") }
            if config.mlpBias { expected += ["mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias"].map { p + $0 } }
        }
        try checkpoint.requireAll(expected)

        func vector(_ name: String, _ n: Int) throws -> [Float] { try checkpoint.tensor(name, shape: [n]).floats() }
        func linear(_ name: String, out: Int, in inFeatures: Int, bias: Bool) throws -> Linear {
            try checkpoint.linear(name, out: out, in: inFeatures, bias: bias)
        }

        embedTokens = try checkpoint.tensor(prefix + "embed_tokens.weight", shape: [config.vocabSize, d])
        finalNorm = try vector(prefix + "norm.weight", d)
        if config.tieWordEmbeddings {
            // The head is the embedding matrix. A float decoder uses it as stored; a quantized one computes logits
            // from an int8 copy (Checkpoint.tiedHeadScheme), while the embedding lookups keep the float rows.
            if let scheme = checkpoint.tiedHeadScheme {
                lmHead = Linear(quantized: checkpoint.quantizedCopy(of: embedTokens, scheme: scheme))
            } else {
                lmHead = Linear(weight: embedTokens)
            }
            // Some tied checkpoints still store a copy of the head; it is the same matrix, so it is not read.
            checkpoint.ignore { $0 == "lm_head.weight" }
        } else {
            lmHead = try linear("lm_head", out: config.vocabSize, in: d, bias: false)
        }
        var layers: [LlamaLayer] = []
        for l in 0..<config.numHiddenLayers {
            let p = prefix + "layers.\(l)."
            layers.append(LlamaLayer(
                inputNorm: try vector(p + "input_layernorm.weight", d),
                q: try linear(p + "self_attn.q_proj", out: qOut, in: d, bias: config.qkvBias),
                k: try linear(p + "self_attn.k_proj", out: kvOut, in: d, bias: config.qkvBias),
                v: try linear(p + "self_attn.v_proj", out: kvOut, in: d, bias: config.qkvBias),
                o: try linear(p + "self_attn.o_proj", out: d, in: qOut, bias: config.outputBias),
                postAttentionNorm: try vector(p + "post_attention_layernorm.weight", d),
                gate: try linear(p + "mlp.gate_proj", out: i, in: d, bias: config.mlpBias),
                up: try linear(p + "mlp.up_proj", out: i, in: d, bias: config.mlpBias),
                down: try linear(p + "mlp.down_proj", out: d, in: i, bias: config.mlpBias)))
        }
        self.layers = layers
        // Older checkpoints carry precomputed rotary tables; we compute them from the config instead.
        checkpoint.ignore { $0.hasSuffix("rotary_emb.inv_freq") }
        if checkUnused { try checkpoint.checkAllUsed() }
        rotary = RotaryEmbedding(headDim: hd, configuration: config.rope)
    }

    public var weightBytesPerToken: Int {
        let perLayer = layers.first.map { l in
            [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].reduce(0) { $0 + $1.weightBytes }
        } ?? 0
        return perLayer * layers.count + lmHead.weightBytes
    }

    /// The decoder layers' weight format: "q8"/"q4" when quantized, else the stored dtype.
    public var weightFormat: String { layers.first?.q.formatName ?? embedTokens.dtype.safetensorsName }

    public func makeCache(maxTokens: Int?) -> KVCache {
        KVCache(layers: config.numHiddenLayers, kvHeads: config.numKeyValueHeads, headDim: config.headDim,
                maxTokens: min(maxTokens ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings))
    }

    public func embed(_ ids: [Int], into out: UnsafeMutablePointer<Float>) throws {
        for (r, id) in ids.enumerated() {
            guard id >= 0, id < config.vocabSize else {
                throw ModelRunError.tokenOutOfRange(id: id, vocabularySize: config.vocabSize)
            }
            embedTokens.copyRow(id, into: out + r * config.hiddenSize)
        }
    }

    public func forward(embeddings: UnsafePointer<Float>, rows: Int, cache: KVCache) throws -> [Float] {
        guard rows > 0 else { throw ModelRunError.emptyInput }
        guard cache.count + rows <= cache.maxTokens else {
            throw ModelRunError.contextOverflow(needed: cache.count + rows, limit: cache.maxTokens)
        }
        lock.lock(); defer { lock.unlock() }
        let d = config.hiddenSize, hd = config.headDim
        let heads = config.numAttentionHeads, kvHeads = config.numKeyValueHeads
        let qWidth = heads * hd, kvWidth = kvHeads * hd
        let p0 = cache.count
        cache.reserve(rows)
        let ws = workspace
        let chunked = rows == 1 && DecodeAttentionChunks.applies(keys: p0 + 1, headDim: hd)
        ws.reserve(rows: rows, hidden: d, qWidth: qWidth, kvWidth: kvWidth, intermediate: config.intermediateSize,
                   scores: chunked ? heads * DecodeAttentionChunks.longest(keys: p0 + 1) : (p0 + rows) * heads / kvHeads,
                   threads: pool.threadCount, heads: heads)
        let x = ws.x, xn = ws.normed, q = ws.q, att = ws.attention, gate = ws.gate, up = ws.up, out = ws.out
        x.update(from: embeddings, count: rows * d)
        let scale = 1 / Float(hd).squareRoot()
        let groups = heads / kvHeads

        for (l, layer) in layers.enumerated() {
            // Attention block. Norms, activations and residual adds go row by row over the pool (prefill), so
            // the result does not depend on the split.
            pool.forEachIndex(rows) { r in vk_rmsnorm(x + r * d, layer.inputNorm, d, config.rmsNormEps, xn + r * d) }
            let kRows = cache.keys(layer: l) + p0 * kvWidth, vRows = cache.values(layer: l) + p0 * kvWidth
            // q, k and v in one pool job; k and v are written straight into the cache.
            Linear.apply([layer.q, layer.k, layer.v], to: xn, rows: rows, into: [q, kRows, vRows], pool: pool)
            pool.parallelRanges(rows) { _, rr in
                rotary.apply(q + rr.lowerBound * qWidth, rows: rr.count, rowStride: qWidth, heads: heads,
                             position0: p0 + rr.lowerBound)
                rotary.apply(kRows + rr.lowerBound * kvWidth, rows: rr.count, rowStride: kvWidth, heads: kvHeads,
                             position0: p0 + rr.lowerBound)
            }
            let keys = cache.keys(layer: l), values = cache.values(layer: l)
            // --bf16-compute (the projections' flag) takes the attention products to bf16 too (AMX, 16+ queries).
            let attention = layer.q.bf16Products ? vk_attention_head_bf16 : vk_attention_head
            if chunked {
                // Decode over a long cache: the positions in fixed chunks (all heads each), merged in order, so each
                // thread reads whole cache rows in sequence (DecodeAttentionChunks).
                let nk = p0 + 1, chunks = DecodeAttentionChunks.count
                let o = ws.partialOutputs, m = ws.partialMax, s = ws.partialSums
                pool.parallelRanges(chunks) { thread, range in
                    for c in range {
                        let k0 = DecodeAttentionChunks.start(c, keys: nk), k1 = DecodeAttentionChunks.start(c + 1, keys: nk)
                        vk_attention_decode_chunk(q, heads, hd, kvHeads, keys, values, kvWidth, hd, k0, k1, scale,
                                                  o + c * heads * hd, m + c * heads, s + c * heads, ws.scores(thread))
                    }
                }
                vk_attention_decode_merge(chunks, heads, hd, o, m, s, att, hd)
            } else {
                pool.parallelRanges(heads) { thread, range in
                    let scores = ws.scores(thread)
                    if rows == 1 {
                        // Decode: each run of query heads on one KV head in one call, which reads those keys and
                        // values once (bf16 attention is the f32 kernel below 16 queries anyway).
                        var h = range.lowerBound
                        while h < range.upperBound {
                            let g = h / groups, end = min(range.upperBound, (g + 1) * groups)
                            vk_attention_decode_group(q + h * hd, end - h, hd, keys + g * hd, values + g * hd, kvWidth, hd,
                                                      p0 + 1, scale, att + h * hd, hd, scores)
                            h = end
                        }
                        return
                    }
                    for h in range {
                        let g = h / groups  // grouped-query attention: query head h reads KV head h / groups
                        attention(q + h * hd, rows, qWidth, keys + g * hd, values + g * hd, kvWidth, hd,
                                          p0, 1, p0 + rows, scale, att + h * hd, qWidth, scores)
                    }
                }
            }
            layer.o.apply(att, rows: rows, into: out, pool: pool)
            pool.forEachIndex(rows) { r in vk_axpy(1, out + r * d, x + r * d, d) }

            // MLP block (SwiGLU).
            pool.forEachIndex(rows) { r in vk_rmsnorm(x + r * d, layer.postAttentionNorm, d, config.rmsNormEps, xn + r * d) }
            // gate and up in one pool job; each slice applies SiLU(gate) * up to the columns it computed.
            let inter = config.intermediateSize
            Linear.apply([layer.gate, layer.up], to: xn, rows: rows, into: [gate, up], pool: pool) { cols in
                for r in 0..<rows { vk_silu_mul(gate + r * inter + cols.lowerBound, up + r * inter + cols.lowerBound, cols.count) }
            }
            layer.down.apply(up, rows: rows, into: out, pool: pool)
            pool.forEachIndex(rows) { r in vk_axpy(1, out + r * d, x + r * d, d) }
        }
        cache.advance(by: rows)

        // Only the last position's logits are needed to pick the next token.
        let last = x + (rows - 1) * d
        vk_rmsnorm(last, finalNorm, d, config.rmsNormEps, xn)
        var logits = [Float](repeating: 0, count: config.vocabSize)
        logits.withUnsafeMutableBufferPointer { lmHead.apply(xn, rows: 1, into: $0.baseAddress!, pool: pool) }
        return logits
    }
}

/// Activation buffers reused across forward calls, grown to the largest chunk seen.
final class DecoderWorkspace: @unchecked Sendable {
    private(set) var x: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var normed: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var q: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var attention: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var gate: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var up: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var out: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private var scoreBuffers: [UnsafeMutablePointer<Float>] = []
    private var rows = 0, scoreFloats = 0, threads = 0, partialHeads = 0, partialWidth = 0
    /// Decode attention's per-chunk state (DecodeAttentionChunks): o [chunks][heads][head_dim], max and sum [chunks][heads].
    private(set) var partialOutputs: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var partialMax: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var partialSums: UnsafeMutablePointer<Float> = .allocate(capacity: 1)

    /// scores: floats of attention scores per thread (keys x the query heads of one KV head, for decode's groups).
    func reserve(rows: Int, hidden: Int, qWidth: Int, kvWidth: Int, intermediate: Int, scores: Int, threads: Int,
                 heads: Int) {
        if heads != partialHeads || qWidth != partialWidth {
            for p in [partialOutputs, partialMax, partialSums] { p.deallocate() }
            partialOutputs = .allocate(capacity: DecodeAttentionChunks.count * max(1, qWidth))
            partialMax = .allocate(capacity: DecodeAttentionChunks.count * max(1, heads))
            partialSums = .allocate(capacity: DecodeAttentionChunks.count * max(1, heads))
            partialHeads = heads
            partialWidth = qWidth
        }
        if rows > self.rows {
            for p in [x, normed, q, attention, gate, up, out] { p.deallocate() }
            x = .allocate(capacity: rows * hidden)
            normed = .allocate(capacity: rows * max(hidden, qWidth))
            q = .allocate(capacity: rows * qWidth)
            attention = .allocate(capacity: rows * qWidth)
            gate = .allocate(capacity: rows * intermediate)
            up = .allocate(capacity: rows * intermediate)
            out = .allocate(capacity: rows * hidden)
            self.rows = rows
        }
        if scores > scoreFloats || threads != self.threads {
            for p in scoreBuffers { p.deallocate() }
            let n = max(scores, scoreFloats * 2)
            scoreBuffers = (0..<threads).map { _ in .allocate(capacity: n) }
            scoreFloats = n
            self.threads = threads
        }
    }

    func scores(_ thread: Int) -> UnsafeMutablePointer<Float> { scoreBuffers[thread] }

    deinit {
        for p in [x, normed, q, attention, gate, up, out] { p.deallocate() }
        for p in scoreBuffers { p.deallocate() }
        for p in [partialOutputs, partialMax, partialSums] { p.deallocate() }
    }
}

/// How decode splits attention over a long cache: the positions in `count` chunks (a fixed number, so the result does
/// not depend on the thread count), each a multiple of 16 long but the last, every chunk covering all heads
/// (vk_attention_decode_chunk), then merged in order. Below `minimumKeys` positions, or where the kernel has no vector
/// body, the heads are split across threads instead (vk_attention_decode_group): a strided read of each KV head's
/// part of every row, which from memory ran at 13 GB/s where whole rows in order reach 26 (Zen 4, 1124 positions:
/// 220 -> 111 us per layer; 192 positions about even, 128 faster by heads while the cache sits in L3).
enum DecodeAttentionChunks {
    static let count = 16
    static let minimumKeys = 192

    static func applies(keys: Int, headDim: Int) -> Bool {
        keys >= minimumKeys && vk_attention_decode_chunks_preferred(headDim) != 0
    }

    /// First position of chunk c (c == count: the end).
    static func start(_ c: Int, keys: Int) -> Int {
        c >= count ? keys : keys * c / count / 16 * 16
    }

    /// The most positions one chunk holds.
    static func longest(keys: Int) -> Int { keys / count + 16 }
}
