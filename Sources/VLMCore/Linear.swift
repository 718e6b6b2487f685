import CKernels

/// y = x Wᵀ + b with W as stored in the checkpoint ([out, in], f32/f16/bf16, read in place).
public struct Linear: @unchecked Sendable {
    public let weight: Tensor
    public let bias: [Float]?

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public init(weight: Tensor, bias: [Float]? = nil) {
        self.weight = weight
        self.bias = bias
    }

    /// x: [rows, inFeatures] (row stride inFeatures); y: [rows, outFeatures]. Output rows are split across the
    /// pool's threads in whole 16-row panels of the GEMM, so every thread streams (and, for several rows, packs)
    /// a disjoint part of the weights.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let k = inFeatures, n = outFeatures
        let dtype = weight.dtype.kernelType
        let w = weight.data
        bias.withOptionalPointer { b in
            pool.parallelRanges(n, granularity: Int(VK_MATMUL_GRANULARITY)) { slice, range in
                let lo = range.lowerBound, hi = range.upperBound
                let floats = vk_matmul_scratch_floats(rows, k, lo, hi)
                let scratch = pool.scratch(slice, floats: max(floats, 16))
                vk_matmul_ws(x, rows, k, k, w, dtype, lo, hi, b, y, n, scratch, max(floats, 16))
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
