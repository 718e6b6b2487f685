/// Errors from reading model files. Each message names the file, the field and what was expected vs found,
/// so a user can fix the input without reading our code.
public struct ModelFileError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let message: String

    public init(file: String, _ message: String) {
        self.file = file
        self.message = message
    }

    public var description: String { "\(file): \(message)" }
}
