import Foundation
import XCTest
@testable import VLMTokenizers

/// Single pre-tokenizers and normalizers against `pre_tokenize_str` / `normalize_str` of the Python package
/// (goldens.json "pre_tokenizers" / "normalizers"), including ones no fixture tokenizer uses.
final class TokenizerComponentTests: XCTestCase {
    private func describe(_ json: Any) -> String {
        (try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]))
            .flatMap { String(data: $0, encoding: .utf8) } ?? "\(json)"
    }

    /// A component's JSON (a Foundation object from goldens.json) as the node our reader would give for it.
    private func componentNode(_ json: Any, path: String) throws -> TokenizerJSONNode {
        let data = try JSONSerialization.data(withJSONObject: json)
        return TokenizerJSONNode(value: try TokenizerJSONParser.parse(data), file: "goldens.json", path: path)
    }

    func testPreTokenizers() throws {
        let entries = try TokenizerTestSupport.components("pre_tokenizers")
        XCTAssertGreaterThanOrEqual(entries.count, 15)
        for entry in entries {
            let name = describe(entry.json)
            let node = try componentNode(entry.json, path: "pre_tokenizer")
            guard let pre = try PreTokenizer.parse(node) else { XCTFail("\(name) parsed to nil"); continue }
            XCTAssertGreaterThanOrEqual(entry.cases.count, 60)
            for c in entry.cases {
                let pieces = pre.apply([PreTokenPiece(scalars: Array(c.text.unicodeScalars), atOriginalStart: true)])
                    .map { TokenizerNormalizer.string($0.scalars) }
                XCTAssertEqual(pieces, c.output, "\(name) on \(TokenizerTestSupport.visible(String(c.text.prefix(60))))")
            }
        }
    }

    func testNormalizers() throws {
        let entries = try TokenizerTestSupport.components("normalizers")
        XCTAssertGreaterThanOrEqual(entries.count, 10)
        for entry in entries {
            let name = describe(entry.json)
            let node = try componentNode(entry.json, path: "normalizer")
            guard let normalizer = try TokenizerNormalizer.parse(node) else { XCTFail("\(name) parsed to nil"); continue }
            for c in entry.cases {
                let out = TokenizerNormalizer.string(normalizer.normalize(Array(c.text.unicodeScalars)))
                XCTAssertEqual(out, c.output.first, "\(name) on \(TokenizerTestSupport.visible(String(c.text.prefix(60))))")
            }
        }
    }
}
