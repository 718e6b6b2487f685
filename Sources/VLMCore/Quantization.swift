// Weight quantization: int8 / int4 Linear weights with one f16 scale per group of input columns (the kernels'
// vk_qmatrix layout), made at load time from float weights or read from a folder written by `vlm quantize`.
//
// Folder format (quant_method "swiftvlm"): config.json gains
//   "quantization_config": {"quant_method": "swiftvlm", "bits": 4, "group_size": 32, "modules_not_converted": [...]}
// and each quantized Linear NAME stores
//   NAME.weight  I8 [out, in]            (bits 8: q in [-127, 127])
//                U8 [out, ceil(in / 2)]  (bits 4: two columns per byte, low nibble first, nibble = q + 8)
//   NAME.scales  F16 [out, ceil(in / group_size)]
// with w[o, i] = q[o, i] * scales[o, i / group_size]. Everything else keeps its source dtype.
import CKernels
import Foundation

/// Bits per weight and columns per scale.
public struct QuantizationScheme: Sendable, Equatable, CustomStringConvertible {
    public let bits: Int
    public let groupSize: Int

    public static let defaultGroupSize = 32
    public static let supportedBits = [4, 8]

    /// Throws unless bits is 4 or 8 and groupSize a positive multiple of 8 (what the kernels need: a group never
    /// starts inside a byte and one SIMD load of 8 columns never straddles two groups).
    public init(bits: Int, groupSize: Int = QuantizationScheme.defaultGroupSize, file: String = "quantization") throws {
        guard Self.supportedBits.contains(bits) else {
            throw ModelFileError(file: file, "bits \(bits) is not supported (supported: 4, 8)")
        }
        guard groupSize > 0, groupSize % Int(VK_QGROUP_MULTIPLE) == 0, groupSize <= 1 << 20 else {
            throw ModelFileError(file: file, "group_size \(groupSize) must be a positive multiple of \(VK_QGROUP_MULTIPLE) (at most \(1 << 20)), e.g. 32, 64 or 128")
        }
        self.bits = bits
        self.groupSize = groupSize
    }

    /// "q8" or "q4".
    public var name: String { "q\(bits)" }
    public var description: String { "\(name) (group size \(groupSize))" }

    /// The safetensors dtype of the stored levels.
    public var storedDType: String { bits == 8 ? "I8" : "U8" }

    /// Shape of NAME.weight as stored for a [rows, columns] matrix.
    public func storedShape(rows: Int, columns: Int) -> [Int] { [rows, bits == 8 ? columns : (columns + 1) / 2] }

    public func groups(columns: Int) -> Int { (columns + groupSize - 1) / groupSize }
}

/// Which Linear layers are quantized while a model loads (the `--quantize` load option).
public struct QuantizationOptions: Sendable, Equatable {
    /// nil: keep float weights as stored.
    public var scheme: QuantizationScheme?
    /// Also quantize the vision encoder and the connector/projector (off by default: they are small next to the
    /// decoder, run compute-bound over hundreds of tokens, and are the most sensitive to error).
    public var includeVision: Bool

    /// Multiply the compute-bound products of dense (bf16 / f16 / f32) weights, prefill chunks and vision tiles,
    /// with both operands rounded to bf16 (`vk_matmul_bf16_ws`): about twice as fast on CPUs with AVX-512 BF16, at
    /// the numerics of a bf16 run of the model rather than of the f32 reference. No effect on other CPUs, on decode
    /// (one token) or on quantized weights.
    public var bf16Products: Bool

    public init(scheme: QuantizationScheme? = nil, includeVision: Bool = false, bf16Products: Bool = false) {
        self.scheme = scheme
        self.includeVision = includeVision
        self.bf16Products = bf16Products
    }

    public static let none = QuantizationOptions()

    func applies(to part: LinearPart) -> QuantizationScheme? {
        guard let scheme else { return nil }
        return part == .language || includeVision ? scheme : nil
    }
}

/// Which part of a model a Linear belongs to, so load options can treat the vision tower differently.
public enum LinearPart: Sendable, Equatable {
    /// The decoder and its lm_head.
    case language
    /// The vision encoder and the connector/projector into the decoder's space.
    case vision
}

