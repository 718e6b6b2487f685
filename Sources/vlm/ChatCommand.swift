import ArgumentParser
import Foundation
import VLMMedia
import VLMRuntime
import VLMTokenizers

extension ContextPolicy: ExpressibleByArgument {}

struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat with a model: one line per turn, replies streamed.",
        discussion: """
            Commands: /image PATH (attach an image to the next turn; it goes before the text), /clear (forget the \
            conversation), /stats (the last turn's PyTorchObserver line), /history, /help, /quit. Start a line \
            with // to send a text that begins with /. Ctrl-C stops the reply being written; Ctrl-C twice at the \
            prompt quits. With stdin not a terminal (a pipe or file), lines are read until end of input and only \
            replies (and what /stats and /history print) go to stdout; the exit status is 1 if a turn failed.
            """)

    @Option(name: .long, help: ArgumentHelp(stringLiteral: DefaultModel.help))
    var model: String?

    @Option(name: .long, help: "System prompt.")
    var system: String?

    @Option(name: .long, help: "Session file: resumed if it exists (history and KV cache), written after every turn.")
    var session: String?

    @Option(name: .long, help: "When the conversation outgrows the context: error, or drop-oldest-turns.")
    var contextPolicy: ContextPolicy = .error

    @OptionGroup var images: ImageArguments

    @OptionGroup var sampling: SamplingOptions

    @OptionGroup var quantization: QuantizationArguments

    @Flag(name: .long, help: "Print the PyTorchObserver stats line after each reply.")
    var stats = false

    func run() async throws {
        do {
            try execute()
        } catch {
            failAndExit(error)
        }
    }

    private func execute() throws {
        let config = try sampling.generationConfig()
        try config.validate()
        let imageOptions = images.imageOptions
        let runner = try RunnerFactory.make(modelDirectory: URL(fileURLWithPath: try DefaultModel.resolve(model)),
                                            threads: sampling.threads ?? ThreadPoolDefaults.threads, imageOptions: imageOptions,
                                            quantization: try quantization.options())
        try runner.load()
        let conversation = Conversation(runner: runner, systemPrompt: system, contextPolicy: contextPolicy)
        let sessionURL = session.map { URL(fileURLWithPath: ($0 as NSString).expandingTildeInPath) }
        if let sessionURL, FileManager.default.fileExists(atPath: sessionURL.path) {
            try conversation.load(from: sessionURL)
            if let system, system != conversation.systemPrompt {
                conversation.systemPrompt = system
                writeErr("note: --system replaces the session's system prompt")
            }
            writeErr("resumed \(conversation.turns.count) turn(s) from \(sessionURL.lastPathComponent)")
        }

        let interactive = isatty(STDIN_FILENO) != 0
        let interrupts = ChatInterrupts(interactive: interactive) { conversation.stop() }
        interrupts.install()
        if interactive {
            writeErr("vlm chat: \(URL(fileURLWithPath: (try? DefaultModel.resolve(model)) ?? "?").lastPathComponent). /image PATH, /clear, /stats, /history, /help, /quit; "
                     + "Ctrl-C stops a reply, twice at the prompt quits.")
        }
        var attached: [ImageInput] = []
        var failed = false
        func report(_ error: Error) {
            failed = true
            var message = String(describing: error)
            if message.hasPrefix("Error Domain=") { message = error.localizedDescription }
            writeErr("error: " + message.split(whereSeparator: \.isNewline).joined(separator: " "))
        }
        func saveSession() {
            guard let sessionURL else { return }
            do { try conversation.save(to: sessionURL) } catch { report(error) }
        }

        chat: while true {
            if interactive { writeOut(attached.isEmpty ? "> " : "[\(attached.count) image(s)] > ") }
            guard let line = readLine(strippingNewline: true) else { break }
            interrupts.gotInput()
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            if trimmed.hasPrefix("/"), !trimmed.hasPrefix("//") {
                let command = trimmed.split(separator: " ", maxSplits: 1).first.map(String.init) ?? trimmed
                let argument = String(trimmed.dropFirst(command.count)).trimmingCharacters(in: .whitespaces)
                switch command {
                case "/quit", "/exit":
                    break chat
                case "/image":
                    do {
                        guard runner.imagePlaceholder != nil else { throw RunnerError.imagesNotSupported }
                        guard !argument.isEmpty else { throw ValidationError("/image needs a file path") }
                        var path = argument
                        if path.count >= 2, let q = path.first, q == path.last, q == "\"" || q == "'" { path = String(path.dropFirst().dropLast()) }
                        let url = URL(fileURLWithPath: (path as NSString).expandingTildeInPath)
                        attached.append(try ImageInput.file(url).inMemory(options: imageOptions.decoding))
                        writeErr("attached \(url.lastPathComponent) to the next turn")
                    } catch { report(error) }
                case "/clear":
                    conversation.clear()
                    attached = []
                    saveSession()
                    writeErr("conversation cleared")
                case "/stats":
                    if let result = conversation.lastResult { writeOut(result.stats.observerLine + "\n") } else { writeErr("no turn yet") }
                case "/history":
                    writeOut(Self.describe(conversation))
                case "/help":
                    writeErr(Self.configuration.discussion)
                default:
                    report(ValidationError("unknown command \(command); commands: /image PATH, /clear, /stats, /history, /help, /quit"))
                }
                continue
            }
            var text = trimmed.hasPrefix("//") ? String(line.drop { $0 == " " }.dropFirst()) : line
            if !attached.isEmpty, !text.contains(conversation.imageMarker) {
                text = String(repeating: conversation.imageMarker, count: attached.count) + text
            }
            let images = attached
            attached = []
            interrupts.beginReply()
            do {
                let result = try conversation.send(text, images: images, config: config) { token in
                    if !token.text.isEmpty { writeOut(token.text) }
                }
                interrupts.endReply()
                writeOut("\n")
                if result.stopReason == .cancelled { writeErr("(stopped)") }
                if stats { writeOut(result.stats.observerLine + "\n") }
                saveSession()
            } catch {
                interrupts.endReply()
                report(error)
            }
        }
        if interactive { writeOut("\n") }
        if failed && !interactive { Foundation.exit(1) }
    }

    /// /history: one line per message, images by name.
    static func describe(_ conversation: Conversation) -> String {
        var out = ""
        if let system = conversation.systemPrompt { out += "system: \(system)\n" }
        for turn in conversation.turns {
            out += "user: \(turn.text)"
            if !turn.images.isEmpty { out += "  [" + turn.images.map(\.name).joined(separator: ", ") + "]" }
            out += "\nassistant: \(turn.reply)\n"
        }
        if conversation.droppedTurns > 0 { out += "(\(conversation.droppedTurns) older turn(s) dropped to fit the context)\n" }
        return out
    }
}

