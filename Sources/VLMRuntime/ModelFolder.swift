import Foundation
import VLMCore

/// The files of a Hugging Face model folder that the runtime reads besides weights and tokenizer.
public struct GenerationDefaults: Sendable {
    /// generation_config.json's eos_token_id (one or many), else config.json's.
    public var eosTokenIDs: [Int] = []
    public var bosTokenID: Int?

    public init() {}

    /// Reads generation_config.json when present; malformed JSON is an error that names the file.
    public static func load(directory: URL) throws -> GenerationDefaults {
        var d = GenerationDefaults()
        let url = directory.appendingPathComponent("generation_config.json")
        guard FileManager.default.fileExists(atPath: url.path) else { return d }
        let data = try Data(contentsOf: url)
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFileError(file: "generation_config.json", "is not a JSON object")
        }
        if let one = json["eos_token_id"] as? Int { d.eosTokenIDs = [one] }
        if let many = json["eos_token_id"] as? [Int] { d.eosTokenIDs = many }
        d.bosTokenID = json["bos_token_id"] as? Int
        return d
    }
}
