import Foundation
import XCTest
@testable import VLMTokenizers

/// Our tokenizer.json reader against Foundation's JSONSerialization on the real files, and its edge cases.
final class TokenizerJSONParserTests: XCTestCase {
    /// The value as JSONSerialization would return it, for comparing whole documents.
    private func foundation(_ value: TokenizerJSONValue) -> Any {
        switch value {
        case .null: return NSNull()
        case .bool(let b): return NSNumber(value: b)
        case .number(let d, let exact): return exact.map { NSNumber(value: $0) } ?? NSNumber(value: d)
        case .string(let s): return s
        case .array(let items): return items.map(foundation)
        case .object(let members):
            var d: [String: Any] = [:]
            for (k, v) in zip(members.keys, members.values) { d[k] = foundation(v) }
            return d
        }
    }

    private func parse(_ text: String) throws -> TokenizerJSONValue {
        try TokenizerJSONParser.parse(Data(text.utf8))
    }

    /// (tokenizer_config.json is not compared: it is read with JSONSerialization, whose objects it is handed on as,
    /// and its integers past 64 bits, such as SmolLM2's model_max_length 1000000000000000019884624838656, are exact
    /// decimals there and Doubles here.)
    func testRealTokenizerFilesParseAsJSONSerializationDoes() throws {
        var files: [URL] = []
        if let shared = TokenizerTestSupport.sharedModelsDirectory {
            for name in ["SmolLM2-135M-Instruct", "SmolVLM-500M-Instruct"] {  // SmolVLM-256M's file is the same as 500M's
                files.append(shared.appendingPathComponent(name).appendingPathComponent("tokenizer.json"))
            }
        }
        for name in ["llama-style", "metaspace-style", "qwen2-style", "roberta-style", "suffix-style"] {
            files.append(TokenizerTestSupport.fixturesDirectory.appendingPathComponent(name).appendingPathComponent("tokenizer.json"))
        }
        var compared = 0
        for url in files where FileManager.default.fileExists(atPath: url.path) {
            let data = try Data(contentsOf: url)
            let ours = foundation(try TokenizerJSONParser.parse(data))
            let reference = try JSONSerialization.jsonObject(with: data)
            guard let a = ours as? [String: Any], let b = reference as? [String: Any] else {
                XCTFail("\(url.path): top level is not an object")
                continue
            }
            XCTAssertTrue(NSDictionary(dictionary: a).isEqual(to: b), "\(url.path): documents differ")
            compared += 1
        }
        XCTAssertGreaterThanOrEqual(compared, 5)  // the fixtures at least; the two real files where shared/models is
    }

    func testStringsEscapesAndNumbers() throws {
        let value = try parse(#"{"s": "a\u00e9\ud83d\ude00\n\t\"\\\/b", "raw": "Ġhé", "i": -12, "z": -0, "f": 1.5e3, "#
            + #""big": 12345678901234567890, "t": true, "n": null, "a": [], "o": {}}"#)
        guard case .object(let o) = value else { return XCTFail("not an object") }
        guard case .string(let s)? = o["s"] else { return XCTFail("s") }
        XCTAssertEqual(s, "aé😀\n\t\"\\/b")
        guard case .string(let raw)? = o["raw"] else { return XCTFail("raw") }
        XCTAssertEqual(Array(raw.utf8), Array("Ġhé".utf8))
        guard case .number(let i, let ie)? = o["i"] else { return XCTFail("i") }
        XCTAssertEqual(i, -12)
        XCTAssertEqual(ie, -12)
        guard case .number(_, let ze)? = o["z"] else { return XCTFail("z") }
        XCTAssertEqual(ze, 0)
        guard case .number(let f, let fe)? = o["f"] else { return XCTFail("f") }
        XCTAssertEqual(f, 1500)
        XCTAssertNil(fe, "1.5e3 is not an integer literal")
        guard case .number(let big, let be)? = o["big"] else { return XCTFail("big") }
        XCTAssertNil(be, "past Int.max")
        XCTAssertEqual(big, 12345678901234567890.0)
        guard case .bool(true)? = o["t"], case .null? = o["n"], case .array(let a)? = o["a"], case .object(let e)? = o["o"]
        else { return XCTFail("literals") }
        XCTAssertTrue(a.isEmpty)
        XCTAssertEqual(e.count, 0)
    }

    func testRepeatedKeyTakesTheLastValue() throws {
        let node = TokenizerJSONNode(value: try parse(#"{"k": 1, "k": 2}"#), file: "t.json", path: "")
        XCTAssertEqual(try node["k"].int(), 2)
        XCTAssertEqual(try node.keys(), ["k"])
    }

    func testMalformedInputIsAnErrorWithItsPosition() {
        let cases: [(String, String)] = [
            ("{\"a\": 1,\n \"b\" 2}", "line 2, column 6: expected ':'"),
            ("{\"a\": [1, 2,]}", "expected a value, found ']'"),
            ("{\"a\": 1} x", "after the top-level value"),
            ("{\"a\": \"abc", "unterminated string"),
            ("{\"a\": \"\\ud800\"}", "lone surrogate"),
            ("{\"a\": \"\\udc00x\"}", "lone surrogate"),
            ("{\"a\": \"\\x\"}", "invalid escape"),
            ("{\"a\": \"\\u12\"}", "four hex digits"),
            ("{\"a\": \"tab\there\"}", "control character"),
            ("{\"a\": 012}", "leading zero"),
            ("{\"a\": 1.}", "after the decimal point"),
            ("{\"a\": 1e}", "exponent"),
            ("{\"a\": tru}", "expected true"),
            ("{\"a\": NaN}", "expected a value"),
            ("", "empty"),
            ("   ", "empty"),
            ("{\"a\": 1", "found the end of the file"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try parse(text), text) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(text.debugDescription): \(error)")
            }
        }
        // Invalid UTF-8 inside a string.
        XCTAssertThrowsError(try TokenizerJSONParser.parse(Data([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D]))) {
            XCTAssertTrue("\($0)".contains("not valid UTF-8"), "\($0)")
        }
    }

    func testDeepNestingIsAnErrorNotACrash() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        XCTAssertThrowsError(try parse("{\"a\": \(deep)}")) { XCTAssertTrue("\($0)".contains("nested deeper"), "\($0)") }
        let fine = String(repeating: "[", count: 120) + String(repeating: "]", count: 120)
        XCTAssertNoThrow(try parse("{\"a\": \(fine)}"))
        let over = String(repeating: "{\"a\": ", count: 129) + "1" + String(repeating: "}", count: 129)
        XCTAssertThrowsError(try parse(over)) { XCTAssertTrue("\($0)".contains("deeper than 128"), "\($0)") }
    }

    func testByteOrderMarkIsSkipped() throws {
        let value = try TokenizerJSONParser.parse(Data([0xEF, 0xBB, 0xBF]) + Data(#"{"a": 1}"#.utf8))
        guard case .object(let o) = value, case .number(1, 1)? = o["a"] else { return XCTFail("\(value)") }
    }
}
