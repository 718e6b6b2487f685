// Anti-aliased resizing of 8-bit RGB images, bit-exact with what transformers 5.23's default (torchvision) image
// processors get from `torchvision.transforms.v2.functional.resize(uint8 tensor, antialias=True)` on an x86-64 CPU
// with AVX2: torch's `_upsample_{bilinear,bicubic,lanczos}2d_aa` uint8 kernel (aten/src/ATen/native/cpu/
// UpSampleKernel.cpp + UpSampleKernelAVXAntialias.h, a port of Pillow-SIMD's Resample.c).
//
// The algorithm, step by step (each detail changes output levels, so none is optional):
// - Separable: a horizontal pass (only when the width changes), then a vertical pass (only when the height
//   changes), with the intermediate image rounded and clamped to uint8 between the two.
// - Per output index i: scale = in/out (double), support = taps/2 · max(scale, 1), center = scale · (i + 0.5),
//   first input = max(Int(center − support + 0.5), 0), count = min(Int(center + support + 0.5), in) − first,
//   weight_j = filter((j + first − center + 0.5) / max(scale, 1)), normalised to sum 1. So upscaling uses the
//   filter at its natural width (no antialias widening), downscaling widens it by the scale factor.
// - Weights become int16 fixed point: the precision p is the largest p ≤ 22 with round(maxWeight · 2^(p+1)) < 2^15
//   (computed over all outputs of the axis); w = round-half-away(weight · 2^p).
// - Accumulate in int32 from 2^(p−1) (rounding), arithmetic shift right by p, clamp to [0, 255].
// - Filters: bilinear = triangle (2 taps), bicubic = Keys cubic with a = −0.5 (4 taps; PIL's, not torch's
//   float-path −0.75), Lanczos = sinc(x)·sinc(x/3) on |x| < 3 (6 taps).
// Verified bit-exact against torch 2.13 / torchvision 0.28 (see Tools/fixtures/preprocess_goldens.py).
// PIL's own resize (transformers' "pil" backend) differs by at most about one level: it uses 22-bit int32 weights.
// The weights are computed here; the two integer passes run in CKernels (resample.c: AVX2 / NEON / scalar, exact
// in every body), split by rows across the cores.

import CKernels
import Foundation

/// The resampling filters transformers' image processors name with PIL codes.
public enum ResampleFilter: Int, Sendable, Equatable, CustomStringConvertible {
    case lanczos = 1
    case bilinear = 2
    case bicubic = 3

    /// From the `resample` value of preprocessor_config.json (PIL.Image.Resampling codes).
    public init(pilCode: Int) throws {
        guard let filter = ResampleFilter(rawValue: pilCode) else {
            let names = [0: "NEAREST", 4: "BOX", 5: "HAMMING"]
            throw ProcessorConfigError(
                file: "preprocessor_config.json",
                "resample \(pilCode)\(names[pilCode].map { " (\($0))" } ?? "") is not supported; use 1 (LANCZOS), 2 (BILINEAR) or 3 (BICUBIC)")
        }
        self = filter
    }

    public var description: String {
        switch self {
        case .lanczos: return "lanczos"
        case .bilinear: return "bilinear"
        case .bicubic: return "bicubic"
        }
    }

    /// Taps of the filter at scale 1 (torch's `interp_size`).
    var taps: Int {
        switch self {
        case .bilinear: return 2
        case .bicubic: return 4
        case .lanczos: return 6
        }
    }

    /// The continuous filter, in double as torch evaluates it (`aa_filter`).
    func weight(_ t: Double) -> Double {
        let x = abs(t)
        switch self {
        case .bilinear:
            return x < 1 ? 1 - x : 0
        case .bicubic:
            let a = -0.5
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
            return 0
        case .lanczos:
            guard x < 3 else { return 0 }
            return Self.sinc(x) * Self.sinc(x / 3)
        }
    }

    private static func sinc(_ x: Double) -> Double {
        if x == 0 { return 1 }
        let px = x * Double.pi
        return sin(px) / px
    }
}

/// An interleaved 8-bit RGB raster (rows top to bottom), the working format between resize and crop.
/// `RGBImage` has a failable init for untrusted buffers; this one is only built by our own code.
struct RGB8Raster: Sendable {
    var width: Int
    var height: Int
    var pixels: [UInt8]  // [height, width, 3]

    init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3, "RGB8Raster: \(pixels.count) bytes for \(width)×\(height)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    init(_ image: RGBImage) {
        self.init(width: image.width, height: image.height, pixels: image.pixels)
    }
}

/// Fixed-point weights of one axis: output i reads `counts[i]` inputs from `starts[i]` with
/// `weights[i * stride ..< i * stride + counts[i]]`; the rest of each row of `weights` is zero. `stride` is a
/// multiple of 4 because the SIMD horizontal pass reads taps in groups of four.
struct AxisWeights {
    let starts: [Int32]
    let counts: [Int32]
    let stride: Int
    let weights: [Int16]
    let precision: Int32

