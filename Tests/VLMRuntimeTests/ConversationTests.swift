import Foundation
import VLMMedia
import VLMRuntime
import VLMTokenizers
import XCTest

/// Multi-turn conversations against transformers (Tests/Fixtures/conversations, written by
/// Tools/fixtures/make_conversation_expected.py): every turn's prompt and greedy reply, and the KV-cache reuse
/// between turns (earlier turns not prefilled again, earlier images not encoded again).
final class ConversationTests: XCTestCase {
    struct Turn {
        var text: String
        var images: [String]
        var promptText: String
        var inputIDs: [Int]
        var generated: [Int]
        var stopReason: String
        var reply: String
    }
    struct Scenario {
        var name: String
        var system: String?
        var turns: [Turn]
    }

    static func scenarios(_ model: String) throws -> (maxNewTokens: Int, scenarios: [Scenario]) {
        let json = try Fixtures.json(Fixtures.root.appendingPathComponent("conversations/\(model).json"))
        let raw = try XCTUnwrap(json["scenarios"] as? [[String: Any]])
        let scenarios = try raw.map { s in
            Scenario(name: s["name"] as? String ?? "", system: s["system"] as? String, turns: try XCTUnwrap(s["turns"] as? [[String: Any]]).map { t in
                Turn(text: try XCTUnwrap(t["text"] as? String), images: t["images"] as? [String] ?? [],
                     promptText: try XCTUnwrap(t["prompt_text"] as? String), inputIDs: try XCTUnwrap(t["input_ids"] as? [Int]),
                     generated: try XCTUnwrap(t["generated_token_ids"] as? [Int]), stopReason: try XCTUnwrap(t["stop_reason"] as? String),
                     reply: try XCTUnwrap(t["reply_text"] as? String))
            })
        }
        return (try XCTUnwrap(json["max_new_tokens"] as? Int), scenarios)
    }

    static func image(_ name: String) -> ImageInput { .file(Fixtures.root.appendingPathComponent("images-vlm/\(name)")) }

    static func config(maxNewTokens: Int) -> GenerationConfig {
        var c = GenerationConfig()
        c.maxNewTokens = maxNewTokens  // greedy, EOS honoured: what the fixture's generate() did
        return c
    }

    /// Tiles the model's preprocessing makes of `name` (what encoding that image costs).
    static func tiles(_ runner: ChatRunner, _ name: String) throws -> Int {
        guard let mm = runner as? MultimodalRunner, let placeholder = runner.imagePlaceholder else { return 0 }
        return try mm.prepare(text: placeholder, images: [image(name)]).images[0].tiles.count
    }

    func testSmolVLMConversationsMatchTransformers() throws { try checkConversations("tiny-smolvlm") }
    func testInternVLConversationsMatchTransformers() throws { try checkConversations("tiny-internvl") }
    func testTextConversationsMatchTransformers() throws { try checkConversations("tiny-llama-f32") }

    func checkConversations(_ model: String) throws {
        let (maxNew, scenarios) = try Self.scenarios(model)
        for scenario in scenarios {
            let runner = try RunnerFactory.make(modelDirectory: Fixtures.model(model), threads: 2)
            try runner.load()
            let conversation = Conversation(runner: runner, systemPrompt: scenario.system)
            var previous: GenerationResult?
            for (i, turn) in scenario.turns.enumerated() {
                let label = "\(model) \(scenario.name) turn \(i + 1)"
                var streamed = ""
                let result = try conversation.send(turn.text, images: turn.images.map(Self.image),
                                                   config: Self.config(maxNewTokens: maxNew)) { streamed += $0.text }
                XCTAssertEqual(try runner.renderChat(Array(conversation.history.dropLast()), addGenerationPrompt: true),
                               turn.promptText, "\(label): chat template over the whole conversation")
                XCTAssertEqual(result.promptTokenIDs, turn.inputIDs, "\(label): prompt ids")
                XCTAssertEqual(result.tokenIDs, turn.generated, "\(label): generated ids")
                XCTAssertEqual(result.stopReason.rawValue, turn.stopReason, label)
                XCTAssertEqual(result.text, turn.reply, "\(label): reply text")
                XCTAssertEqual(streamed, turn.reply, "\(label): streamed text")
                XCTAssertEqual(conversation.turns.last?.reply, turn.reply, label)

                // Cache reuse: only the new part is prefilled, only the new images are encoded.
                let s = result.stats
                XCTAssertEqual(s.promptTokens, turn.inputIDs.count, label)
                XCTAssertEqual(s.prefilledTokens, s.promptTokens - s.cachedTokens, label)
                if let previous {
                    // The template may re-tokenize the last reply differently from the generated ids, and the
                    // generation prompt's last token or two may merge with it: never more than that is redone.
                    XCTAssertGreaterThanOrEqual(s.cachedTokens, previous.stats.promptTokens - 2, "\(label): earlier turns prefilled again")
                    XCTAssertLessThanOrEqual(s.cachedTokens, previous.stats.totalTokens, label)
                } else {
                    XCTAssertEqual(s.cachedTokens, 0, label)
                }
                let newTiles = try turn.images.reduce(0) { $0 + (try Self.tiles(runner, $1)) }
                XCTAssertEqual(s.imageTilesEncoded, newTiles, "\(label): only this turn's images are encoded")
                if !turn.images.isEmpty { XCTAssertGreaterThan(newTiles, 0) }
                print("\(label): prompt \(s.promptTokens), cached \(s.cachedTokens), prefilled \(s.prefilledTokens), tiles \(s.imageTilesEncoded)")
                previous = result
            }
            XCTAssertEqual(conversation.turns.count, scenario.turns.count)
        }
    }

