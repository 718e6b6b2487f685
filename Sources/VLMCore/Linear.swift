import CKernels

/// y = x Wᵀ + b with W [out, in] either as stored in the checkpoint (f32/f16/bf16, read in place) or quantized
/// (int8/int4 with f16 group scales, see `QuantizedMatrix`).
public struct Linear: @unchecked Sendable {
    /// Where the weights live.
    public enum Weights: @unchecked Sendable {
        case dense(Tensor)
        case quantized(QuantizedMatrix)
    }

    public let weights: Weights
    public let bias: [Float]?

    public init(weight: Tensor, bias: [Float]? = nil) {
        weights = .dense(weight)
        self.bias = bias
    }

    public init(quantized: QuantizedMatrix, bias: [Float]? = nil) {
        weights = .quantized(quantized)
        self.bias = bias
    }

    public var inFeatures: Int {
        switch weights {
        case .dense(let t): return t.shape[1]
        case .quantized(let q): return q.columns
        }
    }

    public var outFeatures: Int {
        switch weights {
        case .dense(let t): return t.shape[0]
        case .quantized(let q): return q.rows
        }
    }

    /// Bytes of weights (and scales) one application streams: what bounds decode speed.
    public var weightBytes: Int {
        switch weights {
        case .dense(let t): return t.count * t.dtype.byteSize
        case .quantized(let q): return q.byteCount
        }
    }

    /// "BF16", "F32", ... for dense weights; "q8" or "q4" when quantized.
    public var formatName: String {
        switch weights {
        case .dense(let t): return t.dtype.safetensorsName
        case .quantized(let q): return q.scheme.name
        }
    }

    /// The quantization scheme, nil for dense weights.
    public var quantizationScheme: QuantizationScheme? {
        if case .quantized(let q) = weights { return q.scheme }
        return nil
    }

    /// x: [rows, inFeatures] (row stride inFeatures); y: [rows, outFeatures]. Output rows are split across the
    /// pool's threads in whole 16-row panels of the GEMM, so every thread streams (and, for several rows, packs)
    /// a disjoint part of the weights.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let k = inFeatures, n = outFeatures
        switch weights {
        case .dense(let weight):
            let dtype = weight.dtype.kernelType
            let w = weight.data
            bias.withOptionalPointer { b in
                pool.parallelRanges(n, granularity: Int(VK_MATMUL_GRANULARITY)) { thread, range in
                    let lo = range.lowerBound, hi = range.upperBound
                    let floats = vk_matmul_scratch_floats(rows, k, lo, hi)
                    let scratch = pool.scratch(thread, floats: max(floats, 16))
                    vk_matmul_ws(x, rows, k, k, w, dtype, lo, hi, b, y, n, scratch, max(floats, 16))
                }
            }
        case .quantized(let q):
            let group = q.scheme.groupSize
            // One read-only descriptor shared by all slices (a pointer, not an inout access per thread).
            withUnsafePointer(to: q.kernelMatrix) { matrix in
                bias.withOptionalPointer { b in
                    pool.parallelRanges(n, granularity: Int(VK_MATMUL_GRANULARITY)) { thread, range in
                        let lo = range.lowerBound, hi = range.upperBound
                        let floats = max(vk_matmul_q_scratch_floats(rows, k, group, lo, hi), 16)
                        let scratch = pool.scratch(thread, floats: floats)
                        vk_matmul_q_ws(x, rows, k, k, matrix, lo, hi, b, y, n, scratch, floats)
                    }
                }
            }
        }
    }
}

extension Optional where Wrapped == [Float] {
    func withOptionalPointer<R>(_ body: (UnsafePointer<Float>?) -> R) -> R {
        switch self {
        case .some(let a): return a.withUnsafeBufferPointer { body($0.baseAddress) }
        case .none: return body(nil)
        }
    }
}
