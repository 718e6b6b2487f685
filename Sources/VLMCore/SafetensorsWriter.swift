import Foundation

/// One tensor for `SafetensorsWriter`: its bytes are read while writing, so their owner must outlive the call.
public struct SafetensorsOutput {
    public var name: String
    public var dtype: String
    public var shape: [Int]
    public var bytes: UnsafeRawBufferPointer

    public init(name: String, dtype: String, shape: [Int], bytes: UnsafeRawBufferPointer) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

/// Writes a safetensors file tensor by tensor from memory the caller already holds (mapped checkpoints,
/// quantized buffers), without assembling the file in memory first. Tensors are laid out in the given order,
/// each starting on an 8-byte boundary of the data section so f16/f32 readers can use them in place.
public enum SafetensorsWriter {
    public static func write(_ tensors: [SafetensorsOutput], metadata: [String: String] = [:], to url: URL) throws {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        var padding: [Int] = []
        for t in tensors {
            let pad = (8 - offset % 8) % 8
            offset += pad
            padding.append(pad)
            header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
            throw ModelFileError(file: url.path, "cannot create the file (is the folder writable?)")
        }
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        var length = UInt64(json.count).littleEndian
        try handle.write(contentsOf: withUnsafeBytes(of: &length) { Data($0) })
        try handle.write(contentsOf: json)
        let chunk = 64 << 20  // bounded copies through Data
        for (t, pad) in zip(tensors, padding) {
            if pad > 0 { try handle.write(contentsOf: Data(count: pad)) }
            guard let base = t.bytes.baseAddress else { continue }
            var start = 0
            while start < t.bytes.count {
                let n = min(chunk, t.bytes.count - start)
                try handle.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base + start), count: n, deallocator: .none))
                start += n
            }
        }
    }
}
