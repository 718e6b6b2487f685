import Foundation
import VLMCore

/// Decodes a typed configuration from JSON, turning Swift's `DecodingError` into a message that names the
/// file, the field path and what was expected.
public func decodeConfig<T: Decodable>(_ type: T.Type, from data: Data, file: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let error as DecodingError {
        throw ModelFileError(file: file, describe(error))
    } catch let error as ModelFileError {
        throw error
    } catch {
        throw ModelFileError(file: file, "could not be decoded (\(error))")
    }
}

private func describe(_ error: DecodingError) -> String {
    func path(_ p: [CodingKey]) -> String { p.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
    switch error {
    case .keyNotFound(let key, let ctx):
        let parent = path(ctx.codingPath)
        return "missing field '\(parent.isEmpty ? "" : parent + ".")\(key.stringValue)'"
    case .typeMismatch(let type, let ctx):
        return "field '\(path(ctx.codingPath))' should be \(type): \(ctx.debugDescription)"
    case .valueNotFound(let type, let ctx):
        return "field '\(path(ctx.codingPath))' is null, expected \(type)"
    case .dataCorrupted(let ctx):
        let p = path(ctx.codingPath)
        return p.isEmpty ? "is not valid JSON (\(ctx.debugDescription))" : "field '\(p)': \(ctx.debugDescription)"
    @unknown default:
        return "\(error)"
    }
}

/// An `eos_token_id`-style field: one integer or a list of them.
public struct OneOrManyInts: Codable, Sendable, Equatable {
    public var values: [Int]

    public init(_ values: [Int]) { self.values = values }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let one = try? c.decode(Int.self) {
            values = [one]
        } else {
            values = try c.decode([Int].self)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(values)
    }
}

/// The first fields every config.json has: enough to pick an architecture from the registry.
public struct ModelTypeHeader: Decodable, Sendable {
    public var modelType: String?
    public var architectures: [String]?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case architectures
    }
}