/// A quantized [rows, columns] matrix in the kernels' layout (see the file comment), read in place from a
/// checkpoint or owned after quantizing at load.
public final class QuantizedMatrix: @unchecked Sendable {
    public let scheme: QuantizationScheme
    public let rows: Int
    public let columns: Int
    /// Levels: [rows, columns] int8 or [rows, ceil(columns / 2)] packed int4.
    public let data: UnsafeRawPointer
    /// [rows, groups] f16 bits.
    public let scales: UnsafePointer<UInt16>
    private let storage: [AnyObject]

    init(scheme: QuantizationScheme, rows: Int, columns: Int, data: UnsafeRawPointer, scales: UnsafePointer<UInt16>,
         storage: [AnyObject]) {
        self.scheme = scheme
        self.rows = rows
        self.columns = columns
        self.data = data
        self.scales = scales
        self.storage = storage
    }

    public var dataByteCount: Int { rows * vk_qrow_bytes(Int32(scheme.bits), columns) }
    public var scalesByteCount: Int { rows * scheme.groups(columns: columns) * 2 }
    public var byteCount: Int { dataByteCount + scalesByteCount }

    var kernelMatrix: vk_qmatrix {
        vk_qmatrix(data: data, scales: scales, group_size: scheme.groupSize, bits: Int32(scheme.bits))
    }

    /// Quantizes a float [rows, columns] tensor, rows split over the cores.
    public static func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> QuantizedMatrix {
        let rows = weight.shape[0], columns = weight.count / max(rows, 1)
        let data = TensorBuffer(byteCount: rows * vk_qrow_bytes(Int32(scheme.bits), columns))
        let scales = TensorBuffer(byteCount: rows * scheme.groups(columns: columns) * 2)
        let scalePointer = scales.pointer.bindMemory(to: UInt16.self, capacity: max(1, rows * scheme.groups(columns: columns)))
        let chunks = min(rows, 4 * max(1, ProcessInfo.processInfo.activeProcessorCount))
        if chunks > 0 {
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                // The scheme was validated, so the kernel cannot refuse it.
                _ = vk_quantize_rows(weight.data, weight.dtype.kernelType, columns, Int32(scheme.bits), scheme.groupSize,
                                     rows * c / chunks, rows * (c + 1) / chunks, data.pointer, scalePointer)
            }
        }
        return QuantizedMatrix(scheme: scheme, rows: rows, columns: columns, data: UnsafeRawPointer(data.pointer),
                               scales: UnsafePointer(scalePointer), storage: [data, scales])
    }

    /// Row `row` dequantized to f32 (columns floats), for tests and accuracy checks.
    public func dequantizedRow(_ row: Int) -> [Float] {
        var m = kernelMatrix
        return [Float](unsafeUninitializedCapacity: columns) { buf, n in
            if columns > 0 { vk_dequantize_row(&m, columns, row, buf.baseAddress!) }
            n = columns
        }
    }

    /// The stored bytes of the levels and of the scales (what `vlm quantize` writes).
    public var dataBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: data, count: dataByteCount) }
    public var scalesBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: UnsafeRawPointer(scales), count: scalesByteCount) }
}

/// config.json's `quantization_config` of a folder written by `vlm quantize`.
public struct StoredQuantization: Sendable, Equatable {
    public static let method = "swiftvlm"
    public let scheme: QuantizationScheme
    /// Module names left in float (informational: each weight's dtype is what decides).
    public let modulesNotConverted: [String]

    public init(scheme: QuantizationScheme, modulesNotConverted: [String]) {
        self.scheme = scheme
        self.modulesNotConverted = modulesNotConverted
    }

