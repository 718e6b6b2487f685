import Foundation
import VLMMedia

/// One image whose embeddings sit in a runner's KV cache: its positions and the content hash of the picture.
public struct CachedImage: Sendable, Equatable, Hashable {
    public var range: Range<Int>
    public var contentHash: UInt64

    public init(range: Range<Int>, contentHash: UInt64) {
        self.range = range
        self.contentHash = contentHash
    }
}

extension MultimodalRunner {
    /// Most tile floats the preprocessing memo keeps (256 MB): beyond it images are decoded again when needed.
    static let preprocessMemoFloats = 64 << 20

    /// Decodes and preprocesses `input`, or takes the result of an earlier prompt with the same bytes.
    func preprocessedImage(_ input: ImageInput, preprocessor: ImagePreprocessor) throws -> (image: PreprocessedImage, hash: UInt64) {
        if preprocessMemoOptions != imageOptions {
            preprocessMemo = [:]
            preprocessMemoOptions = imageOptions
        }
        let bytes = try input.inMemory(options: imageOptions.decoding)
        let hash = try bytes.contentHash(options: imageOptions.decoding)
        if let hit = preprocessMemo[hash] { return (hit, hash) }
        let image = try preprocessor.preprocess(bytes.decode(options: imageOptions.decoding))
        let held = preprocessMemo.values.reduce(0) { $0 + $1.tiles.values.count }
        if held + image.tiles.values.count <= Self.preprocessMemoFloats { preprocessMemo[hash] = image }
        return (image, hash)
    }

    /// After a prefill: the images kept from before `keep`, then those of `prepared` after it, as far as the cache
    /// now reaches. The memo keeps only the images of this prompt.
    func updateCachedImages(_ prepared: PreparedPrompt, keep: Int) {
        let count = cache?.count ?? 0
        var images = cachedImages.filter { $0.range.upperBound <= keep }
        for i in prepared.images.indices {
            guard let extent = prepared.extent(of: i), extent.lowerBound >= keep, i < prepared.imageHashes.count else { continue }
            images.append(CachedImage(range: extent, contentHash: prepared.imageHashes[i]))
        }
        cachedImages = images.filter { $0.range.upperBound <= count }
        let current = Set(prepared.imageHashes)
        preprocessMemo = preprocessMemo.filter { current.contains($0.key) }
    }
}
