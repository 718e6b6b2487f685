import Foundation

/// A Hugging Face `tokenizer.json` tokenizer that encodes and decodes exactly like the Python `tokenizers`
/// package (0.23): added/special tokens are split out of the text first (leftmost-longest, honouring
/// `single_word` / `lstrip` / `rstrip` / `normalized`), the rest goes through normalizer -> pre-tokenizer ->
/// BPE model, and the post-processor adds BOS/EOS-style tokens when `addSpecialTokens` is true.
///
/// Supported components (anything else throws a `TokenizerError` naming the JSON path and type string):
/// - model: BPE (merges as "a b" or ["a", "b"], `byte_fallback`, `unk_token`/`fuse_unk`,
///   `continuing_subword_prefix`, `end_of_word_suffix`, `ignore_merges`; no dropout)
/// - normalizer: NFC, NFD, NFKC, NFKD, Lowercase, Strip, Replace, Prepend, ByteLevel, Sequence
/// - pre_tokenizer: ByteLevel, Digits, Split, Metaspace, Punctuation, Whitespace, WhitespaceSplit,
///   CharDelimiterSplit, BertPreTokenizer, Sequence
/// - post_processor: ByteLevel, TemplateProcessing (single), RobertaProcessing, BertProcessing, Sequence
/// - decoder: ByteLevel, Metaspace, Replace, Strip, Fuse, ByteFallback, BPEDecoder, WordPiece, Sequence
///
/// Immutable after init and safe to share between threads (the per-word BPE cache is locked).
public final class Tokenizer: @unchecked Sendable {
    private let model: BPEModel
    private let normalizer: TokenizerNormalizer?
    private let preTokenizer: PreTokenizer?
    private let postProcessor: TokenizerPostProcessor?
    private let decoder: TokenizerDecoder?
    private let rawMatcher: AddedTokenMatcher
    private let normalizedMatcher: AddedTokenMatcher
    private let addedIDToString: [Int: String]
    private let addedByContent: [String: Int]
    private let specialContents: Set<String>

