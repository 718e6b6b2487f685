import Foundation

/// Everything that can go wrong while reading a Hugging Face `tokenizer.json` / `tokenizer_config.json`.
///
/// Every case names the file and, where there is one, the JSON path of the offending value, so a message reads
/// like `tokenizer.json: pre_tokenizer.type "Whitespace" is not supported (supported: ByteLevel, Digits, ...)`.
public enum TokenizerError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// A file that is required (tokenizer.json) does not exist or cannot be read.
    case fileNotReadable(path: String, reason: String)
    /// The file is not valid JSON, or its top level is not an object.
    case malformedJSON(file: String, reason: String)
    /// A required field is absent.
    case missingField(file: String, path: String)
    /// A field has the wrong JSON type.
    case wrongType(file: String, path: String, expected: String, found: String)
    /// A component `type` string this implementation does not handle.
    case unsupportedType(file: String, path: String, type: String, supported: [String])
    /// A value is present and well typed but cannot be used (unknown merge token, bad regex, ...).
    case invalidValue(file: String, path: String, reason: String)

    public var description: String {
        switch self {
        case let .fileNotReadable(path, reason):
            return "cannot read \(path): \(reason)"
        case let .malformedJSON(file, reason):
            return "\(file): malformed JSON: \(reason)"
        case let .missingField(file, path):
            return "\(file): required field \(path) is missing"
        case let .wrongType(file, path, expected, found):
            return "\(file): \(path) should be \(expected) but is \(found)"
        case let .unsupportedType(file, path, type, supported):
            return "\(file): \(path) \"\(type)\" is not supported (supported: \(supported.joined(separator: ", ")))"
        case let .invalidValue(file, path, reason):
            return "\(file): \(path): \(reason)"
        }
    }

    public var errorDescription: String? { description }
}
