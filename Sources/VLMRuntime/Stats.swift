import Foundation
import VLMCore

/// Timings and counts of one generate call, with ExecuTorch's field names (extension/llm/runner/stats.h).
/// Timestamps are milliseconds since the Unix epoch.
public struct Stats: Sendable, Equatable {
    public static let scalingFactorUnitsPerSecond = 1000
    public var modelLoadStartMs: Int64 = 0
    public var modelLoadEndMs: Int64 = 0
    public var inferenceStartMs: Int64 = 0
    public var promptEvalEndMs: Int64 = 0
    public var firstTokenMs: Int64 = 0
    public var inferenceEndMs: Int64 = 0
    public var aggregateSamplingTimeMs: Int64 = 0
    public var promptTokens = 0
    public var generatedTokens = 0
    /// Our additions after ExecuTorch's fields.
    public var peakRSSBytes = 0
    /// Prompt tokens run through the model in this call, and those reused from the KV cache.
    public var prefilledTokens = 0
    public var cachedTokens = 0
    /// KV-cache position after the call (the conversation's length in tokens).
    public var totalTokens = 0
    /// Image decode + preprocessing and vision encoding (multimodal runs).
    public var imagePreprocessMs = 0.0
    public var visionEncodeMs = 0.0
    public var imageTilesEncoded = 0
    /// Time spent running prompt tokens through the language model (excludes image work).
    public var prefillMs = 0.0
    /// Time from the first generated token to the last (the decode loop), at sub-millisecond resolution.
    public var decodeMs = 0.0

    public init() {}

    /// ExecuTorch's keys in ExecuTorch's order, then ours.
    public var orderedFields: [(String, Int64)] {
        [("prompt_tokens", Int64(promptTokens)), ("generated_tokens", Int64(generatedTokens)),
         ("model_load_start_ms", modelLoadStartMs), ("model_load_end_ms", modelLoadEndMs),
         ("inference_start_ms", inferenceStartMs), ("inference_end_ms", inferenceEndMs),
         ("prompt_eval_end_ms", promptEvalEndMs), ("first_token_ms", firstTokenMs),
         ("aggregate_sampling_time_ms", aggregateSamplingTimeMs),
         ("SCALING_FACTOR_UNITS_PER_SECOND", Int64(Self.scalingFactorUnitsPerSecond)),
         ("peak_rss_bytes", Int64(peakRSSBytes)), ("prefilled_tokens", Int64(prefilledTokens)),
         ("cached_tokens", Int64(cachedTokens)), ("total_tokens", Int64(totalTokens)),
         ("image_preprocess_ms", Int64(imagePreprocessMs.rounded())), ("vision_encode_ms", Int64(visionEncodeMs.rounded())),
         ("image_tiles", Int64(imageTilesEncoded))]
    }

    /// `{"prompt_tokens":…,…}` exactly as ExecuTorch's stats_to_json_string writes it (plus our keys at the end).
    public var json: String {
        "{" + orderedFields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    /// The line ExecuTorch's print_report prints.
    public var observerLine: String { "PyTorchObserver " + json }

    public var prefillTokensPerSecond: Double {
        let ms = prefillMs > 0 ? prefillMs : Double(promptEvalEndMs - inferenceStartMs)
        return ms > 0 ? Double(prefilledTokens) / ms * 1000 : 0
    }

    public var decodeTokensPerSecond: Double {
        // Tokens after the first, over the time after the first (the first comes from the prefill logits).
        let ms = decodeMs > 0 ? decodeMs : Double(inferenceEndMs - firstTokenMs)
        return ms > 0 && generatedTokens > 1 ? Double(generatedTokens - 1) / ms * 1000 : 0
    }
}
