import Foundation
import XCTest

/// `vlm quantize` and `--quantize` through the built binary: the written folder answers exactly as load-time
/// quantization of the source, bench reports the quantized dtype, and bad settings fail with a clear message.
final class QuantizeCLITests: XCTestCase {
    func vlm(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = Bundle.main.bundleURL.appendingPathComponent("vlm")
        process.arguments = args
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    let source = CLITests.fixtures.appendingPathComponent("models/tiny-llama-untied-f32").path

    func testQuantizedFolderRunsLikeOnTheFlyQuantization() throws {
        let dest = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-q4-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dest) }
        let q = try vlm(["quantize", "--bits", "4", "--group-size", "16", source, dest.path])
        XCTAssertEqual(q.status, 0, q.stderr)
        XCTAssertTrue(q.stdout.contains("q4 (group size 16)"), q.stdout)
        let prompt = ["--prompt", "Hello there", "--max-new-tokens", "12", "--output-format", "json"]
        let fromFolder = try vlm(["run", "--model", dest.path] + prompt)
        let onTheFly = try vlm(["run", "--model", source, "--quantize", "q4", "--quantize-group-size", "16"] + prompt)
        XCTAssertEqual(fromFolder.status, 0, fromFolder.stderr)
        XCTAssertEqual(onTheFly.status, 0, onTheFly.stderr)
        func tokens(_ s: String) throws -> [Int] {
            let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any])
            return try XCTUnwrap(json["token_ids"] as? [Int] ?? (json["turns"] as? [[String: Any]])?.last?["token_ids"] as? [Int], s)
        }
        XCTAssertEqual(try tokens(fromFolder.stdout), try tokens(onTheFly.stdout))

        let bench = try vlm(["bench", "--model", dest.path, "--prompt-tokens", "4", "--gen-tokens", "2", "--runs", "1",
                             "--no-probe", "--output-format", "json"])
        XCTAssertEqual(bench.status, 0, bench.stderr)
        XCTAssertTrue(bench.stdout.contains("\"dtype\":\"q4\""), bench.stdout)
        let benchOnTheFly = try vlm(["bench", "--model", source, "--quantize", "q8", "--prompt-tokens", "4", "--gen-tokens", "2",
                                     "--runs", "1", "--no-probe", "--output-format", "json"])
        XCTAssertTrue(benchOnTheFly.stdout.contains("\"dtype\":\"q8\""), benchOnTheFly.stdout + benchOnTheFly.stderr)
    }

    func testBadSettingsFailClearly() throws {
        let dest = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-q-bad-\(UUID().uuidString)").path
        let bits = try vlm(["quantize", "--bits", "3", source, dest])
        XCTAssertNotEqual(bits.status, 0)
        XCTAssertTrue(bits.stderr.contains("bits 3 is not supported"), bits.stderr)
        let group = try vlm(["run", "--model", source, "--quantize", "q4", "--quantize-group-size", "20", "--prompt", "hi"])
        XCTAssertNotEqual(group.status, 0)
        XCTAssertTrue(group.stderr.contains("group_size 20 must be a positive multiple of 8"), group.stderr)
        let vision = try vlm(["run", "--model", source, "--quantize-vision", "--prompt", "hi"])
        XCTAssertNotEqual(vision.status, 0)
        XCTAssertTrue(vision.stderr.contains("--quantize-vision needs --quantize"), vision.stderr)
    }
}
