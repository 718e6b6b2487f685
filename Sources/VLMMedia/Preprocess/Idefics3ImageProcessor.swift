// Idefics3 / SmolVLM image preprocessing and image-token expansion.
// Ports transformers 5.23 models/idefics3/image_processing_idefics3.py (Idefics3ImageProcessor, the torchvision
// backend that AutoImageProcessor/AutoProcessor pick when torchvision >= 0.27 is installed) and
// models/idefics3/processing_idefics3.py (Idefics3Processor.replace_image_token). SmolVLM2
// (models/smolvlm/) is the same image pipeline and the same prompt string (get_image_prompt_string).
//
// Pipeline for one image (all resizes: Lanczos-3 with antialias on uint8, see Resample.swift):
// 1. do_resize: longest edge → size.longest_edge (SmolVLM: 2048, up or down), the other edge
//    int(edge / aspect) rounded up to even; then both capped so the longest is ≤ 4096.
// 2a. do_image_splitting: resize to multiples of max_image_size (SmolVLM: 512): longest edge ceil(·/512)·512, the
//    other int(longest / aspect) then ceil(·/512)·512. If bigger than one tile: cut rows × cols tiles (row-major),
//    then append the global image (that resized image squashed to 512×512). Otherwise the image is the one tile
//    and rows = cols = 0.
// 2b. no splitting: squash to 512×512; rows = cols = 0.
// 3. Rescale 1/255 and normalise (mean 0.5, std 0.5) in f32. All tiles are 512×512 so do_pad never pads a single
//    image and pixel_attention_mask is all ones.

import Foundation

/// Settings of an Idefics3/SmolVLM image processor: preprocessor_config.json plus processor_config.json's
/// `image_seq_len`. Keys absent from the file take transformers' class defaults, except `size`,
/// `max_image_size` and `image_seq_len`, which are required: transformers' defaults (1456, 364, 169) are
/// Idefics3-8B's and would silently give SmolVLM the wrong tiles and token count.
public struct Idefics3ProcessorConfig: Decodable, Sendable, Equatable {
    public var doResize: Bool
    /// `size.longest_edge`: the image's longest edge is first resized to this (SmolVLM: 2048).
    public var longestEdge: Int
    /// `max_image_size.longest_edge`: the side of each square tile (SmolVLM: 512).
    public var maxImageSize: Int
    public var resample: ResampleFilter
    public var doRescale: Bool
    public var rescaleFactor: Double
    public var doNormalize: Bool
    public var imageMean: [Double]
    public var imageStd: [Double]
    public var doImageSplitting: Bool
    /// `<image>` tokens per tile (processor_config.json `image_seq_len`; SmolVLM: 64). 0 until set.
    public var imageSeqLen: Int

    /// A config in code; unspecified settings are transformers' class defaults (which are also SmolVLM's).
    public init(longestEdge: Int, maxImageSize: Int, imageSeqLen: Int, doImageSplitting: Bool = true,
                resample: ResampleFilter = .lanczos, doResize: Bool = true,
                doRescale: Bool = true, rescaleFactor: Double = 1.0 / 255.0, doNormalize: Bool = true,
                imageMean: [Double] = [0.5, 0.5, 0.5], imageStd: [Double] = [0.5, 0.5, 0.5]) {
        self.doResize = doResize
        self.longestEdge = longestEdge
        self.maxImageSize = maxImageSize
        self.resample = resample
        self.doRescale = doRescale
        self.rescaleFactor = rescaleFactor
        self.doNormalize = doNormalize
        self.imageMean = imageMean
        self.imageStd = imageStd
        self.doImageSplitting = doImageSplitting
        self.imageSeqLen = imageSeqLen
    }

    enum CodingKeys: String, CodingKey {
        case imageProcessorType = "image_processor_type"
        case doResize = "do_resize"
        case size
        case maxImageSize = "max_image_size"
        case resample
        case doRescale = "do_rescale"
        case rescaleFactor = "rescale_factor"
        case doNormalize = "do_normalize"
        case imageMean = "image_mean"
        case imageStd = "image_std"
        case doImageSplitting = "do_image_splitting"
        case imageSeqLen = "image_seq_len"
    }

    static let acceptedTypes = ["Idefics3ImageProcessor", "SmolVLMImageProcessor"]

