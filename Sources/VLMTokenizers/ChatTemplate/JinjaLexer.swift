// Splits a template into data and tag tokens the way jinja2's lexer does with trim_blocks=True and
// lstrip_blocks=True (transformers' environment). Reference: jinja2 3.1.6 lexer.py (Lexer.__init__ rules,
// tokeniter, wrap).
//
// Whitespace rules, as Jinja applies them:
// - `{%-`, `{{-`, `{#-` strip all whitespace before the tag; `-%}`, `-}}`, `-#}` strip all whitespace after it.
// - trim_blocks: one newline right after `%}` or `#}` is dropped (not after `}}`); `+%}` keeps it.
// - lstrip_blocks: spaces and tabs between the start of a line and `{%` or `{#` are dropped (not before `{{`);
//   `{%+` keeps them.
// - One trailing newline of the whole template is dropped (keep_trailing_newline=False); \r\n and \r read as \n.

struct JinjaToken: Sendable {
    enum Kind: Sendable, Equatable {
        case data(String)
        case variableBegin, variableEnd, blockBegin, blockEnd
        case name(String)
        case string(String)
        case integer(Int)
        case float(Double)
        case op(String)
        case eof
    }

    let kind: Kind
    let line: Int
}

struct JinjaLexer {
    private let src: [Unicode.Scalar]
    private var pos = 0
    private var line = 1
    /// Whether the last match ended with a newline (Jinja's `line_starting`), for lstrip_blocks.
    private var lineStarting = true
    private var tokens: [JinjaToken] = []

    private init(source: String) {
        // newline_re.split(source)[::2] + drop one trailing empty line + "\n".join(...)
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(source.unicodeScalars.count)
        var previousWasCR = false
        for scalar in source.unicodeScalars {
            if scalar == "\r" {
                scalars.append("\n")
                previousWasCR = true
                continue
            }
            if scalar == "\n" && previousWasCR {
                previousWasCR = false
                continue
            }
            previousWasCR = false
            scalars.append(scalar)
        }
        if scalars.last == "\n" { scalars.removeLast() }
        src = scalars
    }

    static func tokenize(_ source: String) throws -> [JinjaToken] {
        var lexer = JinjaLexer(source: source)
        try lexer.run()
        lexer.tokens.append(JinjaToken(kind: .eof, line: lexer.line))
        return lexer.tokens
    }

    // MARK: - Root state

    private enum TagKind { case variable, block, comment, raw }

    private mutating func run() throws {
        while pos < src.count {
            guard let (start, kind, sign) = findNextTag() else {
                emitData(from: pos, to: src.count, sign: nil, kind: nil)
                pos = src.count
                return
            }
            emitData(from: pos, to: start, sign: sign, kind: kind)
            switch kind {
            case .comment:
                pos = start + 2 + (sign == nil ? 0 : 1)
                try lexComment()
            case .raw:
                pos = start
                try lexRaw(beginAt: start)
            case .variable, .block:
                let beginLine = line
                tokens.append(JinjaToken(kind: kind == .variable ? .variableBegin : .blockBegin, line: line))
                pos = start + 2 + (sign == nil ? 0 : 1)
                try lexTag(isBlock: kind == .block, beginLine: beginLine)
            }
        }
    }

    /// The next `{{`, `{%` or `{#` at or after `pos`, with its whitespace-control sign (`-` or `+`).
    private func findNextTag() -> (start: Int, kind: TagKind, sign: Unicode.Scalar?)? {
        var p = pos
        while p + 1 < src.count {
            if src[p] == "{" {
                let next = src[p + 1]
                if next == "{" || next == "%" || next == "#" {
                    let signScalar: Unicode.Scalar? = p + 2 < src.count && (src[p + 2] == "-" || src[p + 2] == "+") ? src[p + 2] : nil
                    if next == "%", rawBeginEnd(at: p) != nil { return (p, .raw, signScalar) }
                    return (p, next == "{" ? .variable : next == "%" ? .block : .comment, signScalar)
                }
            }
            p += 1
        }
        return nil
    }

