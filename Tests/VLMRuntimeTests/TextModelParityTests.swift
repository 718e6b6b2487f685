import Foundation
import VLMRuntime
import XCTest

/// Greedy generation, logits and log-probabilities against transformers on the tiny random checkpoints made by
/// Tools/fixtures/make_text_models.py (reference: transformers, fp32 compute over the checkpoint's weights).
final class TextModelParityTests: XCTestCase {
    static let models = ["tiny-llama-f32", "tiny-llama-bf16", "tiny-llama-untied-f32", "tiny-qwen2-f32", "tiny-qwen2-bf16"]

    func testGreedyTokensLogitsAndLogprobsMatchTransformers() throws {
        for name in Self.models {
            try checkModel(name)
        }
    }

    private func checkModel(_ name: String) throws {
        let dir = Fixtures.model(name)
        let expected = try Fixtures.json(dir.appendingPathComponent("expected.json"))
        let cases = try XCTUnwrap(expected["cases"] as? [[String: Any]], "\(name): expected.json has no cases")
        XCTAssertGreaterThanOrEqual(cases.count, 4, name)
        let runner = TextRunner(modelDirectory: dir, threads: 2)
        try runner.load()
        for (index, c) in cases.enumerated() {
            let label = "\(name) case \(index) (\(c["name"] ?? ""))"
            let prompt = try XCTUnwrap(c["prompt_token_ids"] as? [Int], label)
            let want = try XCTUnwrap(c["generated_token_ids"] as? [Int], label)
            var config = GenerationConfig()
            config.maxNewTokens = want.count
            config.ignoreEOS = true
            config.topLogprobs = 5
            config.prefillChunkSize = 64  // the long case then spans several chunks
            runner.reset()
            let result = try runner.generate([.tokens(prompt)], config: config) { _ in }
            XCTAssertEqual(result.tokenIDs, want, "\(label): greedy tokens differ from transformers")

            if let wantLogprobs = c["top_logprobs"] as? [[[Double]]] {
                XCTAssertEqual(result.topLogprobs.count, wantLogprobs.count, label)
                for (step, (got, exp)) in zip(result.topLogprobs, wantLogprobs).enumerated() {
                    XCTAssertEqual(got.map(\.id), exp.map { Int($0[0]) }, "\(label) step \(step): top-5 ids")
                    for (g, e) in zip(got, exp) {
                        XCTAssertEqual(Double(g.logprob), e[1], accuracy: 1e-3, "\(label) step \(step): logprob of \(g.id)")
                    }
                }
            }
            if let file = c["last_logits_file"] as? String {
                let want = try Fixtures.floats(dir.appendingPathComponent(file))
                runner.reset()
                let logits = try runner.lastLogits(afterPrefilling: prompt)
                XCTAssertEqual(logits.count, want.count, label)
                let maxDiff = zip(logits, want).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(maxDiff, 1e-3, "\(label): last-position logits differ by \(maxDiff)")
            }
        }
    }
}
