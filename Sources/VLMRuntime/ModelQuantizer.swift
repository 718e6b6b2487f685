import Foundation
import VLMCore
import VLMModels

/// Writes a quantized copy of a model folder (`vlm quantize`): the model is loaded with load-time quantization,
/// exactly as `--quantize` would run it, and the weights it quantized are written as NAME.weight (I8, or U8 with
/// two int4 per byte) + NAME.scales (F16); every other tensor is copied unchanged, every other file copied, and
/// config.json gains `quantization_config`. So the folder loads to the same numbers as on-the-fly quantization.
public enum ModelQuantizer {
    public struct Summary: Sendable {
        public var quantizedTensors: Int
        public var sourceWeightBytes: Int
        public var outputWeightBytes: Int
    }

    public static func quantize(source: URL, destination: URL, options: QuantizationOptions, threads: Int) throws -> Summary {
        guard let scheme = options.scheme else {
            throw ModelFileError(file: destination.path, "no quantization scheme given")
        }
        let fm = FileManager.default
        guard source.standardizedFileURL.path != destination.standardizedFileURL.path else {
            throw ModelFileError(file: destination.path, "the destination must differ from the source folder")
        }
        if fm.fileExists(atPath: destination.path) {
            let contents = (try? fm.contentsOfDirectory(atPath: destination.path)) ?? ["?"]
            guard contents.isEmpty else {
                throw ModelFileError(file: destination.path, "already exists and is not an empty folder; choose a new destination")
            }
        }
        if try StoredQuantization.load(directory: source) != nil {
            throw ModelFileError(file: "config.json", "\(source.lastPathComponent) is already quantized (it has a quantization_config); quantize its float original instead")
        }
        let configURL = source.appendingPathComponent("config.json")
        guard var config = (try JSONSerialization.jsonObject(with: Data(contentsOf: configURL))) as? [String: Any] else {
            throw ModelFileError(file: "config.json", "is not a JSON object")
        }

        let loaded = try ModelRegistry.loadModel(directory: source, pool: ThreadPool(threadCount: threads), quantization: options)
        let checkpoint = loaded.checkpoint
        var outputs: [SafetensorsOutput] = []
        var notConverted: [String] = []
        var sourceBytes = 0, outputBytes = 0
        for t in checkpoint.storedTensors {
            sourceBytes += t.bytes.count
            if let q = checkpoint.quantizedWeights[t.canonicalName], t.storedName.hasSuffix(".weight") {
                let module = String(t.storedName.dropLast(".weight".count))
                outputs.append(SafetensorsOutput(name: t.storedName, dtype: scheme.storedDType,
                                                 shape: scheme.storedShape(rows: q.rows, columns: q.columns), bytes: q.dataBytes))
                outputs.append(SafetensorsOutput(name: module + ".scales", dtype: "F16",
                                                 shape: [q.rows, scheme.groups(columns: q.columns)], bytes: q.scalesBytes))
                outputBytes += q.byteCount
            } else {
                if t.storedName.hasSuffix(".weight"), t.entry.shape.count >= 2 {
                    notConverted.append(String(t.storedName.dropLast(".weight".count)))
                }
                outputs.append(SafetensorsOutput(name: t.storedName, dtype: t.entry.dtypeName, shape: t.entry.shape, bytes: t.bytes))
                outputBytes += t.bytes.count
            }
        }

        try fm.createDirectory(at: destination, withIntermediateDirectories: true)
        for name in try fm.contentsOfDirectory(atPath: source.path).sorted() {
            if name.hasSuffix(".safetensors") || name == "model.safetensors.index.json" || name == "config.json" { continue }
            try fm.copyItem(at: source.appendingPathComponent(name), to: destination.appendingPathComponent(name))
        }
        config["quantization_config"] = StoredQuantization(scheme: scheme, modulesNotConverted: notConverted).json
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: destination.appendingPathComponent("config.json"))
        try withExtendedLifetime(loaded.languageModel) {
            try withExtendedLifetime(checkpoint) {
                try SafetensorsWriter.write(outputs, metadata: ["format": "pt", "quantization": "\(scheme.name) group_size \(scheme.groupSize)"],
                                            to: destination.appendingPathComponent("model.safetensors"))
            }
        }
        return Summary(quantizedTensors: checkpoint.quantizedWeights.count, sourceWeightBytes: sourceBytes, outputWeightBytes: outputBytes)
    }
}
