import Foundation
import VLMMedia
import XCTest

/// Idefics3/SmolVLM and InternVL preprocessing against transformers 5.23's processors (torchvision backend, the
/// default), from Tests/Fixtures/preprocess (Tools/fixtures/preprocess_goldens.py): identical tile counts and
/// grids, identical expanded prompts, pixel values within 0.02 max-abs and 0.002 mean-abs after normalisation on
/// sampled full rows of every tile, and on 32×32 block means and per-tile channel means of the whole tensor.
/// (Measured: bit-exact uint8 levels, so the differences are f32 rounding, ~1e-7.)
final class PreprocessGoldenTests: XCTestCase {
    static let maxAbsTolerance: Float = 0.02
    static let meanAbsTolerance: Double = 0.002

    func testSmolVLMWithSplitting() throws { try runConfig("smolvlm_split") }
    func testSmolVLMWithoutSplitting() throws { try runConfig("smolvlm_nosplit") }
    func testSmolVLMLongestEdge1024() throws { try runConfig("smolvlm_longest1024") }
    func testInternVLMaxPatches12() throws { try runConfig("internvl_max12") }
    func testInternVLMaxPatches1() throws { try runConfig("internvl_max1") }

    func testFixturesUseTheTorchvisionBackend() throws {
        let index = try PreprocessFixtures.index()
        XCTAssertEqual(index.backends["idefics3"], "Idefics3ImageProcessor (torchvision)")
        XCTAssertEqual(index.backends["internvl"], "GotOcr2ImageProcessor (torchvision)")
    }

    func runConfig(_ name: String) throws {
        let index = try PreprocessFixtures.index()
        let config = try XCTUnwrap(index.configs[name], "no config \(name) in index.json")
        let directory = PreprocessFixtures.root.appendingPathComponent(config.dir)
        let images = Dictionary(uniqueKeysWithValues: index.images.map { ($0.name, $0) })
        let cases = index.cases.filter { $0.config == name }
        XCTAssertFalse(cases.isEmpty)
        for golden in cases {
            let image = try PreprocessFixtures.image(try XCTUnwrap(images[golden.image]))
            let tiles: PixelTiles
            let expanded: String
            switch config.family {
            case "idefics3":
                var processor = try Idefics3ImageProcessor(directory: directory)
                if let split = config.kwargs.do_image_splitting { processor.doImageSplitting = split }
                if let size = config.kwargs.size { processor.longestEdge = size.longest_edge }
                let out = try processor.preprocess(image)
                XCTAssertEqual(out.rows, golden.rows, golden.case)
                XCTAssertEqual(out.cols, golden.cols, golden.case)
                let predicted = processor.tileGrid(width: image.width, height: image.height)
                XCTAssertEqual(predicted.rows, out.rows, golden.case)
                XCTAssertEqual(predicted.cols, out.cols, golden.case)
                tiles = out.tiles
                expanded = processor.promptExpansion(rows: out.rows, cols: out.cols)
            case "internvl":
                var processor = try InternVLImageProcessor(directory: directory)
                if let maxPatches = config.kwargs.max_patches { processor.maxPatches = maxPatches }
                let out = try processor.preprocess(image)
                XCTAssertEqual(out.count, out.tiles.count)
                let grid = processor.tileGrid(width: image.width, height: image.height)
                XCTAssertEqual(grid.cols, golden.grid_cols, golden.case)
                XCTAssertEqual(grid.rows, golden.grid_rows, golden.case)
                XCTAssertEqual(processor.tileCount(width: image.width, height: image.height), out.count, golden.case)
                tiles = out.tiles
                expanded = processor.promptExpansion(tileCount: out.count)
            default:
                XCTFail("unknown family \(config.family)")
                continue
            }
            XCTAssertEqual(tiles.count, golden.tiles, golden.case)
            XCTAssertEqual(tiles.height, golden.tile_height, golden.case)
            XCTAssertEqual(tiles.width, golden.tile_width, golden.case)
            guard tiles.count == golden.tiles, tiles.height == golden.tile_height, tiles.width == golden.tile_width else { continue }

            // The processor's text for "<image>What is this?" (InternVL: "<IMG_CONTEXT>What is this?").
            let text = expanded + "What is this?"
            let reference = PreprocessFixtures.text(golden.expanded_text)
            XCTAssertEqual(reference.count, golden.expanded_text.length)
            XCTAssertEqual(PreprocessFixtures.fnv1a64(Array(reference.utf8)), golden.expanded_text.fnv1a64)
            XCTAssertEqual(text, reference, "\(golden.case): expanded prompt differs")

            try comparePixels(tiles, golden, block: index.block)
        }
    }

