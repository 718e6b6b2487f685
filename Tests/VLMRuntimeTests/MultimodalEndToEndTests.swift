import Foundation
import VLMRuntime
import VLMTokenizers
import XCTest

/// The whole multimodal path against transformers on the tiny Idefics3 and InternVL checkpoints: PNG files
/// decoded, preprocessed, the chat template rendered from message parts, the prompt expanded and tokenized,
/// images encoded and spliced, and 24 greedy tokens generated.
final class MultimodalEndToEndTests: XCTestCase {
    func messages(_ raw: [[String: Any]]) -> [ChatMessage] {
        raw.map { m in
            let role = m["role"] as? String ?? ""
            if let text = m["content"] as? String { return ChatMessage(role: role, content: .text(text)) }
            let parts = (m["content"] as? [[String: Any]] ?? []).map { p -> ChatContentPart in
                p["type"] as? String == "image" ? .image : .text(p["text"] as? String ?? "")
            }
            return ChatMessage(role: role, content: .parts(parts))
        }
    }

    func testIdefics3EndToEnd() throws { try check("tiny-smolvlm") }
    func testInternVLEndToEnd() throws { try check("tiny-internvl") }

    func check(_ name: String) throws {
        let dir = Fixtures.model(name)
        let expected = try Fixtures.json(dir.appendingPathComponent("expected.json"))
        let scenarios = try XCTUnwrap(expected["scenarios"] as? [[String: Any]])
        for s in scenarios {
            let label = "\(name) \(s["name"] ?? "")"
            var options = ImageOptions()
            if let kwargs = s["processor_kwargs"] as? [String: Any], kwargs["do_image_splitting"] as? Bool == false {
                options.disableImageSplitting = true
            }
            let runner = MultimodalRunner(modelDirectory: dir, threads: 2, imageOptions: options)
            try runner.load()
            let prompt = try runner.renderChat(messages(try XCTUnwrap(s["messages"] as? [[String: Any]])), addGenerationPrompt: true)
            XCTAssertEqual(prompt, s["prompt_text"] as? String, "\(label): chat template")
            let images = (s["images"] as? [String] ?? []).map { ImageInput.file(Fixtures.root.appendingPathComponent("images-vlm/\($0)")) }
            let want = try XCTUnwrap(s["generated_token_ids"] as? [Int])
            var config = GenerationConfig()
            config.maxNewTokens = want.count
            config.ignoreEOS = true
            let result = try runner.generate(continuing: prompt, images: images, config: config) { _ in }
            XCTAssertEqual(result.promptTokenIDs, s["input_ids"] as? [Int], "\(label): expanded prompt ids")
            XCTAssertEqual(result.tokenIDs, want, "\(label): greedy tokens")
            XCTAssertEqual(result.stats.imageTilesEncoded, (s["preprocessing"] as? [[String: Any]] ?? []).reduce(0) {
                $0 + (($1["frames"] ?? $1["tiles"]) as? Int ?? 0)
            }, label)
        }
    }

    func testImageMarkerCountsMustMatch() throws {
        let runner = MultimodalRunner(modelDirectory: Fixtures.model("tiny-smolvlm"), threads: 1)
        try runner.load()
        let image = ImageInput.file(Fixtures.root.appendingPathComponent("images-vlm/square-130x130.png"))
        XCTAssertThrowsError(try runner.generate(continuing: "<image><image>hi", images: [image], config: GenerationConfig()) { _ in }) {
            XCTAssertEqual($0 as? RunnerError, .imageCountMismatch(markers: 2, images: 1))
        }
        XCTAssertThrowsError(try runner.generate(continuing: "hi", images: [image], config: GenerationConfig()) { _ in }) {
            XCTAssertEqual($0 as? RunnerError, .imageCountMismatch(markers: 0, images: 1))
        }
        // Unreadable image files are named in the error.
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("not-an-image-\(UUID().uuidString).png")
        try Data("hello".utf8).write(to: bad)
        defer { try? FileManager.default.removeItem(at: bad) }
        XCTAssertThrowsError(try runner.generate(continuing: "<image>hi", images: [.file(bad)], config: GenerationConfig()) { _ in }) {
            XCTAssertTrue("\($0)".contains(bad.lastPathComponent), "\($0)")
        }
    }
}
