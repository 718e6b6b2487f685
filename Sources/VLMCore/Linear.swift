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
    /// pool's threads, so every thread streams a disjoint part of the weights.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let k = inFeatures, n = outFeatures
        let dtype = weight.dtype.kernelType
        let w = weight.data
        bias.withOptionalPointer { b in
            pool.parallelRanges(n, granularity: 12) { slice, range in
                let scratch = pool.scratch(slice, floats: 4 * k)
                vk_matmul(x, rows, k, k, w, dtype, range.lowerBound, range.upperBound, b, y, n, scratch)
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
