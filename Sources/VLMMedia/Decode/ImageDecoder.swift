import Foundation
#if canImport(CImageCodecs)
import CImageCodecs
#endif

/// Limits applied while decoding untrusted image files.
public struct ImageDecodingOptions: Sendable, Equatable {
    /// Images with more pixels are refused from their header, before any pixel memory is allocated
    /// (decompression bombs). Pillow's own warning threshold is about 89 M pixels.
    public var maxPixels: Int = 64_000_000
    /// Files larger than this are refused before reading.
    public var maxFileBytes: Int = 256 * 1024 * 1024

    public init() {}
}

/// Decodes JPEG and PNG files to 8-bit RGB exactly as transformers' `load_image` sees them:
/// Pillow's decode, `ImageOps.exif_transpose`, then `convert("RGB")` (alpha dropped, 16-bit colour reduced to its
/// high byte, 16-bit gray clipped at 255).
public enum ImageDecoder {
    public enum Format: String, Sendable { case jpeg = "JPEG", png = "PNG" }

    /// The format named by the file's first bytes, or nil.
    public static func detectFormat(_ data: Data) -> Format? {
        if data.count >= 3, data[data.startIndex] == 0xFF, data[data.startIndex + 1] == 0xD8, data[data.startIndex + 2] == 0xFF { return .jpeg }
        if data.count >= 8, data.prefix(8).elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        return nil
    }

    public static func decode(contentsOf url: URL, options: ImageDecodingOptions = .init()) throws -> RGBImage {
        try decode(readFile(url, options: options), source: url.lastPathComponent, options: options)
    }

    /// An image file's bytes, refused before reading when it is missing or over the size limit.
    public static func readFile(_ url: URL, options: ImageDecodingOptions = .init()) throws -> Data {
        let name = url.lastPathComponent
        let attributes = try? FileManager.default.attributesOfItem(atPath: url.path)
        guard let size = attributes?[.size] as? NSNumber else {
            throw ImageError(source: name, "cannot read the file (missing or not accessible)")
        }
        guard size.intValue <= options.maxFileBytes else {
            throw ImageError(source: name, "file is \(size.intValue) bytes, over the \(options.maxFileBytes)-byte limit")
        }
        do { return try Data(contentsOf: url) } catch {
            throw ImageError(source: name, "cannot read the file (\(error.localizedDescription))")
        }
    }

    public static func decode(_ data: Data, source: String, options: ImageDecodingOptions = .init()) throws -> RGBImage {
        guard !data.isEmpty else { throw ImageError(source: source, "file is empty (0 bytes)") }
        guard data.count <= options.maxFileBytes else {
            throw ImageError(source: source, "file is \(data.count) bytes, over the \(options.maxFileBytes)-byte limit")
        }
        guard let format = detectFormat(data) else {
            let head = data.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")
            throw ImageError(source: source, "not a JPEG or PNG image (file starts with \(head))")
        }
        #if canImport(CImageCodecs)
        var image = vi_image()
        let ok: Int32 = data.withUnsafeBytes { buf in
            let p = buf.bindMemory(to: UInt8.self).baseAddress!
            let limit = UInt64(max(0, options.maxPixels))
            return format == .jpeg ? vi_decode_jpeg(p, buf.count, limit, &image) : vi_decode_png(p, buf.count, limit, &image)
        }
        guard ok == 1, let rgb = image.rgb else {
            let message = withUnsafeBytes(of: image.error) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw ImageError(source: source, message.isEmpty ? "cannot decode \(format.rawValue)" : message)
        }
        defer { vi_free(rgb) }
        let width = Int(image.width), height = Int(image.height)
        let pixels = Array(UnsafeBufferPointer(start: rgb, count: width * height * 3))
        guard let decoded = RGBImage(width: width, height: height, pixels: pixels) else {
            throw ImageError(source: source, "decoder returned an invalid \(width)×\(height) image")
        }
        return applyOrientation(decoded, Int(image.orientation))
        #else
        throw ImageError(source: source, "image decoding is not available on this platform")
        #endif
    }

    /// Applies EXIF orientation 1–8 as PIL.ImageOps.exif_transpose does.
    public static func applyOrientation(_ image: RGBImage, _ orientation: Int) -> RGBImage {
        guard (2...8).contains(orientation) else { return image }
        let w = image.width, h = image.height
        let swaps = orientation >= 5
        let ow = swaps ? h : w, oh = swaps ? w : h
        var out = [UInt8](repeating: 0, count: w * h * 3)
        image.pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for r in 0..<oh {
                    for c in 0..<ow {
                        // Source (row, column) of output pixel (r, c).
                        let (sr, sc): (Int, Int)
                        switch orientation {
                        case 2: (sr, sc) = (r, w - 1 - c)            // mirror left-right
                        case 3: (sr, sc) = (h - 1 - r, w - 1 - c)    // rotate 180
                        case 4: (sr, sc) = (h - 1 - r, c)            // mirror top-bottom
                        case 5: (sr, sc) = (c, r)                    // transpose
                        case 6: (sr, sc) = (h - 1 - c, r)            // rotate 90° clockwise
                        case 7: (sr, sc) = (h - 1 - c, w - 1 - r)    // transverse
                        default: (sr, sc) = (c, w - 1 - r)           // 8: rotate 90° counter-clockwise
                        }
                        let s = (sr * w + sc) * 3, d = (r * ow + c) * 3
                        dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]
                    }
                }
            }
        }
        return RGBImage(width: ow, height: oh, pixels: out) ?? image
    }
}
