import Foundation
@testable import VLMServer
import XCTest

final class BadInputTests: XCTestCase {
    private func text() async throws -> RunningServer { try await SharedServers.shared.text() }
    private func vision() async throws -> RunningServer { try await SharedServers.shared.vision() }

    func testMalformedJSON() async throws {
        let s = try await text()
        assertAPIError(try await HTTP.chatRaw(s, Data("{\"messages\": [".utf8)), status: 400, code: "invalid_json")
        assertAPIError(try await HTTP.chatRaw(s, Data("[1, 2]".utf8)), status: 400, code: "invalid_json")
        assertAPIError(try await HTTP.chatRaw(s, Data()), status: 400, code: "invalid_json")
    }

    func testWrongTypes() async throws {
        let s = try await text()
        let ok = [userMessage("hi")]
        assertAPIError(try await HTTP.chat(s, ["messages": "hi"]), status: 400, code: "invalid_type", param: "messages")
        assertAPIError(try await HTTP.chat(s, ["messages": ok, "temperature": "hot"]), status: 400, code: "invalid_type", param: "temperature")
        assertAPIError(try await HTTP.chat(s, ["messages": ok, "stream": "yes"]), status: 400, code: "invalid_type", param: "stream")
        assertAPIError(try await HTTP.chat(s, ["messages": ok, "max_tokens": 1.5]), status: 400, code: "invalid_type", param: "max_tokens")
        assertAPIError(try await HTTP.chat(s, ["messages": ok, "max_tokens": 0]), status: 400, code: "invalid_value", param: "max_tokens")
        assertAPIError(try await HTTP.chat(s, ["messages": ok, "stop": [1]]), status: 400, code: "invalid_type", param: "stop[0]")
        assertAPIError(try await HTTP.chat(s, ["messages": ok, "top_p": 0]), status: 400, code: "invalid_value", param: "top_p")
        assertAPIError(try await HTTP.chat(s, ["messages": [["role": "user", "content": 5]]]), status: 400,
                       code: "invalid_type", param: "messages[0].content")
        assertAPIError(try await HTTP.chat(s, ["messages": [["role": "user", "content": [["type": "audio"]]]]]), status: 400,
                       code: "invalid_value", param: "messages[0].content[0].type")
    }

    func testMissingOrEmptyMessages() async throws {
        let s = try await text()
        assertAPIError(try await HTTP.chat(s, ["model": "x"]), status: 400, code: "missing_required_parameter", param: "messages")
        assertAPIError(try await HTTP.chat(s, ["messages": []]), status: 400, param: "messages")
        assertAPIError(try await HTTP.chat(s, ["messages": [["content": "hi"]]]), status: 400, param: "messages[0].role")
    }

    func testUnknownRole() async throws {
        let s = try await text()
        assertAPIError(try await HTTP.chat(s, ["messages": [["role": "robot", "content": "hi"]]]), status: 400,
                       code: "invalid_value", param: "messages[0].role")
    }

    func testNMustBeOne() async throws {
        let s = try await text()
        assertAPIError(try await HTTP.chat(s, ["messages": [userMessage("hi")], "n": 2]), status: 400, code: "unsupported_value", param: "n")
    }

    func testContextOverflow() async throws {
        let s = try await text()
        let long = String(repeating: "lorem ipsum dolor ", count: 1500)
        assertAPIError(try await HTTP.chat(s, ["messages": [userMessage(long)], "max_tokens": 4]), status: 400, code: "context_length_exceeded")
        assertAPIError(try await HTTP.chat(s, ["messages": [userMessage(long)], "max_tokens": 4, "stream": true]), status: 400,
                       code: "context_length_exceeded")
        // The server still works afterwards.
        let after = try await HTTP.chat(s, ["messages": [userMessage("hi")], "max_tokens": 2])
        XCTAssertEqual(after.status, 200, after.text)
    }

    func testImagesOnATextModel() async throws {
        let s = try await text()
        let user: [String: Any] = ["role": "user", "content": [["type": "image_url", "image_url": ["url": "data:image/png;base64,AAAA"]]]]
        assertAPIError(try await HTTP.chat(s, ["messages": [user]]), status: 400, code: "images_not_supported")
    }

