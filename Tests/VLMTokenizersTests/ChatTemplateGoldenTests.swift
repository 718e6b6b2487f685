import Foundation
import XCTest

@testable import VLMTokenizers

/// Where the chat-template fixtures live: `<repo>/Tests/Fixtures/templates`, and the shared model folders at
/// `<repo>/../shared/models`.
enum ChatTemplateFixtures {
    static var testsDirectory: URL {
        var url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while url.lastPathComponent != "Tests" && url.pathComponents.count > 1 { url.deleteLastPathComponent() }
        return url
    }

    static var templatesDirectory: URL { testsDirectory.appendingPathComponent("Fixtures/templates") }

    static var sharedModels: URL {
        testsDirectory.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/models")
    }

    /// goldens.json, written by Tools/fixtures/template_goldens.py from transformers' own rendering.
    static func goldens() throws -> JinjaDictionary {
        let url = templatesDirectory.appendingPathComponent("goldens.json")
        let text = try String(contentsOf: url, encoding: .utf8)
        guard case .dictionary(let goldens) = try JinjaValue.parseJSON(text) else {
            throw ChatTemplateError(kind: .loading, line: nil, message: "goldens.json is not an object")
        }
        return goldens
    }

    static func string(_ value: JinjaValue?) -> String {
        if case .string(let text)? = value { return text }
        return ""
    }

    static func entries(_ value: JinjaValue?) -> [JinjaDictionary] {
        guard case .array(let items)? = value else { return [] }
        return items.compactMap { item in
            if case .dictionary(let entry) = item { return entry }
            return nil
        }
    }

    static func stringDictionary(_ value: JinjaValue?) -> [String: String] {
        guard case .dictionary(let dictionary)? = value else { return [:] }
        var result: [String: String] = [:]
        for (key, value) in dictionary.pairs {
            if case .string(let text) = value { result[key] = text }
        }
        return result
    }

    /// The messages as `ChatMessage`s when they only have role and content (text or text/image parts).
    static func chatMessages(_ value: JinjaValue?) -> [ChatMessage]? {
        guard case .array(let items)? = value else { return nil }
        var messages: [ChatMessage] = []
        for item in items {
            guard case .dictionary(let message) = item, message.count == 2, case .string(let role)? = message["role"] else {
                return nil
            }
            switch message["content"] {
            case .string(let text)?:
                messages.append(ChatMessage(role: role, text: text))
            case .array(let parts)?:
                var converted: [ChatContentPart] = []
                for case .dictionary(let part) in parts {
                    switch (part["type"], part["text"]) {
                    case (.string("image")?, nil): converted.append(.image)
                    case (.string("text")?, .string(let text)?): converted.append(.text(text))
                    default: return nil
                    }
                }
                guard converted.count == parts.count else { return nil }
                messages.append(ChatMessage(role: role, content: .parts(converted)))
            default:
                return nil
            }
        }
        return messages
    }
}

extension ChatTemplateFixtures {
    /// Checks a Swift error against the Python error a golden recorded ("TypeError: message"): runtime errors
    /// carry Python's message verbatim; syntax errors and Jinja's missing-loader errors (`include`, `extends`)
    /// only need to be syntax or unsupported errors.
    static func checkError(_ error: ChatTemplateError, python: String, label: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let colon = python.range(of: ": ") else {
            XCTFail("\(label): golden error without a type: \(python)", file: file, line: line)
            return
        }
        let type = String(python[..<colon.lowerBound])
        let message = String(python[colon.upperBound...])
        if type.hasSuffix("SyntaxError") || message == "no loader for this environment specified" {
            XCTAssert([.syntax, .unsupported].contains(error.kind), "\(label): \(error)", file: file, line: line)
            return
        }
        XCTAssertEqual(error.message, message, label, file: file, line: line)
        XCTAssertNotNil(error.line, label, file: file, line: line)
        if type == "TemplateError" {
            XCTAssertEqual(error.kind, .raised, label, file: file, line: line)
        }
    }
}

/// Every template and Jinja case in goldens.json must render exactly as transformers 5.x renders it.
final class ChatTemplateGoldenTests: XCTestCase {
    private typealias F = ChatTemplateFixtures