    /// Decodes preprocessor_config.json (`image_seq_len` may be absent: it lives in processor_config.json).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let type = try c.decodeIfPresent(String.self, forKey: .imageProcessorType),
           !Self.acceptedTypes.contains(where: { type.hasPrefix($0) }) {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor,
                                       "image_processor_type is \"\(type)\"; expected Idefics3ImageProcessor or SmolVLMImageProcessor (is this an Idefics3/SmolVLM folder?)")
        }
        guard let size = try c.decodeIfPresent(ProcessorSizeDict.self, forKey: .size) else {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor, "missing key \"size\" (SmolVLM: {\"longest_edge\": 2048})")
        }
        guard let longest = size.longestEdge else {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor, "\"size\" has no \"longest_edge\" (SmolVLM: {\"longest_edge\": 2048})")
        }
        guard let maxSize = try c.decodeIfPresent(ProcessorSizeDict.self, forKey: .maxImageSize) else {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor, "missing key \"max_image_size\" (SmolVLM: {\"longest_edge\": 512})")
        }
        guard let tile = maxSize.longestEdge else {
            throw ProcessorConfigError(file: ProcessorConfigFiles.preprocessor, "\"max_image_size\" has no \"longest_edge\" (SmolVLM: {\"longest_edge\": 512})")
        }
        let resample = try ResampleFilter(pilCode: c.decodeIfPresent(Int.self, forKey: .resample) ?? ResampleFilter.lanczos.rawValue)
        self.init(
            longestEdge: longest, maxImageSize: tile,
            imageSeqLen: try c.decodeIfPresent(Int.self, forKey: .imageSeqLen) ?? 0,
            doImageSplitting: try c.decodeIfPresent(Bool.self, forKey: .doImageSplitting) ?? true,
            resample: resample,
            doResize: try c.decodeIfPresent(Bool.self, forKey: .doResize) ?? true,
            doRescale: try c.decodeIfPresent(Bool.self, forKey: .doRescale) ?? true,
            rescaleFactor: try c.decodeIfPresent(Double.self, forKey: .rescaleFactor) ?? 1.0 / 255.0,
            doNormalize: try c.decodeIfPresent(Bool.self, forKey: .doNormalize) ?? true,
            imageMean: try c.decodeIfPresent(ProcessorChannelValues.self, forKey: .imageMean)?.values ?? [0.5, 0.5, 0.5],
            imageStd: try c.decodeIfPresent(ProcessorChannelValues.self, forKey: .imageStd)?.values ?? [0.5, 0.5, 0.5])
    }

    /// Reads `directory`/preprocessor_config.json and the `image_seq_len` of processor_config.json, then validates.
    public init(directory: URL) throws {
        self = try ProcessorConfigFiles.decode(Idefics3ProcessorConfig.self, ProcessorConfigFiles.preprocessor, in: directory)
        let processorFile = directory.appendingPathComponent(ProcessorConfigFiles.processor)
        if FileManager.default.fileExists(atPath: processorFile.path),
           let seqLen = try ProcessorConfigFiles.decode(ProcessorSettings.self, ProcessorConfigFiles.processor, in: directory).imageSeqLen {
            imageSeqLen = seqLen
        }
        if imageSeqLen == 0 {
            throw ProcessorConfigError(file: processorFile.path,
                                       "no \"image_seq_len\" here or in preprocessor_config.json (SmolVLM: 64 <image> tokens per tile)")
        }
        try validate()
    }

    /// Throws on values transformers would reject or that cannot be right (zero or huge sizes, bad mean/std).
    public func validate() throws {
        let file = ProcessorConfigFiles.preprocessor
        try ProcessorConfigChecks.side(longestEdge, "size.longest_edge", file: file)
        try ProcessorConfigChecks.side(maxImageSize, "max_image_size.longest_edge", file: file)
        try ProcessorConfigChecks.normalization(doRescale: doRescale, rescaleFactor: rescaleFactor, doNormalize: doNormalize,
                                       mean: imageMean, std: imageStd, file: file)
        try ProcessorConfigChecks.imageSeqLen(imageSeqLen, key: "image_seq_len", file: ProcessorConfigFiles.processor, hint: "SmolVLM: 64")
    }
}