/// A line on stderr (notes and errors, kept out of the replies on stdout).
func writeErr(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// SIGINT while a reply is being written stops it; at the prompt the first one warns and the second quits.
final class ChatInterrupts: @unchecked Sendable {
    private let lock = NSLock()
    private var generating = false
    private var armed = false
    private var source: DispatchSourceSignal?
    private let interactive: Bool
    private let stop: () -> Void

    init(interactive: Bool, stop: @escaping () -> Void) {
        self.interactive = interactive
        self.stop = stop
    }

    func install() {
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: DispatchQueue(label: "vlm.chat.sigint"))
        source.setEventHandler { [weak self] in self?.interrupted() }
        source.resume()
        self.source = source
    }

    private func interrupted() {
        lock.lock()
        if generating {
            lock.unlock()
            stop()
            return
        }
        if armed {
            lock.unlock()
            writeErr("")
            Foundation.exit(130)
        }
        armed = true
        lock.unlock()
        writeErr("\n(Ctrl-C again to quit, or /quit)")
        if interactive { writeOut("> ") }
    }

    func beginReply() { lock.lock(); generating = true; armed = false; lock.unlock() }
    func endReply() { lock.lock(); generating = false; lock.unlock() }
    func gotInput() { lock.lock(); armed = false; lock.unlock() }
}
