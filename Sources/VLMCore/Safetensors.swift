import Foundation

/// Where one tensor lives in a safetensors file, as its header declares it (already validated).
public struct SafetensorsEntry: Sendable {
    public let name: String
    /// The dtype string as written ("BF16", "F32", "I64", ...).
    public let dtypeName: String
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let byteRange: Range<Int>
}

/// One `.safetensors` file, memory-mapped and validated before any tensor is handed out:
/// header length, header JSON, every dtype/shape against its byte range, ranges inside the file and not
/// overlapping. The format is 8 bytes little-endian header length N, N bytes of JSON, then the data.
public final class SafetensorsFile: @unchecked Sendable {
    /// A header above this size is treated as hostile rather than parsed.
    public static let maximumHeaderBytes = 100 * 1024 * 1024

    public let path: String
    public let file: MappedFile
    public let entries: [String: SafetensorsEntry]
    public let metadata: [String: String]
    let dataStart: Int

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        path = file.path
        let name = (path as NSString).lastPathComponent
        guard file.size >= 8 else {
            throw ModelFileError(file: name, "is \(file.size) bytes, too short for a safetensors header (needs at least 8)")
        }
        let lengthBytes = file.bytes(at: 0, count: 8)
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(lengthBytes[i]) << (8 * UInt64(i)) }
        guard headerLength <= UInt64(Self.maximumHeaderBytes) else {
            throw ModelFileError(file: name, "header length \(headerLength) exceeds the \(Self.maximumHeaderBytes)-byte limit (corrupt or not a safetensors file)")
        }
        guard Int(headerLength) <= file.size - 8 else {
            throw ModelFileError(file: name, "header length \(headerLength) runs past the end of the \(file.size)-byte file (truncated?)")
        }
        let headerData = Data(file.bytes(at: 8, count: Int(headerLength)))
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: headerData)
        } catch {
            throw ModelFileError(file: name, "header is not valid JSON (\(error.localizedDescription))")
        }
        guard let header = json as? [String: Any] else {
            throw ModelFileError(file: name, "header JSON is not an object")
        }
        dataStart = 8 + Int(headerLength)
        let dataSize = file.size - dataStart

        var metadata: [String: String] = [:]
        var entries: [String: SafetensorsEntry] = [:]
        for (key, value) in header {
            if key == "__metadata__" {
                if let meta = value as? [String: Any] {
                    for (k, v) in meta { if let s = v as? String { metadata[k] = s } }
                }
                continue
            }
            guard let info = value as? [String: Any] else {
                throw ModelFileError(file: name, "tensor '\(key)': header entry is not an object")
            }
            guard let dtypeName = info["dtype"] as? String else {
                throw ModelFileError(file: name, "tensor '\(key)': missing string field 'dtype'")
            }
            guard let elementSize = safetensorsByteSizes[dtypeName] else {
                throw ModelFileError(file: name, "tensor '\(key)': unknown dtype '\(dtypeName)'")
            }
            guard let shapeValues = info["shape"] as? [Any] else {
                throw ModelFileError(file: name, "tensor '\(key)': missing array field 'shape'")
            }
            var shape: [Int] = []
            var elements = 1
            for dim in shapeValues {
                guard let d = exactInt(dim), d >= 0 else {
                    throw ModelFileError(file: name, "tensor '\(key)': shape \(shapeValues) has a dimension that is not a non-negative integer")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow else {
                    throw ModelFileError(file: name, "tensor '\(key)': shape \(shapeValues) overflows")
                }
                elements = product
                shape.append(d)
            }
            guard let offsets = info["data_offsets"] as? [Any], offsets.count == 2,
                  let begin = exactInt(offsets[0]), let end = exactInt(offsets[1]) else {
                throw ModelFileError(file: name, "tensor '\(key)': 'data_offsets' must be two integers")
            }
            guard begin >= 0, begin <= end else {
                throw ModelFileError(file: name, "tensor '\(key)': data_offsets [\(begin), \(end)] are not an increasing pair")
            }
            guard end <= dataSize else {
                throw ModelFileError(file: name, "tensor '\(key)': data_offsets end \(end) is past the \(dataSize)-byte data section (truncated file?)")
            }
            let (bytes, overflow) = elements.multipliedReportingOverflow(by: elementSize)
            guard !overflow, bytes == end - begin else {
                throw ModelFileError(file: name, "tensor '\(key)': \(dtypeName) shape \(shape) needs \(overflow ? "too many" : String(bytes)) bytes but data_offsets span \(end - begin)")
            }
            entries[key] = SafetensorsEntry(name: key, dtypeName: dtypeName, shape: shape, byteRange: begin..<end)
        }
        // Overlapping byte ranges mean two tensors alias the same bytes: a corrupt or hostile file.
        let sorted = entries.values.filter { !$0.byteRange.isEmpty }.sorted { $0.byteRange.lowerBound < $1.byteRange.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.byteRange.lowerBound < a.byteRange.upperBound {
            throw ModelFileError(file: name, "tensors '\(a.name)' \(a.byteRange) and '\(b.name)' \(b.byteRange) overlap")
        }
        self.entries = entries
        self.metadata = metadata
    }

    /// The tensor `name`, in place when its bytes are aligned for its dtype, else copied to aligned memory.
    public func tensor(_ name: String) throws -> Tensor {
        let fileName = (path as NSString).lastPathComponent
        guard let entry = entries[name] else {
            throw ModelFileError(file: fileName, "has no tensor '\(name)'")
        }
        guard let dtype = DType(safetensorsName: entry.dtypeName) else {
            throw ModelFileError(file: fileName, "tensor '\(name)' has dtype \(entry.dtypeName); supported: F32, F16, BF16")
        }
        let bytes = file.bytes(at: dataStart + entry.byteRange.lowerBound, count: entry.byteRange.count)
        guard let start = bytes.baseAddress else {
            // Zero-element tensor: hand out a valid pointer that is never read.
            let empty = TensorBuffer(byteCount: 0)
            return Tensor(name: name, dtype: dtype, shape: entry.shape, data: UnsafeRawPointer(empty.pointer), storage: empty)
        }
        if Int(bitPattern: start) % dtype.byteSize == 0 {
            return Tensor(name: name, dtype: dtype, shape: entry.shape, data: start, storage: file)
        }
        let copy = TensorBuffer(byteCount: bytes.count)
        copy.pointer.copyMemory(from: start, byteCount: bytes.count)
        return Tensor(name: name, dtype: dtype, shape: entry.shape, data: UnsafeRawPointer(copy.pointer), storage: copy)
    }
}

