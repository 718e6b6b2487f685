import Foundation
import VLMCore
import VLMModels
import VLMRuntime
import XCTest

/// Vision encoder + connector features and greedy generation against transformers on the tiny random
/// Idefics3 and InternVL checkpoints (Tools/fixtures/make_vlm_models.py). The inputs are transformers' own
/// pixel_values and input_ids, so this isolates the model from preprocessing and tokenization.
final class VisionLanguageParityTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/models")

    func floats(_ url: URL) throws -> [Float] {
        try Data(contentsOf: url).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    func testIdefics3() throws { try check("tiny-smolvlm") }
    func testInternVL() throws { try check("tiny-internvl") }

    func check(_ name: String) throws {
        let dir = Self.fixtures.appendingPathComponent(name)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("expected.json"))) as? [String: Any])
        let scenarios = try XCTUnwrap(json["scenarios"] as? [[String: Any]])
        let pool = ThreadPool(threadCount: 2)
        let model = try ModelRegistry.loadVisionLanguageModel(directory: dir, pool: pool)
        XCTAssertEqual(model.imageTokenID, json["image_token_id"] as? Int)
        for s in scenarios {
            let label = "\(name) \(s["name"] ?? "")"
            let pv = try XCTUnwrap(s["pixel_values"] as? [String: Any])
            let shape = try XCTUnwrap(pv["shape"] as? [Int])
            let pixels = try floats(dir.appendingPathComponent(try XCTUnwrap(pv["file"] as? String)))
            let (h, w) = (shape[shape.count - 2], shape[shape.count - 1])
            let tiles = pixels.count / (3 * h * w)

            // Features after the connector, all tiles of all images in order.
            let features = try pixels.withUnsafeBufferPointer {
                try model.encodeImage(tiles: $0.baseAddress!, count: tiles, height: h, width: w)
            }
            let feat = try XCTUnwrap(s["image_features"] as? [String: Any])
            let want = try floats(dir.appendingPathComponent(try XCTUnwrap(feat["file"] as? String)))
            XCTAssertEqual(features.count, want.count, label)
            let maxDiff = zip(features, want).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertLessThan(maxDiff, 1e-3, "\(label): image features differ by \(maxDiff)")

            // Greedy generation from transformers' input_ids with our features spliced in.
            let ids = try XCTUnwrap(s["input_ids"] as? [Int])
            let expected = try XCTUnwrap(s["generated_token_ids"] as? [Int])
            let positions = ids.indices.filter { ids[$0] == model.imageTokenID }
            XCTAssertEqual(positions.count * model.languageModel.hiddenSize, features.count, "\(label): image tokens vs features")
            // Image tokens come in contiguous runs per tile; splice by run.
            var spans: [MultimodalPrefiller.ImageSpan] = []
            var used = 0
            var i = 0
            while i < ids.count {
                guard ids[i] == model.imageTokenID else { i += 1; continue }
                var j = i
                while j < ids.count, ids[j] == model.imageTokenID { j += 1 }
                let hidden = model.languageModel.hiddenSize
                let lo = used * hidden, hi = (used + j - i) * hidden
                let slice = Array(features[lo..<hi])
                spans.append(MultimodalPrefiller.ImageSpan(start: i, count: j - i, features: slice))
                used += j - i
                i = j
            }
            let cache = model.languageModel.makeCache(maxTokens: nil)
            var logits = try XCTUnwrap(MultimodalPrefiller(model: model, chunkSize: 16).prefill(ids, from: 0, spans: spans, cache: cache))
            var generated: [Int] = []
            let step = DecoderStep(model: model.languageModel)
            while generated.count < expected.count {
                let t = Sampler.argmax(logits)
                generated.append(t)
                if generated.count < expected.count { logits = try step.step(t, cache: cache) }
            }
            XCTAssertEqual(generated, expected, "\(label): greedy tokens differ from transformers")
        }
    }
}
