import Foundation
import XCTest

@testable import VLMTokenizers

/// The public rendering API: messages, special tokens, extra variables, values and JSON.
final class ChatTemplateAPITests: XCTestCase {
    func testRenderMessagesBuildsTransformersContext() throws {
        let template = try ChatTemplate(source: """
            {{- bos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ custom }}
            {%- for m in messages %}|{{ m.role }}:{% if m.content is string %}{{ m.content }}{% else %}
            {%- for p in m.content %}{% if p.type == 'image' %}<img>{% else %}{{ p.text }}{% endif %}{% endfor %}{% endif %}
            {%- endfor %}|{{ messages[1].content[1] }}
            """)
        let messages = [
            ChatMessage(role: "system", text: "Be brief."),
            ChatMessage(role: "user", content: .parts([.text("Look: "), .image, .text("?")])),
        ]
        let output = try template.render(
            messages: messages, addGenerationPrompt: true, specialTokens: ["bos_token": "<s>"], extra: ["custom": 7])
        XCTAssertEqual(output, "<s>|True|True|True|7|system:Be brief.|user:Look: <img>?|{'type': 'image'}")
    }

    func testExtraOverridesSpecialTokensAndSetsTools() throws {
        let template = try ChatTemplate(source: "{{ eos_token }} {{ tools | tojson }} {{ documents }}")
        let output = try template.render(
            messages: [], addGenerationPrompt: false, specialTokens: ["eos_token": "<e>"],
            extra: ["eos_token": "<override>", "tools": [["name": "f"]]])
        XCTAssertEqual(output, "<override> [{\"name\": \"f\"}] None")
    }

    func testRenderIsThreadSafe() throws {
        let template = try ChatTemplate(source: "{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}")
        let messages = (0..<50).map { ChatMessage(role: $0 % 2 == 0 ? "user" : "assistant", text: "message \($0)") }
        let expected = try template.render(messages: messages, addGenerationPrompt: false)
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var outputs: [String] = []
        }
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let output = (try? template.render(messages: messages, addGenerationPrompt: false)) ?? "failed"
            results.lock.lock()
            results.outputs.append(output)
            results.lock.unlock()
        }
        XCTAssertEqual(results.outputs, Array(repeating: expected, count: 8))
    }

    func testStrftimeNowUsesTheClock() throws {
        let template = try ChatTemplate(source: "{{ strftime_now('%d %B %Y, %H:%M') }}")
        var options = JinjaRenderOptions()
        options.now = { Date(timeIntervalSince1970: 1_722_006_245) }
        options.timeZone = TimeZone(identifier: "UTC")
        XCTAssertEqual(try template.render(context: [:], options: options), "26 July 2024, 15:04")
        // Without a clock it formats the current local time, as datetime.now() does.
        let year = String(Calendar.current.component(.year, from: Date()))
        XCTAssertTrue(try ChatTemplate(source: "{{ strftime_now('%Y') }}").render(context: [:]) == year)
    }

    func testJSONKeepsOrderAndNumberKinds() throws {
        let value = try JinjaValue.parseJSON(#"{"z": 1, "a": [1.0, 2, -3e2, true, null, "\u00e9\ud83d\ude00\n"], "m": {}}"#)
        guard case .dictionary(let dictionary) = value else { return XCTFail("not a dictionary") }
        XCTAssertEqual(dictionary.keys, ["z", "a", "m"])
        XCTAssertEqual(dictionary["a"], [.double(1), .int(2), .double(-300), true, nil, "é😀\n"])
        XCTAssertEqual(try value.jsonString(), #"{"z": 1, "a": [1.0, 2, -300.0, true, null, "é😀\n"], "m": {}}"#)
        XCTAssertEqual(try value.jsonString(indent: 1, sortKeys: true), "{\n \"a\": [\n  1.0,\n  2,\n  -300.0,\n  true,\n  null,\n  \"é😀\\n\"\n ],\n \"m\": {},\n \"z\": 1\n}")
        XCTAssertThrowsError(try JinjaValue.parseJSON("[1,]"))
        XCTAssertThrowsError(try JinjaValue.parseJSON(String(repeating: "[", count: 10_000)))
    }

    func testPythonStringForms() {
        XCTAssertEqual(JinjaValue.double(1e16).description, "1e+16")
        XCTAssertEqual(JinjaValue.double(123.0).description, "123.0")
        XCTAssertEqual(JinjaValue.double(.leastNonzeroMagnitude).description, "5e-324")
        XCTAssertEqual(JinjaValue.double(.nan).description, "nan")
        XCTAssertEqual(JinjaValue.double(-.infinity).description, "-inf")
        XCTAssertEqual(JinjaValue.bool(true).description, "True")
        XCTAssertEqual(JinjaValue.none.description, "None")
        XCTAssertEqual(JinjaValue.undefined("'x' is undefined").description, "")
        XCTAssertEqual(JinjaValue.array(["it's", 1, nil]).description, #"["it's", 1, None]"#)
        XCTAssertEqual(JinjaValue.dictionary(["a": ["b": 1.5]]).description, "{'a': {'b': 1.5}}")
    }

    func testDictionaryKeepsInsertionOrder() {
        var dictionary: JinjaDictionary = ["b": 1, "a": 2]
        dictionary["c"] = 3
        dictionary["b"] = 4
        XCTAssertEqual(dictionary.keys, ["b", "a", "c"])
        XCTAssertEqual(dictionary.values, [4, 2, 3])
        dictionary["a"] = nil
        XCTAssertEqual(dictionary.keys, ["b", "c"])
        XCTAssertEqual(dictionary, ["c": 3, "b": 4])
    }
}