    /// Reads and validates `quantization_config` from config.json in `directory`; nil when the folder has no
    /// config.json or the config has no quantization_config.
    public static func load(directory: URL) throws -> StoredQuantization? {
        let url = directory.appendingPathComponent("config.json")
        guard let data = try? Data(contentsOf: url) else { return nil }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFileError(file: "config.json", "is not a JSON object")
        }
        guard let value = json["quantization_config"], !(value is NSNull) else { return nil }
        let file = "config.json"
        guard let q = value as? [String: Any] else {
            throw ModelFileError(file: file, "'quantization_config' must be an object")
        }
        let method = q["quant_method"] as? String
        guard method == Self.method else {
            throw ModelFileError(file: file, "quantization_config.quant_method is \(method.map { "'\($0)'" } ?? "missing"); only '\(Self.method)' (written by `vlm quantize`) is supported")
        }
        guard let bitsValue = q["bits"], let bits = exactInt(bitsValue) else {
            throw ModelFileError(file: file, "quantization_config.bits must be an integer (4 or 8), found \(q["bits"].map { "\($0)" } ?? "nothing")")
        }
        guard let groupValue = q["group_size"], let group = exactInt(groupValue) else {
            throw ModelFileError(file: file, "quantization_config.group_size must be an integer, found \(q["group_size"].map { "\($0)" } ?? "nothing")")
        }
        let scheme = try QuantizationScheme(bits: bits, groupSize: group, file: "config.json: quantization_config")
        var modules: [String] = []
        if let m = q["modules_not_converted"], !(m is NSNull) {
            guard let list = m as? [Any], let names = list as? [String] else {
                throw ModelFileError(file: file, "quantization_config.modules_not_converted must be an array of strings")
            }
            modules = names
        }
        return StoredQuantization(scheme: scheme, modulesNotConverted: modules)
    }

    /// The JSON object written into config.json.
    public var json: [String: Any] {
        ["quant_method": Self.method, "bits": scheme.bits, "group_size": scheme.groupSize,
         "modules_not_converted": modulesNotConverted]
    }
}

// MARK: - Linear weights from a checkpoint

extension Checkpoint {
    /// The Linear `name` ([out, in], `name.weight` and, when `bias`, `name.bias`): the one place models take
    /// Linear weights from a checkpoint. A stored int8/int4 weight (with `name.scales`) is validated against
    /// config.json's quantization_config and [out, in] and used in place; a float weight is quantized when the
    /// load options ask for it for this `part`, else used as stored.
    public func linear(_ name: String, out: Int, in inFeatures: Int, bias: Bool, part: LinearPart = .language) throws -> Linear {
        let biasValues = bias ? try tensor(name + ".bias", shape: [out]).floats() : nil
        if let matrix = try storedQuantizedMatrix(name, out: out, in: inFeatures) {
            return Linear(quantized: matrix, bias: biasValues)
        }
        let weight = try tensor(name + ".weight", shape: [out, inFeatures])
        return try linear(weight: weight, name: name + ".weight", bias: biasValues, part: part)
    }

    /// A Linear over a float tensor the model already holds (e.g. an untied lm_head), quantized when the load
    /// options ask for it for `part`. `name` is the tensor's canonical name, under which it is recorded.
    public func linear(weight: Tensor, name: String, bias: [Float]? = nil, part: LinearPart = .language) throws -> Linear {
        guard let scheme = quantization.applies(to: part), weight.shape.count == 2 else {
            return Linear(weight: weight, bias: bias, bf16Products: quantization.bf16Products)
        }
        let matrix = quantizedCopy(of: weight, scheme: scheme)
        recordQuantized(name, matrix)
        return Linear(quantized: matrix, bias: bias)
    }

    /// The scheme of the copy of a tied lm_head (the embedding matrix) that computes the logits when the decoder is
    /// quantized, at load (--quantize) or in a `vlm quantize` folder; nil when the decoder stays float. Always 8 bits
    /// (with the decoder's group size): the head is a third of what a small model's decode streams per token, and
    /// at 4 bits it would move the logits of every token (llama.cpp likewise keeps its output matrix at 6-8 bits).
    /// The copy is made at load and never written out: the embedding lookups keep the float rows.
    public var tiedHeadScheme: QuantizationScheme? {
        guard let scheme = quantization.applies(to: .language) ?? storedQuantization?.scheme else { return nil }
        return try? QuantizationScheme(bits: 8, groupSize: scheme.groupSize)
    }

    /// `weight` quantized with `scheme`. When the float weight is mapped from the file its pages are then released
    /// (MappedFile.release), so after load-time quantization the resident set holds the quantized copy only.
    public func quantizedCopy(of weight: Tensor, scheme: QuantizationScheme) -> QuantizedMatrix {
        let matrix = QuantizedMatrix.quantize(weight, scheme: scheme)
        if let file = weight.storage as? MappedFile {
            file.release(UnsafeRawBufferPointer(start: weight.data, count: weight.count * weight.dtype.byteSize))
        }
        return matrix
    }

