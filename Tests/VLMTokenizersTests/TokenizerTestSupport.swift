import Foundation
import XCTest
@testable import VLMTokenizers

/// Locates fixtures and the shared real tokenizers relative to this file, and loads goldens.json.
enum TokenizerTestSupport {
    /// `<repo>/Tests`.
    static let testsDirectory: URL = {
        var url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while url.path != "/" && url.lastPathComponent != "Tests" { url = url.deletingLastPathComponent() }
        return url
    }()

    static let fixturesDirectory = testsDirectory.appendingPathComponent("Fixtures/tokenizers")

    /// `<repo>/../shared/models`, or the nearest `shared/models` above the repository.
    static let sharedModelsDirectory: URL? = {
        var dir = testsDirectory.deletingLastPathComponent()  // repo
        while dir.path != "/" {
            let candidate = dir.deletingLastPathComponent().appendingPathComponent("shared/models")
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }()

    static func directory(name: String, location: String) throws -> URL {
        if location == "shared" {
            guard let shared = sharedModelsDirectory else {
                throw XCTSkip("shared/models not found beside the repository (needed for \(name))")
            }
            return shared.appendingPathComponent(name)
        }
        return fixturesDirectory.appendingPathComponent(name)
    }

    struct Case {
        let text: String
        let ids: [Int]
        let idsSpecial: [Int]
        let decoded: String
        let decodedSkip: String
    }

    struct DecodeCase {
        let ids: [Int]
        let decoded: String
        let decodedSkip: String
    }

    struct Entry {
        let name: String
        let location: String
        let vocabSize: Int
        let specialIDs: Set<Int>
        let lookups: [String: Int]
        let cases: [Case]
        let decodeCases: [DecodeCase]
    }

    /// One pre-tokenizer or normalizer of goldens.json with its outputs on the corpus.
    struct ComponentEntry {
        let json: Any
        let cases: [(text: String, output: [String])]
    }

    nonisolated(unsafe) private static var rawRoot: [String: Any]?
    nonisolated(unsafe) private static var loaded: [Entry]?
    private static let lock = NSLock()
    nonisolated(unsafe) private static var tokenizers: [String: Tokenizer] = [:]

    static func goldens() throws -> [Entry] {
        lock.lock(); defer { lock.unlock() }
        if let loaded { return loaded }
        // TOKENIZER_GOLDENS=/path/to/big.json swaps in a larger file from tokenizer_goldens.py --fuzz N --out PATH.
        let url = ProcessInfo.processInfo.environment["TOKENIZER_GOLDENS"].map { URL(fileURLWithPath: $0) }
            ?? fixturesDirectory.appendingPathComponent("goldens.json")
        let data = try Data(contentsOf: url)
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let list = root["tokenizers"] as? [[String: Any]] else {
            throw NSError(domain: "goldens", code: 1, userInfo: [NSLocalizedDescriptionKey: "bad goldens.json"])
        }
        rawRoot = root
        func ints(_ v: Any?) -> [Int] { (v as? [Any])?.compactMap { ($0 as? NSNumber)?.intValue } ?? [] }
        let entries: [Entry] = list.map { t in
            Entry(
                name: t["name"] as? String ?? "?",
                location: t["location"] as? String ?? "fixture",
                vocabSize: (t["vocab_size"] as? NSNumber)?.intValue ?? -1,
                specialIDs: Set(ints(t["special_ids"])),
                lookups: ((t["lookups"] as? [String: Any]) ?? [:]).compactMapValues { ($0 as? NSNumber)?.intValue },
                cases: ((t["cases"] as? [[String: Any]]) ?? []).map { c in
                    Case(text: c["text"] as? String ?? "", ids: ints(c["ids"]), idsSpecial: ints(c["ids_special"]),
                         decoded: c["decoded"] as? String ?? "", decodedSkip: c["decoded_skip"] as? String ?? "")
                },
                decodeCases: ((t["decode_cases"] as? [[String: Any]]) ?? []).map { c in
                    DecodeCase(ids: ints(c["ids"]), decoded: c["decoded"] as? String ?? "",
                               decodedSkip: c["decoded_skip"] as? String ?? "")
                })
        }
        loaded = entries
        return entries
    }

    /// `key` is "pre_tokenizers" (outputs are the pieces) or "normalizers" (output is the normalized text).
    static func components(_ key: String) throws -> [ComponentEntry] {
        _ = try goldens()
        lock.lock(); defer { lock.unlock() }
        let list = (rawRoot?[key] as? [[String: Any]]) ?? []
        return list.map { item in
            let cases = ((item["cases"] as? [[String: Any]]) ?? []).map { c -> (String, [String]) in
                let text = c["text"] as? String ?? ""
                if let pieces = c["pieces"] as? [String] { return (text, pieces) }
                return (text, [c["normalized"] as? String ?? ""])
            }
            return ComponentEntry(json: item["json"] ?? NSNull(), cases: cases)
        }
    }

    static func tokenizer(_ entry: Entry) throws -> Tokenizer {
        lock.lock()
        if let t = tokenizers[entry.name] { lock.unlock(); return t }
        lock.unlock()
        let t = try Tokenizer(directory: directory(name: entry.name, location: entry.location))
        lock.lock(); tokenizers[entry.name] = t; lock.unlock()
        return t
    }

    static func tokenizer(named name: String) throws -> Tokenizer {
        guard let entry = try goldens().first(where: { $0.name == name }) else {
            throw NSError(domain: "goldens", code: 2, userInfo: [NSLocalizedDescriptionKey: "no golden entry \(name)"])
        }
        return try tokenizer(entry)
    }

    /// Shows invisible characters in failure messages.
    static func visible(_ s: String) -> String {
        s.unicodeScalars.map { c in
            (c.value < 0x20 || c.value == 0x7F || (c.value >= 0x80 && c.value < 0xA0)) ? String(format: "\\u{%X}", c.value)
                : String(c)
        }.joined()
    }
}
