import Foundation

/// The `normalizer` stage of tokenizer.json. Applied to each piece of text between added tokens.
indirect enum TokenizerNormalizer {
    case nfc, nfd, nfkc, nfkd
    case lowercase
    case strip(left: Bool, right: Bool)
    case replace(pattern: SplitPattern, content: String)
    case prepend(String)
    case sequence([TokenizerNormalizer])

    static let supportedTypes = ["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "Replace", "Prepend", "Sequence"]

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
            return .replace(pattern: try SplitPattern.parse(node["pattern"]), content: try node["content"].string())
        case "Prepend":
            return .prepend(try node["prepend"].string())
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
            // Rust `str::to_lowercase`: full per-scalar lowercase mapping, with the final-sigma rule.
            var out: [Unicode.Scalar] = []
            out.reserveCapacity(s.count)
            for (i, c) in s.enumerated() {
                if c == "\u{03A3}" {
                    out.append(Self.isFinalSigma(s, i) ? "\u{03C2}" : "\u{03C3}")
                } else if c.value < 0x80 {
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
        case .sequence(let items):
            var cur = s
            for n in items { cur = n.normalize(cur) }
            return cur
        }
    }

    static func replace(_ s: [Unicode.Scalar], pattern: SplitPattern, with content: [Unicode.Scalar]) -> [Unicode.Scalar] {
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

    /// Unicode's Final_Sigma condition: preceded by a cased letter (skipping case-ignorable), and not followed by one.
    private static func isFinalSigma(_ s: [Unicode.Scalar], _ i: Int) -> Bool {
        var j = i - 1
        var before = false
        while j >= 0 {
            let p = s[j].properties
            if p.isCaseIgnorable { j -= 1; continue }
            before = p.isCased
            break
        }
        guard before else { return false }
        var k = i + 1
        while k < s.count {
            let p = s[k].properties
            if p.isCaseIgnorable { k += 1; continue }
            return !p.isCased
        }
        return true
    }

    @inline(__always) static func string(_ s: [Unicode.Scalar]) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    @inline(__always) static func scalars(_ s: String) -> [Unicode.Scalar] { Array(s.unicodeScalars) }
}
