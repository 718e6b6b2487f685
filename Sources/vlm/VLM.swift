import ArgumentParser
import Foundation

@main
struct VLM: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vlm",
        abstract: "Run small vision-language models and text LLMs from a Hugging Face folder, on the CPU.",
        subcommands: [Run.self, Chat.self, Bench.self, Serve.self, Quantize.self],
        defaultSubcommand: Run.self)
}

/// Prints `error: …` on one line to stderr and exits non-zero; used by every subcommand.
func failAndExit(_ error: Error) -> Never {
    var message = String(describing: error)
    // Foundation errors describe themselves as "Error Domain=…"; their localized text is what a user needs.
    if message.hasPrefix("Error Domain=") { message = error.localizedDescription }
    message = message.split(whereSeparator: \.isNewline).joined(separator: " ")
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}
