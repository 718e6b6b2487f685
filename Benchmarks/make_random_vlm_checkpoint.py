#!/usr/bin/env python3
"""Random-weight vision-language checkpoints with the exact dimensions of real models, for SwiftVLM speed benchmarks.

    python3 Benchmarks/make_random_vlm_checkpoint.py --preset smolvlm-500m --dtype bf16 OUT_DIR
    python3 Benchmarks/make_random_vlm_checkpoint.py --preset internvl3-1b --dtype bf16 OUT_DIR [--verify]

Presets (dimensions of the published configs):
  smolvlm-500m   Idefics3ForConditionalGeneration (model_type idefics3), SmolVLM-500M-Instruct
                 text  Llama: hidden 960, 32 layers, 15 heads, 5 KV heads (head_dim 64), MLP 2560, vocab 49280,
                       rope theta 1e5, 8192 positions, RMSNorm eps 1e-5, untied lm_head
                 vision SigLIP (Idefics3VisionConfig): hidden 768, 12 layers, 12 heads, MLP 3072, patch 16, 512 px,
                       gelu_pytorch_tanh, LayerNorm eps 1e-6
                 connector pixel shuffle scale_factor 4 (1024 patches -> 64 tokens of 12288) -> Linear(12288, 960)
                 image_token_id 49190; files: the real SmolVLM-500M-Instruct tokenizer, chat template, generation,
                 preprocessor (512 px tiles, longest edge 2048) and processor (image_seq_len 64) configs from
                 ../shared/models/SmolVLM-500M-Instruct.
  internvl3-1b   InternVLForConditionalGeneration (model_type internvl), InternVL3-1B-hf
                 text  Qwen2: hidden 896, 24 layers, 14 heads, 2 KV heads (head_dim 64), MLP 4864, vocab 151674,
                       q/k/v biases, rope theta 1e6 with rope_scaling dynamic factor 2.0 (as InternVL3-1B's
                       llm_config; equal to plain RoPE up to 32768 positions), RMSNorm eps 1e-6, untied lm_head
                 vision InternViT: hidden 1024, 24 layers, 16 heads, MLP 4096, 448 px, patch 14 (1024 patches + CLS),
                       qkv bias, LayerNorm eps 1e-6, layer scale, no qk norm, mean pooling (no final norm)
                 projector pixel shuffle 0.5 (-> 256 tokens of 4096) -> LayerNorm(4096) -> Linear(4096, 896) -> GELU
                       -> Linear(896, 896)
                 files: InternVL3-1B's real tokenizer.json is not available here, so the tokenizer is the one of
                 Tests/Fixtures/models/tiny-internvl (the small trained qwen2-style BPE with <img>, </img>,
                 <IMG_CONTEXT>, <video> as added tokens, InternVL3-hf chat template); every id it produces lies below
                 151674, and the config's image_token_id / bos / eos are that tokenizer's (<IMG_CONTEXT> 3024,
                 <|endoftext|> 3000, <|im_end|> 3002; the real ones are 151667 / 151643 / 151645). Preprocessor:
                 GotOcr2ImageProcessor 448x448 tiles, crop_to_patches, 1..12 tiles, bicubic, ImageNet mean/std;
                 processor image_seq_length 256.

OUT_DIR gets config.json (as transformers 5 writes it, dtype = --dtype), model.safetensors and the tokenizer /
processor files. Tensor names are those transformers' save_pretrained writes (for internvl3-1b the Hub layout:
language_model.model.*, language_model.lm_head.weight, vision_tower.*, multi_modal_projector.*). The weights are
meaningless (matrices and embeddings N(0, 0.02^2), norm weights 1, biases 0, layer scales 0.1): the output text is
garbage, only the speed counts. The model is never instantiated with real storage: names and shapes come from a
meta-device transformers model, and model.safetensors is written tensor by tensor (each drawn in f32 in row blocks
of at most 64 MB and cast to --dtype), so peak memory stays near 100 MB whatever the model size.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLVLM_500M = REPO.parent / "shared" / "models" / "SmolVLM-500M-Instruct"

# Shares the InternVL tokenizer / chat template / config conventions of the tiny fixtures (importing it also hides
# torchvision from transformers, which the fixture script explains).
_spec = importlib.util.spec_from_file_location("make_vlm_models", REPO / "Tools" / "fixtures" / "make_vlm_models.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, InternVLConfig,  # noqa: E402
                          InternVLForConditionalGeneration)
from transformers.modeling_utils import revert_weight_conversion  # noqa: E402

DTYPES = {"bf16": (torch.bfloat16, "BF16"), "f16": (torch.float16, "F16"), "f32": (torch.float32, "F32")}
INIT_STD = 0.02
BLOCK_BYTES = 64 << 20


def smolvlm_500m_config():
    text = dict(model_type="llama", hidden_size=960, num_hidden_layers=32, num_attention_heads=15,
                num_key_value_heads=5, head_dim=64, intermediate_size=2560, vocab_size=49280,
                max_position_embeddings=8192, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=2, architectures=["LlamaForCausalLM"])
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  num_channels=3, image_size=512, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    return Idefics3Config(text_config=text, vision_config=vision, image_token_id=49190, scale_factor=4,
                          tie_word_embeddings=False, use_cache=True,
                          architectures=["Idefics3ForConditionalGeneration"])


def internvl3_1b_config():
    added, _ = fixtures.qwen2_style_ids()
    text = dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, intermediate_size=4864, vocab_size=151674, max_position_embeddings=32768,
                rms_norm_eps=1e-6, hidden_act="silu",
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000.0},
                use_sliding_window=False, sliding_window=None, max_window_layers=70, tie_word_embeddings=False,
                bos_token_id=added["<|endoftext|>"], eos_token_id=added["<|im_end|>"], use_cache=True,
                architectures=["Qwen2ForCausalLM"])
    vision = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  attention_bias=True, use_qk_norm=False, hidden_act="gelu", norm_type="layer_norm",
                  layer_norm_eps=1e-6, image_size=[448, 448], patch_size=[14, 14], num_channels=3,
                  use_mask_token=False, use_absolute_position_embeddings=True, layer_scale_init_value=0.1,
                  use_mean_pooling=True, architectures=["InternVisionModel"])
    return InternVLConfig(text_config=text, vision_config=vision, image_token_id=added["<IMG_CONTEXT>"],
                          image_seq_length=256, downsample_ratio=0.5, projector_hidden_act="gelu",
                          vision_feature_layer=-1, vision_feature_select_strategy="default",
                          tie_word_embeddings=False, architectures=["InternVLForConditionalGeneration"])


PRESETS = {
    "smolvlm-500m": (smolvlm_500m_config, Idefics3ForConditionalGeneration),
    "internvl3-1b": (internvl3_1b_config, InternVLForConditionalGeneration),
}


def checkpoint_shapes(cfg, cls):
    """{name on disk: (shape, kind)} from a meta-device model, named as save_pretrained would write them."""
    with torch.device("meta"):
        model = cls(cfg)
    kinds = {}
    for mname, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            kinds[f"{mname}.{pname}" if mname else pname] = type(m).__name__
    sd = model.state_dict()
    if set(sd) != set(kinds):
        sys.exit(f"buffers in the state dict: {sorted(set(sd) - set(kinds))}")
    marked = {k: v.new_empty(v.shape) for k, v in sd.items()}
    tags = {id(v): k for k, v in marked.items()}
    disk = revert_weight_conversion(model, marked)
    out = {}
    for name, t in disk.items():
        src = tags.get(id(t))
        if src is None or tuple(t.shape) != tuple(sd[src].shape):
            sys.exit(f"save_pretrained would transform {name}, not only rename it; update this script")
        out[name] = (tuple(t.shape), kinds[src], src)
    return out


def fill(shape, kind, src, g, dtype):
    """Yields the tensor in row blocks (f32 draws cast to dtype)."""
    if "Norm" in kind and src.endswith(".weight"):
        value = 1.0
    elif src.endswith(".bias"):
        value = 0.0
    elif src.endswith(("lambda_1", "lambda_2")):
        value = 0.1
    else:
        value = None
    rows = shape[0] if shape else 1
    row_elems = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, BLOCK_BYTES // 4 // row_elems)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        block_shape = (n,) + tuple(shape[1:]) if shape else ()
        if value is None:
            t = torch.randn(block_shape, generator=g).mul_(INIT_STD)
        else:
            t = torch.full(block_shape, value)
        yield t.to(dtype)


def write_safetensors(path, shapes, dtype, dtype_tag, seed):
    """model.safetensors written tensor by tensor (names sorted), never holding the whole model in memory."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(shapes):
        nbytes = int(np.prod(shapes[name][0])) * itemsize
        header[name] = {"dtype": dtype_tag, "shape": list(shapes[name][0]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for name in sorted(shapes):
            shape, kind, src = shapes[name]
            for block in fill(shape, kind, src, g, dtype):
                f.write(block.contiguous().view(torch.uint8).numpy().tobytes())
    if os.path.getsize(path) != 8 + len(hbytes) + offset:
        sys.exit(f"{path}: wrong size")
    return sum(int(np.prod(s[0])) for s in shapes.values())


def write_files(preset, out):
    if preset == "smolvlm-500m":
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "generation_config.json",
                  "preprocessor_config.json", "processor_config.json"):
            shutil.copyfile(SMOLVLM_500M / f, out / f)
        return
    fixtures.write_internvl_files(out)
    pre = fixtures.read_json(out / "preprocessor_config.json")
    pre.update(size={"height": 448, "width": 448}, max_patches=12, min_patches=1)
    fixtures.write_json(out / "preprocessor_config.json", pre)
    fixtures.write_json(out / "processor_config.json", {"image_seq_length": 256, "processor_class": "InternVLProcessor"})


def verify(out, preset):
    """Loads the folder with transformers (bf16 weights as stored) and runs a few decoder steps on text."""
    cls = PRESETS[preset][1]
    model, info = cls.from_pretrained(out, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"verify: {bad}")
    head, emb = model.lm_head.weight, model.get_input_embeddings().weight
    if head.data_ptr() == emb.data_ptr():
        sys.exit("verify: lm_head is tied")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                             do_sample=False)
    print(f"verify: loaded {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
          f"({next(model.parameters()).dtype}), no missing/unexpected keys, generated {gen[0, 6:].tolist()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="load the result with transformers and generate 3 tokens")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    dtype, tag = DTYPES[args.dtype]
    make_config, cls = PRESETS[args.preset]
    cfg = make_config()
    cfg.dtype = dtype
    args.out.mkdir(parents=True, exist_ok=True)
    shapes = checkpoint_shapes(cfg, cls)
    n = write_safetensors(args.out / "model.safetensors", shapes, dtype, tag, args.seed)
    cfg.save_pretrained(args.out)   # config.json only
    write_files(args.preset, args.out)
    for f in args.out.iterdir():
        f.chmod(0o644)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out}: {args.preset}, {args.dtype}, {n / 1e6:.1f}M parameters, {size / 1e6:.0f} MB, "
          f"{time.time() - t0:.1f} s")
    if args.verify:
        verify(args.out, args.preset)


if __name__ == "__main__":
    main()