/// An integer from JSONSerialization output, rejecting fractions and booleans. (On Linux every JSON number and
/// boolean is an NSNumber and `is Bool` matches all of them, so the type code decides.)
func exactInt(_ value: Any) -> Int? {
    guard let n = value as? NSNumber else { return nil }
    let code = String(cString: n.objCType)
    if code == "c" || code == "B" { return nil }
    if code == "d" || code == "f" {
        let d = n.doubleValue
        return d.rounded() == d && abs(d) < 9.0e15 ? Int(d) : nil
    }
    return Int(exactly: n.int64Value)
}

/// Writes a safetensors file (used by tests, fixtures and `vlm quantize`). Tensors are laid out in name order.
public func writeSafetensors(_ tensors: [(name: String, dtype: String, shape: [Int], bytes: [UInt8])],
                             metadata: [String: String] = [:], to url: URL) throws {
    var header: [String: Any] = [:]
    if !metadata.isEmpty { header["__metadata__"] = metadata }
    var offset = 0
    for t in tensors {
        header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
        offset += t.bytes.count
    }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while json.count % 8 != 0 { json.append(0x20) }
    var out = Data()
    var length = UInt64(json.count).littleEndian
    withUnsafeBytes(of: &length) { out.append(contentsOf: $0) }
    out.append(json)
    for t in tensors { out.append(contentsOf: t.bytes) }
    try out.write(to: url)
}
