import ArgumentParser
import Foundation

@main
struct VLM: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vlm",
        abstract: "Run small vision-language models and text LLMs from a Hugging Face folder, on the CPU.",
        subcommands: [Run.self, Bench.self],
        defaultSubcommand: Run.self)
}

/// Prints `error: …` on one line to stderr and exits non-zero; used by every subcommand.
func failAndExit(_ error: Error) -> Never {
    let message: String
    if let e = error as? CustomStringConvertible { message = e.description } else { message = error.localizedDescription }
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}