    /// The same picture bytes are recognised across turns, and a different picture with the same tiling (so the
    /// same placeholder ids) is not mistaken for the cached one.
    func testImageIdentityDecidesCacheReuse() throws {
        let runner = MultimodalRunner(modelDirectory: Fixtures.model("tiny-smolvlm"), threads: 2)
        try runner.load()
        let decoded = try Self.image("shapes-80x60.png").decode(options: .init())
        var pixels = decoded.pixels
        pixels[0] ^= 0xFF
        let other = ImageInput.pixels(try XCTUnwrap(RGBImage(width: decoded.width, height: decoded.height, pixels: pixels)))
        let prompt = "<|im_start|>User:<image>Describe this image.<end_of_utterance>\nAssistant:"
        var config = GenerationConfig()
        config.maxNewTokens = 6
        config.ignoreEOS = true
        let first = try runner.generate(continuing: prompt, images: [Self.image("shapes-80x60.png")], config: config) { _ in }
        // The same bytes again: the cached image is reused.
        let again = try runner.generate(continuing: prompt, images: [Self.image("shapes-80x60.png")], config: config) { _ in }
        XCTAssertEqual(again.stats.imageTilesEncoded, 0)
        XCTAssertEqual(again.tokenIDs, first.tokenIDs)
        // Another picture, same size: same ids, but the cache must be rolled back to before the image.
        let changed = try runner.generate(continuing: prompt, images: [other], config: config) { _ in }
        XCTAssertEqual(changed.promptTokenIDs, first.promptTokenIDs)
        XCTAssertGreaterThan(changed.stats.imageTilesEncoded, 0)
        XCTAssertEqual(changed.stats.cachedTokens, try XCTUnwrap(first.promptTokenIDs.firstIndex(of: 49190)))
        let fresh = MultimodalRunner(modelDirectory: Fixtures.model("tiny-smolvlm"), threads: 2)
        try fresh.load()
        XCTAssertEqual(changed.tokenIDs, try fresh.generate(continuing: prompt, images: [other], config: config) { _ in }.tokenIDs)
    }

    // MARK: Templates that rewrite earlier turns

