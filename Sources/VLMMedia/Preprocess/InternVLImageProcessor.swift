// InternVL (InternVL3-1B-hf) image preprocessing and image-token expansion.
// Ports transformers 5.23 models/got_ocr2/image_processing_got_ocr2.py (GotOcr2ImageProcessor, the torchvision
// backend AutoImageProcessor picks for GotOcr2ImageProcessor(Fast)) with crop_to_patches, and
// models/internvl/processing_internvl.py (InternVLProcessor, which passes crop_to_patches=True whatever
// preprocessor_config.json says, and replace_image_token).
//
// Pipeline for one image (all resizes: bicubic a = −0.5 with antialias on uint8, see Resample.swift):
// 1. Grid: among (cols, rows) with min_patches ≤ cols·rows ≤ max_patches (ordered by cols·rows, then cols, then
//    rows), the one whose cols/rows is closest to the image's width/height; on a tie the later grid wins while
//    the image area exceeds half the grid's pixel area.
// 2. Resize the original to (cols·448)×(rows·448), cut it into row-major 448×448 tiles; when there is more than
//    one, append a thumbnail: the original resized to 448×448.
// 3. Rescale 1/255 and normalise (ImageNet mean/std for InternVL3) in f32.
// Without crop_to_patches: the image resized to 448×448, one tile.

import Foundation

/// Settings of InternVL's GotOcr2 image processor: preprocessor_config.json plus processor_config.json's
/// `image_seq_length`. Absent keys take GotOcr2ImageProcessor's class defaults (CLIP mean/std, bicubic, 1…12
/// patches), except `size` and `image_seq_length`, which are required.
public struct InternVLProcessorConfig: Decodable, Sendable, Equatable {
    /// `size.height` / `size.width`: the tile size (InternVL3: 448×448).
    public var tileHeight: Int
    public var tileWidth: Int
    /// `crop_to_patches` as written in the file (InternVLProcessor overrides it with true; see
    /// `InternVLImageProcessor.cropToPatches`).
    public var cropToPatches: Bool
    public var minPatches: Int
    public var maxPatches: Int
    public var resample: ResampleFilter
    public var doResize: Bool
    public var doRescale: Bool
    public var rescaleFactor: Double
    public var doNormalize: Bool
    public var imageMean: [Double]
    public var imageStd: [Double]
    /// `<IMG_CONTEXT>` tokens per tile (processor_config.json `image_seq_length`; InternVL3: 256). 0 until set.
    public var imageSeqLength: Int

    /// GotOcr2ImageProcessor's class defaults (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
    public static let clipMean = [0.48145466, 0.4578275, 0.40821073]
    public static let clipStd = [0.26862954, 0.26130258, 0.27577711]
    /// What InternVL3-1B-hf's preprocessor_config.json sets (IMAGENET_DEFAULT_MEAN / STD).
    public static let imageNetMean = [0.485, 0.456, 0.406]
    public static let imageNetStd = [0.229, 0.224, 0.225]

    /// A config in code; the defaults are InternVL3-1B-hf's settings.
    public init(tileHeight: Int = 448, tileWidth: Int = 448, imageSeqLength: Int = 256,
                minPatches: Int = 1, maxPatches: Int = 12, cropToPatches: Bool = true,
                resample: ResampleFilter = .bicubic, doResize: Bool = true,
                doRescale: Bool = true, rescaleFactor: Double = 1.0 / 255.0, doNormalize: Bool = true,
                imageMean: [Double] = InternVLProcessorConfig.imageNetMean,
                imageStd: [Double] = InternVLProcessorConfig.imageNetStd) {
        self.tileHeight = tileHeight
        self.tileWidth = tileWidth
        self.cropToPatches = cropToPatches
        self.minPatches = minPatches
        self.maxPatches = maxPatches
        self.resample = resample
        self.doResize = doResize
        self.doRescale = doRescale
        self.rescaleFactor = rescaleFactor
        self.doNormalize = doNormalize
        self.imageMean = imageMean
        self.imageStd = imageStd
        self.imageSeqLength = imageSeqLength
    }

    enum CodingKeys: String, CodingKey {
        case imageProcessorType = "image_processor_type"
        case size
        case cropToPatches = "crop_to_patches"
        case minPatches = "min_patches"
        case maxPatches = "max_patches"
        case resample
        case doResize = "do_resize"
        case doRescale = "do_rescale"
        case rescaleFactor = "rescale_factor"
        case doNormalize = "do_normalize"
        case imageMean = "image_mean"
        case imageStd = "image_std"
        case imageSeqLength = "image_seq_length"
    }

