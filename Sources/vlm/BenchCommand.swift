import ArgumentParser
import Foundation
import VLMCore
import VLMModels
import VLMRuntime

/// `vlm bench`: load, image, prefill and decode figures of a model folder as medians (with min and max) over
/// several runs, next to the bounds this machine sets (measured read bandwidth and FMA peak). Prompt tokens
/// are synthetic ids, so any checkpoint works, even one whose tokenizer is smaller than its vocabulary.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure load, image, prefill and decode speed of a model.")

    @Option(name: .long, help: ArgumentHelp(stringLiteral: DefaultModel.help))
    var model: String?

    @Option(name: .long, help: "An image to encode before the prompt (vision-language models).")
    var image: String?

    @Option(name: .long, help: "Text prompt length in tokens (image tokens come on top).")
    var promptTokens: Int = 128

    @Option(name: .long, help: "Tokens to decode after the prompt.")
    var genTokens: Int = 32

    @Option(name: .long, help: "Measured runs (after one warm-up run).")
    var runs: Int = 3

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

    @OptionGroup var images: ImageArguments

    @OptionGroup var quantization: QuantizationArguments

    @Flag(name: .long, help: "Skip measuring memory bandwidth and FMA peak.")
    var noProbe = false

    @Option(name: .long, help: "Output format: text or json.")
    var outputFormat: OutputFormat = .text

    func run() async throws {
        do {
            try execute()
        } catch {
            failAndExit(error)
        }
    }

    struct Sample {
        var loadMs = 0.0, preprocessMs = 0.0, visionMs = 0.0, tiles = 0
        var prefillTokensPerSecond = 0.0, decodeTokensPerSecond = 0.0, timeToFirstTokenMs = 0.0
        /// The same request again on the loaded model after `reset()`: what a server answers once the weights'
        /// pages are mapped (the first request after a load also takes their page faults: on SmolVLM-500M dims about
        /// 35 ms, a seventh of a 128-token prefill and half of an 8-token one).
        var warmPrefillTokensPerSecond = 0.0, warmTimeToFirstTokenMs = 0.0, warmVisionMs = 0.0
    }

    private func execute() throws {
        guard promptTokens > 0, genTokens > 1, runs > 0 else {
            throw ValidationError("--prompt-tokens and --runs must be positive and --gen-tokens at least 2")
        }
        let threadCount = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        let directory = URL(fileURLWithPath: try DefaultModel.resolve(model))
        let imageOptions = images.imageOptions
        let quantizationOptions = try quantization.options()
        var samples: [Sample] = []
        var info: (dtype: String, hidden: Int, vocab: Int, bytesPerToken: Int, visionFLOPs: Double?) = ("", 0, 0, 0, nil)
        for run in 0...runs {  // run 0 warms the page cache and is not reported
            let runner = try RunnerFactory.make(modelDirectory: directory, threads: threadCount, imageOptions: imageOptions,
                                                quantization: quantizationOptions)
            try runner.load()
            guard let lm = runner.languageModel else { throw RunnerError.notLoaded }
            var inputs: [InputPart] = []
            if let image {
                guard runner.imagePlaceholder != nil else { throw RunnerError.imagesNotSupported }
                inputs.append(.image(.file(URL(fileURLWithPath: (image as NSString).expandingTildeInPath))))
            }
            // Synthetic prompt spread over the vocabulary, deterministic, avoiding the image placeholder id.
            let avoid = Set((runner as? MultimodalRunner)?.model.map { [$0.imageTokenID] } ?? [])
            inputs.append(.tokens((0..<promptTokens).map { i in
                var id = (i * 7919 + 13) % lm.vocabularySize
                while avoid.contains(id) { id = (id + 1) % lm.vocabularySize }
                return id
            }))
            var config = GenerationConfig()
            config.maxNewTokens = genTokens
            config.ignoreEOS = true
            func measure() throws -> (stats: Stats, firstTokenMs: Double) {
                let start = monotonicSeconds()
                var firstToken: Double?
                let result = try runner.generate(inputs, config: config) { _ in
                    if firstToken == nil { firstToken = monotonicSeconds() }
                }
                return (result.stats, ((firstToken ?? start) - start) * 1000)
            }
            let (s, firstTokenMs) = try measure()  // the first request after the load
            runner.reset()
            let (w, warmFirstTokenMs) = try measure()  // the same request, weights mapped, nothing cached
            if run > 0 {
                samples.append(Sample(loadMs: Double(s.modelLoadEndMs - s.modelLoadStartMs),
                                      preprocessMs: s.imagePreprocessMs, visionMs: s.visionEncodeMs, tiles: s.imageTilesEncoded,
                                      prefillTokensPerSecond: s.prefillTokensPerSecond,
                                      decodeTokensPerSecond: s.decodeTokensPerSecond,
                                      timeToFirstTokenMs: firstTokenMs,
                                      warmPrefillTokensPerSecond: w.prefillTokensPerSecond,
                                      warmTimeToFirstTokenMs: warmFirstTokenMs, warmVisionMs: w.visionEncodeMs))
            }
            info = (lm.weightFormat, lm.hiddenSize, lm.vocabularySize, lm.weightBytesPerToken, runner.visionFLOPsPerTile)
        }
        let peakRSSMb = Double(peakResidentBytes()) / 1_048_576  // before the probes allocate their buffers
        let bandwidth = noProbe ? 0 : HardwareProbe.readBandwidth(threads: threadCount)
        let peak = noProbe ? 0 : HardwareProbe.fmaPeak(threads: threadCount)
        let bound = bandwidth > 0 ? bandwidth / Double(info.bytesPerToken) : 0

        func summary(_ values: [Double]) -> JSONObject {
            let s = values.sorted()
            return JSONObject([("median", s[s.count / 2]), ("min", s.first ?? 0), ("max", s.last ?? 0)])
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let tiles = samples.first?.tiles ?? 0
        func perTile(_ ms: KeyPath<Sample, Double>) -> [Double] { samples.map { $0.tiles > 0 ? $0[keyPath: ms] / Double($0.tiles) : 0 } }
        let visionPerTile = perTile(\.visionMs), warmVisionPerTile = perTile(\.warmVisionMs)
        let visionBoundMs = (info.visionFLOPs ?? 0) / max(peak, 1) * 1000
        // "bf16" when --bf16-compute takes effect (prefill and vision products in bf16), else "f32".
        let products = quantizationOptions.bf16Products && HardwareProbe.bf16Products ? "bf16" : "f32"
        var fields: [(String, Any)] = [
            ("model", directory.path), ("dtype", info.dtype), ("hidden_size", info.hidden), ("vocab_size", info.vocab),
            ("weight_bytes_per_token", info.bytesPerToken), ("threads", threadCount), ("simd", HardwareProbe.simd), ("products", products), ("bf16_engine", HardwareProbe.bf16Engine), ("prompt_tokens", promptTokens),
            ("gen_tokens", genTokens), ("runs", runs), ("image_tiles", tiles),
            ("load_ms", summary(samples.map(\.loadMs))),
            ("image_preprocess_ms", image == nil ? NSNull() : summary(samples.map(\.preprocessMs)) as Any),
            ("vision_encode_ms", image == nil ? NSNull() : summary(samples.map(\.visionMs)) as Any),
            ("vision_encode_ms_per_tile", image == nil ? NSNull() : summary(visionPerTile) as Any),
            ("prefill_tokens_per_second", summary(samples.map(\.prefillTokensPerSecond))),
            ("decode_tokens_per_second", summary(samples.map(\.decodeTokensPerSecond))),
            ("time_to_first_token_ms", summary(samples.map(\.timeToFirstTokenMs))),
            ("warm_prefill_tokens_per_second", summary(samples.map(\.warmPrefillTokensPerSecond))),
            ("warm_time_to_first_token_ms", summary(samples.map(\.warmTimeToFirstTokenMs))),
            ("warm_vision_encode_ms_per_tile", image == nil ? NSNull() : summary(warmVisionPerTile) as Any),
            ("peak_rss_mb", summary([peakRSSMb])),
            ("read_bandwidth_gb_per_s", bandwidth / 1e9),
            ("fma_peak_gflops", peak / 1e9),
            ("decode_bound_tokens_per_second", bound),
        ]
        if let flops = info.visionFLOPs {
            fields.append(("vision_gflops_per_tile", flops / 1e9))
            fields.append(("vision_bound_ms_per_tile", noProbe ? NSNull() : visionBoundMs as Any))
        }
        if outputFormat == .json {
            writeOut(JSONObject(fields).serialized() + "\n")
            return
        }
        let decode = median(samples.map(\.decodeTokensPerSecond))
        var lines = ["model        \(directory.lastPathComponent)  \(info.dtype)  threads \(threadCount)  \(HardwareProbe.simd)\(products == "bf16" ? "  bf16 products (\(HardwareProbe.bf16Engine))" : "")"]
        lines.append(String(format: "load         %.1f ms (median of %d runs)", median(samples.map(\.loadMs)), runs))
        if image != nil {
            lines.append(String(format: "image        %.1f ms decode+preprocess, %d tiles", median(samples.map(\.preprocessMs)), tiles))
            lines.append(String(format: "vision       %.0f ms per tile (%.1f GFLOP/tile%@)", median(visionPerTile), (info.visionFLOPs ?? 0) / 1e9,
                                noProbe ? "" : products == "bf16"
                                    // bf16 products are not bounded by the f32 FMA peak: say how far past it they go.
                                    ? String(format: ", f32 FMA bound %.0f ms, bf16 products %.1fx faster", visionBoundMs, visionBoundMs / max(median(visionPerTile), 1e-9))
                                    : String(format: ", bound %.0f ms = %.0f%% of FMA peak", visionBoundMs, visionBoundMs / max(median(visionPerTile), 1e-9) * 100)))
        }
        lines.append(String(format: "prefill      %.1f tok/s (first request after load); %.1f tok/s warm", median(samples.map(\.prefillTokensPerSecond)),
                            median(samples.map(\.warmPrefillTokensPerSecond))))
        lines.append(String(format: "decode       %.2f tok/s (%d tokens)", decode, genTokens))
        lines.append(String(format: "first token  %.1f ms (first request after load); %.1f ms warm%@", median(samples.map(\.timeToFirstTokenMs)),
                            median(samples.map(\.warmTimeToFirstTokenMs)),
                            image != nil ? String(format: ", vision %.0f ms per tile warm", median(warmVisionPerTile)) : ""))
        lines.append(String(format: "peak RSS     %.0f MB", peakRSSMb))
        if !noProbe {
            lines.append(String(format: "bandwidth    %.1f GB/s read; decode bound %.2f tok/s (%.1f MB/token); decode at %.0f%% of bound",
                                bandwidth / 1e9, bound, Double(info.bytesPerToken) / 1e6, bound > 0 ? decode / bound * 100 : 0))
            lines.append(String(format: "FMA peak     %.1f GFLOP/s", peak / 1e9))
        }
        writeOut(lines.joined(separator: "\n") + "\n")
    }
}
