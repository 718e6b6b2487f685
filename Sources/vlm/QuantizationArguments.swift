import ArgumentParser
import VLMCore

/// `--quantize q8|q4` and friends, shared by run, chat, bench and serve: weights quantized while the model loads
/// (a folder written by `vlm quantize` needs none of these; it loads quantized as is).
struct QuantizationArguments: ParsableArguments {
    enum Level: String, ExpressibleByArgument, CaseIterable {
        case q8, q4
        var bits: Int { self == .q8 ? 8 : 4 }
    }

    @Option(name: .long, help: "Quantize Linear weights while loading: q8 (int8) or q4 (int4), one f16 scale per group.")
    var quantize: Level?

    @Option(name: .long, help: "Input columns per scale for --quantize (a multiple of 8).")
    var quantizeGroupSize: Int = QuantizationScheme.defaultGroupSize

    @Flag(name: .long, help: "With --quantize, also quantize the vision encoder and connector (default: decoder only).")
    var quantizeVision = false

    @Flag(name: .long, help: ArgumentHelp(
        "Multiply prefill and vision matrices in bf16 (both operands rounded to bf16, f32 sums): about 2x faster on CPUs with AVX-512 BF16 (Zen 4+, Sapphire Rapids+), at the numerics of a bf16 run instead of f32. No effect on other CPUs, on decode or on --quantize weights."))
    var bf16Compute = false

    /// The load option these flags ask for.
    func options() throws -> QuantizationOptions {
        guard let quantize else {
            if quantizeVision { throw ValidationError("--quantize-vision needs --quantize q8 or q4") }
            return QuantizationOptions(bf16Products: bf16Compute)
        }
        do {
            return QuantizationOptions(scheme: try QuantizationScheme(bits: quantize.bits, groupSize: quantizeGroupSize),
                                       includeVision: quantizeVision, bf16Products: bf16Compute)
        } catch let error as ModelFileError {
            throw ValidationError("--quantize-group-size: \(error.message)")
        }
    }
}