    func testModelTemplatesMatchTransformers() throws {
        let goldens = try F.goldens()
        var checked = 0
        var viaMessagesAPI = 0
        for entry in F.entries(goldens["templates"]) {
            let name = F.string(entry["name"])
            let template = try ChatTemplate(source: F.string(entry["source"]))
            let special = F.stringDictionary(entry["special_tokens"])
            for golden in F.entries(entry["cases"]) {
                let label = "\(name) \(F.string(golden["name"]))"
                let generationPrompt = golden["add_generation_prompt"] == .bool(true)
                do {
                    let output: String
                    if let messages = F.chatMessages(golden["messages"]), golden["tools"] == nil {
                        output = try template.render(
                            messages: messages, addGenerationPrompt: generationPrompt, specialTokens: special)
                        viaMessagesAPI += 1
                    } else {
                        var context: [String: JinjaValue] = special.mapValues { .string($0) }
                        context["messages"] = golden["messages"] ?? .array([])
                        context["add_generation_prompt"] = .bool(generationPrompt)
                        context["tools"] = golden["tools"] ?? JinjaValue.none
                        context["documents"] = JinjaValue.none
                        output = try template.render(context: context)
                    }
                    if case .string(let expected)? = golden["expected"] {
                        XCTAssertEqual(output, expected, label)
                    } else {
                        XCTFail("\(label): transformers raised \(F.string(golden["error"])), Swift rendered \(output.debugDescription)")
                    }
                } catch let error as ChatTemplateError {
                    if golden["expected"] != nil {
                        XCTFail("\(label): \(error)")
                    } else {
                        F.checkError(error, python: F.string(golden["error"]), label: label)
                    }
                }
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 120, "golden conversation cases checked")
        XCTAssertGreaterThanOrEqual(viaMessagesAPI, 90, "cases rendered through render(messages:)")
    }

    func testJinjaSemanticsMatchJinja2() throws {
        let goldens = try F.goldens()
        var checked = 0
        for golden in F.entries(goldens["jinja"]) {
            let label = F.string(golden["name"])
            var options = JinjaRenderOptions()
            if case .int(let seconds)? = golden["now_unix"] {
                options.now = { Date(timeIntervalSince1970: TimeInterval(seconds)) }
                options.timeZone = TimeZone(identifier: "UTC")
            }
            guard case .dictionary(let context)? = golden["context"] else {
                XCTFail("\(label): no context")
                continue
            }
            var variables: [String: JinjaValue] = [:]
            for (key, value) in context.pairs { variables[key] = value }
            do {
                let template = try ChatTemplate(source: F.string(golden["template"]))
                let output = try template.render(context: variables, options: options)
                if case .string(let expected)? = golden["expected"] {
                    XCTAssertEqual(output, expected, label)
                } else {
                    XCTFail("\(label): jinja2 raised \(F.string(golden["error"])), Swift rendered \(output.debugDescription)")
                }
            } catch let error as ChatTemplateError {
                if golden["expected"] != nil {
                    XCTFail("\(label): \(error)")
                } else {
                    F.checkError(error, python: F.string(golden["error"]), label: label)
                }
            }
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 150, "golden Jinja cases checked")
    }

    /// The loader finds the same template and special tokens transformers used for the shared model folders.
    func testLoaderFindsModelTemplatesLikeTransformers() throws {
        let goldens = try F.goldens()
        guard FileManager.default.fileExists(atPath: F.sharedModels.path) else {
            throw XCTSkip("shared models not found at \(F.sharedModels.path)")
        }
        var checked = 0
        for entry in F.entries(goldens["templates"]) {
            guard case .string(let folder)? = entry["model_dir"] else { continue }
            let directory = F.sharedModels.appendingPathComponent(folder)
            XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), F.string(entry["source"]), folder)
            XCTAssertEqual(
                try ChatTemplateLoader.specialTokens(directory: directory), F.stringDictionary(entry["special_tokens"]), folder)
            XCTAssertNotNil(try ChatTemplateLoader.load(directory: directory), folder)
            checked += 1
        }
        XCTAssertEqual(checked, 3)
    }

    /// The stored Qwen2.5 and InternVL3 templates are the fixture files goldens.json was rendered from.
    func testStoredTemplateFilesMatchGoldens() throws {
        let goldens = try F.goldens()
        for entry in F.entries(goldens["templates"]) {
            guard case .string(let file)? = entry["template_file"] else { continue }
            let text = try String(contentsOf: F.templatesDirectory.appendingPathComponent(file), encoding: .utf8)
            XCTAssertEqual(text, F.string(entry["source"]), file)
        }
    }
}
