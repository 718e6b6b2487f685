import CKernels
import Foundation
import VLMMedia
import XCTest

/// Config loading (real files, bad values → clear errors), tiling overrides, prompt strings and resampler
/// properties of the Idefics3/SmolVLM and InternVL image processors.
final class PreprocessConfigTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-preprocess-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    static var smolPreprocessor: [String: Any] { [
        "do_convert_rgb": true, "do_image_splitting": true, "do_normalize": true, "do_pad": true,
        "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics3ImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "max_image_size": ["longest_edge": 512], "processor_class": "Idefics3Processor", "resample": 1,
        "rescale_factor": 0.00392156862745098, "size": ["longest_edge": 2048],
    ] }
    static var internVLPreprocessor: [String: Any] { [
        "crop_to_patches": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "GotOcr2ImageProcessorFast", "max_patches": 12, "min_patches": 1, "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": ["height": 448, "width": 448],
    ] }

    /// Writes preprocessor_config.json (raw text or an edited dictionary) and optionally processor_config.json.
    func write(_ preprocessor: Any, processor: Any? = nil) throws -> URL {
        let folder = dir.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        func data(_ value: Any) throws -> Data {
            if let text = value as? String { return Data(text.utf8) }
            return try JSONSerialization.data(withJSONObject: value)
        }
        try data(preprocessor).write(to: folder.appendingPathComponent("preprocessor_config.json"))
        if let processor { try data(processor).write(to: folder.appendingPathComponent("processor_config.json")) }
        return folder
    }

    func smol(_ edit: (inout [String: Any]) -> Void = { _ in }, processor: Any? = ["image_seq_len": 64]) throws -> URL {
        var d = Self.smolPreprocessor
        edit(&d)
        return try write(d, processor: processor)
    }

    func internVL(_ edit: (inout [String: Any]) -> Void = { _ in }, processor: Any? = ["image_seq_length": 256]) throws -> URL {
        var d = Self.internVLPreprocessor
        edit(&d)
        return try write(d, processor: processor)
    }

    func expectError(_ body: () throws -> Void, contains fragments: String..., file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("expected an error containing \(fragments)", file: file, line: line)
        } catch {
            let message = "\(error)"
            for fragment in fragments {
                XCTAssertTrue(message.contains(fragment), "error \"\(message)\" lacks \"\(fragment)\"", file: file, line: line)
            }
        }
    }

    // MARK: - Loading real and valid configs

    func testLoadsSmolVLMFixtureConfig() throws {
        let config = try Idefics3ProcessorConfig(directory: PreprocessFixtures.smolvlmConfig)
        XCTAssertEqual(config, Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: 512, imageSeqLen: 64))
        XCTAssertEqual(config.resample, .lanczos)
        XCTAssertEqual(config.rescaleFactor, 1.0 / 255.0)
    }

    func testLoadsSharedSmolVLMConfigs() throws {
        for name in ["SmolVLM-256M-Instruct", "SmolVLM-500M-Instruct"] {
            let folder = PreprocessFixtures.sharedModels.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: folder.appendingPathComponent("preprocessor_config.json").path) else {
                throw XCTSkip("\(folder.path) not present")
            }
            let processor = try Idefics3ImageProcessor(directory: folder)
            XCTAssertEqual(processor.config, Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: 512, imageSeqLen: 64), name)
        }
    }

    func testLoadsAssumedInternVLConfig() throws {
        let config = try InternVLProcessorConfig(directory: PreprocessFixtures.internVLConfig)
        XCTAssertEqual(config, InternVLProcessorConfig())
        XCTAssertEqual(config.imageMean, InternVLProcessorConfig.imageNetMean)
        XCTAssertEqual(config.resample, .bicubic)
    }

    func testDefaultsForAbsentOptionalKeys() throws {
        // Only the required keys: the rest are transformers' class defaults.
        let idefics = try Idefics3ProcessorConfig(directory: try write(
            ["size": ["longest_edge": 1536], "max_image_size": ["longest_edge": 384]], processor: ["image_seq_len": 81]))
        XCTAssertEqual(idefics, Idefics3ProcessorConfig(longestEdge: 1536, maxImageSize: 384, imageSeqLen: 81))
        let internVL = try InternVLProcessorConfig(directory: try write(
            ["size": ["height": 448, "width": 448]], processor: ["image_seq_length": 256]))
        XCTAssertEqual(internVL.imageMean, InternVLProcessorConfig.clipMean)  // GotOcr2 default: CLIP
        XCTAssertEqual(internVL.maxPatches, 12)
        XCTAssertFalse(internVL.cropToPatches)
        // InternVLProcessor crops anyway.
        XCTAssertTrue(InternVLImageProcessor(config: internVL).cropToPatches)
        // image_seq_len may also sit in preprocessor_config.json; a scalar mean/std applies to all channels.
        let inline = try Idefics3ProcessorConfig(directory: try smol({ $0["image_seq_len"] = 64; $0["image_mean"] = 0.25 }, processor: nil))
        XCTAssertEqual(inline.imageSeqLen, 64)
        XCTAssertEqual(inline.imageMean, [0.25, 0.25, 0.25])
    }

    // MARK: - Bad configs

    func testMissingFilesAndKeys() throws {
        expectError({ _ = try Idefics3ImageProcessor(directory: self.dir.appendingPathComponent("nowhere")) },
                    contains: "preprocessor_config.json", "file not found")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["size"] = nil }) }, contains: "missing key \"size\"")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["size"] = ["height": 10, "width": 10] }) },
                    contains: "\"size\" has no \"longest_edge\"")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["max_image_size"] = nil }) },
                    contains: "max_image_size")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol(processor: nil)) },
                    contains: "processor_config.json", "image_seq_len")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol(processor: ["processor_class": "Idefics3Processor"])) },
                    contains: "image_seq_len")
        expectError({ _ = try InternVLImageProcessor(directory: try self.internVL { $0["size"] = ["height": 448] }) },
                    contains: "\"size\" needs \"height\" and \"width\"")
        expectError({ _ = try InternVLImageProcessor(directory: try self.internVL(processor: nil)) },
                    contains: "image_seq_length")
    }

    func testZeroAndOutOfRangeValues() throws {
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["size"] = ["longest_edge": 0] }) },
                    contains: "size.longest_edge is 0")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["max_image_size"] = ["longest_edge": -512] }) },
                    contains: "max_image_size.longest_edge is -512")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["max_image_size"] = ["longest_edge": 100_000] }) },
                    contains: "expected 1...4096")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol(processor: ["image_seq_len": 0])) },
                    contains: "image_seq_len")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["image_std"] = [0.5, 0, 0.5] }) },
                    contains: "image_std")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["image_mean"] = [0.5, 0.5] }) },
                    contains: "image_mean", "3 finite numbers")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["rescale_factor"] = 0 }) },
                    contains: "rescale_factor is 0.0")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["resample"] = 0 }) },
                    contains: "resample 0 (NEAREST) is not supported")
        expectError({ _ = try InternVLImageProcessor(directory: try self.internVL { $0["size"] = ["height": 0, "width": 448] }) },
                    contains: "size.height is 0")
        expectError({ _ = try InternVLImageProcessor(directory: try self.internVL { $0["max_patches"] = 0 }) },
                    contains: "max_patches 0")
        expectError({ _ = try InternVLImageProcessor(directory: try self.internVL { $0["min_patches"] = 6; $0["max_patches"] = 4 }) },
                    contains: "min_patches 6, max_patches 4")
        expectError({ _ = try InternVLImageProcessor(directory: try self.internVL(processor: ["image_seq_length": -1])) },
                    contains: "image_seq_length is -1")
    }

    func testMalformedJSONAndTypes() throws {
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.write("{\"size\": ", processor: ["image_seq_len": 64])) },
                    contains: "preprocessor_config.json", "not valid JSON")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["do_image_splitting"] = "yes" }) },
                    contains: "do_image_splitting", "wrong type")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol { $0["size"] = ["longest_edge": "2048"] }) },
                    contains: "size.longest_edge", "wrong type")
        expectError({ _ = try Idefics3ImageProcessor(directory: try self.smol(processor: "[1, 2")) },
                    contains: "processor_config.json", "not valid JSON")
        // A folder of the other family.
        expectError({ _ = try Idefics3ImageProcessor(directory: PreprocessFixtures.internVLConfig) },
                    contains: "GotOcr2ImageProcessorFast", "Idefics3")
        expectError({ _ = try InternVLImageProcessor(directory: PreprocessFixtures.smolvlmConfig) },
                    contains: "Idefics3ImageProcessor", "GotOcr2")
    }

    func testInvalidConfigInCodeFailsAtPreprocess() throws {
        let image = try XCTUnwrap(RGBImage(width: 4, height: 3, pixels: [UInt8](repeating: 9, count: 36)))
        let idefics = Idefics3ImageProcessor(config: Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: 0, imageSeqLen: 64))
        expectError({ _ = try idefics.preprocess(image) }, contains: "max_image_size.longest_edge is 0")
        var internVL = InternVLImageProcessor(config: InternVLProcessorConfig())
        internVL.maxPatches = 0
        expectError({ _ = try internVL.preprocess(image) }, contains: "max_patches 0")
        XCTAssertEqual(internVL.tileGrid(width: 4, height: 3).cols, 1)  // no crash on a bad config
        expectError({ try internVL.limitTiles(0) }, contains: "max tiles is 0")
        var smol = Idefics3ImageProcessor(config: Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: 512, imageSeqLen: 64))
        expectError({ try smol.limitTiles(0) }, contains: "max tiles is 0")
    }

    // MARK: - Tiling overrides and prompt strings

    func testIdefics3TileLimit() throws {
        var p = Idefics3ImageProcessor(config: Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: 512, imageSeqLen: 64))
        XCTAssertEqual(p.tileGrid(width: 2048, height: 1536).rows, 3)
        try p.limitTiles(16)
        XCTAssertEqual(p.longestEdge, 2048)
        try p.limitTiles(9)
        XCTAssertEqual(p.longestEdge, 1536)
        let grid = p.tileGrid(width: 2048, height: 1536)
        XCTAssertEqual(grid.rows, 3)
        XCTAssertEqual(grid.cols, 3)
        try p.limitTiles(4)  // = the smolvlm_longest1024 golden
        XCTAssertEqual(p.longestEdge, 1024)
        XCTAssertTrue(p.doImageSplitting)
        try p.limitTiles(3)
        XCTAssertFalse(p.doImageSplitting)
        let image = try XCTUnwrap(RGBImage(width: 30, height: 20, pixels: [UInt8](repeating: 200, count: 1800)))
        let out = try p.preprocess(image)
        XCTAssertEqual(out.tiles.count, 1)
        XCTAssertEqual(out.rows, 0)
    }

    func testInternVLTileLimit() throws {
        var p = InternVLImageProcessor(config: InternVLProcessorConfig())
        XCTAssertEqual(p.tileCount(width: 2048, height: 1536), 13)
        try p.limitTiles(6)
        XCTAssertEqual(p.maxPatches, 6)
        XCTAssertEqual(p.tileCount(width: 2048, height: 1536), 7)  // (3, 2) grid + thumbnail
        try p.limitTiles(1)
        XCTAssertEqual(p.tileCount(width: 2048, height: 1536), 1)
        p.cropToPatches = false
        let image = try XCTUnwrap(RGBImage(width: 30, height: 20, pixels: [UInt8](repeating: 200, count: 1800)))
        XCTAssertEqual(try p.preprocess(image).count, 1)
    }

    func testPromptExpansions() throws {
        let smol = Idefics3ImageProcessor(config: Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: 512, imageSeqLen: 2))
        XCTAssertEqual(smol.promptExpansion(rows: 0, cols: 0),
                       "<fake_token_around_image><global-img><image><image><fake_token_around_image>")
        XCTAssertEqual(smol.promptExpansion(rows: 1, cols: 2),
                       "<fake_token_around_image><row_1_col_1><image><image><fake_token_around_image><row_1_col_2><image><image>\n"
                       + "\n<fake_token_around_image><global-img><image><image><fake_token_around_image>")
        let internVL = InternVLImageProcessor(config: InternVLProcessorConfig(imageSeqLength: 2))
        XCTAssertEqual(internVL.promptExpansion(tileCount: 2), "<img>" + String(repeating: "<IMG_CONTEXT>", count: 4) + "</img>")
    }

    // MARK: - AntialiasResampler properties

    func testConstantImageStaysConstant() throws {
        // Weights sum to one, so a flat image stays flat up and down, for every filter.
        let image = try XCTUnwrap(RGBImage(width: 37, height: 23, pixels: (0..<(37 * 23)).flatMap { _ in [UInt8(17), 128, 250] }))
        for filter in [ResampleFilter.lanczos, .bicubic, .bilinear] {
            for side in [512, 5, 37] {  // after a first upscale to 2048×1272
                let config = Idefics3ProcessorConfig(longestEdge: 2048, maxImageSize: side, imageSeqLen: 1, doImageSplitting: false,
                                                     resample: filter, doRescale: false, doNormalize: false)
                let out = try Idefics3ImageProcessor(config: config).preprocess(image)
                let plane = out.tiles.height * out.tiles.width
                for (c, level) in [Float(17), 128, 250].enumerated() {
                    XCTAssertTrue(out.tiles.values[c * plane ..< (c + 1) * plane].allSatisfy { $0 == level }, "\(filter) \(side) channel \(c)")
                }
            }
        }
    }

    func testSIMDResamplingMatchesTheScalarBodies() throws {
        // The integer passes run in CKernels (resample.c); the AVX2 / NEON bodies must give the scalar bodies'
        // bytes exactly. Odd sizes put row tails outside the 32-byte vertical steps and first/last pixels on the
        // scalar horizontal path; a 0/255 checkerboard makes Lanczos and bicubic overshoot, so clamping is exercised.
        guard vk_simd_level() != 0 else { throw XCTSkip("no SIMD bodies on this CPU") }
        defer { vk_force_scalar(0) }
        let checker = (0..<(61 * 19)).flatMap { i -> [UInt8] in (i % 61 + i / 61) % 2 == 0 ? [0, 255, 0] : [255, 0, 255] }
        let cases: [(String, Int, Int, [UInt8])] = [
            ("noise 37x23", 37, 23, PreprocessSyntheticImage.make(kind: "noise", width: 37, height: 23, seed: 5)),
            ("noise 333x101", 333, 101, PreprocessSyntheticImage.make(kind: "noise", width: 333, height: 101, seed: 6)),
            ("checker 61x19", 61, 19, checker),
            ("1x1", 1, 1, [9, 200, 77]),
        ]
        for (name, w, h, pixels) in cases {
            let image = try XCTUnwrap(RGBImage(width: w, height: h, pixels: pixels))
            for filter in [ResampleFilter.lanczos, .bicubic, .bilinear] {
                for (longest, side) in [(97, 31), (300, 512), (2048, 512), (13, 45)] {
                    let config = Idefics3ProcessorConfig(longestEdge: longest, maxImageSize: side, imageSeqLen: 1,
                                                         doImageSplitting: false, resample: filter,
                                                         doRescale: false, doNormalize: false)
                    let processor = Idefics3ImageProcessor(config: config)
                    vk_force_scalar(1)
                    let scalar = try processor.preprocess(image).tiles.values
                    vk_force_scalar(0)
                    let simd = try processor.preprocess(image).tiles.values
                    XCTAssertEqual(simd.count, scalar.count)
                    let mismatch = simd.indices.first { simd[$0] != scalar[$0] }
                    XCTAssertNil(mismatch, "\(name) \(filter) longest \(longest) side \(side): first differing value at \(mismatch ?? -1)")
                }
            }
        }
    }

    func testSameSizeIsUntouched() throws {
        // InternVL with a 448×448 image: one tile, no resampling, so values are exactly the normalised levels.
        let pixels = PreprocessSyntheticImage.make(kind: "noise", width: 448, height: 448, seed: 3)
        let image = try XCTUnwrap(RGBImage(width: 448, height: 448, pixels: pixels))
        var config = InternVLProcessorConfig()
        config.doNormalize = false
        config.doRescale = false
        let out = try InternVLImageProcessor(config: config).preprocess(image)
        XCTAssertEqual(out.count, 1)
        let plane = 448 * 448
        for i in stride(from: 0, to: plane, by: 997) {
            for c in 0..<3 { XCTAssertEqual(out.tiles.values[c * plane + i], Float(pixels[i * 3 + c])) }
        }
    }
}
