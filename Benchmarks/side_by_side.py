#!/usr/bin/env python3
"""Side-by-side CPU speed of SwiftVLM (`vlm bench`), transformers (torch fp32) and llama.cpp (llama-cpp-python).

    python3 Benchmarks/side_by_side.py [--model-kind smolvlm-500m|internvl3-1b|both] [--runs 3]
                                       [--prompt-tokens 128] [--gen-tokens 32] [--threads 2] [--out results.json]

All three run on the same random-weight checkpoints with the exact dimensions of SmolVLM-500M-Instruct and
InternVL3-1B-hf (Benchmarks/make_random_vlm_checkpoint.py, bf16, cached under ~/.cache/swiftvlm/bench/; an existing
/tmp/bench-<kind> folder written by that script is hard-linked in instead of being regenerated).

  ours          `vlm bench --output-format json` (load, prefill / decode tok/s, time to first token, peak RSS, and the
                machine's measured read bandwidth and FMA peak with the decode / vision bounds derived from them);
                bf16 as stored, plus --quantize q8 / q4 when `vlm bench --help` offers it; one more run with one
                image tile (SmolVLM: a 512x512 image with --no-image-splitting; InternVL: 448x448 with --max-tiles 1)
                for the vision encode time per tile.
  transformers  the same folder loaded in fp32 (sdpa attention, torch.set_num_threads(threads)): prefill of N
                synthetic tokens (logits of the last position only), M greedy decode steps with the KV cache (EOS
                ignored), and the vision encoder + connector on one tile of random pixels.
  llama.cpp     the decoder only: the text model is extracted into a plain LlamaForCausalLM (SmolVLM) or
                Qwen2ForCausalLM (InternVL3) folder, converted with llama.cpp's convert_hf_to_gguf.py to F16 / BF16 /
                Q8_0 and quantized with llama_model_quantize to Q4_0 (llama.cpp's default Q4_0 recipe: the output
                matrix gets Q6_K, here Q8_0 because 960 / 896 columns are no multiple of 256); then prompt eval of N tokens in one llama_decode and M single-token decode
                steps (greedy) with n_threads = n_threads_batch = threads. Vision for SmolVLM only: an F16 mmproj
                (convert_hf_to_gguf.py --mmproj, preprocessor longest_edge set to 512) encoded with mtmd
                (mtmd_encode_chunk); llama.cpp cuts the 512x512 image into one tile plus the global image, so the
                time is divided by the image tokens / 64. llama.cpp's InternVL converter wants the original
                OpenGVLab layout, not the -hf one, so InternVL vision is not measured there.

Every peer runs in its own subprocess (this script with --worker), one after another, so that they never share the
cores or the memory. Each measurement has one warm-up run and then --runs measured runs; tables show medians, the JSON
keeps {median, min, max}. `--report results.json` prints the tables of an earlier run again.

Needs: torch + transformers (fp32 CPU), `pip install llama-cpp-python` (builds llama.cpp from the sdist), and the
llama.cpp sources for the converter: --llama-cpp-src (default: $LLAMA_CPP_SRC, else /tmp/llama-src) must hold
convert_hf_to_gguf.py, conversion/ and gguf-py/ (the sdist's vendor/llama.cpp).
"""
import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKER = REPO / "Benchmarks" / "make_random_vlm_checkpoint.py"
CACHE = Path(os.environ.get("SWIFTVLM_BENCH_CACHE", Path.home() / ".cache" / "swiftvlm" / "bench"))
KINDS = {
    # kind: (architecture, text architecture, tile px, llama.cpp pre-tokenizer fallback, vlm image flags)
    "smolvlm-500m": ("Idefics3ForConditionalGeneration", "LlamaForCausalLM", 512, "smollm", ["--no-image-splitting"]),
    "internvl3-1b": ("InternVLForConditionalGeneration", "Qwen2ForCausalLM", 448, "qwen2", ["--max-tiles", "1"]),
}
LLAMA_TYPES = ["f16", "bf16", "q8_0", "q4_0"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def stats(xs):
    xs = [float(x) for x in xs]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else None


def med(v):
    return v["median"] if isinstance(v, dict) and v else v


def patch_torchvision():
    """The installed torchvision is broken; defining its ops lets transformers import it."""
    import torch
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_ok(d, kind):
    try:
        cfg = json.loads((d / "config.json").read_text())
        return (cfg.get("architectures") == [KINDS[kind][0]] and (d / "model.safetensors").stat().st_size > 100e6
                and (d / "tokenizer.json").exists())
    except (OSError, ValueError):
        return False


def ensure_checkpoint(kind):
    out = CACHE / f"{kind}-bf16"
    if checkpoint_ok(out, kind):
        return out
    tmp = Path(f"/tmp/bench-{kind}")
    if checkpoint_ok(tmp, kind):
        log(f"reusing {tmp} -> {out}")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in tmp.iterdir():
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copyfile(f, out / f.name)
        return out
    log(f"writing {out} with {MAKER.name}")
    subprocess.run([sys.executable, str(MAKER), "--preset", kind, "--dtype", "bf16", str(out)], check=True)
    return out


def extract_text_model(src, kind):
    """A plain Llama / Qwen2 folder holding only the decoder (model.*, lm_head.weight) for llama.cpp's converter."""
    out = CACHE / f"{kind}-bf16-text"
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    from safetensors import safe_open
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    text = dict(cfg["text_config"])
    text["architectures"] = [KINDS[kind][1]]
    text["tie_word_embeddings"] = False
    text["torch_dtype"] = text["dtype"] = "bfloat16"
    if "rope_theta" not in text and isinstance(text.get("rope_parameters"), dict):
        text["rope_theta"] = text["rope_parameters"].get("rope_theta")
    if kind == "internvl3-1b":
        # dynamic NTK scaling with factor 2 equals plain RoPE up to 32768 positions (the preset's docstring)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": text["rope_theta"]}
        text.pop("rope_scaling", None)
    prefixes = {"smolvlm-500m": ("model.text_model.", "lm_head."),
                "internvl3-1b": ("language_model.model.", "language_model.lm_head.")}[kind]
    tensors = {}
    with safe_open(src / "model.safetensors", framework="pt") as f:
        for name in f.keys():
            if name.startswith(prefixes[0]):
                tensors["model." + name[len(prefixes[0]):]] = f.get_tensor(name)
            elif name.startswith(prefixes[1]):
                tensors["lm_head." + name[len(prefixes[1]):]] = f.get_tensor(name)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(text, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).exists():
            shutil.copyfile(src / f, out / f)
    log(f"wrote {out} ({len(tensors)} tensors)")
    return out


CONVERT_SHIM = r"""
import sys
src, fallback = sys.argv[1], sys.argv[2]
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[3:]
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
import torch
for op in ("nms", "qnms"):  # the installed torchvision is broken (see patch_torchvision)
    try:
        torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except Exception:
        pass
import conversion.base as base
orig = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        # the random checkpoints' tokenizers are reconstructions whose hash llama.cpp does not know
        print(f"pre-tokenizer hash unknown; using {fallback!r}", file=sys.stderr)
        return fallback
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
orig_sp = base.TextModel._set_vocab_sentencepiece
def set_vocab_sentencepiece(self, *args, **kwargs):
    # without sentencepiece installed this raises ModuleNotFoundError before looking for tokenizer.model
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError("tokenizer.model")
    return orig_sp(self, *args, **kwargs)
base.TextModel._set_vocab_sentencepiece = set_vocab_sentencepiece
import runpy
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def ensure_gguf(text_dir, kind, qtype, llama_src):
    out = CACHE / f"{kind}-{qtype}.gguf"
    if out.exists() and out.stat().st_size > 10e6:
        return out
    if qtype in ("f16", "bf16", "q8_0"):
        log(f"converting {text_dir} -> {out.name}")
        p = subprocess.run([sys.executable, "-c", CONVERT_SHIM, str(llama_src), KINDS[kind][3], str(text_dir),
                            "--outtype", qtype, "--outfile", str(out) + ".part"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        (CACHE / f"{kind}-{qtype}.convert.log").write_text(p.stdout)
        if p.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf failed ({p.returncode}): {p.stdout.strip()[-800:]}")
        for line in p.stdout.splitlines():
            if "pre-tokenizer hash unknown" in line:
                log("  " + line)
    else:
        base = ensure_gguf(text_dir, kind, "bf16", llama_src)
        log(f"quantizing {base.name} -> {out.name}")
        code = ("import sys, llama_cpp\n"
                "p = llama_cpp.llama_model_quantize_default_params()\n"
                f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{qtype.upper()}\n"
                "p.nthread = 2\n"
                "rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)\n"
                "sys.exit(rc)\n")
        subprocess.run([sys.executable, "-c", code, str(base), str(out) + ".part"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.replace(str(out) + ".part", out)
    return out


def ensure_mmproj(ckpt, kind, llama_src):
    """llama.cpp's vision projector GGUF (F16) for mtmd; only SmolVLM's (Idefics3) layout is convertible: llama.cpp's
    InternVL converter expects the original OpenGVLab checkpoint layout, not the -hf one."""
    if kind != "smolvlm-500m":
        return None
    out = CACHE / f"{kind}-mmproj-f16.gguf"
    if out.exists() and out.stat().st_size > 10e6:
        return out
    # llama.cpp resizes to the preprocessor's longest_edge (2048: 16 tiles + the global image) before tiling; with
    # longest_edge 512 the 512x512 test image is exactly one tile, as in the other two engines' measurements
    src = CACHE / f"{kind}-mmproj-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.name != "preprocessor_config.json":
            os.link(f, src / f.name)
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    pre["size"] = {"longest_edge": KINDS[kind][2]}
    (src / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    log(f"converting {src} --mmproj -> {out.name}")
    p = subprocess.run([sys.executable, "-c", CONVERT_SHIM, str(llama_src), KINDS[kind][3], str(src), "--mmproj",
                        "--outtype", "f16", "--outfile", str(out) + ".part"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (CACHE / f"{kind}-mmproj.convert.log").write_text(p.stdout)
    if p.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf --mmproj failed ({p.returncode}): {p.stdout.strip()[-800:]}")
    made = Path(str(out) + ".part")
    if not made.exists():  # the converter may prefix the file name with mmproj-
        cands = sorted(CACHE.glob("*mmproj*.part"))
        made = cands[0] if cands else made
    os.replace(made, out)
    return out


def test_image(px):
    path = Path(f"/tmp/side_by_side-{px}.png")
    if not path.exists():
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Workers (run in subprocesses; print one JSON object on stdout)


def worker_transformers(a):
    import torch
    torch.set_num_threads(a.threads)
    patch_torchvision()
    import transformers
    transformers.utils.logging.disable_progress_bar()
    kind = a.kind
    cls = getattr(transformers, KINDS[kind][0])
    t0 = time.perf_counter()
    model = cls.from_pretrained(a.model_dir, dtype=torch.float32, attn_implementation=a.attn)
    model.eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    cfg = model.config
    vocab_hi = 3000 if kind == "internvl3-1b" else cfg.text_config.vocab_size - 200
    rng = random.Random(0)
    prefill, decode, vision = [], [], []
    px = KINDS[kind][2]
    with torch.inference_mode():
        for r in range(a.runs + 1):
            ids = torch.tensor([[rng.randrange(100, vocab_hi) for _ in range(a.prompt_tokens)]])
            t0 = time.perf_counter()
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            n = ids.shape[1]
            t2 = time.perf_counter()
            for _ in range(a.gen_tokens):
                n += 1
                out = model(input_ids=tok, attention_mask=torch.ones(1, n, dtype=torch.long),
                            past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t3 = time.perf_counter()
            del past, out
            pix = torch.randn(1, 3, px, px)
            t4 = time.perf_counter()
            if kind == "smolvlm-500m":
                feats = model.model.get_image_features(pixel_values=pix[:, None],
                                                       pixel_attention_mask=torch.ones(1, 1, px, px, dtype=torch.bool))
            else:
                feats = model.model.get_image_features(pixel_values=pix, vision_feature_layer=-1,
                                                       vision_feature_select_strategy="default")
            t5 = time.perf_counter()
            del feats
            if r == 0:
                continue  # warm-up
            prefill.append(a.prompt_tokens / (t1 - t0))
            decode.append(a.gen_tokens / (t3 - t2))
            vision.append((t5 - t4) * 1e3)
            log(f"  transformers run {r}: prefill {prefill[-1]:.1f} tok/s, decode {decode[-1]:.2f} tok/s, "
                f"vision {vision[-1]:.0f} ms/tile")
    return {"engine": "transformers", "version": transformers.__version__, "torch": torch.__version__,
            "dtype": "float32", "attn_implementation": a.attn, "threads": torch.get_num_threads(),
            "load_ms": load_ms, "prefill_tokens_per_second": stats(prefill),
            "decode_tokens_per_second": stats(decode),
            "time_to_first_token_ms": stats([a.prompt_tokens / p * 1e3 for p in prefill]),
            "vision_encode_ms_per_tile": stats(vision),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_llamacpp(a):
    import numpy as np
    import llama_cpp
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=a.model_dir, n_threads=a.threads, n_threads_batch=a.threads,
                          n_ctx=a.prompt_tokens + a.gen_tokens + 16, n_batch=max(512, a.prompt_tokens),
                          n_ubatch=max(512, a.prompt_tokens), logits_all=False, verbose=False)
    load_ms = (time.perf_counter() - t0) * 1e3
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    vocab_hi = 3000 if a.kind == "internvl3-1b" else n_vocab - 200
    rng = random.Random(0)
    mem = llama_cpp.llama_get_memory(ctx)

    def decode(tokens):
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)  # kept alive until llama_decode returns
        batch = llama_cpp.llama_batch_get_one(arr, len(tokens))
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    prefill, dec, perf = [], [], []
    for r in range(a.runs + 1):
        llama_cpp.llama_memory_clear(mem, True)
        llama_cpp.llama_perf_context_reset(ctx)
        ids = [rng.randrange(100, vocab_hi) for _ in range(a.prompt_tokens)]
        t0 = time.perf_counter()
        tok = decode(ids)
        t1 = time.perf_counter()
        for i in range(a.gen_tokens):
            tok = decode([tok])
        t2 = time.perf_counter()
        p = llama_cpp.llama_perf_context(ctx)
        if r == 0:
            continue
        prefill.append(a.prompt_tokens / (t1 - t0))
        dec.append(a.gen_tokens / (t2 - t1))
        perf.append({"t_p_eval_ms": p.t_p_eval_ms, "n_p_eval": p.n_p_eval, "t_eval_ms": p.t_eval_ms,
                     "n_eval": p.n_eval})
        log(f"  llama.cpp run {r}: prefill {prefill[-1]:.1f} tok/s, decode {dec[-1]:.2f} tok/s")
    ver = getattr(llama_cpp, "__version__", "?")
    return {"engine": "llama.cpp", "llama_cpp_python": ver, "gguf": a.model_dir,
            "gguf_mb": os.path.getsize(a.model_dir) / 1e6, "threads": a.threads, "load_ms": load_ms,
            "prefill_tokens_per_second": stats(prefill), "decode_tokens_per_second": stats(dec),
            "time_to_first_token_ms": stats([a.prompt_tokens / p * 1e3 for p in prefill]),
            "llama_perf": perf, "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_llamacpp_vision(a):
    """mtmd: encode one image (the 512x512 test image) through the mmproj and time mtmd_encode_chunk."""
    import ctypes
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(a.model_dir.encode(), mp)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = a.threads
    params.print_timings = False
    t0 = time.perf_counter()
    ctx = mtmd.mtmd_init_from_file(a.mmproj.encode(), model, params)
    load_ms = (time.perf_counter() - t0) * 1e3
    if not ctx:
        raise RuntimeError("mtmd_init_from_file failed")
    bmp = mtmd.mtmd_helper_bitmap_init_from_file(ctx, str(a.image).encode(), False)
    times, n_img_tokens = [], 0
    for r in range(a.runs + 1):
        chunks = mtmd.mtmd_input_chunks_init()
        text = mtmd.mtmd_input_text()
        marker = mtmd.mtmd_default_marker()
        text.text = marker
        text.text_len = len(marker)
        text.add_special = False
        text.parse_special = True
        arr = (mtmd.mtmd_bitmap_p_ctypes * 1)(bmp)
        rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), arr, 1)
        if rc != 0:
            raise RuntimeError(f"mtmd_tokenize returned {rc}")
        total, n_img_tokens = 0.0, 0
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            ch = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(ch) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            n_img_tokens += mtmd.mtmd_input_chunk_get_n_tokens(ch)
            t0 = time.perf_counter()
            rc = mtmd.mtmd_encode_chunk(ctx, ch)
            total += time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"mtmd_encode_chunk returned {rc}")
        mtmd.mtmd_input_chunks_free(chunks)
        if r:
            times.append(total * 1e3)
    tiles = max(1, n_img_tokens // a.tokens_per_tile)
    log(f"  llama.cpp mtmd: {n_img_tokens} image tokens = {tiles} tile(s), {statistics.median(times):.0f} ms")
    return {"engine": "llama.cpp mtmd", "mmproj": a.mmproj, "image": str(a.image), "image_tokens": n_img_tokens,
            "tiles": tiles, "mtmd_load_ms": load_ms, "vision_encode_ms": stats(times),
            "vision_encode_ms_per_tile": stats([t / tiles for t in times])}


def run_worker(engine, kind, model_dir, a, extra=()):
    cmd = [sys.executable, __file__, "--worker", engine, "--kind", kind, "--model-dir", str(model_dir), *extra,
           "--runs", str(a.runs), "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens),
           "--threads", str(a.threads), "--attn", a.attn]
    log(f"$ {' '.join(cmd)}")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr.splitlines():
        if line.startswith("  "):
            log(line)
    if p.returncode != 0:
        log(p.stderr[-3000:])
        return {"error": f"{engine} worker exited with {p.returncode}: {p.stderr.strip()[-300:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# Ours


def vlm_bench(a, model_dir, extra, probe):
    cmd = [a.vlm, "bench", "--model", str(model_dir), "--runs", str(a.runs), "--threads", str(a.threads),
           "--output-format", "json"] + extra + ([] if probe else ["--no-probe"])
    log(f"$ {' '.join(cmd)}")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        log(p.stderr[-2000:])
        return {"error": f"vlm bench exited with {p.returncode}: {p.stderr.strip()[-300:]}", "command": cmd}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["command"] = " ".join(cmd)
    return r


def measure_ours(a, kind, model_dir):
    help_text = subprocess.run([a.vlm, "bench", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True).stdout
    text = ["--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens)]
    res = {"bf16": vlm_bench(a, model_dir, text, probe=True)}
    if "--quantize" in help_text:
        for q in ("q8", "q4"):
            r = vlm_bench(a, model_dir, text + ["--quantize", q], probe=True)
            res[q] = r
    else:
        res["quantize"] = "vlm bench has no --quantize"
    img = test_image(KINDS[kind][2])
    res["image"] = vlm_bench(a, model_dir, ["--image", str(img), "--prompt-tokens", "16", "--gen-tokens", "2"]
                             + KINDS[kind][4], probe=True)
    return res


# ---------------------------------------------------------------------------------------------------------------
# Report


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 10 else f"{v:.{max(digits, 2)}f}"


def ratio(ours, peer, higher_better):
    if not ours or not peer:
        return "-"
    r = ours / peer
    return f"{r:.2f}x" + ("" if higher_better is None else (" (better)" if (r > 1) == higher_better else " (worse)"))


def table(kind, res):
    ours, tf, ll = res["ours"], res.get("transformers") or {}, res.get("llama.cpp") or {}
    b = ours.get("bf16", {})
    img = ours.get("image", {})
    bw, fma = b.get("read_bandwidth_gb_per_s"), b.get("fma_peak_gflops")
    rows = []

    def g(d, k):
        return med(d.get(k)) if isinstance(d, dict) and "error" not in d else None

    def prefill_bound(r):
        # FMA-bound prefill: 2 flops per decoder weight per token; the lm_head (vocab x hidden) runs for the last
        # position only and the attention score flops are left out
        if not r or "error" in r or r.get("dtype") not in ("BF16", "F16", "F32"):
            return None
        bpt = r.get("weight_bytes_per_token")
        params = bpt / {"BF16": 2, "F16": 2, "F32": 4}[r["dtype"]] if bpt else None
        if params and r.get("vocab_size") and r.get("hidden_size"):
            params -= r["vocab_size"] * r["hidden_size"]
        return fma * 1e9 / (2 * params) if fma and params else None

    for prec, key, llkeys in (("bf16", "bf16", ["f16", "bf16"]), ("q8", "q8", ["q8_0"]), ("q4", "q4", ["q4_0"])):
        o = ours.get(key)
        if not isinstance(o, dict):
            continue
        lls = {k: ll.get(k) for k in llkeys}
        for metric, field, hb in (("prefill tok/s", "prefill_tokens_per_second", True),
                                  ("decode tok/s", "decode_tokens_per_second", True),
                                  ("time to first token ms", "time_to_first_token_ms", False),
                                  ("load ms", "load_ms", False),
                                  ("peak RSS MB", "peak_rss_mb", False)):
            ov = g(o, field)
            tv = g(tf, field) if prec == "bf16" else None
            llv = {k: g(v, field) for k, v in lls.items()}
            bound = None
            if field == "decode_tokens_per_second":
                bound = o.get("decode_bound_tokens_per_second") or None
            elif field == "prefill_tokens_per_second":
                bound = prefill_bound(b)  # the same FLOPs whatever the weight format
            best_ll = None
            vals = [v for v in llv.values() if v]
            if vals:
                best_ll = max(vals) if hb else min(vals)
            rows.append([f"{metric} [{prec}]", fmt(ov), fmt(tv),
                         fmt(llv.get("f16")), fmt(llv.get("bf16")), fmt(llv.get("q8_0")), fmt(llv.get("q4_0")),
                         fmt(bound), ratio(ov, tv, hb), ratio(ov, best_ll, hb)])
    vo = g(img, "vision_encode_ms_per_tile")
    lv = g(ll.get("vision"), "vision_encode_ms_per_tile")
    rows.append([f"vision encode ms/tile [{KINDS[kind][2]} px, bf16]", fmt(vo), fmt(g(tf, "vision_encode_ms_per_tile")),
                 fmt(lv) if lv else "n/a", "-", "-", "-",
                 fmt(img.get("vision_bound_ms_per_tile") if isinstance(img, dict) else None),
                 ratio(vo, g(tf, "vision_encode_ms_per_tile"), False), ratio(vo, lv, False)])
    head = ["metric", "ours", "transformers fp32", "llama.cpp F16", "llama.cpp BF16", "llama.cpp Q8_0",
            "llama.cpp Q4_0", "bound", "ours/transformers", "ours/llama.cpp"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = [f"## {kind}  (N={res['prompt_tokens']} prompt tokens, M={res['gen_tokens']} decode tokens, "
             f"threads {res['threads']}, medians of {res['runs']} runs)",
             f"measured read bandwidth {fmt(bw)} GB/s, FMA peak {fmt(fma)} GFLOP/s (vlm bench probe)",
             "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.append("bounds: decode = measured bandwidth / weight bytes per token (vlm bench); prefill = FMA peak "
                 "/ (2 flops x decoder weights without the lm_head per token); vision = vlm bench's FLOP-based bound. ratio > 1 for tok/s, < 1 "
                 "for ms / MB means ours is better. ours/llama.cpp compares with the best llama.cpp value of the "
                 "same precision (bf16 row: best of F16 and BF16). transformers runs fp32 on bf16-stored weights. "
                 "llama.cpp vision: mtmd with an F16 mmproj (F16 column; SmolVLM only).")
    return "\n".join(lines)


def machine_info():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":", 1)[1].split()
        simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")
                if f in flags]
    except (OSError, StopIteration):
        simd = []
    return {"cpu": model, "cores": os.cpu_count(), "simd": simd, "platform": platform.platform(),
            "loadavg_start": os.getloadavg(), "utc_start": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-kind", choices=sorted(KINDS) + ["both"], default="both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("side_by_side_results.json"))
    default_vlm = "/tmp/vlm-bench" if os.path.exists("/tmp/vlm-bench") else str(REPO / ".build" / "release" / "vlm")
    ap.add_argument("--vlm", default=default_vlm, help=f"vlm binary (default {default_vlm})")
    ap.add_argument("--llama-cpp-src", type=Path, default=Path(os.environ.get("LLAMA_CPP_SRC", "/tmp/llama-src")))
    ap.add_argument("--llama-types", default=",".join(LLAMA_TYPES), help="comma-separated GGUF types")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention")
    ap.add_argument("--report", type=Path, help="only print the tables of a results JSON written earlier")
    ap.add_argument("--skip", default="", help="comma-separated: ours,transformers,llama.cpp,vision (llama.cpp mtmd)")
    # worker mode
    ap.add_argument("--worker", choices=["transformers", "llama.cpp", "llama.cpp-vision"], help=argparse.SUPPRESS)
    ap.add_argument("--mmproj", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--tokens-per-tile", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        r = {"transformers": worker_transformers, "llama.cpp": worker_llamacpp,
             "llama.cpp-vision": worker_llamacpp_vision}[a.worker](a)
        print(json.dumps(r))
        return

    if a.report:
        saved = json.loads(a.report.read_text())
        m = saved["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores ({' '.join(m['simd'])}), {m['utc_start']} UTC")
        for kind, res in saved["models"].items():
            print(table(kind, res) + f"\nload average at start {res['loadavg']['start'][0]:.2f}, "
                  f"end {res['loadavg']['end'][0]:.2f}\n")
        return
    skip = set(filter(None, a.skip.split(",")))
    kinds = sorted(KINDS) if a.model_kind == "both" else [a.model_kind]
    kinds = ["smolvlm-500m", "internvl3-1b"] if a.model_kind == "both" else kinds
    result = {"machine": machine_info(), "runs": a.runs, "prompt_tokens": a.prompt_tokens,
              "gen_tokens": a.gen_tokens, "threads": a.threads, "vlm": a.vlm, "models": {}}
    tables = []
    for kind in kinds:
        ckpt = ensure_checkpoint(kind)
        res = {"checkpoint": str(ckpt), "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens,
               "threads": a.threads, "runs": a.runs, "loadavg": {}}
        res["loadavg"]["start"] = os.getloadavg()
        res["ours"] = {} if "ours" in skip else measure_ours(a, kind, ckpt)
        if "transformers" not in skip:
            res["transformers"] = run_worker("transformers", kind, ckpt, a)
        if "llama.cpp" not in skip:
            res["llama.cpp"] = {}
            try:
                text_dir = extract_text_model(ckpt, kind)
                for qt in filter(None, a.llama_types.split(",")):
                    try:
                        g = ensure_gguf(text_dir, kind, qt, a.llama_cpp_src)
                        res["llama.cpp"][qt] = run_worker("llama.cpp", kind, g, a)
                    except Exception as e:  # noqa: BLE001 - keep the other types / engines
                        log(f"llama.cpp {qt}: {e}")
                        res["llama.cpp"][qt] = {"error": str(e)}
                if "vision" not in skip:
                    try:
                        mm = ensure_mmproj(ckpt, kind, a.llama_cpp_src)
                        if mm is None:
                            res["llama.cpp"]["vision"] = {"error": "not measured: llama.cpp's InternVL converter "
                                                          "expects the original OpenGVLab layout, not -hf"}
                        else:
                            g = ensure_gguf(text_dir, kind, "f16", a.llama_cpp_src)
                            res["llama.cpp"]["vision"] = run_worker(
                                "llama.cpp-vision", kind, g, a,
                                ["--mmproj", str(mm), "--image", str(test_image(KINDS[kind][2])),
                                 "--tokens-per-tile", "64"])
                    except Exception as e:  # noqa: BLE001
                        log(f"llama.cpp vision: {e}")
                        res["llama.cpp"]["vision"] = {"error": str(e)}
            except Exception as e:  # noqa: BLE001
                log(f"llama.cpp: {e}")
                res["llama.cpp"]["error"] = str(e)
        res["loadavg"]["end"] = os.getloadavg()
        result["models"][kind] = res
        t = table(kind, res)
        tables.append(t)
        print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores\n" + t + f"\nload average at start {res['loadavg']['start'][0]:.2f}, end {res['loadavg']['end'][0]:.2f}\n",
              flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["tables"] = tables
    a.out.write_text(json.dumps(result, indent=2))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
