import VLMTokenizers

/// Builds the prompt text of a conversation with the model's own chat template, as transformers'
/// `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` does.
public struct ChatPromptBuilder: Sendable {
    public let template: ChatTemplate
    public let specialTokens: [String: String]

    public init(template: ChatTemplate, tokenizer: Tokenizer) {
        self.template = template
        var special: [String: String] = [:]
        if let t = tokenizer.bosToken { special["bos_token"] = t }
        if let t = tokenizer.eosToken { special["eos_token"] = t }
        if let t = tokenizer.padToken { special["pad_token"] = t }
        if let t = tokenizer.unkToken { special["unk_token"] = t }
        specialTokens = special
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> String {
        try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt, specialTokens: specialTokens)
    }
}
