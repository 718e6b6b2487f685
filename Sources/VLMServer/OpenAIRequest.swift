import Foundation
import VLMMedia
import VLMRuntime
import VLMTokenizers

/// A JSON value as the client sent it; numbers keep whether they were written as integers.
enum JSONValue: Decodable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else if let o = try? c.decode([String: JSONValue].self) { self = .object(o) }
        else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a JSON value") }
    }

    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?

    public init(status: Int = 400, _ message: String, type: String = "invalid_request_error", param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { "\(status): \(message)" }

    var body: [String: Any] {
        ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
    }

    static func wrongType(_ param: String, expected: String, found: JSONValue) -> APIError {
        APIError("'\(param)' must be \(expected), found \(found.typeName)", param: param, code: "invalid_type")
    }
}

/// What the server needs from one POST /v1/chat/completions body, validated.
struct ChatCompletionRequest {
    var messages: [ChatMessage] = []
    var images: [ImageInput] = []
    var config = GenerationConfig()
    var stream = false
    var includeUsage = false
    var model: String?
    /// Remote images still to fetch: their index in `images` (which holds a placeholder there) and parameter path.
    var remoteImages: [(index: Int, url: URL, param: String)] = []

    struct Limits {
        var maxImages = 8
        var decoding = ImageDecodingOptions()
        var sources = ImageSourcePolicy()
        var imagePlaceholder: String?
        var defaultMaxTokens = 256
    }

