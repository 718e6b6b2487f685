import Foundation

/// The `normalizer` stage of tokenizer.json. Applied to each piece of text between added tokens.
indirect enum TokenizerNormalizer {
    case nfc, nfd, nfkc, nfkd
    case lowercase
    case strip(left: Bool, right: Bool)
    case replace(pattern: TokenizerPattern, content: String)
    case prepend(String)
    /// ByteLevel normalizer: every UTF-8 byte to its GPT-2 stand-in character, without splitting.
    case byteLevel
    case sequence([TokenizerNormalizer])

    static let supportedTypes = ["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "Replace", "Prepend", "ByteLevel",
                                 "Sequence"]

    /// `nil` for a JSON null normalizer.
    static func parse(_ node: TokenizerJSONNode) throws -> TokenizerNormalizer? {
        if node.isNull { return nil }
        let type = try node.typeString()
        switch type {
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        case "Strip":
            return .strip(left: try node["strip_left"].bool(default: true),
                          right: try node["strip_right"].bool(default: true))
        case "Replace":
            return .replace(pattern: try TokenizerPattern.parse(node["pattern"]), content: try node["content"].string())
        case "Prepend":
            return .prepend(try node["prepend"].string())
        case "ByteLevel":
            return .byteLevel
        case "Sequence":
            let items = try node["normalizers"].array()
            return .sequence(try items.compactMap { try parse($0) })
        default:
            throw TokenizerError.unsupportedType(file: node.file, path: node.path.isEmpty ? "type" : "\(node.path).type",
                                                 type: type, supported: supportedTypes)
        }
    }

    func normalize(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        switch self {
        case .nfc: return TokenizerUnicodeNormalizer.shared.normalize(s, compatibility: false, compose: true)
        case .nfd: return TokenizerUnicodeNormalizer.shared.normalize(s, compatibility: false, compose: false)
        case .nfkc: return TokenizerUnicodeNormalizer.shared.normalize(s, compatibility: true, compose: true)
        case .nfkd: return TokenizerUnicodeNormalizer.shared.normalize(s, compatibility: true, compose: false)
        case .lowercase:
            // `NormalizedString::lowercase`: Rust `char::to_lowercase` scalar by scalar (full mappings such as
            // U+0130 -> "i\u{307}", but no context: a final capital sigma becomes σ, not ς).
            var out: [Unicode.Scalar] = []
            out.reserveCapacity(s.count)
            for c in s {
                if c.value < 0x80 {
                    out.append((c.value >= 0x41 && c.value <= 0x5A) ? (Unicode.Scalar(c.value + 0x20) ?? c) : c)
                } else {
                    out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
                }
            }
            return out
        case .strip(let left, let right):
            var lo = 0, hi = s.count
            if left { while lo < hi && TokenizerUnicode.isRustWhitespace(s[lo]) { lo += 1 } }
            if right { while hi > lo && TokenizerUnicode.isRustWhitespace(s[hi - 1]) { hi -= 1 } }
            return Array(s[lo..<hi])
        case .replace(let pattern, let content):
            return Self.replace(s, pattern: pattern, with: Array(content.unicodeScalars))
        case .prepend(let p):
            if s.isEmpty { return s }
            return Array(p.unicodeScalars) + s
        case .byteLevel:
            var out: [Unicode.Scalar] = []
            out.reserveCapacity(s.count)
            for c in s { for b in c.utf8 { out.append(ByteLevelMapping.byteToScalar[Int(b)]) } }
            return out
        case .sequence(let items):
            var cur = s
            for n in items { cur = n.normalize(cur) }
            return cur
        }
    }

    static func replace(_ s: [Unicode.Scalar], pattern: TokenizerPattern, with content: [Unicode.Scalar]) -> [Unicode.Scalar] {
        let ms = pattern.matches(in: s)
        if ms.isEmpty { return s }
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count + ms.count * content.count)
        var pos = 0
        for m in ms {
            out.append(contentsOf: s[pos..<m.lowerBound])
            out.append(contentsOf: content)
            pos = m.upperBound
        }
        out.append(contentsOf: s[pos...])
        return out
    }

    @inline(__always) static func string(_ s: [Unicode.Scalar]) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    @inline(__always) static func scalars(_ s: String) -> [Unicode.Scalar] { Array(s.unicodeScalars) }
}
