import ArgumentParser
import Foundation
import VLMCore
import VLMModels
import VLMRuntime

/// `vlm bench`: load, prefill and decode figures of a model folder, as medians over several runs, next to the
/// bounds this machine sets (measured read bandwidth and FMA peak). Prompt tokens are synthetic ids, so any
/// checkpoint works, even one whose tokenizer is smaller than its vocabulary.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure load, prefill and decode speed of a model.")

    @Option(name: .long, help: "Hugging Face model folder.")
    var model: String

    @Option(name: .long, help: "Prompt length in tokens.")
    var promptTokens: Int = 128

    @Option(name: .long, help: "Tokens to decode after the prompt.")
    var genTokens: Int = 32

    @Option(name: .long, help: "Measured runs (after one warm-up run).")
    var runs: Int = 3

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

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
        var loadMs = 0.0, prefillTokensPerSecond = 0.0, decodeTokensPerSecond = 0.0, timeToFirstTokenMs = 0.0
    }

    private func execute() throws {
        guard promptTokens > 0, genTokens > 0, runs > 0 else {
            throw ValidationError("--prompt-tokens, --gen-tokens and --runs must be positive")
        }
        let threadCount = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        let directory = URL(fileURLWithPath: (model as NSString).expandingTildeInPath)
        var samples: [Sample] = []
        var lastModel: LanguageModel?
        for run in 0...runs {  // run 0 warms the page cache and is not reported
            let pool = ThreadPool(threadCount: threadCount)
            let t0 = monotonicSeconds()
            let lm = try ModelRegistry.loadLanguageModel(directory: directory, pool: pool)
            let loadMs = (monotonicSeconds() - t0) * 1000
            let cache = lm.makeCache(maxTokens: promptTokens + genTokens + 1)
            // Synthetic prompt: spread over the vocabulary, deterministic.
            let prompt = (0..<promptTokens).map { ($0 * 7919 + 13) % lm.vocabularySize }
            let t1 = monotonicSeconds()
            var logits = try TextPrefiller(model: lm, chunkSize: 128).prefill(prompt, cache: cache) ?? []
            var token = Sampler.argmax(logits)
            let t2 = monotonicSeconds()
            let step = DecoderStep(model: lm)
            for _ in 1..<genTokens {
                logits = try step.step(token, cache: cache)
                token = Sampler.argmax(logits)
            }
            let t3 = monotonicSeconds()
            if run > 0 {
                samples.append(Sample(loadMs: loadMs,
                                      prefillTokensPerSecond: Double(promptTokens) / (t2 - t1),
                                      decodeTokensPerSecond: genTokens > 1 ? Double(genTokens - 1) / (t3 - t2) : 0,
                                      timeToFirstTokenMs: (t2 - t1) * 1000))
            }
            lastModel = lm
        }
        guard let lm = lastModel else { return }
        let peakRSSMb = Double(peakResidentBytes()) / 1_048_576  // before the probes allocate their buffers
        let bandwidth = noProbe ? 0 : HardwareProbe.readBandwidth(threads: threadCount)
        let peak = noProbe ? 0 : HardwareProbe.fmaPeak(threads: threadCount)
        let bytesPerToken = lm.weightBytesPerToken
        let bound = bandwidth > 0 ? bandwidth / Double(bytesPerToken) : 0

        func summary(_ values: [Double]) -> JSONObject {
            let s = values.sorted()
            return JSONObject([("median", s[s.count / 2]), ("min", s.first ?? 0), ("max", s.last ?? 0)])
        }
        let report = JSONObject([
            ("model", directory.path),
            ("dtype", lm.weightDType.safetensorsName),
            ("hidden_size", lm.hiddenSize),
            ("vocab_size", lm.vocabularySize),
            ("weight_bytes_per_token", bytesPerToken),
            ("threads", threadCount),
            ("prompt_tokens", promptTokens),
            ("gen_tokens", genTokens),
            ("runs", runs),
            ("load_ms", summary(samples.map(\.loadMs))),
            ("image_preprocess_ms", NSNull()),
            ("vision_encode_ms", NSNull()),
            ("prefill_tokens_per_second", summary(samples.map(\.prefillTokensPerSecond))),
            ("decode_tokens_per_second", summary(samples.map(\.decodeTokensPerSecond))),
            ("time_to_first_token_ms", summary(samples.map(\.timeToFirstTokenMs))),
            ("peak_rss_mb", summary([peakRSSMb])),
            ("read_bandwidth_gb_per_s", bandwidth / 1e9),
            ("fma_peak_gflops", peak / 1e9),
            ("decode_bound_tokens_per_second", bound),
        ])
        if outputFormat == .json {
            print(report.serialized())
            return
        }
        let med = { (v: [Double]) in v.sorted()[v.count / 2] }
        let decode = med(samples.map(\.decodeTokensPerSecond))
        print("model        \(directory.lastPathComponent)  \(lm.weightDType.safetensorsName)  threads \(threadCount)")
        print(String(format: "load         %.1f ms (median of %d)", med(samples.map(\.loadMs)), runs))
        print(String(format: "prefill      %.1f tok/s (%d tokens)", med(samples.map(\.prefillTokensPerSecond)), promptTokens))
        print(String(format: "decode       %.2f tok/s (%d tokens)", decode, genTokens))
        print(String(format: "first token  %.1f ms", med(samples.map(\.timeToFirstTokenMs))))
        print(String(format: "peak RSS     %.0f MB", peakRSSMb))
        if !noProbe {
            print(String(format: "bandwidth    %.1f GB/s read; decode bound %.2f tok/s (%.1f MB/token); decode at %.0f%% of bound",
                         bandwidth / 1e9, bound, Double(bytesPerToken) / 1e6, bound > 0 ? decode / bound * 100 : 0))
            print(String(format: "FMA peak     %.1f GFLOP/s", peak / 1e9))
        }
    }
}
