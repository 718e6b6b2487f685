// TEMPORARY stand-ins until Decode/ lands (Preprocess/ has landed: its stubs are gone). Delete this file then.
import Foundation
public struct ImageDecodingOptions: Sendable, Equatable { public var maxPixels: Int = 64_000_000; public init() {} }
public enum ImageDecoder {
    public static func decode(_ data: Data, source: String, options: ImageDecodingOptions = .init()) throws -> RGBImage { throw ImageError(source: source, "stub") }
    public static func decode(contentsOf url: URL, options: ImageDecodingOptions = .init()) throws -> RGBImage { throw ImageError(source: url.path, "stub") }
}
