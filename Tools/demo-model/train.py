#!/usr/bin/env python3
"""Trains the SwiftVLM demo VLM (issue 7) from scratch on synthetic shapes (Tools/demo-model/shapes.py) and writes a
standard Hugging Face folder to models/smolvlm-shapes/.

    python3 Tools/demo-model/train.py [--steps N] [--seed 1234] [--out models/smolvlm-shapes]

Architecture: transformers' Idefics3ForConditionalGeneration (model_type idefics3, the SmolVLM layout), tiny:
  vision   Idefics3VisionConfig (SigLIP): hidden 128, 4 layers, 4 heads, MLP 512, patch 8, image_size 64
           (8 x 8 patches per tile), gelu_pytorch_tanh, LayerNorm eps 1e-6
  connector pixel shuffle scale_factor 2 (64 patches -> 16 tokens of 512) -> Linear(512, 128, no bias)
  text     LlamaConfig: hidden 128, 4 layers, 4 heads (head_dim 32), 2 KV heads, MLP 384, vocab 49280,
           rope theta 1e5, RMSNorm eps 1e-5, tie_word_embeddings true (top level and text_config)
Tokenizer, tokenizer_config, chat template, generation_config: the real SmolVLM-256M-Instruct files.
Processor: Idefics3 with do_image_splitting true, max_image_size {"longest_edge": 64} (tile side = vision
image_size), size {"longest_edge": 128} (the real SmolVLM uses 512 / 2048): an image is resized to longest edge 128,
each side rounded up to a multiple of 64, cut into at most 2 x 2 tiles of 64 x 64, plus the global image resized to
64 x 64: at most 5 tiles = 80 image tokens (image_seq_len 16 per tile).

Every training sample goes through the real Idefics3Processor (AutoProcessor from the output folder:
apply_chat_template with {"type": "image"} parts, then processor(text=..., images=...)), so the token layout is the
one used at inference. The loss is cross-entropy on the assistant answer tokens only (the answer after "Assistant:"
and its closing <end_of_utterance>), with logits computed only at those positions.

Optimiser: AdamW (betas 0.9/0.98, weight decay 0.01 on matrices), linear warmup then cosine decay to 5% of the peak,
gradient clipping 1.0, batch 8 (each batch one item kind, to keep padding low), --threads torch threads (2 on an idle
2-core machine; 1 if another job shares the cores: 2 threads then slow down several-fold).
Curriculum: the first 10% of the steps show one large shape per image (shapes.py "big"), up to 30% single-image
question chains, then the --mix of the mixed stage (default 50% chains, 20% two-image comparisons, 30% three-turn
conversations). A chain (shapes.chain_item) asks 1-4 questions about one image in consecutive turns, so one vision
encoding carries several supervised answers.
Auxiliary vision loss (--aux-weight, default 1): a linear probe on each image token as the language model receives it
(the connector's output) predicts the fraction of the token's area covered by each colour and each shape kind, from
label masks drawn with the scene's own geometry and put through the same image processor (image_token_labels). It
gives the from-scratch vision tower a dense signal from the first step; the probe is not part of the saved model.
The committed model also used --aux-position (the probe also predicts top/bottom and left/right for the global
image's tokens), --aux-tile 2 (a probe on the decoder's state after 2 layers predicts each local tile's row and
column) and --attn-sup 2:0:0.5 (attention supervision: head 0 of decoder layer 2 is pulled towards the image tokens
of the object a colour / shape / position question names) and a 6000-step schedule stopped after step 5537
(--stop-after replays a stop by --max-time); Tools/demo-model/README.md has the exact command.
Training samples are generated on the fly from random.Random(seed) (half of the images JPEG round-tripped) and encoded
in a worker process (BatchEncoder, --encode-workers). Options tried and not kept (Tools/demo-model/README.md):
--weighting answer (every answer weighs alike in the loss), --aux-cell (the probe also predicts the object of each
token's grid cell), --long-chains, a deeper decoder (--text-layers 8), a wider one (--text-width 192 --text-heads 6
--text-kv-heads 3), and grounded answers (--answers grounded: the scene's description before the answer clause).
Weights are saved as bf16 (model.safetensors).
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

for _op in ("nms", "qnms"):  # lets the (CUDA-built) torchvision wheel import next to the CPU torch; see Benchmarks/
    try:
        torch.library.define(f"torchvision::{_op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except Exception:
        pass

import torch.nn.functional as F  # noqa: E402
from transformers import AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = next(p for p in (REPO.parent / "shared" / "models", REPO.parent.parent / "shared" / "models") if p.exists())
SMOLVLM = SHARED / "SmolVLM-256M-Instruct"
EOU = 49279  # <end_of_utterance>

TEXT = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384)
VISION = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, patch_size=8,
              image_size=64)
IMAGE_SEQ_LEN = 16  # (64 / 8)^2 patches / scale_factor^2
IMAGE_TOKEN_ID = 49190  # <image>


def read_json(p):
    return json.loads(Path(p).read_text(encoding="utf-8"))


def write_json(p, obj):
    with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def make_config():
    text = dict(model_type="llama", vocab_size=49280, max_position_embeddings=8192, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, hidden_act="silu",
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.02,
                architectures=["LlamaForCausalLM"], **TEXT)
    vision = dict(num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, initializer_range=0.02,
                  **VISION)
    return Idefics3Config(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID, scale_factor=2,
                          tie_word_embeddings=True, use_cache=True,
                          architectures=["Idefics3ForConditionalGeneration"])


def write_processor_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "generation_config.json"):
        shutil.copyfile(SMOLVLM / f, folder / f)
    pre = read_json(SMOLVLM / "preprocessor_config.json")
    pre["max_image_size"] = {"longest_edge": VISION["image_size"]}
    pre["size"] = {"longest_edge": 2 * VISION["image_size"]}
    write_json(folder / "preprocessor_config.json", pre)
    proc = read_json(SMOLVLM / "processor_config.json")
    proc["image_seq_len"] = IMAGE_SEQ_LEN
    write_json(folder / "processor_config.json", proc)


def load_processor(folder):
    p = AutoProcessor.from_pretrained(folder)
    p.tokenizer.padding_side = "right"
    assert p.image_seq_len == IMAGE_SEQ_LEN, p.image_seq_len
    return p


def item_images(item, jpeg_rng=None):
    imgs = []
    for t in item["turns"]:
        for sc in t["images"]:
            im = shapes.render(sc)
            if jpeg_rng is not None and jpeg_rng.random() < 0.5:
                im = shapes.jpeg_roundtrip(im, jpeg_rng.randint(75, 95))
            imgs.append(im)
    return imgs


def image_token_labels(processor, connector, scene):
    """Soft targets of the auxiliary vision loss for one image: (tiles x 16 tokens, 7) colour and (.., 5) shape
    distributions (index 0 = background), the fraction of each image token's area covered by each colour / shape
    kind. The label masks (shapes.render_labels) go through the same image processor as the picture, so the tiles
    and their order are exactly the model's; 8 x 8 pixel patches are then grouped by the connector's own pixel
    shuffle, as the image tokens are."""
    masks = shapes.render_labels(scene)  # same size: one processor call cuts each into the same tiles, mask by mask
    pv = processor.image_processor(images=[masks], return_tensors="pt")["pixel_values"][0]  # (masks * tiles, 3, 64, 64)
    planes = pv.view(len(masks), -1, *pv.shape[1:]).unbind(0)
    cov = (torch.cat(planes, 1).float() * 0.5 + 0.5).clamp(0, 1)  # undo (x - 0.5) / 0.5; Lanczos rings a little
    p = VISION["patch_size"]
    cov = F.avg_pool2d(cov, p)  # (tiles, C, 8, 8): coverage per patch
    tiles, c = cov.shape[:2]
    cov = cov.flatten(2).transpose(1, 2).contiguous()  # (tiles, 64 patches, C), patch order row-major as in SigLIP
    cov = connector.pixel_shuffle(cov, 2).view(tiles, -1, 4, c).mean(2).reshape(-1, c)  # (tiles * 16, C)
    nc, ns = len(shapes.COLOR_NAMES), len(shapes.SHAPES)
    col, shp = cov[:, :nc], cov[:, nc:nc + ns]
    # fractions of the token's area in the picture's top half and left half (shapes.render_labels' position planes);
    # only the global image's tokens (the last tile) can know where they are, a local tile cannot tell its place
    pos = cov[:, nc + ns:nc + ns + 2]
    is_global = torch.zeros(cov.shape[0])
    is_global[-IMAGE_SEQ_LEN:] = 1
    c0 = nc + ns + shapes.POSITION_LABELS  # the cell planes: the object of the grid cell each token lies in
    cell_col, cell_shp = cov[:, c0:c0 + nc], cov[:, c0 + nc:c0 + nc + ns]

    def dist(x):
        x = torch.cat([(1 - x.sum(1, keepdim=True)).clamp(min=0), x], 1)
        return x / x.sum(1, keepdim=True)
    return dist(col), dist(shp), pos, is_global, dist(cell_col), dist(cell_shp)


def tile_markers(tokenizer):
    """{token id: (row, col)} of the processor's <row_R_col_C> tile markers, and the id of <global-img>."""
    rc = {}
    for tok, i in tokenizer.get_vocab().items():
        m = re.fullmatch(r"<row_(\d+)_col_(\d+)>", tok)
        if m:
            rc[i] = (int(m.group(1)), int(m.group(2)))
    return rc, tokenizer.convert_tokens_to_ids("<global-img>")


