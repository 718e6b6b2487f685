import Foundation
import VLMMedia
import VLMModels

// Session files: a conversation and its runner's KV cache, so a chat resumes where it stopped without running the
// model over the history again.
//
// Layout (little-endian):
//   8 bytes   magic "SVLMSESS"
//   u32       version (1)
//   u32       header length H
//   H bytes   header, JSON (SessionHeader): model identity, prompt format, system prompt, turns (text, reply, image
//             records), the cached token ids, which image fills which cached positions, the KV geometry
//   ...       the turns' image bytes, in order (encoded files as they were read; decoded images as RGB8 pixels)
//   ...       KV rows: per layer, keys then values, `tokens * row_width` f32 each
//   u64       checksum (WordChecksum) of every byte before it
// Everything is checked on load (sizes before any read, then the checksum, then the model identity, the KV
// geometry, token ids and image hashes) and any failure is a SessionError naming the file; nothing is changed
// unless the whole file is valid.

public struct SessionError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let message: String

    public init(_ url: URL, _ message: String) {
        path = url.path
        self.message = message
    }

    public var description: String { "session file \(path): \(message)" }
}

struct SessionHeader: Codable {
    struct Model: Codable, Equatable {
        var configFnv1a64: String
        var weightsFingerprint: String
        var modelType: String?
        enum CodingKeys: String, CodingKey {
            case configFnv1a64 = "config_fnv1a64", weightsFingerprint = "weights_fingerprint", modelType = "model_type"
        }
    }
    struct Image: Codable {
        var name: String
        var kind: String          // "encoded" or "pixels"
        var width: Int?
        var height: Int?
        var bytes: Int
        var fnv1a64: String
    }
    struct Turn: Codable {
        var text: String
        var reply: String
        var images: [Image]
    }
    struct Span: Codable {
        var start: Int
        var count: Int
        var fnv1a64: String
    }
    struct Cache: Codable {
        var tokens: Int
        var layers: Int
        var rowWidth: Int
        var dtype: String
        var tokenIds: [Int]
        var images: [Span]
        enum CodingKeys: String, CodingKey {
            case tokens, layers, rowWidth = "row_width", dtype, tokenIds = "token_ids", images
        }
    }
    var format: String
    var model: Model
    var promptFormat: String
    var system: String?
    var droppedTurns: Int
    var turns: [Turn]
    var cache: Cache
    enum CodingKeys: String, CodingKey {
        case format, model, promptFormat = "prompt_format", system, droppedTurns = "dropped_turns", turns, cache
    }
}

enum SessionFile {
    static let magic = Array("SVLMSESS".utf8)
    static let version: UInt32 = 1
    static let formatName = "swiftvlm-conversation"
    static let maxHeaderBytes = 256 << 20

    static func hex(_ v: UInt64) -> String { String(format: "%016llx", v) }
    static func parseHex(_ s: String) -> UInt64? { s.count == 16 ? UInt64(s, radix: 16) : nil }

    /// The model a cache belongs to: config.json's FNV-1a 64, and a fingerprint of the weight files (names, sizes,
    /// first and last MiB of each *.safetensors), which tells fine-tunes with identical configs apart cheaply; and
    /// the format the weights were loaded in (a cache made with --quantize q4 does not fit the float weights).
    static func identity(of directory: URL, weightFormat: String? = nil) -> SessionHeader.Model {
        let config = (try? Data(contentsOf: directory.appendingPathComponent("config.json"))).map { hex(FNV1a64.hash($0)) } ?? "none"
        var h = FNV1a64()
        var any = false
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".safetensors") }.sorted()
        for name in files {
            guard let handle = try? FileHandle(forReadingFrom: directory.appendingPathComponent(name)) else { continue }
            defer { try? handle.close() }
            let size = (try? handle.seekToEnd()) ?? 0
            h.update(Data(name.utf8))
            h.update(size)
            let window: UInt64 = 1 << 20
            try? handle.seek(toOffset: 0)
            if let head = try? handle.read(upToCount: Int(min(size, window))) { h.update(head) }
            if size > window {
                try? handle.seek(toOffset: size - window)
                if let tail = try? handle.read(upToCount: Int(window)) { h.update(tail) }
            }
            any = true
        }
        if let weightFormat, !weightFormat.isEmpty {
            h.update(Data(("loaded as " + weightFormat).utf8))
        }
        let type = try? ModelRegistry.modelType(directory: directory).0
        return .init(configFnv1a64: config, weightsFingerprint: any ? hex(h.value) : "none", modelType: type)
    }
}

