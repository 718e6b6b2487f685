import Foundation
import Hummingbird
import NIOCore
import VLMMedia
import VLMRuntime
import VLMTokenizers

/// Settings of `vlm serve`.
public struct ServerConfiguration: Sendable {
    /// Loopback by default; the server is meant for this machine.
    public var host = "127.0.0.1"
    /// 0 picks a free port (tests).
    public var port = 8080
    /// When set, /v1/* requests need `Authorization: Bearer <apiKey>`.
    public var apiKey: String?
    /// Requests that may wait behind the running one; more get 429.
    public var maxQueue = 16
    public var maxBodyBytes = 20_000_000
    public var maxImages = 8
    public var imageDecoding = ImageDecodingOptions()
    /// max_tokens when a request gives none.
    public var defaultMaxTokens = 256
    /// The id /v1/models lists and responses carry.
    public var modelName = "model"
    /// Where images may come from besides data: URIs (remote URLs, a local folder); all off by default.
    public var imageSources = ImageSourcePolicy()
    /// KV caches of recent conversations kept between requests (0: every request starts from an empty cache).
    public var cacheSlots = 4
    /// Most bytes those caches may take together.
    public var cacheMaxBytes = 2 << 30
    /// Tests: sleep this long after each token, so a generation outlasts a client's disconnect.
    var tokenDelayMs = 0

    public init() {}
}

/// An OpenAI-compatible chat server over loaded runners of one model: POST /v1/chat/completions (plain and SSE),
/// GET /v1/models, GET /health. Requests wait in a bounded FIFO queue and run on as many generations at once as
/// there are runners; the KV caches of recent conversations are kept between requests (PromptCacheSlots), so a
/// request that extends an earlier conversation prefills only the new part.
public final class ChatServer: @unchecked Sendable {
    /// The first runner: what the model is (image placeholder, template).
    public var runner: ChatRunner { runners[0] }
    /// One per concurrent generation, all over the same model folder.
    public let runners: [ChatRunner]
    public let configuration: ServerConfiguration
    let worker: GenerationWorker
    let promptCaches: PromptCacheSlots
    /// Generations that ended because their client went away (tests, /health).
    var cancelledGenerations: Int { counterLock.lock(); defer { counterLock.unlock() }; return cancelled }
    private let counterLock = NSLock()
    private var cancelled = 0
    private let created = Int(Date().timeIntervalSince1970)

    /// `runner` must be loaded.
    public convenience init(runner: ChatRunner, configuration: ServerConfiguration) {
        self.init(runners: [runner], configuration: configuration)
    }

    /// `runners` (at least one) must be loaded, all from the same model folder.
    public init(runners: [ChatRunner], configuration: ServerConfiguration) {
        precondition(!runners.isEmpty, "ChatServer needs at least one runner")
        self.runners = runners
        self.configuration = configuration
        worker = GenerationWorker(maxQueue: configuration.maxQueue, executors: runners.count)
        promptCaches = PromptCacheSlots(maxSlots: configuration.cacheSlots, maxBytes: configuration.cacheMaxBytes)
    }