    /// A copy of tiny-llama-f32 with another chat template.
    func modelWithTemplate(_ template: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("conv-template-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Fixtures.model("tiny-llama-f32"), to: dir)
        try Data(template.utf8).write(to: dir.appendingPathComponent("chat_template.jinja"))
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    static let countingTemplate = """
        {{ '<|im_start|>system\\nYou are a helpful assistant. This chat has ' + (messages|length)|string + ' messages so far.<|im_end|>\\n' }}\
        {% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
        """
    static let lastTwoTemplate = """
        {{ '<|im_start|>system\\nYou are a helpful assistant who sees only the last exchange.<|im_end|>\\n' }}\
        {% for message in messages[-2:] %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
        """

    func testTemplateThatRewritesEarlierTurnsRollsTheCacheBack() throws {
        for (name, template) in [("counting", Self.countingTemplate), ("last two", Self.lastTwoTemplate)] {
            let dir = try modelWithTemplate(template)
            let runner = TextRunner(modelDirectory: dir, threads: 2)
            try runner.load()
            let reference = TextRunner(modelDirectory: dir, threads: 2)
            try reference.load()
            let conversation = Conversation(runner: runner)
            var config = GenerationConfig()
            config.maxNewTokens = 10
            config.ignoreEOS = true
            var previousPrompt: [Int] = []
            for (i, text) in ["Hi! Can you count to three?", "Now count backwards from 5, please.", "And now to ten?"].enumerated() {
                let result = try conversation.send(text, config: config)
                let label = "\(name) template, turn \(i + 1)"
                // The expectation: the same model run fresh on the whole prompt (that path equals transformers).
                reference.reset()
                let expected = try reference.generate([.tokens(result.promptTokenIDs)], config: config) { _ in }
                XCTAssertEqual(result.tokenIDs, expected.tokenIDs, label)
                let s = result.stats
                XCTAssertEqual(s.prefilledTokens, s.promptTokens - s.cachedTokens, label)
                if i > 0 {
                    // The rewritten system line (or the dropped first messages) breaks the prefix early: the cache
                    // is rolled back to the common prefix, not emptied, and not reused past it.
                    let common = zip(previousPrompt, result.promptTokenIDs).prefix { $0 == $1 }.count
                    XCTAssertGreaterThan(s.cachedTokens, 0, label)
                    XCTAssertLessThan(s.cachedTokens, previousPrompt.count, label)
                    XCTAssertEqual(s.cachedTokens, common, label)
                }
                previousPrompt = result.promptTokenIDs
            }
        }
    }

    // MARK: Context limits

    func testTurnThatDoesNotFitThrowsWithTheNumbers() throws {
        let runner = TextRunner(modelDirectory: Fixtures.model("tiny-llama-f32"), threads: 2)
        try runner.load()
        let conversation = Conversation(runner: runner, systemPrompt: "Be brief.")
        var config = GenerationConfig()
        config.maxNewTokens = 8
        config.ignoreEOS = true
        config.seqLen = 80
        try conversation.send("Hi!", config: config)
        try conversation.send("Count to three.", config: config)
        XCTAssertThrowsError(try conversation.send("Please tell me a long story about a robot, its three friends, the old lighthouse by the sea, and the storm that came one night in late autumn.", config: config)) { error in
            guard case .turnDoesNotFit(let n, let limit, .error)? = error as? ConversationError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(limit, 80)
            XCTAssertGreaterThan(n, 80)
            XCTAssertTrue("\(error)".contains("\(n) tokens"), "\(error)")
            XCTAssertTrue("\(error)".contains("context holds 80"), "\(error)")
        }
        XCTAssertEqual(conversation.turns.count, 2, "a failed turn leaves the history as it was")
        conversation.clear()
        XCTAssertEqual(try conversation.send("Hi!", config: config).stats.cachedTokens, 0)
    }

    func testDropOldestTurnsKeepsTheSystemPromptAndFits() throws {
        let runner = TextRunner(modelDirectory: Fixtures.model("tiny-llama-f32"), threads: 2)
        try runner.load()
        let reference = TextRunner(modelDirectory: Fixtures.model("tiny-llama-f32"), threads: 2)
        try reference.load()
        let conversation = Conversation(runner: runner, systemPrompt: "Be brief.", contextPolicy: .dropOldestTurns)
        var config = GenerationConfig()
        config.maxNewTokens = 8
        config.ignoreEOS = true
        config.seqLen = 120
        let texts = ["Hi!", "Count to three.", "Now backwards.", "What is two plus two?", "Name a colour.", "Thanks!"]
        for (i, text) in texts.enumerated() {
            let result = try conversation.send(text, config: config)
            XCTAssertLessThanOrEqual(result.stats.promptTokens + config.maxNewTokens, 120, "turn \(i + 1)")
            XCTAssertEqual(conversation.history.first, ChatMessage(role: "system", content: .text("Be brief.")))
            XCTAssertEqual(conversation.turns.last?.text, text)
            XCTAssertEqual(conversation.turns.count + conversation.droppedTurns, i + 1)
            reference.reset()
            XCTAssertEqual(result.tokenIDs, try reference.generate([.tokens(result.promptTokenIDs)], config: config) { _ in }.tokenIDs)
        }
        XCTAssertGreaterThan(conversation.droppedTurns, 0, "the conversation outgrew 120 tokens")
        // A turn that cannot fit even alone is still an error.
        XCTAssertThrowsError(try conversation.send(String(repeating: "very long ", count: 80), config: config)) {
            guard case .turnDoesNotFit(_, 120, .dropOldestTurns)? = $0 as? ConversationError else { return XCTFail("\($0)") }
        }
    }

    func testImageMarkersAndTextModels() throws {
        let text = TextRunner(modelDirectory: Fixtures.model("tiny-llama-f32"), threads: 1)
        try text.load()
        XCTAssertThrowsError(try Conversation(runner: text).send("<image>hi", images: [Self.image("wide-64x40.png")])) {
            XCTAssertEqual($0 as? RunnerError, .imagesNotSupported)
        }
        let vlm = MultimodalRunner(modelDirectory: Fixtures.model("tiny-smolvlm"), threads: 1)
        try vlm.load()
        let conversation = Conversation(runner: vlm)
        XCTAssertThrowsError(try conversation.send("<image><image>hi", images: [Self.image("wide-64x40.png")])) {
            XCTAssertEqual($0 as? RunnerError, .imageCountMismatch(markers: 2, images: 1))
        }
        XCTAssertTrue(conversation.turns.isEmpty)
        // VLM messages are part lists, so SmolVLM's template renders text-only turns too.
        var config = GenerationConfig()
        config.maxNewTokens = 2
        try conversation.send("Hello there", config: config)
        XCTAssertEqual(conversation.history.first, ChatMessage(role: "user", content: .parts([.text("Hello there")])))
        XCTAssertTrue(try vlm.renderChat(conversation.history, addGenerationPrompt: false).contains("User: Hello there"))
    }
}
