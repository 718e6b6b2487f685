import Foundation
import VLMMedia
import XCTest

/// Decoded pixels against Pillow + exif_transpose + convert("RGB") (transformers' load_image) on the files made by
/// Tools/fixtures/make_test_images.py, and clear errors for every bad file.
final class ImageDecodingTests: XCTestCase {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/images")

    func index() throws -> [[String: Any]] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: Self.dir.appendingPathComponent("index.json"))) as? [[String: Any]])
    }

    func testPixelsEqualPillow() throws {
        var checked = 0
        for entry in try index() where entry["error"] == nil {
            let name = try XCTUnwrap(entry["file"] as? String)
            let image = try ImageDecoder.decode(contentsOf: Self.dir.appendingPathComponent(name))
            XCTAssertEqual(image.width, entry["width"] as? Int, name)
            XCTAssertEqual(image.height, entry["height"] as? Int, name)
            let want = try [UInt8](Data(contentsOf: Self.dir.appendingPathComponent(try XCTUnwrap(entry["rgb"] as? String))))
            XCTAssertEqual(image.pixels.count, want.count, name)
            let diffs = zip(image.pixels, want).map { abs(Int($0) - Int($1)) }
            // libjpeg-turbo with Pillow's settings (islow DCT, fancy upsampling) gives the same bytes.
            XCTAssertEqual(diffs.max() ?? 0, 0, "\(name): max difference \(diffs.max() ?? 0)")
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 18)
    }

    func testBadFilesGiveClearErrors() throws {
        var checked = 0
        for entry in try index() {
            guard let fragment = entry["error"] as? String else { continue }
            let name = try XCTUnwrap(entry["file"] as? String)
            var options = ImageDecodingOptions()
            options.maxPixels = 50_000_000
            XCTAssertThrowsError(try ImageDecoder.decode(contentsOf: Self.dir.appendingPathComponent(name), options: options), name) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(name), "'\(text)' should name the file")
                XCTAssertTrue(text.contains(fragment), "'\(text)' should say \(fragment)")
            }
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 6)
    }

    func testPixelLimitIsCheckedBeforeDecoding() throws {
        var options = ImageDecodingOptions()
        options.maxPixels = 100  // the 37×23 JPEG has 851
        XCTAssertThrowsError(try ImageDecoder.decode(contentsOf: Self.dir.appendingPathComponent("baseline.jpg"), options: options)) {
            XCTAssertTrue("\($0)".contains("over the limit of 100"), "\($0)")
        }
        XCTAssertThrowsError(try ImageDecoder.decode(contentsOf: Self.dir.appendingPathComponent("rgb.png"), options: options))
    }

    func testMissingFileAndRandomBytes() {
        XCTAssertThrowsError(try ImageDecoder.decode(contentsOf: Self.dir.appendingPathComponent("no-such-file.png"))) {
            XCTAssertTrue("\($0)".contains("no-such-file.png"))
        }
        // Random bytes behind valid magic numbers must fail cleanly, never crash.
        var rng = SystemRandomNumberGenerator()
        for magic in [[UInt8]([0xFF, 0xD8, 0xFF]), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]] {
            for _ in 0..<50 {
                let tail = (0..<Int.random(in: 0..<400, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                _ = try? ImageDecoder.decode(Data(magic + tail), source: "fuzz")
            }
        }
    }

    func testOrientationTransformsMatchPIL() {
        // 3×2 image with distinct pixels; PIL's transpose results for orientation 6 (rotate 90° clockwise).
        let px: [UInt8] = (0..<6).flatMap { [UInt8($0), 0, 0] }
        let image = RGBImage(width: 3, height: 2, pixels: px)!
        let rotated = ImageDecoder.applyOrientation(image, 6)
        XCTAssertEqual([rotated.width, rotated.height], [2, 3])
        // Row-major input [[0,1,2],[3,4,5]] rotated clockwise is [[3,0],[4,1],[5,2]].
        XCTAssertEqual(stride(from: 0, to: rotated.pixels.count, by: 3).map { rotated.pixels[$0] }, [3, 0, 4, 1, 5, 2])
    }
}
