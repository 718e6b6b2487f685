// Reading preprocessor_config.json / processor_config.json: shared pieces of the per-family configs.

import Foundation

/// A missing, malformed or out-of-range image-processor setting. The message names the file, the key, the value
/// found and what is expected.
public struct ProcessorConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let message: String

    public init(file: String, _ message: String) {
        self.file = file
        self.message = message
    }

    public var description: String { "\(file): \(message)" }
}

/// transformers' `size` / `max_image_size` dictionaries (only the keys these processors read).
struct ProcessorSizeDict: Decodable, Equatable {
    var longestEdge: Int?
    var height: Int?
    var width: Int?

    enum CodingKeys: String, CodingKey {
        case longestEdge = "longest_edge"
        case height, width
    }
}

/// `image_mean` / `image_std`: one number for all channels, or one per channel.
struct ProcessorChannelValues: Decodable, Equatable {
    var values: [Double]

    init(_ values: [Double]) { self.values = values }

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let one = try? container.decode(Double.self) {
            values = [one, one, one]
        } else {
            values = try container.decode([Double].self)
        }
    }
}

/// processor_config.json: the processor's own settings (here only the image token count per tile).
struct ProcessorSettings: Decodable {
    var imageSeqLen: Int?      // Idefics3Processor / SmolVLMProcessor
    var imageSeqLength: Int?   // InternVLProcessor

    enum CodingKeys: String, CodingKey {
        case imageSeqLen = "image_seq_len"
        case imageSeqLength = "image_seq_length"
    }
}

enum ProcessorConfigFiles {
    static let preprocessor = "preprocessor_config.json"
    static let processor = "processor_config.json"

    /// Decodes `name` in `directory`, turning I/O and decoding failures into `ProcessorConfigError`s that name
    /// the file and the key path.
    static func decode<T: Decodable>(_ type: T.Type, _ name: String, in directory: URL) throws -> T {
        let url = directory.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ProcessorConfigError(file: url.path, "file not found (expected the model folder's \(name))")
        }
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw ProcessorConfigError(file: url.path, "cannot read: \(error.localizedDescription)")
        }
        return try decode(type, from: data, file: url.path)
    }

    static func decode<T: Decodable>(_ type: T.Type, from data: Data, file: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch let error as ProcessorConfigError {
            throw ProcessorConfigError(file: file, error.message)
        } catch let error as DecodingError {
            throw ProcessorConfigError(file: file, describe(error))
        } catch {
            throw ProcessorConfigError(file: file, "\(error)")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey], _ last: CodingKey? = nil) -> String {
            let all = keys + (last.map { [$0] } ?? [])
            return all.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing key \"\(path(context.codingPath, key))\""
        case .typeMismatch(let type, let context):
            return "\"\(path(context.codingPath))\" has the wrong type (expected \(type))"
        case .valueNotFound(let type, let context):
            return "\"\(path(context.codingPath))\" is null (expected \(type))"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty { return "not valid JSON (\(context.debugDescription))" }
            return "\"\(path(context.codingPath))\": \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }
}

/// Checks shared by both processors' `validate()`.
enum ProcessorConfigChecks {
    /// Largest tile side / resize target accepted: transformers' Idefics3 caps images at 4096 (MAX_IMAGE_SIZE);
    /// anything larger is a typo that would allocate gigabytes.
    static let maxSide = 4096

    static func side(_ value: Int, _ key: String, file: String) throws {
        guard value > 0, value <= maxSide else {
            throw ProcessorConfigError(file: file, "\(key) is \(value); expected 1...\(maxSide)")
        }
    }

    static func normalization(doRescale: Bool, rescaleFactor: Double, doNormalize: Bool,
                              mean: [Double], std: [Double], file: String) throws {
        if doRescale {
            guard rescaleFactor.isFinite, rescaleFactor > 0 else {
                throw ProcessorConfigError(file: file, "rescale_factor is \(rescaleFactor); expected a positive number (1/255 = 0.00392156862745098)")
            }
        }
        guard doNormalize else { return }
        guard mean.count == 3, mean.allSatisfy(\.isFinite) else {
            throw ProcessorConfigError(file: file, "image_mean is \(mean); expected 3 finite numbers (one per RGB channel)")
        }
        guard std.count == 3, std.allSatisfy({ $0.isFinite && $0 > 0 }) else {
            throw ProcessorConfigError(file: file, "image_std is \(std); expected 3 positive numbers (one per RGB channel)")
        }
    }

    static func imageSeqLen(_ value: Int, key: String, file: String, hint: String) throws {
        guard value > 0, value <= 1 << 16 else {
            throw ProcessorConfigError(file: file, "\(key) is \(value); expected a positive token count (\(hint))")
        }
    }
}
