// The vision encoder's input: normalised f32 tiles, channel-first like torch's pixel_values.

import Foundation

/// A stack of image tiles ready for the vision encoder: `[count, 3, height, width]` f32, channel-first like torch.
public struct PixelTiles: Sendable, Equatable {
    public static let channels = 3

    public let count: Int
    public let height: Int
    public let width: Int
    /// `[count, 3, height, width]`, row-major.
    public var values: [Float]

    /// `values.count` must be `count × 3 × height × width`.
    public init(count: Int, height: Int, width: Int, values: [Float]) {
        precondition(count >= 0 && height > 0 && width > 0 && values.count == count * Self.channels * height * width,
                     "PixelTiles: \(values.count) values for \(count)×3×\(height)×\(width)")
        self.count = count
        self.height = height
        self.width = width
        self.values = values
    }

    /// Floats per tile (3 × height × width).
    public var tileStride: Int { Self.channels * height * width }

    /// Tile `index` as `[3, height, width]`.
    public func tile(_ index: Int) -> ArraySlice<Float> {
        values[index * tileStride ..< (index + 1) * tileStride]
    }
}

/// Rescale and normalise exactly as transformers' torchvision backend does (`rescale_and_normalize`), by lookup
/// table since inputs are uint8 levels. With both steps on, the two are fused: mean and std are float32 tensors
/// multiplied by 1/rescale_factor (in f32), then `(x − mean′) / std′` in f32.
struct PixelNormalizer: Sendable {
    /// `[3, 256]`: the output value of each level, per channel.
    let table: [Float]

    init(doRescale: Bool, rescaleFactor: Double, doNormalize: Bool, mean: [Double], std: [Double]) {
        var table = [Float](repeating: 0, count: 3 * 256)
        for c in 0..<3 {
            for level in 0..<256 {
                let x = Float(level)
                let value: Float
                if doNormalize {
                    var m = Float(mean[c]), s = Float(std[c])
                    if doRescale {
                        let inverse = Float(1.0 / rescaleFactor)
                        m *= inverse
                        s *= inverse
                    }
                    value = (x - m) / s
                } else if doRescale {
                    value = x * Float(rescaleFactor)
                } else {
                    value = x
                }
                table[c * 256 + level] = value
            }
        }
        self.table = table
    }
}

/// Collects tiles cut from rasters into one channel-first f32 buffer.
struct TileAssembler {
    let height: Int
    let width: Int
    let normalizer: PixelNormalizer
    private(set) var count = 0
    private var values: [Float] = []

    init(height: Int, width: Int, normalizer: PixelNormalizer, expectedCount: Int) {
        self.height = height
        self.width = width
        self.normalizer = normalizer
        values.reserveCapacity(expectedCount * 3 * height * width)
    }

    /// Appends the `height`×`width` region of `raster` whose top-left corner is (`x`, `y`).
    mutating func append(_ raster: RGB8Raster, x: Int, y: Int) {
        precondition(x >= 0 && y >= 0 && x + width <= raster.width && y + height <= raster.height,
                     "tile at (\(x), \(y)) outside \(raster.width)×\(raster.height)")
        let plane = height * width
        let base = values.count
        values.append(contentsOf: repeatElement(0, count: 3 * plane))
        let rowStride = raster.width * 3
        raster.pixels.withUnsafeBufferPointer { src in
            normalizer.table.withUnsafeBufferPointer { lut in
                values.withUnsafeMutableBufferPointer { dst in
                    for row in 0..<height {
                        let s = (y + row) * rowStride + x * 3
                        let d = base + row * width
                        for col in 0..<width {
                            let p = s + col * 3
                            dst[d + col] = lut[Int(src[p])]
                            dst[d + plane + col] = lut[256 + Int(src[p + 1])]
                            dst[d + 2 * plane + col] = lut[512 + Int(src[p + 2])]
                        }
                    }
                }
            }
        }
        count += 1
    }

    func finish() -> PixelTiles {
        PixelTiles(count: count, height: height, width: width, values: values)
    }
}
