import Foundation

/// One entry of tokenizer.json's `added_tokens`.
public struct AddedTokenInfo: Sendable, Equatable {
    public let id: Int
    public let content: String
    public let singleWord: Bool
    public let lstrip: Bool
    public let rstrip: Bool
    public let normalized: Bool
    public let special: Bool
}

/// A piece of input after added-token extraction.
enum AddedTokenSegment {
    case text(Range<Int>)
    case token(Int)
}

/// Finds added tokens in text the way `AddedVocabulary::find_matches` does: an Aho-Corasick search with
/// leftmost-longest semantics over all patterns, then the single_word / lstrip / rstrip rules per match.
struct AddedTokenMatcher {
    private struct Pattern {
        let scalars: [Unicode.Scalar]
        let token: AddedTokenInfo
    }
    private let patterns: [Pattern]
    /// First scalar -> pattern indices, longest first.
    private let byFirst: [Unicode.Scalar: [Int]]

    var isEmpty: Bool { patterns.isEmpty }

    /// `contents` are the strings to search for (normalized already for `normalized` tokens).
    init(_ entries: [(content: [Unicode.Scalar], token: AddedTokenInfo)]) {
        var patterns: [Pattern] = []
        var byFirst: [Unicode.Scalar: [Int]] = [:]
        for e in entries where !e.content.isEmpty {
            patterns.append(Pattern(scalars: e.content, token: e.token))
            byFirst[e.content[0], default: []].append(patterns.count - 1)
        }
        for (k, v) in byFirst {
            // Longest first; among equal lengths the earlier pattern wins (Aho-Corasick pattern order).
            byFirst[k] = v.enumerated().sorted {
                let a = patterns[$0.element].scalars.count, b = patterns[$1.element].scalars.count
                return a != b ? a > b : $0.offset < $1.offset
            }.map { $0.element }
        }
        self.patterns = patterns
        self.byFirst = byFirst
    }

    /// Splits `s` into text ranges and added-token ids covering it in order.
    func split(_ s: [Unicode.Scalar]) -> [AddedTokenSegment] {
        if patterns.isEmpty || s.isEmpty { return [.text(0..<s.count)] }
        var out: [AddedTokenSegment] = []
        var startOffset = 0
        var i = 0
        let n = s.count
        while i < n {
            guard let candidates = byFirst[s[i]] else { i += 1; continue }
            var found: Pattern? = nil
            for idx in candidates {
                let p = patterns[idx].scalars
                if i + p.count > n { continue }
                var k = 1
                while k < p.count && s[i + k] == p[k] { k += 1 }
                if k == p.count { found = patterns[idx]; break }
            }
            guard let match = found else { i += 1; continue }
            var start = i
            var stop = i + match.scalars.count
            i = stop  // the search resumes after the raw match, whatever happens to it below
            let token = match.token
            if token.singleWord {
                let startSpace = start == 0 || !TokenizerUnicode.isWordCharacter(s[start - 1])
                let stopSpace = stop == n || !TokenizerUnicode.isWordCharacter(s[stop])
                if !startSpace || !stopSpace { continue }
            }
            if token.lstrip {
                var j = start
                while j > 0 && TokenizerUnicode.isWhitespace(s[j - 1]) { j -= 1 }
                start = max(j, startOffset)
            }
            if token.rstrip {
                while stop < n && TokenizerUnicode.isWhitespace(s[stop]) { stop += 1 }
            }
            start = max(start, startOffset)  // Rust could overlap here; never emit text twice
            if startOffset < start { out.append(.text(startOffset..<start)) }
            out.append(.token(token.id))
            startOffset = stop
            i = max(i, stop)
        }
        if startOffset < n { out.append(.text(startOffset..<n)) }
        return out
    }
}
