import Foundation

/// The `decoder` stage of tokenizer.json: turns token strings back into text (`Decoder::decode_chain`).
indirect enum TokenizerDecoder {
    case byteLevel
    case metaspace(replacement: Unicode.Scalar, prependScheme: MetaspacePrependScheme)
    case replace(pattern: TokenizerPattern, content: String)
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case fuse
    case byteFallback
    case bpe(suffix: String)
    case wordPiece(prefix: String, cleanup: Bool)
    case sequence([TokenizerDecoder])

    static let supportedTypes = ["ByteLevel", "Metaspace", "Replace", "Strip", "Fuse", "ByteFallback", "BPEDecoder",
                                 "WordPiece", "Sequence"]

    static func parse(_ node: TokenizerJSONNode) throws -> TokenizerDecoder? {
        if node.isNull { return nil }
        let type = try node.typeString()
        switch type {
        case "ByteLevel":
            return .byteLevel
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
            } else if !node["add_prefix_space"].isNull {
                scheme = try node["add_prefix_space"].bool(default: true) ? .always : .never
            }
            return .metaspace(replacement: r, prependScheme: scheme)
        case "Replace":
            return .replace(pattern: try TokenizerPattern.parse(node["pattern"]), content: try node["content"].string())
        case "Strip":
            let content = try node["content"].string()
            guard let c = content.unicodeScalars.first, content.unicodeScalars.count == 1 else {
                throw node["content"].invalid("must be a single character, got \(content.debugDescription)")
            }
            return .strip(content: c, start: try node["start"].optionalInt() ?? 0, stop: try node["stop"].optionalInt() ?? 0)
        case "Fuse":
            return .fuse
        case "ByteFallback":
            return .byteFallback
        case "BPEDecoder":
            return .bpe(suffix: try node["suffix"].optionalString() ?? "</w>")
        case "WordPiece":
            return .wordPiece(prefix: try node["prefix"].optionalString() ?? "##",
                              cleanup: try node["cleanup"].bool(default: true))
        case "Sequence":
            return .sequence(try node["decoders"].array().compactMap { try parse($0) })
        default:
            throw TokenizerError.unsupportedType(file: node.file, path: node.path.isEmpty ? "type" : "\(node.path).type",
                                                 type: type, supported: supportedTypes)
        }
    }

    func decode(_ tokens: [String]) -> String {
        decodeChain(tokens).joined()
    }

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            // Each token's characters map back to bytes; a token with any character outside the byte table
            // contributes its own UTF-8 instead. Invalid UTF-8 becomes U+FFFD (from_utf8_lossy).
            var bytes: [UInt8] = []
            for t in tokens {
                let start = bytes.count
                var ok = true
                for c in t.unicodeScalars {
                    guard let b = ByteLevelMapping.byte(for: c) else { ok = false; break }
                    bytes.append(b)
                }
                if !ok {
                    bytes.removeSubrange(start...)
                    bytes.append(contentsOf: t.utf8)
                }
            }
            return [String(decoding: bytes, as: UTF8.self)]

        case let .metaspace(replacement, scheme):
            return tokens.enumerated().map { i, t in
                var v = String.UnicodeScalarView()
                for c in t.unicodeScalars { v.append(c == replacement ? " " : c) }
                var s = String(v)
                if i == 0 && scheme != .never && s.unicodeScalars.first == " " {
                    s.unicodeScalars.removeFirst()
                }
                return s
            }

        case let .replace(pattern, content):
            let rep = Array(content.unicodeScalars)
            return tokens.map { TokenizerNormalizer.string(TokenizerNormalizer.replace(Array($0.unicodeScalars),
                                                                                      pattern: pattern, with: rep)) }

        case let .strip(content, start, stop):
            return tokens.map { t in
                let s = Array(t.unicodeScalars)
                var lo = 0, hi = s.count
                var k = 0
                while k < start && lo < hi && s[lo] == content { lo += 1; k += 1 }
                k = 0
                while k < stop && hi > lo && s[hi - 1] == content { hi -= 1; k += 1 }
                return TokenizerNormalizer.string(Array(s[lo..<hi]))
            }

        case .fuse:
            return [tokens.joined()]

        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(validating: pending, as: UTF8.self) {
                    out.append(s)
                } else {
                    out.append(contentsOf: repeatElement("\u{FFFD}", count: pending.count))
                }
                pending.removeAll()
            }
            for t in tokens {
                if let b = Self.fallbackByte(t) {
                    pending.append(b)
                } else {
                    flush()
                    out.append(t)
                }
            }
            flush()
            return out

        case .bpe(let suffix):
            return tokens.enumerated().map { i, t in
                Self.replaceAll(t, suffix, i == tokens.count - 1 ? "" : " ")
            }

        case let .wordPiece(prefix, cleanup):
            return tokens.enumerated().map { i, t in
                var s = t
                if i != 0 {
                    if !prefix.isEmpty && s.unicodeScalars.starts(with: prefix.unicodeScalars) {
                        s = String(String.UnicodeScalarView(s.unicodeScalars.dropFirst(prefix.unicodeScalars.count)))
                    } else {
                        s = " " + s
                    }
                }
                return cleanup ? Self.cleanUpTokenization(s) : s
            }

        case .sequence(let items):
            var cur = tokens
            for d in items { cur = d.decodeChain(cur) }
            return cur
        }
    }

    /// `<0xAB>` -> 0xAB (either hex case), as the ByteFallback decoder reads it.
    static func fallbackByte(_ t: String) -> UInt8? {
        let u = Array(t.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        guard let s = String(validating: u[3..<5], as: UTF8.self) else { return nil }
        return UInt8(s, radix: 16)
    }

    /// `decoders::wordpiece::cleanup`.
    /// Literal, scalar-exact `str::replace`.
    static func replaceAll(_ s: String, _ target: String, _ replacement: String) -> String {
        let t = Array(target.unicodeScalars)
        guard !t.isEmpty else { return s }
        return TokenizerNormalizer.string(TokenizerNormalizer.replace(Array(s.unicodeScalars), pattern: .literal(t),
                                                                      with: Array(replacement.unicodeScalars)))
    }

    /// `decoders::wordpiece::cleanup`.
    static func cleanUpTokenization(_ s: String) -> String {
        let rules: [(String, String)] = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                                         (" n't", "n't"), (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"),
                                         (" 've", "'ve"), (" 're", "'re")]
        var out = s
        for (a, b) in rules { out = replaceAll(out, a, b) }
        return out
    }
}
