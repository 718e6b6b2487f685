import Foundation
import VLMCore

/// RoPE settings from config.json in either layout: transformers 4.x (`rope_theta` at the top, optional
/// `rope_scaling`) or 5.x (`rope_parameters` holding `rope_theta`, `rope_type` and the scaling fields).
public struct RopeConfiguration: Sendable, Equatable {
    public var theta: Double
    public var type: String
    public var factor: Double?
    public var lowFreqFactor: Double?
    public var highFreqFactor: Double?
    public var originalMaxPositionEmbeddings: Int?
    public var partialRotaryFactor: Double?

    /// "dynamic" (NTK) only changes the frequencies past max_position_embeddings, which our KV cache never
    /// reaches (the context is capped there), so within the supported context it is "default".
    public static let supportedTypes = ["default", "linear", "llama3", "dynamic"]

    public init(theta: Double, type: String = "default") {
        self.theta = theta
        self.type = type
    }

    struct Fields: Decodable {
        var ropeTheta: Double?
        var ropeType: String?
        var type: String?
        var factor: Double?
        var lowFreqFactor: Double?
        var highFreqFactor: Double?
        var originalMaxPositionEmbeddings: Int?
        var partialRotaryFactor: Double?

        enum CodingKeys: String, CodingKey {
            case ropeTheta = "rope_theta", ropeType = "rope_type", type, factor
            case lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
            case originalMaxPositionEmbeddings = "original_max_position_embeddings"
            case partialRotaryFactor = "partial_rotary_factor"
        }
    }

    /// Merges the 5.x `rope_parameters`, the 4.x `rope_scaling` and the top-level `rope_theta`.
    init(ropeParameters: Fields?, ropeScaling: Fields?, topLevelTheta: Double?, defaultTheta: Double) {
        let p = ropeParameters ?? ropeScaling
        theta = ropeParameters?.ropeTheta ?? topLevelTheta ?? ropeScaling?.ropeTheta ?? defaultTheta
        type = p?.ropeType ?? p?.type ?? "default"
        factor = p?.factor
        lowFreqFactor = p?.lowFreqFactor
        highFreqFactor = p?.highFreqFactor
        originalMaxPositionEmbeddings = p?.originalMaxPositionEmbeddings
        partialRotaryFactor = p?.partialRotaryFactor
    }

    func validate(file: String) throws {
        guard Self.supportedTypes.contains(type) else {
            throw ModelFileError(file: file, "rope type '\(type)' is not supported (supported: \(Self.supportedTypes.joined(separator: ", ")))")
        }
        if type == "linear", factor == nil {
            throw ModelFileError(file: file, "rope type 'linear' needs 'factor'")
        }
        if type == "llama3", factor == nil || lowFreqFactor == nil || highFreqFactor == nil || originalMaxPositionEmbeddings == nil {
            throw ModelFileError(file: file, "rope type 'llama3' needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings")
        }
        if let f = partialRotaryFactor, f != 1 {
            throw ModelFileError(file: file, "partial_rotary_factor \(f) is not supported (only 1.0)")
        }
    }
}

/// Rotary position embedding in the Hugging Face "rotate half" layout: dimension i pairs with i + headDim/2.
/// Frequencies are computed in f32 exactly as transformers' ROPE_INIT_FUNCTIONS do.
public struct RotaryEmbedding: Sendable {
    public let headDim: Int
    /// [headDim / 2]
    public let inverseFrequencies: [Float]

    public init(headDim: Int, configuration c: RopeConfiguration) {
        self.headDim = headDim
        let half = headDim / 2
        let base = Float(c.theta)
        var inv = (0..<half).map { i in 1.0 / powf(base, Float(2 * i) / Float(headDim)) }
        switch c.type {
        case "linear":
            let f = Float(c.factor ?? 1)
            inv = inv.map { $0 / f }
        case "llama3":
            let factor = Float(c.factor ?? 1), low = Float(c.lowFreqFactor ?? 1), high = Float(c.highFreqFactor ?? 1)
            let oldContext = Float(c.originalMaxPositionEmbeddings ?? 8192)
            let lowWavelen = oldContext / low, highWavelen = oldContext / high
            inv = inv.map { f in
                let wavelen = 2 * Float.pi / f
                let scaled = wavelen > lowWavelen ? f / factor : f
                guard !(wavelen < highWavelen), !(wavelen > lowWavelen) else { return scaled }
                let smooth = (oldContext / wavelen - low) / (high - low)
                return (1 - smooth) * scaled / factor + smooth * scaled
            }
        default:
            break
        }
        inverseFrequencies = inv
    }

    /// Rotates `rows` rows of `heads` heads in place; row r sits at position `position0 + r`.
    /// x: [rows, rowStride] with head h at offset h * headDim.
    public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, rowStride: Int, heads: Int, position0: Int) {
        let half = headDim / 2
        var cosines = [Float](repeating: 0, count: half)
        var sines = [Float](repeating: 0, count: half)
        for r in 0..<rows {
            let p = Float(position0 + r)
            for i in 0..<half {
                let angle = p * inverseFrequencies[i]
                cosines[i] = cos(angle)
                sines[i] = sin(angle)
            }
            for h in 0..<heads {
                let v = x + r * rowStride + h * headDim
                for i in 0..<half {
                    let a = v[i], b = v[i + half]
                    v[i] = a * cosines[i] - b * sines[i]
                    v[i + half] = b * cosines[i] + a * sines[i]
                }
            }
        }
    }
}