extension Conversation {
    private var backend: ConversationBackend {
        get throws {
            guard let b = runner as? ConversationBackend else { throw ConversationError.needsBackend("a session file") }
            return b
        }
    }

    /// Writes the conversation and the runner's KV cache to `url` (atomically: a temporary file, then a rename).
    public func save(to url: URL) throws {
        if !runner.isLoaded { try runner.load() }
        let backend = try self.backend
        guard let cache = backend.kvCache else { throw RunnerError.notLoaded }
        let tokenIDs = backend.tokenIDsInCache
        guard tokenIDs.count == cache.count else {
            throw SessionError(url, "internal: the runner's token ids (\(tokenIDs.count)) and KV cache (\(cache.count)) disagree")
        }
        var blobs: [Data] = []
        var turnRecords: [SessionHeader.Turn] = []
        for turn in turns {
            var records: [SessionHeader.Image] = []
            for image in turn.images {
                let record: SessionHeader.Image
                switch try image.inMemory() {
                case .encoded(let data, let name):
                    record = .init(name: name, kind: "encoded", width: nil, height: nil, bytes: data.count,
                                   fnv1a64: SessionFile.hex(FNV1a64.hash(data)))
                    blobs.append(data)
                case .pixels(let rgb):
                    let data = Data(rgb.pixels)
                    record = .init(name: image.name, kind: "pixels", width: rgb.width, height: rgb.height, bytes: data.count,
                                   fnv1a64: SessionFile.hex(try image.contentHash()))
                    blobs.append(data)
                case .file:
                    preconditionFailure("inMemory() returns bytes")
                }
                records.append(record)
            }
            turnRecords.append(.init(text: turn.text, reply: turn.reply, images: records))
        }
        let header = SessionHeader(
            format: SessionFile.formatName, model: SessionFile.identity(of: backend.modelFolder, weightFormat: backend.languageModel?.weightFormat),
            promptFormat: format.rawValue, system: systemPrompt, droppedTurns: droppedTurns, turns: turnRecords,
            cache: .init(tokens: cache.count, layers: cache.layers, rowWidth: cache.rowWidth, dtype: "f32",
                         tokenIds: tokenIDs,
                         images: backend.imagesInCache.map { .init(start: $0.range.lowerBound, count: $0.range.count,
                                                                    fnv1a64: SessionFile.hex($0.contentHash)) }))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let headerData = try encoder.encode(header)

        let tmp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(ProcessInfo.processInfo.processIdentifier)")
        guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
            throw SessionError(url, "cannot create \(tmp.lastPathComponent) in \(tmp.deletingLastPathComponent().path)")
        }
        var ok = false
        defer { if !ok { try? FileManager.default.removeItem(at: tmp) } }
        let handle = try FileHandle(forWritingTo: tmp)
        var checksum = WordChecksum()
        func write(_ data: Data) throws {
            checksum.update(data)
            try handle.write(contentsOf: data)
        }
        var prefix = Data(SessionFile.magic)
        withUnsafeBytes(of: SessionFile.version.littleEndian) { prefix.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(headerData.count).littleEndian) { prefix.append(contentsOf: $0) }
        try write(prefix)
        try write(headerData)
        for blob in blobs { try write(blob) }
        try cache.forEachLayerRows { _, keys, values in
            if keys.count > 0 {
                try write(Data(buffer: keys))
                try write(Data(buffer: values))
            }
        }
        try withUnsafeBytes(of: checksum.finalized.littleEndian) { try handle.write(contentsOf: Data($0)) }
        try handle.close()
        guard rename(tmp.path, url.path) == 0 else {
            throw SessionError(url, "cannot write the file (\(String(cString: strerror(errno))))")
        }
        ok = true
    }

    /// Replaces this conversation (history and the runner's KV cache) by the one saved in `url`. The file must
    /// come from the same model; it is checked completely before anything changes.
    public func load(from url: URL) throws {
        if !runner.isLoaded { try runner.load() }
        let backend = try self.backend
        guard let cache = backend.kvCache, let lm = runner.languageModel else { throw RunnerError.notLoaded }
        let data: Data
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw SessionError(url, "cannot read it (\(error.localizedDescription))")
        }
        func fail(_ m: String) -> SessionError { SessionError(url, m) }
        func u32(_ at: Int) -> UInt32 {
            data.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        }
        guard data.count >= 8, Array(data.prefix(8)) == SessionFile.magic else {
            throw fail("not a SwiftVLM session file (no SVLMSESS magic)")
        }
        guard data.count >= 16 else { throw fail("truncated: \(data.count) bytes, not even a complete file header") }
        let version = u32(8)
        guard version == SessionFile.version else {
            throw fail("format version \(version) is not supported (this build reads version \(SessionFile.version))")
        }
        let headerLength = Int(u32(12))
        guard headerLength <= SessionFile.maxHeaderBytes else { throw fail("corrupted: header length \(headerLength) is implausible") }
        guard data.count >= 16 + headerLength else {
            throw fail("truncated: \(data.count) bytes, but the header alone needs \(16 + headerLength)")
        }
        let header: SessionHeader
        do {
            let decoder = JSONDecoder()
            header = try decoder.decode(SessionHeader.self, from: data.subdata(in: 16..<(16 + headerLength)))
        } catch {
            throw fail("corrupted: the header is not a valid session header (\(error))")
        }
        guard header.format == SessionFile.formatName else { throw fail("not a conversation session (format '\(header.format)')") }

        // Sizes, with overflow checks, before reading any payload.
        var expected = 16 + headerLength
        func add(_ n: Int, _ what: String) throws {
            guard n >= 0 else { throw fail("corrupted: negative size for \(what)") }
            let (sum, overflow) = expected.addingReportingOverflow(n)
            guard !overflow else { throw fail("corrupted: size of \(what) overflows") }
            expected = sum
        }
        for turn in header.turns { for image in turn.images { try add(image.bytes, "image \(image.name)") } }
        let c = header.cache
        guard c.tokens >= 0, c.layers >= 0, c.rowWidth >= 0 else { throw fail("corrupted: negative KV geometry") }
        let (rows, o1) = c.tokens.multipliedReportingOverflow(by: c.rowWidth)
        let (perLayer, o2) = rows.multipliedReportingOverflow(by: 2 * MemoryLayout<Float>.size)
        let (kvBytes, o3) = perLayer.multipliedReportingOverflow(by: c.layers)
        guard !o1, !o2, !o3 else { throw fail("corrupted: the KV size overflows") }
        try add(kvBytes, "the KV cache")
        try add(8, "the checksum")
        guard data.count >= expected else { throw fail("truncated: \(data.count) bytes, expected \(expected)") }
        guard data.count == expected else { throw fail("corrupted: \(data.count - expected) unexpected bytes after the end") }
        var checksum = WordChecksum()
        data.withUnsafeBytes { checksum.update(UnsafeRawBufferPointer(rebasing: $0[..<(expected - 8)])) }
        let stored = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: expected - 8, as: UInt64.self)) }
        guard stored == checksum.finalized else { throw fail("corrupted: checksum mismatch (the file was changed or damaged)") }

        // The model and the cache geometry.
        let mine = SessionFile.identity(of: backend.modelFolder, weightFormat: backend.languageModel?.weightFormat)
        if header.model.configFnv1a64 != mine.configFnv1a64 {
            throw fail("saved with another model (config.json hash \(header.model.configFnv1a64), "
                       + "\(header.model.modelType ?? "unknown type")) than \(backend.modelFolder.path) (\(mine.configFnv1a64))")
        }
        if header.model.weightsFingerprint != mine.weightsFingerprint {
            throw fail("saved with other weights (same config.json, weight fingerprint \(header.model.weightsFingerprint) vs \(mine.weightsFingerprint))")
        }
        guard c.dtype == "f32", c.layers == cache.layers, c.rowWidth == cache.rowWidth else {
            throw fail("the KV cache is \(c.layers) layers × \(c.rowWidth) \(c.dtype) but this model's is \(cache.layers) × \(cache.rowWidth) f32")
        }
        guard c.tokens <= cache.maxTokens else { throw fail("the KV cache holds \(c.tokens) tokens, more than this model's \(cache.maxTokens)") }
        guard c.tokenIds.count == c.tokens else { throw fail("corrupted: \(c.tokenIds.count) token ids for \(c.tokens) cached tokens") }
        if let bad = c.tokenIds.first(where: { $0 < 0 || $0 >= lm.vocabularySize }) {
            throw fail("corrupted: token id \(bad) is outside the vocabulary (0..<\(lm.vocabularySize))")
        }
        guard let format = PromptFormat(rawValue: header.promptFormat) else { throw fail("unknown prompt format '\(header.promptFormat)'") }
        guard header.droppedTurns >= 0 else { throw fail("corrupted: negative dropped-turn count") }
        var cachedImages: [CachedImage] = []
        var end = 0
        for span in c.images {
            guard let hash = SessionFile.parseHex(span.fnv1a64), span.count > 0, span.start >= end,
                  span.start <= c.tokens - span.count else {
                throw fail("corrupted: cached image span \(span.start)+\(span.count) is invalid for \(c.tokens) tokens")
            }
            end = span.start + span.count
            cachedImages.append(CachedImage(range: span.start..<end, contentHash: hash))
        }
        guard runner.imagePlaceholder != nil || (cachedImages.isEmpty && header.turns.allSatisfy { $0.images.isEmpty }) else {
            throw fail("holds images but this model has no vision encoder")
        }

        // Images, each checked against its hash.
        var offset = 16 + headerLength
        var turns: [ConversationTurn] = []
        for turn in header.turns {
            var images: [ImageInput] = []
            for record in turn.images {
                let bytes = data.subdata(in: offset..<(offset + record.bytes))
                offset += record.bytes
                let image: ImageInput
                switch record.kind {
                case "encoded":
                    image = .encoded(bytes, name: record.name)
                case "pixels":
                    guard let w = record.width, let h = record.height, let rgb = RGBImage(width: w, height: h, pixels: [UInt8](bytes)) else {
                        throw fail("corrupted: image \(record.name) is not \(record.width ?? 0)×\(record.height ?? 0) RGB pixels")
                    }
                    image = .pixels(rgb)
                default:
                    throw fail("corrupted: image \(record.name) has unknown kind '\(record.kind)'")
                }
                guard let want = SessionFile.parseHex(record.fnv1a64), try image.contentHash() == want else {
                    throw fail("corrupted: image \(record.name) does not match its hash")
                }
                images.append(image)
            }
            turns.append(ConversationTurn(text: turn.text, images: images, reply: turn.reply))
        }

        // Valid: install it.
        runner.reset()
        let floats = c.tokens * c.rowWidth
        try data.withUnsafeBytes { raw in
            try cache.replaceRows(tokens: c.tokens) { _, keys, values in
                memcpy(keys.baseAddress!, raw.baseAddress! + offset, floats * MemoryLayout<Float>.size)
                offset += floats * MemoryLayout<Float>.size
                memcpy(values.baseAddress!, raw.baseAddress! + offset, floats * MemoryLayout<Float>.size)
                offset += floats * MemoryLayout<Float>.size
            }
        }
        backend.installCacheState(tokenIDs: c.tokenIds, images: cachedImages)
        restore(systemPrompt: header.system, format: format, turns: turns, droppedTurns: header.droppedTurns)
    }
}
