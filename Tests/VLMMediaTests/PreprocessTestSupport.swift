import Foundation
import VLMMedia
import XCTest

/// Fixtures written by Tools/fixtures/preprocess_goldens.py, and the synthetic images they were made from.
enum PreprocessFixtures {
    /// <repo>/Tests/Fixtures/preprocess
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/preprocess")
    static let smolvlmConfig = root.appendingPathComponent("configs/smolvlm-256m")
    static let internVLConfig = root.appendingPathComponent("configs/internvl3-1b-hf-assumed")
    /// <repo>/../shared/models (absent on machines without the shared metadata; tests using it skip).
    static let sharedModels: URL = root.deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/models")

    struct Index: Decodable {
        struct Image: Decodable {
            let name: String
            let kind: String
            let width: Int
            let height: Int
            let seed: Int
            let fnv1a64: String
            let rgb_file: String?
        }
        struct Config: Decodable {
            let dir: String
            let family: String
            let kwargs: Kwargs
        }
        struct Kwargs: Decodable {
            struct Size: Decodable { let longest_edge: Int }
            let do_image_splitting: Bool?
            let size: Size?
            let max_patches: Int?
        }
        struct ExpandedText: Decodable {
            let rle: [[RLEPiece]]
            let length: Int
            let fnv1a64: String
        }
        enum RLEPiece: Decodable {
            case text(String)
            case count(Int)
            init(from decoder: Decoder) throws {
                let c = try decoder.singleValueContainer()
                if let n = try? c.decode(Int.self) { self = .count(n) } else { self = .text(try c.decode(String.self)) }
            }
        }
        struct Case: Decodable {
            let `case`: String
            let config: String
            let image: String
            let tiles: Int
            let tile_height: Int
            let tile_width: Int
            let rows: Int?
            let cols: Int?
            let grid_cols: Int?
            let grid_rows: Int?
            let sample_rows: [[Int]]
            let rows_file: String
            let blocks_file: String
            let tile_channel_means: [[Double]]
            let expanded_text: ExpandedText
        }
        let block: Int
        let backends: [String: String]
        let configs: [String: Config]
        let images: [Image]
        let cases: [Case]
    }

    static func index() throws -> Index {
        try JSONDecoder().decode(Index.self, from: Data(contentsOf: root.appendingPathComponent("index.json")))
    }

    static func floats(_ relative: String) throws -> [Float] {
        let data = try Data(contentsOf: root.appendingPathComponent(relative))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// The string a run-length-encoded expanded prompt stands for.
    static func text(_ expanded: Index.ExpandedText) -> String {
        var s = ""
        for run in expanded.rle {
            guard run.count == 2, case .text(let piece) = run[0], case .count(let n) = run[1] else { continue }
            s += String(repeating: piece, count: n)
        }
        return s
    }

    /// The test image: regenerated from its parameters, checked against the hash (and raw file, if committed).
    static func image(_ entry: Index.Image) throws -> RGBImage {
        let pixels = PreprocessSyntheticImage.make(kind: entry.kind, width: entry.width, height: entry.height, seed: entry.seed)
        XCTAssertEqual(fnv1a64(pixels), entry.fnv1a64, "generator differs from preprocess_goldens.py for \(entry.name)")
        if let file = entry.rgb_file {
            let raw = try Data(contentsOf: root.appendingPathComponent(file))
            XCTAssertEqual([UInt8](raw), pixels, "\(file) differs from the generator")
        }
        guard let image = RGBImage(width: entry.width, height: entry.height, pixels: pixels) else {
            throw ImageError(source: entry.name, "bad fixture size")
        }
        return image
    }

    static func fnv1a64<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// The synthetic images of preprocess_goldens.py (`make_image`), in integer arithmetic so both languages agree
/// byte for byte: gradients, a checkerboard, hashed noise, a hard-edged disc and 1-px lines.
enum PreprocessSyntheticImage {
    static func hash32(_ x: Int, _ y: Int, _ c: Int, _ seed: Int) -> UInt32 {
        var h = (UInt32(truncatingIfNeeded: x) &* 0x9E37_79B1) ^ (UInt32(truncatingIfNeeded: y) &* 0x85EB_CA77)
            ^ (UInt32(truncatingIfNeeded: c + seed * 3) &* 0xC2B2_AE3D)
        h ^= h >> 16
        h = h &* 0x7FEB_352D
        h ^= h >> 15
        h = h &* 0x846C_A68B
        h ^= h >> 16
        return h
    }

    static func make(kind: String, width w: Int, height h: Int, seed: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: w * h * 3)
        let cell = max(2, min(w, h) / 6)
        let (cx, cy, r) = (w / 2, h / 2, min(w, h) / 4)
        for y in 0..<h {
            for x in 0..<w {
                for c in 0..<3 {
                    let noise = Int(hash32(x, y, c, seed) & 255)
                    var v: Int
                    if kind == "noise" {
                        v = noise
                    } else {
                        let gx = x * 255 / max(w - 1, 1), gy = y * 255 / max(h - 1, 1)
                        v = [gx, gy, (gx + 255 - gy) / 2][c]
                        let right = x * 3 >= w * 2
                        if right {
                            let checker = ((x / cell) + (y / cell)) % 2 == 1
                            let (on, off) = c == 1 ? (20, 235) : (235, 20)
                            v = checker ? on : off
                        } else if y * 4 >= h * 3 {
                            v = noise
                        }
                        if (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r { v = [250, 30, 140][c] }
                        if x * 3 < w && x % 9 == 4 { v = 255 - v }
                    }
                    out[(y * w + x) * 3 + c] = UInt8(v)
                }
            }
        }
        return out
    }
}