    /// Decodes preprocessor_config.json (`image_seq_length` may be absent: it lives in processor_config.json).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let type = try c.decodeIfPresent(String.self, forKey: .imageProcessorType), !type.hasPrefix("GotOcr2ImageProcessor") {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor,
                                       "image_processor_type is \"\(type)\"; expected GotOcr2ImageProcessor(Fast) (is this an InternVL folder?)")
        }
        guard let size = try c.decodeIfPresent(ProcessorSizeDict.self, forKey: .size) else {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor, "missing key \"size\" (InternVL3: {\"height\": 448, \"width\": 448})")
        }
        guard let height = size.height, let width = size.width else {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor, "\"size\" needs \"height\" and \"width\" (InternVL3: {\"height\": 448, \"width\": 448})")
        }
        let resample = try ResampleFilter(pilCode: c.decodeIfPresent(Int.self, forKey: .resample) ?? ResampleFilter.bicubic.rawValue)
        self.init(
            tileHeight: height, tileWidth: width,
            imageSeqLength: try c.decodeIfPresent(Int.self, forKey: .imageSeqLength) ?? 0,
            minPatches: try c.decodeIfPresent(Int.self, forKey: .minPatches) ?? 1,
            maxPatches: try c.decodeIfPresent(Int.self, forKey: .maxPatches) ?? 12,
            cropToPatches: try c.decodeIfPresent(Bool.self, forKey: .cropToPatches) ?? false,
            resample: resample,
            doResize: try c.decodeIfPresent(Bool.self, forKey: .doResize) ?? true,
            doRescale: try c.decodeIfPresent(Bool.self, forKey: .doRescale) ?? true,
            rescaleFactor: try c.decodeIfPresent(Double.self, forKey: .rescaleFactor) ?? 1.0 / 255.0,
            doNormalize: try c.decodeIfPresent(Bool.self, forKey: .doNormalize) ?? true,
            imageMean: try c.decodeIfPresent(ProcessorChannelValues.self, forKey: .imageMean)?.values ?? Self.clipMean,
            imageStd: try c.decodeIfPresent(ProcessorChannelValues.self, forKey: .imageStd)?.values ?? Self.clipStd)
    }

    /// Reads `directory`/preprocessor_config.json and the `image_seq_length` of processor_config.json, then validates.
    public init(directory: URL) throws {
        self = try ProcessorConfigFiles.decode(InternVLProcessorConfig.self, ProcessorConfigFiles.preprocessor, in: directory)
        let processorFile = directory.appendingPathComponent(ProcessorConfigFiles.processor)
        if FileManager.default.fileExists(atPath: processorFile.path),
           let seqLen = try ProcessorConfigFiles.decode(ProcessorSettings.self, ProcessorConfigFiles.processor, in: directory).imageSeqLength {
            imageSeqLength = seqLen
        }
        if imageSeqLength == 0 {
            throw ProcessorConfigError(file: processorFile.path,
                                       "no \"image_seq_length\" here or in preprocessor_config.json (InternVL3: 256 <IMG_CONTEXT> tokens per tile)")
        }
        try validate()
    }

    /// Largest `max_patches` accepted (InternVL uses 6 to 12; more is a typo that would allocate gigabytes).
    public static let patchLimit = 256

    public func validate() throws {
        let file = ProcessorConfigFiles.preprocessor
        try ProcessorConfigChecks.side(tileHeight, "size.height", file: file)
        try ProcessorConfigChecks.side(tileWidth, "size.width", file: file)
        guard minPatches >= 1, maxPatches >= minPatches, maxPatches <= Self.patchLimit else {
            throw ProcessorConfigError(file: file, "min_patches \(minPatches), max_patches \(maxPatches); expected 1 ≤ min_patches ≤ max_patches ≤ \(Self.patchLimit)")
        }
        try ProcessorConfigChecks.normalization(doRescale: doRescale, rescaleFactor: rescaleFactor, doNormalize: doNormalize,
                                       mean: imageMean, std: imageStd, file: file)
        try ProcessorConfigChecks.imageSeqLen(imageSeqLength, key: "image_seq_length", file: ProcessorConfigFiles.processor, hint: "InternVL3: 256")
    }
}

/// InternVL image processor: an RGB image to 448×448 tiles (grid tiles, then a thumbnail), and the prompt text.
public struct InternVLImageProcessor: Sendable {
    public static let startImageToken = "<img>"
    public static let contextImageToken = "<IMG_CONTEXT>"
    public static let endImageToken = "</img>"

    public var config: InternVLProcessorConfig
    /// Cut the image into a grid of tiles. InternVLProcessor always passes true (its `images_kwargs`), overriding
    /// the file's `crop_to_patches`, so this starts true; false gives one tile, the image resized to 448×448.
    public var cropToPatches = true

    public init(config: InternVLProcessorConfig) {
        self.config = config
    }

    public init(directory: URL) throws {
        self.init(config: try InternVLProcessorConfig(directory: directory))
    }

    /// transformers' `max_patches`: the most grid tiles (the thumbnail is extra). 1 = the global image only.
    public var maxPatches: Int {
        get { config.maxPatches }
        set { config.maxPatches = newValue }
    }

