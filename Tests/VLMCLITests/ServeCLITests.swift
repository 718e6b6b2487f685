import Foundation
#if canImport(Glibc)
import Glibc
#endif
import XCTest

/// `vlm serve` as users run it: a real process on loopback, talked to by curl and by the official `openai` Python
/// package (streaming and not), and stopped by SIGTERM while a reply streams.
final class ServeCLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static var binary: URL { vlmBinary }

    /// A `vlm serve` process and the base URL it printed.
    final class Server {
        let process = Process()
        let base: String
        private let stderrPipe = Pipe()
        private let lock = NSLock()
        private var stderrText = ""

        init(model: String, extra: [String] = []) throws {
            process.executableURL = ServeCLITests.binary
            process.arguments = ["serve", "--model", ServeCLITests.fixtures.appendingPathComponent("models/\(model)").path,
                                 "--port", "0", "--threads", "1"] + extra
            process.standardError = stderrPipe
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            // The server prints "vlm serve: NAME on http://HOST:PORT/v1" once it listens.
            var found: String?
            let deadline = Date().addingTimeInterval(60)
            var buffer = ""
            while found == nil, Date() < deadline, process.isRunning {
                let chunk = stderrPipe.fileHandleForReading.availableData
                if chunk.isEmpty { Thread.sleep(forTimeInterval: 0.05); continue }
                buffer += String(decoding: chunk, as: UTF8.self)
                if let r = buffer.range(of: #"http://[0-9.]+:[0-9]+"#, options: .regularExpression) { found = String(buffer[r]) }
            }
            stderrText = buffer
            guard let found else {
                process.terminate()
                throw NSError(domain: "ServeCLITests", code: 1, userInfo: [NSLocalizedDescriptionKey: "vlm serve did not start: \(buffer)"])
            }
            base = found
            let handle = stderrPipe.fileHandleForReading
            handle.readabilityHandler = { [weak self] h in
                let d = h.availableData
                guard let self, !d.isEmpty else { return }
                self.lock.lock(); self.stderrText += String(decoding: d, as: UTF8.self); self.lock.unlock()
            }
        }

        var stderr: String { lock.lock(); defer { lock.unlock() }; return stderrText }

        func stop() {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            stderrPipe.fileHandleForReading.readabilityHandler = nil
        }
    }

    func run(_ executable: String, _ args: [String]) throws -> ProcessOutput {
        try runProcess(URL(fileURLWithPath: "/usr/bin/env"), [executable] + args)
    }

    func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    func testCurlPlainAndStreaming() throws {
        let server = try Server(model: "tiny-llama-f32", extra: ["--api-key", "k123"])
        defer { server.stop() }
        let body = #"{"model":"tiny-llama-f32","messages":[{"role":"user","content":"Hello, who are you?"}],"max_tokens":8,"temperature":0}"#
        let plain = try run("curl", ["-sS", "-H", "Authorization: Bearer k123", "-H", "Content-Type: application/json",
                                     "-d", body, server.base + "/v1/chat/completions"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let reply = try json(plain.stdout)
        let content = try XCTUnwrap(((reply["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String)
        XCTAssertFalse(content.isEmpty)
        let usage = try XCTUnwrap(reply["usage"] as? [String: Any])
        XCTAssertEqual(usage["completion_tokens"] as? Int, 8)
        XCTAssertEqual(usage["total_tokens"] as? Int, (usage["prompt_tokens"] as? Int ?? 0) + 8)

        let streamBody = body.replacingOccurrences(of: #""temperature":0}"#, with: #""temperature":0,"stream":true}"#)
        let streamed = try run("curl", ["-sSN", "-H", "Authorization: Bearer k123", "-H", "Content-Type: application/json",
                                        "-d", streamBody, server.base + "/v1/chat/completions"])
        XCTAssertEqual(streamed.status, 0, streamed.stderr)
        let events = streamed.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
        XCTAssertEqual(events.last, "[DONE]")
        var text = ""
        for e in events.dropLast() {
            let chunk = try json(e)
            text += ((chunk["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["content"] as? String ?? ""
        }
        XCTAssertEqual(text, content, "the streamed deltas add up to the non-streamed reply")

        let refused = try run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-d", body, server.base + "/v1/chat/completions"])
        XCTAssertEqual(refused.stdout, "401")
    }

    /// The official client, as users' tools call us. `.ci/run` installs the `openai` package.
    func testOpenAIPythonClient() throws {
        let server = try Server(model: "tiny-smolvlm")
        defer { server.stop() }
        let script = #"""
import base64, json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
png = base64.b64encode(open(sys.argv[2], "rb").read()).decode()
first = [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
    {"type": "text", "text": "What is in this image?"}]}]
r1 = client.chat.completions.create(model="tiny-smolvlm", messages=first, max_tokens=6, temperature=0, seed=1)
text1 = r1.choices[0].message.content
stream = client.chat.completions.create(model="tiny-smolvlm", messages=first, max_tokens=6, temperature=0, seed=1,
                                        stream=True, stream_options={"include_usage": True})
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
second = first + [{"role": "assistant", "content": text1}, {"role": "user", "content": "Say more."}]
r2 = client.chat.completions.create(model="tiny-smolvlm", messages=second, max_tokens=4, temperature=0)
models = client.models.list()
print(json.dumps({
    "text1": text1, "streamed": "".join(pieces), "usage1": r1.usage.prompt_tokens, "completion1": r1.usage.completion_tokens,
    "stream_usage": usage.prompt_tokens if usage else None,
    "cached2": r2.usage.prompt_tokens_details.cached_tokens if r2.usage.prompt_tokens_details else None,
    "prompt2": r2.usage.prompt_tokens, "models": [m.id for m in models.data]}))
"""#
        let scriptURL = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-openai-\(getpid()).py")
        try script.write(to: scriptURL, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: scriptURL) }
        let out = try run("python3", [scriptURL.path, server.base, Self.fixtures.appendingPathComponent("images-vlm/square-130x130.png").path])
        XCTAssertEqual(out.status, 0, "the openai package must be installed (.ci/run does): \(out.stderr)")
        let r = try json(out.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertEqual(r["streamed"] as? String, r["text1"] as? String)
        XCTAssertEqual(r["completion1"] as? Int, 6)
        XCTAssertEqual(r["stream_usage"] as? Int, r["usage1"] as? Int)
        let usage1 = try XCTUnwrap(r["usage1"] as? Int), cached2 = try XCTUnwrap(r["cached2"] as? Int)
        XCTAssertGreaterThanOrEqual(cached2, usage1, "the second request extends the first conversation: its prompt comes from the cache")
        XCTAssertLessThan(cached2, try XCTUnwrap(r["prompt2"] as? Int))
        XCTAssertEqual(r["models"] as? [String], ["tiny-smolvlm"])
    }

    func testSIGTERMFinishesTheStreamingReplyThenExits() throws {
        let server = try Server(model: "tiny-llama-f32")
        let body = #"{"messages":[{"role":"user","content":"Tell me a long story."}],"max_tokens":400,"temperature":0,"stream":true,"#
            + #""stop":[],"seed":3}"#
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        curl.arguments = ["curl", "-sSN", "-H", "Content-Type: application/json", "-d", body, server.base + "/v1/chat/completions"]
        let out = Pipe()
        curl.standardOutput = out
        try curl.run()
        // Wait for the first streamed token, then ask the server to stop.
        var received = Data()
        let deadline = Date().addingTimeInterval(30)
        while !String(decoding: received, as: UTF8.self).contains("\"content\""), Date() < deadline {
            received += out.fileHandleForReading.availableData
        }
        kill(server.process.processIdentifier, SIGTERM)
        received += out.fileHandleForReading.readDataToEndOfFile()
        curl.waitUntilExit()
        server.process.waitUntilExit()
        let text = String(decoding: received, as: UTF8.self)
        XCTAssertTrue(text.hasSuffix("data: [DONE]\n\n"), "the in-flight reply is finished, not cut: …\(text.suffix(200))")
        XCTAssertEqual(server.process.terminationStatus, 0, server.stderr)
        server.stop()
    }
}
