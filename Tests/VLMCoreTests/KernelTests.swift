import CKernels
import Foundation
import VLMCore
import XCTest

/// The SIMD kernels against the scalar reference bodies, on sizes that are not multiples of any block.
final class KernelTests: XCTestCase {
    override func tearDown() { vk_force_scalar(0) }

    func bits(_ values: [Float], as dtype: DType) -> [UInt16] {
        switch dtype {
        case .bfloat16:
            var out = [UInt16](repeating: 0, count: values.count)
            vk_f32_to_bf16(values, values.count, &out)
            return out
        case .float16:
            return values.map { Float16($0).bitPattern }
        case .float32:
            return []
        }
    }

    func matmul(_ x: [Float], T: Int, K: Int, w: UnsafeRawPointer, dtype: DType, N: Int, bias: [Float]?, scalar: Bool, n0: Int = 0, n1: Int? = nil) -> [Float] {
        vk_force_scalar(scalar ? 1 : 0)
        defer { vk_force_scalar(0) }
        var y = [Float](repeating: -777, count: T * N)
        var scratch = [Float](repeating: 0, count: 4 * K)
        let end = n1 ?? N
        if let bias {
            vk_matmul(x, T, K, K, w, vk_dtype(rawValue: UInt32(dtype.rawValue)), n0, end, bias, &y, N, &scratch)
        } else {
            vk_matmul(x, T, K, K, w, vk_dtype(rawValue: UInt32(dtype.rawValue)), n0, end, nil, &y, N, &scratch)
        }
        return y
    }

