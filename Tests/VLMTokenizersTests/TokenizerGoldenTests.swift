import Foundation
import XCTest
@testable import VLMTokenizers

/// Encode / decode must equal the Python `tokenizers` package (goldens.json, written by
/// Tools/fixtures/tokenizer_goldens.py) for every string of the corpus and every tokenizer.
final class TokenizerGoldenTests: XCTestCase {
    private func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard let entry = try TokenizerTestSupport.goldens().first(where: { $0.name == name }) else {
            return XCTFail("goldens.json has no entry \(name)", file: file, line: line)
        }
        let tok = try TokenizerTestSupport.tokenizer(entry)
        XCTAssertGreaterThanOrEqual(entry.cases.count, 60)

        var failures = 0
        for c in entry.cases {
            let shown = TokenizerTestSupport.visible(String(c.text.prefix(80)))
            let ids = tok.encode(c.text)
            if ids != c.ids { failures += 1 }
            XCTAssertEqual(ids, c.ids, "\(name) encode(\(shown))", file: file, line: line)
            XCTAssertEqual(tok.encode(c.text, addSpecialTokens: true), c.idsSpecial,
                           "\(name) encode(\(shown), addSpecialTokens: true)", file: file, line: line)
            XCTAssertEqual(tok.decode(c.ids), c.decoded, "\(name) decode(ids of \(shown))", file: file, line: line)
            XCTAssertEqual(tok.decode(c.ids, skipSpecialTokens: true), c.decodedSkip,
                           "\(name) decode(ids of \(shown), skipSpecialTokens: true)", file: file, line: line)
            if failures > 10 { return XCTFail("\(name): too many encode failures, stopping", file: file, line: line) }
        }
        for d in entry.decodeCases {
            XCTAssertEqual(tok.decode(d.ids), d.decoded, "\(name) decode(\(d.ids))", file: file, line: line)
            XCTAssertEqual(tok.decode(d.ids, skipSpecialTokens: true), d.decodedSkip,
                           "\(name) decode(\(d.ids), skipSpecialTokens: true)", file: file, line: line)
        }
        XCTAssertEqual(tok.vocabularySize, entry.vocabSize, "\(name) vocabularySize", file: file, line: line)
        XCTAssertEqual(tok.specialTokenIDs, entry.specialIDs, "\(name) specialTokenIDs", file: file, line: line)
        for (token, id) in entry.lookups {
            XCTAssertEqual(tok.tokenID(token), id, "\(name) tokenID(\(token.debugDescription))", file: file, line: line)
            XCTAssertEqual(tok.token(id), token, "\(name) token(\(id))", file: file, line: line)
        }
    }

    func testSmolLM2() throws { try check("SmolLM2-135M-Instruct") }
    func testSmolVLM256M() throws { try check("SmolVLM-256M-Instruct") }
    func testQwen2Style() throws { try check("qwen2-style") }
    func testLlamaStyleByteFallbackAndTemplate() throws { try check("llama-style") }
    func testMetaspaceStyle() throws { try check("metaspace-style") }
    func testSuffixStyle() throws { try check("suffix-style") }
    func testRobertaStyle() throws { try check("roberta-style") }

    /// The goldens cover the whole set of shipped fixtures and both shared models.
    func testGoldensListEveryTokenizer() throws {
        let names = Set(try TokenizerTestSupport.goldens().map { $0.name })
        XCTAssertEqual(names, ["SmolLM2-135M-Instruct", "SmolVLM-256M-Instruct", "qwen2-style", "llama-style",
                               "metaspace-style", "suffix-style", "roberta-style"])
    }
}
