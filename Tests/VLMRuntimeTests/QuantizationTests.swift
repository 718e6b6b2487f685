import Foundation
import VLMCore
@testable import VLMModels
import VLMRuntime
import XCTest

/// Quantized folders (`ModelQuantizer`, what `vlm quantize` runs) against load-time quantization, their validation
/// on corrupted files, and the accuracy of q8/q4 against float weights.
final class QuantizationTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vlm-quant-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    func options(_ bits: Int, group: Int = 32, vision: Bool = false) throws -> QuantizationOptions {
        QuantizationOptions(scheme: try QuantizationScheme(bits: bits, groupSize: group), includeVision: vision)
    }

    /// Teacher-forced next-token logits over `tokens`: the first `prefill` in one forward (the GEMM path), then
    /// one token at a time (the GEMV path); one logits row per position from prefill - 1 on.
    func logits(_ model: LanguageModel, tokens: [Int], prefill: Int) throws -> [[Float]] {
        let cache = model.makeCache(maxTokens: tokens.count + 1)
        var rows = [try model.forward(tokens: Array(tokens.prefix(prefill)), cache: cache)]
        for t in tokens.dropFirst(prefill) { rows.append(try model.forward(tokens: [t], cache: cache)) }
        return rows
    }

    func load(_ dir: URL, _ q: QuantizationOptions = .none) throws -> LanguageModel {
        try ModelRegistry.loadLanguageModel(directory: dir, pool: ThreadPool(threadCount: 2), quantization: q)
    }

    // MARK: Round trip

    /// The written folder loads to bit-identical logits to load-time quantization of the source with the same
    /// settings: tied and untied heads (the untied one is quantized), llama and qwen2, a VLM's decoder, q8 and q4.
    func testQuantizedFolderMatchesOnTheFlyQuantization() throws {
        let tokens = [1, 5, 9, 2, 33, 7, 11, 3, 17, 4]
        for name in ["tiny-llama-f32", "tiny-llama-untied-f32", "tiny-qwen2-bf16", "tiny-smolvlm"] {
            for (bits, group) in [(8, 32), (4, 8), (4, 32)] {
                let source = Fixtures.model(name)
                let dest = scratch.appendingPathComponent("\(name)-q\(bits)-g\(group)")
                let q = try options(bits, group: group, vision: name == "tiny-smolvlm")
                let summary = try ModelQuantizer.quantize(source: source, destination: dest, options: q, threads: 2)
                XCTAssertGreaterThan(summary.quantizedTensors, 0)
                XCTAssertLessThan(summary.outputWeightBytes, summary.sourceWeightBytes)
                let stored = try XCTUnwrap(try StoredQuantization.load(directory: dest))
                XCTAssertEqual(stored.scheme, try QuantizationScheme(bits: bits, groupSize: group))
                let file = try SafetensorsFile(path: dest.appendingPathComponent("model.safetensors").path)
                let dtypes = Set(file.entries.values.map(\.dtypeName))
                XCTAssertTrue(dtypes.contains(bits == 8 ? "I8" : "U8"), "\(name): \(dtypes)")
                XCTAssertTrue(file.entries.keys.contains { $0.hasSuffix(".scales") })
                XCTAssertEqual(file.entries.keys.contains("lm_head.weight") && file.entries["lm_head.weight"]?.dtypeName == (bits == 8 ? "I8" : "U8"),
                               name == "tiny-llama-untied-f32" || name == "tiny-smolvlm", "\(name): untied heads are quantized, tied ones not")
                for other in ["tokenizer.json", "generation_config.json"] {
                    XCTAssertEqual(FileManager.default.fileExists(atPath: dest.appendingPathComponent(other).path),
                                   FileManager.default.fileExists(atPath: source.appendingPathComponent(other).path), other)
                }
                let fromFolder = try load(dest)
                let onTheFly = try load(source, q)
                XCTAssertEqual(fromFolder.weightFormat, "q\(bits)")
                XCTAssertEqual(fromFolder.weightBytesPerToken, onTheFly.weightBytesPerToken)
                let vocab = fromFolder.vocabularySize
                let ids = tokens.map { $0 % vocab }
                XCTAssertEqual(try logits(fromFolder, tokens: ids, prefill: 6), try logits(onTheFly, tokens: ids, prefill: 6), "\(name) q\(bits) g\(group)")
            }
        }
    }

    /// A tied head (the embedding matrix) computes logits from an int8 copy whenever the decoder is quantized, at q8
    /// and q4, at load and from a `vlm quantize` folder; float loads keep it as stored. The bytes decode streams per
    /// token count the copy, not the float matrix.
    func testTiedHeadIsAnInt8CopyWhenTheDecoderIsQuantized() throws {
        let source = Fixtures.model("tiny-llama-f32")
        let float = try XCTUnwrap(try load(source) as? LlamaModel)
        XCTAssertTrue(float.config.tieWordEmbeddings)
        XCTAssertNil(float.lmHead.quantizationScheme)
        let vocab = float.config.vocabSize, hidden = float.config.hiddenSize
        XCTAssertEqual(float.lmHead.weightBytes, vocab * hidden * 4)
        for (bits, group) in [(8, 32), (4, 8)] {
            let q = try options(bits, group: group)
            let dest = scratch.appendingPathComponent("tied-q\(bits)")
            _ = try ModelQuantizer.quantize(source: source, destination: dest, options: q, threads: 1)
            for model in [try load(source, q), try load(dest)] {
                let llama = try XCTUnwrap(model as? LlamaModel)
                XCTAssertEqual(llama.lmHead.quantizationScheme, try QuantizationScheme(bits: 8, groupSize: group), "q\(bits)")
                XCTAssertEqual(llama.lmHead.weightBytes, vocab * (hidden + 2 * ((hidden + group - 1) / group)), "q\(bits)")
                // The copy is the embedding quantized row by row: within half a step of the float values (plus the f16
                // rounding of the scale).
                guard case .quantized(let head) = llama.lmHead.weights else { return XCTFail("q\(bits): head not quantized") }
                let embedding = llama.embedTokens.floats()
                for row in [0, vocab / 2, vocab - 1] {
                    let floats = Array(embedding[row * hidden..<(row + 1) * hidden])
                    let step = floats.map { abs($0) }.max().map { $0 / 127 } ?? 0
                    for (a, b) in zip(head.dequantizedRow(row), floats) {
                        XCTAssertEqual(a, b, accuracy: step * 0.6 + 1e-6, "q\(bits) row \(row)")
                    }
                }
            }
        }
    }

    /// The vision tower stays float unless asked, and the quantized VLM folder runs an image-free prompt the same
    /// way; with --quantize-vision the vision Linears are quantized too and loading still validates.
    func testVisionTowerIsQuantizedOnlyWhenAsked() throws {
        for vision in [false, true] {
            let dest = scratch.appendingPathComponent("smolvlm-\(vision)")
            _ = try ModelQuantizer.quantize(source: Fixtures.model("tiny-smolvlm"), destination: dest,
                                            options: try options(8, vision: vision), threads: 1)
            let file = try SafetensorsFile(path: dest.appendingPathComponent("model.safetensors").path)
            let visionDType = file.entries["model.vision_model.encoder.layers.0.self_attn.q_proj.weight"]?.dtypeName
            let connectorDType = file.entries["model.connector.modality_projection.proj.weight"]?.dtypeName
            XCTAssertEqual(visionDType == "I8", vision)
            XCTAssertEqual(connectorDType == "I8", vision)
            let stored = try XCTUnwrap(try StoredQuantization.load(directory: dest))
            XCTAssertEqual(stored.modulesNotConverted.contains("model.vision_model.encoder.layers.0.self_attn.q_proj"), !vision)
            XCTAssertTrue(stored.modulesNotConverted.contains("model.text_model.embed_tokens"))
            _ = try ModelRegistry.loadVisionLanguageModel(directory: dest, pool: ThreadPool(threadCount: 1))
        }
    }

    // MARK: Validation of untrusted quantized folders

    /// A q4 copy of tiny-llama-untied-f32 (K = 16 and 48, group 8) to corrupt.
    func quantizedFolder(_ name: String = "q4") throws -> URL {
        let dest = scratch.appendingPathComponent(name)
        _ = try ModelQuantizer.quantize(source: Fixtures.model("tiny-llama-untied-f32"), destination: dest,
                                        options: try options(4, group: 8), threads: 1)
        return dest
    }

    /// Rewrites the folder's model.safetensors through `edit` (name → (dtype, shape, bytes)).
    func rewrite(_ dir: URL, _ edit: (inout [String: (dtype: String, shape: [Int], bytes: [UInt8])]) -> Void) throws {
        let url = dir.appendingPathComponent("model.safetensors")
        var tensors: [String: (dtype: String, shape: [Int], bytes: [UInt8])] = [:]
        do {
            let file = try SafetensorsFile(path: url.path)
            for (name, e) in file.entries {
                let bytes = file.file.bytes(at: 0, count: file.file.size)
                let header = Int(bytes.load(as: UInt64.self).littleEndian) + 8
                tensors[name] = (e.dtypeName, e.shape, Array(bytes[(header + e.byteRange.lowerBound)..<(header + e.byteRange.upperBound)]))
            }
        }
        edit(&tensors)
        try writeSafetensors(tensors.keys.sorted().map { ($0, tensors[$0]!.dtype, tensors[$0]!.shape, tensors[$0]!.bytes) }, to: url)
    }

    func editConfig(_ dir: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = dir.appendingPathComponent("config.json")
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        var q = json["quantization_config"] as? [String: Any] ?? [:]
        edit(&q)
        json["quantization_config"] = q
        try JSONSerialization.data(withJSONObject: json).write(to: url)
    }

    func loadError(_ dir: URL) -> String {
        do {
            _ = try load(dir)
            return "loaded without error"
        } catch {
            return String(describing: error)
        }
    }

    func assertError(_ dir: URL, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        let message = loadError(dir)
        for p in parts { XCTAssertTrue(message.contains(p), "'\(p)' not in: \(message)", file: file, line: line) }
    }

    let qProj = "model.layers.0.self_attn.q_proj"

    func testScalesWithWrongShapeAreRejected() throws {
        let dir = try quantizedFolder()
        try rewrite(dir) { t in
            let s = t[qProj + ".scales"]!
            t[qProj + ".scales"] = ("F16", [s.shape[0], s.shape[1] + 1], s.bytes + [UInt8](repeating: 0, count: 2 * s.shape[0]))
        }
        assertError(dir, contains: ["tensor '\(qProj).scales' has shape [16, 3]", "expected [16, 2]", "group_size 8"])
    }

    func testScalesWithWrongDTypeAreRejected() throws {
        let dir = try quantizedFolder()
        try rewrite(dir) { t in
            let s = t[qProj + ".scales"]!
            t[qProj + ".scales"] = ("F32", [s.shape[0], s.shape[1] / 2], s.bytes)
        }
        assertError(dir, contains: ["tensor '\(qProj).scales' has dtype F32, expected F16"])
    }

    func testMissingScalesAreRejected() throws {
        let dir = try quantizedFolder()
        try rewrite(dir) { t in t[qProj + ".scales"] = nil }
        assertError(dir, contains: ["missing tensor '\(qProj).scales'", "F16 [16, 2]", "'\(qProj).weight'"])
    }

    func testWrongGroupSizeInConfigIsRejected() throws {
        let dir = try quantizedFolder()
        try editConfig(dir) { $0["group_size"] = 16 }
        // The first Linear checked (the untied lm_head, K = 16) already disagrees: 2 groups of 8 stored, 1 of 16 expected.
        assertError(dir, contains: ["tensor 'lm_head.scales' has shape [49152, 2], expected [49152, 1]", "group_size 16", "does group_size match"])
        try editConfig(dir) { $0["group_size"] = 12 }
        assertError(dir, contains: ["group_size 12 must be a positive multiple of 8"])
        try editConfig(dir) { $0["group_size"] = "32" }
        assertError(dir, contains: ["quantization_config.group_size must be an integer"])
    }

    func testBitsMismatchAndInvalidBitsAreRejected() throws {
        let dir = try quantizedFolder()
        try editConfig(dir) { $0["bits"] = 8 }
        assertError(dir, contains: ["has dtype U8 (4-bit), but quantization_config.bits is 8, which stores I8"])
        try editConfig(dir) { $0["bits"] = 3 }
        assertError(dir, contains: ["bits 3 is not supported (supported: 4, 8)"])
        try editConfig(dir) { $0["quant_method"] = "gptq" }
        assertError(dir, contains: ["quant_method is 'gptq'", "only 'swiftvlm'"])
    }

    func testWeightShapeAndOrphanTensorsAreRejected() throws {
        let dir = try quantizedFolder()
        try rewrite(dir) { t in
            let w = t[qProj + ".weight"]!
            t[qProj + ".weight"] = ("U8", [w.shape[0] / 2, w.shape[1] * 2], w.bytes)
        }
        assertError(dir, contains: ["tensor '\(qProj).weight' (q4) has shape [8, 16], expected [16, 8]", "[16, 16] weight"])

        let float = scratch.appendingPathComponent("float-with-scales")
        try FileManager.default.copyItem(at: Fixtures.model("tiny-llama-untied-f32"), to: float)
        try rewrite(float) { t in t[qProj + ".scales"] = ("F16", [16, 2], [UInt8](repeating: 0, count: 64)) }
        assertError(float, contains: ["'\(qProj).scales' is present but '\(qProj).weight' is F32"])
    }

    func testQuantizedWeightsWithoutConfigAreRejected() throws {
        let dir = try quantizedFolder()
        let url = dir.appendingPathComponent("config.json")
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        json["quantization_config"] = nil
        try JSONSerialization.data(withJSONObject: json).write(to: url)
        assertError(dir, contains: ["is quantized (U8) but config.json has no quantization_config"])
    }

    func testQuantizeRefusesQuantizedSourceAndNonEmptyDestination() throws {
        let dir = try quantizedFolder()
        XCTAssertThrowsError(try ModelQuantizer.quantize(source: dir, destination: scratch.appendingPathComponent("again"),
                                                         options: try options(8), threads: 1)) { error in
            XCTAssertTrue(String(describing: error).contains("already quantized"), "\(error)")
        }
        XCTAssertThrowsError(try ModelQuantizer.quantize(source: Fixtures.model("tiny-llama-f32"), destination: dir,
                                                         options: try options(8), threads: 1)) { error in
            XCTAssertTrue(String(describing: error).contains("not an empty folder"), "\(error)")
        }
    }

    // MARK: Accuracy against float weights

    struct Agreement { var positions = 0, agree = 0; var kl = 0.0 }

    /// Greedy agreement and mean KL(float ‖ quantized) of next-token distributions, teacher-forced over `sequences`.
    func compare(_ reference: LanguageModel, _ quantized: LanguageModel, sequences: [[Int]]) throws -> Agreement {
        var a = Agreement()
        for seq in sequences {
            let prefill = max(1, seq.count / 2)
            let ref = try logits(reference, tokens: seq, prefill: prefill)
            let got = try logits(quantized, tokens: seq, prefill: prefill)
            for (p, q) in zip(ref, got) {
                a.positions += 1
                if argmax(p) == argmax(q) { a.agree += 1 }
                a.kl += klDivergence(p, q)
            }
        }
        a.kl /= Double(max(a.positions, 1))
        return a
    }

    func argmax(_ v: [Float]) -> Int { v.indices.max { v[$0] < v[$1] } ?? 0 }

    func klDivergence(_ p: [Float], _ q: [Float]) -> Double {
        func logSoftmax(_ v: [Float]) -> [Double] {
            let m = Double(v.max() ?? 0)
            let lse = log(v.reduce(0.0) { $0 + exp(Double($1) - m) }) + m
            return v.map { Double($0) - lse }
        }
        let lp = logSoftmax(p), lq = logSoftmax(q)
        return zip(lp, lq).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) }
    }

    /// A float model's own greedy continuation of `prompt`, so the comparison runs over likely text.
    func greedy(_ model: LanguageModel, prompt: [Int], count: Int) throws -> [Int] {
        let cache = model.makeCache(maxTokens: prompt.count + count + 1)
        var seq = prompt
        var logits = try model.forward(tokens: prompt, cache: cache)
        for _ in 0..<count {
            let next = argmax(logits)
            seq.append(next)
            logits = try model.forward(tokens: [next], cache: cache)
        }
        return seq
    }

    func testAccuracyAgainstFloatOnFixtures() throws {
        var report: [String] = []
        for name in ["tiny-llama-f32", "tiny-llama-untied-f32", "tiny-qwen2-f32"] {
            let reference = try load(Fixtures.model(name))
            let v = reference.vocabularySize
            let sequences = try [[1, 2, 3], [100, 7, 42, 9], [5, 17, 250, 33, 8]].map {
                try greedy(reference, prompt: $0.map { $0 % v }, count: 20)
            }
            for bits in [8, 4] {
                let a = try compare(reference, try load(Fixtures.model(name), try options(bits)), sequences: sequences)
                let agreement = Double(a.agree) / Double(a.positions)
                report.append(String(format: "%@ q%d: greedy agreement %.3f (%d/%d), mean KL %.2e", name, bits, agreement, a.agree, a.positions, a.kl))
                // Random tiny weights (hidden 16-64) have tiny logit gaps and no outlier structure, so q4 moves them a
                // lot (measured: agreement 0.55-0.70, KL 0.23-1.46); the bounds only catch a broken path. The real
                // model below is the meaningful check.
                if bits == 8 {
                    XCTAssertGreaterThanOrEqual(agreement, 0.85, "\(name) q8")
                    XCTAssertLessThan(a.kl, 2e-2, "\(name) q8")
                } else {
                    XCTAssertGreaterThanOrEqual(agreement, 0.4, "\(name) q4")
                    XCTAssertLessThan(a.kl, 3, "\(name) q4")
                }
            }
        }
        print("Quantization accuracy vs float (teacher-forced over the float model's greedy text):\n" + report.joined(separator: "\n"))
    }

    /// The real SmolLM2-135M-Instruct: $VLM_SMOLLM2_DIR or ~/.cache/swiftvlm; skips the test where it is not built.
    private func smolLM2Directory() throws -> URL {
        let dir: URL
        if let d = ProcessInfo.processInfo.environment["VLM_SMOLLM2_DIR"] { dir = URL(fileURLWithPath: d) } else {
            dir = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/swiftvlm/SmolLM2-135M-Instruct")
        }
        guard FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) else {
            throw XCTSkip("SmolLM2-135M-Instruct not built; run bash Tools/smollm2.sh")
        }
        return dir
    }

    /// The real SmolLM2-135M-Instruct ($VLM_SMOLLM2_DIR or ~/.cache/swiftvlm): q8 should be near-lossless, q4 close.
    func testAccuracyAgainstFloatOnSmolLM2() throws {
        let dir = try smolLM2Directory()
        let runner = TextRunner(modelDirectory: dir, threads: 2)
        try runner.load()
        let reference = try XCTUnwrap(runner.model)
        let tokenizer = try XCTUnwrap(runner.tokenizer)
        let prompts = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,",
                       "Water boils at 100 degrees Celsius because", "The three primary colors are"]
        let sequences = try prompts.map { try greedy(reference, prompt: tokenizer.encode($0, addSpecialTokens: false), count: 16) }
        var report: [String] = []
        for bits in [8, 4] {
            let a = try compare(reference, try load(dir, try options(bits)), sequences: sequences)
            let agreement = Double(a.agree) / Double(a.positions)
            report.append(String(format: "SmolLM2-135M q%d g32: greedy agreement %.3f (%d/%d), mean KL %.2e", bits, agreement, a.agree, a.positions, a.kl))
            // Measured (5 prompts x 13 positions, g32): q8 0.923-0.954 / KL 9.6e-4-3.0e-3; q4 0.708-0.738 / KL
            // 0.35-0.36. A 135M model is among the most quantization-sensitive; q4 with Q4_0's plain max-scale rule
            // costs that much. One position is 1.5% of the agreement, and f32 rounding alone moves near-ties: the
            // decode attention kernels of 2026-12-07 (same float text, sums in another order) took q8 from 62/65
            // (KL 2.98e-3) to 60/65 (KL 2.61e-3) on one host. The KL bound is the sharper check. Where the prefill
            // multiplies int8 activations too (AVX-512 VNNI hosts, as llama.cpp's Q8_0 x Q8_0 products), the prompt's
            // keys and values carry the activation rounding as well: Zen 5, q8 60/65 KL 2.61e-3 -> 61/65 KL 4.68e-3,
            // q4 unchanged (0.351, the weights' rounding dominates).
            if bits == 8 {
                XCTAssertGreaterThanOrEqual(agreement, 0.9)
                XCTAssertLessThan(a.kl, 7.5e-3)
            } else {
                XCTAssertGreaterThanOrEqual(agreement, 0.6)
                XCTAssertLessThan(a.kl, 0.6)
            }
        }
        print(report.joined(separator: "\n"))
    }

    /// --bf16-compute against f32 on the real SmolLM2-135M-Instruct: prompts of 40+ tokens so the prefill takes
    /// the bf16 GEMM (more than 24 rows), then the float model's own greedy continuation teacher-forced one token
    /// at a time over the bf16-prefilled cache. Skipped where the CPU has no AVX-512 BF16 (the option is then off).
    func testBF16ProductsAccuracyOnSmolLM2() throws {
        guard HardwareProbe.bf16Products else { throw XCTSkip("no AVX-512 BF16 on this CPU: --bf16-compute has no effect") }
        let dir = try smolLM2Directory()
        let runner = TextRunner(modelDirectory: dir, threads: 2)
        try runner.load()
        let reference = try XCTUnwrap(runner.model)
        let tokenizer = try XCTUnwrap(runner.tokenizer)
        let prompts = [
            "The capital of France is Paris, the capital of Germany is Berlin, the capital of Italy is Rome, the capital of Portugal is Lisbon, and the capital of Spain is",
            "import math\n\ndef fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, computed iteratively so that even a very large n is fast and uses constant memory.\"\"\"\n    ",
            "Once upon a time, in a small village at the edge of a great forest, far from the sea and the noisy towns, there lived an old woodcutter and his daughter, who",
            "Water boils at 100 degrees Celsius at sea level, but at a lower temperature high in the mountains, because the vapour pressure of the liquid then equals the pressure of",
        ]
        let generated = 12
        let sequences = try prompts.map { try greedy(reference, prompt: tokenizer.encode($0, addSpecialTokens: false), count: generated) }
        let bf16 = try load(dir, QuantizationOptions(bf16Products: true))
        var a = Agreement()
        for seq in sequences {
            let prefill = seq.count - generated
            XCTAssertGreaterThan(prefill, 24, "prompt of \(prefill) tokens: it must be long enough for the bf16 GEMM")
            let ref = try logits(reference, tokens: seq, prefill: prefill)
            let got = try logits(bf16, tokens: seq, prefill: prefill)
            for (p, q) in zip(ref, got) {
                a.positions += 1
                if argmax(p) == argmax(q) { a.agree += 1 }
                a.kl += klDivergence(p, q)
            }
        }
        a.kl /= Double(max(a.positions, 1))
        let agreement = Double(a.agree) / Double(a.positions)
        print(String(format: "SmolLM2-135M bf16 products: greedy agreement %.3f (%d/%d), mean KL %.2e", agreement, a.agree, a.positions, a.kl))
        // Measured: agreement 1.000 (52/52), mean KL 1.4e-5 on Zen 4 and 2.2e-5 on a Xeon with AVX-512 BF16 (q8: 0.954, 3.0e-3).
        XCTAssertGreaterThanOrEqual(agreement, 0.95)
        XCTAssertLessThan(a.kl, 1e-3)
    }
}