    /// Weights of `dtype` holding `values` (rounded to the dtype), kept alive by the returned buffer.
    func weightTensor(_ values: [Float], rows: Int, cols: Int, dtype: DType) -> Tensor {
        let buffer = TensorBuffer(byteCount: values.count * dtype.byteSize)
        switch dtype {
        case .float32:
            values.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        case .float16, .bfloat16:
            bits(values, as: dtype).withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
        return Tensor(name: "w", dtype: dtype, shape: [rows, cols], data: UnsafeRawPointer(buffer.pointer), storage: buffer)
    }

    /// Largest |fast - ref| over `tolerance(ref index)`, and where; values must also agree on NaN-ness.
    func worst(_ fast: [Float], _ ref: [Float], tolerance: (Int) -> Float) -> (ratio: Float, index: Int) {
        var w: (Float, Int) = (0, -1)
        for i in 0..<ref.count {
            if fast[i].isNaN != ref[i].isNaN { return (.infinity, i) }
            if ref[i].isNaN { continue }
            let r = abs(fast[i] - ref[i]) / tolerance(i)
            if !(r <= w.0) { w = (r, i) }
        }
        return w
    }

    // Token counts, input and output sizes that are not multiples of any block of the kernels (GEMV rows of 4,
    // few-token tiles, the GEMM's 6x16 tile, its K and token blocks).
    // 24 / 25, 64 / 65 and 96 / 97: either side of the few-token kernel's limits (small512_applies: f32 up to 24
    // tokens, bf16 / f16 up to 96, or 64 with K past 1024); 4 / 5 and 32 / 33 of the AVX2 one (VK_SMALL_T_WITH512,
    // VK_SMALL_T)
    static let oddT = [1, 2, 3, 4, 5, 7, 13, 24, 25, 32, 33, 64, 65, 96, 97, 130]
    static let oddK = [1, 7, 63, 257, 960, 1031]
    static let oddN = [1, 5, 17, 100]

    func testMatmulMatchesScalarForEveryDtypeAndOddShape() throws {
        forEachSIMDLevel { level in
            var seed: UInt64 = 42
            for dtype in DType.allCases {
                for T in Self.oddT {
                    for K in Self.oddK {
                        for N in Self.oddN {
                            let x = randoms(T * K, seed: &seed)
                            let wf = randoms(N * K, seed: &seed)
                            let bias = randoms(N, seed: &seed)
                            let check = { (w: UnsafeRawPointer) in
                                for useBias in [false, true] {
                                    let b = useBias ? bias : nil
                                    let fast = self.matmul(x, T: T, K: K, w: w, dtype: dtype, N: N, bias: b, scalar: false)
                                    let ref = self.matmul(x, T: T, K: K, w: w, dtype: dtype, N: N, bias: b, scalar: true)
                                    let tol = 1e-5 * Float(K).squareRoot() + 1e-6
                                    let (ratio, i) = self.worst(fast, ref) { _ in tol }
                                    XCTAssertLessThanOrEqual(ratio, 1, "\(level) \(dtype) T\(T) K\(K) N\(N) bias \(useBias): y[\(i)] \(i >= 0 ? fast[i] : 0) vs \(i >= 0 ? ref[i] : 0)")
                                }
                            }
                            if dtype == .float32 {
                                wf.withUnsafeBytes { check($0.baseAddress!) }
                            } else {
                                bits(wf, as: dtype).withUnsafeBytes { check($0.baseAddress!) }
                            }
                        }
                    }
                }
            }
        }
    }

    /// vk_matmul_bf16_ws: with AVX-512 BF16, x and w rounded to bf16 and the products summed in f32, so against a
    /// double-precision sum of the rounded operands the error is f32 summation error only (measured ~1e-7 of the
    /// sum of |products|); below 25 tokens, or without the instructions, it is vk_matmul_ws bit for bit. Odd K
    /// leaves half a pair, odd N and sub-ranges partial panels, 25..250 tokens partial 12-token tiles and several
    /// token blocks. Linear with bf16Products gives the same bits for every thread count.
    /// Where the CPU has AMX, both bodies (tiles and vdpbf16ps) are checked.
    func testBF16ProductsMatchTheirDefinition() {
        let engines = vk_bf16_products_engine() == 2 ? [1, 0] : [1]
        print("bf16 products: engine \(vk_bf16_products_engine()) (2 = AMX, 1 = vdpbf16ps, 0 = none)")
        defer { vk_bf16_products_use_amx(1) }
        for amx in engines {
            vk_bf16_products_use_amx(Int32(amx))
            checkBF16Products(engine: vk_bf16_products_engine())
        }
    }

    func checkBF16Products(engine: Int32) {
        var seed: UInt64 = 2026
        let available = vk_bf16_products_available() != 0
        for dtype in DType.allCases {
            for T in [1, 24, 25, 26, 37, 250, 600] {
                for K in [1, 7, 63, 257, 960] {
                    for (N, n0, n1) in [(1, 0, 1), (5, 0, 5), (17, 3, 17), (50, 0, 50), (100, 16, 90)] {
                        let x = randoms(T * K, seed: &seed), wf = randoms(N * K, seed: &seed), bias = randoms(N, seed: &seed)
                        let weight = weightTensor(wf, rows: N, cols: K, dtype: dtype)
                        let dt = vk_dtype(rawValue: UInt32(dtype.rawValue))
                        let floats = vk_matmul_scratch_floats(T, K, n0, n1)
                        var scratch = [Float](repeating: 0, count: max(floats, 1))
                        var got = [Float](repeating: -777, count: T * N), f32 = got
                        vk_matmul_bf16_ws(x, T, K, K, weight.data, dt, n0, n1, bias, &got, N, &scratch, floats)
                        vk_matmul_ws(x, T, K, K, weight.data, dt, n0, n1, bias, &f32, N, &scratch, floats)
                        let label = "engine \(engine) \(dtype) T\(T) K\(K) N\(N) [\(n0), \(n1))"
                        guard available && T > 24 else {
                            XCTAssertEqual(got, f32, label)
                            continue
                        }
                        // The stored weight values (already rounded to the dtype), then to bf16, as the kernel sees them.
                        var stored = [Float](repeating: 0, count: N * K)
                        vk_to_f32(weight.data, dt, N * K, &stored)
                        let xb = roundedToBF16(x), wb = roundedToBF16(stored)
                        for t in 0..<T {
                            for n in 0..<N {
                                let y = got[t * N + n]
                                guard n >= n0 && n < n1 else {
                                    XCTAssertEqual(y, -777, "\(label): wrote outside its rows at [\(t), \(n)]")
                                    continue
                                }
                                var sum = Double(bias[n]), magnitude = abs(Double(bias[n]))
                                for k in 0..<K {
                                    let p = Double(xb[t * K + k]) * Double(wb[n * K + k])
                                    sum += p
                                    magnitude += abs(p)
                                }
                                XCTAssertLessThanOrEqual(abs(Double(y) - sum), 1e-6 * magnitude + 1e-30, "\(label) y[\(t), \(n)]")
                            }
                        }
                    }
                }
            }
        }
        // Through Linear and the pool: the same bits whatever the split (each output's sum does not depend on it).
        let (T, K, N) = (130, 960, 100)
        let x = randoms(T * K, seed: &seed), weight = weightTensor(randoms(N * K, seed: &seed), rows: N, cols: K, dtype: .bfloat16)
        let linear = Linear(weight: weight, bias: nil, bf16Products: true)
        var outputs: [[Float]] = []
        for threads in [1, 2, 3] {
            var y = [Float](repeating: -777, count: T * N)
            x.withUnsafeBufferPointer { xb in
                y.withUnsafeMutableBufferPointer { linear.apply(xb.baseAddress!, rows: T, into: $0.baseAddress!, pool: ThreadPool(threadCount: threads)) }
            }
            outputs.append(y)
        }
        XCTAssertEqual(outputs[0], outputs[1])
        XCTAssertEqual(outputs[0], outputs[2])
        if !available {
            XCTAssertEqual(outputs[0], matmul(x, T: T, K: K, w: weight.data, dtype: .bfloat16, N: N, bias: nil, scalar: false))
        }
    }

    func roundedToBF16(_ values: [Float]) -> [Float] {
        bits(values, as: .bfloat16).map { Float(bitPattern: UInt32($0) << 16) }
    }

    /// Linear.apply splits output rows across the pool; every thread count must give the scalar result, and the
    /// kernel's own scratch fallback (vk_matmul with only 4*K floats) must agree with the sized entry point.
    func testLinearApplyMatchesScalarForThreadCounts() {
        var seed: UInt64 = 99
        let pools = [1, 2, 3].map { ThreadPool(threadCount: $0) }
        for dtype in DType.allCases {
            for (T, K, N) in [(1, 960, 100), (2, 63, 17), (3, 257, 5), (5, 960, 100), (7, 7, 17), (13, 257, 100),
                              (33, 960, 17), (130, 63, 100), (130, 960, 37), (64, 257, 1)] {
                let x = randoms(T * K, seed: &seed), wf = randoms(N * K, seed: &seed), bias = randoms(N, seed: &seed)
                let weight = weightTensor(wf, rows: N, cols: K, dtype: dtype)
                let ref = matmul(x, T: T, K: K, w: weight.data, dtype: dtype, N: N, bias: bias, scalar: true)
                let fallback = matmul(x, T: T, K: K, w: weight.data, dtype: dtype, N: N, bias: bias, scalar: false)
                let tol = 1e-5 * Float(K).squareRoot() + 1e-6
                XCTAssertLessThanOrEqual(worst(fallback, ref) { _ in tol }.ratio, 1, "vk_matmul \(dtype) T\(T) K\(K) N\(N)")
                for useBias in [false, true] {
                    let linear = Linear(weight: weight, bias: useBias ? bias : nil)
                    let want = useBias ? ref : matmul(x, T: T, K: K, w: weight.data, dtype: dtype, N: N, bias: nil, scalar: true)
                    for pool in pools {
                        var y = [Float](repeating: -777, count: T * N)
                        x.withUnsafeBufferPointer { xb in
                            y.withUnsafeMutableBufferPointer { linear.apply(xb.baseAddress!, rows: T, into: $0.baseAddress!, pool: pool) }
                        }
                        let (ratio, i) = worst(y, want) { _ in tol }
                        XCTAssertLessThanOrEqual(ratio, 1, "Linear \(dtype) T\(T) K\(K) N\(N) bias \(useBias) threads \(pool.threadCount): y[\(i)]")
                    }
                }
            }
        }
    }

    /// Several matrices sharing one input as one pool job (decode's q/k/v and gate/up): every output equals that
    /// matrix's own `apply`, bit for bit (the same kernel on the same rows), for 1-3 threads, decode and prefill rows,
    /// output counts that are not multiples of the 16-row panel and fewer panels than threads; `then` sees each row of
    /// the first product exactly once, after it was written.
    func testStackedLinearApplyEqualsEachApply() {
        var seed: UInt64 = 5
        let pools = [1, 2, 3].map { ThreadPool(threadCount: $0) }
        for (T, K, sizes) in [(1, 96, [160, 32, 32]), (1, 63, [17, 5, 40]), (4, 96, [16, 100]), (33, 40, [7, 300])] {
            let x = randoms(T * K, seed: &seed)
            let parts = sizes.map { n in
                Linear(weight: weightTensor(randoms(n * K, seed: &seed), rows: n, cols: K, dtype: .bfloat16),
                       bias: n % 2 == 0 ? randoms(n, seed: &seed) : nil)
            }
            for pool in pools {
                let want: [[Float]] = parts.map { part in
                    var y = [Float](repeating: 0, count: T * part.outFeatures)
                    x.withUnsafeBufferPointer { xb in
                        y.withUnsafeMutableBufferPointer { part.apply(xb.baseAddress!, rows: T, into: $0.baseAddress!, pool: pool) }
                    }
                    return y
                }
                let outs = parts.map { UnsafeMutablePointer<Float>.allocate(capacity: T * $0.outFeatures) }
                defer { outs.forEach { $0.deallocate() } }
                for (o, p) in zip(outs, parts) { o.initialize(repeating: -777, count: T * p.outFeatures) }
                let n0 = parts[0].outFeatures
                let seen = UnsafeMutablePointer<Int>.allocate(capacity: n0)
                defer { seen.deallocate() }
                seen.initialize(repeating: 0, count: n0)
                var firstOK = true
                x.withUnsafeBufferPointer { xb in
                    Linear.apply(parts, to: xb.baseAddress!, rows: T, into: outs, pool: pool) { cols in
                        for c in cols {
                            seen[c] += 1
                            for t in 0..<T where outs[0][t * n0 + c] != want[0][t * n0 + c] { firstOK = false }
                        }
                    }
                }
                for (i, p) in parts.enumerated() {
                    let got = Array(UnsafeBufferPointer(start: outs[i], count: T * p.outFeatures))
                    XCTAssertEqual(got, want[i], "T\(T) K\(K) sizes \(sizes) part \(i) threads \(pool.threadCount)")
                }
                XCTAssertTrue(firstOK, "then ran before its rows were written: T\(T) sizes \(sizes)")
                XCTAssertEqual((0..<n0).map { seen[$0] }, [Int](repeating: 1, count: n0),
                               "then covers the first product's rows once: T\(T) sizes \(sizes) threads \(pool.threadCount)")
            }
        }
    }

    /// The blocked attention (several queries through the GEMM tile) against the per-query scalar loop: causal and
    /// bidirectional, with and without cached keys before the block, odd head sizes, strides wider than the rows.
    /// Fewer than 4 queries take the one-row kernels (head sizes that are multiples of 8 / 16 up to 128, keys in
    /// blocks of 8 / 16 and a tail: 17 and 41 cached keys), 136 the scalar loop.
    func testAttentionMatchesScalarForOddShapes() {
        forEachSIMDLevel { level in
            var seed: UInt64 = 5
            for hd in [1, 8, 12, 16, 64, 72, 128, 136] {
                for nq in [1, 3, 4, 5, 7, 13, 33, 50, 130] {
                    for causal in [false, true] {
                        for cached in [0, 17, 41] {
                            let nKeys = causal ? cached + nq : nq + cached / 3
                            let qs = 3 * hd + 1, kvs = 2 * hd + 3, os = hd + 5
                            let q = randoms(nq * qs, seed: &seed).map { 3 * $0 }
                            let k = randoms(nKeys * kvs, seed: &seed).map { 3 * $0 }
                            let v = randoms(nKeys * kvs, seed: &seed)
                            func run(scalar: Bool) -> [Float] {
                                vk_force_scalar(scalar ? 1 : 0)
                                defer { vk_force_scalar(0) }
                                var out = [Float](repeating: -777, count: nq * os)
                                var scores = [Float](repeating: 0, count: nKeys + 1)
                                vk_attention_head(q, nq, qs, k, v, kvs, hd, causal ? cached : 0, causal ? 1 : 0, nKeys,
                                                  1 / Float(hd).squareRoot(), &out, os, &scores)
                                return out
                            }
                            let fast = run(scalar: false), ref = run(scalar: true)
                            let (ratio, i) = worst(fast, ref) { 2e-6 + 2e-5 * abs(ref[$0]) }
                            XCTAssertLessThanOrEqual(ratio, 1, "\(level) hd\(hd) nq\(nq) causal \(causal) cached \(cached): out[\(i)]")
                        }
                    }
                }
            }
        }
    }

    /// Decode's grouped call (query heads sharing one KV head) is one vk_attention_head call per head, bit for bit:
    /// groups past the kernel's 8-head chunk, head sizes on and off its 16-column bodies, key counts around its
    /// 16-key blocks and prefetch distance; the scalar loop must agree within rounding.
    func testDecodeGroupAttentionEqualsOneHeadAtATime() {
        forEachSIMDLevel { level in
            var seed: UInt64 = 23
            for hd in [8, 16, 64, 72, 128] {
                for heads in [1, 3, 7, 9] {
                    for nKeys in [1, 15, 16, 17, 50, 131] {
                        let qs = hd + 3, kvs = 3 * hd + 1, os = hd + 2
                        let q = randoms(heads * qs, seed: &seed).map { 3 * $0 }
                        let k = randoms(nKeys * kvs, seed: &seed).map { 3 * $0 }
                        let v = randoms(nKeys * kvs, seed: &seed)
                        let scale = 1 / Float(hd).squareRoot()
                        var group = [Float](repeating: -777, count: heads * os)
                        var scores = [Float](repeating: 0, count: heads * nKeys)
                        vk_attention_decode_group(q, heads, qs, k, v, kvs, hd, nKeys, scale, &group, os, &scores)
                        var single = [Float](repeating: -777, count: heads * os), scalar = single
                        for h in 0..<heads {
                            single.withUnsafeMutableBufferPointer { o in
                                q.withUnsafeBufferPointer { qb in
                                    vk_attention_head(qb.baseAddress! + h * qs, 1, qs, k, v, kvs, hd, nKeys - 1, 1, nKeys,
                                                      scale, o.baseAddress! + h * os, os, &scores)
                                }
                            }
                            vk_force_scalar(1)
                            scalar.withUnsafeMutableBufferPointer { o in
                                q.withUnsafeBufferPointer { qb in
                                    vk_attention_head(qb.baseAddress! + h * qs, 1, qs, k, v, kvs, hd, nKeys - 1, 1, nKeys,
                                                      scale, o.baseAddress! + h * os, os, &scores)
                                }
                            }
                            vk_force_scalar(0)
                        }
                        let what = "\(level) hd\(hd) heads\(heads) keys\(nKeys)"
                        for h in 0..<heads {
                            let row = h * os..<(h * os + hd)
                            XCTAssertEqual(Array(group[row]), Array(single[row]), "\(what): head \(h)")
                        }
                        let (ratio, i) = worst(group, scalar) { 2e-6 + 2e-5 * abs(scalar[$0]) }
                        XCTAssertLessThanOrEqual(ratio, 1, "\(what): against the scalar loop, out[\(i)]")
                    }
                }
            }
        }
    }

    /// Decode attention split by positions (vk_attention_decode_chunk for each range, vk_attention_decode_merge in
    /// order) against softmax(q k / sqrt(d)) v in double, head by head: KV groups of 1, 3 and 7 query heads, head
    /// sizes on the AVX-512 body (64, 128) and off it (72: the AVX2 body), each level and the scalar loop, key counts
    /// around the 16-row blocks, and three splits: the decoder's 16 chunks on 16-position boundaries (some empty
    /// under 256 keys), uneven ranges with empty ones between them, and one range. Each chunk must leave its output
    /// rows' neighbours alone. With every range empty the merge gives zeros.
    func testDecodeAttentionByChunksMatchesSoftmaxInDouble() {
        forEachSIMDLevel { level in
            var seed: UInt64 = 41
            for scalar in [false, true] {
                vk_force_scalar(scalar ? 1 : 0)
                defer { vk_force_scalar(0) }
                for hd in [64, 72, 128] {
                    for (kvHeads, groups) in [(1, 1), (2, 3), (1, 7), (5, 3)] {
                        for nKeys in [1, 17, 191, 192, 255, 257, 531] {
                            let heads = kvHeads * groups, qs = hd + 3, kvs = kvHeads * hd + 5, os = hd + 2
                            let q = randoms(heads * qs, seed: &seed).map { 3 * $0 }
                            let k = randoms(nKeys * kvs, seed: &seed).map { 3 * $0 }
                            let v = randoms(nKeys * kvs, seed: &seed)
                            let scale = 1 / Float(hd).squareRoot()
                            var expected = [Float](repeating: 0, count: heads * hd)
                            for h in 0..<heads {
                                let kv = (h / groups) * hd
                                var s = (0..<nKeys).map { j in
                                    (0..<hd).reduce(0.0) { $0 + Double(q[h * qs + $1]) * Double(k[j * kvs + kv + $1]) } * Double(scale)
                                }
                                let top = s.max() ?? 0
                                s = s.map { Foundation.exp($0 - top) }
                                let sum = s.reduce(0, +)
                                for c in 0..<hd {
                                    let o = (0..<nKeys).reduce(0.0) { $0 + s[$1] * Double(v[$1 * kvs + kv + c]) }
                                    expected[h * hd + c] = Float(o / sum)
                                }
                            }
                            let sixteen = (0...16).map { c in c == 16 ? nKeys : nKeys * c / 16 / 16 * 16 }
                            let uneven = [0, 0, min(5, nKeys), min(5, nKeys), nKeys / 2, nKeys / 2, nKeys, nKeys]
                            for (split, bounds) in [("16 chunks", sixteen), ("uneven", uneven), ("one", [0, nKeys])] {
                                let chunks = bounds.count - 1
                                let pad = 3  // sentinels after each chunk's output rows
                                var o = [Float](repeating: -777, count: chunks * heads * hd + pad)
                                var m = [Float](repeating: -777, count: chunks * heads + pad)
                                var l = [Float](repeating: -777, count: chunks * heads + pad)
                                var scores = [Float](repeating: 0, count: heads * nKeys)
                                for c in 0..<chunks {
                                    o.withUnsafeMutableBufferPointer { ob in
                                        m.withUnsafeMutableBufferPointer { mb in
                                            l.withUnsafeMutableBufferPointer { lb in
                                                vk_attention_decode_chunk(q, heads, qs, kvHeads, k, v, kvs, hd, bounds[c], bounds[c + 1],
                                                                          scale, ob.baseAddress! + c * heads * hd,
                                                                          mb.baseAddress! + c * heads, lb.baseAddress! + c * heads,
                                                                          &scores)
                                            }
                                        }
                                    }
                                }
                                let what = "\(level)\(scalar ? " scalar" : "") hd\(hd) kv\(kvHeads)x\(groups) keys\(nKeys) \(split)"
                                XCTAssertEqual(Array(o.suffix(pad)) + m.suffix(pad) + l.suffix(pad), [Float](repeating: -777, count: 3 * pad), what)
                                var out = [Float](repeating: -777, count: heads * os)
                                vk_attention_decode_merge(chunks, heads, hd, o, m, l, &out, os)
                                let got = (0..<heads).flatMap { h in out[h * os..<(h * os + hd)] }
                                let (ratio, i) = worst(got, expected) { _ in 2e-6 + 4e-9 * Float(nKeys) }  // f32 sums in order
                                XCTAssertLessThanOrEqual(ratio, 1, "\(what): out[\(i)] \(got[i]) vs \(expected[i])")
                                XCTAssertEqual((0..<heads).flatMap { h in out[(h * os + hd)..<(h * os + os)] },
                                               [Float](repeating: -777, count: heads * (os - hd)), "\(what): row padding")
                            }
                        }
                    }
                }
                // no positions at all: every chunk empty, the output zeros
                let heads = 3, hd = 64
                var o = [Float](repeating: -777, count: 2 * heads * hd), m = [Float](repeating: -777, count: 2 * heads)
                var l = m, scores = [Float](repeating: 0, count: heads)
                let q = randoms(heads * hd, seed: &seed), kv = randoms(hd, seed: &seed)
                for c in 0..<2 {
                    o.withUnsafeMutableBufferPointer { ob in
                        m.withUnsafeMutableBufferPointer { mb in
                            l.withUnsafeMutableBufferPointer { lb in
                                vk_attention_decode_chunk(q, heads, hd, 1, kv, kv, hd, hd, 1, 1, 0.125,
                                                          ob.baseAddress! + c * heads * hd, mb.baseAddress! + c * heads,
                                                          lb.baseAddress! + c * heads, &scores)
                            }
                        }
                    }
                }
                var out = [Float](repeating: -777, count: heads * hd)
                vk_attention_decode_merge(2, heads, hd, o, m, l, &out, hd)
                XCTAssertEqual(out, [Float](repeating: 0, count: heads * hd), "\(level): no positions")
            }
        }
    }

    /// vk_attention_head_bf16 against its definition, in double: q, k, v rounded to bf16; scores exact; weights
    /// e_j = exp(scale s_j - max) over the visible keys, rounded to bf16 for the product with v and summed unrounded
    /// for the divisor. The tolerance covers f32 sums (1e-5 of the sum of |e v|) and the weights that lie so near a
    /// bf16 rounding midpoint that the kernel's exp, a few f32 ulps off, may round them the other way (one bf16 ulp
    /// of each such weight times |v|). Causal and
    /// bidirectional, cached keys, head sizes off the 32-dim step, queries off the 32-query block. Where there are
    /// no AMX tiles it must equal vk_attention_head bit for bit; below 16 queries always.
    func testBF16AttentionMatchesItsDefinition() {
        let amx = vk_bf16_products_engine() == 2
        var seed: UInt64 = 77
        for hd in [8, 40, 64, 72] {
            for nq in [5, 16, 33, 100] {
                for causal in [false, true] {
                    for cached in [0, 19] {
                        let nKeys = causal ? cached + nq : nq + cached
                        let qs = 3 * hd + 1, kvs = 2 * hd + 3, os = hd + 5
                        let q = randoms(nq * qs, seed: &seed).map { 3 * $0 }
                        let k = randoms(nKeys * kvs, seed: &seed).map { 3 * $0 }
                        let v = randoms(nKeys * kvs, seed: &seed)
                        let scale = 1 / Float(hd).squareRoot()
                        var got = [Float](repeating: -777, count: nq * os), f32 = got
                        var scores = [Float](repeating: 0, count: nKeys + 1)
                        let p0 = causal ? cached : 0
                        vk_attention_head_bf16(q, nq, qs, k, v, kvs, hd, p0, causal ? 1 : 0, nKeys, scale, &got, os, &scores)
                        vk_attention_head(q, nq, qs, k, v, kvs, hd, p0, causal ? 1 : 0, nKeys, scale, &f32, os, &scores)
                        let label = "hd\(hd) nq\(nq) causal \(causal) cached \(cached)"
                        guard amx && nq >= 16 else {
                            XCTAssertEqual(got, f32, label)
                            continue
                        }
                        let qb = roundedToBF16(q), kb = roundedToBF16(k), vb = roundedToBF16(v)
                        for i in 0..<nq {
                            let visible = causal ? min(p0 + i + 1, nKeys) : nKeys
                            var x = [Double](repeating: 0, count: visible)
                            for j in 0..<visible {
                                var d = 0.0
                                for c in 0..<hd { d += Double(qb[i * qs + c]) * Double(kb[j * kvs + c]) }
                                x[j] = Double(Float(Float(d) * scale))
                            }
                            let mx = x.max() ?? 0
                            let e = x.map { exp($0 - mx) }
                            let eb = roundedToBF16(e.map { Float($0) }).map(Double.init)
                            // Weights within ~3e-5 (relative) of a bf16 rounding midpoint may round either way in the
                            // kernel (its exp and f32 score sums are a few ulps off): one bf16 ulp of doubt each.
                            let doubt = e.map { w -> Double in
                                let bits = Float(w).bitPattern
                                guard abs(Int(bits & 0xffff) - 0x8000) < 256 else { return 0 }
                                return Double(Float(bitPattern: bits & 0xff80_0000)) / 128
                            }
                            let total = e.reduce(0, +)
                            for c in 0..<hd {
                                var o = 0.0, magnitude = 0.0, flips = 0.0
                                for j in 0..<visible {
                                    let t = eb[j] * Double(vb[j * kvs + c])
                                    o += t
                                    magnitude += abs(t)
                                    flips += doubt[j] * abs(Double(vb[j * kvs + c]))
                                }
                                let y = Double(got[i * os + c])
                                XCTAssertLessThanOrEqual(abs(y - o / total), (1e-5 * magnitude + flips) / total + 1e-7,
                                                         "\(label) out[\(i), \(c)]")
                            }
                            for c in hd..<os { XCTAssertEqual(got[i * os + c], -777, "\(label): wrote past the head at [\(i), \(c)]") }
                        }
                    }
                }
            }
        }
    }

    /// Vector exp-based activations against libm: GELU (tanh and erf forms), SiLU gate, softmax, over the range
    /// where they bend and out to where exp over/underflows, plus NaN.
    func testActivationsMatchScalar() {
        var seed: UInt64 = 17
        let n = 20_003
        var x = randoms(n, seed: &seed).map { 12 * $0 }
        let g = randoms(n, seed: &seed).map { 20 * $0 }
        x[0] = -100; x[1] = 100; x[2] = 0; x[3] = -0.0; x[4] = 1e-30; x[5] = -9; x[6] = 9; x[7] = .nan
        let inputs = x
        var gate = g
        gate[0] = -100; gate[1] = 100; gate[2] = 90; gate[3] = -90; gate[4] = .nan
        func both(_ f: (UnsafeMutablePointer<Float>) -> Void) -> (fast: [Float], ref: [Float]) {
            var a = x, b = x
            vk_force_scalar(1); b.withUnsafeMutableBufferPointer { f($0.baseAddress!) }
            vk_force_scalar(0); a.withUnsafeMutableBufferPointer { f($0.baseAddress!) }
            return (a, b)
        }
        // GELU: libm's tanh/erf form loses relative accuracy in the negative tail (1 + tanh cancels), so the
        // tolerance there is absolute, relative to the input.
        for (name, f) in [("gelu_tanh", { (p: UnsafeMutablePointer<Float>) in vk_gelu_tanh(p, n) }),
                          ("gelu_erf", { (p: UnsafeMutablePointer<Float>) in vk_gelu_erf(p, n) })] {
            let (fast, ref) = both(f)
            let (ratio, i) = worst(fast, ref) { 2e-7 * abs(inputs[$0]) + 3e-6 * abs(ref[$0]) + 1e-37 }
            XCTAssertLessThanOrEqual(ratio, 1, "\(name) at x = \(i >= 0 ? x[i] : 0): \(i >= 0 ? fast[i] : 0) vs \(i >= 0 ? ref[i] : 0)")
        }
        let (fast, ref) = both { vk_silu_mul(gate, $0, n) }
        let (ratio, i) = worst(fast, ref) { 1e-6 * abs(ref[$0]) + 1e-37 }
        XCTAssertLessThanOrEqual(ratio, 1, "silu_mul at gate \(i >= 0 ? gate[i] : 0)")
        for m in [1, 2, 7, 8, 9, 31, 100] {
            let (fast, ref) = both { vk_softmax($0 + 11, m) }
            XCTAssertLessThanOrEqual(worst(fast, ref) { 1e-6 * abs(ref[$0]) + 1e-38 }.ratio, 1, "softmax n\(m)")
        }
    }

    func testMatmulWritesOnlyItsRowRange() {
        var seed: UInt64 = 7
        let (T, K, N) = (5, 19, 23)
        let x = randoms(T * K, seed: &seed), w = randoms(N * K, seed: &seed)
        let y = w.withUnsafeBytes { matmul(x, T: T, K: K, w: $0.baseAddress!, dtype: .float32, N: N, bias: nil, scalar: false, n0: 4, n1: 11) }
        for t in 0..<T {
            for n in 0..<N where n < 4 || n >= 11 { XCTAssertEqual(y[t * N + n], -777, "t\(t) n\(n) was written") }
            for n in 4..<11 { XCTAssertNotEqual(y[t * N + n], -777) }
        }
    }

    func testScalarMatmulIsTheDefinition() {
        // y = x Wᵀ + b worked by hand.
        let x: [Float] = [1, 2, 3, 4, 5, 6]  // [2, 3]
        let w: [Float] = [1, 0, -1, 2, 2, 2]  // [2, 3]
        let y = w.withUnsafeBytes { matmul(x, T: 2, K: 3, w: $0.baseAddress!, dtype: .float32, N: 2, bias: [0.5, -1], scalar: true) }
        let want: [Float] = [-1.5, 11, -1.5, 29]  // [1-3+0.5, 2+4+6-1, 4-6+0.5, 8+10+12-1]
        XCTAssertEqual(y, want)
    }

    func testConversionsMatchTorchBits() {
        // bf16 round-to-nearest-even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 and goes to even (1).
        var out = [UInt16](repeating: 0, count: 3)
        vk_f32_to_bf16([1 + 1.0 / 256, 1 + 3.0 / 256, -0.0], 3, &out)
        XCTAssertEqual(out, [0x3F80, 0x3F82, 0x8000])
        for level in [0, 1] {
            vk_force_scalar(Int32(level))
            var f = [Float](repeating: 0, count: 9)
            let halves: [UInt16] = [0x3C00, 0xC000, 0x7BFF, 0x0400, 0x0001, 0x8000, 0x7C00, 0x3555, 0x03FF]
            vk_to_f32(halves, VK_F16, 9, &f)
            XCTAssertEqual(f, halves.map { Float(Float16(bitPattern: $0)) }, "level \(level)")
        }
    }

    func testDotAxpySoftmaxRmsnormAgainstScalar() {
        var seed: UInt64 = 3
        for n in [1, 5, 8, 15, 16, 33, 100] {
            let a = randoms(n, seed: &seed), b = randoms(n, seed: &seed)
            let refDot = zip(a, b).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            XCTAssertEqual(vk_dot(a, b, n), refDot, accuracy: 1e-5)
            var y = b
            vk_axpy(0.5, a, &y, n)
            for i in 0..<n { XCTAssertEqual(y[i], b[i] + 0.5 * a[i], accuracy: 1e-6) }
            var s = a
            vk_softmax(&s, n)
            let m = a.max()!
            let z = a.reduce(Float(0)) { $0 + expf($1 - m) }
            for i in 0..<n { XCTAssertEqual(s[i], expf(a[i] - m) / z, accuracy: 1e-6) }
            var out = [Float](repeating: 0, count: n)
            vk_rmsnorm(a, b, n, 1e-5, &out)
            let r = 1 / (a.reduce(Float(0)) { $0 + $1 * $1 } / Float(n) + 1e-5).squareRoot()
            for i in 0..<n { XCTAssertEqual(out[i], b[i] * a[i] * r, accuracy: 1e-5) }
        }
    }

    /// The vector layer norm (double accumulators in lanes) against the scalar body: widths around the 8-lane step,
    /// with and without bias, in place, and rows with a large common offset (where a one-pass variance would fail).
    func testLayerNormMatchesScalar() {
        var seed: UInt64 = 23
        for n in [1, 5, 8, 15, 16, 33, 100, 768, 1025] {
            let w = randoms(n, seed: &seed).map { 1 + $0 }, b = randoms(n, seed: &seed)
            for offset: Float in [0, 1000] {
                let x = randoms(n, seed: &seed).map { offset + 3 * $0 }
                for bias in [true, false] {
                    func run(scalar: Bool, inPlace: Bool) -> [Float] {
                        vk_force_scalar(scalar ? 1 : 0)
                        defer { vk_force_scalar(0) }
                        var out = inPlace ? x : [Float](repeating: .nan, count: n)
                        if inPlace {
                            out.withUnsafeMutableBufferPointer { vk_layernorm($0.baseAddress!, w, bias ? b : nil, n, 1e-6, $0.baseAddress!) }
                        } else {
                            vk_layernorm(x, w, bias ? b : nil, n, 1e-6, &out)
                        }
                        return out
                    }
                    let ref = run(scalar: true, inPlace: false)
                    for inPlace in [false, true] {
                        let fast = run(scalar: false, inPlace: inPlace)
                        for i in 0..<n {
                            XCTAssertEqual(fast[i], ref[i], accuracy: 2e-6 * abs(ref[i]) + 1e-6,
                                           "n\(n) offset \(offset) bias \(bias) in place \(inPlace) i\(i)")
                        }
                    }
                }
            }
        }
    }

    func testCausalAttentionMatchesNaiveSoftmaxAttention() {
        var seed: UInt64 = 11
        let hd = 12, keys = 9, nq = 4, p0 = keys - nq
        let q = randoms(nq * hd, seed: &seed), k = randoms(keys * hd, seed: &seed), v = randoms(keys * hd, seed: &seed)
        var out = [Float](repeating: 0, count: nq * hd)
        var scores = [Float](repeating: 0, count: keys)
        vk_attention_head(q, nq, hd, k, v, hd, hd, p0, 1, keys, 0.3, &out, hd, &scores)
        for i in 0..<nq {
            let visible = p0 + i + 1
            var s = (0..<visible).map { j in (0..<hd).reduce(Float(0)) { $0 + q[i * hd + $1] * k[j * hd + $1] } * 0.3 }
            let m = s.max()!
            s = s.map { expf($0 - m) }
            let z = s.reduce(0, +)
            for d in 0..<hd {
                let want = (0..<visible).reduce(Float(0)) { $0 + s[$1] / z * v[$1 * hd + d] }
                XCTAssertEqual(out[i * hd + d], want, accuracy: 1e-5, "query \(i) dim \(d)")
            }
        }
    }

    /// Every index exactly once, ranges whole multiples of the granularity, and the `thread` a range gets names a
    /// thread that runs nothing else meanwhile (per-thread scratch relies on it).
    func testThreadPoolCoversEveryIndexOnce() {
        for threads in [1, 2, 3, 8] {
            let pool = ThreadPool(threadCount: threads)
            let busy = UnsafeMutablePointer<Int>.allocate(capacity: threads)
            let clashes = UnsafeMutablePointer<Int>.allocate(capacity: threads + 1)
            defer { busy.deallocate(); clashes.deallocate() }
            for count in [0, 1, 5, 12, 13, 100, 1000] {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
                hits.initialize(repeating: 0, count: max(count, 1))
                busy.initialize(repeating: 0, count: threads)
                clashes.initialize(repeating: 0, count: threads + 1)
                pool.parallelRanges(count, granularity: 4) { t, r in
                    guard t >= 0, t < threads else { clashes[threads] += 1; return }
                    busy[t] += 1
                    if busy[t] != 1 || r.lowerBound % 4 != 0 || (r.upperBound % 4 != 0 && r.upperBound != count) {
                        clashes[t] += 1
                    }
                    for i in r { hits[i] += 1 }
                    busy[t] -= 1
                }
                let what = "threads \(threads) count \(count)"
                for i in 0..<count { XCTAssertEqual(hits[i], 1, "\(what) index \(i)") }
                for t in 0...threads { XCTAssertEqual(clashes[t], 0, "\(what): thread \(t) misused") }
                hits.deallocate()
            }
        }
    }

    /// Thousands of back-to-back jobs (as in decoding), jobs nested inside a slice (run serially on that thread),
    /// and two threads sharing one pool (one of them falls back to running its slices itself): every index once.
    func testThreadPoolBackToBackNestedAndShared() {
        let pool = ThreadPool(threadCount: 3)
        let n = 64
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: n)
        defer { hits.deallocate() }
        hits.initialize(repeating: 0, count: n)
        for _ in 0..<5000 { pool.parallelRanges(n) { _, r in for i in r { hits[i] += 1 } } }
        for i in 0..<n { XCTAssertEqual(hits[i], 5000, "back-to-back index \(i)") }

        hits.initialize(repeating: 0, count: n)
        pool.parallelRanges(4) { _, outer in
            for o in outer { pool.parallelRanges(16) { _, inner in for i in inner { hits[o * 16 + i] += 1 } } }
        }
        for i in 0..<n { XCTAssertEqual(hits[i], 1, "nested index \(i)") }

        let shared = UnsafeMutablePointer<Int>.allocate(capacity: 2 * n)
        defer { shared.deallocate() }
        shared.initialize(repeating: 0, count: 2 * n)
        DispatchQueue.concurrentPerform(iterations: 2) { caller in
            for _ in 0..<500 { pool.parallelRanges(n) { _, r in for i in r { shared[caller * n + i] += 1 } } }
        }
        for i in 0..<(2 * n) { XCTAssertEqual(shared[i], 500, "shared index \(i)") }
    }
}