def tile_targets(ids, markers, image_id):
    """Targets of --aux-tile for the decoder's image-token states: for every image token of a local tile, is its tile
    in the top row? in the left column? (a tile of a 2-row split: top = row 1; of a 2-column split: left = column 1;
    other splits and the global image give no target). The answer is the <row_R_col_C> marker before the tile's
    tokens: with this target the first decoder layers copy the tile's place into its tokens, so that "Where is the
    red circle?" needs one lookup (the object's tokens) instead of two (the object, then its tile's marker).
    markers: tile_markers(). Returns (batch index, position, [top, left], [has top, has left]) tensors."""
    rc, gid = markers
    bs, ps, tg, mk = [], [], [], []
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        image_tiles, cur = [], None  # the current split image's tiles: [(r, c, [positions])]

        def flush():
            if image_tiles:
                rows, cols = max(t[0] for t in image_tiles), max(t[1] for t in image_tiles)
                for r, c, pos in image_tiles:
                    for p in pos:
                        bs.append(b); ps.append(p)
                        tg.append([1.0 if r == 1 else 0.0, 1.0 if c == 1 else 0.0])
                        mk.append([1.0 if rows == 2 else 0.0, 1.0 if cols == 2 else 0.0])
            image_tiles.clear()
        for p, t in enumerate(row):
            if t in rc:
                if rc[t] == (1, 1):
                    flush()
                image_tiles.append((*rc[t], []))
                cur = image_tiles[-1][2]
            elif t == gid:
                flush()
                cur = None
            elif t == image_id and cur is not None:
                cur.append(p)
        flush()
    return torch.tensor(bs), torch.tensor(ps), torch.tensor(tg), torch.tensor(mk)


