import CKernels
import Foundation
import VLMCore
import XCTest

/// The int8/int4 kernels (vk_qmatrix) against their scalar reference, and the quantizer's error bounds.
final class QuantKernelTests: XCTestCase {
    override func tearDown() { vk_force_scalar(0) }

    /// A quantized matrix made by the kernel quantizer, with the buffers that keep it alive.
    struct Quantized {
        var data: [UInt8]
        var scales: [UInt16]
        var bits: Int
        var group: Int
        func withMatrix<R>(_ body: (UnsafePointer<vk_qmatrix>) -> R) -> R {
            data.withUnsafeBytes { d in
                scales.withUnsafeBufferPointer { s in
                    var m = vk_qmatrix(data: d.baseAddress, scales: s.baseAddress, group_size: group, bits: Int32(bits))
                    return body(&m)
                }
            }
        }
    }

    func quantize(_ w: [Float], rows: Int, cols: Int, bits: Int, group: Int) -> Quantized {
        var q = Quantized(data: [UInt8](repeating: 0, count: max(1, rows * vk_qrow_bytes(Int32(bits), cols))),
                          scales: [UInt16](repeating: 0, count: max(1, rows * ((cols + group - 1) / group))), bits: bits, group: group)
        let rc = w.withUnsafeBytes { wb in
            q.data.withUnsafeMutableBytes { d in
                q.scales.withUnsafeMutableBufferPointer { s in
                    vk_quantize_rows(wb.baseAddress, VK_F32, cols, Int32(bits), group, 0, rows, d.baseAddress, s.baseAddress)
                }
            }
        }
        XCTAssertEqual(rc, 0)
        return q
    }

    func matmul(_ x: [Float], T: Int, K: Int, q: Quantized, N: Int, bias: [Float]?, scalar: Bool, scratch: Bool = true) -> [Float] {
        vk_force_scalar(scalar ? 1 : 0)
        defer { vk_force_scalar(0) }
        var y = [Float](repeating: -777, count: T * N)
        let floats = vk_matmul_q_scratch_floats(T, K, q.group, 0, N)
        var buf = [Float](repeating: 0, count: max(floats, 1))
        q.withMatrix { m in
            buf.withUnsafeMutableBufferPointer { s in
                y.withUnsafeMutableBufferPointer { yb in
                    if let bias {
                        vk_matmul_q_ws(x, T, K, K, m, 0, N, bias, yb.baseAddress, N, scratch ? s.baseAddress : nil, scratch ? floats : 0)
                    } else {
                        vk_matmul_q_ws(x, T, K, K, m, 0, N, nil, yb.baseAddress, N, scratch ? s.baseAddress : nil, scratch ? floats : 0)
                    }
                }
            }
        }
        return y
    }

    /// What the SIMD kernel is to equal: the scalar kernel, or where prefill multiplies int8 activations
    /// (vk_quantized_prefill_is_integer: AVX-512 VNNI, or int4 on AVX2), the scalar decode kernel on each token's row,
    /// so prefill is proven to be T decode steps' integer dot products.
    func reference(_ x: [Float], T: Int, K: Int, q: Quantized, N: Int, bias: [Float]?) -> [Float] {
        guard T > 1, vk_quantized_prefill_is_integer(T, K, q.group, Int32(q.bits)) != 0 else {
            return matmul(x, T: T, K: K, q: q, N: N, bias: bias, scalar: true)
        }
        return (0..<T).flatMap { t in matmul(Array(x[(t * K)..<((t + 1) * K)]), T: 1, K: K, q: q, N: N, bias: bias, scalar: true) }
    }

    /// Largest |fast - ref| / tol over all outputs, and where.
    func worst(_ fast: [Float], _ ref: [Float], tol: Float) -> (ratio: Float, index: Int) {
        var w: (Float, Int) = (0, -1)
        for i in 0..<ref.count {
            let r = abs(fast[i] - ref[i]) / tol
            if !(r <= w.0) { w = (r, i) }
        }
        return w
    }

