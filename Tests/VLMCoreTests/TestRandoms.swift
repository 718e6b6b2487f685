/// Uniform floats in [-1, 1] from a 64-bit LCG: the kernel tests' deterministic inputs (the same sequence for a seed
/// on every platform).
func randoms(_ n: Int, seed: inout UInt64) -> [Float] {
    (0..<n).map { _ in
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int32(truncatingIfNeeded: seed >> 32)) / Float(Int32.max)
    }
}
