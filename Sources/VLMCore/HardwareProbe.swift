import CKernels
import Foundation

/// Measures what bounds our speed on this machine, so benchmarks can print figures next to their limits.
public enum HardwareProbe {
    /// The kernel bodies in use ("avx512-vnni", "avx512", "avx2", "neon-dotprod", "neon", "scalar"); VLM_SIMD=avx2 caps it.
    public static var simd: String { String(cString: vk_simd_name()) }

    /// Whether `QuantizationOptions.bf16Products` takes effect here (AVX-512 BF16 and the AVX-512 bodies in use).
    public static var bf16Products: Bool { vk_bf16_products_available() != 0 }

    /// The unit that multiplies bf16 products: "amx" (TDPBF16PS tiles), "avx512-bf16" (vdpbf16ps) or "none".
    public static var bf16Engine: String {
        switch vk_bf16_products_engine() {
        case 2: return "amx"
        case 1: return "avx512-bf16"
        default: return "none"
        }
    }

    /// Main-memory read bandwidth in bytes per second with `threads` threads: best of `repeats` passes over a
    /// buffer far larger than the caches.
    public static func readBandwidth(threads: Int, megabytes: Int = 512, repeats: Int = 5) -> Double {
        let count = megabytes * 1024 * 1024 / 4
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: 1, count: count)
        let pool = ThreadPool(threadCount: threads)
        var best = 0.0
        for _ in 0..<repeats {
            let t0 = monotonicSeconds()
            pool.parallelRanges(count, granularity: 4096) { _, range in
                _ = vk_sum(buffer + range.lowerBound, range.count)
            }
            let dt = monotonicSeconds() - t0
            best = max(best, Double(count * 4) / dt)
        }
        return best
    }

    /// Peak f32 FMA throughput in flop/s with `threads` threads (register-only loop, best of `repeats`).
    public static func fmaPeak(threads: Int, repeats: Int = 3) -> Double {
        let pool = ThreadPool(threadCount: threads)
        let iterations = 20_000_000
        var best = 0.0
        for _ in 0..<repeats {
            let t0 = monotonicSeconds()
            let lock = NSLock()
            var flops = 0.0
            pool.parallelRanges(threads) { _, range in
                var f = 0.0
                for _ in range { f += vk_fma_loop(iterations) }
                lock.lock(); flops += f; lock.unlock()
            }
            best = max(best, flops / (monotonicSeconds() - t0))
        }
        return best
    }
}
