// Python methods templates call on strings, dicts and lists (`message.content.strip()`, `d.items()`), as
// transformers' ImmutableSandboxedEnvironment allows them: methods that mutate a list or dict are refused.
// Strings are handled as arrays of Unicode scalars, which is what Python indexes and compares.

/// Binds call arguments to parameter names, as Python does for a builtin: returns one slot per name (nil when not
/// given), and refuses extra positional arguments, unknown keywords and duplicates.
func jinjaBind(
    _ function: String, _ names: [String], _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)],
    required: Int = 0
) throws -> [JinjaValue?] {
    guard positional.count <= names.count else {
        throw JinjaFailure.type("\(function)() takes at most \(names.count) argument(s) (\(positional.count) given)")
    }
    var slots = [JinjaValue?](repeating: nil, count: names.count)
    for (index, value) in positional.enumerated() { slots[index] = value }
    for (name, value) in keyword {
        guard let index = names.firstIndex(of: name) else {
            throw JinjaFailure.type("\(function)() got an unexpected keyword argument '\(name)'")
        }
        guard slots[index] == nil else {
            throw JinjaFailure.type("\(function)() got multiple values for argument '\(name)'")
        }
        slots[index] = value
    }
    for index in 0..<required where slots[index] == nil {
        throw JinjaFailure.type("\(function)() missing required argument '\(names[index])'")
    }
    return slots
}

enum JinjaMethods {
    static let stringMethods: Set<String> = [
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
        "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
        "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
        "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
        "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill",
    ]
    static let dictionaryMethods: Set<String> = [
        "clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values",
    ]
    static let listMethods: Set<String> = [
        "append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse", "sort",
    ]
    /// What ImmutableSandboxedEnvironment refuses (`modifies_known_mutable`).
    private static let mutatingDictionaryMethods: Set<String> = ["clear", "pop", "popitem", "setdefault", "update"]
    private static let mutatingListMethods: Set<String> = [
        "append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort",
    ]