    public var minPatches: Int {
        get { config.minPatches }
        set { config.minPatches = newValue }
    }

    public var imageSeqLength: Int { config.imageSeqLength }

    /// Caps the grid at `maxTiles` tiles, not counting the thumbnail (CLI `--max-tiles`): `max_patches = maxTiles`.
    public mutating func limitTiles(_ maxTiles: Int) throws {
        guard maxTiles >= 1, maxTiles <= InternVLProcessorConfig.patchLimit else {
            throw ProcessorConfigError(file: "options", "max tiles is \(maxTiles); expected 1...\(InternVLProcessorConfig.patchLimit)")
        }
        maxPatches = maxTiles
        minPatches = min(minPatches, maxTiles)
    }

    /// `get_optimal_tiled_canvas`: the (columns, rows) grid for an image of this size.
    public func tileGrid(width: Int, height: Int) -> (cols: Int, rows: Int) {
        guard cropToPatches, config.maxPatches >= 1 else { return (1, 1) }
        var grids: [(cols: Int, rows: Int)] = []
        for c in 1...config.maxPatches {
            for r in 1...config.maxPatches where c * r <= config.maxPatches && c * r >= config.minPatches {
                grids.append((c, r))
            }
        }
        // Python's sorted() is stable; Swift's sort is not guaranteed to be, so sort indices with a tie-break.
        let order = grids.indices.sorted { a, b in
            let pa = grids[a].cols * grids[a].rows, pb = grids[b].cols * grids[b].rows
            return pa != pb ? pa < pb : a < b
        }
        let aspect = Double(width) / Double(height)
        let area = Double(width * height)
        var bestDiff = Double.infinity
        var best = (cols: 1, rows: 1)
        for index in order {
            let grid = grids[index]
            let diff = abs(aspect - Double(grid.cols) / Double(grid.rows))
            if diff < bestDiff {
                bestDiff = diff
                best = grid
            } else if diff == bestDiff {
                // Python: area > 0.5 * tile_h * tile_w * cols * rows, evaluated left to right in double.
                if area > 0.5 * Double(config.tileHeight) * Double(config.tileWidth) * Double(grid.cols) * Double(grid.rows) {
                    best = grid
                }
            }
        }
        return best
    }

    /// How many tiles `preprocess` returns for an image of this size (grid plus thumbnail when the grid has > 1).
    public func tileCount(width: Int, height: Int) -> Int {
        let g = tileGrid(width: width, height: height)
        let blocks = g.cols * g.rows
        return blocks > 1 ? blocks + 1 : 1
    }

    /// Tiles in transformers' order (row-major grid tiles, then the thumbnail) and their count.
    public func preprocess(_ image: RGBImage) throws -> (tiles: PixelTiles, count: Int) {
        try config.validate()
        let th = config.tileHeight, tw = config.tileWidth
        let normalizer = PixelNormalizer(doRescale: config.doRescale, rescaleFactor: config.rescaleFactor,
                                         doNormalize: config.doNormalize, mean: config.imageMean, std: config.imageStd)
        let original = RGB8Raster(image)
        guard cropToPatches else {
            var tiles = TileAssembler(height: th, width: tw, normalizer: normalizer, expectedCount: 1)
            // Without resizing transformers would return the image at its own size; we need tiles of the encoder's.
            guard config.doResize || (image.width == tw && image.height == th) else {
                throw ImageError(source: "image \(image.width)×\(image.height)",
                                 "do_resize is false and crop_to_patches is off, so the image must already be \(tw)×\(th)")
            }
            tiles.append(AntialiasResampler.resize(original, width: tw, height: th, filter: config.resample), x: 0, y: 0)
            let out = tiles.finish()
            return (out, out.count)
        }
        let grid = tileGrid(width: image.width, height: image.height)
        let blocks = grid.cols * grid.rows
        var tiles = TileAssembler(height: th, width: tw, normalizer: normalizer, expectedCount: blocks + 1)
        let canvas = AntialiasResampler.resize(original, width: grid.cols * tw, height: grid.rows * th, filter: config.resample)
        for r in 0..<grid.rows {
            for c in 0..<grid.cols {
                tiles.append(canvas, x: c * tw, y: r * th)
            }
        }
        if blocks != 1 {
            tiles.append(AntialiasResampler.resize(original, width: tw, height: th, filter: config.resample), x: 0, y: 0)
        }
        // The later do_resize to size is a no-op: every tile already has that size.
        let out = tiles.finish()
        return (out, out.count)
    }

    /// The text that replaces one `<IMG_CONTEXT>` placeholder, as InternVLProcessor expands it:
    /// `<img>` + `<IMG_CONTEXT>` × (image_seq_length × tiles) + `</img>`.
    public func promptExpansion(tileCount: Int) -> String {
        Self.startImageToken
            + String(repeating: Self.contextImageToken, count: config.imageSeqLength * max(tileCount, 0))
            + Self.endImageToken
    }
}
