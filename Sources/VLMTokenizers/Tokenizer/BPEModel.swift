import Foundation

/// The BPE `model` of tokenizer.json: vocabulary, ranked merges and the per-word merge loop of the Rust
/// `tokenizers` crate (`Word::merge_all`: a min-heap on (rank, position), so the lowest-ranked pair is merged
/// first and ties go to the leftmost pair).
final class BPEModel: @unchecked Sendable {
    let vocab: [String: Int]
    /// id -> token string (the smallest string when several share an id); nil for holes.
    private let idToToken: [String?]
    /// (left id, right id) packed into 64 bits -> (rank, merged id).
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    /// Vocabulary ids of single-scalar tokens, for the common path without prefix/suffix.
    private let scalarIDs: [Unicode.Scalar: Int]
    private let unkID: Int?
    private let fuseUnk: Bool
    private let byteFallbackIDs: [Int?]?  // 256 entries of `<0xXX>` ids when byte_fallback is on
    private let continuingSubwordPrefix: String?
    private let endOfWordSuffix: String?
    private let ignoreMerges: Bool

    /// Word -> ids. Guarded by `cacheLock`; cleared when it grows past `cacheLimit` entries.
    private var cache: [[Unicode.Scalar]: [Int]] = [:]
    private let cacheLock = NSLock()
    private let cacheLimit = 50_000

    var maxID: Int { idToToken.lastIndex { $0 != nil } ?? -1 }

