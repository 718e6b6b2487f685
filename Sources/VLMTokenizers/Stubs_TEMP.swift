// TEMPORARY stand-ins until Tokenizer/ and ChatTemplate/ land. Delete this file then.
import Foundation
public final class Tokenizer: @unchecked Sendable {
    public convenience init(directory: URL) throws { self.init() }
    init() {}
    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int] { [] }
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String { "" }
    public var bosToken: String? { nil }; public var eosToken: String? { nil }
    public var padToken: String? { nil }; public var unkToken: String? { nil }
    public var vocabularySize: Int { 0 }
}
public struct StreamingDetokenizer {
    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = true) {}
    public mutating func append(_ id: Int) -> String { "" }
    public mutating func flush() -> String { "" }
}
public struct ChatTemplate: Sendable {
    public init(source: String) throws {}
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, specialTokens: [String: String] = [:]) throws -> String { "" }
}
public struct ChatMessage: Sendable { public var role: String; public var content: ChatContent
    public init(role: String, content: ChatContent) { self.role = role; self.content = content } }
public enum ChatContent: Sendable { case text(String); case parts([ChatContentPart]) }
public enum ChatContentPart: Sendable { case text(String); case image }
public enum ChatTemplateLoader { public static func load(directory: URL) throws -> ChatTemplate? { nil } }
