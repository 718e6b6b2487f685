import Foundation
import XCTest
@testable import VLMTokenizers

/// The public surface the runner relies on: lookups, special tokens, config values, thread safety, speed.
final class TokenizerAPITests: XCTestCase {
    func testSmolVLMAddedTokensAndConfig() throws {
        let tok = try TokenizerTestSupport.tokenizer(named: "SmolVLM-256M-Instruct")
        // Ids from tokenizers.Tokenizer.token_to_id.
        XCTAssertEqual(tok.tokenID("<image>"), 49190)
        XCTAssertEqual(tok.tokenID("<fake_token_around_image>"), 49189)
        XCTAssertEqual(tok.tokenID("<row_1_col_1>"), 49153)
        XCTAssertEqual(tok.tokenID("<global-img>"), 49152)
        XCTAssertEqual(tok.tokenID("<end_of_utterance>"), 49279)
        XCTAssertEqual(tok.token(49279), "<end_of_utterance>")
        XCTAssertNil(tok.token(49280))
        XCTAssertNil(tok.tokenID("<no such token>"))
        XCTAssertEqual(tok.vocabularySize, 49280)
        XCTAssertTrue(tok.specialTokenIDs.isSuperset(of: [0, 1, 2, 49190, 49279]))
        XCTAssertEqual(tok.addedTokens.count, 145)
        XCTAssertEqual(tok.bosToken, "<|im_start|>")
        XCTAssertEqual(tok.eosToken, "<end_of_utterance>")
        XCTAssertEqual(tok.eosTokenID, 49279)
        XCTAssertEqual(tok.padToken, "<|im_end|>")
        XCTAssertEqual(tok.unkToken, "<|endoftext|>")
        XCTAssertEqual(tok.encode("<|im_start|>user\nhi<|im_end|>"), [1, 4093, 198, 6004, 2])
        XCTAssertEqual(tok.decode([1, 4093, 198, 6004, 2], skipSpecialTokens: true), "user\nhi")
        XCTAssertEqual(tok.decode([1, 4093, 198, 6004, 2]), "<|im_start|>user\nhi<|im_end|>")
    }

    func testQwen2StyleConfig() throws {
        let tok = try TokenizerTestSupport.tokenizer(named: "qwen2-style")
        XCTAssertEqual(tok.eosToken, "<|im_end|>")
        XCTAssertEqual(tok.padToken, "<|endoftext|>")
        XCTAssertNil(tok.bosToken)
        XCTAssertNil(tok.bosTokenID)
        XCTAssertEqual(tok.tokenizerConfig["tokenizer_class"] as? String, "Qwen2Tokenizer")
        let template = try XCTUnwrap(tok.tokenizerConfig["chat_template"] as? String)
        XCTAssertTrue(template.contains("You are Qwen, created by Alibaba Cloud."))
        XCTAssertEqual(tok.tokenID("<|im_start|>"), 3001)
        XCTAssertEqual(tok.tokenID("<IMG_CONTEXT>"), 3024)
        XCTAssertEqual(tok.vocabularySize, 3031)
        // <tool_call> is an added token but not special: kept by skipSpecialTokens.
        let call = try XCTUnwrap(tok.tokenID("<tool_call>"))
        XCTAssertFalse(tok.specialTokenIDs.contains(call))
        XCTAssertEqual(tok.decode([call], skipSpecialTokens: true), "<tool_call>")
    }

    func testConfigTokenAsObject() throws {
        let tok = try TokenizerTestSupport.tokenizer(named: "metaspace-style")
        XCTAssertEqual(tok.bosToken, "<s>")  // {"content": "<s>", "__type": "AddedToken"}
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertEqual(tok.encode("hi", addSpecialTokens: true).first, 1)
        XCTAssertEqual(tok.encode("hi", addSpecialTokens: true).last, 2)
    }

