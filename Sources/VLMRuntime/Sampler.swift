import Foundation

/// Picks the next token from logits. Greedy when temperature is 0; otherwise the transformers order of
/// processors: repetition penalty, temperature, top-k, top-p, min-p, then a draw from the softmax.
public struct Sampler: Sendable {
    public let config: GenerationConfig
    private var rng: SplitMix64

    public init(config: GenerationConfig) {
        self.config = config
        rng = SplitMix64(seed: config.seed)
    }

    /// `history`: prompt and generated ids so far (for the repetition penalty).
    public mutating func sample(_ logits: [Float], history: [Int]) -> Int {
        var l = logits
        if config.repetitionPenalty != 1 {
            // transformers' RepetitionPenaltyLogitsProcessor: divide positive logits, multiply negative ones.
            for id in Set(history) where id >= 0 && id < l.count {
                l[id] = l[id] > 0 ? l[id] / config.repetitionPenalty : l[id] * config.repetitionPenalty
            }
        }
        if config.temperature == 0 { return Self.argmax(l) }
        for i in l.indices { l[i] /= config.temperature }
        // Candidates sorted by logit, best first (stable for equal logits: lower id first).
        var order = Array(l.indices)
        order.sort { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
        if config.topK > 0, config.topK < order.count { order.removeSubrange(config.topK...) }
        let maxLogit = l[order[0]]
        var probs = order.map { Double(expf(l[$0] - maxLogit)) }
        var total = probs.reduce(0, +)
        if config.topP < 1 {
            // Keep the smallest prefix whose mass reaches top_p (always at least one token).
            var cumulative = 0.0, keep = 0
            for p in probs {
                cumulative += p / total
                keep += 1
                if cumulative >= Double(config.topP) { break }
            }
            order.removeSubrange(keep...)
            probs.removeSubrange(keep...)
            total = probs.reduce(0, +)
        }
        if config.minP > 0 {
            // Drop tokens whose probability is below min_p times the best one's.
            let threshold = Double(config.minP) * (probs[0] / total)
            let keep = probs.prefix { $0 / total >= threshold }.count
            order.removeSubrange(max(1, keep)...)
            probs.removeSubrange(max(1, keep)...)
            total = probs.reduce(0, +)
        }
        var r = rng.nextDouble() * total
        for (i, p) in probs.enumerated() {
            r -= p
            if r < 0 { return order[i] }
        }
        return order[order.count - 1]
    }

    /// Index of the largest logit; the lowest index wins ties, as torch.argmax does.
    public static func argmax(_ x: [Float]) -> Int {
        var best = 0
        for i in 1..<x.count where x[i] > x[best] { best = i }
        return best
    }

    /// The `n` most likely tokens and their log-probabilities under log_softmax(logits).
    public static func topLogprobs(_ logits: [Float], count n: Int) -> [(id: Int, logprob: Float)] {
        guard n > 0, !logits.isEmpty else { return [] }
        let m = logits.max() ?? 0
        var sum = 0.0
        for v in logits { sum += Double(expf(v - m)) }
        let logZ = Float(log(sum)) + m
        var best: [(Int, Float)] = []
        for (i, v) in logits.enumerated() {
            if best.count < n || v > best[best.count - 1].1 {
                let at = best.firstIndex { v > $0.1 } ?? best.count
                best.insert((i, v), at: at)
                if best.count > n { best.removeLast() }
            }
        }
        return best.map { (id: $0.0, logprob: $0.1 - logZ) }
    }
}

/// A small, fast, seedable generator so sampling is reproducible across platforms.
struct SplitMix64: Sendable {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    mutating func nextDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }
}
