import Foundation
import XCTest

/// `vlm chat` driven through pipes, as a script would: the replies are those of `vlm run` (and transformers) for
/// the same turns, /clear empties the KV cache, sessions resume, Ctrl-C stops a reply.
final class ChatCLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static var binary: URL { vlmBinary }

    typealias Output = ProcessOutput

    func vlm(_ args: [String], stdin: String = "") throws -> Output {
        try runProcess(vlmBinary, args, stdin: stdin)
    }

    func model(_ name: String) -> String { Self.fixtures.appendingPathComponent("models/\(name)").path }
    func image(_ name: String) -> String { Self.fixtures.appendingPathComponent("images-vlm/\(name)").path }

    static let turns = ["<image><image>Compare these images above and list the differences.",
                        "Answer the question: What's the main object in first image?",
                        "<image>Caption this image."]

    /// Replies of `vlm run --output-format json` for `prompts`.
    func runReplies(_ prompts: [String], images: [String], model name: String = "tiny-smolvlm") throws -> [(text: String, stats: [String: Int])] {
        let r = try vlm(["run", "--model", model(name), "--max-new-tokens", "12", "--output-format", "json"]
                        + prompts.flatMap { ["--prompt", $0] } + images.flatMap { ["--image", image($0)] })
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        return try XCTUnwrap(json["turns"] as? [[String: Any]]).map { ($0["text"] as? String ?? "", $0["stats"] as? [String: Int] ?? [:]) }
    }

    func statsLines(_ stdout: String) throws -> [[String: Int]] {
        try stdout.split(separator: "\n").filter { $0.hasPrefix("PyTorchObserver {") }.map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.dropFirst("PyTorchObserver ".count).utf8)) as? [String: Int])
        }
    }

    func testChatThroughAPipeMatchesRun() throws {
        let run = try runReplies(Self.turns, images: ["shapes-80x60.png", "tall-50x120.png", "square-130x130.png"])
        let alone = try runReplies([Self.turns[1]], images: [])
        // vlm run itself equals transformers (the conversation fixture).
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("conversations/tiny-smolvlm.json"))) as? [String: Any]
        let expected = ((fixture?["scenarios"] as? [[String: Any]])?.first?["turns"] as? [[String: Any]])?.map { $0["reply_text"] as? String ?? "" }
        XCTAssertEqual(run.map(\.text), expected)

        let script = """
            /image \(image("shapes-80x60.png"))
            /image \(image("tall-50x120.png"))
            Compare these images above and list the differences.
            \(Self.turns[1])
            /stats
            /image \(image("square-130x130.png"))
            Caption this image.
            /history
            /clear
            \(Self.turns[1])
            /stats

            """
        let r = try vlm(["chat", "--model", model("tiny-smolvlm"), "--max-new-tokens", "12"], stdin: script)
        XCTAssertEqual(r.status, 0, r.stderr)
        let history = """
            user: \(Self.turns[0])  [shapes-80x60.png, tall-50x120.png]
            assistant: \(run[0].text)
            user: \(Self.turns[1])
            assistant: \(run[1].text)
            user: \(Self.turns[2])  [square-130x130.png]
            assistant: \(run[2].text)

            """
        let stats = try statsLines(r.stdout)
        XCTAssertEqual(stats.count, 2, r.stdout)
        let expectedOut = run[0].text + "\n" + run[1].text + "\n" + "PyTorchObserver " + "…" + "\n" + run[2].text + "\n" + history
            + alone[0].text + "\n" + "PyTorchObserver " + "…" + "\n"
        let normalised = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("PyTorchObserver {") ? "PyTorchObserver …" : String($0) }.joined(separator: "\n")
        XCTAssertEqual(normalised, expectedOut)
        // Turn 2 reused turn 1 from the cache; after /clear nothing is cached.
        XCTAssertEqual(stats.first?["cached_tokens"], run[1].stats["cached_tokens"])
        XCTAssertGreaterThan(stats.first?["cached_tokens"] ?? 0, 0)
        XCTAssertEqual(stats.first?["image_tiles"], 0)
        XCTAssertEqual(stats.last?["cached_tokens"], 0)
        XCTAssertEqual(stats.last?["prefilled_tokens"], stats.last?["prompt_tokens"])
        XCTAssertTrue(r.stderr.contains("conversation cleared"), r.stderr)
    }

    func testSessionResumesAcrossProcesses() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("chat-session-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let session = dir.appendingPathComponent("chat.session").path
        let run = try runReplies(Self.turns, images: ["shapes-80x60.png", "tall-50x120.png", "square-130x130.png"])

        let first = try vlm(["chat", "--model", model("tiny-smolvlm"), "--max-new-tokens", "12", "--session", session],
                            stdin: "/image \(image("shapes-80x60.png"))\n/image \(image("tall-50x120.png"))\n"
                                + "Compare these images above and list the differences.\n\(Self.turns[1])\n")
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(first.stdout, run[0].text + "\n" + run[1].text + "\n")

        let second = try vlm(["chat", "--model", model("tiny-smolvlm"), "--max-new-tokens", "12", "--session", session],
                             stdin: "/image \(image("square-130x130.png"))\nCaption this image.\n/stats\n/history\n")
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("resumed 2 turn(s)"), second.stderr)
        XCTAssertTrue(second.stdout.hasPrefix(run[2].text + "\nPyTorchObserver {"), second.stdout)
        let stats = try XCTUnwrap(try statsLines(second.stdout).first)
        // Only the new turn was prefilled and only its image encoded: as in the single process.
        XCTAssertEqual(stats["prefilled_tokens"], run[2].stats["prefilled_tokens"])
        XCTAssertEqual(stats["cached_tokens"], run[2].stats["cached_tokens"])
        XCTAssertEqual(stats["image_tiles"], run[2].stats["image_tiles"])
        XCTAssertTrue(second.stdout.contains("assistant: \(run[0].text)\n"), second.stdout)

        // A damaged session file: one clear line, non-zero status.
        var bytes = try Data(contentsOf: URL(fileURLWithPath: session))
        bytes = bytes.prefix(bytes.count - 50)
        try bytes.write(to: URL(fileURLWithPath: session))
        let broken = try vlm(["chat", "--model", model("tiny-smolvlm"), "--session", session], stdin: "hi\n")
        XCTAssertNotEqual(broken.status, 0)
        XCTAssertEqual(broken.stderr.split(separator: "\n").count, 1, broken.stderr)
        XCTAssertTrue(broken.stderr.contains("session file") && broken.stderr.contains("truncated"), broken.stderr)
        // Another model's session.
        let other = try vlm(["chat", "--model", model("tiny-internvl"), "--session", session], stdin: "hi\n")
        XCTAssertNotEqual(other.status, 0)
    }

    func testErrorsInAChatAreReportedAndTheChatGoesOn() throws {
        let r = try vlm(["chat", "--model", model("tiny-llama-f32"), "--max-new-tokens", "3"],
                        stdin: "/image \(image("wide-64x40.png"))\n/bogus\nHi\n/image\n")
        XCTAssertEqual(r.status, 1, "a failed command makes a scripted chat exit 1")
        XCTAssertTrue(r.stderr.contains("no vision encoder"), r.stderr)
        XCTAssertTrue(r.stderr.contains("unknown command /bogus"), r.stderr)
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, "the turn still got its reply: \(r.stdout)")
        let missing = try vlm(["chat", "--model", model("tiny-smolvlm"), "--max-new-tokens", "3"],
                              stdin: "/image /nonexistent/x.png\nHi\n")
        XCTAssertTrue(missing.stderr.contains("x.png: cannot read the file"), missing.stderr)
        XCTAssertEqual(missing.stdout.split(separator: "\n").count, 1, missing.stdout)
    }

    /// Ctrl-C (SIGINT) while a reply is streamed stops it and the chat goes on; twice at the prompt quits.
    func testInterruptStopsTheReplyAndTwiceQuits() throws {
        let process = Process()
        process.executableURL = Self.binary
        // A reply that would take minutes: tiny-internvl has 32768 positions.
        process.arguments = ["chat", "--model", model("tiny-internvl"), "--max-new-tokens", "30000", "--ignore-eos", "--threads", "1"]
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        let lock = NSLock()
        var stdout = Data(), stderr = Data()
        out.fileHandleForReading.readabilityHandler = { h in let d = h.availableData; lock.lock(); stdout += d; lock.unlock() }
        err.fileHandleForReading.readabilityHandler = { h in let d = h.availableData; lock.lock(); stderr += d; lock.unlock() }
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        func text() -> (String, String) {
            lock.lock(); defer { lock.unlock() }
            return (String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
        }
        func wait(_ what: String, _ condition: (String, String) -> Bool) throws {
            let deadline = Date().addingTimeInterval(60)
            while !condition(text().0, text().1) {
                guard Date() < deadline else { XCTFail("timed out waiting for \(what): \(text())"); throw XCTSkip("timeout") }
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
        input.fileHandleForWriting.write(Data("Tell me a very long story.\n".utf8))
        try wait("the reply to start") { out, _ in !out.isEmpty }
        kill(process.processIdentifier, SIGINT)
        try wait("the reply to stop") { _, err in err.contains("(stopped)") }
        XCTAssertTrue(process.isRunning, "one Ctrl-C during a reply must not end the chat")
        input.fileHandleForWriting.write(Data("/stats\n".utf8))
        try wait("the stats line") { out, _ in out.contains("PyTorchObserver {") }
        let line = try XCTUnwrap(text().0.split(separator: "\n").first { $0.hasPrefix("PyTorchObserver {") })
        let stats = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.dropFirst("PyTorchObserver ".count).utf8)) as? [String: Int])
        XCTAssertLessThan(stats["generated_tokens"] ?? .max, 30000)
        XCTAssertGreaterThan(stats["generated_tokens"] ?? 0, 0)
        // At the prompt: the first Ctrl-C warns, the second quits.
        kill(process.processIdentifier, SIGINT)
        try wait("the warning") { _, err in err.contains("Ctrl-C again to quit") }
        XCTAssertTrue(process.isRunning)
        kill(process.processIdentifier, SIGINT)
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        XCTAssertFalse(process.isRunning)
        XCTAssertEqual(process.terminationStatus, 130)
        out.fileHandleForReading.readabilityHandler = nil
        err.fileHandleForReading.readabilityHandler = nil
    }
}