SUPERVISED_TYPES = ["color", "shape", "position", "same_color", "same_shape"]  # the types question_subjects serves


def question_subjects(item, k):
    """The objects (image index within the item, shape dict) that turn k's question is about, for --attn-sup: the
    object a colour / shape / position question names (unique in its scene by construction) and, for turn 3's
    same_color / same_shape, the one shape of each image. Other questions (describe, count, compare, same_count)
    name no single object: []."""
    t = item["turns"][k]
    scenes = [sc for tt in item["turns"] for sc in tt["images"]]
    first = scenes[0]["shapes"]
    q = t["user"].replace("<image>", "")
    if t["type"] == "color":
        kind = re.fullmatch(r"What color is the (\w+)\?", q).group(1)
        return [(0, s) for s in first if s["shape"] == kind]
    if t["type"] == "shape":
        col = re.fullmatch(r"What shape is the (\w+) object\?", q).group(1)
        return [(0, s) for s in first if s["color"] == col]
    if t["type"] == "position":
        col, kind = re.fullmatch(r"Where is the (\w+) (\w+)\?", q).groups()
        return [(0, s) for s in first if s["color"] == col and s["shape"] == kind]
    if t["type"] in ("same_color", "same_shape"):
        return [(0, first[0]), (1, scenes[1]["shapes"][0])]
    return []


def object_token_weights(label, shape):
    """For one image's aux labels (image_token_labels) and one of its shapes: the fraction of each image token's area
    that the shape covers (non-background coverage inside the shape's quadrant: shapes never leave their grid cell),
    with the resampling ripple below 0.05 cut off."""
    col, pos = label[0], label[2]
    top = pos[:, 0] if shape["row"] == 0 else 1 - pos[:, 0]
    left = pos[:, 1] if shape["col"] == 0 else 1 - pos[:, 1]
    w = ((1 - col[:, 0]) * top * left).clamp(min=0)
    return torch.where(w < 0.05, torch.zeros_like(w), w)


