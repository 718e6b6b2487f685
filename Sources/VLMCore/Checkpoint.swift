import Foundation

/// All weights of a Hugging Face model folder: `model.safetensors`, or shards listed by
/// `model.safetensors.index.json`. Loading is strict: a model asks for each tensor by its checkpoint name and
/// shape, and `checkAllUsed` turns names nobody asked for into an error, so a wrong architecture or a renamed
/// checkpoint fails loudly instead of running with missing pieces.
public final class Checkpoint: @unchecked Sendable {
    public let directory: URL
    private var files: [String: SafetensorsFile] = [:]
    /// Tensor name → file name (names as the file spells them).
    private var location: [String: String] = [:]
    /// Canonical name (after `rename`) → name in the file.
    private var fileName: [String: String] = [:]
    private var used: Set<String> = []
    private let lock = NSLock()
    /// Load-time quantization of float Linear weights (see `linear(_:out:in:bias:part:)`).
    public let quantization: QuantizationOptions
    /// config.json's quantization_config, for folders written by `vlm quantize`.
    public let storedQuantization: StoredQuantization?
    /// Weights quantized while loading, by canonical tensor name (what `vlm quantize` writes out).
    public private(set) var quantizedWeights: [String: QuantizedMatrix] = [:]

    /// `rename` maps names as stored to the names the model asks for (older checkpoint layouts of the same
    /// architecture); it must be one-to-one.
    public init(directory: URL, rename: ((String) -> String)? = nil, quantization: QuantizationOptions = .none) throws {
        self.directory = directory
        self.quantization = quantization
        storedQuantization = try StoredQuantization.load(directory: directory)
        let fm = FileManager.default
        let index = directory.appendingPathComponent("model.safetensors.index.json")
        let single = directory.appendingPathComponent("model.safetensors")
        if fm.fileExists(atPath: index.path) {
            let data = try Data(contentsOf: index)
            guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let map = json["weight_map"] as? [String: Any] else {
                throw ModelFileError(file: "model.safetensors.index.json", "expected an object with a 'weight_map' object of tensor name → shard file")
            }
            var shardNames = Set<String>()
            for (tensor, file) in map {
                guard let file = file as? String, !file.contains("/"), !file.contains("\\"), file != "..", !file.isEmpty else {
                    throw ModelFileError(file: "model.safetensors.index.json", "weight_map['\(tensor)'] must be a file name inside the model folder, found \(file)")
                }
                location[tensor] = file
                shardNames.insert(file)
            }
            for shard in shardNames.sorted() {
                let url = directory.appendingPathComponent(shard)
                guard fm.fileExists(atPath: url.path) else {
                    throw ModelFileError(file: "model.safetensors.index.json", "names shard '\(shard)', which is not in \(directory.path)")
                }
                files[shard] = try SafetensorsFile(path: url.path)
            }
            for (tensor, shard) in location where files[shard]?.entries[tensor] == nil {
                throw ModelFileError(file: shard, "weight_map says it holds '\(tensor)', but its header has no such tensor")
            }
        } else if fm.fileExists(atPath: single.path) {
            let file = try SafetensorsFile(path: single.path)
            files["model.safetensors"] = file
            for name in file.entries.keys { location[name] = "model.safetensors" }
        } else {
            throw ModelFileError(file: directory.path, "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)")
        }
        var canonicalLocation: [String: String] = [:]
        for (stored, file) in location {
            let canonical = rename?(stored) ?? stored
            if let other = fileName[canonical] {
                throw ModelFileError(file: directory.lastPathComponent, "tensors '\(other)' and '\(stored)' both map to '\(canonical)'")
            }
            fileName[canonical] = stored
            canonicalLocation[canonical] = file
        }
        location = canonicalLocation
    }

    public var tensorNames: [String] { location.keys.sorted() }

    public func contains(_ name: String) -> Bool { location[name] != nil }

    /// The shape recorded for `name`, without marking it used.
    public func shape(of name: String) -> [Int]? {
        guard let file = location[name], let stored = fileName[name] else { return nil }
        return files[file]?.entries[stored]?.shape
    }

    /// The tensor `name`, checked against `shape` when given. Marks it used.
    public func tensor(_ name: String, shape expected: [Int]? = nil) throws -> Tensor {
        guard let shard = location[name], let file = files[shard], let stored = fileName[name] else {
            throw ModelFileError(file: directory.lastPathComponent, "missing tensor '\(name)'")
        }
        let t = try file.tensor(stored)
        if let expected, t.shape != expected {
            throw ModelFileError(file: shard, "tensor '\(stored)' has shape \(t.shape), expected \(expected) from config.json")
        }
        lock.lock(); used.insert(name); lock.unlock()
        return t
    }

    /// The file and header entry of `name` (any dtype), without marking it used.
    func rawEntry(_ name: String) -> (file: SafetensorsFile, entry: SafetensorsEntry)? {
        guard let shard = location[name], let file = files[shard], let stored = fileName[name],
              let entry = file.entries[stored] else { return nil }
        return (file, entry)
    }

    func markUsed(_ name: String) {
        lock.lock(); used.insert(name); lock.unlock()
    }

    func recordQuantized(_ name: String, _ matrix: QuantizedMatrix) {
        lock.lock(); quantizedWeights[name] = matrix; lock.unlock()
    }

    /// Every tensor as stored: its name in the file, its canonical name, the header entry and its bytes.
    public var storedTensors: [(storedName: String, canonicalName: String, entry: SafetensorsEntry, bytes: UnsafeRawBufferPointer)] {
        location.keys.sorted().compactMap { canonical in
            guard let (file, entry) = rawEntry(canonical), let stored = fileName[canonical] else { return nil }
            return (stored, canonical, entry, file.rawBytes(of: entry))
        }
    }

    /// Marks names as deliberately ignored (e.g. precomputed rotary tables some checkpoints carry).
    public func ignore(where predicate: (String) -> Bool) {
        lock.lock(); defer { lock.unlock() }
        for name in location.keys where predicate(name) { used.insert(name) }
    }

    /// Throws, listing them, if any tensor in the checkpoint was never asked for.
    public func checkAllUsed() throws {
        let unused = location.keys.filter { !used.contains($0) }.sorted()
        guard unused.isEmpty else {
            let shown = unused.prefix(12).joined(separator: ", ")
            throw ModelFileError(file: directory.lastPathComponent, "\(unused.count) unexpected tensor(s) not used by this architecture: \(shown)\(unused.count > 12 ? ", ..." : "")")
        }
    }

    /// Checks that every name exists before any is loaded, so the error lists all missing tensors at once.
    public func requireAll(_ names: [String]) throws {
        let missing = names.filter { location[$0] == nil }
        guard missing.isEmpty else {
            let shown = missing.prefix(12).joined(separator: ", ")
            throw ModelFileError(file: directory.lastPathComponent, "\(missing.count) tensor(s) missing from the checkpoint: \(shown)\(missing.count > 12 ? ", ..." : "")")
        }
    }
}
