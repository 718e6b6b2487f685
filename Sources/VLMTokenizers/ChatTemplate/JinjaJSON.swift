// JSON in and out with Python's semantics: `json.dumps` as transformers' `tojson` filter calls it, and a reader
// that keeps key order and tells ints from floats the way Python's `json.loads` does (Foundation's
// JSONSerialization does neither portably).

enum JinjaJSON {
    // MARK: - json.dumps

    /// `json.dumps(value, ensure_ascii=, indent=, separators=, sort_keys=)`.
    /// Fails with a limit error once the text passes `limit` UTF-8 bytes.
    static func dumps(
        _ value: JinjaValue, ensureASCII: Bool, indent: String?, separators: (item: String, key: String)?, sortKeys: Bool,
        limit: Int = .max
    ) throws -> String {
        let itemSeparator = separators?.item ?? (indent == nil ? ", " : ",")
        let keySeparator = separators?.key ?? ": "
        var out = ""
        func write(_ value: JinjaValue, level: Int) throws {
            if out.utf8.count > limit { throw JinjaFailure(.limit, "the template built a string over \(limit) bytes") }
            switch value {
            case .none: out += "null"
            case .bool(let b): out += b ? "true" : "false"
            case .int(let i): out += String(i)
            case .double(let d): out += floatText(d)
            case .string(let s): out += quote(s, ensureASCII: ensureASCII)
            case .array(let items):
                if items.isEmpty {
                    out += "[]"
                    return
                }
                out += "["
                let (newline, closing) = breaks(level)
                for (index, item) in items.enumerated() {
                    out += index == 0 ? newline : itemSeparator + newline
                    try write(item, level: level + 1)
                }
                out += closing + "]"
            case .dictionary(let dictionary):
                if dictionary.isEmpty {
                    out += "{}"
                    return
                }
                out += "{"
                let (newline, closing) = breaks(level)
                let keys = sortKeys ? dictionary.keys.sorted { JinjaPython.compareScalars($0, $1) < 0 } : dictionary.keys
                for (index, key) in keys.enumerated() {
                    out += index == 0 ? newline : itemSeparator + newline
                    out += quote(key, ensureASCII: ensureASCII) + keySeparator
                    try write(dictionary[key] ?? .none, level: level + 1)
                }
                out += closing + "}"
            case .undefined, .object:
                throw JinjaFailure.type("Object of type \(JinjaPython.typeName(value)) is not JSON serializable")
            }
        }
        func breaks(_ level: Int) -> (String, String) {
            guard let indent else { return ("", "") }
            return ("\n" + String(repeating: indent, count: level + 1), "\n" + String(repeating: indent, count: level))
        }
        try write(value, level: 0)
        return out
    }

    /// Python's float encoding in JSON: repr, with NaN and Infinity spelled as JavaScript does.
    private static func floatText(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        return JinjaPython.floatRepr(d)
    }

