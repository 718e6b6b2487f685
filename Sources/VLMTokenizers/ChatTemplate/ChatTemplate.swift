import Foundation

// The public face of the chat-template interpreter: parse a Hugging Face chat template once, render it for a
// conversation exactly as transformers 5.x `apply_chat_template(..., tokenize=False)` does.
// Reference: transformers 5.23.0 utils/chat_template_utils.py (render_jinja_template,
// _compile_jinja_template) and tokenization_utils_base.py / processing_utils.py (apply_chat_template).

/// An error from parsing or rendering a chat template. Its description names the template line, e.g.
/// `chat template line 7: unsupported statement 'include'`.
public struct ChatTemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The template is not valid Jinja.
        case syntax
        /// Valid Jinja that this interpreter does not implement (`include`, recursive loops, ...).
        case unsupported
        /// Rendering failed as it would in Python: undefined attribute of Undefined, type errors, unknown filter.
        case runtime
        /// The template called `raise_exception(message)`; `message` is its argument, verbatim.
        case raised
        /// A safety limit stopped the render (steps, output size, macro recursion, nesting depth).
        case limit
        /// A model folder's template files could not be read.
        case loading
    }

    public let kind: Kind
    /// The 1-based template line the error comes from, when known.
    public let line: Int?
    public let message: String

    public init(kind: Kind, line: Int?, message: String) {
        self.kind = kind
        self.line = line
        self.message = message
    }

    public var description: String {
        if let line { return "chat template line \(line): \(message)" }
        return "chat template: \(message)"
    }
}

extension ChatTemplateError: LocalizedError {
    public var errorDescription: String? { description }
}

/// One part of a multimodal message: `{"type": "text", "text": ...}` or `{"type": "image"}`.
public enum ChatContentPart: Sendable, Equatable {
    case text(String)
    case image
}

/// What a message holds: a plain string, or a list of parts (how VLM processors expect user turns with images).
public enum ChatContent: Sendable, Equatable {
    case text(String)
    case parts([ChatContentPart])
}

/// A chat message as templates see it: `{"role": role, "content": content}`.
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: ChatContent

    public init(role: String, content: ChatContent) {
        self.role = role
        self.content = content
    }

    /// A message whose content is a plain string.
    public init(role: String, text: String) {
        self.init(role: role, content: .text(text))
    }

    /// The dictionary a template iterates over, keys in the order Python callers write them.
    public var templateValue: JinjaValue {
        let content: JinjaValue
        switch self.content {
        case .text(let text):
            content = .string(text)
        case .parts(let parts):
            content = .array(parts.map { part in
                switch part {
                case .text(let text): return ["type": "text", "text": .string(text)]
                case .image: return ["type": "image"]
                }
            })
        }
        return ["role": .string(role), "content": content]
    }
}

/// A parsed chat template, ready to render conversations.
///
/// Parsing happens once in `init(source:)`; rendering is pure and thread-safe. Rendering follows Jinja 3.1 in
/// transformers' sandboxed environment (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
/// `strftime_now`, transformers' `tojson`), including Jinja's compile-time constant folding and per-scope variable
/// resolution. Rendering is bounded: runaway loops, recursion and huge outputs stop with a `.limit` error instead
/// of hanging or exhausting memory.
///
/// Known differences: tuples are lists here, so printing one shows `[1, 2]` where Python shows `(1, 2)` (also
/// for printed `dictsort`/`items` results); integers are 64-bit (overflow is an error, not a big int); `\N{...}`
/// string escapes, recursive for loops, `include`/`import`/`extends`/`block` and a few filters (`groupby`,
/// `slice`, `wordwrap`, `urlize`, ...) are refused with an error naming them.
public struct ChatTemplate: Sendable {
    /// The template text as given.
    public let source: String
    private let nodes: [JinjaNode]

    /// Parses a template; syntax errors and unsupported statements are thrown here with their line.
    public init(source: String) throws {
        self.source = source
        self.nodes = try JinjaDeepStack.run { try JinjaParser.parse(source) }
    }

    /// Renders like transformers' `apply_chat_template(messages, add_generation_prompt:, tokenize=False, **extra)`.
    ///
    /// The template sees `messages`, `add_generation_prompt`, `tools` and `documents` (None unless given in
    /// `extra`), the tokenizer's named special tokens (`bos_token`, `eos_token`, ... as in
    /// `ChatTemplateLoader.specialTokens(directory:)`), and every other `extra` value; `extra` overrides a
    /// special token of the same name, as transformers' kwargs do.
    public func render(
        messages: [ChatMessage], addGenerationPrompt: Bool, specialTokens: [String: String] = [:],
        extra: [String: JinjaValue] = [:]
    ) throws -> String {
        try render(context: ChatTemplate.context(
            messages: messages, addGenerationPrompt: addGenerationPrompt, specialTokens: specialTokens, extra: extra))
    }

    /// Renders with exactly these template variables (Jinja's `template.render(**context)`).
    public func render(context: [String: JinjaValue]) throws -> String {
        try render(context: context, options: JinjaRenderOptions())
    }

    func render(context: [String: JinjaValue], options: JinjaRenderOptions) throws -> String {
        let nodes = self.nodes
        return try JinjaDeepStack.run { try JinjaInterpreter(options: options).render(nodes, context: context) }
    }

    /// The variables `render(messages:...)` passes, built as transformers builds them.
    static func context(
        messages: [ChatMessage], addGenerationPrompt: Bool, specialTokens: [String: String], extra: [String: JinjaValue]
    ) -> [String: JinjaValue] {
        var context: [String: JinjaValue] = [:]
        for (name, token) in specialTokens { context[name] = .string(token) }
        for (name, value) in extra { context[name] = value }
        context["messages"] = .array(messages.map(\.templateValue))
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        context["tools"] = extra["tools"] ?? JinjaValue.none
        context["documents"] = extra["documents"] ?? JinjaValue.none
        return context
    }
}

/// Runs the parser and interpreter on a thread of their own with a large stack, so that the recursion the
/// limits allow (`JinjaParser.maxNesting`, `JinjaRenderOptions.maxRecursion`) fits whatever thread calls
/// `ChatTemplate` (secondary threads may have 512 KiB). Measured in a debug build, the deepest render the limits
/// allow needs 4–8 MiB; the 64 MiB stack is reserved, not committed, and a hop costs about 0.1 ms.
enum JinjaDeepStack {
    static let stackSize = 64 << 20

    private final class Outcome<T>: @unchecked Sendable {
        var result: Result<T, Error>?
    }

    static func run<T>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let outcome = Outcome<T>()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            outcome.result = Result { try body() }
            done.signal()
        }
        thread.stackSize = stackSize
        thread.start()
        done.wait()
        guard let result = outcome.result else {
            throw ChatTemplateError(kind: .limit, line: nil, message: "the template thread ended without a result")
        }
        return try result.get()
    }
}