    init(node: TokenizerJSONNode) throws {
        let file = node.file
        let vocabNode = node["vocab"]
        guard !vocabNode.isNull else { throw TokenizerError.missingField(file: file, path: vocabNode.path) }
        guard case .object(let members)? = vocabNode.value else { throw vocabNode.wrongType("an object of token -> id") }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(members.count)
        var idToToken = [String?](repeating: nil, count: members.count)
        for (token, value) in zip(members.keys, members.values) {
            let id: Int
            if case .number(_, let exact?) = value {
                id = exact
            } else {  // build the path only for the error message
                id = try TokenizerJSONNode(value: value, file: file, path: "\(vocabNode.path)[\(token.debugDescription)]").int()
            }
            guard id >= 0 else { throw vocabNode.invalid("token \(token.debugDescription) has negative id \(id)") }
            guard id < 1 << 31 else { throw vocabNode.invalid("token \(token.debugDescription) has id \(id), too large") }
            vocab[token] = id
            if id >= idToToken.count { idToToken.append(contentsOf: repeatElement(nil, count: id + 1 - idToToken.count)) }
            if let existing = idToToken[id], existing <= token { continue }
            idToToken[id] = token
        }
        self.vocab = vocab
        self.idToToken = idToToken

        func nonEmpty(_ s: String?) -> String? { (s?.isEmpty ?? true) ? nil : s }
        continuingSubwordPrefix = nonEmpty(try node["continuing_subword_prefix"].optionalString())
        endOfWordSuffix = nonEmpty(try node["end_of_word_suffix"].optionalString())
        ignoreMerges = try node["ignore_merges"].bool(default: false)
        fuseUnk = try node["fuse_unk"].bool(default: false)
        if let dropout = try? node["dropout"].double(), dropout > 0 {
            throw node["dropout"].invalid("BPE dropout \(dropout) is not supported (only deterministic BPE)")
        }
        if let unk = try node["unk_token"].optionalString() {
            guard let id = vocab[unk] else {
                throw node["unk_token"].invalid("unk_token \(unk.debugDescription) is not in the vocabulary")
            }
            unkID = id
        } else {
            unkID = nil
        }
        if try node["byte_fallback"].bool(default: false) {
            byteFallbackIDs = (0..<256).map { vocab[String(format: "<0x%02X>", $0)] }
        } else {
            byteFallbackIDs = nil
        }

        var scalarIDs: [Unicode.Scalar: Int] = [:]
        for (token, id) in vocab {
            var it = token.unicodeScalars.makeIterator()
            if let first = it.next(), it.next() == nil { scalarIDs[first] = id }
        }
        self.scalarIDs = scalarIDs

        // Merges: ["a b", ...] (legacy) or [["a", "b"], ...].
        let mergesNode = node["merges"]
        var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
        let prefixBytes = continuingSubwordPrefix?.utf8.count ?? 0
        if !mergesNode.isNull {
            guard case .array(let list)? = mergesNode.value else { throw mergesNode.wrongType("an array") }
            merges.reserveCapacity(list.count)
            for (rank, item) in list.enumerated() {
                let a: String, b: String
                if case .array(let pair) = item, pair.count == 2, case .string(let x) = pair[0], case .string(let y) = pair[1] {
                    a = x; b = y
                } else if case .string(let s) = item {
                    // Split on the first U+0020 scalar (not Character: " \u{301}" is one grapheme).
                    let scalars = s.unicodeScalars
                    guard let space = scalars.firstIndex(of: " ") else {
                        throw mergesNode.invalid("merge #\(rank) \(s.debugDescription) is not of the form \"a b\"")
                    }
                    a = String(scalars[..<space])
                    b = String(scalars[scalars.index(after: space)...])
                } else {
                    throw TokenizerError.wrongType(file: file, path: "\(mergesNode.path)[\(rank)]",
                                                   expected: "\"a b\" or [\"a\", \"b\"]",
                                                   found: item.kind)
                }
                guard let aID = vocab[a] else {
                    throw mergesNode.invalid("merge #\(rank): token \(a.debugDescription) is not in the vocabulary")
                }
                guard let bID = vocab[b] else {
                    throw mergesNode.invalid("merge #\(rank): token \(b.debugDescription) is not in the vocabulary")
                }
                // Rust: `format!("{a}{}", &b[prefix_len..])`, the prefix is cut by byte length.
                var tail = b
                if prefixBytes > 0 {
                    guard let t = String(validating: Array(b.utf8).dropFirst(min(prefixBytes, b.utf8.count)), as: UTF8.self)
                    else {
                        throw mergesNode.invalid("merge #\(rank): token \(b.debugDescription) is shorter than the subword prefix")
                    }
                    tail = t
                }
                let merged = a + tail
                guard let newID = vocab[merged] else {
                    throw mergesNode.invalid("merge #\(rank): merged token \(merged.debugDescription) is not in the vocabulary")
                }
                merges[Self.key(aID, bID)] = (Int32(clamping: rank), Int32(clamping: newID))
            }
        }
        self.merges = merges
    }

    @inline(__always) private static func key(_ a: Int, _ b: Int) -> UInt64 {
        (UInt64(UInt32(truncatingIfNeeded: a)) << 32) | UInt64(UInt32(truncatingIfNeeded: b))
    }

    func tokenID(_ token: String) -> Int? { vocab[token] }
    func token(_ id: Int) -> String? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    /// Appends the ids of one pre-tokenized word.
    func tokenize(_ word: [Unicode.Scalar], into out: inout [Int]) {
        if word.isEmpty { return }
        if ignoreMerges, let id = vocab[TokenizerNormalizer.string(word)] {
            out.append(id)
            return
        }
        cacheLock.lock()
        let hit = cache[word]
        cacheLock.unlock()
        if let hit {
            out.append(contentsOf: hit)
            return
        }
        let ids = mergeWord(word)
        out.append(contentsOf: ids)
        cacheLock.lock()
        if cache.count >= cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[word] = ids
        cacheLock.unlock()
    }

