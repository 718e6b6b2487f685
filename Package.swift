// swift-tools-version:6.0
// SwiftVLM: run small vision-language models and text LLMs from a Hugging Face folder, on the CPU.
// Targets import one way only: CKernels → VLMCore → VLMTokenizers → VLMModels → VLMRuntime → vlm.
import PackageDescription

let package = Package(
    name: "swift-vlm",
    platforms: [.macOS(.v13), .iOS(.v16)],
    products: [
        .library(name: "VLMRuntime", targets: ["VLMRuntime"]),
        .library(name: "VLMModels", targets: ["VLMModels"]),
        .library(name: "VLMTokenizers", targets: ["VLMTokenizers"]),
        .library(name: "VLMCore", targets: ["VLMCore"]),
        .executable(name: "vlm", targets: ["vlm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
    ],
    targets: [
        // Hot numeric loops in C: AVX2/FMA/F16C chosen at run time per function, scalar fallback.
        .target(name: "CKernels"),
        // Tensors, safetensors (memory-mapped), typed configs, thread pool, ops over CKernels.
        .target(name: "VLMCore", dependencies: ["CKernels"]),
        // tokenizer.json byte-level BPE, and the Jinja chat-template interpreter.
        .target(name: "VLMTokenizers"),
        // One file per architecture over shared blocks in Common/; the registry maps model_type to a type.
        .target(name: "VLMModels", dependencies: ["VLMCore"]),
        // Runner protocol, prefiller, token generator, decoder step, sampler, stats.
        // Image decoding (libjpeg-turbo/libpng, ImageIO on Apple) and each model family's preprocessing.
        // libjpeg-turbo and libpng (Debian: libjpeg62-turbo-dev, libpng-dev) behind setjmp-safe C wrappers.
        .target(name: "CImageCodecs", linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png16")]),
        .target(name: "VLMMedia", dependencies: ["CKernels", .target(name: "CImageCodecs", condition: .when(platforms: [.linux]))]),
        .target(name: "VLMRuntime", dependencies: ["VLMCore", "VLMTokenizers", "VLMMedia", "VLMModels"]),
        // `vlm serve`: an OpenAI-compatible HTTP server over one runner (Hummingbird).
        .target(name: "VLMServer", dependencies: [
            "VLMRuntime", "VLMMedia", "VLMTokenizers",
            .product(name: "Hummingbird", package: "hummingbird"),
        ]),
        // The `vlm` command: run, bench. No model logic here.
        .executableTarget(name: "vlm", dependencies: [
            "VLMRuntime", "VLMMedia", "VLMTokenizers", "VLMServer",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "VLMCoreTests", dependencies: ["VLMCore"]),
        .testTarget(name: "VLMTokenizersTests", dependencies: ["VLMTokenizers"]),
        .testTarget(name: "VLMMediaTests", dependencies: ["VLMMedia", "CKernels"]),
        .testTarget(name: "VLMModelsTests", dependencies: ["VLMModels", "VLMRuntime"]),
        .testTarget(name: "VLMRuntimeTests", dependencies: ["VLMRuntime"]),
        // Runs the built `vlm` binary as a user would.
        .testTarget(name: "VLMCLITests", dependencies: ["vlm"]),
        .testTarget(name: "VLMServerTests", dependencies: ["VLMServer", "VLMRuntime"]),
    ],
    // Swift 5 mode: the kernels hand raw buffers to worker threads by design (each thread owns a disjoint
    // slice), which Swift 6's Sendable checking cannot express without unsafe casts at every call.
    swiftLanguageModes: [.v5]
)