    /// The Hummingbird application; `onRunning` gets the bound port.
    public func makeApplication(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        worker.start()
        let router = Router()
        router.get("/health") { _, _ in self.health() }
        router.get("/v1/models") { request, _ in self.models(request) }
        router.post("/v1/chat/completions") { request, _ in await self.chatCompletions(request) }
        let server = self
        return Application(
            router: router,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "swift-vlm"),
            onServerRunning: { channel in _ = server; await onRunning(channel.localAddress?.port ?? 0) })
    }

    /// Serves until SIGTERM/SIGINT, then finishes the running generation and exits.
    public func run(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let app = makeApplication(onRunning: onRunning)
        // SIGTERM/SIGINT: Hummingbird stops accepting and lets in-flight requests finish; then the workers end.
        try await app.runService()
        worker.shutdown(wait: true)
    }

    // MARK: Endpoints

    private func health() -> Response {
        let s = worker.state, caches = promptCaches.usage
        return json(200, ["status": "ok", "model": configuration.modelName, "queued": s.queued, "busy": s.running > 0,
                          "running": s.running, "parallel": runners.count, "cancelled_generations": cancelledGenerations,
                          "prompt_caches": ["slots": caches.slots, "tokens": caches.tokens, "bytes": caches.bytes]])
    }

    private func models(_ request: Request) -> Response {
        if let e = authError(request) { return error(e) }
        return json(200, ["object": "list", "data": [[
            "id": configuration.modelName, "object": "model", "created": created, "owned_by": "swift-vlm",
        ] as [String: Any]]])
    }

    private func chatCompletions(_ request: Request) async -> Response {
        if let e = authError(request) { return error(e) }
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: configuration.maxBodyBytes)
        } catch {
            return self.error(APIError(status: 413, "the request body is over the \(configuration.maxBodyBytes)-byte limit",
                                       code: "body_too_large"))
        }
        var limits = ChatCompletionRequest.Limits()
        limits.maxImages = configuration.maxImages
        limits.decoding = configuration.imageDecoding
        limits.imagePlaceholder = runner.imagePlaceholder
        limits.defaultMaxTokens = configuration.defaultMaxTokens
        limits.sources = configuration.imageSources
        var parsed: ChatCompletionRequest
        do {
            parsed = try ChatCompletionRequest.parse(Data(body.readableBytesView), limits: limits)
            try await parsed.fetchRemoteImages(limits: limits)
        } catch let e as APIError {
            return error(e)
        } catch {
            return self.error(APIError("\(error)"))
        }

        let ticket = GenerationTicket()
        let (events, continuation) = AsyncThrowingStream<GenerationEvent, Error>.makeStream()
        let runners = self.runners, caches = self.promptCaches, job = parsed
        let accepted = worker.submit { executor in
            let runner = runners[executor]
            guard ticket.begin(on: runner) else { continuation.finish(throwing: CancellationError()); return }
            defer { ticket.end() }
            let parsed = job
            var prompt = ""
            var reply = ""
            // This request's conversation cache in, and back out (with the reply) when it is done.
            defer {
                if let state = runner.detachPromptCache() { caches.put(state, text: prompt + reply) }
            }
            do {
                prompt = try runner.renderChat(parsed.messages, addGenerationPrompt: true)
                if let state = caches.take(bestFor: prompt) { runner.attachPromptCache(state) } else { runner.reset() }
                if let marker = runner.imagePlaceholder {
                    let markers = prompt.components(separatedBy: marker).count - 1
                    guard markers == parsed.images.count else {
                        throw APIError("the chat template wrote \(markers) image placeholder(s) for \(parsed.images.count) image(s)",
                                       param: "messages", code: "invalid_image_marker")
                    }
                }
                let delay = self.configuration.tokenDelayMs
                let result = try runner.generate(continuing: prompt, images: parsed.images, config: parsed.config) { token in
                    if delay > 0 { Thread.sleep(forTimeInterval: Double(delay) / 1000) }
                    if ticket.isCancelled { runner.stop() }
                    continuation.yield(.token(token))
                }
                if result.stopReason == .cancelled || ticket.isCancelled {
                    self.counterLock.lock(); self.cancelled += 1; self.counterLock.unlock()
                }
                reply = result.text
                continuation.yield(.finished(result))
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        guard accepted else {
            var response = self.error(APIError(status: 429, "the server is busy: \(configuration.maxQueue) request(s) already wait; retry later",
                                               type: "rate_limit_error", code: "queue_full"))
            response.headers[.retryAfter] = "1"
            return response
        }

        let id = "chatcmpl-" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let model = configuration.modelName
        if !parsed.stream {
            do {
                let result: GenerationResult = try await withTaskCancellationHandler {
                    for try await event in events { if case .finished(let r) = event { return r } }
                    throw CancellationError()
                } onCancel: { ticket.cancel() }
                var body = completionBase(id: id, object: "chat.completion")
                body["choices"] = [["index": 0, "message": ["role": "assistant", "content": result.text],
                                    "finish_reason": finishReason(result.stopReason), "logprobs": NSNull()] as [String: Any]]
                body["usage"] = usage(result)
                body["timings"] = timings(result)
                return json(200, body)
            } catch {
                return self.error(apiError(for: error))
            }
        }

        // Streaming: wait for the first event so errors before any token (context overflow, bad images) still
        // get a proper status; then send SSE chunks.
        let iterator = IteratorBox(events.makeAsyncIterator())
        let first: GenerationEvent?
        do {
            first = try await withTaskCancellationHandler { try await iterator.next() } onCancel: { ticket.cancel() }
        } catch {
            return self.error(apiError(for: error))
        }
        let includeUsage = parsed.includeUsage
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            func send(_ object: [String: Any]) async throws {
                try await writer.write(ByteBuffer(string: "data: " + Self.serialize(object) + "\n\n"))
            }
            func chunk(_ delta: [String: Any], finish: String?) -> [String: Any] {
                var c = self.completionBase(id: id, object: "chat.completion.chunk")
                c["choices"] = [["index": 0, "delta": delta, "finish_reason": finish ?? NSNull(), "logprobs": NSNull()] as [String: Any]]
                return c
            }
            do {
                try await send(chunk(["role": "assistant", "content": ""], finish: nil))
                var event = first
                while let e = event {
                    switch e {
                    case .token(let token):
                        if !token.text.isEmpty { try await send(chunk(["content": token.text], finish: nil)) }
                    case .finished(let result):
                        var last = chunk([:], finish: self.finishReason(result.stopReason))
                        last["timings"] = self.timings(result)
                        try await send(last)
                        if includeUsage {
                            var u = self.completionBase(id: id, object: "chat.completion.chunk")
                            u["choices"] = [Any]()
                            u["usage"] = self.usage(result)
                            try await send(u)
                        }
                    }
                    if Task.isCancelled { throw CancellationError() }
                    do {
                        event = try await iterator.next()
                    } catch let error where !(error is CancellationError) {
                        try await send(self.apiError(for: error).body)
                        event = nil
                    }
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                // The client went away (or the task was cancelled): stop generating for it.
                ticket.cancel()
                throw error
            }
        })
    }

    // MARK: Helpers

    private func authError(_ request: Request) -> APIError? {
        guard let key = configuration.apiKey, !key.isEmpty else { return nil }
        let given = request.headers[.authorization] ?? ""
        let expected = "Bearer " + key
        // Compare every byte so timing does not reveal the matching prefix.
        let a = Array(given.utf8), b = Array(expected.utf8)
        var diff = a.count == b.count ? 0 : 1
        for i in 0..<min(a.count, b.count) { diff |= Int(a[i] ^ b[i]) }
        if diff == 0 { return nil }
        return APIError(status: 401, given.isEmpty ? "missing API key: send Authorization: Bearer <key>" : "incorrect API key provided",
                        code: "invalid_api_key")
    }

    private func completionBase(id: String, object: String) -> [String: Any] {
        ["id": id, "object": object, "created": Int(Date().timeIntervalSince1970), "model": configuration.modelName,
         "system_fingerprint": NSNull()]
    }

    private func finishReason(_ reason: StopReason) -> String {
        switch reason {
        case .maxTokens, .contextFull: return "length"
        case .endOfSequence, .stopString, .cancelled: return "stop"
        }
    }

    private func usage(_ r: GenerationResult) -> [String: Any] {
        ["prompt_tokens": r.stats.promptTokens, "completion_tokens": r.tokenIDs.count,
         "total_tokens": r.stats.promptTokens + r.tokenIDs.count,
         "prompt_tokens_details": ["cached_tokens": r.stats.cachedTokens]]
    }

    private func timings(_ r: GenerationResult) -> [String: Any] {
        ["prompt_n": r.stats.prefilledTokens, "cached_tokens": r.stats.cachedTokens,
         "prefill_ms": r.stats.prefillMs, "prefill_tokens_per_second": r.stats.prefillTokensPerSecond,
         "predicted_n": r.tokenIDs.count, "decode_ms": r.stats.decodeMs,
         "decode_tokens_per_second": r.stats.decodeTokensPerSecond,
         "image_preprocess_ms": r.stats.imagePreprocessMs, "vision_encode_ms": r.stats.visionEncodeMs]
    }

    func apiError(for error: Error) -> APIError {
        switch error {
        case let e as APIError: return e
        case let e as RunnerError:
            switch e {
            case .promptTooLong: return APIError(e.description, param: "messages", code: "context_length_exceeded")
            case .imageCountMismatch: return APIError(e.description, param: "messages", code: "invalid_image_marker")
            case .imagesNotSupported: return APIError(e.description, param: "messages", code: "images_not_supported")
            case .invalidConfig, .emptyPrompt: return APIError(e.description, code: "invalid_value")
            case .noChatTemplate: return APIError(e.description, code: "no_chat_template")
            case .notLoaded: return APIError(status: 500, e.description, type: "server_error")
            }
        case let e as ImageError: return APIError("invalid image: \(e)", param: "messages", code: "invalid_image")
        case is CancellationError: return APIError(status: 499, "the request was cancelled", code: "cancelled")
        case let e as ChatTemplateError: return APIError("the chat template failed on these messages: \(e)", param: "messages", code: "template_error")
        default: return APIError(status: 500, "\(error)", type: "server_error")
        }
    }

    private func error(_ e: APIError) -> Response {
        json(e.status, e.body)
    }

    private func json(_ status: Int, _ object: [String: Any]) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(string: Self.serialize(object))))
    }

    static func serialize(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Lets the streaming body (a Sendable closure) pull from the generation's iterator.
final class IteratorBox: @unchecked Sendable {
    var iterator: AsyncThrowingStream<GenerationEvent, Error>.AsyncIterator
    init(_ iterator: AsyncThrowingStream<GenerationEvent, Error>.AsyncIterator) { self.iterator = iterator }
    func next() async throws -> GenerationEvent? { try await iterator.next() }
}