/// Idefics3 / SmolVLM image processor: an RGB image to 512×512 tiles plus the grid, and the prompt text for it.
public struct Idefics3ImageProcessor: Sendable {
    /// transformers' MAX_IMAGE_SIZE: no resized image is longer than this.
    public static let maxImageSide = 4096
    public static let fakeImageToken = "<fake_token_around_image>"
    public static let imageToken = "<image>"
    public static let globalImageToken = "<global-img>"

    public var config: Idefics3ProcessorConfig

    public init(config: Idefics3ProcessorConfig) {
        self.config = config
    }

    /// Reads preprocessor_config.json and processor_config.json from a model folder.
    public init(directory: URL) throws {
        self.init(config: try Idefics3ProcessorConfig(directory: directory))
    }

    /// false = transformers' `do_image_splitting=False`: one 512×512 global image (CLI `--no-image-splitting`).
    public var doImageSplitting: Bool {
        get { config.doImageSplitting }
        set { config.doImageSplitting = newValue }
    }

    /// transformers' `size={"longest_edge": …}`; k × maxImageSize caps the grid at k × k tiles.
    public var longestEdge: Int {
        get { config.longestEdge }
        set { config.longestEdge = newValue }
    }

    /// transformers' `max_image_size={"longest_edge": …}`: the tile side. Must match the vision encoder.
    public var maxImageSize: Int {
        get { config.maxImageSize }
        set { config.maxImageSize = newValue }
    }

    public var imageSeqLen: Int { config.imageSeqLen }

    /// Caps the tile grid at `maxTiles` tiles, not counting the global image (CLI `--max-tiles`): with k = ⌊√maxTiles⌋,
    /// sets `longestEdge` to at most k × maxImageSize (a k × k grid at most, as transformers with that `size`), or,
    /// when k = 1, turns splitting off (the global image alone).
    public mutating func limitTiles(_ maxTiles: Int) throws {
        guard maxTiles >= 1 else {
            throw ProcessorConfigError(file: "options", "max tiles is \(maxTiles); expected at least 1")
        }
        var k = 1
        while (k + 1) * (k + 1) <= maxTiles { k += 1 }
        if k == 1 {
            doImageSplitting = false
        } else {
            longestEdge = min(longestEdge, k * maxImageSize)
        }
    }

    /// The sizes one image goes through (every step a resize, unchanged sizes skipped).
    struct Plan {
        var resized: (width: Int, height: Int)
        /// Splitting only: the multiple-of-tile size.
        var forEncoder: (width: Int, height: Int)?
        var rows: Int
        var cols: Int
    }

    func plan(width: Int, height: Int) -> Plan {
        var (w, h) = (width, height)
        if config.doResize {
            (w, h) = Self.rescaleToMaxLength(width: w, height: h, maxLength: config.longestEdge)
            (w, h) = Self.scaleBelowUpperBound(width: w, height: h, maxLength: Self.maxImageSide)
        }
        guard config.doImageSplitting else {
            return Plan(resized: (w, h), forEncoder: nil, rows: 0, cols: 0)
        }
        let tile = config.maxImageSize
        let (ew, eh) = Self.sizeForVisionEncoder(width: w, height: h, tile: tile)
        if eh > tile || ew > tile {
            return Plan(resized: (w, h), forEncoder: (ew, eh), rows: Self.ceilDiv(eh, tile), cols: Self.ceilDiv(ew, tile))
        }
        return Plan(resized: (w, h), forEncoder: (ew, eh), rows: 0, cols: 0)
    }

    /// The tile grid `preprocess` will produce for an image of this size, without resizing anything.
    public func tileGrid(width: Int, height: Int) -> (rows: Int, cols: Int) {
        let p = plan(width: width, height: height)
        return (p.rows, p.cols)
    }

