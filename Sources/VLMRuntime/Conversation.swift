import Foundation
import VLMMedia
import VLMTokenizers

/// One exchange of a conversation: what the user sent and what the model replied.
public struct ConversationTurn: Sendable, Equatable {
    /// The user's text as given, with one `<image>` marker where each image goes.
    public var text: String
    /// The turn's images, in marker order (files are read into memory when the turn is sent).
    public var images: [ImageInput]
    /// The reply as decoded text, special tokens skipped (as a chat client sends it back).
    public var reply: String

    public init(text: String, images: [ImageInput] = [], reply: String) {
        self.text = text
        self.images = images
        self.reply = reply
    }
}

/// What `Conversation.send` does when the conversation no longer fits in the context.
public enum ContextPolicy: String, Sendable, CaseIterable {
    /// Throw `ConversationError.turnDoesNotFit` with the numbers; nothing changes.
    case error
    /// Remove the oldest user+assistant turns (the system prompt stays) until the prompt plus room for
    /// `maxNewTokens` fits, or only the new turn is left; the shorter conversation is prefilled again.
    case dropOldestTurns = "drop-oldest-turns"
}

/// How turns become the prompt.
public enum PromptFormat: String, Sendable {
    /// The model's chat template over the whole conversation.
    case chatTemplate = "chat_template"
    /// The user texts and replies concatenated as they are (no template; the system prompt is not used).
    case raw
}

public enum ConversationError: Error, CustomStringConvertible, Equatable {
    case turnDoesNotFit(promptTokens: Int, limit: Int, policy: ContextPolicy)
    case needsBackend(String)

    public var description: String {
        switch self {
        case .turnDoesNotFit(let n, let limit, let policy):
            let remedy = policy == .error
                ? "clear the conversation, raise --seq-len or let the oldest turns go (--context-policy drop-oldest-turns)"
                : "even alone this turn is too long; shorten it or raise --seq-len"
            return "this turn does not fit: the conversation's prompt is \(n) tokens but the context holds \(limit) (seq len); \(remedy)"
        case .needsBackend(let what):
            return "\(what) needs a TextRunner or MultimodalRunner"
        }
    }
}

/// A multi-turn chat over a `ChatRunner`: keeps the history, renders the whole conversation with the model's chat
/// template each turn, and lets the runner reuse its KV cache for the part that did not change (earlier turns are
/// not prefilled again, earlier images not encoded again).
///
/// Message contents: for a multimodal runner every message (system, user, assistant) is a list of parts, as VLM
/// chat templates expect (SmolVLM's renders nothing of a plain-string content); for a text runner plain strings.
public final class Conversation {
    public let runner: ChatRunner
    public var systemPrompt: String?
    public private(set) var turns: [ConversationTurn] = []
    public var contextPolicy: ContextPolicy
    public private(set) var format: PromptFormat
    /// The marker that stands for an image in user text.
    public let imageMarker = "<image>"
    /// The last `send`'s result.
    public private(set) var lastResult: GenerationResult?
    /// Turns removed by `.dropOldestTurns` since the conversation began (or was cleared).
    public private(set) var droppedTurns = 0
    /// false: every turn empties the KV cache first and prefills (and encodes) the whole conversation again, as a
    /// stateless runner would. Only for measuring what the cache saves (`vlm run --no-cache-reuse`).
    public var reusesCache = true

    public init(runner: ChatRunner, systemPrompt: String? = nil, format: PromptFormat = .chatTemplate,
                contextPolicy: ContextPolicy = .error) {
        self.runner = runner
        self.systemPrompt = systemPrompt
        self.format = format
        self.contextPolicy = contextPolicy
    }

    var usesParts: Bool { runner.imagePlaceholder != nil }

    /// The conversation as chat messages: the system prompt, then each turn's user message and reply.
    public var history: [ChatMessage] { messages(turns, pending: nil) }

    func messages(_ turns: [ConversationTurn], pending: ConversationTurn?) -> [ChatMessage] {
        var out: [ChatMessage] = []
        if let systemPrompt { out.append(message("system", systemPrompt)) }
        for turn in turns {
            out.append(userMessage(turn.text))
            out.append(message("assistant", turn.reply))
        }
        if let pending { out.append(userMessage(pending.text)) }
        return out
    }

    private func message(_ role: String, _ text: String) -> ChatMessage {
        ChatMessage(role: role, content: usesParts ? .parts([.text(text)]) : .text(text))
    }

