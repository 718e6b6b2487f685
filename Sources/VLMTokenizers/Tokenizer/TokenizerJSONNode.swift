import Foundation

/// A value inside a parsed JSON document that remembers where it came from, so every accessor can throw a
/// `TokenizerError` naming the file and the JSON path (`pre_tokenizer.pretokenizers[1].type`).
struct TokenizerJSONNode {
    /// The value; `nil` when the key is absent.
    let value: TokenizerJSONValue?
    let file: String
    let path: String

    init(value: TokenizerJSONValue?, file: String, path: String) {
        self.value = value
        self.file = file
        self.path = path
    }

    /// Parses `data` as a JSON object (`TokenizerJSONParser`).
    static func parse(_ data: Data, file: String) throws -> TokenizerJSONNode {
        let value: TokenizerJSONValue
        do {
            value = try TokenizerJSONParser.parse(data)
        } catch let failure as TokenizerJSONParser.Failure {
            throw TokenizerError.malformedJSON(file: file, reason: failure.description)
        }
        guard case .object = value else {
            throw TokenizerError.malformedJSON(file: file, reason: "the top level is \(value.kind), not an object")
        }
        return TokenizerJSONNode(value: value, file: file, path: "")
    }

    /// Parses `data` as a JSON object with `JSONSerialization`, for tokenizer_config.json, whose values are handed
    /// on as Foundation objects (`Tokenizer.tokenizerConfig`).
    static func foundationObject(_ data: Data, file: String) throws -> [String: Any] {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            let ns = error as NSError
            throw TokenizerError.malformedJSON(file: file, reason: ns.userInfo["NSDebugDescription"] as? String ?? ns.localizedDescription)
        }
        guard let dictionary = object as? [String: Any] else {
            throw TokenizerError.malformedJSON(file: file, reason: "the top level is not an object")
        }
        return dictionary
    }

    /// True when the key is absent or its value is `null`.
    var isNull: Bool {
        guard let value else { return true }
        if case .null = value { return true }
        return false
    }

    subscript(key: String) -> TokenizerJSONNode {
        let childPath = path.isEmpty ? key : "\(path).\(key)"
        guard case .object(let members)? = value else { return TokenizerJSONNode(value: nil, file: file, path: childPath) }
        return TokenizerJSONNode(value: members[key], file: file, path: childPath)
    }

    func wrongType(_ expected: String) -> TokenizerError {
        guard let value else { return .missingField(file: file, path: path) }
        return .wrongType(file: file, path: path, expected: expected, found: value.kind)
    }

    func invalid(_ reason: String) -> TokenizerError {
        .invalidValue(file: file, path: path, reason: reason)
    }

    // MARK: typed accessors

    func string() throws -> String {
        guard case .string(let s)? = value else { throw wrongType("a string") }
        return s
    }

    /// `nil` for absent / null.
    func optionalString() throws -> String? {
        if isNull { return nil }
        return try string()
    }

    func int() throws -> Int {
        guard case .number(let d, let exact)? = value else { throw wrongType("an integer") }
        if let exact { return exact }
        guard d.rounded() == d, abs(d) < 9.0e15 else { throw wrongType("an integer") }
        return Int(d)
    }

    func optionalInt() throws -> Int? {
        if isNull { return nil }
        return try int()
    }

    func double() throws -> Double {
        guard case .number(let d, _)? = value else { throw wrongType("a number") }
        return d
    }

    func bool(default defaultValue: Bool) throws -> Bool {
        if isNull { return defaultValue }
        guard case .bool(let b)? = value else { throw wrongType("a boolean") }
        return b
    }

    func array() throws -> [TokenizerJSONNode] {
        guard case .array(let items)? = value else { throw wrongType("an array") }
        return items.enumerated().map { TokenizerJSONNode(value: $0.element, file: file, path: "\(path)[\($0.offset)]") }
    }

    func object() throws -> TokenizerJSONObject {
        guard case .object(let members)? = value else { throw wrongType("an object") }
        return members
    }

    /// The keys of an object, sorted and without repeats, for deterministic iteration.
    func keys() throws -> [String] {
        Array(Set(try object().keys)).sorted()
    }

    /// The `type` field of a component object.
    func typeString() throws -> String {
        try self["type"].string()
    }
}
