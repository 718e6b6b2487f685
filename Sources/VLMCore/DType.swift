import CKernels

/// Element type of a stored tensor. Raw values match `vk_dtype` in CKernels.
public enum DType: Int, Sendable, CaseIterable {
    case float32 = 0
    case float16 = 1
    case bfloat16 = 2

    /// Parses a safetensors dtype string ("F32", "F16", "BF16").
    public init?(safetensorsName: String) {
        switch safetensorsName {
        case "F32": self = .float32
        case "F16": self = .float16
        case "BF16": self = .bfloat16
        default: return nil
        }
    }

    public var safetensorsName: String {
        switch self {
        case .float32: return "F32"
        case .float16: return "F16"
        case .bfloat16: return "BF16"
        }
    }

    public var byteSize: Int { self == .float32 ? 4 : 2 }

    var kernelType: vk_dtype { vk_dtype(rawValue: UInt32(rawValue)) }
}

/// Byte sizes of every dtype the safetensors format defines, so a file holding one we cannot compute with
/// still validates and the error can say which tensor and dtype are the problem.
let safetensorsByteSizes: [String: Int] = [
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
]
