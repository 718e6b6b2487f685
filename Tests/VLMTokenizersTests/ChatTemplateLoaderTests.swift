import Foundation
import XCTest

@testable import VLMTokenizers

/// The loader picks a model folder's template with transformers 5.x precedence.
final class ChatTemplateLoaderTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("ChatTemplateLoaderTests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func write(_ name: String, _ text: String) throws {
        let url = directory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    private func remove(_ name: String) throws {
        try FileManager.default.removeItem(at: directory.appendingPathComponent(name))
    }

    func testPrecedenceFollowsTransformers() throws {
        XCTAssertNil(try ChatTemplateLoader.source(directory: directory))
        XCTAssertNil(try ChatTemplateLoader.load(directory: directory))

        try write("tokenizer_config.json", #"{"chat_template": "from tokenizer_config", "eos_token": "</s>"}"#)
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "from tokenizer_config")

        try write("chat_templates/default.jinja", "from chat_templates/default.jinja")
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "from chat_templates/default.jinja")

        try write("chat_template.jinja", "from chat_template.jinja\n")
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "from chat_template.jinja\n")

        try write("chat_template.json", #"{"chat_template": "from chat_template.json"}"#)
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "from chat_template.json")

        try write("processor_config.json", #"{"processor_class": "X", "chat_template": null}"#)
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "from chat_template.json")

        try write("processor_config.json", #"{"processor_class": "X", "chat_template": "from processor_config"}"#)
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "from processor_config")
        XCTAssertEqual(try ChatTemplateLoader.load(directory: directory)?.source, "from processor_config")
    }

    func testNamedTemplateListUsesDefault() throws {
        try write(
            "tokenizer_config.json",
            #"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#)
        XCTAssertEqual(try ChatTemplateLoader.source(directory: directory), "D")

        try write("tokenizer_config.json", #"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#)
        XCTAssertThrowsError(try ChatTemplateLoader.source(directory: directory)) { error in
            XCTAssertEqual((error as? ChatTemplateError)?.kind, .loading)
        }
    }

    func testInvalidFilesAreLoadingErrors() throws {
        try write("chat_template.json", "{not json")
        XCTAssertThrowsError(try ChatTemplateLoader.source(directory: directory)) { error in
            let error = error as? ChatTemplateError
            XCTAssertEqual(error?.kind, .loading)
            XCTAssertEqual(error?.message.hasPrefix("chat_template.json is not valid JSON"), true)
        }
        try remove("chat_template.json")
        try write("chat_template.jinja", "{% for %}")
        XCTAssertThrowsError(try ChatTemplateLoader.load(directory: directory)) { error in
            XCTAssertEqual((error as? ChatTemplateError)?.kind, .syntax)
        }
    }

    func testSpecialTokens() throws {
        try write(
            "special_tokens_map.json",
            #"{"bos_token": "<old>", "sep_token": {"content": "<sep>", "lstrip": false}, "mask_token": "<mask>"}"#)
        try write(
            "tokenizer_config.json",
            #"""
            {"bos_token": {"__type": "AddedToken", "content": "<s>", "special": true}, "eos_token": "</s>",
             "pad_token": null, "unk_token": "<unk>", "additional_special_tokens": ["<x>"], "chat_template": "t"}
            """#)
        XCTAssertEqual(
            try ChatTemplateLoader.specialTokens(directory: directory),
            ["bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "<sep>", "mask_token": "<mask>"])
    }
}
