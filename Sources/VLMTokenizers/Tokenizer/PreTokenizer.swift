import Foundation

/// One piece of text flowing through the pre-tokenizers.
struct PreTokenPiece {
    var scalars: [Unicode.Scalar]
    /// True when the piece begins at offset 0 of the original input (Metaspace `prepend_scheme: "first"`).
    var atOriginalStart: Bool
}

/// Metaspace's `prepend_scheme`.
enum MetaspacePrependScheme: String {
    case always, first, never
}

/// The `pre_tokenizer` stage of tokenizer.json: splits each normalized piece into words for the model.
indirect enum PreTokenizer {
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case digits(individual: Bool)
    case split(pattern: TokenizerPattern, behavior: TokenizerSplitBehavior, invert: Bool)
    case metaspace(replacement: Unicode.Scalar, prependScheme: MetaspacePrependScheme, split: Bool)
    case punctuation(behavior: TokenizerSplitBehavior)
    case whitespace
    case whitespaceSplit
    case charDelimiterSplit(Unicode.Scalar)
    /// BertPreTokenizer: whitespace removed, then every punctuation scalar isolated.
    case bert
    case sequence([PreTokenizer])

    static let supportedTypes = ["ByteLevel", "Digits", "Split", "Metaspace", "Punctuation", "Whitespace",
                                 "WhitespaceSplit", "CharDelimiterSplit", "BertPreTokenizer", "Sequence"]

    static func parse(_ node: TokenizerJSONNode) throws -> PreTokenizer? {
        if node.isNull { return nil }
        let type = try node.typeString()
        switch type {
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: try node["add_prefix_space"].bool(default: true),
                              useRegex: try node["use_regex"].bool(default: true))
        case "Digits":
            return .digits(individual: try node["individual_digits"].bool(default: false))
        case "Split":
            return .split(pattern: try TokenizerPattern.parse(node["pattern"]),
                          behavior: try TokenizerSplitBehavior.parse(node["behavior"]),
                          invert: try node["invert"].bool(default: false))
        case "Metaspace":
            let replacement = try node["replacement"].string()
            let scalars = Array(replacement.unicodeScalars)
            guard scalars.count == 1, let r = scalars.first else {
                throw node["replacement"].invalid("must be a single character, got \(replacement.debugDescription)")
            }
            var scheme = MetaspacePrependScheme.always
            if let s = try node["prepend_scheme"].optionalString() {
                guard let p = MetaspacePrependScheme(rawValue: s) else {
                    throw TokenizerError.unsupportedType(file: node.file, path: "\(node.path).prepend_scheme", type: s,
                                                         supported: ["always", "first", "never"])
                }
                scheme = p
            } else if !node["add_prefix_space"].isNull {  // files written before prepend_scheme existed
                scheme = try node["add_prefix_space"].bool(default: true) ? .always : .never
            }
            return .metaspace(replacement: r, prependScheme: scheme, split: try node["split"].bool(default: true))
        case "Punctuation":
            let behavior = node["behavior"].isNull ? TokenizerSplitBehavior.isolated : try TokenizerSplitBehavior.parse(node["behavior"])
            return .punctuation(behavior: behavior)
        case "Whitespace":
            return .whitespace
        case "WhitespaceSplit":
            return .whitespaceSplit
        case "CharDelimiterSplit":
            let d = try node["delimiter"].string()
            guard let c = d.unicodeScalars.first, d.unicodeScalars.count == 1 else {
                throw node["delimiter"].invalid("must be a single character, got \(d.debugDescription)")
            }
            return .charDelimiterSplit(c)
        case "BertPreTokenizer":
            return .bert
        case "Sequence":
            return .sequence(try node["pretokenizers"].array().compactMap { try parse($0) })
        default:
            throw TokenizerError.unsupportedType(file: node.file, path: node.path.isEmpty ? "type" : "\(node.path).type",
                                                 type: type, supported: supportedTypes)
        }
    }

    /// True when this stage (or any stage of a sequence) maps text to GPT-2 byte characters.
    var usesByteLevel: Bool {
        switch self {
        case .byteLevel: return true
        case .sequence(let items): return items.contains { $0.usesByteLevel }
        default: return false
        }
    }

    /// Splits each piece further. Empty pieces are dropped, as in `PreTokenizedString::split`.
    func apply(_ pieces: [PreTokenPiece]) -> [PreTokenPiece] {
        switch self {
        case .sequence(let items):
            var cur = pieces
            for p in items { cur = p.apply(cur) }
            return cur
        default:
            var out: [PreTokenPiece] = []
            out.reserveCapacity(pieces.count * 2)
            for piece in pieces where !piece.scalars.isEmpty {
                applyOne(piece, into: &out)
            }
            return out
        }
    }

    private func applyOne(_ piece: PreTokenPiece, into out: inout [PreTokenPiece]) {
        switch self {
        case .sequence:
            out.append(contentsOf: apply([piece]))

        case let .byteLevel(addPrefixSpace, useRegex):
            var s = piece.scalars
            if addPrefixSpace && s.first != " " { s.insert(" ", at: 0) }
            let ranges = useRegex ? TokenizerSplitBehavior.isolated.apply(matches: TokenizerPattern.gpt2.matches(in: s),
                                                                 length: s.count, invert: false)
                                  : [0..<s.count]
            for r in ranges {
                var mapped: [Unicode.Scalar] = []
                mapped.reserveCapacity(r.count)
                for c in s[r] {
                    for b in c.utf8 { mapped.append(ByteLevelMapping.byteToScalar[Int(b)]) }
                }
                out.append(PreTokenPiece(scalars: mapped, atOriginalStart: piece.atOriginalStart && r.lowerBound == 0))
            }

        case .digits(let individual):
            var ms: [Range<Int>] = []
            for (i, c) in piece.scalars.enumerated() where TokenizerUnicode.isRustNumeric(c) { ms.append(i..<(i + 1)) }
            Self.emit(piece, (individual ? TokenizerSplitBehavior.isolated : TokenizerSplitBehavior.contiguous).apply(
                matches: ms, length: piece.scalars.count, invert: false), into: &out)

        case let .split(pattern, behavior, invert):
            let ms = pattern.matches(in: piece.scalars)
            Self.emit(piece, behavior.apply(matches: ms, length: piece.scalars.count, invert: invert), into: &out)

        case let .metaspace(replacement, scheme, split):
            var s = piece.scalars.map { $0 == " " ? replacement : $0 }
            switch scheme {
            case .always:
                if s.first != replacement { s.insert(replacement, at: 0) }
            case .first:
                if s.first != replacement && piece.atOriginalStart { s.insert(replacement, at: 0) }
            case .never:
                break
            }
            let p = PreTokenPiece(scalars: s, atOriginalStart: piece.atOriginalStart)
            if split {
                var ms: [Range<Int>] = []
                for (i, c) in s.enumerated() where c == replacement { ms.append(i..<(i + 1)) }
                Self.emit(p, TokenizerSplitBehavior.mergedWithNext.apply(matches: ms, length: s.count, invert: false), into: &out)
            } else {
                out.append(p)
            }

        case .punctuation(let behavior):
            var ms: [Range<Int>] = []
            for (i, c) in piece.scalars.enumerated() where TokenizerUnicode.isPunctuation(c) { ms.append(i..<(i + 1)) }
            Self.emit(piece, behavior.apply(matches: ms, length: piece.scalars.count, invert: false), into: &out)

        case .whitespace:
            // `\w+|[^\w\s]+`, everything else removed.
            let s = piece.scalars
            var ranges: [Range<Int>] = []
            var i = 0
            while i < s.count {
                if TokenizerUnicode.isWordCharacter(s[i]) {
                    var k = i + 1
                    while k < s.count && TokenizerUnicode.isWordCharacter(s[k]) { k += 1 }
                    ranges.append(i..<k); i = k
                } else if !TokenizerUnicode.isRustWhitespace(s[i]) {
                    var k = i + 1
                    while k < s.count && !TokenizerUnicode.isWordCharacter(s[k])
                        && !TokenizerUnicode.isRustWhitespace(s[k]) { k += 1 }
                    ranges.append(i..<k); i = k
                } else {
                    i += 1
                }
            }
            Self.emit(piece, ranges, into: &out)

        case .charDelimiterSplit(let delimiter):
            var ms: [Range<Int>] = []
            for (i, c) in piece.scalars.enumerated() where c == delimiter { ms.append(i..<(i + 1)) }
            Self.emit(piece, TokenizerSplitBehavior.removed.apply(matches: ms, length: piece.scalars.count, invert: false),
                      into: &out)

        case .bert:
            var words: [PreTokenPiece] = []
            PreTokenizer.whitespaceSplit.applyOne(piece, into: &words)
            for w in words { PreTokenizer.punctuation(behavior: .isolated).applyOne(w, into: &out) }

        case .whitespaceSplit:
            var ms: [Range<Int>] = []
            for (i, c) in piece.scalars.enumerated() where TokenizerUnicode.isRustWhitespace(c) { ms.append(i..<(i + 1)) }
            Self.emit(piece, TokenizerSplitBehavior.removed.apply(matches: ms, length: piece.scalars.count, invert: false),
                      into: &out)
        }
    }

    private static func emit(_ piece: PreTokenPiece, _ ranges: [Range<Int>], into out: inout [PreTokenPiece]) {
        for r in ranges where !r.isEmpty {
            out.append(PreTokenPiece(scalars: Array(piece.scalars[r]),
                                     atOriginalStart: piece.atOriginalStart && r.lowerBound == 0))
        }
    }
}
