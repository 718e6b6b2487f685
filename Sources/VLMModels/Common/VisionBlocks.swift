// Building blocks shared by the vision encoders (SigLIP in Idefics3.swift, InternViT in InternVL.swift):
// normalisation, activations, the pre-norm transformer layer with bidirectional attention, patch extraction and
// pixel shuffle.
import CKernels
import VLMCore

/// A normalisation over the last dimension.
public enum VisionNorm: @unchecked Sendable {
    case layerNorm(weight: [Float], bias: [Float], eps: Float)
    case rmsNorm(weight: [Float], eps: Float)

    /// x, out: [rows, width]; may alias. Rows are split over `pool` when one is given (each row on its own, so
    /// the result is the same).
    func apply(_ x: UnsafePointer<Float>, rows: Int, width: Int, into out: UnsafeMutablePointer<Float>,
               pool: ThreadPool? = nil) {
        let row = { (r: Int) in
            switch self {
            case .layerNorm(let w, let b, let eps): vk_layernorm(x + r * width, w, b, width, eps, out + r * width)
            case .rmsNorm(let w, let eps): vk_rmsnorm(x + r * width, w, width, eps, out + r * width)
            }
        }
        if let pool { pool.forEachIndex(rows, row) } else { for r in 0..<rows { row(r) } }
    }
}

/// Activation functions by their transformers names (ACT2FN keys).
public enum Activation: String, Sendable, CaseIterable {
    case gelu = "gelu"
    case geluTanh = "gelu_pytorch_tanh"
    case geluNew = "gelu_new"

    func apply(_ x: UnsafeMutablePointer<Float>, count: Int) {
        switch self {
        case .gelu: vk_gelu_erf(x, count)
        case .geluTanh, .geluNew: vk_gelu_tanh(x, count)
        }
    }

    /// x: [rows, width], row by row (so a vector body's tail falls where it does whatever the split), rows split
    /// over the pool.
    func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int, pool: ThreadPool) {
        pool.forEachIndex(rows) { r in apply(x + r * width, count: width) }
    }

    static func named(_ name: String, file: String, field: String) throws -> Activation {
        guard let a = Activation(rawValue: name) else {
            throw ModelFileError(file: file, "\(field) '\(name)' is not supported (supported: \(allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return a
    }
}

/// One pre-norm vision transformer layer:
///   h = x + scale1 ⊙ out_proj(attention(q_norm(q(norm1(x))), k_norm(k(norm1(x))), v(norm1(x))))
///   y = h + scale2 ⊙ fc2(act(fc1(norm2(h))))
/// SigLIP uses it without layer scale and q/k norms; InternViT with layer scale (and q/k RMS norms when set).
struct VisionEncoderLayer: @unchecked Sendable {
    let norm1: VisionNorm
    let q: Linear, k: Linear, v: Linear, out: Linear
    let qNorm: VisionNorm?, kNorm: VisionNorm?
    let layerScale1: [Float]?
    let norm2: VisionNorm
    let fc1: Linear, fc2: Linear
    let activation: Activation
    let layerScale2: [Float]?
    let heads: Int

    /// x: [rows, width] updated in place. Every token attends to every token of the same tile.
    func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, workspace ws: VisionWorkspace, pool: ThreadPool) {
        let width = q.inFeatures
        let headDim = width / heads
        ws.reserve(rows: rows, width: width, intermediate: fc1.outFeatures, threads: pool.threadCount)
        let normed = ws.normed, qs = ws.q, ks = ws.k, vs = ws.v, attn = ws.attention, tmp = ws.out, mlp = ws.mlp

        norm1.apply(x, rows: rows, width: width, into: normed, pool: pool)
        q.apply(normed, rows: rows, into: qs, pool: pool)
        k.apply(normed, rows: rows, into: ks, pool: pool)
        v.apply(normed, rows: rows, into: vs, pool: pool)
        qNorm?.apply(qs, rows: rows, width: width, into: qs, pool: pool)
        kNorm?.apply(ks, rows: rows, width: width, into: ks, pool: pool)
        let scale = 1 / Float(headDim).squareRoot()
        // --bf16-compute (the projections' flag) takes the attention products to bf16 too, on AMX tiles where present.
        let attention = q.bf16Products ? vk_attention_head_bf16 : vk_attention_head
        pool.parallelRanges(heads) { thread, range in
            let scores = ws.scores(thread)
            for h in range {
                attention(qs + h * headDim, rows, width, ks + h * headDim, vs + h * headDim, width, headDim,
                                  0, 0, rows, scale, attn + h * headDim, width, scores)
            }
        }
        out.apply(attn, rows: rows, into: tmp, pool: pool)
        addResidual(tmp, scale: layerScale1, into: x, rows: rows, width: width, pool: pool)

        norm2.apply(x, rows: rows, width: width, into: normed, pool: pool)
        fc1.apply(normed, rows: rows, into: mlp, pool: pool)
        activation.apply(mlp, rows: rows, width: fc1.outFeatures, pool: pool)
        fc2.apply(mlp, rows: rows, into: tmp, pool: pool)
        addResidual(tmp, scale: layerScale2, into: x, rows: rows, width: width, pool: pool)
    }

    private func addResidual(_ y: UnsafeMutablePointer<Float>, scale: [Float]?, into x: UnsafeMutablePointer<Float>, rows: Int, width: Int,
                             pool: ThreadPool) {
        pool.forEachIndex(rows) { r in
            let yr = y + r * width, xr = x + r * width
            if let scale {
                for i in 0..<width { xr[i] += scale[i] * yr[i] }
            } else {
                vk_axpy(1, yr, xr, width)
            }
        }
    }
}

