import ArgumentParser
import Foundation
import VLMRuntime
import VLMTokenizers
import VLMMedia

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a reply to one or more prompts (each --prompt is one user turn).")

    @Option(name: .long, help: ArgumentHelp(stringLiteral: DefaultModel.help))
    var model: String?

    @Option(name: .long, help: "User prompt; repeat for several turns of one conversation.")
    var prompt: [String] = []

    @Option(name: .long, help: "System prompt.")
    var system: String?

    @Option(name: .long, help: "Image file (JPEG/PNG); repeat for several. Consumed in order by the <image> markers across all prompts.")
    var image: [String] = []

    @OptionGroup var images: ImageArguments

    @OptionGroup var sampling: SamplingOptions

    @OptionGroup var quantization: QuantizationArguments

    @Flag(name: .long, help: "Prefill every turn's whole conversation again (measures what the KV-cache reuse saves).")
    var noCacheReuse = false

    @Flag(name: .long, help: "Tokenize the prompt as is, without the chat template.")
    var raw = false

    @Flag(name: .long, help: "Print the ExecuTorch-style stats line (PyTorchObserver {json}) after each reply.")
    var stats = false

    @Option(name: .long, help: "Record the N most likely tokens and log-probabilities at each step (JSON output).")
    var topLogprobs: Int = 0

    @Option(name: .long, help: "Output format: text (streamed) or json (one object at the end).")
    var outputFormat: OutputFormat = .text

    func run() async throws {
        do {
            try execute()
        } catch {
            failAndExit(error)
        }
    }

    private func execute() throws {
        guard !prompt.isEmpty else { throw ValidationError("give at least one --prompt") }
        var config = try sampling.generationConfig()
        config.topLogprobs = topLogprobs
        try config.validate()
        let imageOptions = images.imageOptions
        let runner = try RunnerFactory.make(modelDirectory: URL(fileURLWithPath: try DefaultModel.resolve(model)),
                                            threads: sampling.threads ?? ThreadPoolDefaults.threads, imageOptions: imageOptions,
                                            quantization: try quantization.options())
        // Every marker must have its image and every image its marker, checked before any work.
        let markers = prompt.reduce(0) { $0 + $1.components(separatedBy: "<image>").count - 1 }
        guard markers == image.count else { throw RunnerError.imageCountMismatch(markers: markers, images: image.count) }
        try runner.load()
        guard image.isEmpty || runner.imagePlaceholder != nil else { throw RunnerError.imagesNotSupported }
        // One code path with `vlm chat`: each turn re-renders the whole conversation and the runner keeps the
        // cached prefix, prefilling only the rest.
        let conversation = Conversation(runner: runner, systemPrompt: system, format: raw ? .raw : .chatTemplate)
        conversation.reusesCache = !noCacheReuse
        var turns: [Any] = []
        var nextImage = 0
        for userText in prompt {
            let count = userText.components(separatedBy: "<image>").count - 1
            let images = image[nextImage..<(nextImage + count)].map { ImageInput.file(URL(fileURLWithPath: ($0 as NSString).expandingTildeInPath)) }
            nextImage += count
            let streaming = outputFormat == .text
            let result = try conversation.send(userText, images: images, config: config) { token in
                if streaming, !token.text.isEmpty { writeOut(token.text) }
            }
            if streaming {
                writeOut("\n")
                if stats { writeOut(result.stats.observerLine + "\n") }
            }
            turns.append(JSONObject([
                ("prompt", userText),
                ("prompt_token_ids", result.promptTokenIDs),
                ("token_ids", result.tokenIDs),
                ("top_logprobs", result.topLogprobs.map { $0.map { [$0.id, Double($0.logprob)] as [Any] } }),
                ("text", result.text),
                ("stop_reason", result.stopReason.rawValue),
                ("stats", JSONObject(result.stats.orderedFields.map { ($0.0, $0.1 as Any) })),
            ]))
        }
        if outputFormat == .json {
            let top = JSONObject([("model", try DefaultModel.resolve(model)), ("turns", turns)])
            writeOut(top.serialized() + "\n")
        }
    }
}

/// Unbuffered stdout, so streamed tokens and whole lines stay in order.
func writeOut(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

enum ThreadPoolDefaults {
    static var threads: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }
}

/// Sampling options shared by run and serve.
struct SamplingOptions: ParsableArguments {
    @Option(name: .long, help: "Most tokens to generate per turn.")
    var maxNewTokens: Int = 256

    @Option(name: .long, help: "Most positions (prompt + reply) to use; default: the model's context.")
    var seqLen: Int?

    @Option(name: .long, help: "Sampling temperature; 0 = greedy.")
    var temperature: Float = 0

    @Option(name: .long, help: "Keep only the K most likely tokens (0 = off).")
    var topK: Int = 0

    @Option(name: .long, help: "Nucleus sampling mass (1 = off).")
    var topP: Float = 1

    @Option(name: .long, help: "Drop tokens below this fraction of the best token's probability (0 = off).")
    var minP: Float = 0

    @Option(name: .long, help: "Penalty > 1 discourages repeating tokens (1 = off).")
    var repetitionPenalty: Float = 1

    @Option(name: .long, help: "Random seed for sampling.")
    var seed: UInt64 = 0

    @Option(name: .long, help: "Stop when the reply contains this string (repeatable).")
    var stop: [String] = []

    @Flag(name: .long, help: "Keep generating past end-of-sequence tokens.")
    var ignoreEos = false

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

    func generationConfig() throws -> GenerationConfig {
        var c = GenerationConfig()
        c.maxNewTokens = maxNewTokens
        c.seqLen = seqLen
        c.temperature = temperature
        c.topK = topK
        c.topP = topP
        c.minP = minP
        c.repetitionPenalty = repetitionPenalty
        c.seed = seed
        c.stopStrings = stop
        c.ignoreEOS = ignoreEos
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, found \(threads)") }
        return c
    }
}
