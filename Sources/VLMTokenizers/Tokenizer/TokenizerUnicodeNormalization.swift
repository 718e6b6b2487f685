import Foundation

/// NFC / NFD / NFKC / NFKD as the `unicode-normalization-alignments` crate of `tokenizers` computes them.
///
/// Why not `String.precomposedStringWithCanonicalMapping`: on Linux, Foundation reorders combining marks
/// wrongly when a decomposition expands into several marks (U+0344 before U+1DF7) and does not compose a Hangul
/// LV syllable with a trailing jamo T. So this runs the UAX #15 algorithm itself (full decomposition, canonical
/// ordering by combining class, canonical composition) and asks Foundation only for the decomposition of one
/// scalar and the composite of one starter + mark pair, which it gets right; both are cached.
///
/// The crate's tables are Unicode 9.0: scalars assigned later are inert (no decomposition, class 0, never
/// composed), which is what this does for them too.
final class TokenizerUnicodeNormalizer: @unchecked Sendable {
    static let shared = TokenizerUnicodeNormalizer()

    private let lock = NSLock()
    private var canonicalCache: [UInt32: [Unicode.Scalar]] = [:]
    private var compatCache: [UInt32: [Unicode.Scalar]] = [:]
    private var pairCache: [UInt64: UInt32] = [:]  // 0 = no composite
    private let cacheLimit = 100_000

    /// Starters that can be the second half of a primary composite (Unicode 9.0, Hangul jamo aside).
    private static let composingStarters: Set<UInt32> = [
        0x09BE, 0x09D7, 0x0B3E, 0x0B56, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF, 0x0DDF,
        0x102E, 0x1B35, 0x11127, 0x1133E, 0x11357, 0x114B0, 0x114BA, 0x114BD, 0x115AF,
    ]

    // Hangul syllable algorithm constants.
    private static let sBase: UInt32 = 0xAC00, lBase: UInt32 = 0x1100, vBase: UInt32 = 0x1161, tBase: UInt32 = 0x11A7
    private static let lCount: UInt32 = 19, vCount: UInt32 = 21, tCount: UInt32 = 28
    private static let nCount = vCount * tCount, sCount = lCount * nCount