    static func call(
        _ receiver: JinjaValue, _ name: String, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)],
        interpreter: JinjaInterpreter
    ) throws -> JinjaValue {
        switch receiver {
        case .string(let text):
            return try stringMethod(text, name, positional, keyword, interpreter)
        case .dictionary(let dictionary):
            if mutatingDictionaryMethods.contains(name) {
                throw JinjaFailure(.runtime, "access to attribute '\(name)' of 'dict' object is unsafe.")
            }
            switch name {
            case "items":
                _ = try jinjaBind(name, [], positional, keyword)
                return .array(dictionary.pairs.map { .array([.string($0.key), $0.value]) })
            case "keys":
                _ = try jinjaBind(name, [], positional, keyword)
                return .array(dictionary.keys.map { .string($0) })
            case "values":
                _ = try jinjaBind(name, [], positional, keyword)
                return .array(dictionary.values)
            case "copy":
                _ = try jinjaBind(name, [], positional, keyword)
                return receiver
            case "get":
                let args = try jinjaBind(name, ["key", "default"], positional, keyword, required: 1)
                if case .string(let key)? = args[0], let value = dictionary[key] { return value }
                return args[1] ?? .none
            default:
                break
            }
        case .array(let items):
            if mutatingListMethods.contains(name) {
                throw JinjaFailure(.runtime, "access to attribute '\(name)' of 'list' object is unsafe.")
            }
            switch name {
            case "copy":
                _ = try jinjaBind(name, [], positional, keyword)
                return receiver
            case "count":
                let args = try jinjaBind(name, ["value"], positional, keyword, required: 1)
                return .int(items.filter { JinjaPython.equals($0, args[0] ?? .none) }.count)
            case "index":
                let args = try jinjaBind(name, ["value", "start", "stop"], positional, keyword, required: 1)
                let range = try bounds(count: items.count, args[1], args[2])
                if let index = range.first(where: { JinjaPython.equals(items[$0], args[0] ?? .none) }) { return .int(index) }
                throw JinjaFailure.type("\(JinjaInterpreter.shortRepr(args[0] ?? .none)) is not in list")
            default:
                break
            }
        case .object(let object):
            if case .loop = object.kind, name == "cycle" {
                guard !positional.isEmpty else { throw JinjaFailure.type("no items for cycling given") }
                return positional[object.position % positional.count]
            }
        default:
            break
        }
        throw JinjaFailure(.unsupported, "unsupported method '\(name)' of '\(JinjaPython.typeName(receiver))'")
    }

    /// Python's start/end arguments of `find`, `startswith`, `index`: slice-adjusted bounds.
    private static func bounds(count: Int, _ start: JinjaValue?, _ end: JinjaValue?) throws -> Range<Int> {
        func index(_ value: JinjaValue?) throws -> Int? {
            guard let value, value != .none else { return nil }
            guard let i = JinjaInterpreter.integerIndex(value) else {
                throw JinjaFailure.type("slice indices must be integers or None")
            }
            return i
        }
        func adjust(_ i: Int?, _ fallback: Int) -> Int {
            guard let i else { return fallback }
            return i < 0 ? max(i + count, 0) : min(i, count)
        }
        let lower = adjust(try index(start), 0)
        let upper = adjust(try index(end), count)
        return lower..<max(lower, upper)
    }

    private static func string(_ value: JinjaValue?, _ function: String) throws -> String? {
        switch value {
        case nil, .none?: return nil
        case .string(let text)?: return text
        case let other?:
            throw JinjaFailure.type("\(function)() argument must be str or None, not \(JinjaPython.typeName(other))")
        }
    }

    private static func integer(_ value: JinjaValue?, _ function: String, default fallback: Int) throws -> Int {
        switch value {
        case nil, .none?: return fallback
        case let other?:
            guard let i = JinjaInterpreter.integerIndex(other) else {
                throw JinjaFailure.type("'\(JinjaPython.typeName(other))' object cannot be interpreted as an integer")
            }
            return i
        }
    }

    // MARK: - Searching

    /// The first index of `needle` in `haystack[range]`, comparing Unicode scalars.
    static func find(_ haystack: [Unicode.Scalar], _ needle: [Unicode.Scalar], in range: Range<Int>? = nil) -> Int? {
        let range = range ?? 0..<haystack.count
        guard needle.count <= range.count else { return nil }
        if needle.isEmpty { return range.lowerBound }
        var i = range.lowerBound
        while i + needle.count <= range.upperBound {
            if haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    /// The last index of `needle` in `haystack[range]`.
    static func findLast(_ haystack: [Unicode.Scalar], _ needle: [Unicode.Scalar], in range: Range<Int>) -> Int? {
        guard needle.count <= range.count else { return nil }
        var i = range.upperBound - needle.count
        while i >= range.lowerBound {
            if haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i -= 1
        }
        return nil
    }

    /// Python's `str.split` (`fromRight: false`) and `str.rsplit`.
    static func split(_ text: String, separator: String?, maxSplit: Int, fromRight: Bool) throws -> [String] {
        var s = Array(text.unicodeScalars)
        if fromRight { s.reverse() }
        var parts: [[Unicode.Scalar]] = []
        if let separator {
            var sep = Array(separator.unicodeScalars)
            if sep.isEmpty { throw JinjaFailure.type("empty separator") }
            if fromRight { sep.reverse() }
            var start = 0
            while maxSplit < 0 || parts.count < maxSplit, let found = find(s, sep, in: start..<s.count) {
                parts.append(Array(s[start..<found]))
                start = found + sep.count
            }
            parts.append(Array(s[start...]))
        } else {
            var i = 0
            while true {
                while i < s.count && JinjaPython.isWhitespace(s[i]) { i += 1 }
                if i >= s.count { break }
                if maxSplit >= 0 && parts.count == maxSplit {
                    parts.append(Array(s[i...]))  // the rest keeps its trailing whitespace
                    break
                }
                var j = i
                while j < s.count && !JinjaPython.isWhitespace(s[j]) { j += 1 }
                parts.append(Array(s[i..<j]))
                i = j
            }
        }
        if fromRight { parts = parts.reversed().map { $0.reversed() } }
        return parts.map { JinjaPython.string($0) }
    }

    /// Python's `str.splitlines`.
    static func splitLines(_ text: String, keepEnds: Bool) -> [String] {
        let s = Array(text.unicodeScalars)
        var lines: [String] = []
        var start = 0
        var i = 0
        while i < s.count {
            let v = s[i].value
            if [0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029].contains(v) {
                var end = i + 1
                if v == 0x0D && end < s.count && s[end] == "\n" { end += 1 }
                lines.append(JinjaPython.string(s[start..<(keepEnds ? end : i)]))
                start = end
                i = end
            } else {
                i += 1
            }
        }
        if start < s.count { lines.append(JinjaPython.string(s[start...])) }
        return lines
    }

    /// Python's `str.replace`; fails once the result passes `limit` scalars.
    static func replace(_ text: String, _ old: String, _ new: String, count: Int, limit: Int) throws -> String {
        let s = Array(text.unicodeScalars)
        let o = Array(old.unicodeScalars)
        let n = Array(new.unicodeScalars)
        var out: [Unicode.Scalar] = []
        var replaced = 0
        func check() throws {
            if out.count > limit { throw JinjaFailure(.limit, "the template built a string over \(limit) bytes") }
        }
        if o.isEmpty {
            for scalar in s {
                if count < 0 || replaced < count {
                    out += n
                    replaced += 1
                    try check()
                }
                out.append(scalar)
            }
            if count < 0 || replaced < count { out += n }
            return JinjaPython.string(out)
        }
        var i = 0
        while count < 0 || replaced < count, let found = find(s, o, in: i..<s.count) {
            out += s[i..<found]
            out += n
            i = found + o.count
            replaced += 1
            try check()
        }
        out += s[i...]
        return JinjaPython.string(out)
    }

    // MARK: - Case

    static func upper(_ text: String) -> String {
        JinjaPython.string(text.unicodeScalars.flatMap { $0.properties.uppercaseMapping.unicodeScalars })
    }

    static func lower(_ text: String) -> String {
        JinjaPython.string(text.unicodeScalars.flatMap { $0.properties.lowercaseMapping.unicodeScalars })
    }

    /// Python's `str.title`: title-case after an uncased character, lower-case after a cased one.
    static func title(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        var previousIsCased = false
        for scalar in text.unicodeScalars {
            let mapped = previousIsCased ? scalar.properties.lowercaseMapping : scalar.properties.titlecaseMapping
            out.append(contentsOf: mapped.unicodeScalars)
            previousIsCased = scalar.properties.isCased
        }
        return String(out)
    }

    /// Python's `str.capitalize`: the first character title-cased, the rest lower-cased.
    static func capitalize(_ text: String) -> String {
        guard let first = text.unicodeScalars.first else { return text }
        return first.properties.titlecaseMapping + lower(JinjaPython.string(text.unicodeScalars.dropFirst()))
    }

    private static func isAlpha(_ s: Unicode.Scalar) -> Bool {
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    /// Python's regex `\w`: alphanumeric (str.isalnum) or underscore.
    static func isWordCharacter(_ s: Unicode.Scalar) -> Bool {
        s == "_" || isAlpha(s) || s.properties.numericType != nil
    }

    private static func classify(_ text: String, _ name: String) -> Bool {
        let s = Array(text.unicodeScalars)
        switch name {
        case "isascii": return s.allSatisfy(\.isASCII)
        case "isprintable": return s.allSatisfy(JinjaPython.isPrintable)
        default: break
        }
        guard !s.isEmpty else { return false }
        switch name {
        case "isdigit": return s.allSatisfy { [.digit, .decimal].contains($0.properties.numericType) }
        case "isdecimal": return s.allSatisfy { $0.properties.numericType == .decimal }
        case "isnumeric": return s.allSatisfy { $0.properties.numericType != nil }
        case "isalpha": return s.allSatisfy(isAlpha)
        case "isalnum": return s.allSatisfy { isAlpha($0) || $0.properties.numericType != nil }
        case "isspace": return s.allSatisfy(JinjaPython.isWhitespace)
        case "islower":
            return s.contains { $0.properties.isCased }
                && !s.contains { $0.properties.isUppercase || $0.properties.generalCategory == .titlecaseLetter }
        case "isupper":
            return s.contains { $0.properties.isCased }
                && !s.contains { $0.properties.isLowercase || $0.properties.generalCategory == .titlecaseLetter }
        case "istitle": return title(text) == text && s.contains { $0.properties.isCased }
        case "isidentifier":
            return (s[0] == "_" || s[0].properties.isXIDStart) && s.dropFirst().allSatisfy { $0 == "_" || $0.properties.isXIDContinue }
        default: return false
        }
    }

    // MARK: - str methods

    private static func stringMethod(
        _ text: String, _ name: String, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)],
        _ interpreter: JinjaInterpreter
    ) throws -> JinjaValue {
        func bind(_ names: [String], required: Int = 0) throws -> [JinjaValue?] {
            try jinjaBind(name, names, positional, keyword, required: required)
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            let args = try bind(["chars"])
            return .string(JinjaPython.strip(
                text, characters: try string(args[0], name), leading: name != "rstrip", trailing: name != "lstrip"))
        case "split", "rsplit":
            let args = try bind(["sep", "maxsplit"])
            let parts = try split(
                text, separator: try string(args[0], name), maxSplit: try integer(args[1], name, default: -1),
                fromRight: name == "rsplit")
            return .array(parts.map { .string($0) })
        case "splitlines":
            let args = try bind(["keepends"])
            return .array(splitLines(text, keepEnds: args[0].map(JinjaPython.truthy) ?? false).map { .string($0) })
        case "startswith", "endswith":
            let args = try bind(["prefix", "start", "end"], required: 1)
            let candidates: [JinjaValue]
            switch args[0] {
            case .array(let items)?: candidates = items
            case let value?: candidates = [value]
            case nil: candidates = []
            }
            let s = Array(text.unicodeScalars)
            let range = try bounds(count: s.count, args[1], args[2])
            for candidate in candidates {
                guard case .string(let affix) = candidate else {
                    throw JinjaFailure.type("\(name) first arg must be str or a tuple of str, not \(JinjaPython.typeName(candidate))")
                }
                let a = Array(affix.unicodeScalars)
                guard a.count <= range.count else { continue }
                let window = name == "startswith"
                    ? s[range.lowerBound..<(range.lowerBound + a.count)] : s[(range.upperBound - a.count)..<range.upperBound]
                if window.elementsEqual(a) { return .bool(true) }
            }
            return .bool(false)
        case "upper", "lower", "casefold", "title", "capitalize", "swapcase":
            _ = try bind([])
            switch name {
            case "upper": return .string(upper(text))
            case "title": return .string(title(text))
            case "capitalize": return .string(capitalize(text))
            case "swapcase":
                return .string(JinjaPython.string(text.unicodeScalars.flatMap { s -> String.UnicodeScalarView in
                    if s.properties.isUppercase { return s.properties.lowercaseMapping.unicodeScalars }
                    if s.properties.isLowercase { return s.properties.uppercaseMapping.unicodeScalars }
                    return String(s).unicodeScalars
                }))
            default: return .string(lower(text))
            }
        case "replace":
            let args = try bind(["old", "new", "count"], required: 2)
            guard case .string(let old)? = args[0], case .string(let new)? = args[1] else {
                throw JinjaFailure.type("replace() arguments must be str")
            }
            let result = try replace(
                text, old, new, count: try integer(args[2], name, default: -1), limit: interpreter.options.maxOutputBytes)
            try interpreter.checkSize(result)
            return .string(result)
        case "find", "rfind", "index", "rindex", "count":
            let args = try bind(["sub", "start", "end"], required: 1)
            guard case .string(let sub)? = args[0] else {
                throw JinjaFailure.type("must be str, not \(JinjaPython.typeName(args[0] ?? .none))")
            }
            let s = Array(text.unicodeScalars)
            let needle = Array(sub.unicodeScalars)
            let range = try bounds(count: s.count, args[1], args[2])
            if name == "count" {
                if needle.isEmpty { return .int(range.count + 1) }
                var total = 0
                var i = range.lowerBound
                while let found = find(s, needle, in: i..<range.upperBound) {
                    total += 1
                    i = found + needle.count
                }
                return .int(total)
            }
            let found = name.hasPrefix("r") ? findLast(s, needle, in: range) : find(s, needle, in: range)
            if let found { return .int(found) }
            if name.hasSuffix("index") { throw JinjaFailure.type("substring not found") }
            return .int(-1)
        case "join":
            let args = try bind(["iterable"], required: 1)
            var parts: [String] = []
            for (index, item) in try interpreter.iterate(args[0] ?? .none).enumerated() {
                guard case .string(let part) = item else {
                    throw JinjaFailure.type("sequence item \(index): expected str instance, \(JinjaPython.typeName(item)) found")
                }
                parts.append(part)
            }
            var result = ""
            for (index, part) in parts.enumerated() {
                if index > 0 { result += text }
                result += part
                try interpreter.checkSize(result)
            }
            return .string(result)
        case "format":
            return .string(try JinjaFormat.braces(text, positional: positional, keyword: keyword, interpreter: interpreter))
        case "format_map":
            let args = try bind(["mapping"], required: 1)
            guard case .dictionary(let mapping)? = args[0] else { throw JinjaFailure.type("format_map() argument must be a mapping") }
            return .string(try JinjaFormat.braces(
                text, positional: [], keyword: mapping.pairs.map { ($0.key, $0.value) }, interpreter: interpreter))
        case "removeprefix", "removesuffix":
            let args = try bind(["affix"], required: 1)
            guard case .string(let affix)? = args[0] else { throw JinjaFailure.type("\(name)() argument must be str") }
            let s = Array(text.unicodeScalars), a = Array(affix.unicodeScalars)
            if name == "removeprefix", s.starts(with: a) { return .string(JinjaPython.string(s.dropFirst(a.count))) }
            if name == "removesuffix", !a.isEmpty, s.reversed().starts(with: a.reversed()) {
                return .string(JinjaPython.string(s.dropLast(a.count)))
            }
            return .string(text)
        case "zfill", "center", "ljust", "rjust":
            let args = try bind(name == "zfill" ? ["width"] : ["width", "fillchar"], required: 1)
            let width = try integer(args[0], name, default: 0)
            let s = Array(text.unicodeScalars)
            let missing = max(0, width - s.count)
            if missing > interpreter.options.maxOutputBytes { throw JinjaFailure(.limit, "\(name)() width too large") }
            if name == "zfill" {
                let signed = s.first == "+" || s.first == "-"
                let zeros = [Unicode.Scalar](repeating: "0", count: missing)
                return .string(JinjaPython.string(signed ? [s[0]] + zeros + s.dropFirst() : zeros + s))
            }
            var fill: Unicode.Scalar = " "
            if let given = args.count > 1 ? args[1] : nil {
                guard case .string(let f) = given, f.unicodeScalars.count == 1, let scalar = f.unicodeScalars.first else {
                    throw JinjaFailure.type("The fill character must be exactly one character long")
                }
                fill = scalar
            }
            return .string(pad(s, width: width, fill: fill, align: name == "ljust" ? "<" : name == "rjust" ? ">" : "^"))
        case "partition", "rpartition":
            let args = try bind(["sep"], required: 1)
            guard case .string(let sep)? = args[0], !sep.isEmpty else { throw JinjaFailure.type("empty separator") }
            let s = Array(text.unicodeScalars), p = Array(sep.unicodeScalars)
            let found = name == "partition" ? find(s, p) : findLast(s, p, in: 0..<s.count)
            guard let found else {
                return name == "partition" ? .array([.string(text), "", ""]) : .array(["", "", .string(text)])
            }
            return .array([
                .string(JinjaPython.string(s[..<found])), .string(sep), .string(JinjaPython.string(s[(found + p.count)...])),
            ])
        case "expandtabs":
            let args = try bind(["tabsize"])
            let size = try integer(args[0], name, default: 8)
            if size > interpreter.options.maxOutputBytes { throw JinjaFailure(.limit, "expandtabs() size too large") }
            var out = String.UnicodeScalarView()
            var column = 0
            for scalar in text.unicodeScalars {
                if scalar == "\t" {
                    let spaces = size > 0 ? size - column % size : 0
                    out.append(contentsOf: String(repeating: " ", count: spaces).unicodeScalars)
                    column += spaces
                } else {
                    out.append(scalar)
                    column = scalar == "\n" || scalar == "\r" ? 0 : column + 1
                }
            }
            return .string(String(out))
        default:
            if name.hasPrefix("is") {
                _ = try bind([])
                return .bool(classify(text, name))
            }
            throw JinjaFailure(.unsupported, "unsupported method '\(name)' of 'str'")
        }
    }

    /// Pads scalars to `width` with `fill`, aligned left (`<`), right (`>`) or centered (`^`, extra on the right
    /// like Python's format; `str.center` puts the odd one on the left when the text length is odd).
    static func pad(_ s: [Unicode.Scalar], width: Int, fill: Unicode.Scalar, align: Character, centerLikeStr: Bool = true) -> String {
        let missing = max(0, width - s.count)
        var left = 0
        switch align {
        case ">": left = missing
        case "^":
            // CPython str.center: left = missing/2 + (missing & width & 1)
            left = centerLikeStr ? missing / 2 + (missing & width & 1) : missing / 2
        default: left = 0
        }
        let right = missing - left
        return JinjaPython.string([Unicode.Scalar](repeating: fill, count: left) + s + [Unicode.Scalar](repeating: fill, count: right))
    }
}