    /// Emits the data before a tag, applying the tag's `-` (strip all whitespace) or lstrip_blocks.
    private mutating func emitData(from start: Int, to end: Int, sign: Unicode.Scalar?, kind: TagKind?) {
        guard start < end else { return }
        let text = src[start..<end]
        var keepEnd = end
        if sign == "-" {
            while keepEnd > start && JinjaPython.isWhitespace(src[keepEnd - 1]) { keepEnd -= 1 }
        } else if sign != "+", let kind, kind != .variable {
            // lstrip_blocks: only whitespace between the last newline (or a line start) and the tag.
            let lineStart = (text.lastIndex(of: "\n").map { $0 + 1 }) ?? start
            if lineStart > start || lineStarting,
                lineStart < end, src[lineStart..<end].allSatisfy(JinjaPython.isWhitespace)
            {
                keepEnd = lineStart
            }
        }
        if keepEnd > start {
            tokens.append(JinjaToken(kind: .data(JinjaPython.string(src[start..<keepEnd])), line: line))
        }
        line += text.reduce(0) { $1 == "\n" ? $0 + 1 : $0 }
    }

    private func matches(_ literal: String, at index: Int) -> Bool {
        var i = index
        for scalar in literal.unicodeScalars {
            guard i < src.count, src[i] == scalar else { return false }
            i += 1
        }
        return true
    }

    private func skipWhitespace(from index: Int) -> Int {
        var i = index
        while i < src.count && JinjaPython.isWhitespace(src[i]) { i += 1 }
        return i
    }

    /// Moves `pos` to `end`, counting newlines and remembering whether the match ended a line.
    private mutating func consume(to end: Int) {
        for i in pos..<end where src[i] == "\n" { line += 1 }
        if end > pos { lineStarting = src[end - 1] == "\n" }
        pos = end
    }

    // MARK: - Comments and raw blocks

    private mutating func lexComment() throws {
        // (.*?)((?:\+#}|\-#}\s*|#}\n?)); Jinja's lexer stops silently when `{#` ends the template.
        if pos >= src.count { return }
        var q = pos
        while q < src.count {
            if matches("+#}", at: q) {
                consume(to: q + 3)
                return
            }
            if matches("-#}", at: q) {
                consume(to: skipWhitespace(from: q + 3))
                return
            }
            if matches("#}", at: q) {
                var end = q + 2
                if end < src.count && src[end] == "\n" { end += 1 }
                consume(to: end)
                return
            }
            q += 1
        }
        throw ChatTemplateError(kind: .syntax, line: line, message: "missing end of comment tag '#}'")
    }

    /// If a `{% raw %}` tag starts at `index`, where it ends: {%(\-|\+|)\s*raw\s*(?:\-%}\s*|%})
    private func rawBeginEnd(at index: Int) -> Int? {
        var i = index + 2
        if i < src.count && (src[i] == "-" || src[i] == "+") { i += 1 }
        i = skipWhitespace(from: i)
        guard matches("raw", at: i) else { return nil }
        i = skipWhitespace(from: i + 3)
        if matches("-%}", at: i) { return skipWhitespace(from: i + 3) }
        if matches("%}", at: i) { return i + 2 }
        return nil
    }

