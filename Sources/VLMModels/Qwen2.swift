// Qwen2 / Qwen2.5 decoder (Qwen2.5-0.5B-Instruct, InternVL3's language model).
// Reference: transformers 5.23 models/qwen2/modeling_qwen2.py.
//
// Architecturally Qwen2 is the Llama decoder with learned biases on the q, k and v projections (never on o),
// so it is served by LlamaModel; LlamaConfiguration turns model_type "qwen2" into qkvBias = true. What differs
// lives in config.json: rope_theta 1e6, rms_norm_eps 1e-6, and optional sliding-window layers (rejected with a
// clear error until a checkpoint that needs them appears).
import VLMCore

public enum Qwen2 {
    public static func load(config: LlamaConfiguration, checkpoint: Checkpoint, pool: ThreadPool) throws -> LlamaModel {
        try LlamaModel(config: config, checkpoint: checkpoint, pool: pool)
    }
}
