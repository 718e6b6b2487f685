import Foundation

/// Locations of committed fixtures and the shared model metadata beside the repository.
enum Fixtures {
    /// <repo>/Tests/Fixtures
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let repository: URL = root.deletingLastPathComponent().deletingLastPathComponent()
    /// <repo>/../shared/models
    static let sharedModels: URL = repository.deletingLastPathComponent().appendingPathComponent("shared/models")

    static func model(_ name: String) -> URL { root.appendingPathComponent("models/\(name)") }

    static func json(_ url: URL) throws -> [String: Any] {
        let data = try Data(contentsOf: url)
        guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw NSError(domain: "Fixtures", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(url.path) is not a JSON object"])
        }
        return obj
    }

    static func floats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
}