    func normalize(_ s: [Unicode.Scalar], compatibility: Bool, compose: Bool) -> [Unicode.Scalar] {
        // Already normalized: ASCII for every form; anything below U+0300 for NFC.
        if compose && !compatibility {
            if s.allSatisfy({ $0.value < 0x300 }) { return s }
        } else if s.allSatisfy({ $0.isASCII }) {
            return s
        }
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count + 8)
        for c in s { decompose(c, compatibility: compatibility, into: &out) }
        reorder(&out)
        if compose { recompose(&out) }
        return out
    }

    // MARK: decomposition

    @inline(__always)
    private static func combiningClass(_ c: Unicode.Scalar) -> UInt8 {
        if c.value < 0x300 { return 0 }
        guard TokenizerUnicode.isKnownToNormalizationTables(c) else { return 0 }
        return c.properties.canonicalCombiningClass.rawValue
    }

    private func decompose(_ c: Unicode.Scalar, compatibility: Bool, into out: inout [Unicode.Scalar]) {
        let v = c.value
        if v < 0xA0 || (!compatibility && v < 0xC0) { out.append(c); return }
        if v >= Self.sBase && v < Self.sBase + Self.sCount {  // Hangul syllable: L V (T)
            let sIndex = v - Self.sBase
            let l = Self.lBase + sIndex / Self.nCount
            let vv = Self.vBase + (sIndex % Self.nCount) / Self.tCount
            let t = Self.tBase + sIndex % Self.tCount
            if let ls = Unicode.Scalar(l) { out.append(ls) }
            if let vs = Unicode.Scalar(vv) { out.append(vs) }
            if t != Self.tBase, let ts = Unicode.Scalar(t) { out.append(ts) }
            return
        }
        // Ranges without any decomposition: CJK ideographs (main block and Ext. A), Hangul jamo, Yi.
        if (v >= 0x4E00 && v <= 0x9FFF) || (v >= 0x3400 && v <= 0x4DBF) || (v >= 0x1100 && v <= 0x11FF)
            || (v >= 0xA000 && v <= 0xA4CF) {
            out.append(c); return
        }
        if !TokenizerUnicode.isKnownToNormalizationTables(c) { out.append(c); return }
        lock.lock()
        let cached = compatibility ? compatCache[v] : canonicalCache[v]
        lock.unlock()
        if let cached { out.append(contentsOf: cached); return }
        let single = String(Character(c))
        let mapped = Array((compatibility ? single.decomposedStringWithCompatibilityMapping
                                          : single.decomposedStringWithCanonicalMapping).unicodeScalars)
        // A single scalar's full decomposition is already canonically ordered; reorder anyway for safety.
        var result = mapped.isEmpty ? [c] : mapped
        reorder(&result)
        lock.lock()
        if compatibility {
            if compatCache.count >= cacheLimit { compatCache.removeAll(keepingCapacity: true) }
            compatCache[v] = result
        } else {
            if canonicalCache.count >= cacheLimit { canonicalCache.removeAll(keepingCapacity: true) }
            canonicalCache[v] = result
        }
        lock.unlock()
        out.append(contentsOf: result)
    }

    /// Canonical ordering: a stable sort of every run of non-starters by combining class.
    private func reorder(_ s: inout [Unicode.Scalar]) {
        var i = 0
        let n = s.count
        while i < n {
            if Self.combiningClass(s[i]) == 0 { i += 1; continue }
            var j = i
            while j < n && Self.combiningClass(s[j]) != 0 { j += 1 }
            if j - i > 1 {
                // Insertion sort: runs are short, and it is stable.
                for k in (i + 1)..<j {
                    let x = s[k]
                    let cx = Self.combiningClass(x)
                    var m = k - 1
                    while m >= i && Self.combiningClass(s[m]) > cx {
                        s[m + 1] = s[m]
                        m -= 1
                    }
                    s[m + 1] = x
                }
            }
            i = j
        }
    }

    // MARK: composition

    /// UAX #15 canonical composition over a decomposed, ordered sequence.
    private func recompose(_ s: inout [Unicode.Scalar]) {
        guard s.count > 1 else { return }
        var starterPos = 0
        var starter = s[0]
        var lastClass: Int = Int(Self.combiningClass(starter))
        if lastClass != 0 { lastClass = 256 }  // the sequence starts with a non-starter: nothing composes with it
        var compPos = 1
        for decompPos in 1..<s.count {
            let ch = s[decompPos]
            let chClass = Int(Self.combiningClass(ch))
            if (lastClass < chClass || lastClass == 0), let composite = composePair(starter, ch) {
                s[starterPos] = composite
                starter = composite
                continue
            }
            if chClass == 0 {
                starterPos = compPos
                starter = ch
            }
            lastClass = chClass
            s[compPos] = ch
            compPos += 1
        }
        s.removeSubrange(compPos...)
    }

    private func composePair(_ a: Unicode.Scalar, _ b: Unicode.Scalar) -> Unicode.Scalar? {
        let av = a.value, bv = b.value
        // Hangul L + V -> LV, LV + T -> LVT.
        if av >= Self.lBase && av < Self.lBase + Self.lCount && bv >= Self.vBase && bv < Self.vBase + Self.vCount {
            return Unicode.Scalar(Self.sBase + ((av - Self.lBase) * Self.vCount + (bv - Self.vBase)) * Self.tCount)
        }
        if av >= Self.sBase && av < Self.sBase + Self.sCount && (av - Self.sBase) % Self.tCount == 0
            && bv > Self.tBase && bv < Self.tBase + Self.tCount {
            return Unicode.Scalar(av + (bv - Self.tBase))
        }
        guard Self.combiningClass(b) != 0 || Self.composingStarters.contains(bv) else { return nil }
        guard TokenizerUnicode.isKnownToNormalizationTables(a), TokenizerUnicode.isKnownToNormalizationTables(b) else {
            return nil
        }
        let key = (UInt64(av) << 32) | UInt64(bv)
        lock.lock()
        let cached = pairCache[key]
        lock.unlock()
        if let cached { return cached == 0 ? nil : Unicode.Scalar(cached) }
        var view = String.UnicodeScalarView()
        view.append(a)
        view.append(b)
        let composed = Array(String(view).precomposedStringWithCanonicalMapping.unicodeScalars)
        var result: UInt32 = 0
        if composed.count == 1, let c = composed.first, TokenizerUnicode.isKnownToNormalizationTables(c) {
            result = c.value
        }
        lock.lock()
        if pairCache.count >= cacheLimit { pairCache.removeAll(keepingCapacity: true) }
        pairCache[key] = result
        lock.unlock()
        return result == 0 ? nil : Unicode.Scalar(result)
    }
}