    private mutating func lexRaw(beginAt start: Int) throws {
        guard let bodyStart = rawBeginEnd(at: start) else { return }
        consume(to: bodyStart)
        if pos >= src.count { return }  // `{% raw %}` ending the template: Jinja's lexer stops silently
        // (.*?)((?:{%(\-|\+|))\s*endraw\s*(?:\+%}|\-%}\s*|%}\n?))
        var q = pos
        while q < src.count {
            if matches("{%", at: q) {
                var i = q + 2
                let sign: Unicode.Scalar? = i < src.count && (src[i] == "-" || src[i] == "+") ? src[i] : nil
                if sign != nil { i += 1 }
                i = skipWhitespace(from: i)
                if matches("endraw", at: i) {
                    i = skipWhitespace(from: i + 6)
                    var end: Int?
                    if matches("+%}", at: i) {
                        end = i + 3
                    } else if matches("-%}", at: i) {
                        end = skipWhitespace(from: i + 3)
                    } else if matches("%}", at: i) {
                        end = i + 2 + (i + 2 < src.count && src[i + 2] == "\n" ? 1 : 0)
                    }
                    if let end {
                        emitData(from: pos, to: q, sign: sign, kind: .raw)
                        // emitData counted the body's newlines; count the end tag's own.
                        lineStarting = src[end - 1] == "\n"
                        for i in q..<end where src[i] == "\n" { line += 1 }
                        pos = end
                        return
                    }
                }
            }
            q += 1
        }
        throw ChatTemplateError(kind: .syntax, line: line, message: "missing end of raw directive '{% endraw %}'")
    }

    // MARK: - Inside {{ }} and {% %}

