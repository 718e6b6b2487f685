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
    /// Products of many rows (prefill, vision) in bf16 where the CPU has AVX-512 BF16 (`QuantizationOptions`).
    public let bf16Products: Bool

    public init(weight: Tensor, bias: [Float]? = nil, bf16Products: Bool = false) {
        weights = .dense(weight)
        self.bias = bias
        self.bf16Products = bf16Products
    }

    public init(quantized: QuantizedMatrix, bias: [Float]? = nil) {
        weights = .quantized(quantized)
        self.bias = bias
        self.bf16Products = false
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
        pool.parallelRanges(outFeatures, granularity: Int(VK_MATMUL_GRANULARITY)) { thread, range in
            applyOutputs(range, x, rows: rows, into: y, scratch: pool, thread: thread)
        }
    }

    /// The products of one input with several matrices of the same inFeatures (a layer's q, k and v; gate and up)
    /// as one pool job: slice s computes the same share of every product's output rows (as `apply` would split each,
    /// in whole 16-row panels), then calls `then` with the rows of the first product it computed. Decode makes one
    /// fork and join for all of them instead of one per matrix (with a few microseconds of work per matrix, the
    /// joins' spin-waits were a tenth of a q4 decode step). outputs[i]: [rows, parts[i].outFeatures].
    public static func apply(_ parts: [Linear], to x: UnsafePointer<Float>, rows: Int,
                             into outputs: [UnsafeMutablePointer<Float>], pool: ThreadPool,
                             then: ((_ firstRows: Range<Int>) -> Void)? = nil) {
        precondition(parts.count == outputs.count && !parts.isEmpty, "Linear.apply: one output per matrix")
        let slices = pool.threadCount, panel = Int(VK_MATMUL_GRANULARITY)
        pool.parallelRanges(slices) { thread, sliceRange in
            for s in sliceRange {
                var first = 0..<0
                for (i, part) in parts.enumerated() {
                    let share = ThreadPool.share(s, of: slices, count: part.outFeatures, granularity: panel)
                    if i == 0 { first = share }
                    if !share.isEmpty { part.applyOutputs(share, x, rows: rows, into: outputs[i], scratch: pool, thread: thread) }
                }
                if let then, !first.isEmpty { then(first) }
            }
        }
    }

    /// Output rows `range` of y = x Wᵀ + b (y's row stride outFeatures), with thread `thread`'s scratch of `pool`.
    func applyOutputs(_ range: Range<Int>, _ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>,
                      scratch pool: ThreadPool, thread: Int) {
        let k = inFeatures, n = outFeatures
        let lo = range.lowerBound, hi = range.upperBound
        switch weights {
        case .dense(let weight):
            let dtype = weight.dtype.kernelType
            let floats = max(vk_matmul_scratch_floats(rows, k, lo, hi), 16)
            let scratch = pool.scratch(thread, floats: floats)
            bias.withOptionalPointer { b in
                if bf16Products {
                    vk_matmul_bf16_ws(x, rows, k, k, weight.data, dtype, lo, hi, b, y, n, scratch, floats)
                } else {
                    vk_matmul_ws(x, rows, k, k, weight.data, dtype, lo, hi, b, y, n, scratch, floats)
                }
            }
        case .quantized(let q):
            let floats = max(vk_matmul_q_scratch_floats(rows, k, q.scheme.groupSize, lo, hi), 16)
            let scratch = pool.scratch(thread, floats: floats)
            // One read-only descriptor (a pointer, not an inout access).
            withUnsafePointer(to: q.kernelMatrix) { matrix in
                bias.withOptionalPointer { b in
                    vk_matmul_q_ws(x, rows, k, k, matrix, lo, hi, b, y, n, scratch, floats)
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