    init(inputSize: Int, outputSize: Int, filter: ResampleFilter) {
        let scale = Double(inputSize) / Double(outputSize)
        let halfTaps = Double(filter.taps) * 0.5
        let support = scale >= 1 ? halfTaps * scale : halfTaps
        let invScale = scale >= 1 ? 1 / scale : 1
        let maxTaps = Int(support.rounded(.up)) * 2 + 1
        let stride = (maxTaps + 3) / 4 * 4
        var starts = [Int32](repeating: 0, count: outputSize)
        var counts = [Int32](repeating: 0, count: outputSize)
        var real = [Double](repeating: 0, count: outputSize * stride)
        var maxWeight = 0.0
        for i in 0..<outputSize {
            let center = scale * (Double(i) + 0.5)
            let first = max(Int(center - support + 0.5), 0)
            let count = min(max(min(Int(center + support + 0.5), inputSize) - first, 0), maxTaps)
            starts[i] = Int32(first)
            counts[i] = Int32(count)
            var total = 0.0
            for j in 0..<count {
                let w = filter.weight((Double(j + first) - center + 0.5) * invScale)
                real[i * stride + j] = w
                total += w
            }
            if total != 0 {
                for j in 0..<count {
                    real[i * stride + j] /= total
                    maxWeight = max(maxWeight, real[i * stride + j])
                }
            }
        }
        var precision = 0
        while precision < 22 {
            if Int(0.5 + maxWeight * Double(1 << (precision + 1))) >= (1 << 15) { break }
            precision += 1
        }
        // The precision keeps round(maxWeight · 2^(p+1)) below 2^15, so every weight (|w| ≤ maxWeight for the
        // normalised filters) fits int16; clamping only documents that.
        let unit = Double(1 << precision)
        self.weights = real.map { w in
            let v = w * unit
            return Int16(clamping: v < 0 ? Int(-0.5 + v) : Int(0.5 + v))
        }
        self.starts = starts
        self.counts = counts
        self.stride = stride
        self.precision = Int32(precision)
    }
}

enum AntialiasResampler {
    /// Resizes to `width`×`height`; returns the input unchanged when the size is the same (as torchvision does).
    static func resize(_ image: RGB8Raster, width: Int, height: Int, filter: ResampleFilter) -> RGB8Raster {
        precondition(width > 0 && height > 0, "resize to \(width)×\(height)")
        var out = image
        if width != image.width {
            out = horizontal(out, width: width, weights: AxisWeights(inputSize: image.width, outputSize: width, filter: filter))
        }
        if height != image.height {
            out = vertical(out, height: height, weights: AxisWeights(inputSize: image.height, outputSize: height, filter: filter))
        }
        return out
    }

    /// Horizontal pass: each output pixel is a weighted sum along its row.
    private static func horizontal(_ src: RGB8Raster, width outWidth: Int, weights: AxisWeights) -> RGB8Raster {
        let rows = src.height
        var out = [UInt8](repeating: 0, count: rows * outWidth * 3)
        let work = rows * outWidth * weights.stride
        src.pixels.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                weights.starts.withUnsafeBufferPointer { starts in
                    weights.counts.withUnsafeBufferPointer { counts in
                        weights.weights.withUnsafeBufferPointer { w in
                            forEachRowRange(rows, work: work) { y0, y1 in
                                vk_resample_horizontal_rgb8(inp.baseAddress, src.width, y0, y1, outp.baseAddress,
                                                            outWidth, starts.baseAddress, counts.baseAddress,
                                                            w.baseAddress, weights.stride, weights.precision, rows)
                            }
                        }
                    }
                }
            }
        }
        return RGB8Raster(width: outWidth, height: rows, pixels: out)
    }

    /// Vertical pass: each output row is a weighted sum of whole input rows (contiguous, vectorisable).
    private static func vertical(_ src: RGB8Raster, height outHeight: Int, weights: AxisWeights) -> RGB8Raster {
        let row = src.width * 3
        var out = [UInt8](repeating: 0, count: outHeight * row)
        let work = outHeight * row * weights.stride
        src.pixels.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                weights.weights.withUnsafeBufferPointer { w in
                    forEachRowRange(outHeight, work: work) { y0, y1 in
                        for y in y0..<y1 {
                            let first = Int(weights.starts[y])
                            vk_resample_vertical_u8(inp.baseAddress.map { $0 + first * row }, row,
                                                    Int(weights.counts[y]), w.baseAddress.map { $0 + y * weights.stride },
                                                    weights.precision, outp.baseAddress.map { $0 + y * row }, row)
                        }
                    }
                }
            }
        }
        return RGB8Raster(width: src.width, height: outHeight, pixels: out)
    }

    /// Splits output rows [0, rows) into one contiguous range per core when the pass is big enough to be worth
    /// the threads (a few million multiply-adds); each range writes only its own output rows.
    private static func forEachRowRange(_ rows: Int, work: Int, _ body: (Int, Int) -> Void) {
        let parts = min(ProcessInfo.processInfo.activeProcessorCount, rows, max(work / 2_000_000, 1))
        guard parts > 1 else {
            body(0, rows)
            return
        }
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            body(rows * part / parts, rows * (part + 1) / parts)
        }
    }
}
