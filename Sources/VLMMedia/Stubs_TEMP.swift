// TEMPORARY stand-ins until Decode/ and Preprocess/ land. Delete this file then.
import Foundation
public struct ImageDecodingOptions: Sendable, Equatable { public var maxPixels: Int = 64_000_000; public init() {} }
public enum ImageDecoder {
    public static func decode(_ data: Data, source: String, options: ImageDecodingOptions = .init()) throws -> RGBImage { throw ImageError(source: source, "stub") }
    public static func decode(contentsOf url: URL, options: ImageDecodingOptions = .init()) throws -> RGBImage { throw ImageError(source: url.path, "stub") }
}
public struct PixelTiles: Sendable { public let count: Int; public let height: Int; public let width: Int; public var values: [Float] }
public struct Idefics3ImageProcessor: Sendable {
    public init(directory: URL) throws {}
    public var doImageSplitting = true
    public mutating func limitTiles(_ n: Int) throws {}
    public func preprocess(_ image: RGBImage) throws -> (tiles: PixelTiles, rows: Int, cols: Int) { throw ImageError(source: "", "stub") }
    public func promptExpansion(rows: Int, cols: Int) -> String { "" }
}
public struct InternVLImageProcessor: Sendable {
    public init(directory: URL) throws {}
    public mutating func limitTiles(_ n: Int) throws {}
    public func preprocess(_ image: RGBImage) throws -> (tiles: PixelTiles, count: Int) { throw ImageError(source: "", "stub") }
    public func promptExpansion(tileCount: Int) -> String { "" }
}