    private func imageMessage(_ urls: [String], text: String = "Describe.") -> [String: Any] {
        ["role": "user", "content": urls.map { ["type": "image_url", "image_url": ["url": $0]] as [String: Any] } + [["type": "text", "text": text]]]
    }

    func testInvalidBase64AndNonImageBytes() async throws {
        let s = try await vision()
        assertAPIError(try await HTTP.chat(s, ["messages": [imageMessage(["data:image/png;base64,@@@not base64@@@"])]]),
                       status: 400, code: "invalid_base64", param: "messages[0].content[0].image_url.url")
        let notImage = "data:image/png;base64," + Data("hello, this is text".utf8).base64EncodedString()
        assertAPIError(try await HTTP.chat(s, ["messages": [imageMessage([notImage])]]), status: 400, code: "invalid_image")
        assertAPIError(try await HTTP.chat(s, ["messages": [imageMessage(["file:///etc/passwd"])]]), status: 400, code: "file_images_disabled")
        assertAPIError(try await HTTP.chat(s, ["messages": [imageMessage(["ftp://example.com/a.png"])]]), status: 400, code: "invalid_image_url")
    }

    func testRemoteImageURLsAreRefused() async throws {
        let s = try await vision()
        let reply = try await HTTP.chat(s, ["messages": [imageMessage(["https://example.com/cat.png"])]])
        assertAPIError(reply, status: 400, code: "remote_images_disabled")
        XCTAssertTrue((reply.error?["message"] as? String ?? "").contains("remote image URLs are disabled"))
    }

    func testTooManyImages() async throws {
        let s = try await vision()
        let uri = "data:image/png;base64," + (try Data(contentsOf: ServerFixtures.squarePNG)).base64EncodedString()
        assertAPIError(try await HTTP.chat(s, ["messages": [imageMessage([uri, uri, uri])]]), status: 400, code: "too_many_images")
    }

    func testImageMarkerInText() async throws {
        let s = try await vision()
        assertAPIError(try await HTTP.chat(s, ["messages": [userMessage("look: <image> here")]]), status: 400,
                       code: "invalid_image_marker", param: "messages[0].content")
    }

    func testBodyTooLarge() async throws {
        let s = try await SharedServers.shared.strict()
        let big = String(repeating: "x", count: 10_000)
        assertAPIError(try await HTTP.chat(s, ["messages": [userMessage(big)]], headers: ["Authorization": "Bearer sekret"]),
                       status: 413, code: "body_too_large")
    }

    func testAPIKey() async throws {
        let s = try await SharedServers.shared.strict()
        let body: [String: Any] = ["messages": [userMessage("hi")], "max_tokens": 2]
        assertAPIError(try await HTTP.chat(s, body), status: 401, code: "invalid_api_key")
        assertAPIError(try await HTTP.chat(s, body, headers: ["Authorization": "Bearer wrong"]), status: 401, code: "invalid_api_key")
        assertAPIError(try await HTTP.send(s.base.appendingPathComponent("v1/models")), status: 401, code: "invalid_api_key")
        let ok = try await HTTP.chat(s, body, headers: ["Authorization": "Bearer sekret"])
        XCTAssertEqual(ok.status, 200, ok.text)
        // /health stays open for probes.
        let health = try await HTTP.send(s.base.appendingPathComponent("health"))
        XCTAssertEqual(health.status, 200)
    }

    func testFullQueueGets429() async throws {
        let s = try await SharedServers.shared.strict()
        let auth = ["Authorization": "Bearer sekret"]
        // Hold the generation thread so requests pile up behind it.
        let gate = DispatchSemaphore(value: 0)
        XCTAssertTrue(s.server.worker.submit { _ in gate.wait() })
        while s.server.worker.state.running == 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        let body: [String: Any] = ["messages": [userMessage("hi")], "max_tokens": 2]
        let waiting = Task { try await HTTP.chat(s, body, headers: auth) }
        var spins = 0
        while s.server.worker.state.queued < 1, spins < 2000 { try await Task.sleep(nanoseconds: 5_000_000); spins += 1 }
        XCTAssertEqual(s.server.worker.state.queued, 1)
        let refused = try await HTTP.chat(s, body, headers: auth)
        assertAPIError(refused, status: 429, code: "queue_full")
        XCTAssertEqual(refused.headers["retry-after"], "1")
        gate.signal()
        let served = try await waiting.value
        XCTAssertEqual(served.status, 200, served.text)
    }
}
