import Foundation

/// Finds the chat template of a Hugging Face model folder the way transformers 5.x does, and the special tokens
/// a template sees.
///
/// Precedence, first found wins (transformers 5.23.0 `ProcessorMixin.get_processor_dict` for processors, then
/// `PreTrainedTokenizerBase.from_pretrained` for tokenizers):
/// 1. `processor_config.json` key `chat_template` (a processor keeps it there in older saves);
/// 2. `chat_template.json` key `chat_template` (the processor's legacy file; a processor prefers it to
///    `chat_template.jinja` when both exist);
/// 3. `chat_template.jinja` (processors and tokenizers), then `chat_templates/default.jinja`;
/// 4. `tokenizer_config.json` key `chat_template`: a string, or a list of `{"name", "template"}` where the one
///    named `default` is used.
/// A folder without processor files only has 3 and 4, where a tokenizer reads `chat_template.jinja` first too.
/// Named alternatives (such as `tool_use`) are not selected here.
public enum ChatTemplateLoader {
    /// The template text, or nil when the folder has none.
    public static func source(directory: URL) throws -> String? {
        if let config = try readJSON(directory, "processor_config.json"),
            let template = try templateValue(config, file: "processor_config.json")
        {
            return template
        }
        if let legacy = try readJSON(directory, "chat_template.json"),
            let template = try templateValue(legacy, file: "chat_template.json")
        {
            return template
        }
        for name in ["chat_template.jinja", "chat_templates/default.jinja"] {
            if let text = try readText(directory, name) { return text }
        }
        if let config = try readJSON(directory, "tokenizer_config.json"),
            let template = try templateValue(config, file: "tokenizer_config.json")
        {
            return template
        }
        return nil
    }

    /// The parsed template, or nil when the folder has none.
    public static func load(directory: URL) throws -> ChatTemplate? {
        try source(directory: directory).map { try ChatTemplate(source: $0) }
    }

    /// The tokenizer's named special tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
    /// `cls_token`, `mask_token`) that are set, from `tokenizer_config.json`, else `special_tokens_map.json`:
    /// what transformers passes to every template as `special_tokens_map`.
    public static func specialTokens(directory: URL) throws -> [String: String] {
        let names = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
        var tokens: [String: String] = [:]
        for file in ["special_tokens_map.json", "tokenizer_config.json"] {
            guard case .dictionary(let config)? = try readJSON(directory, file) else { continue }
            for name in names {
                switch config[name] {
                case .string(let token)?: tokens[name] = token
                case .dictionary(let added)?:
                    if case .string(let token)? = added["content"] { tokens[name] = token }
                case .none?: tokens[name] = nil
                default: break
                }
            }
        }
        return tokens
    }

    // MARK: - Files

    private static func readText(_ directory: URL, _ name: String) throws -> String? {
        let url = directory.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        do {
            let data = try Data(contentsOf: url)
            guard let text = String(data: data, encoding: .utf8) else {
                throw ChatTemplateError(kind: .loading, line: nil, message: "\(name) is not UTF-8 text")
            }
            return text
        } catch let error as ChatTemplateError {
            throw error
        } catch {
            throw ChatTemplateError(kind: .loading, line: nil, message: "cannot read \(url.path): \(error.localizedDescription)")
        }
    }

    private static func readJSON(_ directory: URL, _ name: String) throws -> JinjaValue? {
        guard let text = try readText(directory, name) else { return nil }
        do {
            return try JinjaJSON.parse(text)
        } catch {
            throw ChatTemplateError(kind: .loading, line: nil, message: "\(name) is not valid JSON: \(error)")
        }
    }

    /// The `chat_template` of a config: a string, a `[{"name", "template"}]` list or a `{name: template}` map
    /// (the `default` entry), or nil when absent or null.
    private static func templateValue(_ config: JinjaValue, file: String) throws -> String? {
        guard case .dictionary(let dictionary) = config else { return nil }
        switch dictionary["chat_template"] {
        case nil, .none?:
            return nil
        case .string(let template)?:
            return template
        case .array(let entries)?:
            for entry in entries {
                if case .dictionary(let named) = entry, named["name"] == "default", case .string(let template)? = named["template"] {
                    return template
                }
            }
            throw ChatTemplateError(
                kind: .loading, line: nil, message: "\(file) has several chat templates and none is named 'default'")
        case .dictionary(let named)?:
            if case .string(let template)? = named["default"] { return template }
            throw ChatTemplateError(
                kind: .loading, line: nil, message: "\(file) has several chat templates and none is named 'default'")
        default:
            throw ChatTemplateError(kind: .loading, line: nil, message: "\(file) has a chat_template that is not a string")
        }
    }
}
