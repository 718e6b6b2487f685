import Foundation

/// The model `vlm` runs when no --model is given: the small SmolVLM-architecture demo model trained for this
/// project (models/smolvlm-shapes, Tools/demo-model), which answers questions about shapes in images.
enum DefaultModel {
    static let folderName = "models/smolvlm-shapes"
    static let help = "Hugging Face model folder (config.json, *.safetensors, tokenizer.json); default: the embedded demo model \(folderName) ($VLM_DEFAULT_MODEL overrides)."

    /// `given` (tilde expanded), else $VLM_DEFAULT_MODEL, else the demo model of the package this binary was built
    /// from (found from the executable's folder upwards, e.g. .build/release/vlm, then from this source file's).
    static func resolve(_ given: String?) throws -> String {
        if let given { return (given as NSString).expandingTildeInPath }
        if let env = ProcessInfo.processInfo.environment["VLM_DEFAULT_MODEL"], !env.isEmpty { return (env as NSString).expandingTildeInPath }
        var starts: [URL] = []
        if let exe = Bundle.main.executableURL?.resolvingSymlinksInPath() { starts.append(exe.deletingLastPathComponent()) }
        starts.append(URL(fileURLWithPath: #filePath).deletingLastPathComponent())
        for start in starts {
            var dir = start
            for _ in 0..<6 {
                let candidate = dir.appendingPathComponent(folderName)
                if FileManager.default.fileExists(atPath: candidate.appendingPathComponent("config.json").path) { return candidate.path }
                dir = dir.deletingLastPathComponent()
            }
        }
        throw DefaultModelError.notFound
    }
}

enum DefaultModelError: Error, CustomStringConvertible {
    case notFound
    var description: String {
        "no --model given and the embedded demo model (\(DefaultModel.folderName)) was not found beside this vlm binary; "
            + "pass --model DIR or set VLM_DEFAULT_MODEL"
    }
}
