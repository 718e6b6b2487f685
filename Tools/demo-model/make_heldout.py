#!/usr/bin/env python3
"""Held-out evaluation set for the demo VLM (models/smolvlm-shapes) and transformers' answers on it.

    python3 Tools/demo-model/make_heldout.py [--model models/smolvlm-shapes] [--out Tests/Fixtures/demo-heldout]

Items come from shapes.py with seed HELDOUT_SEED (training uses 1234, its validation 1241), so none was trained on:
  160 single-image items (32 each: describe, color, shape, count, position),
   25 two-image comparisons ("<image><image>Compare these images."),
   21 three-turn conversations (image + question, text-only follow-up, new image + question about both images;
      7 each of same_color / same_shape / same_count in turn 3, yes/no balanced).
Images are written as PNG when the background is a solid colour and as JPEG (quality 90) otherwise, named
ITEM-K.png/.jpg (K: the image's index within the item), and read back from those files for inference.

transformers reference: Idefics3ForConditionalGeneration.from_pretrained(model, dtype=float32, eager attention) (the
bf16 safetensors upcast to f32), AutoProcessor.from_pretrained(model) (transformers 5 picks the torchvision
image-processing backend when torchvision imports; the backend is recorded in summary.json), greedy decoding
(generate(do_sample=False, max_new_tokens=64); stops at <end_of_utterance> 49279, which is included in the ids),
answers decoded with skip_special_tokens=True and stripped. In a conversation, later turns get transformers' own
earlier answers as assistant messages.

items.json: a list of {"id", "kind", "turns": [{"user": text with "<image>" markers, "images": [files],
"prompt": the chat-template text for this turn's generation (before the processor expands <image>),
"type", "expected", "answer" (transformers), "token_ids" (transformers' new ids), "correct"}]}.
Correct = normalised exact match (lowercase, strip, strip one final period).
summary.json: accuracy overall / per task type / per item kind, item-level accuracy, training stats.

Also writes models/smolvlm-shapes/examples/ (4 example images, seed EXAMPLE_SEED) with transformers' answers to a
few questions in examples/answers.json.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

for _op in ("nms", "qnms"):
    try:
        torch.library.define(f"torchvision::{_op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except Exception:
        pass

import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, Idefics3ForConditionalGeneration  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shapes  # noqa: E402

REPO = HERE.parents[1]
HELDOUT_SEED = 777001
EXAMPLE_SEED = 4242
MAX_NEW_TOKENS = 64


def write_json(p, obj, indent=1):
    with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def build_items():
    rng = random.Random(HELDOUT_SEED)
    items = []
    for t in shapes.SINGLE_TYPES:
        items += [shapes.single_item(rng, t) for _ in range(32)]
    items += [shapes.compare_item(rng) for _ in range(25)]
    mts = []
    while len(mts) < 21:  # 7 of each turn-3 type, yes/no balanced within a type as far as possible
        it = shapes.multiturn_item(rng)
        t3 = it["turns"][2]
        same = [m for m in mts if m["turns"][2]["type"] == t3["type"]]
        yes = sum(m["turns"][2]["answer"].endswith("Yes.") for m in same)
        if len(same) >= 7 or (t3["answer"].endswith("Yes.") and yes >= 4) or (t3["answer"].endswith("No.") and len(same) - yes >= 4):
            continue
        mts.append(it)
    items += mts
    return items


def save_image(sc, folder, name):
    img = shapes.render(sc)
    if sc["bg"] == "solid":
        fn = name + ".png"
        img.save(folder / fn, format="PNG", optimize=True)
    else:
        fn = name + ".jpg"
        img.save(folder / fn, format="JPEG", quality=90)
    return fn


def load(folder, fn):
    with Image.open(folder / fn) as im:
        im.load()
        return im.convert("RGB")


@torch.no_grad()
def answer_turn(model, processor, item, files, folder, answers, k):
    msgs = shapes.messages_for(item, answers[:k], upto=k + 1)
    prompt = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    imgs = [load(folder, f) for t in files[:k + 1] for f in t]
    inputs = processor(text=prompt, images=imgs, return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return prompt, processor.tokenizer.decode(new, skip_special_tokens=True).strip(), new


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "models" / "smolvlm-shapes"))
    ap.add_argument("--out", default=str(REPO / "Tests" / "Fixtures" / "demo-heldout"))
    ap.add_argument("--stats", default=str(HERE / "train_stats.json"))
    ap.add_argument("--limit", type=int, default=None, help="only every n-th item (quick checks)")
    args = ap.parse_args()
    stats = json.loads(Path(args.stats).read_text()) if Path(args.stats).exists() else {}
    # the answers are in the style the model was trained with (train_stats.json "answers"; absent: "short")
    shapes.set_answer_style(stats.get("answers", "short"))
    torch.set_num_threads(2)
    model_dir, out = Path(args.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.png")) + list(out.glob("*.jpg")):
        old.unlink()

    model = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    backend = getattr(processor.image_processor, "backend", type(processor.image_processor).__name__)
    print("image processor:", type(processor.image_processor).__name__, backend, flush=True)

    t0 = time.time()
    records, per_type, per_kind, item_ok = [], {}, {}, 0
    items = build_items()
    if args.limit:
        items = items[::args.limit]
    for i, item in enumerate(items):
        files = [[save_image(sc, out, f"{i:03d}-{sum(len(u['images']) for u in item['turns'][:k]) + j}")
                  for j, sc in enumerate(t["images"])] for k, t in enumerate(item["turns"])]
        answers, turns, all_ok = [], [], True
        for k, t in enumerate(item["turns"]):
            prompt, ans, ids = answer_turn(model, processor, item, files, out, answers, k)
            answers.append(ans)
            ok = shapes.normalise(ans) == shapes.normalise(t["answer"])
            all_ok &= ok
            for key, d in ((t["type"], per_type), (item["kind"], per_kind), ("all", per_kind)):
                c = d.setdefault(key, [0, 0])
                c[0] += ok
                c[1] += 1
            turns.append({"user": t["user"], "images": files[k], "prompt": prompt, "type": t["type"],
                          "expected": t["answer"], "answer": ans, "token_ids": ids, "correct": bool(ok)})
            if not ok:
                print(f"  item {i} turn {k} [{t['type']}] expected {t['answer']!r} got {ans!r}", flush=True)
        item_ok += all_ok
        records.append({"id": f"{i:03d}", "kind": item["kind"], "turns": turns})
    gen_time = time.time() - t0

    acc = lambda c: round(c[0] / c[1], 4)  # noqa: E731
    summary = {
        "turn_accuracy": acc(per_kind["all"]), "turns": per_kind["all"][1],
        "item_accuracy": round(item_ok / len(records), 4), "items": len(records),
        "accuracy_per_type": {k: {"accuracy": acc(v), "n": v[1]} for k, v in sorted(per_type.items())},
        "accuracy_per_kind": {k: {"accuracy": acc(v), "n": v[1]} for k, v in sorted(per_kind.items()) if k != "all"},
        "normalisation": "lowercase, strip, strip one final period; exact match per turn",
        "heldout_seed": HELDOUT_SEED,
        "reference": {"transformers": transformers.__version__, "torch": torch.__version__, "dtype": "float32 "
                      "(bf16 weights upcast)", "attn_implementation": "eager", "image_processor_backend": str(backend),
                      "decoding": f"greedy, max_new_tokens {MAX_NEW_TOKENS}, skip_special_tokens, strip"},
        "training": {k: v for k, v in stats.items() if k != "history"},
        "generation_time_s": round(gen_time, 1),
    }
    write_json(out / "items.json", records)
    write_json(out / "summary.json", summary, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "reference"}, indent=1))

    # Example images beside the model.
    ex = model_dir / "examples"
    ex.mkdir(exist_ok=True)
    for old in list(ex.glob("*.png")) + list(ex.glob("*.jpg")):
        old.unlink()
    rng = random.Random(EXAMPLE_SEED)
    scenes = [shapes.random_scene(rng, n=2), shapes.random_scene(rng, n=1), shapes.random_scene(rng, n=3),
              shapes.random_scene(rng, n=1)]
    names = ["two-shapes.jpg", "one-shape.png", "three-shapes.png", "one-shape-2.jpg"]
    examples = []
    for sc, fn in zip(scenes, names):
        img = shapes.render(sc)
        img.save(ex / fn, **({"format": "JPEG", "quality": 90} if fn.endswith(".jpg") else {"format": "PNG"}))
        qs = [("describe", "Describe this image.", shapes.describe_answer(sc)),
              ("count", "How many shapes are there?", shapes.NUMBERS[len(sc["shapes"])] + ".")]
        qs += shapes.possible_questions(sc, ["color", "position"])[:2]
        for t, q, exp in qs:
            item = {"kind": "single", "turns": [{"user": "<image>" + q, "images": [sc], "answer": exp, "type": t}]}
            _, ans, _ = answer_turn(model, processor, item, [[fn]], ex, [], 0)
            examples.append({"image": fn, "question": q, "expected": exp, "answer": ans})
    pair = {"kind": "compare", "turns": [{"user": "<image><image>Compare these images.", "images": scenes[:2],
                                          "answer": shapes.compare_answer(scenes[0], scenes[1]), "type": "compare"}]}
    _, ans, _ = answer_turn(model, processor, pair, [names[:2]], ex, [], 0)
    examples.append({"images": names[:2], "question": "<image><image>Compare these images.",
                     "expected": pair["turns"][0]["answer"], "answer": ans})
    write_json(ex / "answers.json", examples, indent=2)
    for e in examples:
        print(e)


if __name__ == "__main__":
    main()