    /// `BPE::merge_word`: initial symbols (with unk / byte fallback), then the ranked merges.
    private func mergeWord(_ word: [Unicode.Scalar]) -> [Int] {
        var symbols: [Int] = []
        symbols.reserveCapacity(word.count)
        var pendingUnk: Int? = nil  // an unk waiting to be emitted (for fuse_unk)
        let plain = continuingSubwordPrefix == nil && endOfWordSuffix == nil
        for (i, c) in word.enumerated() {
            let id: Int?
            var piece: String? = nil
            if plain {
                id = scalarIDs[c]
            } else {
                var s = String(Character(c))
                if i > 0, let p = continuingSubwordPrefix { s = p + s }
                if i == word.count - 1, let e = endOfWordSuffix { s += e }
                piece = s
                id = vocab[s]
            }
            if let id {
                if let u = pendingUnk { symbols.append(u); pendingUnk = nil }
                symbols.append(id)
                continue
            }
            if let table = byteFallbackIDs {
                let bytes = Array((piece ?? String(Character(c))).utf8)
                let ids = bytes.map { table[Int($0)] }
                if ids.allSatisfy({ $0 != nil }) {
                    // Rust does not flush a pending unk here; it stays pending (order preserved as in Rust).
                    for b in ids { if let b { symbols.append(b) } }
                    continue
                }
            }
            if let unk = unkID {
                if pendingUnk != nil && fuseUnk { continue }
                if let u = pendingUnk { symbols.append(u) }
                pendingUnk = unk
            }
            // No unk token: the scalar is dropped, as in Rust.
        }
        if let u = pendingUnk { symbols.append(u) }
        if symbols.count < 2 || merges.isEmpty { return symbols }
        return mergeAll(symbols)
    }

    /// `Word::merge_all` without dropout.
    private func mergeAll(_ initial: [Int]) -> [Int] {
        let n = initial.count
        var ids = initial
        var prev = [Int](repeating: -1, count: n)
        var next = [Int](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0..<n {
            prev[i] = i - 1
            next[i] = i + 1 < n ? i + 1 : -1
        }
        var heap = BPEMergeHeap()
        for i in 0..<(n - 1) {
            if let m = merges[Self.key(ids[i], ids[i + 1])] {
                heap.push(BPEMergeCandidate(rank: m.rank, pos: Int32(i), newID: m.id))
            }
        }
        while let top = heap.pop() {
            let pos = Int(top.pos)
            guard alive[pos] else { continue }
            let right = next[pos]
            guard right >= 0 else { continue }
            // Skip stale entries: the pair at `pos` must still produce this merge.
            guard let m = merges[Self.key(ids[pos], ids[right])], m.id == top.newID else { continue }
            ids[pos] = Int(top.newID)
            alive[right] = false
            let after = next[right]
            next[pos] = after
            if after >= 0 { prev[after] = pos }
            let before = prev[pos]
            if before >= 0, let pm = merges[Self.key(ids[before], ids[pos])] {
                heap.push(BPEMergeCandidate(rank: pm.rank, pos: Int32(before), newID: pm.id))
            }
            if after >= 0, let nm = merges[Self.key(ids[pos], ids[after])] {
                heap.push(BPEMergeCandidate(rank: nm.rank, pos: Int32(pos), newID: nm.id))
            }
        }
        var out: [Int] = []
        out.reserveCapacity(n)
        var i = 0
        while i >= 0 {
            out.append(ids[i])
            i = next[i]
        }
        return out
    }
}

struct BPEMergeCandidate {
    var rank: Int32
    var pos: Int32
    var newID: Int32

    @inline(__always) func precedes(_ o: BPEMergeCandidate) -> Bool {
        rank != o.rank ? rank < o.rank : pos < o.pos
    }
}

/// Binary min-heap on (rank, pos).
struct BPEMergeHeap {
    private var items: [BPEMergeCandidate] = []

    mutating func push(_ x: BPEMergeCandidate) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if items[i].precedes(items[p]) { items.swapAt(i, p); i = p } else { break }
        }
    }

    mutating func pop() -> BPEMergeCandidate? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            let n = items.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && items[l].precedes(items[m]) { m = l }
                if r < n && items[r].precedes(items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return first
    }
}