    /// tokenizer.json's `added_tokens`, in file order.
    public let addedTokens: [AddedTokenInfo]
    /// Max id + 1 over the vocabulary and the added tokens.
    public let vocabularySize: Int
    /// Ids of added tokens marked `special` (skipped by `decode(_:skipSpecialTokens: true)`).
    public let specialTokenIDs: Set<Int>
    /// Parsed tokenizer_config.json (`[:]` when there is none).
    public let tokenizerConfig: [String: Any]
    public let bosToken: String?
    public let eosToken: String?
    public let padToken: String?
    public let unkToken: String?

    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` from a model folder.
    public convenience init(directory: URL) throws {
        let tokenizerURL = directory.appendingPathComponent("tokenizer.json")
        let data: Data
        do {
            data = try Data(contentsOf: tokenizerURL)
        } catch {
            throw TokenizerError.fileNotReadable(path: tokenizerURL.path, reason: error.localizedDescription)
        }
        let configURL = directory.appendingPathComponent("tokenizer_config.json")
        var configData: Data? = nil
        if FileManager.default.fileExists(atPath: configURL.path) {
            do {
                configData = try Data(contentsOf: configURL)
            } catch {
                throw TokenizerError.fileNotReadable(path: configURL.path, reason: error.localizedDescription)
            }
        }
        try self.init(tokenizerJSON: data, tokenizerConfigJSON: configData)
    }

    public init(tokenizerJSON: Data, tokenizerConfigJSON: Data?) throws {
        let root = try TokenizerJSONNode.parse(tokenizerJSON, file: "tokenizer.json")

        // Model.
        let modelNode = root["model"]
        guard !modelNode.isNull else { throw TokenizerError.missingField(file: root.file, path: "model") }
        _ = try modelNode.object()
        let modelType = try modelNode["type"].optionalString() ?? (modelNode["merges"].isNull ? "(none)" : "BPE")
        guard modelType == "BPE" else {
            throw TokenizerError.unsupportedType(file: root.file, path: "model.type", type: modelType, supported: ["BPE"])
        }
        model = try BPEModel(node: modelNode)

        // Pipeline stages.
        normalizer = try TokenizerNormalizer.parse(root["normalizer"])
        preTokenizer = try PreTokenizer.parse(root["pre_tokenizer"])
        postProcessor = try TokenizerPostProcessor.parse(root["post_processor"])
        decoder = try TokenizerDecoder.parse(root["decoder"])

        // Added tokens.
        var added: [AddedTokenInfo] = []
        let addedNode = root["added_tokens"]
        if !addedNode.isNull {
            for item in try addedNode.array() {
                let content = try item["content"].string()
                let special = try item["special"].bool(default: false)
                let jsonID = try item["id"].int()
                added.append(AddedTokenInfo(
                    id: model.tokenID(content) ?? jsonID,  // Rust reuses the model's id for a known string
                    content: content,
                    singleWord: try item["single_word"].bool(default: false),
                    lstrip: try item["lstrip"].bool(default: false),
                    rstrip: try item["rstrip"].bool(default: false),
                    normalized: try item["normalized"].bool(default: !special),
                    special: special))
            }
        }
        addedTokens = added
        var byContent: [String: Int] = [:]
        var idToString: [Int: String] = [:]
        for t in added {
            byContent[t.content] = t.id
            // `id_to_token` / decode give a normalized token its normalized form ("Hello World" -> "hello world").
            if t.normalized, let normalizer {
                idToString[t.id] = TokenizerNormalizer.string(normalizer.normalize(Array(t.content.unicodeScalars)))
            } else {
                idToString[t.id] = t.content
            }
        }
        addedIDToString = idToString
        addedByContent = byContent
        specialContents = Set(added.filter { $0.special }.flatMap { [$0.content, idToString[$0.id] ?? $0.content] })
        specialTokenIDs = Set(added.filter { $0.special }.map { $0.id })

        // Matching order: special tokens first, then the others (AddedVocabulary::refresh_added_tokens).
        let ordered = added.filter { $0.special } + added.filter { !$0.special }
        rawMatcher = AddedTokenMatcher(ordered.filter { !$0.normalized }.map { (Array($0.content.unicodeScalars), $0) })
        let norm = normalizer
        normalizedMatcher = AddedTokenMatcher(ordered.filter { $0.normalized }.map { t in
            let scalars = Array(t.content.unicodeScalars)
            return (norm?.normalize(scalars) ?? scalars, t)
        })

        vocabularySize = max(model.maxID, added.map { $0.id }.max() ?? -1) + 1

        // tokenizer_config.json.
        var config: [String: Any] = [:]
        if let configData = tokenizerConfigJSON {
            config = try TokenizerJSONNode.foundationObject(configData, file: "tokenizer_config.json")
        }
        tokenizerConfig = config
        func tokenString(_ key: String) -> String? {
            switch config[key] {
            case let s as String: return s
            case let d as [String: Any]: return d["content"] as? String
            default: return nil
            }
        }
        bosToken = tokenString("bos_token")
        eosToken = tokenString("eos_token")
        padToken = tokenString("pad_token")
        unkToken = tokenString("unk_token")
    }

    // MARK: vocabulary

    /// The id of a vocabulary or added token string.
    public func tokenID(_ token: String) -> Int? {
        addedByContent[token] ?? model.tokenID(token)
    }

    /// The string of an id (added tokens first), or nil when the id is unknown.
    public func token(_ id: Int) -> String? {
        addedIDToString[id] ?? model.token(id)
    }

    public var bosTokenID: Int? { bosToken.flatMap { tokenID($0) } }
    public var eosTokenID: Int? { eosToken.flatMap { tokenID($0) } }
    public var padTokenID: Int? { padToken.flatMap { tokenID($0) } }

    // MARK: encode

    /// Token ids of `text`, like `tokenizers.Tokenizer.encode(text, add_special_tokens=...).ids`.
    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int] {
        let scalars = Array(text.unicodeScalars)
        var ids: [Int] = []
        ids.reserveCapacity(scalars.count / 3 + 4)
        for segment in rawMatcher.split(scalars) {
            switch segment {
            case .token(let id):
                ids.append(id)
            case .text(let range):
                var piece = Array(scalars[range])
                if let normalizer { piece = normalizer.normalize(piece) }
                for inner in normalizedMatcher.split(piece) {
                    switch inner {
                    case .token(let id):
                        ids.append(id)
                    case .text(let r):
                        guard !r.isEmpty else { continue }
                        let start = PreTokenPiece(scalars: Array(piece[r]),
                                                  atOriginalStart: range.lowerBound == 0 && r.lowerBound == 0)
                        let words = preTokenizer?.apply([start]) ?? [start]
                        for w in words { model.tokenize(w.scalars, into: &ids) }
                    }
                }
            }
        }
        if addSpecialTokens, let postProcessor { ids = postProcessor.process(ids) }
        return ids
    }

    // MARK: decode

    /// Text of `ids`, like `tokenizers.Tokenizer.decode(ids, skip_special_tokens=...)`. Unknown ids are skipped.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard let t = token(id) else { continue }
            if skipSpecialTokens && specialContents.contains(t) { continue }
            tokens.append(t)
        }
        if let decoder { return decoder.decode(tokens) }
        return tokens.joined(separator: " ")
    }
}