    func testConcurrentEncodingIsConsistent() throws {
        let tok = try TokenizerTestSupport.tokenizer(named: "qwen2-style")
        let texts = try TokenizerTestSupport.goldens().first { $0.name == "qwen2-style" }?.cases ?? []
        final class Mismatches: @unchecked Sendable {
            let lock = NSLock()
            var count = 0
        }
        let mismatches = Mismatches()
        DispatchQueue.concurrentPerform(iterations: texts.count * 4) { i in
            let c = texts[i % texts.count]
            if tok.encode(c.text) != c.ids {
                mismatches.lock.lock(); mismatches.count += 1; mismatches.lock.unlock()
            }
        }
        XCTAssertGreaterThan(texts.count, 60)
        XCTAssertEqual(mismatches.count, 0)
    }

    /// Older tokenizer.json files list merges as "a b" strings instead of ["a", "b"] pairs.
    func testLegacyStringMergesEncodeTheSame() throws {
        let dir = TokenizerTestSupport.fixturesDirectory.appendingPathComponent("qwen2-style")
        let data = try Data(contentsOf: dir.appendingPathComponent("tokenizer.json"))
        var root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        var model = try XCTUnwrap(root["model"] as? [String: Any])
        let pairs = try XCTUnwrap(model["merges"] as? [[String]])
        model["merges"] = pairs.map { $0.joined(separator: " ") }
        root["model"] = model
        let legacy = try Tokenizer(tokenizerJSON: try JSONSerialization.data(withJSONObject: root),
                                   tokenizerConfigJSON: nil)
        let entry = try XCTUnwrap(try TokenizerTestSupport.goldens().first { $0.name == "qwen2-style" })
        for c in entry.cases { XCTAssertEqual(legacy.encode(c.text), c.ids, c.text) }
    }

    func testDirectoryWithoutTokenizerConfig() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(
            at: TokenizerTestSupport.fixturesDirectory.appendingPathComponent("llama-style/tokenizer.json"),
            to: dir.appendingPathComponent("tokenizer.json"))
        let tok = try Tokenizer(directory: dir)
        XCTAssertTrue(tok.tokenizerConfig.isEmpty)
        XCTAssertNil(tok.bosToken)
        XCTAssertEqual(tok.encode("hi", addSpecialTokens: true).first, 1)  // TemplateProcessing "<s> $A"
        XCTAssertEqual(tok.decode(tok.encode("Hello 😀 world")), "Hello 😀 world")
    }

    /// A 10k-character English prompt. In a release build this takes a few milliseconds; the bound here is loose
    /// enough for debug builds on a busy machine.
    func testEncodeSpeedOf10kCharacterPrompt() throws {
        guard let shared = TokenizerTestSupport.sharedModelsDirectory else { throw XCTSkip("no shared/models") }
        let loadStart = Date()
        let tok = try Tokenizer(directory: shared.appendingPathComponent("SmolLM2-135M-Instruct"))
        let loadMs = Date().timeIntervalSince(loadStart) * 1000
        let paragraph = "The quick brown fox jumps over the lazy dog while 42 engineers debate tokenizers, caches, "
            + "and the merits of byte-level BPE versus SentencePiece. "
        var text = ""
        var k = 0
        while text.count < 10_000 { text += paragraph.replacingOccurrences(of: "42", with: String(k)); k += 1 }
        text = String(text.prefix(10_000))
        let cold = Date()
        let ids = tok.encode(text)
        let coldMs = Date().timeIntervalSince(cold) * 1000
        let warm = Date()
        _ = tok.encode(text)
        let warmMs = Date().timeIntervalSince(warm) * 1000
        print("load SmolLM2 tokenizer.json \(String(format: "%.0f", loadMs)) ms; "
              + "encode 10k chars -> \(ids.count) tokens: first \(String(format: "%.1f", coldMs)) ms, "
              + "cached \(String(format: "%.1f", warmMs)) ms")
        XCTAssertGreaterThan(ids.count, 1500)
        XCTAssertEqual(tok.decode(ids), text)
        XCTAssertLessThan(coldMs, 2000)
    }
}
