#!/usr/bin/env python3
"""Random-weight checkpoints with the exact dimensions of real models, for SwiftVLM speed benchmarks.

    python3 Benchmarks/make_random_checkpoint.py --preset smollm2-360m --dtype bf16 OUT_DIR
    python3 Benchmarks/make_random_checkpoint.py --preset qwen2.5-0.5b OUT_DIR [--verify]

Presets (dimensions of the published configs):
  smollm2-135m   LlamaForCausalLM  hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocab 49152
  smollm2-360m   LlamaForCausalLM  hidden 960, 32 layers, 15 heads, 5 KV heads, MLP 2560, vocab 49152
  qwen2.5-0.5b   Qwen2ForCausalLM  hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936, q/k/v bias
SmolLM2 presets: tied embeddings, rope theta 1e5, 8192 positions, RMSNorm eps 1e-5, and the SmolLM2 tokenizer files
(../shared/models/SmolLM2-135M-Instruct). Qwen2.5 preset: tied, theta 1e6, 32768 positions, eps 1e-6, no sliding
window, and the tokenizer of Tests/Fixtures/tokenizers/qwen2-style (a small trained stand-in whose ids all lie
below the 151936 rows; bos/eos ids in the configs are that tokenizer's).

OUT_DIR gets config.json (as transformers 5 writes it), generation_config.json, model.safetensors and the
tokenizer files. The weights are meaningless (matrices N(0, 0.02^2), norms 1, biases 0): the output text is
garbage, only the speed counts. The model is never instantiated with real storage: parameter names and shapes come
from a meta-device transformers model, each tensor is drawn in f32 one at a time and cast to the requested dtype,
so peak memory is about the checkpoint size (0.7 GB for smollm2-360m in bf16) and it takes seconds.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# The PyPI torchvision wheel is built against CUDA torch and fails to import next to the CPU wheel (transformers
# imports it when present); declaring the two op schemas it registers fakes for lets the import succeed.
for _op in ("nms", "qnms"):
    try:
        torch.library.define(f"torchvision::{_op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except Exception:
        pass
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_TOKENIZER = REPO.parent / "shared" / "models" / "SmolLM2-135M-Instruct"
QWEN2_TOKENIZER = REPO / "Tests" / "Fixtures" / "tokenizers" / "qwen2-style"

SMOLLM2 = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
               bos_token_id=1, eos_token_id=2, pad_token_id=2)
PRESETS = {
    "smollm2-135m": ("llama", dict(SMOLLM2, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536)),
    "smollm2-360m": ("llama", dict(SMOLLM2, hidden_size=960, num_hidden_layers=32, num_attention_heads=15,
                                   num_key_value_heads=5, intermediate_size=2560)),
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
                                   max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False,
                                   max_window_layers=21,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def qwen2_token_ids():
    added = {a["content"]: a["id"] for a in json.loads((QWEN2_TOKENIZER / "tokenizer.json").read_text())["added_tokens"]}
    return added["<|endoftext|>"], added["<|im_end|>"]


def make_config(preset, dtype):
    family, dims = PRESETS[preset]
    if family == "llama":
        cfg = LlamaConfig(**dims, architectures=["LlamaForCausalLM"])
    else:
        endoftext, im_end = qwen2_token_ids()
        cfg = Qwen2Config(**dims, bos_token_id=endoftext, eos_token_id=im_end, architectures=["Qwen2ForCausalLM"])
    cfg.dtype = dtype
    return family, cfg


def random_weights(cfg, dtype, seed):
    """name -> tensor for every parameter the checkpoint holds (the tied lm_head is not stored)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=dtype)
        elif name.endswith(".bias"):
            t = torch.zeros(shape, dtype=dtype)
        else:
            t = torch.randn(shape, generator=g).mul_(cfg.initializer_range).to(dtype)
        out[name] = t
    return out


def copy_tokenizer(family, out):
    if family == "llama":
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            shutil.copyfile(SMOLLM2_TOKENIZER / f, out / f)
    else:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(QWEN2_TOKENIZER / f, out / f)
        endoftext, im_end = qwen2_token_ids()
        gen = {"bos_token_id": endoftext, "pad_token_id": endoftext, "eos_token_id": [im_end, endoftext]}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def verify(out):
    """Loads the folder with transformers and runs a short greedy generation."""
    from transformers import AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Hello, benchmark!", return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    print(f"verify: loaded {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"generated {gen[0, ids.shape[1]:].tolist()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smollm2-360m")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="load the result with transformers and generate 4 tokens")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    dtype = DTYPES[args.dtype]
    family, cfg = make_config(args.preset, dtype)
    if family == "qwen2" and not (QWEN2_TOKENIZER / "tokenizer.json").exists():
        sys.exit(f"missing {QWEN2_TOKENIZER}: run Tools/fixtures/make_qwen2_tokenizer.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    weights = random_weights(cfg, dtype, args.seed)
    save_file(weights, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    n = sum(t.numel() for t in weights.values())
    del weights
    cfg.save_pretrained(args.out)   # config.json only; generation_config.json comes with the tokenizer files
    copy_tokenizer(family, args.out)
    for f in args.out.iterdir():
        f.chmod(0o644)   # safetensors writes its file as 0600
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out}: {args.preset}, {args.dtype}, {n / 1e6:.1f}M parameters, {size / 1e6:.0f} MB, "
          f"{time.time() - t0:.1f} s")
    if args.verify:
        verify(args.out)


if __name__ == "__main__":
    main()