    private mutating func lexTag(isBlock: Bool, beginLine: Int) throws {
        var brackets: [Unicode.Scalar] = []
        while true {
            guard pos < src.count else {
                throw ChatTemplateError(
                    kind: .syntax, line: beginLine,
                    message: "unexpected end of template: the tag opened here is not closed with '\(isBlock ? "%}" : "}}")'")
            }
            if brackets.isEmpty, let end = tagEnd(isBlock: isBlock) {
                tokens.append(JinjaToken(kind: isBlock ? .blockEnd : .variableEnd, line: line))
                consume(to: end)
                return
            }
            let c = src[pos]
            if JinjaPython.isWhitespace(c) {
                consume(to: skipWhitespace(from: pos))
                continue
            }
            let tokenLine = line
            if ("0"..."9").contains(c) {
                let (kind, end) = try lexNumber()
                tokens.append(JinjaToken(kind: kind, line: tokenLine))
                consume(to: end)
                continue
            }
            if c == "_" || c.properties.isXIDStart {
                var end = pos + 1
                while end < src.count && (src[end] == "_" || src[end].properties.isXIDContinue) { end += 1 }
                tokens.append(JinjaToken(kind: .name(JinjaPython.string(src[pos..<end])), line: tokenLine))
                consume(to: end)
                continue
            }
            if c == "'" || c == "\"" {
                var end = pos + 1
                while end < src.count && src[end] != c {
                    end += src[end] == "\\" ? 2 : 1
                }
                guard end < src.count else {
                    throw ChatTemplateError(kind: .syntax, line: tokenLine, message: "unterminated string literal")
                }
                let value = try JinjaLexer.decodeEscapes(src[(pos + 1)..<end], line: tokenLine)
                tokens.append(JinjaToken(kind: .string(value), line: tokenLine))
                consume(to: end + 1)
                continue
            }
            if let op = operatorAt(pos) {
                switch op {
                case "{": brackets.append("}")
                case "(": brackets.append(")")
                case "[": brackets.append("]")
                case "}", ")", "]":
                    guard let expected = brackets.popLast() else {
                        throw ChatTemplateError(kind: .syntax, line: tokenLine, message: "unexpected '\(op)'")
                    }
                    if String(expected) != op {
                        throw ChatTemplateError(
                            kind: .syntax, line: tokenLine, message: "unexpected '\(op)', expected '\(expected)'")
                    }
                default: break
                }
                tokens.append(JinjaToken(kind: .op(op), line: tokenLine))
                consume(to: pos + op.unicodeScalars.count)
                continue
            }
            throw ChatTemplateError(kind: .syntax, line: tokenLine, message: "unexpected character '\(Character(c))'")
        }
    }

    /// Where the tag ends if its end marker starts at `pos`: \+%}|\-%}\s*|%}\n?  or  \-}}\s*|}}
    private func tagEnd(isBlock: Bool) -> Int? {
        if isBlock {
            if matches("+%}", at: pos) { return pos + 3 }
            if matches("-%}", at: pos) { return skipWhitespace(from: pos + 3) }
            if matches("%}", at: pos) { return pos + 2 + (pos + 2 < src.count && src[pos + 2] == "\n" ? 1 : 0) }
        } else {
            if matches("-}}", at: pos) { return skipWhitespace(from: pos + 3) }
            if matches("}}", at: pos) { return pos + 2 }
        }
        return nil
    }

    private static let twoCharacterOperators = ["//", "**", "==", "!=", ">=", "<="]
    private static let oneCharacterOperators: Set<Unicode.Scalar> = [
        "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";",
    ]

    private func operatorAt(_ index: Int) -> String? {
        for op in JinjaLexer.twoCharacterOperators where matches(op, at: index) { return op }
        return JinjaLexer.oneCharacterOperators.contains(src[index]) ? String(src[index]) : nil
    }

    // MARK: - Numbers

    private func isDigit(_ i: Int, radix: Int = 10) -> Bool {
        guard i < src.count, src[i].isASCII, let v = Character(src[i]).hexDigitValue else { return false }
        return v < radix
    }

    /// `(\d+_)*\d+` from `i`: digits with single underscores between them; returns the end or nil.
    private func digitRun(from i: Int) -> Int? {
        guard isDigit(i) else { return nil }
        var end = i
        while isDigit(end) { end += 1 }
        while end + 1 < src.count && src[end] == "_" && isDigit(end + 1) {
            end += 1
            while isDigit(end) { end += 1 }
        }
        return end
    }

    /// float_re, then integer_re, as Jinja tries them.
    private func lexNumber() throws -> (JinjaToken.Kind, Int) {
        let start = pos
        func text(_ end: Int) -> String { JinjaPython.string(src[start..<end].filter { $0 != "_" }) }
        // float: (?<!\.)(\d+_)*\d+((\.(\d+_)*\d+)?e[+\-]?(\d+_)*\d+|\.(\d+_)*\d+)
        if !(start > 0 && src[start - 1] == "."), let intEnd = digitRun(from: start) {
            var fracEnd: Int?
            if intEnd < src.count && src[intEnd] == ".", let end = digitRun(from: intEnd + 1) { fracEnd = end }
            let mantissaEnd = fracEnd ?? intEnd
            var expEnd: Int?
            if mantissaEnd < src.count && (src[mantissaEnd] == "e" || src[mantissaEnd] == "E") {
                var i = mantissaEnd + 1
                if i < src.count && (src[i] == "+" || src[i] == "-") { i += 1 }
                expEnd = digitRun(from: i)
            }
            if let end = expEnd ?? fracEnd {
                guard let value = Double(text(end)) else {
                    throw ChatTemplateError(kind: .syntax, line: line, message: "invalid float literal '\(text(end))'")
                }
                return (.float(value), end)
            }
        }
        // integer: 0b(_?[01])+ | 0o(_?[0-7])+ | 0x(_?[\da-f])+ | [1-9](_?\d)* | 0(_?0)*
        var radix = 10
        var end = start
        let prefixRadix: Int? = start + 1 < src.count && src[start] == "0"
            ? ["b": 2, "B": 2, "o": 8, "O": 8, "x": 16, "X": 16][src[start + 1]] : nil
        if let r = prefixRadix {
            var i = start + 2
            var any = false
            while true {
                if isDigit(i, radix: r) { i += 1; any = true; continue }
                if i + 1 < src.count && src[i] == "_" && isDigit(i + 1, radix: r) { i += 2; any = true; continue }
                break
            }
            if any { radix = r; end = i }
        }
        if end == start {
            if src[start] == "0" {
                end = start + 1
                while true {
                    if end < src.count && src[end] == "0" { end += 1; continue }
                    if end + 1 < src.count && src[end] == "_" && src[end + 1] == "0" { end += 2; continue }
                    break
                }
            } else {
                end = digitRun(from: start) ?? start + 1
            }
        }
        var digits = text(end)
        if radix != 10 { digits = String(digits.dropFirst(2)) }
        guard let value = Int(digits, radix: radix) else {
            throw ChatTemplateError(
                kind: .unsupported, line: line, message: "integer literal \(text(end)) does not fit in 64 bits")
        }
        return (.integer(value), end)
    }

    // MARK: - String literals

    /// Decodes a string literal's body as Jinja does: `.encode("ascii", "backslashreplace").decode("unicode-escape")`.
    static func decodeEscapes(_ body: ArraySlice<Unicode.Scalar>, line: Int) throws -> String {
        var out = String.UnicodeScalarView()
        let s = Array(body)
        var i = 0
        func hex(_ count: Int, _ escape: String) throws -> UInt32 {
            guard i + 1 + count <= s.count else {
                throw ChatTemplateError(kind: .syntax, line: line, message: "truncated \\\(escape) escape in string literal")
            }
            var value: UInt32 = 0
            for k in 0..<count {
                guard s[i + 1 + k].isASCII, let digit = Character(s[i + 1 + k]).hexDigitValue else {
                    throw ChatTemplateError(kind: .syntax, line: line, message: "truncated \\\(escape) escape in string literal")
                }
                value = value * 16 + UInt32(digit)
            }
            return value
        }
        func append(_ value: UInt32) throws {
            guard value <= 0x10FFFF else {
                throw ChatTemplateError(kind: .syntax, line: line, message: "illegal Unicode character in string literal")
            }
            out.append(Unicode.Scalar(value) ?? "\u{FFFD}")  // lone surrogates cannot live in a Swift String
        }
        while i < s.count {
            let c = s[i]
            guard c == "\\", i + 1 < s.count else {
                out.append(c)
                i += 1
                continue
            }
            let e = s[i + 1]
            switch e {
            case "\n": i += 2
            case "\\", "'", "\"": out.append(e); i += 2
            case "a": out.append("\u{07}"); i += 2
            case "b": out.append("\u{08}"); i += 2
            case "f": out.append("\u{0C}"); i += 2
            case "n": out.append("\n"); i += 2
            case "r": out.append("\r"); i += 2
            case "t": out.append("\t"); i += 2
            case "v": out.append("\u{0B}"); i += 2
            case "0"..."7":
                var value: UInt32 = 0
                var k = i + 1
                while k < s.count && k < i + 4 && ("0"..."7").contains(s[k]) {
                    value = value * 8 + (s[k].value - 48)
                    k += 1
                }
                try append(value)
                i = k
            case "x":
                i += 1
                try append(try hex(2, "xXX"))
                i += 3
            case "u":
                i += 1
                try append(try hex(4, "uXXXX"))
                i += 5
            case "U":
                i += 1
                try append(try hex(8, "UXXXXXXXX"))
                i += 9
            case "N":
                throw ChatTemplateError(
                    kind: .unsupported, line: line, message: "unsupported \\N{...} escape in string literal")
            default:
                // Python keeps unknown escapes. A non-ASCII character was first written as its \x/\u/\U escape
                // by backslashreplace, and the doubled backslash then decodes to one: `\é` reads as `\xe9`.
                out.append("\\")
                if e.isASCII {
                    out.append(e)
                } else {
                    let v = e.value
                    let (prefix, width) = v < 0x100 ? ("x", 2) : v < 0x10000 ? ("u", 4) : ("U", 8)
                    let digits = String(v, radix: 16)
                    out.append(contentsOf: (prefix + String(repeating: "0", count: width - digits.count) + digits).unicodeScalars)
                }
                i += 2
            }
        }
        return String(out)
    }
}
