import Foundation
import VLMRuntime
import XCTest

/// Sampler properties: greedy is argmax, filters never pick excluded tokens, seeds reproduce, frequencies follow
/// the distribution.
final class SamplerTests: XCTestCase {
    func config(_ f: (inout GenerationConfig) -> Void) -> GenerationConfig {
        var c = GenerationConfig()
        f(&c)
        return c
    }

    func testGreedyIsArgmaxWithLowestIndexOnTies() {
        var s = Sampler(config: GenerationConfig())
        XCTAssertEqual(s.sample([0, 3, 1, 3], history: []), 1)
    }

    func testTopKNeverPicksOutsideTheKBest() {
        let logits: [Float] = (0..<20).map { Float($0 % 7) }
        var s = Sampler(config: config { $0.temperature = 1.5; $0.topK = 3; $0.seed = 9 })
        let best = Set(logits.indices.sorted { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }.prefix(3))
        for _ in 0..<500 { XCTAssertTrue(best.contains(s.sample(logits, history: []))) }
    }

    func testTopPKeepsTheSmallestSufficientPrefix() {
        // probabilities ≈ [0.643, 0.237, 0.087, 0.032]; top_p 0.8 keeps the first two only.
        let logits: [Float] = [3, 2, 1, 0]
        var s = Sampler(config: config { $0.temperature = 1; $0.topP = 0.8; $0.seed = 1 })
        for _ in 0..<500 { XCTAssertLessThan(s.sample(logits, history: []), 2) }
    }

    func testMinPDropsUnlikelyTokens() {
        let logits: [Float] = [5, 4.9, 0, 0, 0]
        var s = Sampler(config: config { $0.temperature = 1; $0.minP = 0.5; $0.seed = 2 })
        for _ in 0..<500 { XCTAssertLessThan(s.sample(logits, history: []), 2) }
    }

    func testSameSeedSameSequenceAndFrequenciesFollowSoftmax() {
        let logits: [Float] = [0, log(3)]  // p = [0.25, 0.75]
        var a = Sampler(config: config { $0.temperature = 1; $0.seed = 42 })
        var b = Sampler(config: config { $0.temperature = 1; $0.seed = 42 })
        var ones = 0
        for _ in 0..<4000 {
            let x = a.sample(logits, history: [])
            XCTAssertEqual(x, b.sample(logits, history: []))
            ones += x
        }
        XCTAssertEqual(Double(ones) / 4000, 0.75, accuracy: 0.03)
    }

    func testRepetitionPenaltyAsTransformers() {
        // Token 0 (logit 2, seen) is divided by 2.5 → 0.8 < token 1 (1.0): greedy switches to 1.
        var s = Sampler(config: config { $0.repetitionPenalty = 2.5 })
        XCTAssertEqual(s.sample([2, 1, -1], history: [0]), 1)
        // Negative logits are multiplied: -1 → -2.5, still the smallest.
        XCTAssertEqual(s.sample([-1, -0.5, -3], history: [0]), 1)
    }

    func testTopLogprobsAreLogSoftmax() {
        let logits: [Float] = [1, 2, 3, 0.5]
        let z = logits.reduce(0) { $0 + exp(Double($1)) }
        let top = Sampler.topLogprobs(logits, count: 2)
        XCTAssertEqual(top.map(\.id), [2, 1])
        XCTAssertEqual(Double(top[0].logprob), 3 - log(z), accuracy: 1e-5)
        XCTAssertEqual(Double(top[1].logprob), 2 - log(z), accuracy: 1e-5)
    }
}
