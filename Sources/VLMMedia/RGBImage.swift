/// A decoded image: 8-bit RGB, interleaved, rows top to bottom, no padding (`pixels.count == width * height * 3`).
/// Every decoder produces this and every image processor starts from it.
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let pixels: [UInt8]

    /// Fails (returns nil) when the buffer does not hold exactly width × height × 3 bytes.
    public init?(width: Int, height: Int, pixels: [UInt8]) {
        guard width > 0, height > 0, width.multipliedReportingOverflow(by: height).overflow == false,
              pixels.count == width * height * 3 else { return nil }
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// Errors from decoding or preprocessing an image; the message names the image and the problem.
public struct ImageError: Error, CustomStringConvertible, Equatable {
    public let source: String
    public let message: String

    public init(source: String, _ message: String) {
        self.source = source
        self.message = message
    }

    public var description: String { "\(source): \(message)" }
}
