import Foundation

/// What a Split / ByteLevel pre-tokenizer or a Replace normalizer/decoder searches for.
///
/// The regexes that real checkpoints use are matched by hand-written scanners over Unicode scalars, which follow
/// the Oniguruma semantics of the `tokenizers` package exactly (leftmost-first alternation, greedy runs,
/// `\s+(?!\S)` backtracking). Any other regex falls back to `NSRegularExpression` (ICU), whose classes agree with
/// Oniguruma for everything but exotic constructs.
enum TokenizerPattern {
    /// A literal string (`{"String": "..."}`).
    case literal([Unicode.Scalar])
    /// GPT-2's pattern, used by ByteLevel(use_regex: true):
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// Qwen2 (`maxDigits` 1) and Llama 3 (`maxDigits` 3):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case qwenFamily(maxDigits: Int)
    /// Any other regex, through ICU.
    case regex(NSRegularExpression)

    static let gpt2Source = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let qwen2Source =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let llama3Source =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// Reads `{"String": ...}` or `{"Regex": ...}`.
    static func parse(_ node: TokenizerJSONNode) throws -> TokenizerPattern {
        if !node["String"].isNull {
            let s = try node["String"].string()
            return .literal(Array(s.unicodeScalars))
        }
        if !node["Regex"].isNull {
            let source = try node["Regex"].string()
            return try fromRegex(source, node: node["Regex"])
        }
        if case .string(let s)? = node.value {  // tolerate a bare string
            return .literal(Array(s.unicodeScalars))
        }
        throw node.wrongType(#"an object {"String": ...} or {"Regex": ...}"#)
    }

    static func fromRegex(_ source: String, node: TokenizerJSONNode) throws -> TokenizerPattern {
        switch source {
        case gpt2Source: return .gpt2
        case qwen2Source: return .qwenFamily(maxDigits: 1)
        case llama3Source: return .qwenFamily(maxDigits: 3)
        default:
            do {
                return .regex(try NSRegularExpression(pattern: source, options: []))
            } catch {
                throw node.invalid("regex \(source.debugDescription) cannot be compiled: \(error.localizedDescription)")
            }
        }
    }

    /// Non-overlapping matches, as scalar-index ranges in ascending order (empty matches are dropped).
    func matches(in s: [Unicode.Scalar]) -> [Range<Int>] {
        switch self {
        case .literal(let pattern):
            return TokenizerPattern.literalMatches(pattern, in: s)
        case .gpt2:
            return TokenizerPattern.scanAll(s) { TokenizerPattern.gpt2MatchEnd($0, $1) }
        case .qwenFamily(let maxDigits):
            return TokenizerPattern.scanAll(s) { TokenizerPattern.qwenMatchEnd($0, $1, maxDigits: maxDigits) }
        case .regex(let re):
            return TokenizerPattern.regexMatches(re, in: s)
        }
    }

    // MARK: literal

    private static func literalMatches(_ pattern: [Unicode.Scalar], in s: [Unicode.Scalar]) -> [Range<Int>] {
        guard !pattern.isEmpty, pattern.count <= s.count else { return [] }
        var out: [Range<Int>] = []
        var i = 0
        let first = pattern[0]
        while i + pattern.count <= s.count {
            if s[i] == first {
                var k = 1
                while k < pattern.count && s[i + k] == pattern[k] { k += 1 }
                if k == pattern.count {
                    out.append(i..<(i + k))
                    i += k
                    continue
                }
            }
            i += 1
        }
        return out
    }

    // MARK: scanners

    /// Both built-in patterns match at every position (every scalar is a letter, a number, whitespace or
    /// "other"), so the matches tile the string.
    private static func scanAll(_ s: [Unicode.Scalar], _ matchEnd: ([Unicode.Scalar], Int) -> Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(s.count / 3 + 1)
        var i = 0
        while i < s.count {
            let end = max(matchEnd(s, i), i + 1)
            out.append(i..<end)
            i = end
        }
        return out
    }

    @inline(__always)
    private static func isOther(_ c: Unicode.Scalar) -> Bool {
        !TokenizerUnicode.isWhitespace(c) && !TokenizerUnicode.isLetter(c) && !TokenizerUnicode.isNumber(c)
    }

    /// End of `\s+(?!\S)|\s+` starting at a whitespace scalar `i`.
    @inline(__always)
    private static func whitespaceEnd(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        var k = i
        while k < s.count && TokenizerUnicode.isWhitespace(s[k]) { k += 1 }
        if k == s.count { return k }           // run reaches the end: (?!\S) holds
        if k - i >= 2 { return k - 1 }         // leave the last space to prefix the next word
        return k                               // single space before a non-space: plain \s+
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (case-sensitive for GPT-2, case-insensitive for Qwen).
    @inline(__always)
    private static func contractionEnd(_ s: [Unicode.Scalar], _ i: Int, caseInsensitive: Bool) -> Int? {
        guard s[i] == "'", i + 1 < s.count else { return nil }
        @inline(__always) func fold(_ c: Unicode.Scalar) -> Unicode.Scalar {
            guard caseInsensitive else { return c }
            if c.value >= 0x41 && c.value <= 0x5A { return Unicode.Scalar(c.value + 0x20) ?? c }
            if c.value == 0x17F { return "s" }  // LATIN SMALL LETTER LONG S case-folds to "s"
            return c
        }
        let c1 = fold(s[i + 1])
        if c1 == "s" || c1 == "t" || c1 == "m" || c1 == "d" { return i + 2 }
        guard i + 2 < s.count else { return nil }
        let c2 = fold(s[i + 2])
        if (c1 == "r" && c2 == "e") || (c1 == "v" && c2 == "e") || (c1 == "l" && c2 == "l") { return i + 3 }
        return nil
    }

    static func gpt2MatchEnd(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        let n = s.count
        if let end = contractionEnd(s, i, caseInsensitive: false) { return end }
        var j = i
        if s[i] == " " && i + 1 < n { j = i + 1 }
        let d = s[j]
        if TokenizerUnicode.isLetter(d) {
            var k = j + 1
            while k < n && TokenizerUnicode.isLetter(s[k]) { k += 1 }
            return k
        }
        if TokenizerUnicode.isNumber(d) {
            var k = j + 1
            while k < n && TokenizerUnicode.isNumber(s[k]) { k += 1 }
            return k
        }
        if !TokenizerUnicode.isWhitespace(d) {
            var k = j + 1
            while k < n && isOther(s[k]) { k += 1 }
            return k
        }
        return whitespaceEnd(s, i)
    }

    static func qwenMatchEnd(_ s: [Unicode.Scalar], _ i: Int, maxDigits: Int) -> Int {
        let n = s.count
        let c = s[i]
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if let end = contractionEnd(s, i, caseInsensitive: true) { return end }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if TokenizerUnicode.isLetter(c) {
            var k = i + 1
            while k < n && TokenizerUnicode.isLetter(s[k]) { k += 1 }
            return k
        }
        let cIsNumber = TokenizerUnicode.isNumber(c)
        if c != "\r" && c != "\n" && !cIsNumber && i + 1 < n && TokenizerUnicode.isLetter(s[i + 1]) {
            var k = i + 2
            while k < n && TokenizerUnicode.isLetter(s[k]) { k += 1 }
            return k
        }
        // \p{N}{1,maxDigits}
        if cIsNumber {
            var k = i + 1
            while k < n && k - i < maxDigits && TokenizerUnicode.isNumber(s[k]) { k += 1 }
            return k
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        var start: Int? = nil
        if c == " " && i + 1 < n && isOther(s[i + 1]) {
            start = i + 1
        } else if isOther(c) {
            start = i
        }
        if let st = start {
            var k = st + 1
            while k < n && isOther(s[k]) { k += 1 }
            while k < n && (s[k] == "\r" || s[k] == "\n") { k += 1 }
            return k
        }
        // Here c is whitespace. `\s*[\r\n]+`: ends after the last CR/LF inside the whitespace run.
        var k = i
        var lastNewline = -1
        while k < n && TokenizerUnicode.isWhitespace(s[k]) {
            if s[k] == "\r" || s[k] == "\n" { lastNewline = k }
            k += 1
        }
        if lastNewline >= 0 { return lastNewline + 1 }
        // `\s+(?!\S)|\s+`
        return whitespaceEnd(s, i)
    }

    // MARK: ICU fallback

    private static func regexMatches(_ re: NSRegularExpression, in s: [Unicode.Scalar]) -> [Range<Int>] {
        var string = String.UnicodeScalarView()
        string.append(contentsOf: s)
        let text = String(string)
        // UTF-16 offset -> scalar index.
        var utf16ToScalar = [Int](repeating: 0, count: text.utf16.count + 1)
        var u = 0
        for (idx, scalar) in s.enumerated() {
            let w = scalar.utf16.count
            for k in 0..<w { utf16ToScalar[u + k] = idx }
            u += w
        }
        utf16ToScalar[u] = s.count
        let ns = text as NSString
        var out: [Range<Int>] = []
        for m in re.matches(in: text, options: [], range: NSRange(location: 0, length: ns.length)) {
            let r = m.range
            guard r.location != NSNotFound, r.length > 0, r.location + r.length <= u else { continue }
            let a = utf16ToScalar[r.location], b = utf16ToScalar[r.location + r.length]
            if a < b { out.append(a..<b) }
        }
        return out
    }
}

/// `SplitDelimiterBehavior` of the `tokenizers` package.
enum TokenizerSplitBehavior: String {
    case removed = "Removed"
    case isolated = "Isolated"
    case mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext"
    case contiguous = "Contiguous"

    static let supportedNames = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]

    static func parse(_ node: TokenizerJSONNode) throws -> TokenizerSplitBehavior {
        let s = try node.string()
        guard let b = TokenizerSplitBehavior(rawValue: s) else {
            throw TokenizerError.unsupportedType(file: node.file, path: node.path, type: s, supported: supportedNames)
        }
        return b
    }

    /// `NormalizedString::split`: turns the matches of a pattern into the pieces to keep (non-empty ranges).
    func apply(matches: [Range<Int>], length: Int, invert: Bool) -> [Range<Int>] {
        // Cover the whole string with (range, isMatch).
        var covered: [(Range<Int>, Bool)] = []
        covered.reserveCapacity(matches.count * 2 + 1)
        var pos = 0
        for m in matches {
            if m.lowerBound > pos { covered.append((pos..<m.lowerBound, invert)) }
            covered.append((m, !invert))
            pos = m.upperBound
        }
        if pos < length { covered.append((pos..<length, invert)) }

        var pieces: [(Range<Int>, Bool)] = []  // (range, remove)
        switch self {
        case .isolated:
            pieces = covered.map { ($0.0, false) }
        case .removed:
            pieces = covered
        case .contiguous:
            var previousMatch = false
            for (r, isMatch) in covered {
                if isMatch == previousMatch, let last = pieces.last {
                    pieces[pieces.count - 1] = (last.0.lowerBound..<r.upperBound, false)
                } else {
                    pieces.append((r, false))
                }
                previousMatch = isMatch
            }
        case .mergedWithPrevious:
            var previousMatch = false
            for (r, isMatch) in covered {
                if isMatch && !previousMatch, let last = pieces.last {
                    pieces[pieces.count - 1] = (last.0.lowerBound..<r.upperBound, false)
                } else {
                    pieces.append((r, false))
                }
                previousMatch = isMatch
            }
        case .mergedWithNext:
            var previousMatch = false
            for (r, isMatch) in covered.reversed() {
                if isMatch && !previousMatch, let last = pieces.last {
                    pieces[pieces.count - 1] = (r.lowerBound..<last.0.upperBound, false)
                } else {
                    pieces.append((r, false))
                }
                previousMatch = isMatch
            }
            pieces.reverse()
        }
        return pieces.compactMap { $0.1 || $0.0.isEmpty ? nil : $0.0 }
    }
}
