import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Hummingbird
import VLMRuntime
@testable import VLMServer
import XCTest

enum ServerFixtures {
    /// <repo>/Tests/Fixtures
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static func model(_ name: String) -> URL { root.appendingPathComponent("models/\(name)") }
    static let squarePNG = root.appendingPathComponent("images-vlm/square-130x130.png")
}

/// A server running in-process on 127.0.0.1 with a free port, for the life of the test process.
final class RunningServer: @unchecked Sendable {
    let server: ChatServer
    let base: URL
    private let task: Task<Void, Error>

    private init(server: ChatServer, base: URL, task: Task<Void, Error>) {
        self.server = server
        self.base = base
        self.task = task
    }

    static func start(model: String, parallel: Int = 1,
                      configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> RunningServer {
        let runners: [ChatRunner] = try (0..<parallel).map { _ in
            let runner = try RunnerFactory.make(modelDirectory: ServerFixtures.model(model), threads: parallel == 1 ? 2 : 1)
            try runner.load()
            return runner
        }
        var config = ServerConfiguration()
        config.host = "127.0.0.1"
        config.port = 0
        config.modelName = model
        configure(&config)
        let server = ChatServer(runners: runners, configuration: config)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let app = server.makeApplication { port in continuation.yield(port); continuation.finish() }
        let task = Task { try await app.runService(gracefulShutdownSignals: []) }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else { throw URLError(.cannotConnectToHost) }
        return RunningServer(server: server, base: URL(string: "http://127.0.0.1:\(port)")!, task: task)
    }

    func stop() { task.cancel() }
}

struct HTTPReply {
    var status: Int
    var body: Data
    var headers: [String: String]
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
    var text: String { String(decoding: body, as: UTF8.self) }
    var error: [String: Any]? { json["error"] as? [String: Any] }

    /// `data: …` payloads of an SSE body, in order.
    var events: [String] {
        text.components(separatedBy: "\n").filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
    }
}

enum HTTP {
    static let session: URLSession = {
        let c = URLSessionConfiguration.ephemeral
        c.timeoutIntervalForRequest = 300
        c.httpMaximumConnectionsPerHost = 32
        return URLSession(configuration: c)
    }()

    static func send(_ url: URL, method: String = "GET", body: Data? = nil, headers: [String: String] = [:]) async throws -> HTTPReply {
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.httpBody = body
        if body != nil { request.setValue("application/json", forHTTPHeaderField: "Content-Type") }
        for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
        return try await withCheckedThrowingContinuation { continuation in
            session.dataTask(with: request) { data, response, error in
                if let error { continuation.resume(throwing: error); return }
                let http = response as! HTTPURLResponse
                var headers: [String: String] = [:]
                for (k, v) in http.allHeaderFields { headers[String(describing: k).lowercased()] = String(describing: v) }
                continuation.resume(returning: HTTPReply(status: http.statusCode, body: data ?? Data(), headers: headers))
            }.resume()
        }
    }

    static func chat(_ server: RunningServer, _ object: [String: Any], headers: [String: String] = [:]) async throws -> HTTPReply {
        try await send(server.base.appendingPathComponent("v1/chat/completions"), method: "POST",
                       body: try JSONSerialization.data(withJSONObject: object), headers: headers)
    }

    static func chatRaw(_ server: RunningServer, _ body: Data, headers: [String: String] = [:]) async throws -> HTTPReply {
        try await send(server.base.appendingPathComponent("v1/chat/completions"), method: "POST", body: body, headers: headers)
    }
}

/// One server per configuration, shared by the tests of this process.
actor SharedServers {
    static let shared = SharedServers()
    private var servers: [String: RunningServer] = [:]

    /// tiny-llama-f32, default settings.
    func text() async throws -> RunningServer { try await get("text") { try await RunningServer.start(model: "tiny-llama-f32") } }

    /// tiny-smolvlm, at most 2 images, no splitting limits.
    func vision() async throws -> RunningServer {
        try await get("vision") { try await RunningServer.start(model: "tiny-smolvlm") { $0.maxImages = 2 } }
    }

    /// tiny-llama-f32 with an API key, a queue of 1 and a 4 KB body limit.
    func strict() async throws -> RunningServer {
        try await get("strict") {
            try await RunningServer.start(model: "tiny-llama-f32") { $0.apiKey = "sekret"; $0.maxQueue = 1; $0.maxBodyBytes = 4096 }
        }
    }

    /// tiny-llama-f32 that sleeps 10 ms per token (disconnect tests).
    func slow() async throws -> RunningServer {
        try await get("slow") { try await RunningServer.start(model: "tiny-llama-f32") { $0.tokenDelayMs = 10 } }
    }

    private func get(_ key: String, _ make: () async throws -> RunningServer) async throws -> RunningServer {
        if let s = servers[key] { return s }
        let s = try await make()
        servers[key] = s
        return s
    }
}

func userMessage(_ text: String) -> [String: Any] { ["role": "user", "content": text] }

func assertAPIError(_ reply: HTTPReply, status: Int, code: String? = nil, param: String? = nil,
                    file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(reply.status, status, reply.text, file: file, line: line)
    guard let error = reply.error else { XCTFail("no error object in \(reply.text)", file: file, line: line); return }
    XCTAssertTrue(error["message"] is String, file: file, line: line)
    XCTAssertTrue(error["type"] is String, file: file, line: line)
    XCTAssertNotNil(error["param"], file: file, line: line)
    XCTAssertNotNil(error["code"], file: file, line: line)
    if let code { XCTAssertEqual(error["code"] as? String, code, reply.text, file: file, line: line) }
    if let param { XCTAssertEqual(error["param"] as? String, param, reply.text, file: file, line: line) }
}
