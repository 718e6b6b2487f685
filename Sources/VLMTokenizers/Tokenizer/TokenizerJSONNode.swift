import Foundation

/// A value inside a parsed JSON document that remembers where it came from, so every accessor can throw a
/// `TokenizerError` naming the file and the JSON path (`pre_tokenizer.pretokenizers[1].type`).
struct TokenizerJSONNode {
    /// The raw `JSONSerialization` value; `nil` when the key is absent, `NSNull` when it is `null`.
    let raw: Any?
    let file: String
    let path: String

    init(raw: Any?, file: String, path: String) {
        self.raw = raw
        self.file = file
        self.path = path
    }

    /// Parses `data` as a JSON object.
    static func parse(_ data: Data, file: String) throws -> TokenizerJSONNode {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            throw TokenizerError.malformedJSON(file: file, reason: Self.describe(error))
        }
        guard object is [String: Any] else {
            throw TokenizerError.malformedJSON(file: file, reason: "the top level is \(Self.kind(of: object)), not an object")
        }
        return TokenizerJSONNode(raw: object, file: file, path: "")
    }

    private static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if let debug = ns.userInfo["NSDebugDescription"] as? String { return debug }
        return ns.localizedDescription
    }

    /// True when the key is absent or its value is `null`.
    var isNull: Bool { raw == nil || raw is NSNull }

    subscript(key: String) -> TokenizerJSONNode {
        let childPath = path.isEmpty ? key : "\(path).\(key)"
        let dict = raw as? [String: Any]
        return TokenizerJSONNode(raw: dict?[key], file: file, path: childPath)
    }

    func wrongType(_ expected: String) -> TokenizerError {
        if raw == nil { return .missingField(file: file, path: path) }
        return .wrongType(file: file, path: path, expected: expected, found: Self.kind(of: raw))
    }

    func invalid(_ reason: String) -> TokenizerError {
        .invalidValue(file: file, path: path, reason: reason)
    }

    static func kind(of value: Any?) -> String {
        switch value {
        case nil: return "missing"
        case is NSNull: return "null"
        case is String: return "a string"
        case is [Any]: return "an array"
        case is [String: Any]: return "an object"
        case let n as NSNumber:
            return tokenizerJSONIsBool(n) ? "a boolean" : "a number"
        default: return value.map { "\(type(of: $0))" } ?? "missing"
        }
    }

    // MARK: typed accessors

    func string() throws -> String {
        guard let s = raw as? String else { throw wrongType("a string") }
        return s
    }

    /// `nil` for absent / null.
    func optionalString() throws -> String? {
        if isNull { return nil }
        return try string()
    }

    func int() throws -> Int {
        if let n = raw as? NSNumber, !tokenizerJSONIsBool(n) {
            let d = n.doubleValue
            guard d.rounded() == d, abs(d) < 9.0e15 else { throw wrongType("an integer") }
            return n.intValue
        }
        throw wrongType("an integer")
    }

    func optionalInt() throws -> Int? {
        if isNull { return nil }
        return try int()
    }

    func double() throws -> Double {
        if let n = raw as? NSNumber, !tokenizerJSONIsBool(n) { return n.doubleValue }
        throw wrongType("a number")
    }

    func bool(default defaultValue: Bool) throws -> Bool {
        if isNull { return defaultValue }
        if let n = raw as? NSNumber, tokenizerJSONIsBool(n) { return n.boolValue }
        if let b = raw as? Bool { return b }
        throw wrongType("a boolean")
    }

    func array() throws -> [TokenizerJSONNode] {
        guard let a = raw as? [Any] else { throw wrongType("an array") }
        return a.enumerated().map { TokenizerJSONNode(raw: $0.element, file: file, path: "\(path)[\($0.offset)]") }
    }

    func object() throws -> [String: Any] {
        guard let o = raw as? [String: Any] else { throw wrongType("an object") }
        return o
    }

    /// The keys of an object, sorted for deterministic iteration.
    func keys() throws -> [String] {
        try object().keys.sorted()
    }

    /// The `type` field of a component object.
    func typeString() throws -> String {
        try self["type"].string()
    }
}

/// Distinguishes JSON booleans from numbers in `JSONSerialization` output on every platform.
@inline(__always)
func tokenizerJSONIsBool(_ n: NSNumber) -> Bool {
    #if canImport(Darwin)
    return CFGetTypeID(n) == CFBooleanGetTypeID()
    #else
    // swift-corelibs-foundation stores JSON booleans as NSNumber(value: Bool), objCType "c"; numbers parsed from
    // JSON are never of that type. Compare the C string without allocating.
    let t = n.objCType
    return t[0] == 0x63 && t[1] == 0
    #endif
}
