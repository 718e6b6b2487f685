import ArgumentParser
import Foundation
import VLMRuntime
import VLMServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health).")

    @Option(name: .long, help: ArgumentHelp(stringLiteral: DefaultModel.help))
    var model: String?

    @Option(name: .long, help: "Address to listen on (loopback by default).")
    var host = "127.0.0.1"

    @Option(name: .long, help: "Port to listen on (0 = any free port).")
    var port = 8080

    @Option(name: .long, help: "Require 'Authorization: Bearer KEY' on /v1/* (default: $VLM_API_KEY, else none).")
    var apiKey: String?

    @Option(name: .long, help: "Requests that may wait behind the running one; more get 429.")
    var maxQueue = 16

    @Option(name: .long, help: "Largest request body in bytes.")
    var maxBodyBytes = 20_000_000

    @Option(name: .long, help: "Most images per request.")
    var maxImages = 8

    @Option(name: .long, help: "max_tokens when a request gives none.")
    var defaultMaxTokens = 256

    @OptionGroup var images: ImageArguments

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int?

    @OptionGroup var quantization: QuantizationArguments

    @Option(name: .long, help: "Model id reported by /v1/models (default: the folder's name).")
    var modelName: String?

    @Option(name: .long, help: "Generations at once (each has its own KV cache; the weights are mapped once).")
    var parallel = 1

    @Option(name: .long, help: "KV caches of recent conversations kept between requests (0: none).")
    var cacheSlots = 4

    @Option(name: .long, help: "Most memory those caches may take together, in MiB.")
    var cacheMemoryMb = 2048

    @Flag(name: .long, help: "Fetch http(s) image URLs (public addresses only, within the size and time limits).")
    var allowRemoteImages = false

    @Flag(name: .long, help: "With --allow-remote-images: also loopback, private and link-local addresses.")
    var allowPrivateUrls = false

    @Option(name: .long, help: "Read image files (file:// URLs or absolute paths) under this folder only.")
    var allowFileRoot: String?

    @Option(name: .long, help: "Largest image file fetched or read, in bytes.")
    var maxImageBytes = 20_000_000

    @Option(name: .long, help: "Longest an image fetch may take, in seconds.")
    var imageFetchTimeout = 10.0

    func run() async throws {
        do {
            try await execute()
        } catch {
            failAndExit(error)
        }
    }

    private func execute() async throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535, found \(port)") }
        guard maxQueue >= 0 else { throw ValidationError("--max-queue must be >= 0, found \(maxQueue)") }
        guard maxBodyBytes > 0, maxImages >= 0, defaultMaxTokens > 0 else {
            throw ValidationError("--max-body-bytes and --default-max-tokens must be positive, --max-images >= 0")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, found \(threads)") }
        guard (1...64).contains(parallel) else { throw ValidationError("--parallel must be in 1...64, found \(parallel)") }
        guard cacheSlots >= 0, cacheMemoryMb >= 0 else { throw ValidationError("--cache-slots and --cache-memory-mb must be >= 0") }
        guard maxImageBytes > 0, imageFetchTimeout > 0, imageFetchTimeout.isFinite else {
            throw ValidationError("--max-image-bytes and --image-fetch-timeout must be positive")
        }
        var fileRoot: URL?
        if let allowFileRoot {
            let url = URL(fileURLWithPath: (allowFileRoot as NSString).expandingTildeInPath)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("--allow-file-root: no folder at \(url.path)")
            }
            fileRoot = url
        }
        let folder = URL(fileURLWithPath: try DefaultModel.resolve(model))
        let imageOptions = images.imageOptions
        // Each generation has its own runner and thread pool; the cores are shared out between them.
        let cores = threads ?? ThreadPoolDefaults.threads
        let quantizationOptions = try quantization.options()
        let runners: [ChatRunner] = try (0..<parallel).map { _ in
            let runner = try RunnerFactory.make(modelDirectory: folder, threads: max(1, cores / parallel), imageOptions: imageOptions,
                                                quantization: quantizationOptions)
            try runner.load()
            return runner
        }

        var config = ServerConfiguration()
        config.host = host
        config.port = port
        config.apiKey = apiKey ?? ProcessInfo.processInfo.environment["VLM_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        config.maxQueue = maxQueue
        config.maxBodyBytes = maxBodyBytes
        config.maxImages = maxImages
        config.imageDecoding.maxPixels = images.maxImagePixels
        config.defaultMaxTokens = defaultMaxTokens
        config.modelName = modelName ?? folder.standardizedFileURL.lastPathComponent
        config.cacheSlots = cacheSlots
        config.cacheMaxBytes = cacheMemoryMb << 20
        config.imageSources.allowRemote = allowRemoteImages
        config.imageSources.allowPrivateAddresses = allowPrivateUrls
        config.imageSources.fileRoot = fileRoot
        config.imageSources.maxBytes = maxImageBytes
        config.imageSources.fetchTimeoutSeconds = imageFetchTimeout
        let server = ChatServer(runners: runners, configuration: config)
        let name = config.modelName, host = self.host
        try await server.run { port in
            FileHandle.standardError.write(Data("vlm serve: \(name) on http://\(host):\(port)/v1\n".utf8))
        }
    }
}