/// Activation buffers of a vision encoder, grown to the largest tile seen.
final class VisionWorkspace: @unchecked Sendable {
    private(set) var normed: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var q: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var k: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var v: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var attention: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var out: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private(set) var mlp: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private var scoreBuffers: [UnsafeMutablePointer<Float>] = []
    private var size = (rows: 0, width: 0, intermediate: 0, threads: 0)

    func reserve(rows: Int, width: Int, intermediate: Int, threads: Int) {
        if size.rows >= rows, size.width >= width, size.intermediate >= intermediate, size.threads == threads { return }
        release()
        let n = rows * width
        normed = .allocate(capacity: n); q = .allocate(capacity: n); k = .allocate(capacity: n)
        v = .allocate(capacity: n); attention = .allocate(capacity: n); out = .allocate(capacity: n)
        mlp = .allocate(capacity: rows * intermediate)
        scoreBuffers = (0..<threads).map { _ in .allocate(capacity: rows) }
        size = (rows, width, intermediate, threads)
    }

    func scores(_ thread: Int) -> UnsafeMutablePointer<Float> { scoreBuffers[thread] }

    private func release() {
        for p in [normed, q, k, v, attention, out, mlp] { p.deallocate() }
        for p in scoreBuffers { p.deallocate() }
        scoreBuffers = []
    }

    deinit { release() }
}

/// Cuts a channel-first tile [3, height, width] into non-overlapping patches, one row per patch in row-major
/// patch order, each row ordered (channel, y, x) like a conv kernel [out, 3, p, p] flattened, so that the
/// patch-embedding convolution becomes one matrix product. Returns [patchesY * patchesX, 3 * p * p].
func patchify(_ pixels: UnsafePointer<Float>, channels: Int, height: Int, width: Int, patch p: Int) -> [Float] {
    let py = height / p, px = width / p, rowWidth = channels * p * p
    var out = [Float](repeating: 0, count: py * px * rowWidth)
    out.withUnsafeMutableBufferPointer { o in
        for y in 0..<py {
            for x in 0..<px {
                var dst = o.baseAddress! + (y * px + x) * rowWidth
                for c in 0..<channels {
                    for ky in 0..<p {
                        let src = pixels + (c * height + y * p + ky) * width + x * p
                        dst.update(from: src, count: p)
                        dst += p
                    }
                }
            }
        }
    }
    return out
}

/// Pixel shuffle of a square grid of features, as Idefics3's connector and InternVL's get_image_features do it:
/// x [side*side, dim] → [(side/s)², dim*s²] with
///   out[i'*(side/s) + j'][r*dim*s + c*dim + d] = x[(i'*s + r)*side + (j'*s + c)][d].
func pixelShuffle(_ x: UnsafePointer<Float>, side: Int, dim: Int, factor s: Int) -> [Float] {
    let outSide = side / s, outDim = dim * s * s
    var out = [Float](repeating: 0, count: outSide * outSide * outDim)
    out.withUnsafeMutableBufferPointer { o in
        for i in 0..<outSide {
            for j in 0..<outSide {
                let row = o.baseAddress! + (i * outSide + j) * outDim
                for r in 0..<s {
                    for c in 0..<s {
                        (row + r * dim * s + c * dim).update(from: x + ((i * s + r) * side + (j * s + c)) * dim, count: dim)
                    }
                }
            }
        }
    }
    return out
}
