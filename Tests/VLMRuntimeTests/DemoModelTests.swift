import Foundation
import VLMMedia
import VLMRuntime
import VLMTokenizers
import XCTest

/// The trained demo model (models/smolvlm-shapes, Tools/demo-model) on its held-out set (Tests/Fixtures/demo-heldout,
/// made with another seed and never trained on): our greedy answers against transformers' answers (recorded by
/// Tools/demo-model/make_heldout.py) and against the true answers of the synthetic scenes. What this proves is that
/// we run a trained VLM exactly as transformers does (token for token, including multi-turn cache reuse).
final class DemoModelTests: XCTestCase {
    static let model = Fixtures.repository.appendingPathComponent("models/smolvlm-shapes")
    static let heldout = Fixtures.root.appendingPathComponent("demo-heldout")

    struct Turn {
        var user: String
        var images: [String]
        var prompt: String
        var type: String
        var expected: String
        var reference: String  // transformers' answer
    }
    struct Item { var id: String; var kind: String; var turns: [Turn] }

    static func items() throws -> [Item] {
        let data = try Data(contentsOf: heldout.appendingPathComponent("items.json"))
        let raw = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        return try raw.map { i in
            Item(id: try XCTUnwrap(i["id"] as? String), kind: try XCTUnwrap(i["kind"] as? String),
                 turns: try XCTUnwrap(i["turns"] as? [[String: Any]]).map { t in
                     Turn(user: try XCTUnwrap(t["user"] as? String), images: t["images"] as? [String] ?? [],
                          prompt: try XCTUnwrap(t["prompt"] as? String), type: try XCTUnwrap(t["type"] as? String),
                          expected: try XCTUnwrap(t["expected"] as? String), reference: try XCTUnwrap(t["answer"] as? String))
                 })
        }
    }

    /// Lowercased, trimmed, one final period dropped: the held-out script's exact-match rule.
    static func normalised(_ s: String) -> String {
        var t = s.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        if t.hasSuffix(".") { t.removeLast() }
        return t
    }

    func testHeldOutAnswersMatchTransformersAndAreCorrect() throws {
        let items = try Self.items()
        XCTAssertGreaterThanOrEqual(items.count, 200)
        let runner = MultimodalRunner(modelDirectory: Self.model, threads: 2)
        try runner.load()
        var config = GenerationConfig()
        config.maxNewTokens = 64

        var turns = 0, agree = 0, correct = 0
        var perKind: [String: (turns: Int, correct: Int)] = [:]
        var conversationsAllCorrect = 0, comparisonsCorrect = 0
        var disagreements: [String] = []
        for item in items {
            runner.reset()
            var images: [ImageInput] = []
            var messages: [ChatMessage] = []
            var allCorrect = true
            for (k, turn) in item.turns.enumerated() {
                images += turn.images.map { .file(Self.heldout.appendingPathComponent($0)) }
                // Our chat template over the conversation so far equals the prompt transformers ran.
                messages.append(ChatMessage.user(turn.user).message.asParts())
                XCTAssertEqual(try runner.renderChat(messages, addGenerationPrompt: true), turn.prompt, "item \(item.id) turn \(k + 1): prompt")
                // Later turns continue the KV cache of earlier ones (only the new part is prefilled).
                let result = try runner.generate(continuing: turn.prompt, images: images, config: config) { _ in }
                if k > 0 { XCTAssertGreaterThan(result.stats.cachedTokens, 0, "item \(item.id) turn \(k + 1): cache reused") }
                let ours = result.text.trimmingCharacters(in: .whitespacesAndNewlines)
                turns += 1
                if ours == turn.reference { agree += 1 } else {
                    disagreements.append("item \(item.id) turn \(k + 1) [\(turn.type)]: ours \(ours.debugDescription), transformers \(turn.reference.debugDescription)")
                }
                let ok = Self.normalised(ours) == Self.normalised(turn.expected)
                if ok { correct += 1 } else { allCorrect = false }
                perKind[item.kind, default: (0, 0)].turns += 1
                if ok { perKind[item.kind, default: (0, 0)].correct += 1 }
                messages.append(ChatMessage(role: "assistant", content: .parts([.text(turn.reference)])))
            }
            if item.turns.count >= 3, allCorrect { conversationsAllCorrect += 1 }
            if item.kind == "compare", allCorrect { comparisonsCorrect += 1 }
        }
        let agreement = Double(agree) / Double(turns), accuracy = Double(correct) / Double(turns)
        print("demo model held-out: \(turns) turns, agreement with transformers \(agree)/\(turns) = \(agreement), "
              + "correct \(correct)/\(turns) = \(accuracy); per kind \(perKind)")
        XCTAssertGreaterThanOrEqual(agreement, 0.99, "agreement with transformers; first differences:\n" + disagreements.prefix(10).joined(separator: "\n"))
        // Our accuracy is transformers' accuracy (summary.json, by the same exact-match rule), and at least the issue's
        // target of 90%: the committed model reaches 95.6% (colour, shape, count, describe and compare 100%, "Where is
        // the X?" 87%, turn 3's yes / no 57-86%; Tools/demo-model/README.md).
        let summary = try Fixtures.json(Self.heldout.appendingPathComponent("summary.json"))
        let reference = try XCTUnwrap(summary["turn_accuracy"] as? Double)
        XCTAssertEqual(accuracy, reference, accuracy: 0.01, "correct answers, ours vs transformers'")
        XCTAssertGreaterThanOrEqual(accuracy, 0.90, "held-out turns answered correctly")
        XCTAssertGreaterThan(comparisonsCorrect, 0, "a two-image comparison answered correctly")
        XCTAssertGreaterThan(conversationsAllCorrect, 0, "a three-turn conversation with images in turns 1 and 3 answered correctly throughout")
    }
}

private extension ChatMessage {
    /// VLM templates expect every content as a list of parts.
    func asParts() -> ChatMessage {
        if case .text(let t) = content { return ChatMessage(role: role, content: .parts([.text(t)])) }
        return self
    }
}
