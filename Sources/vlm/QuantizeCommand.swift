import ArgumentParser
import Foundation
import VLMCore
import VLMRuntime

/// `vlm quantize`: write an int8/int4 copy of a model folder that loads quantized with no flags.
struct Quantize: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a copy of a model folder with int8 or int4 Linear weights (f16 scale per group).")

    @Option(name: .long, help: "Bits per weight: 8 or 4.")
    var bits: Int

    @Option(name: .long, help: "Input columns per scale (a multiple of 8).")
    var groupSize: Int = QuantizationScheme.defaultGroupSize

    @Flag(name: .long, help: "Also quantize the vision encoder and connector (default: decoder only).")
    var quantizeVision = false

    @Option(name: .long, help: "Worker threads for loading (default: all cores).")
    var threads: Int?

    @Argument(help: "Source model folder (float safetensors).")
    var source: String

    @Argument(help: "Destination folder (created; must not exist or be empty).")
    var destination: String

    func run() async throws {
        do {
            let scheme: QuantizationScheme
            do {
                scheme = try QuantizationScheme(bits: bits, groupSize: groupSize)
            } catch let error as ModelFileError {
                throw ValidationError("--bits/--group-size: \(error.message)")
            }
            let src = URL(fileURLWithPath: (source as NSString).expandingTildeInPath)
            let dst = URL(fileURLWithPath: (destination as NSString).expandingTildeInPath)
            let summary = try ModelQuantizer.quantize(source: src, destination: dst,
                                                      options: QuantizationOptions(scheme: scheme, includeVision: quantizeVision),
                                                      threads: threads ?? ThreadPoolDefaults.threads)
            writeOut(String(format: "quantized %d Linear weights to %@: %.1f MB of tensors -> %.1f MB in %@\n",
                            summary.quantizedTensors, scheme.description, Double(summary.sourceWeightBytes) / 1e6,
                            Double(summary.outputWeightBytes) / 1e6, dst.path))
        } catch {
            failAndExit(error)
        }
    }
}
