import Foundation
import Hummingbird
import NIOCore
import VLMRuntime
@testable import VLMServer
import XCTest

/// A loopback HTTP server that serves test images: /square.png, /big.bin (over any small limit), /missing (404),
/// /slow.png (answers after 3 s), /redirect (302 to /square.png).
final class ImageHost: @unchecked Sendable {
    let base: URL
    private let task: Task<Void, Error>

    private init(base: URL, task: Task<Void, Error>) { self.base = base; self.task = task }

    static func start() async throws -> ImageHost {
        let png = try Data(contentsOf: ServerFixtures.squarePNG)
        let router = Router()
        router.get("/square.png") { _, _ in
            Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: png)))
        }
        router.get("/big.bin") { _, _ in
            Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(repeating: 0x41, count: 200_000)))
        }
        router.get("/missing") { _, _ in Response(status: .notFound) }
        router.get("/slow.png") { _, _ in
            try await Task.sleep(nanoseconds: 3_000_000_000)
            return Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: png)))
        }
        router.get("/redirect") { _, _ in Response(status: .found, headers: [.location: "/square.png"]) }
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in continuation.yield(channel.localAddress?.port ?? 0); continuation.finish() })
        let task = Task { try await app.runService(gracefulShutdownSignals: []) }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else { throw URLError(.cannotConnectToHost) }
        return ImageHost(base: URL(string: "http://127.0.0.1:\(port)")!, task: task)
    }

    func url(_ path: String) -> String { base.absoluteString + path }
    func stop() { task.cancel() }
}

final class ImageSourceAndCacheTests: XCTestCase {
    private func imageMessage(_ url: String, text: String = "What is in this image?") -> [String: Any] {
        ["role": "user", "content": [["type": "image_url", "image_url": ["url": url]] as [String: Any], ["type": "text", "text": text]]]
    }

