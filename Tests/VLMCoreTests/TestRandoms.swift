import CKernels

/// Uniform floats in [-1, 1] from a 64-bit LCG: the kernel tests' deterministic inputs (the same sequence for a seed
/// on every platform).
func randoms(_ n: Int, seed: inout UInt64) -> [Float] {
    (0..<n).map { _ in
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int32(truncatingIfNeeded: seed >> 32)) / Float(Int32.max)
    }
}


/// Runs `body` once for every SIMD level of this machine the kernels can use, labelled for failure messages: on an
/// AVX-512 machine the AVX-512 bodies ("avx512") and, limited to level 1, the AVX2 ones under them ("avx2"), so both
/// are checked against the scalar reference; elsewhere once ("simd").
func forEachSIMDLevel(_ body: (String) -> Void) {
    vk_limit_level(3)
    defer { vk_limit_level(3) }
    guard vk_simd_level() == 3 else { return body("simd") }
    body("avx512")
    vk_limit_level(1)
    body("avx2")
}
