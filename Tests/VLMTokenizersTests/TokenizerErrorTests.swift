import Foundation
import XCTest
@testable import VLMTokenizers

/// Bad files throw errors whose message names the file, the JSON path and the problem; nothing crashes.
final class TokenizerErrorTests: XCTestCase {
    private let tinyModel = #"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#

    private func json(_ fields: String) -> Data {
        Data("{\(fields)}".utf8)
    }

    private func assertThrows(_ data: Data, config: Data? = nil, contains parts: [String],
                              file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try Tokenizer(tokenizerJSON: data, tokenizerConfigJSON: config)
            XCTFail("expected an error containing \(parts)", file: file, line: line)
        } catch let error as TokenizerError {
            let message = error.description
            for p in parts {
                XCTAssertTrue(message.contains(p), "\(message.debugDescription) should contain \(p.debugDescription)",
                              file: file, line: line)
            }
            XCTAssertEqual(error.localizedDescription, message, file: file, line: line)
        } catch {
            XCTFail("unexpected error type \(error)", file: file, line: line)
        }
    }

    func testTinyTokenizerLoads() throws {
        let tok = try Tokenizer(tokenizerJSON: json(#""model": \#(tinyModel)"#), tokenizerConfigJSON: nil)
        XCTAssertEqual(tok.encode("abab"), [2, 2])
        XCTAssertEqual(tok.decode([2, 0]), "ab a")  // no decoder: tokens joined by spaces, as in `tokenizers`
        XCTAssertEqual(tok.vocabularySize, 3)
        XCTAssertTrue(tok.tokenizerConfig.isEmpty)
        XCTAssertNil(tok.eosToken)
    }

    func testMalformedJSON() {
        assertThrows(Data("{\"model\": {".utf8), contains: ["tokenizer.json", "malformed JSON"])
        assertThrows(Data("[1, 2]".utf8), contains: ["tokenizer.json", "malformed JSON", "an array"])
        assertThrows(Data(), contains: ["tokenizer.json", "malformed JSON"])
    }

    func testMissingModel() {
        assertThrows(json(#""normalizer": null"#), contains: ["tokenizer.json", "model", "missing"])
    }

    func testUnknownModelType() {
        assertThrows(json(#""model": {"type": "WordPiece", "vocab": {"a": 0}}"#),
                     contains: ["model.type", "\"WordPiece\"", "not supported", "BPE"])
        assertThrows(json(#""model": {"type": "Unigram", "vocab": [["a", 0.0]]}"#),
                     contains: ["model.type", "\"Unigram\""])
    }

    func testMissingOrBadVocab() {
        assertThrows(json(#""model": {"type": "BPE", "merges": []}"#), contains: ["model.vocab", "missing"])
        assertThrows(json(#""model": {"type": "BPE", "vocab": ["a", "b"], "merges": []}"#),
                     contains: ["model.vocab", "an array"])
        assertThrows(json(#""model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}"#),
                     contains: ["model.vocab", "an integer"])
    }

    func testBadMerges() {
        assertThrows(json(#""model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}"#),
                     contains: ["model.merges", "merge #0", "\"c\"", "not in the vocabulary"])
        assertThrows(json(#""model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}"#),
                     contains: ["merged token \"ab\""])
        assertThrows(json(#""model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["ab"]}"#),
                     contains: ["merge #0", "\"a b\""])
        assertThrows(json(#""model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [7]}"#),
                     contains: ["model.merges[0]"])
    }

    func testUnknownPreTokenizerType() {
        assertThrows(json(#""model": \#(tinyModel), "pre_tokenizer": {"type": "FixedLength", "length": 5}"#),
                     contains: ["tokenizer.json: pre_tokenizer.type \"FixedLength\" is not supported (supported: ByteLevel"])
        assertThrows(json(#""model": \#(tinyModel), "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "UnicodeScripts"}]}"#),
                     contains: ["pre_tokenizer.pretokenizers[1].type", "\"UnicodeScripts\""])
        assertThrows(json(#""model": \#(tinyModel), "pre_tokenizer": {"type": "Split", "pattern": {"String": "x"}, "behavior": "Sideways"}"#),
                     contains: ["pre_tokenizer.behavior", "\"Sideways\"", "Isolated"])
        assertThrows(json(#""model": \#(tinyModel), "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}"#),
                     contains: ["pre_tokenizer.pattern.Regex", "cannot be compiled"])
        assertThrows(json(#""model": \#(tinyModel), "pre_tokenizer": {"kind": "ByteLevel"}"#),
                     contains: ["pre_tokenizer.type", "missing"])
    }

    func testUnknownOtherComponents() {
        assertThrows(json(#""model": \#(tinyModel), "normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}"#),
                     contains: ["normalizer.type", "\"Precompiled\"", "NFC"])
        assertThrows(json(#""model": \#(tinyModel), "decoder": {"type": "CTC"}"#),
                     contains: ["decoder.type", "\"CTC\"", "ByteLevel"])
        assertThrows(json(#""model": \#(tinyModel), "post_processor": {"type": "Magic"}"#),
                     contains: ["post_processor.type", "\"Magic\"", "TemplateProcessing"])
        assertThrows(json(#""model": \#(tinyModel), "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}}"#),
                     contains: ["post_processor.single[0].SpecialToken.id", "\"<s>\""])
    }

    func testBadAddedTokens() {
        assertThrows(json(#""model": \#(tinyModel), "added_tokens": [{"id": 5, "special": true}]"#),
                     contains: ["added_tokens[0].content", "missing"])
        assertThrows(json(#""model": \#(tinyModel), "added_tokens": {"id": 5}"#),
                     contains: ["added_tokens", "an array"])
        assertThrows(json(#""model": \#(tinyModel), "added_tokens": [{"id": 5, "content": "<x>", "special": "yes"}]"#),
                     contains: ["added_tokens[0].special", "a boolean"])
    }

    func testUnknownTokenNotInVocab() {
        assertThrows(json(#""model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}"#),
                     contains: ["model.unk_token", "<unk>"])
    }

    func testMalformedTokenizerConfig() {
        assertThrows(json(#""model": \#(tinyModel)"#), config: Data("{\"eos_token\": ".utf8),
                     contains: ["tokenizer_config.json", "malformed JSON"])
    }

    func testMissingDirectory() {
        let dir = URL(fileURLWithPath: "/nonexistent/tokenizer-\(UUID().uuidString)")
        XCTAssertThrowsError(try Tokenizer(directory: dir)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("tokenizer.json"), message)
            XCTAssertTrue(message.contains("cannot read"), message)
        }
    }
}
