import Foundation
import XCTest

/// Runs the `vlm` executable built next to the tests, as a user would, on the committed fixtures.
final class CLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    typealias Output = ProcessOutput

    func vlm(_ args: [String], stdin: String? = nil) throws -> Output {
        try runProcess(vlmBinary, args, stdin: stdin)
    }

    func model(_ name: String) -> String { Self.fixtures.appendingPathComponent("models/\(name)").path }

    func expectedCase(_ model: String, named name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("models/\(model)/expected.json"))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let cases = try XCTUnwrap(json["cases"] as? [[String: Any]])
        return try XCTUnwrap(cases.first { $0["name"] as? String == name }, "no case \(name)")
    }

    /// `vlm run --output-format json` on a chat prompt gives transformers' prompt ids and greedy tokens.
    func testRunJSONMatchesTransformers() throws {
        for name in ["tiny-llama-f32", "tiny-qwen2-bf16"] {
            let c = try expectedCase(name, named: "chat_user")
            let messages = try XCTUnwrap(c["messages"] as? [[String: String]])
            let user = try XCTUnwrap(messages.last?["content"])
            let want = try XCTUnwrap(c["generated_token_ids"] as? [Int])
            let r = try vlm(["run", "--model", model(name), "--prompt", user, "--max-new-tokens", "\(want.count)",
                             "--ignore-eos", "--top-logprobs", "3", "--output-format", "json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
            let turn = try XCTUnwrap((json["turns"] as? [[String: Any]])?.first)
            XCTAssertEqual(turn["prompt_token_ids"] as? [Int], c["prompt_token_ids"] as? [Int], name)
            XCTAssertEqual(turn["token_ids"] as? [Int], want, name)
            XCTAssertEqual((turn["top_logprobs"] as? [Any])?.count, want.count)
            let stats = try XCTUnwrap(turn["stats"] as? [String: Any])
            XCTAssertEqual(stats["generated_tokens"] as? Int, want.count)
            XCTAssertEqual(stats["prompt_tokens"] as? Int, (c["prompt_token_ids"] as? [Int])?.count)
        }
    }

    func testStatsLineHasExecuTorchKeysInOrder() throws {
        let r = try vlm(["run", "--model", model("tiny-llama-f32"), "--prompt", "Hi", "--max-new-tokens", "3", "--stats"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let line = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.hasPrefix("PyTorchObserver {") }, r.stdout)
        let json = String(line.dropFirst("PyTorchObserver ".count))
        let keys = ["prompt_tokens", "generated_tokens", "model_load_start_ms", "model_load_end_ms", "inference_start_ms",
                    "inference_end_ms", "prompt_eval_end_ms", "first_token_ms", "aggregate_sampling_time_ms",
                    "SCALING_FACTOR_UNITS_PER_SECOND"]
        let positions = keys.map { json.range(of: "\"\($0)\":")?.lowerBound }
        XCTAssertFalse(positions.contains(nil), "missing keys in \(json)")
        XCTAssertEqual(positions.compactMap { $0 }, positions.compactMap { $0 }.sorted(), "keys out of order: \(json)")
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Int])
        XCTAssertEqual(obj["SCALING_FACTOR_UNITS_PER_SECOND"], 1000)
        XCTAssertEqual(obj["generated_tokens"], 3)
        XCTAssertLessThanOrEqual(obj["inference_start_ms"]!, obj["prompt_eval_end_ms"]!)
        XCTAssertLessThanOrEqual(obj["prompt_eval_end_ms"]!, obj["first_token_ms"]!)
        XCTAssertLessThanOrEqual(obj["first_token_ms"]!, obj["inference_end_ms"]!)
    }

    func testErrorsAreOneLineAndNonZero() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        // A model folder with an unknown architecture.
        let unknown = tmp.appendingPathComponent("unknown")
        try FileManager.default.copyItem(atPath: model("tiny-llama-f32"), toPath: unknown.path)
        try Data(#"{"model_type": "mamba2", "hidden_size": 8}"#.utf8).write(to: unknown.appendingPathComponent("config.json"))
        // A model folder with a malformed tokenizer.json.
        let badTok = tmp.appendingPathComponent("badtok")
        try FileManager.default.copyItem(atPath: model("tiny-llama-f32"), toPath: badTok.path)
        try Data("{\"model\": ".utf8).write(to: badTok.appendingPathComponent("tokenizer.json"))

        let cases: [([String], String)] = [
            (["run", "--model", tmp.appendingPathComponent("missing").path, "--prompt", "hi"], "config.json"),
            (["run", "--model", unknown.path, "--prompt", "hi"], "mamba2"),
            (["run", "--model", badTok.path, "--prompt", "hi"], "tokenizer.json"),
            (["run", "--model", model("tiny-llama-f32"), "--prompt", "hello there, a long prompt", "--seq-len", "8"], "context"),
            (["run", "--model", model("tiny-llama-f32"), "--prompt", "hi", "--top-p", "0"], "top-p"),
        ]
        for (args, fragment) in cases {
            let r = try vlm(args)
            XCTAssertNotEqual(r.status, 0, "\(args) should fail")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "one-line error expected, got: \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: ") || r.stderr.hasPrefix("Error: "), r.stderr)
            XCTAssertTrue(r.stderr.contains(fragment), "'\(r.stderr)' should mention \(fragment)")
        }
    }

    /// `vlm run --image` on the tiny VLMs gives transformers' expanded prompt ids and greedy tokens.
    func testRunWithImagesMatchesTransformers() throws {
        for (name, scenario, prompt) in [("tiny-smolvlm", "two_images", "<image><image>Compare these images."),
                                         ("tiny-internvl", "image_between_text", "Look at this: <image> What colour is it?")] {
            let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("models/\(name)/expected.json"))
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
            let c = try XCTUnwrap((json["scenarios"] as? [[String: Any]])?.first { $0["name"] as? String == scenario })
            let images = try XCTUnwrap(c["images"] as? [String]).flatMap { ["--image", Self.fixtures.appendingPathComponent("images-vlm/\($0)").path] }
            let want = try XCTUnwrap(c["generated_token_ids"] as? [Int])
            let r = try vlm(["run", "--model", model(name), "--prompt", prompt, "--max-new-tokens", "\(want.count)", "--ignore-eos",
                             "--output-format", "json"] + images)
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
            let turn = try XCTUnwrap((out["turns"] as? [[String: Any]])?.first)
            XCTAssertEqual(turn["prompt_token_ids"] as? [Int], c["input_ids"] as? [Int], "\(name) \(scenario)")
            XCTAssertEqual(turn["token_ids"] as? [Int], want, "\(name) \(scenario)")
        }
    }

    func testImageErrorsAreOneLine() throws {
        let png = Self.fixtures.appendingPathComponent("images-vlm/square-130x130.png").path
        let notImage = Self.fixtures.appendingPathComponent("models/tiny-smolvlm/config.json").path
        let truncated = Self.fixtures.appendingPathComponent("images/truncated.png").path
        let cases: [([String], String)] = [
            (["--prompt", "<image><image>Two?", "--image", png], "2 <image> marker(s) but only 1 image"),
            (["--prompt", "No marker", "--image", png], "1 image(s) were given"),
            (["--prompt", "<image>What?", "--image", notImage], "config.json: not a JPEG or PNG"),
            (["--prompt", "<image>What?", "--image", truncated], "truncated.png"),
            (["--prompt", "<image>What?", "--image", png, "--max-image-pixels", "100"], "over the limit of 100"),
        ]
        for (args, fragment) in cases {
            let r = try vlm(["run", "--model", model("tiny-smolvlm"), "--max-new-tokens", "2"] + args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains(fragment), "'\(r.stderr)' should contain '\(fragment)'")
        }
        // A text-only model refuses images.
        let r = try vlm(["run", "--model", model("tiny-llama-f32"), "--prompt", "<image>hi", "--image", png])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("no vision encoder"), r.stderr)
    }

    func testBenchJSONHasTheDocumentedKeys() throws {
        let r = try vlm(["bench", "--model", model("tiny-qwen2-f32"), "--prompt-tokens", "16", "--gen-tokens", "4",
                         "--runs", "2", "--no-probe", "--output-format", "json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        for key in ["load_ms", "prefill_tokens_per_second", "decode_tokens_per_second", "time_to_first_token_ms", "peak_rss_mb"] {
            let v = try XCTUnwrap(json[key] as? [String: Double], key)
            XCTAssertNotNil(v["median"], key)
            XCTAssertLessThanOrEqual(v["min"]!, v["median"]!, key)
            XCTAssertLessThanOrEqual(v["median"]!, v["max"]!, key)
            XCTAssertGreaterThan(v["median"]!, 0, key)
        }
        XCTAssertEqual(json["threads"] as? Int, ProcessInfo.processInfo.activeProcessorCount)
        XCTAssertEqual(json["dtype"] as? String, "F32")
    }
}