    private func content(_ reply: HTTPReply) -> String? {
        (((reply.json["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any])?["content"] as? String
    }

    private func squareDataURI() throws -> String {
        "data:image/png;base64," + (try Data(contentsOf: ServerFixtures.squarePNG)).base64EncodedString()
    }

    // MARK: Address rules

    func testAddressClassification() {
        for a: [UInt8] in [[127, 0, 0, 1], [10, 1, 2, 3], [172, 16, 0, 1], [172, 31, 255, 255], [192, 168, 1, 1],
                           [169, 254, 169, 254], [100, 64, 0, 1], [0, 0, 0, 0], [224, 0, 0, 1], [255, 255, 255, 255]] {
            XCTAssertFalse(AddressPolicy.isPublicIPv4(a), "\(a) must not count as public")
        }
        for a: [UInt8] in [[8, 8, 8, 8], [93, 184, 216, 34], [172, 32, 0, 1], [100, 128, 0, 1], [1, 1, 1, 1]] {
            XCTAssertTrue(AddressPolicy.isPublicIPv4(a), "\(a) is public")
        }
        func v6(_ words: [UInt16]) -> [UInt8] { words.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] } }
        XCTAssertFalse(AddressPolicy.isPublicIPv6(v6([0, 0, 0, 0, 0, 0, 0, 1])), "::1")
        XCTAssertFalse(AddressPolicy.isPublicIPv6(v6([0xfe80, 0, 0, 0, 0, 0, 0, 1])), "link-local")
        XCTAssertFalse(AddressPolicy.isPublicIPv6(v6([0xfd00, 0, 0, 0, 0, 0, 0, 1])), "unique-local")
        XCTAssertFalse(AddressPolicy.isPublicIPv6(v6([0, 0, 0, 0, 0, 0xffff, 0x7f00, 0x0001])), "::ffff:127.0.0.1")
        XCTAssertTrue(AddressPolicy.isPublicIPv6(v6([0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111])), "public v6")
    }

    func testRemoteURLsToPrivateAddressesAreRefused() async throws {
        let host = try await ImageHost.start()
        defer { host.stop() }
        let s = try await RunningServer.start(model: "tiny-smolvlm") { $0.imageSources.allowRemote = true }
        defer { s.stop() }
        for url in [host.url("/square.png"), "http://localhost:9/a.png", "http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data",
                    "http://[::1]:9/a.png", "http://[::ffff:127.0.0.1]/a.png", "http://0.0.0.0/a.png"] {
            let reply = try await HTTP.chat(s, ["messages": [imageMessage(url)], "max_tokens": 2])
            assertAPIError(reply, status: 400, code: "image_url_not_allowed", param: "messages[0].content[0].image_url.url")
            XCTAssertTrue((reply.error?["message"] as? String ?? "").contains("--allow-private-urls"), url)
        }
    }

    func testRemoteImagesFetchedWithinLimits() async throws {
        let host = try await ImageHost.start()
        defer { host.stop() }
        let s = try await RunningServer.start(model: "tiny-smolvlm") {
            $0.imageSources.allowRemote = true
            $0.imageSources.allowPrivateAddresses = true  // the test host is on loopback
            $0.imageSources.maxBytes = 100_000
            $0.imageSources.fetchTimeoutSeconds = 1
            $0.cacheSlots = 0
        }
        defer { s.stop() }
        let body: ([String: Any]) -> [String: Any] = { ["messages": [$0], "max_tokens": 4, "temperature": 0] }
        let viaData = try await HTTP.chat(s, body(imageMessage(try squareDataURI())))
        XCTAssertEqual(viaData.status, 200, viaData.text)
        let viaURL = try await HTTP.chat(s, body(imageMessage(host.url("/square.png"))))
        XCTAssertEqual(viaURL.status, 200, viaURL.text)
        XCTAssertEqual(content(viaURL), content(viaData), "the fetched image gives the same answer as the same bytes inline")
        XCTAssertEqual((viaURL.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int,
                       (viaData.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int)
        let redirected = try await HTTP.chat(s, body(imageMessage(host.url("/redirect"))))
        XCTAssertEqual(content(redirected), content(viaData), "a redirect to an allowed URL is followed")

        assertAPIError(try await HTTP.chat(s, body(imageMessage(host.url("/big.bin")))), status: 400, code: "image_too_large")
        assertAPIError(try await HTTP.chat(s, body(imageMessage(host.url("/missing")))), status: 400, code: "image_fetch_failed")
        let started = Date()
        assertAPIError(try await HTTP.chat(s, body(imageMessage(host.url("/slow.png")))), status: 400, code: "image_fetch_timeout")
        XCTAssertLessThan(Date().timeIntervalSince(started), 2.9, "the fetch gave up at its time limit")
    }

    // MARK: Local files

    func testLocalFilesOnlyUnderTheRoot() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-file-root-\(getpid())")
        try? FileManager.default.removeItem(at: root)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("sub"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.copyItem(at: ServerFixtures.squarePNG, to: root.appendingPathComponent("sub/square.png"))
        try FileManager.default.createSymbolicLink(atPath: root.appendingPathComponent("escape.png").path,
                                                   withDestinationPath: ServerFixtures.squarePNG.path)
        let s = try await RunningServer.start(model: "tiny-smolvlm") { $0.imageSources.fileRoot = root; $0.cacheSlots = 0 }
        defer { s.stop() }
        let body: ([String: Any]) -> [String: Any] = { ["messages": [$0], "max_tokens": 4, "temperature": 0] }
        let inline = try await HTTP.chat(s, body(imageMessage(try squareDataURI())))
        for ok in [root.appendingPathComponent("sub/square.png").path, "file://" + root.appendingPathComponent("sub/square.png").path] {
            let reply = try await HTTP.chat(s, body(imageMessage(ok)))
            XCTAssertEqual(reply.status, 200, reply.text)
            XCTAssertEqual(content(reply), content(inline), ok)
        }
        for outside in [root.appendingPathComponent("sub/../../etc/passwd").path, "/etc/passwd", "file:///etc/passwd",
                        root.appendingPathComponent("escape.png").path] {
            assertAPIError(try await HTTP.chat(s, body(imageMessage(outside))), status: 400, code: "image_path_not_allowed")
        }
        assertAPIError(try await HTTP.chat(s, body(imageMessage(root.appendingPathComponent("sub/none.png").path))),
                       status: 400, code: "image_not_found")
        assertAPIError(try await HTTP.chat(s, body(imageMessage("sub/square.png"))), status: 400, code: "invalid_image_url")
    }

    // MARK: Prompt caches of several conversations

    func testInterleavedConversationsKeepTheirCaches() async throws {
        let s = try await RunningServer.start(model: "tiny-llama-f32") { $0.cacheSlots = 4 }
        defer { s.stop() }
        func ask(_ messages: [[String: Any]]) async throws -> (text: String, prompt: Int, cached: Int) {
            let r = try await HTTP.chat(s, ["messages": messages, "max_tokens": 6, "temperature": 0])
            XCTAssertEqual(r.status, 200, r.text)
            let usage = try XCTUnwrap(r.json["usage"] as? [String: Any])
            let cached = try XCTUnwrap((r.json["timings"] as? [String: Any])?["cached_tokens"] as? Int)
            return (try XCTUnwrap(content(r)), try XCTUnwrap(usage["prompt_tokens"] as? Int), cached)
        }
        let a1 = [userMessage("Tell me about the sea and its many waves, please.")]
        let b1 = [userMessage("What do you know about mountains covered in snow?")]
        let ra1 = try await ask(a1)
        let rb1 = try await ask(b1)
        // A's second turn, after B's request: A's cache is still there.
        let ra2 = try await ask(a1 + [["role": "assistant", "content": ra1.text], userMessage("And the tides?")])
        XCTAssertGreaterThanOrEqual(ra2.cached, ra1.prompt, "conversation A resumes from its own cache after B ran")
        let rb2 = try await ask(b1 + [["role": "assistant", "content": rb1.text], userMessage("Which is the highest?")])
        XCTAssertGreaterThanOrEqual(rb2.cached, rb1.prompt, "conversation B too")
        let health = try await HTTP.send(s.base.appendingPathComponent("health"))
        let caches = try XCTUnwrap(health.json["prompt_caches"] as? [String: Any])
        XCTAssertEqual(caches["slots"] as? Int, 2)
    }

    func testWithoutCacheSlotsEveryRequestPrefillsEverything() async throws {
        let s = try await RunningServer.start(model: "tiny-llama-f32") { $0.cacheSlots = 0 }
        defer { s.stop() }
        let first = [userMessage("Tell me about the sea.")]
        let r1 = try await HTTP.chat(s, ["messages": first, "max_tokens": 4, "temperature": 0])
        let r2 = try await HTTP.chat(s, ["messages": first + [["role": "assistant", "content": content(r1) ?? ""], userMessage("More?")],
                                         "max_tokens": 4, "temperature": 0])
        XCTAssertEqual((r2.json["timings"] as? [String: Any])?["cached_tokens"] as? Int, 0)
    }

    func testTwoGenerationsAtOnceGiveTheSequentialAnswers() async throws {
        let s = try await RunningServer.start(model: "tiny-llama-f32", parallel: 2)
        defer { s.stop() }
        let prompts = ["Name three colours.", "Count from one to five.", "What is a cat?", "Say hello in French."]
        var sequential: [String] = []
        for p in prompts {
            sequential.append(content(try await HTTP.chat(s, ["messages": [userMessage(p)], "max_tokens": 8, "temperature": 0])) ?? "?")
        }
        let concurrent = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for (i, p) in prompts.enumerated() {
                group.addTask { (i, self.content(try await HTTP.chat(s, ["messages": [userMessage(p)], "max_tokens": 8, "temperature": 0])) ?? "?") }
            }
            var out = Array(repeating: "", count: prompts.count)
            for try await (i, text) in group { out[i] = text }
            return out
        }
        XCTAssertEqual(concurrent, sequential)
        let health = try await HTTP.send(s.base.appendingPathComponent("health"))
        XCTAssertEqual(health.json["parallel"] as? Int, 2)
    }
}
