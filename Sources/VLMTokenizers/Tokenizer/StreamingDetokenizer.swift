import Foundation

/// Turns generated ids into text piece by piece, never emitting broken UTF-8: while the decoded tail ends in an
/// incomplete multi-byte sequence (U+FFFD at the end) nothing is emitted, and the bytes are released once the
/// sequence completes. The concatenation of everything returned by `append` and `flush` equals
/// `tokenizer.decode(allIds, skipSpecialTokens:)` for byte-level tokenizers, and for Metaspace-style tokenizers
/// too (each step decodes a window that starts one emitted token back, so context-dependent decoder rules such
/// as "strip the leading space of the first token" see the same neighbours as a full decode).
///
/// One inherent exception: a ByteFallback decoder (Llama-style `<0xXX>` tokens) replaces a whole run of byte
/// tokens with one U+FFFD per byte when the run is not valid UTF-8, so text already streamed from the start of
/// such a run differs from a full decode once invalid bytes follow it. Valid UTF-8 always streams exactly.
public struct StreamingDetokenizer: Sendable {
    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    private var ids: [Int] = []
    /// Start of the decode window (one emitted step back).
    private var prefixOffset = 0
    /// Ids before this index have been emitted.
    private var readOffset = 0

    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Adds one generated id; returns the newly completed text (possibly empty).
    public mutating func append(_ id: Int) -> String {
        ids.append(id)
        let prefixText = tokenizer.decode(Array(ids[prefixOffset..<readOffset]), skipSpecialTokens: skipSpecialTokens)
        let newText = tokenizer.decode(Array(ids[prefixOffset...]), skipSpecialTokens: skipSpecialTokens)
        if newText.unicodeScalars.last == "\u{FFFD}" { return "" }  // wait for the rest of the character
        let delta = Self.suffix(of: newText, after: prefixText)
        if delta.isEmpty { return "" }  // e.g. a skipped special token: keep the window's context
        prefixOffset = readOffset
        readOffset = ids.count
        return delta
    }

    /// Returns whatever is still held back (an incomplete character decodes to U+FFFD, as in `decode`).
    public mutating func flush() -> String {
        guard readOffset < ids.count else { return "" }
        let prefixText = tokenizer.decode(Array(ids[prefixOffset..<readOffset]), skipSpecialTokens: skipSpecialTokens)
        let newText = tokenizer.decode(Array(ids[prefixOffset...]), skipSpecialTokens: skipSpecialTokens)
        prefixOffset = ids.count
        readOffset = ids.count
        return Self.suffix(of: newText, after: prefixText)
    }

    /// `text` minus its leading `prefix`, compared scalar by scalar (not by grapheme, so a skin-tone modifier
    /// arriving after its emoji is still new text).
    private static func suffix(of text: String, after prefix: String) -> String {
        var t = text.unicodeScalars.makeIterator()
        var common = 0
        for p in prefix.unicodeScalars {
            guard let c = t.next(), c == p else { break }
            common += 1
        }
        return String(String.UnicodeScalarView(text.unicodeScalars.dropFirst(common)))
    }
}
