#!/usr/bin/env python3
"""Where the demo model's decoder heads look when they answer a one-object question (a diagnostic, not a test).

    python3 Tools/demo-model/inspect_attention.py [--model models/smolvlm-shapes] [--types color,shape,position]

For every held-out item (make_heldout.build_items, the files in Tests/Fixtures/demo-heldout/) whose first turn asks
the colour, shape or position of one object in a scene of two or three objects, the model reads the prompt plus the
answer's first words up to the token that carries the fact (" At the" before "top" / "bottom", "" before a colour,
" A" before a shape kind), and for every decoder layer and head the script prints the share of that position's
attention to local-tile image tokens that falls on the tile holding the named object (train.question_subjects; a
shape never leaves its quadrant and the 128 px images are cut into 2 x 2 tiles of 64 px, so each object lies in
exactly one tile). 1.00: the head looks only at the right tile; about 1 / (objects) or less: it looks at every object
(or at the wrong one). Per question type and right / wrong answer (transformers' answers in items.json), the mean
share of each head. The right / wrong split comes from --answers (default: the committed model's, in the fixtures;
for another model, the items.json of its own make_heldout.py --out folder).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_heldout  # noqa: E402  (first: it defines torchvision's operators before transformers is imported)
import train  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, Idefics3ForConditionalGeneration  # noqa: E402

REPO = make_heldout.REPO
FIXTURES = REPO / "Tests" / "Fixtures" / "demo-heldout"
ANSWER_PREFIX = {"position": " At the", "color": "", "shape": " A"}  # the answer's words before the fact


def tile_of_image_tokens(ids, tokenizer, image_token_id):
    """(position, "RC") of every local-tile image token: the <row_R_col_C> marker that precedes it."""
    markers = {tokenizer.convert_tokens_to_ids(f"<row_{r}_col_{c}>"): f"{r}{c}" for r in (1, 2) for c in (1, 2)}
    global_id = tokenizer.convert_tokens_to_ids("<global-img>")
    out, tile = [], None
    for i, t in enumerate(ids):
        if t in markers:
            tile = markers[t]
        elif t == global_id:
            tile = None
        elif t == image_token_id and tile:
            out.append((i, tile))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "smolvlm-shapes"))
    ap.add_argument("--answers", default=str(FIXTURES / "items.json"),
                    help="make_heldout.py's items.json with this model's answers (right / wrong per turn)")
    ap.add_argument("--types", default="color,shape,position")
    args = ap.parse_args()
    types = args.types.split(",")
    processor = AutoProcessor.from_pretrained(args.model)
    model = Idefics3ForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    recorded = json.load(open(args.answers))
    table = {}  # (type, correct) -> list of per-head shares
    for item, rec in zip(make_heldout.build_items(), recorded):
        turn = rec["turns"][0]
        if turn["type"] not in types or len(item["turns"][0]["images"][0]["shapes"]) < 2:
            continue
        subject = train.question_subjects(item, 0)[0][1]
        want = f"{subject['row'] + 1}{subject['col'] + 1}"
        image = Image.open(FIXTURES / turn["images"][0]).convert("RGB")
        inputs = processor(text=[turn["prompt"] + ANSWER_PREFIX[turn["type"]]], images=[[image]], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
        tiles = tile_of_image_tokens(inputs["input_ids"][0].tolist(), processor.tokenizer, model.config.image_token_id)
        shares = []
        for layer_att in out.attentions:
            a = layer_att[0, :, -1]  # heads x keys, at the position predicting the fact
            for h in range(a.shape[0]):
                total = sum(float(a[h, i]) for i, _ in tiles)
                right = sum(float(a[h, i]) for i, t in tiles if t == want)
                shares.append(right / total if total > 0 else 0.0)
        table.setdefault((turn["type"], turn["correct"]), []).append(shares)
    heads = model.config.text_config.num_attention_heads
    print("mean share of each head's local-tile attention on the named object's tile (layer.head)")
    n_shares = len(next(iter(table.values()))[0]) if table else 0
    print(f"{'type':9} {'answer':6} {'n':>3}  " + " ".join(f"{i // heads}.{i % heads:<2}" for i in range(n_shares)))
    for (qtype, correct), rows in sorted(table.items()):
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(n_shares)]
        print(f"{qtype:9} {'right' if correct else 'wrong':6} {len(rows):3}  " + " ".join(f"{m:.2f}" for m in mean))


if __name__ == "__main__":
    main()
