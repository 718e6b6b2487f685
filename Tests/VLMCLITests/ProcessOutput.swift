import Foundation

/// What a finished process wrote and how it exited.
struct ProcessOutput {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// The `vlm` executable built next to the tests.
let vlmBinary = Bundle.main.bundleURL.appendingPathComponent("vlm")

/// Runs `executable` to the end, feeding it `stdin` (or nothing) and reading both pipes at once, so a process
/// that writes much to stderr cannot block on a full pipe while we wait on stdout.
func runProcess(_ executable: URL, _ arguments: [String], stdin: String? = nil,
                environment: [String: String] = [:]) throws -> ProcessOutput {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    if !environment.isEmpty {
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
    }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let input = Pipe()
    process.standardInput = stdin == nil ? FileHandle.nullDevice : input
    try process.run()
    if let stdin {
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try input.fileHandleForWriting.close()
    }
    let errData = ErrBox()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async { errData.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return ProcessOutput(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                         stderr: String(decoding: errData.data, as: UTF8.self))
}

private final class ErrBox: @unchecked Sendable { var data = Data() }
