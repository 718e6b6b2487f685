import ArgumentParser
import VLMMedia
import VLMRuntime

/// How images are cut into tiles and how large they may be: the same options on run, chat, bench and serve.
struct ImageArguments: ParsableArguments {
    @Flag(name: .long, help: "Idefics3/SmolVLM: encode the global image only (no tiles).")
    var noImageSplitting = false

    @Option(name: .long, help: "Most tiles per image (InternVL max_patches; SmolVLM: caps the tile grid).")
    var maxTiles: Int?

    @Option(name: .long, help: "Refuse images with more pixels than this (decompression bombs).")
    var maxImagePixels: Int = 64_000_000

    func validate() throws {
        if let maxTiles, maxTiles < 1 { throw ValidationError("--max-tiles must be at least 1, found \(maxTiles)") }
        guard maxImagePixels > 0 else { throw ValidationError("--max-image-pixels must be positive, found \(maxImagePixels)") }
    }

    var imageOptions: ImageOptions {
        var options = ImageOptions()
        options.disableImageSplitting = noImageSplitting
        options.maxTiles = maxTiles
        options.decoding.maxPixels = maxImagePixels
        return options
    }
}