    /// Parses and checks `body`; every problem is an `APIError` naming the offending parameter.
    static func parse(_ body: Data, limits: Limits) throws -> ChatCompletionRequest {
        let root: JSONValue
        do { root = try JSONDecoder().decode(JSONValue.self, from: body) } catch {
            throw APIError("the request body is not valid JSON", code: "invalid_json")
        }
        guard case .object(let fields) = root else { throw APIError("the request body must be a JSON object", code: "invalid_json") }
        var r = ChatCompletionRequest()

        if let v = fields["model"], !isNull(v) {
            guard case .string(let s) = v else { throw APIError.wrongType("model", expected: "a string", found: v) }
            r.model = s
        }
        if let v = fields["stream"], !isNull(v) {
            guard case .bool(let b) = v else { throw APIError.wrongType("stream", expected: "a boolean", found: v) }
            r.stream = b
        }
        if let v = fields["stream_options"], !isNull(v) {
            guard case .object(let o) = v else { throw APIError.wrongType("stream_options", expected: "an object", found: v) }
            if let iu = o["include_usage"], !isNull(iu) {
                guard case .bool(let b) = iu else { throw APIError.wrongType("stream_options.include_usage", expected: "a boolean", found: iu) }
                r.includeUsage = b
            }
        }
        if let v = fields["n"], !isNull(v) {
            let n = try integer(v, "n")
            guard n == 1 else { throw APIError("only n=1 is supported, found \(n)", param: "n", code: "unsupported_value") }
        }
        r.config.maxNewTokens = limits.defaultMaxTokens
        for key in ["max_tokens", "max_completion_tokens"] {
            guard let v = fields[key], !isNull(v) else { continue }
            let n = try integer(v, key)
            guard n >= 1 else { throw APIError("'\(key)' must be at least 1, found \(n)", param: key, code: "invalid_value") }
            r.config.maxNewTokens = n
        }
        r.config.temperature = 1
        if let v = fields["temperature"], !isNull(v) {
            let t = try number(v, "temperature")
            guard t >= 0, t <= 2 else { throw APIError("'temperature' must be in [0, 2], found \(t)", param: "temperature", code: "invalid_value") }
            r.config.temperature = Float(t)
        }
        if let v = fields["top_p"], !isNull(v) {
            let p = try number(v, "top_p")
            guard p > 0, p <= 1 else { throw APIError("'top_p' must be in (0, 1], found \(p)", param: "top_p", code: "invalid_value") }
            r.config.topP = Float(p)
        }
        if let v = fields["seed"], !isNull(v) {
            let s = try integer(v, "seed")
            r.config.seed = UInt64(bitPattern: Int64(s))
        } else {
            r.config.seed = UInt64.random(in: 0...UInt64(Int64.max))
        }
        if let v = fields["stop"], !isNull(v) {
            switch v {
            case .string(let s): r.config.stopStrings = s.isEmpty ? [] : [s]
            case .array(let items):
                guard items.count <= 16 else { throw APIError("'stop' holds at most 16 strings", param: "stop", code: "invalid_value") }
                r.config.stopStrings = try items.enumerated().map { i, item in
                    guard case .string(let s) = item else { throw APIError.wrongType("stop[\(i)]", expected: "a string", found: item) }
                    return s
                }.filter { !$0.isEmpty }
            default: throw APIError.wrongType("stop", expected: "a string or an array of strings", found: v)
            }
        }

        guard let mv = fields["messages"], !isNull(mv) else { throw APIError("'messages' is required", param: "messages", code: "missing_required_parameter") }
        guard case .array(let messages) = mv else { throw APIError.wrongType("messages", expected: "an array", found: mv) }
        guard !messages.isEmpty else { throw APIError("'messages' must hold at least one message", param: "messages", code: "invalid_value") }
        for (i, m) in messages.enumerated() {
            let path = "messages[\(i)]"
            guard case .object(let o) = m else { throw APIError.wrongType(path, expected: "an object", found: m) }
            guard let rv = o["role"] else { throw APIError("'\(path).role' is required", param: "\(path).role", code: "missing_required_parameter") }
            guard case .string(var role) = rv else { throw APIError.wrongType("\(path).role", expected: "a string", found: rv) }
            if role == "developer" { role = "system" }
            guard ["system", "user", "assistant"].contains(role) else {
                throw APIError("unknown role '\(role)' in '\(path).role'; use system, user or assistant", param: "\(path).role", code: "invalid_value")
            }
            let content = o["content"] ?? .null
            switch content {
            case .string(let s):
                try checkMarker(s, limits: limits, param: "\(path).content")
                r.messages.append(ChatMessage(role: role, content: .text(s)))
            case .null where role == "assistant":
                r.messages.append(ChatMessage(role: role, content: .text("")))
            case .array(let parts):
                var out: [ChatContentPart] = []
                for (j, part) in parts.enumerated() {
                    let pp = "\(path).content[\(j)]"
                    guard case .object(let po) = part else { throw APIError.wrongType(pp, expected: "an object", found: part) }
                    guard case .string(let type)? = po["type"] else { throw APIError("'\(pp).type' must be a string", param: "\(pp).type", code: "invalid_type") }
                    switch type {
                    case "text":
                        guard let tv = po["text"], case .string(let text) = tv else {
                            throw APIError.wrongType("\(pp).text", expected: "a string", found: po["text"] ?? .null)
                        }
                        try checkMarker(text, limits: limits, param: "\(pp).text")
                        out.append(.text(text))
                    case "image_url":
                        guard role == "user" else { throw APIError("images are allowed in user messages only", param: pp, code: "invalid_value") }
                        let url: String
                        switch po["image_url"] {
                        case .string(let s)?: url = s
                        case .object(let io)?:
                            guard case .string(let s)? = io["url"] else {
                                throw APIError.wrongType("\(pp).image_url.url", expected: "a string", found: io["url"] ?? .null)
                            }
                            url = s
                        default: throw APIError.wrongType("\(pp).image_url", expected: "an object with a url", found: po["image_url"] ?? .null)
                        }
                        guard limits.imagePlaceholder != nil else {
                            throw APIError("this model has no vision encoder; it takes text only", param: pp, code: "images_not_supported")
                        }
                        guard r.images.count < limits.maxImages else {
                            throw APIError("too many images: at most \(limits.maxImages) per request", param: pp, code: "too_many_images")
                        }
                        let param = "\(pp).image_url.url"
                        let lower = url.prefix(8).lowercased()
                        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
                            guard limits.sources.allowRemote else {
                                throw APIError("remote image URLs are disabled (the server fetches them only with --allow-remote-images); "
                                               + "send the image as a data: URI (data:image/png;base64,...)", param: param, code: "remote_images_disabled")
                            }
                            guard let u = URL(string: url), u.host != nil else {
                                throw APIError("the image URL is not a valid URL", param: param, code: "invalid_image_url")
                            }
                            r.remoteImages.append((r.images.count, u, param))
                            r.images.append(.encoded(Data(), name: "image \(r.images.count + 1)"))
                        } else {
                            r.images.append(try decodeImage(url, param: param, index: r.images.count, limits: limits))
                        }
                        out.append(.image)
                    default:
                        throw APIError("unsupported content part type '\(type)'; use text or image_url", param: "\(pp).type", code: "invalid_value")
                    }
                }
                r.messages.append(ChatMessage(role: role, content: .parts(out)))
            default:
                throw APIError.wrongType("\(path).content", expected: "a string or an array of content parts", found: content)
            }
        }
        return r
    }

    private static func isNull(_ v: JSONValue) -> Bool { if case .null = v { return true }; return false }

    private static func number(_ v: JSONValue, _ param: String) throws -> Double {
        guard case .number(let d) = v, d.isFinite else { throw APIError.wrongType(param, expected: "a number", found: v) }
        return d
    }

    private static func integer(_ v: JSONValue, _ param: String) throws -> Int {
        guard case .number(let d) = v, d.rounded() == d, abs(d) < 9.0e15 else { throw APIError.wrongType(param, expected: "an integer", found: v) }
        return Int(d)
    }

    /// Text that spells the image placeholder would take an image slot of its own: refused.
    private static func checkMarker(_ text: String, limits: Limits, param: String) throws {
        guard let marker = limits.imagePlaceholder, text.contains(marker) else { return }
        throw APIError("the text contains the image placeholder '\(marker)'; send images as image_url content parts instead",
                       param: param, code: "invalid_image_marker")
    }

    /// A data: URI's or a local file's image, decoded (and so checked) here.
    private static func decodeImage(_ url: String, param: String, index: Int, limits: Limits) throws -> ImageInput {
        let lower = url.prefix(8).lowercased()
        if lower.hasPrefix("file:") || url.hasPrefix("/") {
            let data = try LocalImageReader.read(url, policy: limits.sources, param: param)
            return try decoded(data, param: param, index: index, limits: limits)
        }
        guard lower.hasPrefix("data:"), let comma = url.firstIndex(of: ",") else {
            throw APIError("image URLs must be data: URIs (data:image/png;base64,...)", param: param, code: "invalid_image_url")
        }
        let header = url[url.index(url.startIndex, offsetBy: 5)..<comma].lowercased()
        guard header.hasSuffix(";base64") else {
            throw APIError("image data: URIs must be base64 (data:image/png;base64,...)", param: param, code: "invalid_image_url")
        }
        let payload = url[url.index(after: comma)...].filter { !$0.isWhitespace }
        guard let data = Data(base64Encoded: String(payload)), !data.isEmpty else {
            throw APIError("the image data is not valid base64", param: param, code: "invalid_base64")
        }
        return try decoded(data, param: param, index: index, limits: limits)
    }

    static func decoded(_ data: Data, param: String, index: Int, limits: Limits) throws -> ImageInput {
        do {
            return .pixels(try ImageDecoder.decode(data, source: "image \(index + 1)", options: limits.decoding))
        } catch {
            throw APIError("invalid image: \(error)", param: param, code: "invalid_image")
        }
    }

    /// Fetches the remote images (after the whole body was checked, so a bad request costs no fetch).
    mutating func fetchRemoteImages(limits: Limits) async throws {
        for remote in remoteImages {
            let data = try await RemoteImageFetcher.fetch(remote.url, policy: limits.sources, param: remote.param)
            images[remote.index] = try Self.decoded(data, param: remote.param, index: remote.index, limits: limits)
        }
        remoteImages = []
    }
}