def encode_batch(processor, items, jpeg_rng, connector=None, attn_targets=False):
    """Processor inputs for full conversations and, per sample, the (position, target id, weight) triples of the loss
    (weight 1 / the answer's token count, <end_of_utterance> included: see loss_fn); with a connector, also the
    auxiliary loss's per-image-token targets (image_token_labels) in image-feature order and, with attn_targets,
    after them the targets of the attention supervision (--attn-sup): for every position that predicts a token of an answer about one object
    (question_subjects), the distribution over image-token positions that the supervised head should attend with
    (object_token_weights, normalised): (query batch, query position, key position, weight) rows."""
    texts, images, answers, labels = [], [], [], []
    for it in items:
        msgs = shapes.messages_for(it, [t["answer"] for t in it["turns"]])
        texts.append(processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
        images.append(item_images(it, jpeg_rng))
        answers.append([t["answer"] for t in it["turns"]])
        if connector is not None:
            labels += [image_token_labels(processor, connector, sc) for t in it["turns"] for sc in t["images"]]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    ids = inputs["input_ids"]
    pos_b, pos_t, tgt, weight = [], [], [], []
    att = ([], [], [], [], [])  # attention-supervision rows: query batch, query position, key position, weight,
    # and the question's type (an index into SUPERVISED_TYPES, for a head supervised on some question types only)
    label_at = 0  # index of the sample's first image in `labels`
    for b, ans in enumerate(answers):
        image_pos = (ids[b] == IMAGE_TOKEN_ID).nonzero().flatten()
        n_images = sum(len(t["images"]) for t in items[b]["turns"])
        spans, at = [], 0  # per image of the sample: its image-token positions
        for i in range(n_images if labels and attn_targets else 0):
            n_tok = labels[label_at + i][0].shape[0]
            spans.append(image_pos[at:at + n_tok])
            at += n_tok
        eous = (ids[b] == EOU).nonzero().flatten().tolist()
        assert len(eous) == 2 * len(ans), (len(eous), len(ans))
        for k, a in enumerate(ans):
            e = eous[2 * k + 1]
            a_ids = processor.tokenizer(" " + a, add_special_tokens=False)["input_ids"]
            n = len(a_ids)
            assert ids[b, e - n:e].tolist() == a_ids, (ids[b, e - n - 3:e + 1].tolist(), a_ids)
            for j in range(e - n, e + 1):  # predict ids[j] from position j-1
                pos_b.append(b)
                pos_t.append(j - 1)
                tgt.append(int(ids[b, j]))
                weight.append(1.0 / (n + 1))
            subjects = question_subjects(items[b], k) if spans else []
            keys, kw = [], []
            for img_i, shape in subjects:
                w = object_token_weights(labels[label_at + img_i], shape)
                keys.append(spans[img_i][w > 0])
                kw.append(w[w > 0] / w.sum() / len(subjects))
            if keys and all(len(x) for x in keys):
                keys, kw = torch.cat(keys), torch.cat(kw)
                for j in range(e - n, e):  # the answer's tokens, not its <end_of_utterance>
                    att[0].append(torch.full_like(keys, b))
                    att[1].append(torch.full_like(keys, j - 1))
                    att[2].append(keys)
                    att[3].append(kw)
                    att[4].append(torch.full_like(keys, SUPERVISED_TYPES.index(items[b]["turns"][k]["type"])))
        label_at += n_images if labels else 0
    aux = None
    if labels:
        aux = tuple(torch.cat([lab[i] for lab in labels]) for i in range(len(labels[0])))
        if attn_targets:
            aux += tuple(torch.cat(a) if a else torch.zeros(0, dtype=torch.float32 if i == 3 else torch.long)
                         for i, a in enumerate(att))
    return inputs, torch.tensor(pos_b), torch.tensor(pos_t), torch.tensor(tgt), torch.tensor(weight), aux


def loss_fn(model, inputs, pos_b, pos_t, tgt, weight=None, aux=None, aux_head=None, aux_position=False,
            aux_cell=False, tile_head=None, markers=None, tile_layer=0, attn_sup=None):
    """Cross-entropy on the answer tokens, each token weighted by `weight` (None: every token alike; encode_batch's
    weights make every answer count alike, so the one token that carries a colour or "Yes" weighs as much as a
    whole description); with aux targets, plus the auxiliary vision loss: a linear probe (aux_head,
    training only, never saved) reads each image token as the language model receives it (the connector's output)
    and predicts the colour and shape kind under it. It gives the from-scratch vision tower a dense signal from the
    first step instead of waiting for the language model to start looking at the image.
    attn_sup: the (layer, head, weight, question types or None for all) of the attention supervision (--attn-sup;
    the decoder runs eager attention): each such head's attention at every answer position of a one-object question is pulled towards the
    image tokens of the object (encode_batch's targets; cross-entropy against them)."""
    kw = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
    img = model.model.get_image_features(inputs["pixel_values"], inputs.get("pixel_attention_mask"), return_dict=True)
    captured, hooks = {}, []
    for layer in sorted({l for l, _, _, _ in attn_sup or []}):  # LlamaAttention returns (output, weights) in eager mode
        hooks.append(model.model.text_model.layers[layer].self_attn.register_forward_hook(
            lambda mod, args, out, layer=layer: captured.__setitem__(layer, out[1])))
    lm_out = model.model(**kw, mm_encoder_outputs={"image": img}, use_cache=False,
                         output_hidden_states=tile_head is not None)
    for h in hooks:
        h.remove()
    hidden = lm_out.last_hidden_state  # final norm
    h = hidden[pos_b, pos_t]
    logits = F.linear(h, model.lm_head.weight).float()
    if weight is None:
        loss = F.cross_entropy(logits, tgt)
    else:
        loss = (F.cross_entropy(logits, tgt, reduction="none") * weight).sum() / weight.sum()
    aux_loss = torch.zeros(())
    if aux is not None:
        feats = torch.cat(list(img.pooler_output))
        assert feats.shape[0] == aux[0].shape[0], (feats.shape, aux[0].shape)
        out = aux_head(feats).float()
        nc, ns = aux[0].shape[1], aux[1].shape[1]
        aux_loss = F.cross_entropy(out[:, :nc], aux[0]) + F.cross_entropy(out[:, nc:nc + ns], aux[1])
        if aux_position:  # global-image tokens: in the top half? in the left half?
            g = aux[3] > 0
            aux_loss = aux_loss + F.binary_cross_entropy_with_logits(out[g, nc + ns:nc + ns + 2], aux[2][g])
        if aux_cell:  # the colour and shape kind of the object whose grid cell holds the token (a second probe)
            c0 = nc + ns + (2 if aux_position else 0)
            aux_loss = aux_loss + F.cross_entropy(out[:, c0:c0 + nc], aux[4]) + \
                F.cross_entropy(out[:, c0 + nc:c0 + nc + ns], aux[5])
    if tile_head is not None:  # --aux-tile: the decoder's state of each local-tile image token after tile_layer layers
        tb, tp, tt, tm = tile_targets(inputs["input_ids"], markers, model.config.image_token_id)
        if len(tb):
            z = tile_head(lm_out.hidden_states[tile_layer][tb, tp]).float()
            bce = F.binary_cross_entropy_with_logits(z, tt, reduction="none")
            aux_loss = aux_loss + (bce * tm).sum() / tm.sum().clamp(min=1)
    if attn_sup and aux is not None and len(aux[-1]):
        qb, qp, kp, w, qt = aux[-5:]
        for layer, head, weight, types in attn_sup:
            rows = torch.ones_like(w, dtype=torch.bool) if types is None else \
                torch.isin(qt, torch.tensor([SUPERVISED_TYPES.index(t) for t in types]))
            if rows.any():
                p = captured[layer][qb[rows], head, qp[rows], kp[rows]].float()
                aux_loss = aux_loss + weight * -(w[rows] * torch.log(p + 1e-6)).sum() / w[rows].sum()
    return loss, (logits.argmax(-1) == tgt).float().mean(), aux_loss


class BatchEncoder:
    """Encodes the training batches (encode_batch: chat template, image processor, label masks) in a worker process
    while the main process trains on the previous one: encoding is about a quarter of a step. The worker takes the
    batches in order and owns the JPEG-quality random stream, so the batches are the ones encoding in the main
    process would give. workers=0 encodes in the main process."""

    def __init__(self, folder, seed, aux, workers=1, ahead=2, attn_targets=False):
        self.args = (str(folder), seed, aux, attn_targets)
        self.ahead = ahead
        self.pending = []
        if workers:
            import multiprocessing as mp
            self.pool = mp.get_context("fork").Pool(1, initializer=_encoder_init, initargs=self.args)
        else:
            self.pool = None
            _encoder_init(*self.args, threads=None)

    def submit(self, items):
        self.pending.append(self.pool.apply_async(_encode, (items,)) if self.pool else items)

    def next(self):
        job = self.pending.pop(0)
        return _from_numpy(job.get() if self.pool else _encode(job))

    def close(self):
        if self.pool:
            self.pool.terminate()


_ENCODER = {}


def _encoder_init(folder, seed, aux, attn_targets, threads=1):
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector
    if threads:
        torch.set_num_threads(threads)
    _ENCODER["processor"] = load_processor(Path(folder))
    _ENCODER["connector"] = Idefics3Connector(make_config()) if aux else None  # only its pixel_shuffle is used
    _ENCODER["jpeg_rng"] = random.Random(seed + 1)
    _ENCODER["attn_targets"] = attn_targets


def _encode(items):
    inputs, pb, pt, tg, w, aux = encode_batch(_ENCODER["processor"], items, _ENCODER["jpeg_rng"],
                                              _ENCODER["connector"], _ENCODER["attn_targets"])
    # plain arrays cross the process boundary (no shared-memory tensor handles)
    return ({k: v.numpy() for k, v in inputs.items()}, pb.numpy(), pt.numpy(), tg.numpy(), w.numpy(),
            None if aux is None else tuple(a.numpy() for a in aux))


def _from_numpy(batch):
    inputs, pb, pt, tg, w, aux = batch
    return ({k: torch.from_numpy(v) for k, v in inputs.items()}, torch.from_numpy(pb), torch.from_numpy(pt),
            torch.from_numpy(tg), torch.from_numpy(w), None if aux is None else tuple(map(torch.from_numpy, aux)))


@torch.no_grad()
def generate_answer(model, processor, item, answers_so_far, turn, max_new_tokens=48):
    """Greedy answer (decoded with skip_special_tokens, stripped) and new token ids for turn `turn` of an item,
    with answers_so_far as the earlier assistant replies."""
    msgs = shapes.messages_for(item, answers_so_far[:turn], upto=turn + 1)
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    imgs = []
    for t in item["turns"][:turn + 1]:
        imgs += [t["_img"][i] for i in range(len(t["images"]))] if "_img" in t else \
            [shapes.render(sc) for sc in t["images"]]
    inputs = processor(text=text, images=imgs, return_tensors="pt")
    # eos/pad as in generation_config.json (a model built from a config would otherwise stop at text eos 2)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOU, pad_token_id=2)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip(), new


def evaluate(model, processor, items):
    model.eval()
    ok, n, per = 0, 0, {}
    for it in items:
        answers = []
        for k, t in enumerate(it["turns"]):
            a, _ = generate_answer(model, processor, it, answers, k)
            answers.append(a)
            good = shapes.normalise(a) == shapes.normalise(t["answer"])
            ok += good
            n += 1
            c = per.setdefault(t["type"], [0, 0])
            c[0] += good
            c[1] += 1
    model.train()
    return ok / max(n, 1), {k: round(v[0] / v[1], 2) for k, v in sorted(per.items())}


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def parse_attn_sup(spec, ap):
    """One --attn-sup entry, L:H:W or L:H:W:TYPE+TYPE, as (layer, head, weight, types or None)."""
    f = spec.split(":")
    if len(f) not in (3, 4):
        ap.error(f"--attn-sup entry {spec!r}: expected L:H:W or L:H:W:TYPE+TYPE")
    types = f[3].split("+") if len(f) == 4 else None
    if types and any(t not in SUPERVISED_TYPES for t in types):
        ap.error(f"--attn-sup entry {spec!r}: question types are {', '.join(SUPERVISED_TYPES)}")
    return int(f[0]), int(f[1]), float(f[2]), types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--init-from", default=None,
                    help="continue from this folder (no curriculum: the mixed stage from step 0)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--big-frac", type=float, default=0.1, help="first fraction of steps: one large shape")
    ap.add_argument("--single-frac", type=float, default=0.3, help="first fraction of steps: single-image only")
    ap.add_argument("--mix", default="chain=0.5,compare=0.2,multiturn=0.3",
                    help="item kinds (shapes.random_item) and weights of the mixed stage")
    ap.add_argument("--aux-weight", type=float, default=1.0, help="weight of the auxiliary vision loss (0: off)")
    ap.add_argument("--aux-position", action="store_true",
                    help="the auxiliary probe also predicts, for the global image's tokens, top/bottom and left/right")
    ap.add_argument("--aux-tile", type=int, default=0, metavar="L",
                    help="a probe on the decoder's state after L layers (0: off) predicts, for every image token of a "
                         "local tile, whether its tile is in the top row and in the left column (tile_targets)")
    ap.add_argument("--attn-sup", default=None, metavar="L:H:W[:TYPE+TYPE...][,...]",
                    help="attention supervision: head H of decoder layer L (0-based) is pulled, with weight W, towards "
                         "the image tokens of the object that a colour / shape / position question names (and of the "
                         "two shapes of turn 3's same_color / same_shape), at every position predicting the answer; "
                         "the optional fourth field limits it to those question types (e.g. 3:1:0.5:position)")
    ap.add_argument("--aux-cell", action="store_true",
                    help="the auxiliary probe also predicts, for every image token, the colour and shape kind of the "
                         "object whose grid cell the token lies in (background pixels of the cell included)")
    ap.add_argument("--weighting", choices=["answer", "token"], default="token",
                    help="answer: every answer weighs alike in the loss; token: every answer token does")
    ap.add_argument("--long-chains", action="store_true",
                    help="chains ask up to 6 questions (shapes.long_chain_item: colour, shape and position of every "
                         "object the scene allows) instead of 1-4 of different types")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="keep an exponential moving average of the weights with this decay from the mixed stage on "
                         "(0: off); the final validation picks the EMA or the last weights")
    ap.add_argument("--final-val", type=int, default=0,
                    help="items of a larger validation set (seed + 9) evaluated at the end, on which the EMA and the "
                         "last weights are compared")
    ap.add_argument("--encode-workers", type=int, default=1, choices=[0, 1],
                    help="1: encode batches in a worker process while training (BatchEncoder); 0: inline")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: with 2 threads a 2-core machine shared with other jobs ran 5x slower)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--max-time", type=float, default=3000, help="stop early (and say so) after this many seconds")
    ap.add_argument("--stop-after", type=int, default=0, metavar="N",
                    help="stop after N steps of the --steps schedule (replays a run that --max-time stopped)")
    ap.add_argument("--text-layers", type=int, default=TEXT["num_hidden_layers"], help="decoder layers")
    ap.add_argument("--text-heads", type=int, default=TEXT["num_attention_heads"],
                    help="decoder query heads (head_dim = hidden / heads)")
    ap.add_argument("--text-width", type=int, default=TEXT["hidden_size"],
                    help="decoder hidden size (the MLP is 3x as wide; the tied embedding table grows with it)")
    ap.add_argument("--text-kv-heads", type=int, default=TEXT["num_key_value_heads"], help="decoder key/value heads")
    ap.add_argument("--vision-layers", type=int, default=VISION["num_hidden_layers"], help="vision encoder layers")
    ap.add_argument("--answers", choices=shapes.ANSWER_STYLES, default="short",
                    help="answer style (shapes.set_answer_style): 'short' (the committed model) answers in one clause; "
                         "'grounded' (tried, not kept) answers a colour, shape or position question after the scene's "
                         "description; 'echo' repeats the question's subject before the fact ('The triangle is green.')")
    ap.add_argument("--out", default=str(REPO / "models" / "smolvlm-shapes"))
    ap.add_argument("--stats", default=None,
                    help="where the run's record goes (default: Tools/demo-model/train_stats.json when --out is the "
                         "committed model's folder, else OUT/train_stats.json, so a trial run never overwrites the "
                         "committed model's record)")
    args = ap.parse_args()
    shapes.set_answer_style(args.answers)  # before any item is drawn: training, validation and held-out alike

    TEXT["num_hidden_layers"], TEXT["num_attention_heads"] = args.text_layers, args.text_heads
    TEXT["hidden_size"], TEXT["intermediate_size"] = args.text_width, 3 * args.text_width
    TEXT["num_key_value_heads"] = args.text_kv_heads
    VISION["num_hidden_layers"] = args.vision_layers
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if args.stats is None:
        committed = out.resolve() == (REPO / "models" / "smolvlm-shapes").resolve()
        args.stats = str(Path(__file__).resolve().parent / "train_stats.json" if committed else out / "train_stats.json")
    write_processor_files(out)
    processor = load_processor(out)
    print("image processor:", type(processor.image_processor).__name__, flush=True)

    config = make_config()
    model = Idefics3ForConditionalGeneration(config)
    if args.init_from:  # continue training from a saved folder (its bf16 weights, upcast to f32)
        model = Idefics3ForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
    attn_sup = [parse_attn_sup(x, ap) for x in args.attn_sup.split(",")] if args.attn_sup else None
    if attn_sup:
        if args.aux_weight <= 0:  # its targets come from the auxiliary loss's label planes
            ap.error("--attn-sup needs --aux-weight > 0")
        model.model.text_model.config._attn_implementation = "eager"  # the supervised head's weights are needed
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"parameters: {nparams / 1e6:.2f} M", flush=True)

    # training-only probe of the auxiliary vision loss: colour (background + 6) and shape kind (background + 4)
    aux_head = torch.nn.Linear(TEXT["hidden_size"], 1 + len(shapes.COLOR_NAMES) + 1 + len(shapes.SHAPES) +
                               (2 if args.aux_position else 0) +
                               (1 + len(shapes.COLOR_NAMES) + 1 + len(shapes.SHAPES) if args.aux_cell else 0))
    tile_head = torch.nn.Linear(TEXT["hidden_size"], 2) if args.aux_tile else None  # training only, like aux_head
    markers = tile_markers(load_processor(out).tokenizer) if args.aux_tile else None
    probes = list(aux_head.named_parameters()) + (list(tile_head.named_parameters()) if tile_head else [])
    decay, no_decay = [], []
    for n, p in list(model.named_parameters()) + [("aux." + n, p) for n, p in probes]:
        (decay if p.ndim >= 2 and "embed" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    rng = random.Random(args.seed)
    val_rng = random.Random(args.seed + 7)  # validation items: a third seed (held-out items use another one)
    val = [shapes.single_item(val_rng) for _ in range(40)] + [shapes.compare_item(val_rng) for _ in range(8)] + \
          [shapes.multiturn_item(val_rng) for _ in range(8)]
    mixed = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    big_end = 0 if args.init_from else int(args.big_frac * args.steps)
    curriculum_end = 0 if args.init_from else int(args.single_frac * args.steps)

    if args.long_chains:
        mixed = {("longchain" if k == "chain" else k): v for k, v in mixed.items()}

    def batch_items(step):
        if step < big_end:
            mix = {"biglongchain" if args.long_chains else "bigchain": 1.0}
        elif step < curriculum_end:
            mix = {"longchain" if args.long_chains else "chain": 1.0}
        else:
            mix = mixed
        kind = rng.choices(list(mix), weights=list(mix.values()))[0]  # one kind per batch: little padding
        return [shapes.random_item(rng, {kind: 1.0}) for _ in range(args.batch)]

    encoder = BatchEncoder(out, args.seed, args.aux_weight > 0, args.encode_workers,
                           attn_targets=attn_sup is not None)
    for step in range(min(encoder.ahead, args.steps)):
        encoder.submit(batch_items(step))
    t0 = time.time()
    ema = None
    averaged = None  # EMA of the weights (--ema), started at the mixed stage
    history = []
    for step in range(args.steps):
        inputs, pb, pt, tg, w, aux = encoder.next()
        if step + encoder.ahead < args.steps:
            encoder.submit(batch_items(step + encoder.ahead))
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, acc, aux_loss = loss_fn(model, inputs, pb, pt, tg, w if args.weighting == "answer" else None,
                                      aux, aux_head, args.aux_position, args.aux_cell, tile_head, markers,
                                      args.aux_tile, attn_sup)
        opt.zero_grad(set_to_none=True)
        (loss + args.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [p for _, p in probes], 1.0)
        opt.step()
        if args.ema > 0 and step >= curriculum_end:
            with torch.no_grad():
                if averaged is None:
                    averaged = {n: p.detach().clone() for n, p in model.state_dict().items()}
                else:
                    for n, p in model.state_dict().items():
                        if p.is_floating_point():
                            averaged[n].lerp_(p, 1 - args.ema)
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if step % 20 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(f"step {step}/{args.steps} loss {lv:.4f} ema {ema:.4f} tok-acc {float(acc):.3f} "
                  f"aux {float(aux_loss):.4f} lr {lr:.2e} "
                  f"seq {inputs['input_ids'].shape[1]} elapsed {el:.0f}s ({(step + 1) / el:.2f} steps/s, "
                  f"eta {(args.steps - step - 1) * el / (step + 1):.0f}s)", flush=True)
            history.append({"step": step, "loss": round(lv, 5), "ema": round(ema, 5),
                            "aux": round(float(aux_loss), 5)})
        stop = time.time() - t0 > args.max_time
        if stop:
            print(f"STOPPED EARLY at step {step + 1} (--max-time {args.max_time}s)", flush=True)
        elif args.stop_after and step + 1 >= args.stop_after:
            stop = True
            print(f"STOPPED at step {step + 1} (--stop-after; the schedule is that of --steps {args.steps})",
                  flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1 or stop:
            te = time.time()
            acc_all, per = evaluate(model, processor, val)
            print(f"EVAL step {step + 1}: turn accuracy {acc_all:.3f} {per} ({time.time() - te:.0f}s)", flush=True)
        if stop:
            break
    train_time = time.time() - t0
    encoder.close()

    final_val = None
    if args.final_val:  # a larger validation set (not the held-out one): last weights vs their moving average
        fv_rng = random.Random(args.seed + 9)
        n = args.final_val
        fv = [shapes.single_item(fv_rng) for _ in range(n * 6 // 10)] + \
             [shapes.compare_item(fv_rng) for _ in range(n // 10)] + \
             [shapes.multiturn_item(fv_rng) for _ in range(n * 3 // 10)]
        te = time.time()
        acc_last, per_last = evaluate(model, processor, fv)
        print(f"FINAL VAL last weights: {acc_last:.4f} {per_last} ({time.time() - te:.0f}s)", flush=True)
        final_val = {"items": len(fv), "last": round(acc_last, 4), "last_per_type": per_last}
        if averaged is not None:
            last = {n: p.detach().clone() for n, p in model.state_dict().items()}
            model.load_state_dict(averaged)
            acc_ema, per_ema = evaluate(model, processor, fv)
            print(f"FINAL VAL EMA weights: {acc_ema:.4f} {per_ema}", flush=True)
            final_val.update({"ema": round(acc_ema, 4), "ema_per_type": per_ema})
            if acc_ema < acc_last:
                model.load_state_dict(last)
            final_val["saved"] = "ema" if acc_ema >= acc_last else "last"
            print(f"saving the {final_val['saved']} weights", flush=True)

    # Save: bf16 weights, the processor/tokenizer files, config.
    model.eval()
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(out, safe_serialization=True)
    (out / "model.safetensors").chmod(0o644)
    write_processor_files(out)  # save_pretrained may rewrite generation_config.json: keep the real one
    stats = {"answers": args.answers, "mix": args.mix, "aux_weight": args.aux_weight, "weighting": args.weighting, "aux_position": args.aux_position, "aux_cell": args.aux_cell, "aux_tile": args.aux_tile, "attn_sup": args.attn_sup, "long_chains": args.long_chains, "ema": args.ema, "final_val": final_val, "threads": args.threads, "text": dict(TEXT), "vision": dict(VISION), "steps": args.steps, "stop_after": args.stop_after or None, "steps_done": step + 1, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
             "train_time_s": round(train_time, 1), "final_loss_ema": round(ema, 5), "final_loss": round(lv, 5),
             "parameters": nparams, "history": history}
    if args.init_from and Path(args.stats).exists():  # keep the earlier stage(s) in the record
        prev = read_json(args.stats)
        stats["previous_stages"] = prev.get("previous_stages", []) + [{k: v for k, v in prev.items()
                                                                      if k not in ("history", "previous_stages")}]
        stats["train_time_total_s"] = round(train_time + sum(st["train_time_s"] for st in stats["previous_stages"]), 1)
    stats["init_from"] = args.init_from
    write_json(args.stats, stats)
    print(f"saved to {out}; training time {train_time:.0f}s; final loss (ema) {ema:.4f}", flush=True)


if __name__ == "__main__":
    main()
