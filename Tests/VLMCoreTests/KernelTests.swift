import CKernels
import Foundation
import VLMCore
import XCTest

/// The SIMD kernels against the scalar reference bodies, on sizes that are not multiples of any block.
final class KernelTests: XCTestCase {
    override func tearDown() { vk_force_scalar(0) }

    func randoms(_ n: Int, seed: inout UInt64) -> [Float] {
        (0..<n).map { _ in
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int32(truncatingIfNeeded: seed >> 32)) / Float(Int32.max)
        }
    }

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

    func testMatmulMatchesScalarForEveryDtypeAndOddShape() throws {
        var seed: UInt64 = 42
        for dtype in DType.allCases {
            for (T, K, N) in [(1, 1, 1), (1, 7, 5), (1, 37, 13), (3, 9, 7), (5, 64, 11), (9, 130, 17), (17, 257, 6), (1, 960, 33)] {
                let x = randoms(T * K, seed: &seed)
                let wf = randoms(N * K, seed: &seed)
                let bias = randoms(N, seed: &seed)
                let check = { (w: UnsafeRawPointer) in
                    for useBias in [false, true] {
                        let fast = self.matmul(x, T: T, K: K, w: w, dtype: dtype, N: N, bias: useBias ? bias : nil, scalar: false)
                        let ref = self.matmul(x, T: T, K: K, w: w, dtype: dtype, N: N, bias: useBias ? bias : nil, scalar: true)
                        for i in 0..<fast.count {
                            XCTAssertEqual(fast[i], ref[i], accuracy: 1e-4 * Float(K).squareRoot() + 1e-5, "\(dtype) T\(T) K\(K) N\(N) i\(i)")
                        }
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

    func testThreadPoolCoversEveryIndexOnce() {
        for threads in [1, 2, 3, 8] {
            let pool = ThreadPool(threadCount: threads)
            for count in [0, 1, 5, 12, 13, 100] {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
                hits.initialize(repeating: 0, count: max(count, 1))
                pool.parallelRanges(count, granularity: 4) { _, r in for i in r { hits[i] += 1 } }
                for i in 0..<count { XCTAssertEqual(hits[i], 1, "threads \(threads) count \(count) index \(i)") }
                hits.deallocate()
            }
        }
    }
}
