// Python semantics the interpreter needs: str()/repr(), truthiness, ==, ordering, whitespace, slices.
// Reference: CPython 3.11 (float_repr_style 'short', unicode_repr, PySlice_AdjustIndices, str.isspace).

/// An error raised while evaluating, before the interpreter attaches the template line to it.
struct JinjaFailure: Error {
    let kind: ChatTemplateError.Kind
    let message: String

    init(_ kind: ChatTemplateError.Kind = .runtime, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// Python's `TypeError`-style failure.
    static func type(_ message: String) -> JinjaFailure { JinjaFailure(.runtime, message) }
}

enum JinjaPython {
    // MARK: - str() and repr()

    /// Python's `str(value)`, which is what `{{ value }}` and `~` print.
    static func str(_ value: JinjaValue) -> String {
        (try? str(value, limit: .max)) ?? ""
    }

    /// Python's `repr(value)`, used for items inside printed lists and dictionaries.
    static func repr(_ value: JinjaValue) -> String {
        (try? repr(value, limit: .max)) ?? ""
    }

    /// `str(value)` that fails with a limit error as soon as the text passes `limit` UTF-8 bytes, so that
    /// printing a huge list of huge strings cannot exhaust memory first.
    static func str(_ value: JinjaValue, limit: Int) throws -> String {
        switch value {
        case .string(let s): return s
        case .undefined: return ""
        default: return try repr(value, limit: limit)
        }
    }

    /// `repr(value)` with the same limit. A namespace met again inside itself prints as `<Namespace {...}>`
    /// and nesting beyond 1000 levels as `...`, where Python would raise RecursionError.
    static func repr(_ value: JinjaValue, limit: Int) throws -> String {
        var out = ""
        var printing: Set<ObjectIdentifier> = []
        try writeRepr(value, into: &out, limit: limit, depth: 0, printing: &printing)
        return out
    }

    private static func writeRepr(
        _ value: JinjaValue, into out: inout String, limit: Int, depth: Int, printing: inout Set<ObjectIdentifier>
    ) throws {
        func write(_ text: String) throws {
            out += text
            if out.utf8.count > limit { throw JinjaFailure(.limit, "the template built a string over \(limit) bytes") }
        }
        func inner(_ item: JinjaValue) throws {
            try writeRepr(item, into: &out, limit: limit, depth: depth + 1, printing: &printing)
        }
        if depth > 1000 { return try write("...") }
        switch value {
        case .none: try write("None")
        case .bool(let b): try write(b ? "True" : "False")
        case .int(let i): try write(String(i))
        case .double(let d): try write(floatRepr(d))
        case .string(let s): try write(stringRepr(s))
        case .array(let items):
            try write("[")
            for (index, item) in items.enumerated() {
                if index > 0 { try write(", ") }
                try inner(item)
            }
            try write("]")
        case .dictionary(let dict):
            try write("{")
            for (index, pair) in dict.pairs.enumerated() {
                if index > 0 { try write(", ") }
                try write(stringRepr(pair.key) + ": ")
                try inner(pair.value)
            }
            try write("}")
        case .undefined: try write("Undefined")
        case .object(let object):
            switch object.kind {
            case .namespace:
                let id = ObjectIdentifier(object)
                guard printing.insert(id).inserted else { return try write("<Namespace {...}>") }
                defer { printing.remove(id) }
                try write("<Namespace ")
                try inner(.dictionary(object.attributes))
                try write(">")
            case .loop: try write("<LoopContext \(object.position + 1)/\(object.items.count)>")
            case .macro(let macro): try write("<Macro '\(macro.name)'>")
            case .function(let name): try write("<built-in function \(name)>")
            case .method(let receiver, let name): try write("<built-in method \(name) of \(typeName(receiver)) object>")
            case .iterator(let typeName): try write("<\(typeName) object>")
            }
        }
    }

    /// Python's `repr(float)`: the shortest digits that read back to the same double, in fixed notation when
    /// the decimal exponent is in [-4, 16), else as `1e+16`.
    static func floatRepr(_ value: Double) -> String {
        if value.isNaN { return "nan" }
        if value.isInfinite { return value < 0 ? "-inf" : "inf" }
        if value == 0 { return value.sign == .minus ? "-0.0" : "0.0" }
        let (digits, decimalPoint) = shortestDigits(abs(value))
        let sign = value < 0 ? "-" : ""
        let text = digits.map { String($0) }.joined()
        if decimalPoint > -4 && decimalPoint <= 16 {
            if decimalPoint <= 0 { return sign + "0." + String(repeating: "0", count: -decimalPoint) + text }
            if decimalPoint >= digits.count {
                return sign + text + String(repeating: "0", count: decimalPoint - digits.count) + ".0"
            }
            let split = text.index(text.startIndex, offsetBy: decimalPoint)
            return sign + text[..<split] + "." + text[split...]
        }
        let exponent = decimalPoint - 1
        var mantissa = String(text.prefix(1))
        if digits.count > 1 { mantissa += "." + text.dropFirst() }
        let exponentDigits = String(abs(exponent))
        return sign + mantissa + "e" + (exponent < 0 ? "-" : "+")
            + (exponentDigits.count < 2 ? "0" + exponentDigits : exponentDigits)
    }

