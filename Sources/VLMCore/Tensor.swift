import CKernels

/// A tensor read from a checkpoint: its dtype, shape and a pointer to its elements. `storage` keeps the memory
/// (usually a `MappedFile`) alive for as long as the tensor is used.
public struct Tensor: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let storage: AnyObject

    public init(name: String, dtype: DType, shape: [Int], data: UnsafeRawPointer, storage: AnyObject) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
        self.storage = storage
    }

    public var count: Int { shape.reduce(1, *) }

    /// The same elements under another shape with the same element count (e.g. a conv kernel
    /// [out, c, kh, kw] seen as the matrix [out, c*kh*kw]); nil when the counts differ.
    public func reshaped(_ newShape: [Int]) -> Tensor? {
        guard newShape.reduce(1, *) == count else { return nil }
        return Tensor(name: name, dtype: dtype, shape: newShape, data: data, storage: storage)
    }

    /// All elements converted to f32 (for small tensors: norms, biases).
    public func floats() -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            if count > 0 { vk_to_f32(data, dtype.kernelType, count, buf.baseAddress!) }
            n = count
        }
    }

    /// Row `row` of a 2-D tensor converted to f32 into `out` (shape[1] floats).
    public func copyRow(_ row: Int, into out: UnsafeMutablePointer<Float>) {
        let width = shape.count > 1 ? shape[1] : count
        vk_to_f32(data + row * width * dtype.byteSize, dtype.kernelType, width, out)
    }
}

/// Owned, aligned memory for tensors that cannot be used in place (misaligned in the file, or made by us).
public final class TensorBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(byteCount: Int) {
        self.byteCount = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
    }

    deinit { pointer.deallocate() }
}