    private func userMessage(_ text: String) -> ChatMessage {
        var m = ChatMessage.user(text, imageMarker: imageMarker).message
        if usesParts, case .text(let t) = m.content { m.content = .parts([.text(t)]) }
        return m
    }

    /// The prompt text for `turns` followed by `pending` (awaiting its reply), and the images its placeholders
    /// stand for, in order.
    func prompt(_ turns: [ConversationTurn], pending: ConversationTurn) throws -> (text: String, images: [ImageInput]) {
        let all = turns + [pending]
        var images = all.flatMap(\.images)
        let text: String
        switch format {
        case .raw:
            let placeholder = runner.imagePlaceholder ?? imageMarker
            text = turns.map { $0.text.replacingOccurrences(of: imageMarker, with: placeholder) + $0.reply }.joined()
                + pending.text.replacingOccurrences(of: imageMarker, with: placeholder)
        case .chatTemplate:
            text = try runner.renderChat(messages(turns, pending: pending), addGenerationPrompt: true)
        }
        // A template that leaves out early messages leaves out their images: keep the last ones.
        if let placeholder = runner.imagePlaceholder {
            let rendered = text.components(separatedBy: placeholder).count - 1
            if rendered < images.count { images = Array(images.suffix(rendered)) }
        }
        return (text, images)
    }

    /// Sends one user turn and generates the reply, streaming it through `onToken`. `text` holds one `<image>`
    /// marker per image in `images`. The turn and its reply join the history when generation ends (also when it
    /// was stopped after at least one token); on an error the history is unchanged.
    @discardableResult
    public func send(_ text: String, images: [ImageInput] = [], config: GenerationConfig = GenerationConfig(),
                     onToken: @escaping (GeneratedToken) -> Void = { _ in }) throws -> GenerationResult {
        if !runner.isLoaded { try runner.load() }
        let markers = text.components(separatedBy: imageMarker).count - 1
        guard markers == images.count else { throw RunnerError.imageCountMismatch(markers: markers, images: images.count) }
        guard images.isEmpty || runner.imagePlaceholder != nil else { throw RunnerError.imagesNotSupported }
        let decoding = (runner as? MultimodalRunner)?.imageOptions.decoding ?? ImageDecodingOptions()
        let pending = ConversationTurn(text: text, images: try images.map { try $0.inMemory(options: decoding) }, reply: "")

        var kept = turns[...]
        var (prompt, promptImages) = try self.prompt(Array(kept), pending: pending)
        if contextPolicy == .dropOldestTurns {
            guard let backend = runner as? ConversationBackend, let limit = backend.contextLimit(config) else {
                throw ConversationError.needsBackend("the drop-oldest-turns policy")
            }
            while true {
                let n = try backend.promptLength(prompt, images: promptImages)
                if n + config.maxNewTokens <= limit { break }
                if kept.isEmpty {
                    if n <= limit { break }  // alone it fits, with less room for the reply
                    throw ConversationError.turnDoesNotFit(promptTokens: n, limit: limit, policy: contextPolicy)
                }
                kept = kept.dropFirst()
                (prompt, promptImages) = try self.prompt(Array(kept), pending: pending)
            }
        }

        if !reusesCache { runner.reset() }
        let result: GenerationResult
        do {
            result = try runner.generate(continuing: prompt, images: promptImages, config: config, onToken: onToken)
        } catch RunnerError.promptTooLong(let n, let limit) {
            throw ConversationError.turnDoesNotFit(promptTokens: n, limit: limit, policy: contextPolicy)
        }
        droppedTurns += turns.count - kept.count
        turns = Array(kept)
        if !(result.stopReason == .cancelled && result.tokenIDs.isEmpty) {
            var done = pending
            done.reply = result.text
            turns.append(done)
        }
        lastResult = result
        return result
    }

    /// Asks a running `send` (from any thread) to stop after the current token.
    public func stop() { runner.stop() }

    /// Forgets every turn (the system prompt stays) and empties the runner's KV cache.
    public func clear() {
        turns = []
        lastResult = nil
        droppedTurns = 0
        runner.reset()
    }

    /// Replaces the history (tests, session files); the KV cache is left as it is and reused where it matches.
    func restore(systemPrompt: String?, format: PromptFormat, turns: [ConversationTurn], droppedTurns: Int) {
        self.systemPrompt = systemPrompt
        self.format = format
        self.turns = turns
        self.droppedTurns = droppedTurns
        lastResult = nil
    }
}