    func comparePixels(_ tiles: PixelTiles, _ golden: PreprocessFixtures.Index.Case, block: Int) throws {
        let (h, w, plane) = (tiles.height, tiles.width, tiles.height * tiles.width)
        // Sampled rows: [tiles, 3 rows, 3 channels, width].
        let rows = try PreprocessFixtures.floats(golden.rows_file)
        XCTAssertEqual(rows.count, tiles.count * 3 * 3 * w, golden.case)
        var maxAbs: Float = 0, sumAbs = 0.0, n = 0
        for t in 0..<tiles.count {
            for (k, y) in golden.sample_rows[t].enumerated() {
                for c in 0..<3 {
                    let mine = t * 3 * plane + c * plane + y * w
                    let ref = ((t * 3 + k) * 3 + c) * w
                    for x in 0..<w {
                        let d = abs(tiles.values[mine + x] - rows[ref + x])
                        maxAbs = max(maxAbs, d)
                        sumAbs += Double(d)
                    }
                    n += w
                }
            }
        }
        let meanAbs = sumAbs / Double(n)
        // Whole tensor: 32×32 block means [tiles, 3, h/32, w/32] and per-tile channel means.
        let blocks = try PreprocessFixtures.floats(golden.blocks_file)
        let (bh, bw) = (h / block, w / block)
        XCTAssertEqual(blocks.count, tiles.count * 3 * bh * bw, golden.case)
        var blockMax = 0.0, blockSum = 0.0
        var channelMax = 0.0
        for t in 0..<tiles.count {
            for c in 0..<3 {
                let base = t * 3 * plane + c * plane
                var channelSum = 0.0
                for by in 0..<bh {
                    for bx in 0..<bw {
                        var s = 0.0
                        for y in by * block ..< (by + 1) * block {
                            let row = base + y * w
                            for x in bx * block ..< (bx + 1) * block { s += Double(tiles.values[row + x]) }
                        }
                        channelSum += s
                        let d = abs(s / Double(block * block) - Double(blocks[((t * 3 + c) * bh + by) * bw + bx]))
                        blockMax = max(blockMax, d)
                        blockSum += d
                    }
                }
                channelMax = max(channelMax, abs(channelSum / Double(plane) - golden.tile_channel_means[t][c]))
            }
        }
        let blockMean = blockSum / Double(tiles.count * 3 * bh * bw)
        print(String(format: "%@: %d tiles, sampled rows max-abs %.3g mean-abs %.3g; block means max %.3g mean %.3g; channel means max %.3g",
                     golden.case, tiles.count, maxAbs, meanAbs, blockMax, blockMean, channelMax))
        XCTAssertLessThanOrEqual(maxAbs, Self.maxAbsTolerance, "\(golden.case): sampled rows max-abs")
        XCTAssertLessThanOrEqual(meanAbs, Self.meanAbsTolerance, "\(golden.case): sampled rows mean-abs")
        XCTAssertLessThanOrEqual(blockMax, Double(Self.maxAbsTolerance), "\(golden.case): block means max-abs")
        XCTAssertLessThanOrEqual(blockMean, Self.meanAbsTolerance, "\(golden.case): block means mean-abs")
        XCTAssertLessThanOrEqual(channelMax, Self.meanAbsTolerance, "\(golden.case): tile channel means")
    }
}
