import Foundation
import VLMCore
import VLMRuntime
import XCTest

/// Session files: a conversation saved after some turns and loaded into a fresh runner continues exactly as the
/// uninterrupted one (same tokens as transformers), prefilling only the new turn; damaged or foreign files are
/// refused with a clear error and never crash.
final class ConversationSessionTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("conv-session-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    func testRoundTripSmolVLM() throws { try roundTrip("tiny-smolvlm") }
    func testRoundTripInternVL() throws { try roundTrip("tiny-internvl") }
    func testRoundTripText() throws { try roundTrip("tiny-llama-f32") }

    /// Turns 1-2 of the three-turn scenario, save, load into a new runner, turn 3.
    func roundTrip(_ model: String) throws {
        let (maxNew, scenarios) = try ConversationTests.scenarios(model)
        let scenario = try XCTUnwrap(scenarios.first { $0.name == "three_turns" })
        let config = ConversationTests.config(maxNewTokens: maxNew)
        let file = tmp.appendingPathComponent("\(model).session")

        let first = try RunnerFactory.make(modelDirectory: Fixtures.model(model), threads: 2)
        let before = Conversation(runner: first, systemPrompt: scenario.system)
        for turn in scenario.turns.prefix(2) {
            try before.send(turn.text, images: turn.images.map(ConversationTests.image), config: config)
        }
        let cachedBefore = try XCTUnwrap(before.lastResult).stats.totalTokens
        try before.save(to: file)

        let second = try RunnerFactory.make(modelDirectory: Fixtures.model(model), threads: 2)
        let after = Conversation(runner: second)
        try after.load(from: file)
        XCTAssertEqual(after.history, before.history)
        XCTAssertEqual(after.systemPrompt, scenario.system)
        XCTAssertEqual(after.turns.map(\.reply), scenario.turns.prefix(2).map(\.reply))

        let last = scenario.turns[2]
        let resumed = try after.send(last.text, images: last.images.map(ConversationTests.image), config: config)
        let continued = try before.send(last.text, images: last.images.map(ConversationTests.image), config: config)
        XCTAssertEqual(resumed.promptTokenIDs, last.inputIDs, model)
        XCTAssertEqual(resumed.tokenIDs, last.generated, "\(model): the resumed turn equals transformers'")
        XCTAssertEqual(resumed.tokenIDs, continued.tokenIDs)
        // Only the new turn was prefilled: exactly as much as without the save/load.
        XCTAssertEqual(resumed.stats.cachedTokens, continued.stats.cachedTokens, model)
        XCTAssertEqual(resumed.stats.prefilledTokens, continued.stats.prefilledTokens, model)
        XCTAssertGreaterThanOrEqual(resumed.stats.cachedTokens, scenario.turns[1].inputIDs.count - 2)
        XCTAssertLessThanOrEqual(resumed.stats.cachedTokens, cachedBefore)
        // Earlier images were not encoded again after the resume.
        let newTiles = try last.images.reduce(0) { $0 + (try ConversationTests.tiles(second, $1)) }
        XCTAssertEqual(resumed.stats.imageTilesEncoded, newTiles, model)
        print("\(model) resumed turn 3: prompt \(resumed.stats.promptTokens), cached \(resumed.stats.cachedTokens), prefilled \(resumed.stats.prefilledTokens)")
    }

    /// A saved session for tiny-llama-f32 after two turns.
    func savedTextSession() throws -> (URL, Data) {
        let runner = TextRunner(modelDirectory: Fixtures.model("tiny-llama-f32"), threads: 2)
        let conversation = Conversation(runner: runner, systemPrompt: "Be brief.")
        var config = GenerationConfig()
        config.maxNewTokens = 6
        try conversation.send("Hi!", config: config)
        try conversation.send("Count to three.", config: config)
        let file = tmp.appendingPathComponent("text.session")
        try conversation.save(to: file)
        return (file, try Data(contentsOf: file))
    }

    /// One loaded runner per model for the many failing loads (a failed load leaves it as it was).
    var runners: [String: ChatRunner] = [:]

    func loadError(_ data: Data, model: String = "tiny-llama-f32") throws -> String {
        let file = tmp.appendingPathComponent("damaged-\(UUID().uuidString).session")
        try data.write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let runner = try runners[model] ?? RunnerFactory.make(modelDirectory: Fixtures.model(model), threads: 1)
        runners[model] = runner
        let conversation = Conversation(runner: runner, systemPrompt: "untouched")
        var message = ""
        XCTAssertThrowsError(try conversation.load(from: file)) { error in
            XCTAssertTrue(error is SessionError, "\(error)")
            message = "\(error)"
        }
        XCTAssertEqual(conversation.systemPrompt, "untouched", "a failed load changes nothing")
        XCTAssertTrue(conversation.turns.isEmpty)
        XCTAssertTrue(message.contains(file.path), message)
        return message
    }

    func testDamagedFilesAreRefusedClearly() throws {
        let (_, good) = try savedTextSession()
        func contains(_ message: String, _ fragment: String) { XCTAssertTrue(message.contains(fragment), "'\(message)' should say '\(fragment)'") }

        // Truncated anywhere: inside the magic, the file header, the JSON header, the KV rows, the checksum.
        let headerLength = Int(good.subdata(in: 12..<16).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        for cut in [0, 5, 8, 13, 16, 16 + headerLength / 2, 16 + headerLength + 100, good.count / 2, good.count - 9, good.count - 1] {
            let message = try loadError(good.prefix(cut))
            XCTAssertTrue(message.contains("truncated") || message.contains("not a SwiftVLM session") || message.contains("corrupted"),
                          "cut at \(cut): \(message)")
        }
        contains(try loadError(good.prefix(good.count - 100)), "truncated")
        contains(try loadError(good.prefix(3)), "not a SwiftVLM session")
        contains(try loadError(good + Data([1, 2, 3])), "unexpected bytes")

        var wrongMagic = good
        wrongMagic[0] = UInt8(ascii: "X")
        contains(try loadError(wrongMagic), "not a SwiftVLM session file")

        var wrongVersion = good
        wrongVersion[8] = 9
        contains(try loadError(wrongVersion), "version 9 is not supported")

        // Any flipped byte after the file header is caught (checksum, or the header no longer parses).
        var state: UInt64 = 12345
        for _ in 0..<40 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let at = 16 + Int(state >> 33) % (good.count - 16)
            var damaged = good
            damaged[at] ^= UInt8(truncatingIfNeeded: state >> 20) | 1
            let message = try loadError(damaged)
            XCTAssertTrue(message.contains("corrupted") || message.contains("truncated"), "byte \(at): \(message)")
        }
        var kv = good
        kv[good.count - 20] ^= 0x40
        contains(try loadError(kv), "checksum mismatch")

        // A header that parses but lies about sizes, with a valid checksum: no crash, a clear error.
        contains(try loadError(forged(header: #"{"format":"swiftvlm-conversation"}"#)), "not a valid session header")
        let huge = """
            {"format":"swiftvlm-conversation","model":{"config_fnv1a64":"0","weights_fingerprint":"0"},"prompt_format":"chat_template",
             "dropped_turns":0,"turns":[{"text":"a","reply":"b","images":[{"name":"x.png","kind":"encoded","bytes":9223372036854775000,"fnv1a64":"0000000000000000"}]}],
             "cache":{"tokens":4611686018427387904,"layers":4,"row_width":4,"dtype":"f32","token_ids":[],"images":[]}}
            """
        contains(try loadError(forged(header: huge)), "overflows")
        let negative = huge.replacingOccurrences(of: "9223372036854775000", with: "-5")
        contains(try loadError(forged(header: negative)), "negative")
    }

    /// A file with a valid magic, version and checksum around `header` and no payload.
    func forged(header: String) -> Data {
        var d = Data("SVLMSESS".utf8)
        withUnsafeBytes(of: UInt32(1).littleEndian) { d.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(header.utf8.count).littleEndian) { d.append(contentsOf: $0) }
        d.append(Data(header.utf8))
        return d
    }

    func testAnotherModelIsRefused() throws {
        let (_, good) = try savedTextSession()
        let message = try loadError(good, model: "tiny-llama-untied-f32")
        XCTAssertTrue(message.contains("saved with another model"), message)
        XCTAssertTrue(try loadError(good, model: "tiny-smolvlm").contains("another model"))
        // Same config.json, different weights.
        let copy = tmp.appendingPathComponent("tiny-llama-copy")
        try FileManager.default.copyItem(at: Fixtures.model("tiny-llama-f32"), to: copy)
        let weights = copy.appendingPathComponent("model.safetensors")
        var bytes = try Data(contentsOf: weights)
        bytes[bytes.count - 1] ^= 0x01
        try bytes.write(to: weights)
        let file = tmp.appendingPathComponent("text.session")
        XCTAssertThrowsError(try Conversation(runner: TextRunner(modelDirectory: copy, threads: 1)).load(from: file)) {
            XCTAssertTrue("\($0)".contains("saved with other weights"), "\($0)")
        }
        // Same folder loaded with quantized weights: its KV cache would not match the float one.
        let quantized = TextRunner(modelDirectory: Fixtures.model("tiny-llama-f32"), threads: 1,
                                   quantization: QuantizationOptions(scheme: try QuantizationScheme(bits: 8, groupSize: 32)))
        XCTAssertThrowsError(try Conversation(runner: quantized).load(from: file)) {
            XCTAssertTrue("\($0)".contains("saved with other weights"), "\($0)")
        }
        XCTAssertThrowsError(try Conversation(runner: TextRunner(modelDirectory: copy, threads: 1)).load(from: tmp.appendingPathComponent("missing"))) {
            XCTAssertTrue("\($0)".contains("cannot read it"), "\($0)")
        }
    }
}
