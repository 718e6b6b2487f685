import Foundation
import VLMMedia

/// FNV-1a, 64 bits, over bytes: the content hash that tells images apart in the KV cache and in session files
/// (not a cryptographic hash; it only has to tell different images apart).
public struct FNV1a64: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    static let prime: UInt64 = 0x0000_0100_0000_01b3

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var h = value
        for b in bytes { h = (h ^ UInt64(b)) &* Self.prime }
        value = h
    }

    public mutating func update(_ data: Data) { data.withUnsafeBytes { update($0) } }

    public mutating func update(_ v: UInt64) {
        var le = v.littleEndian
        withUnsafeBytes(of: &le) { update($0) }
    }

    public static func hash(_ data: Data) -> UInt64 {
        var h = FNV1a64()
        h.update(data)
        return h.value
    }
}

/// A fast checksum for large buffers (session files): FNV-1a's step over little-endian 64-bit words instead of
/// bytes, the last partial word padded with zeros and tagged with its length. Any change of one word changes it.
struct WordChecksum {
    private(set) var state: UInt64 = 0xcbf2_9ce4_8422_2325
    private var carry: UInt64 = 0
    private var carryBytes = 0

    private mutating func mix(_ w: UInt64) { state = (state ^ w) &* FNV1a64.prime }

    mutating func update(_ buf: UnsafeRawBufferPointer) {
        var i = 0
        let n = buf.count
        while carryBytes != 0, i < n {
            carry |= UInt64(buf[i]) << (8 * UInt64(carryBytes))
            carryBytes += 1
            i += 1
            if carryBytes == 8 { mix(carry); carry = 0; carryBytes = 0 }
        }
        while i + 8 <= n {
            mix(UInt64(littleEndian: buf.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
            i += 8
        }
        while i < n {
            carry |= UInt64(buf[i]) << (8 * UInt64(carryBytes))
            carryBytes += 1
            i += 1
        }
    }

    mutating func update(_ data: Data) { data.withUnsafeBytes { update($0) } }

    var finalized: UInt64 {
        var copy = self
        if carryBytes > 0 { copy.mix(carry ^ (UInt64(carryBytes) << 56)) }
        return copy.state
    }
}

extension ImageInput {
    /// The image as bytes held in memory: a file is read now (same size limit and error wording as decoding it),
    /// so later turns and session files see exactly the bytes that were encoded even if the file changes.
    public func inMemory(options: ImageDecodingOptions = .init()) throws -> ImageInput {
        guard case .file(let url) = self else { return self }
        return .encoded(try ImageDecoder.readFile(url, options: options), name: url.lastPathComponent)
    }

    /// FNV-1a 64 of the encoded bytes (a file is read), or of "RGB8", width, height and the pixels for decoded
    /// images. Two inputs with the same hash are treated as the same picture.
    public func contentHash(options: ImageDecodingOptions = .init()) throws -> UInt64 {
        switch self {
        case .file: return try inMemory(options: options).contentHash(options: options)
        case .encoded(let data, _): return FNV1a64.hash(data)
        case .pixels(let image):
            var h = FNV1a64()
            h.update(Data("RGB8".utf8))
            h.update(UInt64(image.width))
            h.update(UInt64(image.height))
            image.pixels.withUnsafeBytes { h.update($0) }
            return h.value
        }
    }
}
