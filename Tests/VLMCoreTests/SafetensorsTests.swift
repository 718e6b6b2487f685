import Foundation
import VLMCore
import XCTest

/// Hostile and truncated safetensors files must give a clear error naming the problem, never a crash.
final class SafetensorsTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-st-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    /// Writes 8-byte length + header JSON + data bytes.
    func writeRaw(_ header: String, data: [UInt8], lengthOverride: UInt64? = nil, name: String = "model.safetensors") throws -> URL {
        var out = Data()
        var len = (lengthOverride ?? UInt64(header.utf8.count)).littleEndian
        withUnsafeBytes(of: &len) { out.append(contentsOf: $0) }
        out.append(Data(header.utf8))
        out.append(contentsOf: data)
        let url = dir.appendingPathComponent(name)
        try out.write(to: url)
        return url
    }

    func expectError(_ url: URL, contains fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SafetensorsFile(path: url.path), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(fragment), "error '\(error)' should mention '\(fragment)'", file: file, line: line)
        }
    }

    func testReadsF32BF16AndF16InPlace() throws {
        let f32: [Float] = [1, -2.5, 3.25, 0]
        let bf16: [UInt16] = [0x3F80, 0xC020]     // 1.0, -2.5
        let f16: [UInt16] = [0x3C00, 0xC100, 0x0001]  // 1.0, -2.5, smallest subnormal
        let url = dir.appendingPathComponent("ok.safetensors")
        try writeSafetensors([
            ("a", "F32", [2, 2], f32.withUnsafeBytes { Array($0) }),
            ("b", "BF16", [2], bf16.withUnsafeBytes { Array($0) }),
            ("c", "F16", [3], f16.withUnsafeBytes { Array($0) }),
        ], to: url)
        let file = try SafetensorsFile(path: url.path)
        XCTAssertEqual(try file.tensor("a").floats(), f32)
        XCTAssertEqual(try file.tensor("a").shape, [2, 2])
        XCTAssertEqual(try file.tensor("b").floats(), [1, -2.5])
        let c = try file.tensor("c").floats()
        XCTAssertEqual(c[0], 1)
        XCTAssertEqual(c[1], -2.5)
        XCTAssertEqual(c[2], Float(5.9604645e-8), accuracy: 1e-12)
        // In place: the tensor points into the memory map, not a copy.
        XCTAssertTrue(try file.tensor("a").storage === file.file)
    }

    func testTooShortFile() throws {
        let url = dir.appendingPathComponent("short.safetensors")
        try Data([1, 2, 3]).write(to: url)
        expectError(url, contains: "too short")
    }

    func testZeroByteFile() throws {
        let url = dir.appendingPathComponent("empty.safetensors")
        try Data().write(to: url)
        expectError(url, contains: "too short")
    }

    func testHeaderLengthPastEnd() throws {
        expectError(try writeRaw("{}", data: [], lengthOverride: 1000), contains: "past the end")
    }

    func testHugeHeaderLength() throws {
        expectError(try writeRaw("{}", data: [], lengthOverride: UInt64.max), contains: "exceeds")
    }

    func testHeaderNotJSON() throws {
        expectError(try writeRaw("{not json", data: []), contains: "not valid JSON")
    }

    func testHeaderNotObject() throws {
        expectError(try writeRaw("[1,2]", data: []), contains: "not an object")
    }

    func testTruncatedData() throws {
        let header = #"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#
        expectError(try writeRaw(header, data: [UInt8](repeating: 0, count: 8)), contains: "past the")
    }

    func testShapeDoesNotMatchByteRange() throws {
        let header = #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#
        expectError(try writeRaw(header, data: [UInt8](repeating: 0, count: 16)), contains: "needs 12 bytes but data_offsets span 16")
    }

    func testOverlappingRanges() throws {
        let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        expectError(try writeRaw(header, data: [UInt8](repeating: 0, count: 12)), contains: "overlap")
    }

    func testNegativeAndFractionalValues() throws {
        expectError(try writeRaw(#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#, data: []), contains: "non-negative integer")
        expectError(try writeRaw(#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}}"#, data: []), contains: "non-negative integer")
        expectError(try writeRaw(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, data: []), contains: "increasing")
        expectError(try writeRaw(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, data: []), contains: "two integers")
    }

    func testShapeOverflow() throws {
        let header = #"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#
        expectError(try writeRaw(header, data: []), contains: "overflow")
    }

    func testUnknownDtype() throws {
        expectError(try writeRaw(#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#, data: [0]), contains: "unknown dtype 'Q9'")
    }

    func testUnsupportedDtypeNamedWhenUsed() throws {
        let url = try writeRaw(#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8))
        let file = try SafetensorsFile(path: url.path)
        XCTAssertThrowsError(try file.tensor("a")) { XCTAssertTrue("\($0)".contains("I64")) }
    }

    func testMisalignedTensorIsCopied() throws {
        // A 2-byte tensor first puts the f32 tensor at an odd-looking offset (data start 8 + 58 + 2).
        let header = #"{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#
        var bytes: [UInt8] = [0x80, 0x3F]
        bytes += withUnsafeBytes(of: Float(7.5)) { Array($0) }
        let url = try writeRaw(header, data: bytes)
        let file = try SafetensorsFile(path: url.path)
        XCTAssertEqual(try file.tensor("b").floats(), [7.5])
        XCTAssertEqual(try file.tensor("a").floats(), [1])
    }

    func testCheckpointReportsMissingAndUnusedTensors() throws {
        try writeSafetensors([
            ("x", "F32", [1], [0, 0, 0, 0]),
            ("y", "F32", [1], [0, 0, 0, 0]),
        ], to: dir.appendingPathComponent("model.safetensors"))
        let ckpt = try Checkpoint(directory: dir)
        XCTAssertThrowsError(try ckpt.requireAll(["x", "z"])) { XCTAssertTrue("\($0)".contains("missing") && "\($0)".contains("z")) }
        XCTAssertThrowsError(try ckpt.tensor("x", shape: [2])) { XCTAssertTrue("\($0)".contains("shape [1], expected [2]")) }
        _ = try ckpt.tensor("x")
        XCTAssertThrowsError(try ckpt.checkAllUsed()) { XCTAssertTrue("\($0)".contains("y")) }
    }

    func testShardIndexErrors() throws {
        try Data(#"{"weight_map":{"a":"../../etc/passwd"}}"#.utf8).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        XCTAssertThrowsError(try Checkpoint(directory: dir)) { XCTAssertTrue("\($0)".contains("inside the model folder")) }
        try Data(#"{"weight_map":{"a":"model-1.safetensors"}}"#.utf8).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        XCTAssertThrowsError(try Checkpoint(directory: dir)) { XCTAssertTrue("\($0)".contains("model-1.safetensors")) }
        try writeSafetensors([("b", "F32", [1], [0, 0, 0, 0])], to: dir.appendingPathComponent("model-1.safetensors"))
        XCTAssertThrowsError(try Checkpoint(directory: dir)) { XCTAssertTrue("\($0)".contains("no such tensor")) }
    }

    func testFolderWithoutWeights() throws {
        XCTAssertThrowsError(try Checkpoint(directory: dir)) { XCTAssertTrue("\($0)".contains("no model.safetensors")) }
    }

    /// Random byte strings after a plausible length prefix: every one must be rejected or parsed, never crash.
    func testFuzzedHeadersNeverCrash() throws {
        var rng = SystemRandomNumberGenerator()
        let base = #"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#
        for i in 0..<300 {
            var header = Array(base.utf8)
            for _ in 0..<(1 + i % 4) {
                let at = Int.random(in: 0..<header.count, using: &rng)
                header[at] = UInt8.random(in: 0x20...0x7e, using: &rng)
            }
            let url = try writeRaw(String(decoding: header, as: UTF8.self), data: [UInt8](repeating: 0, count: Int.random(in: 0...20, using: &rng)), name: "fuzz.safetensors")
            if let file = try? SafetensorsFile(path: url.path) {
                for name in file.entries.keys { _ = try? file.tensor(name).floats() }
            }
        }
    }
}