    // Shapes off every block: GEMV rows of 4, int4 blocks of 32 columns, groups (8, 24, 32, 40, 128), the K tail
    // past the last multiple of 8, the GEMM's 6x16 tile and K/token blocks; K odd for int4's half-used last byte;
    // 4 / 5, 8 / 9 and 16 / 17: either side of the few-token quantized kernels (small_q_applies: AVX2 4, any group;
    // AVX-512 q4 8, q8 16, groups a multiple of 16, so 32 and 128); 6 / 7 either side of the int8 GEMM's int8 limit.
    // K 96 and 960 take the int8 GEMM with groups 32 and 128 (960: a shorter last group; 96: a 32-column tail).
    // Decode of int4 at groups of 32 on AVX-512 holds x in registers up to 1088 columns: 960 ends on a 64-column
    // pair, 896 on a whole 128-column block, 1152 is past it (the general body).
    static let oddT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 130]
    static let oddK = [1, 7, 9, 63, 96, 100, 257, 896, 960, 1152]
    static let oddN = [1, 5, 17, 100]
    static let groups = [8, 24, 32, 40, 128]

    func testQuantizedMatmulMatchesScalarForOddShapes() {
        forEachSIMDLevel { level in
            var seed: UInt64 = 7
            for bits in [8, 4] {
                for group in Self.groups {
                    for T in Self.oddT {
                        for K in Self.oddK {
                            for N in Self.oddN {
                                let x = randoms(T * K, seed: &seed), wf = randoms(N * K, seed: &seed), bias = randoms(N, seed: &seed)
                                let q = quantize(wf, rows: N, cols: K, bits: bits, group: group)
                                let tol = 1e-5 * Float(K).squareRoot() + 1e-6
                                for useBias in [false, true] {
                                    let b = useBias ? bias : nil
                                    let ref = reference(x, T: T, K: K, q: q, N: N, bias: b)
                                    let fast = matmul(x, T: T, K: K, q: q, N: N, bias: b, scalar: false)
                                    let (ratio, i) = worst(fast, ref, tol: tol)
                                    XCTAssertLessThanOrEqual(ratio, 1, "\(level) q\(bits) g\(group) T\(T) K\(K) N\(N) bias \(useBias): y[\(i)] \(i >= 0 ? fast[i] : 0) vs \(i >= 0 ? ref[i] : 0)")
                                    if !useBias {  // the kernel's own scratch when the caller gives none
                                        let own = matmul(x, T: T, K: K, q: q, N: N, bias: nil, scalar: false, scratch: false)
                                        XCTAssertLessThanOrEqual(worst(own, ref, tol: tol).ratio, 1, "\(level) no scratch q\(bits) g\(group) T\(T) K\(K) N\(N)")
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Prefill over whole 32-column groups is the int8 product on AVX-512 VNNI hosts (int8 from 7 tokens, int4 from 2)
    /// and for int4 on AVX2 hosts (the oddly shaped tests then compare it with decode on each row); elsewhere, and for
    /// groups or K off 32, it keeps f32 activations.
    func testPrefillTakesIntegerProductsWhereTheCPUHasThem() {
        let name = String(cString: vk_simd_name())
        // x86: VNNI from 7 tokens for int8 and 2 for int4, AVX2 int4 from 2; arm64 with SDOT: both from 2 tokens
        let vnni = name == "avx512-vnni", avx2 = name.hasPrefix("avx"), sdot = name == "neon-dotprod"
        XCTAssertEqual(vk_quantized_prefill_is_integer(16, 960, 32, 8) != 0, vnni || sdot)
        XCTAssertEqual(vk_quantized_prefill_is_integer(2, 960, 64, 4) != 0, avx2 || sdot)
        XCTAssertEqual(vk_quantized_prefill_is_integer(6, 960, 32, 8) != 0, sdot, "int8 from 7 tokens (SDOT: from 2)")
        XCTAssertEqual(vk_quantized_prefill_is_integer(1, 960, 32, 4), 0, "decode is not prefill")
        XCTAssertEqual(vk_quantized_prefill_is_integer(16, 100, 32, 4), 0, "K off 32")
        XCTAssertEqual(vk_quantized_prefill_is_integer(16, 960, 40, 4), 0, "group off 32")
        vk_limit_level(1)  // x86: the AVX2 bodies; no effect on arm64
        XCTAssertEqual(vk_quantized_prefill_is_integer(16, 960, 32, 8) != 0, sdot, "AVX2, int8")
        XCTAssertEqual(vk_quantized_prefill_is_integer(16, 960, 32, 4) != 0, avx2 || sdot, "AVX2, int4")
        vk_limit_level(3)
        vk_force_scalar(1)
        XCTAssertEqual(vk_quantized_prefill_is_integer(16, 960, 32, 4), 0, "scalar")
        vk_force_scalar(0)
    }

    /// The scalar reference for several tokens (and for decode with groups that are not whole 32-column blocks) is
    /// the definition: sum over k of x * (q * scale), with q and scale as dequantized.
    func testScalarQuantizedMatmulIsDequantizedProduct() {
        var seed: UInt64 = 3
        for bits in [8, 4] {
            let T = 3, K = 41, N = 6
            let x = randoms(T * K, seed: &seed), wf = randoms(N * K, seed: &seed)
            let q = quantize(wf, rows: N, cols: K, bits: bits, group: 16)
            let y = matmul(x, T: T, K: K, q: q, N: N, bias: nil, scalar: true)
            for n in 0..<N {
                var row = [Float](repeating: 0, count: K)
                q.withMatrix { vk_dequantize_row($0, K, n, &row) }
                for t in 0..<T {
                    var acc: Float = 0
                    for k in 0..<K { acc += x[t * K + k] * row[k] }
                    XCTAssertEqual(y[t * N + n], acc, "q\(bits) t\(t) n\(n)")
                }
            }
        }
    }

    /// One token with whole 32-column groups is an integer dot product: x quantized per weight group to int8
    /// (d = max|x| / 127, round to nearest even), sum of q_w * q_x in integers, times scale_w * d. Written here from
    /// that definition, independently of the kernel; the scalar body must equal it and the SIMD body come within
    /// float rounding. Against the exact dequantized product it is off by the activation rounding only.
    func testDecodeIsIntegerDotProductOnQuantizedActivations() {
        forEachSIMDLevel { level in
            var seed: UInt64 = 11
            for bits in [8, 4] {
                for (K, group) in [(64, 32), (96, 32), (384, 32), (448, 32), (960, 64), (256, 128), (160, 96)] {
                    let N = 9
                    let x = randoms(K, seed: &seed), wf = randoms(N * K, seed: &seed)
                    let q = quantize(wf, rows: N, cols: K, bits: bits, group: group)
                    let groups = (K + group - 1) / group
                    var qx = [Int32](repeating: 0, count: K), dx = [Float](repeating: 0, count: groups)
                    for g in 0..<groups {
                        let ks = (g * group)..<min(K, (g + 1) * group)
                        let amax = ks.map { abs(x[$0]) }.max() ?? 0
                        dx[g] = amax / 127
                        let id: Float = amax > 0 ? 127 / amax : 0
                        for k in ks { qx[k] = Int32(max(-127, min(127, (x[k] * id).rounded(.toNearestOrEven)))) }
                    }
                    func level(_ n: Int, _ k: Int) -> Int32 {
                        if bits == 8 { return Int32(Int8(bitPattern: q.data[n * K + k])) }
                        let b = q.data[n * vk_qrow_bytes(4, K) + k / 2]
                        return Int32(k % 2 == 1 ? b >> 4 : b & 15) - 8
                    }
                    let scalar = matmul(x, T: 1, K: K, q: q, N: N, bias: nil, scalar: true)
                    let fast = matmul(x, T: 1, K: K, q: q, N: N, bias: nil, scalar: false)
                    for n in 0..<N {
                        var expected: Float = 0, exact: Float = 0
                        for g in 0..<groups {
                            var s: Int32 = 0
                            for k in (g * group)..<min(K, (g + 1) * group) { s += level(n, k) * qx[k] }
                            expected += Float(Float16(bitPattern: q.scales[n * groups + g])) * dx[g] * Float(s)
                        }
                        var row = [Float](repeating: 0, count: K)
                        q.withMatrix { vk_dequantize_row($0, K, n, &row) }
                        for k in 0..<K { exact += x[k] * row[k] }
                        XCTAssertEqual(scalar[n], expected, accuracy: 1e-6 * Float(K), "q\(bits) K\(K) g\(group) row \(n): scalar")
                        XCTAssertEqual(fast[n], expected, accuracy: 1e-5 * Float(K).squareRoot() + 1e-6, "q\(bits) K\(K) g\(group) row \(n): \(level)")
                        // activation rounding: at most half a level (d / 2) per element, times |w|
                        var bound: Float = 1e-4
                        for k in 0..<K { bound += dx[k / group] / 2 * abs(row[k]) }
                        XCTAssertLessThanOrEqual(abs(scalar[n] - exact), bound, "q\(bits) K\(K) g\(group) row \(n): vs float")
                    }
                }
            }
        }
    }

    /// Linear over a QuantizedMatrix split across 1 and 2 threads, decode and prefill, against the scalar kernel.
    func testQuantizedLinearMatchesScalarForThreadCounts() throws {
        var seed: UInt64 = 11
        let pools = [1, 2].map { ThreadPool(threadCount: $0) }
        for bits in [8, 4] {
            for (T, K, N) in [(1, 960, 100), (1, 63, 17), (2, 257, 5), (7, 100, 37), (33, 960, 17), (130, 257, 100), (40, 96, 70)] {
                let x = randoms(T * K, seed: &seed), wf = randoms(N * K, seed: &seed), bias = randoms(N, seed: &seed)
                let buffer = TensorBuffer(byteCount: wf.count * 4)
                wf.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                let tensor = Tensor(name: "w", dtype: .float32, shape: [N, K], data: UnsafeRawPointer(buffer.pointer), storage: buffer)
                let scheme = try QuantizationScheme(bits: bits, groupSize: 32)
                let matrix = QuantizedMatrix.quantize(tensor, scheme: scheme)
                let q = quantize(wf, rows: N, cols: K, bits: bits, group: 32)
                XCTAssertEqual(Array(matrix.dataBytes), Array(q.data.prefix(matrix.dataByteCount)), "parallel quantizer = serial")
                let ref = reference(x, T: T, K: K, q: q, N: N, bias: bias)
                let linear = Linear(quantized: matrix, bias: bias)
                XCTAssertEqual(linear.inFeatures, K)
                XCTAssertEqual(linear.outFeatures, N)
                XCTAssertEqual(linear.formatName, "q\(bits)")
                for pool in pools {
                    var y = [Float](repeating: -777, count: T * N)
                    x.withUnsafeBufferPointer { xb in
                        y.withUnsafeMutableBufferPointer { linear.apply(xb.baseAddress!, rows: T, into: $0.baseAddress!, pool: pool) }
                    }
                    let (ratio, i) = worst(y, ref, tol: 1e-5 * Float(K).squareRoot() + 1e-6)
                    XCTAssertLessThanOrEqual(ratio, 1, "Linear q\(bits) T\(T) K\(K) N\(N) threads \(pool.threadCount): y[\(i)]")
                }
            }
        }
    }

    /// int8: |w - deq| <= scale / 2 (scale = f16(max|w| / 127)) plus f16 rounding of the scale; levels in [-127, 127].
    /// int4: the group's largest-magnitude value is exact up to the scale's rounding, the rest within half a step
    /// except values clamped at +7 (the opposite sign of the extreme), within one step; levels in [-8, 7].
    func testQuantizeDequantizeErrorBounds() {
        var seed: UInt64 = 21
        let rows = 9, cols = 203, group = 32
        var w = randoms(rows * cols, seed: &seed)
        for i in stride(from: 0, to: w.count, by: 17) { w[i] *= 40 }  // outliers in some groups
        var worstRelative: [Int: Float] = [:]
        for bits in [8, 4] {
            let q = quantize(w, rows: rows, cols: cols, bits: bits, group: group)
            for r in 0..<rows {
                var deq = [Float](repeating: 0, count: cols)
                q.withMatrix { vk_dequantize_row($0, cols, r, &deq) }
                for g in 0..<((cols + group - 1) / group) {
                    let lo = g * group, hi = min(lo + group, cols)
                    let values = w[(r * cols + lo)..<(r * cols + hi)]
                    let amax = values.map(abs).max() ?? 0
                    let scale = abs(Float(Float16(bitPattern: q.scales[r * ((cols + group - 1) / group) + g])))
                    let expected = bits == 8 ? amax / 127 : amax / 8
                    XCTAssertEqual(scale, expected, accuracy: expected * 1e-3, "q\(bits) row \(r) group \(g) scale")
                    for k in lo..<hi {
                        let err = abs(deq[k] - w[r * cols + k])
                        let bound = bits == 8 ? scale * 0.5 + amax * 1e-3 : scale * 1.0 + amax * 1e-3
                        XCTAssertLessThanOrEqual(err, bound, "q\(bits) row \(r) col \(k)")
                        worstRelative[bits] = max(worstRelative[bits] ?? 0, err / max(amax, 1e-30))
                        let level = (deq[k] / (bits == 8 ? scale : Float(Float16(bitPattern: q.scales[r * ((cols + group - 1) / group) + g])))).rounded()
                        XCTAssertTrue(bits == 8 ? abs(level) <= 127 : (level >= -8 && level <= 7), "q\(bits) level \(level)")
                    }
                }
            }
        }
        print("quantize→dequantize worst |error| / group max: q8 \(worstRelative[8] ?? 0), q4 \(worstRelative[4] ?? 0)")
        XCTAssertLessThanOrEqual(worstRelative[8] ?? 1, 0.5 / 127 + 1e-3)
        XCTAssertLessThanOrEqual(worstRelative[4] ?? 1, 1.0 / 8 + 1e-3)
    }

    /// The SIMD quantizer (what --quantize and `vlm quantize` run) writes the scalar body's bytes exactly: levels and
    /// f16 scales, for f32 / bf16 / f16 sources, odd K, groups that are not multiples of 32, and NaN, infinities,
    /// signed zeros, exact halves (roundf ties), ties between +m and -m for int4's signed extreme, and huge values.
    func testVectorQuantizerIsTheScalarBitForBit() {
        var seed: UInt64 = 31
        let special: [Float] = [.nan, .infinity, -.infinity, -0.0, 0, 0.5, -0.5, 1e30, -1e30, 2.5 / 127, -2.5 / 127]
        for dtype in DType.allCases {
            for bits in [8, 4] {
                for group in Self.groups {
                    for K in [7, 9, 63, 100, 257] {
                        let rows = 5
                        var w = randoms(rows * K, seed: &seed)
                        for i in stride(from: 3, to: w.count, by: 7) { w[i] = special[(i / 7) % special.count] }
                        let raw: [UInt8]
                        switch dtype {
                        case .float32: raw = w.withUnsafeBytes { Array($0) }
                        case .bfloat16:
                            var h = [UInt16](repeating: 0, count: w.count)
                            vk_f32_to_bf16(w, w.count, &h)
                            raw = h.withUnsafeBytes { Array($0) }
                        case .float16:
                            var h = [UInt16](repeating: 0, count: w.count)
                            vk_f32_to_f16(w, w.count, &h)
                            raw = h.withUnsafeBytes { Array($0) }
                        }
                        func run(scalar: Bool) -> ([UInt8], [UInt16]) {
                            vk_force_scalar(scalar ? 1 : 0)
                            defer { vk_force_scalar(0) }
                            var data = [UInt8](repeating: 0x5a, count: rows * vk_qrow_bytes(Int32(bits), K))
                            var scales = [UInt16](repeating: 0, count: rows * ((K + group - 1) / group))
                            let rc = raw.withUnsafeBytes { r in
                                vk_quantize_rows(r.baseAddress, vk_dtype(rawValue: UInt32(dtype.rawValue)), K, Int32(bits), group, 0, rows, &data, &scales)
                            }
                            XCTAssertEqual(rc, 0)
                            return (data, scales)
                        }
                        let (ref, fast) = (run(scalar: true), run(scalar: false))
                        XCTAssertEqual(fast.0, ref.0, "\(dtype) q\(bits) g\(group) K\(K): levels")
                        XCTAssertEqual(fast.1, ref.1, "\(dtype) q\(bits) g\(group) K\(K): scales")
                    }
                }
            }
        }
    }

    /// Odd K for int4: the unused high nibble of each row's last byte is written as q = 0 (0x8).
    func testInt4OddColumnsPadLastNibble() {
        let w: [Float] = [1, -1, 0.5, 0.25, -0.5, 1, 0.75,  0, 0, 0, 0, 0, 0, 1]
        let q = quantize(w, rows: 2, cols: 7, bits: 4, group: 8)
        XCTAssertEqual(vk_qrow_bytes(4, 7), 4)
        XCTAssertEqual(q.data[3] >> 4, 8)
        XCTAssertEqual(q.data[7] >> 4, 8)
    }

    /// Zero groups, NaN and infinite weights and huge values quantize without traps to finite scales.
    func testQuantizeDegenerateValues() {
        let big = Float(1e30)
        let w: [Float] = [0, 0, 0, 0, 0, 0, 0, 0,  .nan, 1, -1, 0, 0, 0, 0, 0,  .infinity, 1, 2, 3, 4, 5, 6, 7,  big, -big, 1, 0, 0, 0, 0, 0]
        for bits in [8, 4] {
            let q = quantize(w, rows: 4, cols: 8, bits: bits, group: 8)
            var deq = [Float](repeating: 0, count: 8)
            for r in 0..<4 {
                q.withMatrix { vk_dequantize_row($0, 8, r, &deq) }
                XCTAssertTrue(deq.allSatisfy(\.isFinite), "q\(bits) row \(r): \(deq)")
            }
            q.withMatrix { vk_dequantize_row($0, 8, 0, &deq) }
            XCTAssertEqual(deq, [Float](repeating: 0, count: 8))
        }
    }

    /// vk_f32_to_f16 is Swift's Float16 conversion (round to nearest even, subnormals, overflow to inf, NaN).
    func testF32ToF16MatchesFloat16() {
        var seed: UInt64 = 5
        var values: [Float] = [0, -0, 1, -1, 65504, 65519.99, 65520, 1e6, -1e6, 6.1e-5, 6.0e-5, 5.96e-8, 2.98e-8, 2.99e-8,
                               1e-10, .infinity, -.infinity, 0.1, 1.0009765625, 1.00048828125, 1.000732421875]
        values += randoms(5000, seed: &seed).map { $0 * 70000 }
        values += randoms(5000, seed: &seed).map { $0 * 1e-4 }
        var out = [UInt16](repeating: 0, count: values.count)
        vk_f32_to_f16(values, values.count, &out)
        for (v, h) in zip(values, out) { XCTAssertEqual(h, Float16(v).bitPattern, "\(v)") }
        var nan: UInt16 = 0
        var n = Float.nan
        vk_f32_to_f16(&n, 1, &nan)
        XCTAssertTrue(Float16(bitPattern: nan).isNaN)
    }

    /// A descriptor the loader would reject gives NaN outputs, never an out-of-bounds read.
    func testInvalidDescriptorWritesNaN() {
        let data = [UInt8](repeating: 0, count: 64), scales = [UInt16](repeating: 0, count: 8)
        var y = [Float](repeating: 0, count: 2)
        let x = [Float](repeating: 1, count: 16)
        for (bits, group) in [(3, 8), (8, 0), (4, 12)] {
            data.withUnsafeBytes { d in
                scales.withUnsafeBufferPointer { s in
                    var m = vk_qmatrix(data: d.baseAddress, scales: s.baseAddress, group_size: group, bits: Int32(bits))
                    vk_matmul_q_ws(x, 1, 16, 16, &m, 0, 2, nil, &y, 2, nil, 0)
                }
            }
            XCTAssertTrue(y.allSatisfy(\.isNaN), "bits \(bits) group \(group)")
        }
    }
}