    /// `name.weight` as a stored quantized matrix, nil when it is a float tensor. Every mismatch is an error naming
    /// the tensor, what was expected and what was found.
    func storedQuantizedMatrix(_ name: String, out: Int, in inFeatures: Int) throws -> QuantizedMatrix? {
        let weightName = name + ".weight", scalesName = name + ".scales"
        guard let weight = rawEntry(weightName) else {
            throw ModelFileError(file: directory.lastPathComponent, "missing tensor '\(weightName)'")
        }
        let scales = rawEntry(scalesName)
        let file = weight.file.path.split(separator: "/").last.map(String.init) ?? weight.file.path
        let dtype = weight.entry.dtypeName
        guard dtype == "I8" || dtype == "U8" else {
            if scales != nil {
                throw ModelFileError(file: file, "tensor '\(scalesName)' is present but '\(weightName)' is \(dtype), not quantized (I8 or U8); remove the scales or re-run `vlm quantize`")
            }
            return nil
        }
        guard let stored = storedQuantization else {
            throw ModelFileError(file: file, "tensor '\(weightName)' is quantized (\(dtype)) but config.json has no quantization_config with quant_method '\(StoredQuantization.method)'")
        }
        let scheme = stored.scheme
        guard dtype == scheme.storedDType else {
            throw ModelFileError(file: file, "tensor '\(weightName)' has dtype \(dtype) (\(dtype == "I8" ? 8 : 4)-bit), but quantization_config.bits is \(scheme.bits), which stores \(scheme.storedDType)")
        }
        let expectedShape = scheme.storedShape(rows: out, columns: inFeatures)
        guard weight.entry.shape == expectedShape else {
            throw ModelFileError(file: file, "tensor '\(weightName)' (\(scheme.name)) has shape \(weight.entry.shape), expected \(expectedShape) for a [\(out), \(inFeatures)] weight from config.json")
        }
        guard let scales else {
            throw ModelFileError(file: file, "missing tensor '\(scalesName)' (F16 [\(out), \(scheme.groups(columns: inFeatures))]) for the quantized weight '\(weightName)'")
        }
        let scalesFile = scales.file.path.split(separator: "/").last.map(String.init) ?? scales.file.path
        guard scales.entry.dtypeName == "F16" else {
            throw ModelFileError(file: scalesFile, "tensor '\(scalesName)' has dtype \(scales.entry.dtypeName), expected F16")
        }
        let expectedScales = [out, scheme.groups(columns: inFeatures)]
        guard scales.entry.shape == expectedScales else {
            throw ModelFileError(file: scalesFile, "tensor '\(scalesName)' has shape \(scales.entry.shape), expected \(expectedScales) for in_features \(inFeatures) and quantization_config.group_size \(scheme.groupSize) (does group_size match the file?)")
        }
        let dataBytes = weight.file.rawBytes(of: weight.entry)
        var scaleBytes = scales.file.rawBytes(of: scales.entry)
        var owners: [AnyObject] = [weight.file.file, scales.file.file]
        // Levels are bytes (any address); f16 scales need 2-byte alignment, else they are copied.
        if let base = scaleBytes.baseAddress, Int(bitPattern: base) % 2 != 0 {
            let copy = TensorBuffer(byteCount: scaleBytes.count)
            copy.pointer.copyMemory(from: base, byteCount: scaleBytes.count)
            scaleBytes = UnsafeRawBufferPointer(start: copy.pointer, count: scaleBytes.count)
            owners.append(copy)
        }
        let empty = TensorBuffer(byteCount: 2)  // zero-size tensors still need valid pointers
        owners.append(empty)
        let dataPointer = dataBytes.baseAddress ?? UnsafeRawPointer(empty.pointer)
        let scalePointer = (scaleBytes.baseAddress ?? UnsafeRawPointer(empty.pointer)).assumingMemoryBound(to: UInt16.self)
        markUsed(weightName)
        markUsed(scalesName)
        return QuantizedMatrix(scheme: scheme, rows: out, columns: inFeatures, data: dataPointer, scales: scalePointer,
                               storage: owners)
    }
}

extension SafetensorsFile {
    /// The bytes of a validated entry, whatever its dtype.
    func rawBytes(of entry: SafetensorsEntry) -> UnsafeRawBufferPointer {
        file.bytes(at: dataStart + entry.byteRange.lowerBound, count: entry.byteRange.count)
    }
}
