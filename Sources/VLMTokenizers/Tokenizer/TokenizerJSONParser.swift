import Foundation

/// A JSON value of tokenizer.json, typed. Our own reader replaces `JSONSerialization` here because a real
/// tokenizer.json is 2-10 MB of ~100k short strings: Foundation's reader builds an `NSDictionary` of `NSString`s that
/// are then bridged (as UTF-16) and cast one by one, which took 140 ms of SmolVLM's 650 ms load on the Xeon host and
/// made the vocabulary and merge loops cast every element.
indirect enum TokenizerJSONValue {
    case null
    case bool(Bool)
    /// `exactInt` is the value of an integer literal that fits in 63 bits (ids, lengths); `nil` for any other number.
    case number(Double, exactInt: Int?)
    case string(String)
    case array([TokenizerJSONValue])
    case object(TokenizerJSONObject)

    /// How error messages name the type: "a string", "an object", ...
    var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// An object's members in file order. Lookups scan from the end, so a repeated key takes its last value (as
/// Python's json and serde_json's maps do).
struct TokenizerJSONObject {
    var keys: [String] = []
    var values: [TokenizerJSONValue] = []

    var count: Int { keys.count }

    subscript(key: String) -> TokenizerJSONValue? {
        var i = keys.count - 1
        while i >= 0 {
            if keys[i] == key { return values[i] }
            i -= 1
        }
        return nil
    }
}

/// RFC 8259 JSON from UTF-8 bytes, strict: no comments, trailing commas, NaN or unescaped control characters;
/// strings must be valid UTF-8 and escapes must not leave lone surrogates (serde_json, which the `tokenizers`
/// crate reads with, rejects the same). A UTF-8 byte order mark at the start is skipped. Nesting is limited so a
/// hostile file cannot exhaust the stack (128 levels, as serde_json). Errors say where: "line 3, column 17:
/// expected ',' or '}' after an object member, found 'x'".
struct TokenizerJSONParser {
    /// serde_json's default recursion limit (tokenizer.json nests 5-8 levels); it keeps the recursion far from the
    /// end of a 512 KB worker-thread stack.
    static let maxDepth = 128

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func parse(_ data: Data) throws -> TokenizerJSONValue {
        try data.withUnsafeBytes { raw -> TokenizerJSONValue in
            let bytes = raw.bindMemory(to: UInt8.self)
            var parser = TokenizerJSONParser(bytes: bytes)
            if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { parser.pos = 3 }
            parser.skipWhitespace()
            guard parser.pos < bytes.count else { throw parser.failure("the file is empty") }
            let value = try parser.value(depth: 0)
            parser.skipWhitespace()
            if parser.pos < bytes.count { throw parser.failure("unexpected \(parser.found()) after the top-level value") }
            return value
        }
    }

    private let bytes: UnsafeBufferPointer<UInt8>
    private var pos = 0
    private var scratch: [UInt8] = []  // decoded bytes of a string with escapes

    private init(bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    // MARK: errors

    private func failure(_ message: String, at offset: Int? = nil) -> Failure {
        let end = min(offset ?? pos, bytes.count)
        var line = 1, column = 1
        for i in 0..<end {
            if bytes[i] == 0x0A { line += 1; column = 1 } else if bytes[i] & 0xC0 != 0x80 { column += 1 }
        }
        return Failure(description: "line \(line), column \(column): \(message)")
    }

    /// The byte at `pos` as an error names it.
    private func found() -> String {
        guard pos < bytes.count else { return "the end of the file" }
        let b = bytes[pos]
        if b >= 0x20 && b < 0x7F { return "'\(Character(Unicode.Scalar(b)))'" }
        return "byte 0x\(String(b, radix: 16, uppercase: true))"
    }

    // MARK: grammar

    @inline(__always) private mutating func skipWhitespace() {
        while pos < bytes.count {
            let b = bytes[pos]
            guard b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 else { return }
            pos += 1
        }
    }

    private mutating func value(depth: Int) throws -> TokenizerJSONValue {
        guard pos < bytes.count else { throw failure("expected a value, found the end of the file") }
        switch bytes[pos] {
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "{"): return .object(try object(depth: depth + 1))
        case UInt8(ascii: "["): return .array(try array(depth: depth + 1))
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw failure("expected a value, found \(found())")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let start = pos
        let n = word.utf8CodeUnitCount
        let w = word.utf8Start
        guard pos + n <= bytes.count else { throw failure("expected \(word), found the end of the file", at: start) }
        for i in 0..<n where bytes[pos + i] != w[i] {
            throw failure("expected \(word)", at: start)
        }
        pos += n
    }

    private mutating func object(depth: Int) throws -> TokenizerJSONObject {
        guard depth <= Self.maxDepth else { throw failure("objects and arrays nested deeper than \(Self.maxDepth) levels") }
        pos += 1  // {
        var result = TokenizerJSONObject()
        skipWhitespace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") {
            pos += 1
            return result
        }
        while true {
            skipWhitespace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else {
                throw failure("expected an object key (a string), found \(found())")
            }
            let key = try string()
            skipWhitespace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else {
                throw failure("expected ':' after an object key, found \(found())")
            }
            pos += 1
            skipWhitespace()
            result.keys.append(key)
            result.values.append(try value(depth: depth))
            skipWhitespace()
            guard pos < bytes.count else { throw failure("expected ',' or '}' after an object member, found the end of the file") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "}") { pos += 1; return result }
            throw failure("expected ',' or '}' after an object member, found \(found())")
        }
    }

    private mutating func array(depth: Int) throws -> [TokenizerJSONValue] {
        guard depth <= Self.maxDepth else { throw failure("objects and arrays nested deeper than \(Self.maxDepth) levels") }
        pos += 1  // [
        var result: [TokenizerJSONValue] = []
        skipWhitespace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") {
            pos += 1
            return result
        }
        while true {
            skipWhitespace()
            result.append(try value(depth: depth))
            skipWhitespace()
            guard pos < bytes.count else { throw failure("expected ',' or ']' after an array element, found the end of the file") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "]") { pos += 1; return result }
            throw failure("expected ',' or ']' after an array element, found \(found())")
        }
    }

    /// A string starting at the opening quote. Runs without escapes become a String straight from the file's bytes.
    private mutating func string() throws -> String {
        let open = pos
        pos += 1
        var runStart = pos
        scratch.removeAll(keepingCapacity: true)
        var escaped = false
        while true {
            guard pos < bytes.count else { throw failure("unterminated string", at: open) }
            let b = bytes[pos]
            if b == UInt8(ascii: "\"") {
                let text: String?
                if escaped {
                    scratch.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<pos]))
                    text = String(validating: scratch, as: UTF8.self)
                } else {
                    text = String(validating: UnsafeBufferPointer(rebasing: bytes[runStart..<pos]), as: UTF8.self)
                }
                guard let text else { throw failure("the string is not valid UTF-8", at: open) }
                pos += 1
                return text
            }
            if b == UInt8(ascii: "\\") {
                escaped = true
                scratch.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<pos]))
                try escape()
                runStart = pos
                continue
            }
            if b < 0x20 { throw failure("control character 0x\(String(b, radix: 16, uppercase: true)) inside a string (it must be escaped)") }
            pos += 1
        }
    }

    /// One escape sequence at `pos` (the backslash), appended to `scratch` as UTF-8.
    private mutating func escape() throws {
        let start = pos
        guard pos + 1 < bytes.count else { throw failure("unterminated string") }
        let c = bytes[pos + 1]
        pos += 2
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scratch.append(c)
        case UInt8(ascii: "b"): scratch.append(0x08)
        case UInt8(ascii: "f"): scratch.append(0x0C)
        case UInt8(ascii: "n"): scratch.append(0x0A)
        case UInt8(ascii: "r"): scratch.append(0x0D)
        case UInt8(ascii: "t"): scratch.append(0x09)
        case UInt8(ascii: "u"):
            var code = try hex4(at: start)
            if code >= 0xD800 && code < 0xDC00 {  // a high surrogate: a low one must follow
                guard pos + 1 < bytes.count, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") else {
                    throw failure("lone surrogate \\u\(String(code, radix: 16, uppercase: true)) in a string", at: start)
                }
                pos += 2
                let low = try hex4(at: start)
                guard low >= 0xDC00 && low < 0xE000 else {
                    throw failure("lone surrogate \\u\(String(code, radix: 16, uppercase: true)) in a string", at: start)
                }
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            } else if code >= 0xDC00 && code < 0xE000 {
                throw failure("lone surrogate \\u\(String(code, radix: 16, uppercase: true)) in a string", at: start)
            }
            guard let scalar = Unicode.Scalar(code) else { throw failure("invalid \\u escape", at: start) }
            UTF8.encode(scalar) { scratch.append($0) }
        default:
            throw failure("invalid escape '\\\(Character(Unicode.Scalar(c)))' in a string", at: start)
        }
    }

    private mutating func hex4(at escapeStart: Int) throws -> UInt32 {
        guard pos + 4 <= bytes.count else { throw failure("truncated \\u escape", at: escapeStart) }
        var v: UInt32 = 0
        for i in 0..<4 {
            let b = bytes[pos + i]
            let d: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
            default: throw failure("\\u must be followed by four hex digits", at: escapeStart)
            }
            v = v << 4 | UInt32(d)
        }
        pos += 4
        return v
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    private mutating func number() throws -> TokenizerJSONValue {
        let start = pos
        var negative = false
        if bytes[pos] == UInt8(ascii: "-") { negative = true; pos += 1 }
        func isDigit(_ i: Int) -> Bool { i < bytes.count && bytes[i] >= UInt8(ascii: "0") && bytes[i] <= UInt8(ascii: "9") }
        guard isDigit(pos) else { throw failure("expected a digit in a number, found \(found())") }
        var integer: Int? = 0
        if bytes[pos] == UInt8(ascii: "0") {
            pos += 1
            if isDigit(pos) { throw failure("a number may not have a leading zero", at: start) }
        } else {
            while isDigit(pos) {
                if let v = integer {
                    let (m, o1) = v.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(Int(bytes[pos] - UInt8(ascii: "0")))
                    integer = o1 || o2 ? nil : s
                }
                pos += 1
            }
        }
        var isInteger = true
        if pos < bytes.count && bytes[pos] == UInt8(ascii: ".") {
            isInteger = false
            pos += 1
            guard isDigit(pos) else { throw failure("expected a digit after the decimal point, found \(found())") }
            while isDigit(pos) { pos += 1 }
        }
        if pos < bytes.count && (bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E")) {
            isInteger = false
            pos += 1
            if pos < bytes.count && (bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-")) { pos += 1 }
            guard isDigit(pos) else { throw failure("expected a digit in the exponent, found \(found())") }
            while isDigit(pos) { pos += 1 }
        }
        if isInteger, let v = integer {
            let exact = negative ? -v : v
            return .number(Double(exact), exactInt: exact)
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        guard let d = Double(text) else { throw failure("number \(text) is out of range", at: start) }
        return .number(d, exactInt: nil)
    }
}