    /// Tiles in transformers' order (row-major tiles, then the global image last) and the grid (rows, cols;
    /// 0, 0 when not split: then the single tile is the whole image squashed to a tile).
    public func preprocess(_ image: RGBImage) throws -> (tiles: PixelTiles, rows: Int, cols: Int) {
        try config.validate()
        let tile = config.maxImageSize
        let p = plan(width: image.width, height: image.height)
        let normalizer = PixelNormalizer(doRescale: config.doRescale, rescaleFactor: config.rescaleFactor,
                                         doNormalize: config.doNormalize, mean: config.imageMean, std: config.imageStd)
        var raster = AntialiasResampler.resize(RGB8Raster(image), width: p.resized.width, height: p.resized.height,
                                      filter: config.resample)
        var tiles = TileAssembler(height: tile, width: tile, normalizer: normalizer,
                                  expectedCount: p.rows * p.cols + 1)
        guard let encoderSize = p.forEncoder else {
            tiles.append(AntialiasResampler.resize(raster, width: tile, height: tile, filter: config.resample), x: 0, y: 0)
            return (tiles.finish(), 0, 0)
        }
        raster = AntialiasResampler.resize(raster, width: encoderSize.width, height: encoderSize.height, filter: config.resample)
        if p.rows == 0 {
            tiles.append(raster, x: 0, y: 0)  // exactly one tile in size
            return (tiles.finish(), 0, 0)
        }
        for r in 0..<p.rows {
            for c in 0..<p.cols {
                tiles.append(raster, x: c * tile, y: r * tile)
            }
        }
        tiles.append(AntialiasResampler.resize(raster, width: tile, height: tile, filter: config.resample), x: 0, y: 0)
        return (tiles.finish(), p.rows, p.cols)
    }

    /// The text that replaces one `<image>` placeholder, exactly as Idefics3Processor (and SmolVLMProcessor)
    /// expand it: per tile `<fake_token_around_image><row_r_col_c>` + `<image>`×seqLen, a newline after each row,
    /// then `\n<fake_token_around_image><global-img>` + `<image>`×seqLen + `<fake_token_around_image>`; without a
    /// grid (0, 0) only the global part, without the leading newline.
    public func promptExpansion(rows: Int, cols: Int) -> String {
        let images = String(repeating: Self.imageToken, count: config.imageSeqLen)
        let global = Self.fakeImageToken + Self.globalImageToken + images + Self.fakeImageToken
        guard rows > 0, cols > 0 else { return global }
        var text = ""
        for r in 1...rows {
            for c in 1...cols {
                text += Self.fakeImageToken + "<row_\(r)_col_\(c)>" + images
            }
            text += "\n"
        }
        return text + "\n" + global
    }

    // MARK: - Output sizes (Python int() truncation and true division, reproduced with Int(Double))

    /// `_resize_output_size_rescale_to_max_len`: longest edge to maxLength, the other edge rounded up to even.
    static func rescaleToMaxLength(width: Int, height: Int, maxLength: Int) -> (width: Int, height: Int) {
        let aspect = Double(width) / Double(height)
        var (w, h) = (width, height)
        if w >= h {
            w = maxLength
            h = Int(Double(w) / aspect)
            if h % 2 != 0 { h += 1 }
        } else {
            h = maxLength
            w = Int(Double(h) * aspect)
            if w % 2 != 0 { w += 1 }
        }
        return (max(w, 1), max(h, 1))
    }

    /// `_resize_output_size_scale_below_upper_bound`.
    static func scaleBelowUpperBound(width: Int, height: Int, maxLength: Int) -> (width: Int, height: Int) {
        let aspect = Double(width) / Double(height)
        var (w, h) = (width, height)
        if w >= h && w > maxLength {
            w = maxLength
            h = Int(Double(w) / aspect)
        } else if h > w && h > maxLength {
            h = maxLength
            w = Int(Double(h) * aspect)
        }
        return (max(w, 1), max(h, 1))
    }

    /// `resize_for_vision_encoder`: both edges to multiples of the tile, keeping the aspect ratio.
    static func sizeForVisionEncoder(width: Int, height: Int, tile: Int) -> (width: Int, height: Int) {
        let aspect = Double(width) / Double(height)
        var (w, h) = (width, height)
        if w >= h {
            w = ceilDiv(w, tile) * tile
            h = ceilDiv(max(Int(Double(w) / aspect), 1), tile) * tile
        } else {
            h = ceilDiv(h, tile) * tile
            w = ceilDiv(max(Int(Double(h) * aspect), 1), tile) * tile
        }
        return (w, h)
    }

    /// `math.ceil(a / b)` for non-negative ints.
    static func ceilDiv(_ a: Int, _ b: Int) -> Int { (a + b - 1) / b }
}
