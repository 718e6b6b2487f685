/// Unicode character classes exactly as the Python `tokenizers` package (0.23) sees them.
///
/// - `\s`, `\p{L}`, `\p{N}` in Split / ByteLevel patterns are Oniguruma classes built from Unicode 16 data:
///   `\s` is the White_Space property (25 scalars), `\p{L}` = Lu|Ll|Lt|Lm|Lo, `\p{N}` = Nd|Nl|No. Swift's own
///   tables are newer (Unicode 17), so scalars first assigned in 17.0 are treated as unassigned here
///   (verified scalar by scalar against the Python package over all of U+0000...U+10FFFF).
/// - The Digits pre-tokenizer uses Rust's `char::is_numeric`, whose tables are Unicode 17 (Nd|Nl|No, no age cut).
/// - `single_word` added tokens use the Rust `regex` crate's `\w` (Alphabetic, M, Nd, Pc, Join_Control), also
///   Unicode 16 data.
enum TokenizerUnicode {
    /// Oniguruma and the `regex` crate in `tokenizers` 0.23 know Unicode 16.0; newer scalars are unassigned to them.
    @inline(__always)
    private static func knownToUnicode16(_ p: Unicode.Scalar.Properties) -> Bool {
        guard let age = p.age else { return false }
        return age.major <= 16
    }

    /// `\s` (Oniguruma, Unicode White_Space).
    @inline(__always)
    static func isWhitespace(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 { return v == 0x20 || (v >= 0x09 && v <= 0x0D) }
        return s.properties.isWhitespace
    }

    /// `\p{L}` (Oniguruma).
    @inline(__always)
    static func isLetter(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 { return (v >= 0x41 && v <= 0x5A) || (v >= 0x61 && v <= 0x7A) }
        let p = s.properties
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return knownToUnicode16(p)
        default:
            return false
        }
    }

    /// `\p{N}` (Oniguruma).
    @inline(__always)
    static func isNumber(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 { return v >= 0x30 && v <= 0x39 }
        let p = s.properties
        switch p.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber:
            return knownToUnicode16(p)
        default:
            return false
        }
    }

    /// Rust `char::is_numeric` (the Digits pre-tokenizer).
    @inline(__always)
    static func isRustNumeric(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 { return v >= 0x30 && v <= 0x39 }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// Rust `char::is_whitespace` (White_Space), used by the Strip normalizer and WhitespaceSplit.
    @inline(__always)
    static func isRustWhitespace(_ s: Unicode.Scalar) -> Bool {
        s.properties.isWhitespace
    }

    /// Rust `regex` `\w`: Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
    static func isWordCharacter(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 {
            return (v >= 0x30 && v <= 0x39) || (v >= 0x41 && v <= 0x5A) || (v >= 0x61 && v <= 0x7A) || v == 0x5F
        }
        let p = s.properties
        guard knownToUnicode16(p) else { return false }
        if p.isAlphabetic || p.isJoinControl { return true }
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// True for scalars the normalization tables of `tokenizers` know. Those tables (crate
    /// `unicode-normalization-alignments`) are Unicode 9.0: marks added in 10.0+ have combining class 0 to it and
    /// composites added later are not composed (checked against the Python package over all scalars).
    static func isKnownToNormalizationTables(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x0370 { return true }
        guard let age = s.properties.age else { return true }  // unassigned everywhere: inert either way
        return age.major <= 9
    }

    /// `char::is_ascii_punctuation() || UnicodeCategories::is_punctuation()` (the Punctuation pre-tokenizer). The
    /// `unicode_categories` crate has Unicode 8 tables: later punctuation is not punctuation to it, and two scalars
    /// keep their old category Po (U+166D, now So; U+111C9, now Mn).
    static func isPunctuation(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 {
            return (v >= 0x21 && v <= 0x2F) || (v >= 0x3A && v <= 0x40) || (v >= 0x5B && v <= 0x60)
                || (v >= 0x7B && v <= 0x7E)
        }
        if v == 0x166D || v == 0x111C9 { return true }
        let p = s.properties
        guard let age = p.age, age.major <= 8 else { return false }
        switch p.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            return true
        default:
            return false
        }
    }
}

/// GPT-2's reversible byte <-> printable-character table used by the ByteLevel pre-tokenizer and decoder.
enum ByteLevelMapping {
    /// `byteToScalar[b]` is the printable stand-in for byte `b`.
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
            if printable {
                table[b] = Unicode.Scalar(UInt8(b))
            } else {
                // 256 + n stays below 0x144, always a valid scalar.
                table[b] = Unicode.Scalar(next) ?? " "
                next += 1
            }
        }
        return table
    }()

    /// Inverse of `byteToScalar`, indexed by scalar value (all stand-ins are below 0x144).
    static let scalarToByte: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, s) in byteToScalar.enumerated() { table[Int(s.value)] = Int16(b) }
        return table
    }()

    @inline(__always)
    static func byte(for s: Unicode.Scalar) -> UInt8? {
        let v = Int(s.value)
        guard v < scalarToByte.count else { return nil }
        let b = scalarToByte[v]
        return b < 0 ? nil : UInt8(b)
    }
}
