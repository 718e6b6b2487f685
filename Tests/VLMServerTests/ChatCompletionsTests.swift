import Foundation
#if canImport(Glibc)
import Glibc
#endif
import VLMRuntime
import VLMTokenizers
@testable import VLMServer
import XCTest

final class ChatCompletionsTests: XCTestCase {
    func testHealthAndModels() async throws {
        let s = try await SharedServers.shared.text()
        let health = try await HTTP.send(s.base.appendingPathComponent("health"))
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.json["status"] as? String, "ok")
        let models = try await HTTP.send(s.base.appendingPathComponent("v1/models"))
        XCTAssertEqual(models.status, 200)
        XCTAssertEqual(models.json["object"] as? String, "list")
        let data = try XCTUnwrap(models.json["data"] as? [[String: Any]])
        XCTAssertEqual(data.first?["id"] as? String, "tiny-llama-f32")
    }

    func testNonStreamingHasContentUsageAndTimings() async throws {
        let s = try await SharedServers.shared.text()
        let reply = try await HTTP.chat(s, ["model": "tiny-llama-f32", "messages": [userMessage("Hello, who are you?")],
                                            "max_tokens": 8, "temperature": 0])
        XCTAssertEqual(reply.status, 200, reply.text)
        let json = reply.json
        XCTAssertEqual(json["object"] as? String, "chat.completion")
        let choice = try XCTUnwrap((json["choices"] as? [[String: Any]])?.first)
        let message = try XCTUnwrap(choice["message"] as? [String: Any])
        XCTAssertEqual(message["role"] as? String, "assistant")
        XCTAssertNotNil(message["content"] as? String)
        XCTAssertNotNil(choice["finish_reason"] as? String)
        let usage = try XCTUnwrap(json["usage"] as? [String: Any])
        let prompt = try XCTUnwrap(usage["prompt_tokens"] as? Int)
        let completion = try XCTUnwrap(usage["completion_tokens"] as? Int)
        XCTAssertGreaterThan(prompt, 0)
        XCTAssertGreaterThan(completion, 0)
        XCTAssertLessThanOrEqual(completion, 8)
        XCTAssertEqual(usage["total_tokens"] as? Int, prompt + completion)
        let timings = try XCTUnwrap(json["timings"] as? [String: Any])
        XCTAssertNotNil(timings["prefill_tokens_per_second"] as? Double)
        XCTAssertNotNil(timings["decode_tokens_per_second"] as? Double)
        XCTAssertNotNil(timings["cached_tokens"] as? Int)
    }

    /// Greedy ids equal what `vlm run` (a TextRunner over the same rendered chat) generates.
    func testGreedyMatchesTextRunner() async throws {
        let s = try await SharedServers.shared.text()
        let messages: [[String: Any]] = [["role": "system", "content": "Be brief."], userMessage("Write a haiku about rain.")]
        let reply = try await HTTP.chat(s, ["messages": messages, "max_tokens": 12, "temperature": 0])
        XCTAssertEqual(reply.status, 200, reply.text)

        let runner = TextRunner(modelDirectory: ServerFixtures.model("tiny-llama-f32"), threads: 1)
        try runner.load()
        let prompt = try runner.renderChat([ChatMessage(role: "system", text: "Be brief."),
                                            ChatMessage(role: "user", text: "Write a haiku about rain.")])
        var config = GenerationConfig()
        config.maxNewTokens = 12
        let expected = try runner.generate(continuing: prompt, config: config) { _ in }
        let choice = try XCTUnwrap((reply.json["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual((choice["message"] as? [String: Any])?["content"] as? String, expected.text)
        let usage = try XCTUnwrap(reply.json["usage"] as? [String: Any])
        XCTAssertEqual(usage["completion_tokens"] as? Int, expected.tokenIDs.count)
        XCTAssertEqual(usage["prompt_tokens"] as? Int, expected.promptTokenIDs.count)
    }

    func testStreamingChunksConcatenateToTheNonStreamingText() async throws {
        let s = try await SharedServers.shared.text()
        let request: [String: Any] = ["messages": [userMessage("Tell me a story.")], "max_tokens": 16, "temperature": 0.8, "seed": 7]
        let plain = try await HTTP.chat(s, request)
        XCTAssertEqual(plain.status, 200, plain.text)
        let plainText = try XCTUnwrap((((plain.json["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any])?["content"] as? String)

        var streaming = request
        streaming["stream"] = true
        streaming["stream_options"] = ["include_usage": true]
        let reply = try await HTTP.chat(s, streaming)
        XCTAssertEqual(reply.status, 200, reply.text)
        XCTAssertTrue(reply.headers["content-type"]?.hasPrefix("text/event-stream") ?? false)
        let events = reply.events
        XCTAssertEqual(events.last, "[DONE]")
        var text = ""
        var finish: String?
        var usage: [String: Any]?
        for event in events.dropLast() {
            let chunk = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(event.utf8)) as? [String: Any])
            XCTAssertEqual(chunk["object"] as? String, "chat.completion.chunk")
            if let u = chunk["usage"] as? [String: Any] { usage = u }
            guard let choice = (chunk["choices"] as? [[String: Any]])?.first else { continue }
            if let delta = choice["delta"] as? [String: Any], let piece = delta["content"] as? String { text += piece }
            if let f = choice["finish_reason"] as? String { finish = f }
        }
        XCTAssertEqual(text, plainText)
        XCTAssertNotNil(finish)
        XCTAssertEqual(usage?["completion_tokens"] as? Int,
                       (plain.json["usage"] as? [String: Any])?["completion_tokens"] as? Int)
    }

    func testSecondRequestReusesThePromptCache() async throws {
        let s = try await SharedServers.shared.text()
        let first: [[String: Any]] = [["role": "system", "content": "You are terse."], userMessage("Name a colour.")]
        let r1 = try await HTTP.chat(s, ["messages": first, "max_tokens": 6, "temperature": 0])
        XCTAssertEqual(r1.status, 200, r1.text)
        let answer = try XCTUnwrap((((r1.json["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any])?["content"] as? String)
        let p1 = try XCTUnwrap((r1.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int)

        let second = first + [["role": "assistant", "content": answer], userMessage("And another one?")]
        let r2 = try await HTTP.chat(s, ["messages": second, "max_tokens": 6, "temperature": 0])
        XCTAssertEqual(r2.status, 200, r2.text)
        let usage = try XCTUnwrap(r2.json["usage"] as? [String: Any])
        let timings = try XCTUnwrap(r2.json["timings"] as? [String: Any])
        let prompt = try XCTUnwrap(usage["prompt_tokens"] as? Int)
        let cached = try XCTUnwrap(timings["cached_tokens"] as? Int)
        XCTAssertEqual((usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int, cached)
        XCTAssertGreaterThanOrEqual(cached, p1, "the whole first prompt should come from the cache")
        XCTAssertEqual(timings["prompt_n"] as? Int, prompt - cached, "only the new part is prefilled")
    }

    func testImageRequestAndImageCacheReuse() async throws {
        let s = try await SharedServers.shared.vision()
        let png = try Data(contentsOf: ServerFixtures.squarePNG)
        let uri = "data:image/png;base64," + png.base64EncodedString()
        let user: [String: Any] = ["role": "user", "content": [
            ["type": "image_url", "image_url": ["url": uri]], ["type": "text", "text": "What is in this image?"]]]
        let r1 = try await HTTP.chat(s, ["messages": [user], "max_tokens": 4, "temperature": 0])
        XCTAssertEqual(r1.status, 200, r1.text)
        let p1 = try XCTUnwrap((r1.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int)
        XCTAssertGreaterThan(p1, 20, "the image expands to its tiles' tokens (tiny-smolvlm: 4 per tile, up to 5 tiles)")
        let answer = try XCTUnwrap((((r1.json["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any])?["content"] as? String)

        // Same as a MultimodalRunner given the same messages.
        let runner = try RunnerFactory.make(modelDirectory: ServerFixtures.model("tiny-smolvlm"), threads: 2)
        try runner.load()
        let prompt = try runner.renderChat([ChatMessage(role: "user", content: .parts([.image, .text("What is in this image?")]))],
                                           addGenerationPrompt: true)
        var config = GenerationConfig()
        config.maxNewTokens = 4
        let expected = try runner.generate(continuing: prompt, images: [.encoded(png, name: "square")], config: config) { _ in }
        XCTAssertEqual(answer, expected.text)
        XCTAssertEqual(p1, expected.promptTokenIDs.count)

        let r2 = try await HTTP.chat(s, ["messages": [user, ["role": "assistant", "content": answer], userMessage("More detail?")],
                                         "max_tokens": 4, "temperature": 0])
        XCTAssertEqual(r2.status, 200, r2.text)
        let timings = try XCTUnwrap(r2.json["timings"] as? [String: Any])
        XCTAssertGreaterThanOrEqual(timings["cached_tokens"] as? Int ?? 0, p1)
    }
}

final class DisconnectTests: XCTestCase {
    /// A client that closes the connection mid-stream stops its generation.
    func testClientDisconnectStopsGeneration() async throws {
        let s = try await SharedServers.shared.slow()
        let before = s.server.cancelledGenerations
        let body = try JSONSerialization.data(withJSONObject: [
            "messages": [userMessage("Count to a thousand.")], "max_tokens": 1800, "temperature": 0.9, "seed": 3, "stream": true,
        ] as [String: Any])
        let port = UInt16(s.base.port!)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(rc, 0)
        let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        let request = Data(head.utf8) + body
        _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        // Read until the first token chunk arrives, then hang up.
        var received = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !(String(decoding: received, as: UTF8.self).components(separatedBy: "data: ").count > 3) {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            received.append(contentsOf: buffer[0..<n])
        }
        XCTAssertTrue(String(decoding: received, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        close(fd)
        let deadline = Date().addingTimeInterval(60)
        while s.server.cancelledGenerations == before, Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        XCTAssertEqual(s.server.cancelledGenerations, before + 1, "the generation should stop when its client disconnects")
        let after = try await HTTP.chat(s, ["messages": [userMessage("hi")], "max_tokens": 2])
        XCTAssertEqual(after.status, 200, after.text)
    }
}