    /// A JSON string literal as Python writes it: \" \\ \n \r \t \b \f, other controls as \u00XX, and with
    /// `ensureASCII` everything outside ' '...'~' as \uXXXX (surrogate pairs above U+FFFF).
    static func quote(_ text: String, ensureASCII: Bool) -> String {
        var out = String.UnicodeScalarView()
        out.append("\"")
        func escape(_ unit: UInt32) {
            let hex = String(unit, radix: 16)
            out.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).unicodeScalars)
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out.append(contentsOf: "\\\"".unicodeScalars)
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            case "\u{08}": out.append(contentsOf: "\\b".unicodeScalars)
            case "\u{0C}": out.append(contentsOf: "\\f".unicodeScalars)
            default:
                let v = scalar.value
                if v < 0x20 {
                    escape(v)
                } else if ensureASCII && v > 0x7E {
                    if v > 0xFFFF {
                        let u = v - 0x10000
                        escape(0xD800 + (u >> 10))
                        escape(0xDC00 + (u & 0x3FF))
                    } else {
                        escape(v)
                    }
                } else {
                    out.append(scalar)
                }
            }
        }
        out.append("\"")
        return String(out)
    }

    // MARK: - json.loads

    struct ParseError: Error, CustomStringConvertible {
        let message: String
        let offset: Int
        var description: String { "\(message) at character \(offset)" }
    }

    /// Parses JSON text: objects keep key order, numbers without a fraction or exponent are ints (floats when
    /// they do not fit in 64 bits), NaN/Infinity/-Infinity are accepted as Python accepts them.
    static func parse(_ text: String) throws -> JinjaValue {
        var parser = Parser(scalars: Array(text.unicodeScalars))
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.position == parser.scalars.count else { throw parser.error("extra data") }
        return value
    }

    private struct Parser {
        let scalars: [Unicode.Scalar]
        var position = 0

        func error(_ message: String) -> ParseError { ParseError(message: message, offset: position) }

        mutating func skipWhitespace() {
            while position < scalars.count, [" ", "\t", "\n", "\r"].contains(scalars[position]) { position += 1 }
        }

        mutating func consume(_ literal: String) -> Bool {
            let expected = Array(literal.unicodeScalars)
            guard position + expected.count <= scalars.count,
                scalars[position..<(position + expected.count)].elementsEqual(expected)
            else { return false }
            position += expected.count
            return true
        }

        mutating func value(depth: Int) throws -> JinjaValue {
            guard depth < 512 else { throw error("JSON nested too deeply") }
            guard position < scalars.count else { throw error("expecting value") }
            switch scalars[position] {
            case "{":
                position += 1
                var dictionary = JinjaDictionary()
                skipWhitespace()
                if consume("}") { return .dictionary(dictionary) }
                while true {
                    skipWhitespace()
                    guard position < scalars.count, scalars[position] == "\"" else {
                        throw error("expecting property name enclosed in double quotes")
                    }
                    let key = try string()
                    skipWhitespace()
                    guard consume(":") else { throw error("expecting ':' delimiter") }
                    skipWhitespace()
                    dictionary[key] = try value(depth: depth + 1)
                    skipWhitespace()
                    if consume(",") { continue }
                    if consume("}") { return .dictionary(dictionary) }
                    throw error("expecting ',' delimiter")
                }
            case "[":
                position += 1
                var items: [JinjaValue] = []
                skipWhitespace()
                if consume("]") { return .array(items) }
                while true {
                    skipWhitespace()
                    items.append(try value(depth: depth + 1))
                    skipWhitespace()
                    if consume(",") { continue }
                    if consume("]") { return .array(items) }
                    throw error("expecting ',' delimiter")
                }
            case "\"":
                return .string(try string())
            default:
                if consume("true") { return .bool(true) }
                if consume("false") { return .bool(false) }
                if consume("null") { return .none }
                if consume("NaN") { return .double(.nan) }
                if consume("Infinity") { return .double(.infinity) }
                if consume("-Infinity") { return .double(-.infinity) }
                return try number()
            }
        }

        mutating func number() throws -> JinjaValue {
            let start = position
            if position < scalars.count && scalars[position] == "-" { position += 1 }
            let digitsStart = position
            while position < scalars.count, ("0"..."9").contains(scalars[position]) { position += 1 }
            guard position > digitsStart else { throw error("expecting value") }
            var isFloat = false
            if position < scalars.count && scalars[position] == "." {
                isFloat = true
                position += 1
                while position < scalars.count, ("0"..."9").contains(scalars[position]) { position += 1 }
            }
            if position < scalars.count && (scalars[position] == "e" || scalars[position] == "E") {
                isFloat = true
                position += 1
                if position < scalars.count && (scalars[position] == "+" || scalars[position] == "-") { position += 1 }
                while position < scalars.count, ("0"..."9").contains(scalars[position]) { position += 1 }
            }
            let text = JinjaPython.string(scalars[start..<position])
            if !isFloat, let integer = Int(text) { return .int(integer) }
            guard let double = Double(text) else { throw error("invalid number '\(text)'") }
            return .double(double)
        }

        mutating func string() throws -> String {
            position += 1  // opening quote
            var out = String.UnicodeScalarView()
            while true {
                guard position < scalars.count else { throw error("unterminated string") }
                let c = scalars[position]
                position += 1
                if c == "\"" { return String(out) }
                guard c == "\\" else {
                    out.append(c)
                    continue
                }
                guard position < scalars.count else { throw error("unterminated string") }
                let e = scalars[position]
                position += 1
                switch e {
                case "\"", "\\", "/": out.append(e)
                case "b": out.append("\u{08}")
                case "f": out.append("\u{0C}")
                case "n": out.append("\n")
                case "r": out.append("\r")
                case "t": out.append("\t")
                case "u":
                    var unit = try hex4()
                    if (0xD800...0xDBFF).contains(unit), consume("\\u") {
                        let low = try hex4()
                        if (0xDC00...0xDFFF).contains(low) {
                            unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            out.append("\u{FFFD}")
                            unit = low
                        }
                    }
                    out.append(Unicode.Scalar(unit) ?? "\u{FFFD}")
                default:
                    throw error("invalid \\escape")
                }
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard position + 4 <= scalars.count else { throw error("invalid \\uXXXX escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard scalars[position].isASCII, let digit = Character(scalars[position]).hexDigitValue else {
                    throw error("invalid \\uXXXX escape")
                }
                value = value * 16 + UInt32(digit)
                position += 1
            }
            return value
        }
    }
}

extension JinjaValue {
    /// Reads JSON text (for example `tools` or a conversation) into a value as Python's `json.loads` would:
    /// objects keep their key order and `1` stays an int while `1.0` is a float.
    public static func parseJSON(_ text: String) throws -> JinjaValue {
        do {
            return try JinjaJSON.parse(text)
        } catch let error as JinjaJSON.ParseError {
            throw ChatTemplateError(kind: .loading, line: nil, message: "invalid JSON: \(error)")
        }
    }

    /// The value as JSON text, written as Python's `json.dumps(value, ensure_ascii=False)` writes it.
    public func jsonString(indent: Int? = nil, sortKeys: Bool = false) throws -> String {
        do {
            return try JinjaJSON.dumps(
                self, ensureASCII: false, indent: indent.map { String(repeating: " ", count: max(0, $0)) },
                separators: nil, sortKeys: sortKeys)
        } catch let failure as JinjaFailure {
            throw ChatTemplateError(kind: failure.kind, line: nil, message: failure.message)
        }
    }
}