    /// The shortest round-trip decimal digits of a positive finite double, as (digits, point) meaning
    /// 0.d1d2d3... × 10^point. Swift's `description` already prints the shortest round-trip digits.
    private static func shortestDigits(_ value: Double) -> (digits: [Int], decimalPoint: Int) {
        let text = value.description
        var mantissa = Substring(text)
        var exponent = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            mantissa = text[..<e]
            exponent = Int(text[text.index(after: e)...]) ?? 0
        }
        let parts = mantissa.split(separator: ".", omittingEmptySubsequences: false)
        let integerPart = parts[0]
        let fraction = parts.count > 1 ? parts[1] : ""
        var digits = (integerPart + fraction).compactMap { $0.wholeNumberValue }
        var decimalPoint = integerPart.count + exponent
        while digits.count > 1 && digits.first == 0 {
            digits.removeFirst()
            decimalPoint -= 1
        }
        while digits.count > 1 && digits.last == 0 { digits.removeLast() }
        return (digits, decimalPoint)
    }

    /// Python's `repr(str)`: single quotes unless the text has a single quote and no double quote; escapes for
    /// backslash, the quote, \n \r \t and non-printable code points.
    static func stringRepr(_ text: String) -> String {
        let hasSingle = text.unicodeScalars.contains("'")
        let quote: Unicode.Scalar = hasSingle && !text.unicodeScalars.contains("\"") ? "\"" : "'"
        var out = String.UnicodeScalarView()
        out.append(quote)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case quote: out.append("\\"); out.append(quote)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            default:
                if isPrintable(scalar) {
                    out.append(scalar)
                } else {
                    let v = scalar.value
                    let (prefix, width) = v < 0x100 ? ("\\x", 2) : v < 0x10000 ? ("\\u", 4) : ("\\U", 8)
                    let hex = String(v, radix: 16)
                    out.append(contentsOf: (prefix + String(repeating: "0", count: width - hex.count) + hex).unicodeScalars)
                }
            }
        }
        out.append(quote)
        return String(out)
    }

    /// Python's `str.isprintable` for one code point: not in the Other or Separator categories, except space.
    static func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
        if scalar == " " { return true }
        switch scalar.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned,
            .lineSeparator, .paragraphSeparator, .spaceSeparator:
            return false
        default:
            return true
        }
    }

    /// Python's type name of a value, as error messages show it.
    static func typeName(_ value: JinjaValue) -> String {
        switch value {
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .dictionary: return "dict"
        case .undefined: return "Undefined"
        case .object(let object):
            switch object.kind {
            case .namespace: return "Namespace"
            case .loop: return "LoopContext"
            case .macro: return "Macro"
            case .function, .method: return "builtin_function_or_method"
            case .iterator(let name): return name
            }
        }
    }

    // MARK: - Truthiness, equality, ordering

    /// Python's `bool(value)`; Undefined is false, objects are true.
    static func truthy(_ value: JinjaValue) -> Bool {
        switch value {
        case .none, .undefined: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let items): return !items.isEmpty
        case .dictionary(let dict): return !dict.isEmpty
        case .object: return true
        }
    }

    /// A number as Python sees it in arithmetic: bools are ints.
    enum Number {
        case int(Int)
        case double(Double)
        var asDouble: Double {
            switch self {
            case .int(let i): return Double(i)
            case .double(let d): return d
            }
        }
    }

    static func number(_ value: JinjaValue) -> Number? {
        switch value {
        case .bool(let b): return .int(b ? 1 : 0)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        default: return nil
        }
    }

    /// Python's `==`. Undefined equals only Undefined; objects compare by identity.
    static func equals(_ lhs: JinjaValue, _ rhs: JinjaValue) -> Bool {
        if let a = number(lhs), let b = number(rhs) {
            switch (a, b) {
            case let (.int(x), .int(y)): return x == y
            case let (.int(x), .double(y)), let (.double(y), .int(x)):
                // Exact, like Python: a double equals an int only if it is that integer.
                guard y.rounded() == y, y >= -9.223372036854775808e18, y < 9.223372036854775808e18 else { return false }
                return Int(y) == x
            case let (.double(x), .double(y)): return x == y
            }
        }
        switch (lhs, rhs) {
        case (.none, .none), (.undefined, .undefined): return true
        case let (.string(a), .string(b)): return a.unicodeScalars.elementsEqual(b.unicodeScalars)
        case let (.array(a), .array(b)):
            return a.count == b.count && zip(a, b).allSatisfy { equals($0, $1) }
        case let (.dictionary(a), .dictionary(b)):
            guard a.count == b.count else { return false }
            for (key, value) in a.pairs {
                guard let other = b[key], equals(value, other) else { return false }
            }
            return true
        case let (.object(a), .object(b)): return a === b
        default: return false
        }
    }

    enum Ordering: String {
        case lt = "<", le = "<=", gt = ">", ge = ">="
    }

    /// Python's `<`, `<=`, `>`, `>=`: numbers, strings (by code point) and lists (item by item).
    static func compare(_ lhs: JinjaValue, _ op: Ordering, _ rhs: JinjaValue) throws -> Bool {
        func result(_ order: Int) -> Bool {
            switch op {
            case .lt: return order < 0
            case .le: return order <= 0
            case .gt: return order > 0
            case .ge: return order >= 0
            }
        }
        if case .undefined(let message) = lhs { throw JinjaFailure(.runtime, message) }
        if case .undefined(let message) = rhs { throw JinjaFailure(.runtime, message) }
        if let a = number(lhs), let b = number(rhs) {
            if case let (.int(x), .int(y)) = (a, b) { return result(x < y ? -1 : x > y ? 1 : 0) }
            let x = a.asDouble, y = b.asDouble
            if x.isNaN || y.isNaN { return false }
            return result(x < y ? -1 : x > y ? 1 : 0)
        }
        switch (lhs, rhs) {
        case let (.string(a), .string(b)):
            return result(compareScalars(a, b))
        case let (.array(a), .array(b)):
            for (x, y) in zip(a, b) where !equals(x, y) {
                return try compare(x, op, y)
            }
            return result(a.count < b.count ? -1 : a.count > b.count ? 1 : 0)
        default:
            throw JinjaFailure.type(
                "'\(op.rawValue)' not supported between instances of '\(typeName(lhs))' and '\(typeName(rhs))'")
        }
    }

    /// Orders two strings by code point, as Python does (Swift's `<` on String uses Unicode collation order).
    static func compareScalars(_ a: String, _ b: String) -> Int {
        var left = a.unicodeScalars.makeIterator()
        var right = b.unicodeScalars.makeIterator()
        while true {
            switch (left.next(), right.next()) {
            case (nil, nil): return 0
            case (nil, _): return -1
            case (_, nil): return 1
            case let (x?, y?):
                if x.value != y.value { return x.value < y.value ? -1 : 1 }
            }
        }
    }

    // MARK: - Strings

    /// Python's `str.isspace` for one code point: Unicode White_Space plus the separators U+001C...U+001F.
    static func isWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.isWhitespace || (0x1C...0x1F).contains(scalar.value)
    }

    static func string(_ scalars: some Sequence<Unicode.Scalar>) -> String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }

    /// Python's `str.strip`/`lstrip`/`rstrip`: whitespace, or any of `characters` when given.
    static func strip(_ text: String, characters: String?, leading: Bool, trailing: Bool) -> String {
        let scalars = Array(text.unicodeScalars)
        let set = characters.map { Set($0.unicodeScalars) }
        func strippable(_ s: Unicode.Scalar) -> Bool { set.map { $0.contains(s) } ?? isWhitespace(s) }
        var start = 0, end = scalars.count
        if leading { while start < end && strippable(scalars[start]) { start += 1 } }
        if trailing { while end > start && strippable(scalars[end - 1]) { end -= 1 } }
        return string(scalars[start..<end])
    }

    /// CPython's `PySlice_AdjustIndices`: the indices a slice `[start:stop:step]` selects from `count` items.
    static func sliceIndices(count: Int, start: Int?, stop: Int?, step: Int?) throws -> StrideTo<Int> {
        let step = step ?? 1
        if step == 0 { throw JinjaFailure.type("slice step cannot be zero") }
        let lower = step > 0 ? 0 : -1
        let upper = step > 0 ? count : count - 1
        func adjust(_ index: Int?, _ fallback: Int) -> Int {
            guard let index else { return fallback }
            if index < 0 { return max(index + count, lower) }
            return min(index, upper)
        }
        let from = adjust(start, step > 0 ? lower : upper)
        let to = adjust(stop, step > 0 ? upper : lower)
        return stride(from: from, to: to, by: step)
    }
}
