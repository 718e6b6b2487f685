#!/usr/bin/env python3
"""Synthetic "shapes" scenes and chat tasks for the SwiftVLM demo VLM (issue 7). Deterministic given a seed.

A scene is a pale background (solid, gentle gradient or light noise) of W x H pixels (each side 96..320, aspect ratio
at most 2:1) holding 1-3 shapes, each in its own quadrant (cell of a 2 x 2 grid, so they never overlap):

  shapes   circle, square, triangle, star
  colours  red, green, blue, yellow, purple, orange (each with a small random jitter)
  cells    rows top/bottom x columns left/right, named
           "at the top left", "at the top right", "at the bottom left", "at the bottom right"
           (a 3 x 3 grid was tried first: its shapes were too small for a from-scratch model to start seeing them
           within the CPU budget; the loss stayed at the text-only prior)
  big      (training curriculum only) a single shape of radius 20-30% of the image's smaller side, centred near
           the centre of its quadrant

Shapes are always listed in reading order (row by row, left to right within a row).

Tasks and their canonical answers (exact-match evaluation is meaningful: the answer is a function of the scene):

  describe   "<image>Describe this image."            -> "A red circle at the top left and a blue star on the right."
             (1: "A X.", 2: "A X and a Y.", 3: "A X, a Y and a Z.", each "colour shape position")
  color      "<image>What color is the triangle?"     -> "Green."    (asked only if the shape kind is unique)
  shape      "<image>What shape is the green object?" -> "A triangle." (asked only if the colour is unique)
  count      "<image>How many shapes are there?"      -> "One." / "Two." / "Three."
  position   "<image>Where is the red circle?"        -> "At the top left." (colour+shape unique in the scene)
  compare    "<image><image>Compare these images."    -> "The first image has a red circle, the second has a blue
             star and a green square." (shapes of each image in reading order, no positions)
  multi-turn (3 user turns):
    turn 1   an image and one of the single-image questions above
    turn 2   a text-only follow-up about the same image (another single-image question type, no new image)
    turn 3   a new image and a question about it and the first image:
             same_color "<image>Is the shape in this image the same color as the one in the first image?"
             same_shape "<image>Is the shape in this image the same shape as the one in the first image?"
                        (both only when both images hold exactly one shape)
             same_count "<image>Does this image have the same number of shapes as the first image?"
             -> "Yes." / "No." (balanced)

An item is {"kind": "single"|"compare"|"multiturn", "turns": [{"user": text with "<image>" markers before the question,
"images": [scene, ...] (for that turn, in order), "answer": str, "type": str}, ...]}.
"""
import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star"]
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 195, 20),
    "purple": (140, 55, 175),
    "orange": (245, 130, 25),
}
COLOR_NAMES = list(COLORS)
GRID = 2
POSITIONS = [["at the top left", "at the top right"],
             ["at the bottom left", "at the bottom right"]]
NUMBERS = ["Zero", "One", "Two", "Three"]

DESCRIBE_PROMPTS = ["Describe this image."]
SINGLE_TYPES = ["describe", "color", "shape", "count", "position"]

# Answer style (set_answer_style). "short" (the committed model's): the one-clause answers of the table above.
# "grounded" (tried in session 8, not kept: Tools/demo-model/README.md): a question that has to pick one object out
# of the scene (colour, shape, position) is answered after the scene's description, and the turn-3 comparison after
# both images' shape lists:
#   "What color is the triangle?" -> "A red circle at the top left and a green triangle at the bottom right. The
#                                     triangle is green."
#   turn 3 "Is the shape in this image the same color as the one in the first image?"
#                                  -> "The first image has a red star, this one has a blue star. No."
# The idea: the short answers need the decoder to find the object named by the question among the image tokens by
# content, which the tiny model gets wrong about 1 time in 3 (binding errors), while it describes scenes without a
# mistake; the final clause would then be a copy from its own description.
# "echo" (session 10): the answer first repeats the question's subject, then gives the fact, so the token that carries
# the fact is predicted right after the words that name the object to look up:
#   "What color is the triangle?"  -> "The triangle is green."
#   "Where is the red circle?"     -> "The red circle is at the top left."
#   "What shape is the green object?" -> "The green object is a triangle."
#   turn 3 same_color              -> "This one is blue, the first one is red. No."
#          same_shape              -> "This one is a star, the first one is a star. Yes."
#          same_count              -> "This one has two shapes, the first one has one. No."
# With the short answers the fact is the first answer token: the position that predicts it must first gather the
# question's subject from several tokens back and then find that object among the image tokens (two hops in a
# 4-layer decoder). After the echo the subject is the previous token(s).
ANSWER_STYLE = "short"
# "echo-color" (session 10): the echo for colour questions only ("The triangle is green."), the short answers for
# the rest. The full echo lifted colour answers (held-out 70% -> 87.5%) but cost shape answers (100% -> 85%: the
# subject "blue object is a" is three tokens back) and did not help position or turn 3 (Tools/demo-model/README.md).
ANSWER_STYLES = ("echo", "echo-color", "grounded", "short")


def set_answer_style(style):
    global ANSWER_STYLE
    if style not in ANSWER_STYLES:
        raise ValueError(f"answer style {style!r}: expected one of {ANSWER_STYLES}")
    ANSWER_STYLE = style


# ---------------------------------------------------------------------------------------------------------------
# Scenes

def random_size(rng):
    while True:
        w, h = rng.randint(96, 320), rng.randint(96, 320)
        if max(w, h) <= 2 * min(w, h):
            return w, h


def random_scene(rng, n=None, fixed=None, big=False):
    """A scene dict. n: number of shapes (default 1..3). fixed: optional list of (shape, colour) for the shapes.
    big: one large shape (curriculum)."""
    w, h = random_size(rng)
    if n is None:
        n = rng.choice([1, 1, 2, 2, 3, 3])
    if big:
        n = 1
    cells = rng.sample(range(GRID * GRID), n)
    shapes = []
    cw, ch = w / GRID, h / GRID
    for i, cell in enumerate(cells):
        r, c = divmod(cell, GRID)
        kind, color = fixed[i] if fixed else (rng.choice(SHAPES), rng.choice(COLOR_NAMES))
        # radius: 34..45% of the smaller cell side; jitter the centre inside the cell, keeping the shape in it
        rad = rng.uniform(0.34, 0.45) * min(cw, ch)
        mx, my = cw / 2 - rad, ch / 2 - rad
        cx = c * cw + cw / 2 + rng.uniform(-mx, mx) * 0.8
        cy = r * ch + ch / 2 + rng.uniform(-my, my) * 0.8
        if big:
            rad = rng.uniform(0.20, 0.30) * min(w, h)
            cx = min(max(c * cw + cw / 2 + rng.uniform(-0.1, 0.1) * cw, rad), w - rad)
            cy = min(max(r * ch + ch / 2 + rng.uniform(-0.1, 0.1) * ch, rad), h - rad)
        rgb = tuple(int(min(255, max(0, v + rng.randint(-12, 12)))) for v in COLORS[color])
        shapes.append({"shape": kind, "color": color, "row": r, "col": c, "cx": round(cx, 2), "cy": round(cy, 2),
                       "r": round(rad, 2), "rgb": rgb, "rot": round(rng.uniform(-12, 12), 2)})
    shapes.sort(key=lambda s: (s["row"], s["col"]))
    bg_kind = rng.choice(["solid", "solid", "gradient", "gradient", "noise"])
    c1 = [rng.randint(208, 250) for _ in range(3)]
    c2 = [rng.randint(208, 250) for _ in range(3)]
    return {"w": w, "h": h, "bg": bg_kind, "c1": c1, "c2": c2, "angle": round(rng.uniform(0, 2 * math.pi), 3),
            "noise_seed": rng.randint(0, 2 ** 31 - 1), "shapes": shapes}


def _background(sc):
    w, h = sc["w"], sc["h"]
    c1, c2 = np.array(sc["c1"], np.float64), np.array(sc["c2"], np.float64)
    if sc["bg"] == "solid":
        arr = np.broadcast_to(c1, (h, w, 3)).copy()
    else:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        if sc["bg"] == "gradient":
            a = sc["angle"]
            t = (x * math.cos(a) + y * math.sin(a))
            t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
            arr = c1 + (c2 - c1) * t[..., None]
        else:
            g = np.random.default_rng(sc["noise_seed"])
            arr = c1 + g.normal(0, 4.0, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


def _rot(points, cx, cy, deg):
    a = math.radians(deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * ca - (y - cy) * sa, cy + (x - cx) * sa + (y - cy) * ca) for x, y in points]


def render(sc):
    img = _background(sc)
    d = ImageDraw.Draw(img)
    for s in sc["shapes"]:
        cx, cy, r, fill = s["cx"], s["cy"], s["r"], tuple(s["rgb"])
        poly = _shape_polygon(s)
        if poly is None:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            d.polygon(poly, fill=fill)
    return img


def _shape_polygon(s):
    """The points of a polygonal shape (None for a circle), exactly as render() draws it."""
    cx, cy, r = s["cx"], s["cy"], s["r"]
    if s["shape"] == "square":
        a = r * 0.85
        return _rot([(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)], cx, cy, s["rot"])
    if s["shape"] == "triangle":
        pts = [(cx + r * math.cos(math.radians(-90 + 120 * k)), cy + 0.1 * r + r * math.sin(math.radians(-90 + 120 * k)))
               for k in range(3)]
        return _rot(pts, cx, cy, s["rot"])
    if s["shape"] == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            ang = math.radians(-90 + 36 * k)
            pts.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
        return _rot(pts, cx, cy, s["rot"])
    return None


LABEL_CHANNELS = len(COLOR_NAMES) + len(SHAPES)  # one mask per colour, then one per shape kind
POSITION_LABELS = 2  # then the top half and the left half of the picture
CELL_LABELS = LABEL_CHANNELS  # then colour and shape kind of the object whose grid cell covers the pixel


def render_labels(sc):
    """Training-only label masks of a scene, for the auxiliary vision loss in train.py: a list of RGB images of the
    scene's size whose channels are 0/255 masks, colour masks (COLOR_NAMES order) then shape masks (SHAPES order),
    then the picture's top half and its left half (POSITION_LABELS), then colour and shape-kind masks of whole grid
    cells (CELL_LABELS), padded with empty planes to a multiple of 3. Same geometry as render()."""
    w, h = sc["w"], sc["h"]
    planes = [Image.new("L", (w, h), 0) for _ in range(LABEL_CHANNELS)]
    for s in sc["shapes"]:
        for idx in (COLOR_NAMES.index(s["color"]), len(COLOR_NAMES) + SHAPES.index(s["shape"])):
            d = ImageDraw.Draw(planes[idx])
            poly = _shape_polygon(s)
            if poly is None:
                cx, cy, r = s["cx"], s["cy"], s["r"]
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            else:
                d.polygon(poly, fill=255)
    top, left = Image.new("L", (w, h), 0), Image.new("L", (w, h), 0)
    ImageDraw.Draw(top).rectangle([0, 0, w, h / 2], fill=255)
    ImageDraw.Draw(left).rectangle([0, 0, w / 2, h], fill=255)
    planes += [top, left]
    # cell planes (CELL_LABELS): the whole grid cell of each shape, in its colour plane and its shape-kind plane, so
    # every token of the cell, background pixels included, is labelled with the object that cell holds
    cells = [Image.new("L", (w, h), 0) for _ in range(LABEL_CHANNELS)]
    for s in sc["shapes"]:
        box = [s["col"] * w / GRID, s["row"] * h / GRID, (s["col"] + 1) * w / GRID - 1, (s["row"] + 1) * h / GRID - 1]
        for idx in (COLOR_NAMES.index(s["color"]), len(COLOR_NAMES) + SHAPES.index(s["shape"])):
            ImageDraw.Draw(cells[idx]).rectangle(box, fill=255)
    planes += cells
    while len(planes) % 3:
        planes.append(Image.new("L", (w, h), 0))
    return [Image.merge("RGB", planes[i:i + 3]) for i in range(0, len(planes), 3)]


def jpeg_roundtrip(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------
# Answers

def article(word):
    return "an" if word[0] in "aeiou" else "a"


def phrase(s, position=True):
    p = f"{article(s['color'])} {s['color']} {s['shape']}"
    return f"{p} {POSITIONS[s['row']][s['col']]}" if position else p


def join(parts):
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def cap(t):
    return t[0].upper() + t[1:]


def describe_answer(sc):
    return cap(join([phrase(s) for s in sc["shapes"]])) + "."


def compare_answer(a, b):
    return (f"The first image has {join([phrase(s, False) for s in a['shapes']])}, "
            f"the second has {join([phrase(s, False) for s in b['shapes']])}.")


def possible_questions(sc, types=SINGLE_TYPES):
    """All (type, question, answer) that are well defined for the scene, for the given types."""
    out = []
    shapes = sc["shapes"]
    kinds = [s["shape"] for s in shapes]
    cols = [s["color"] for s in shapes]
    for t in types:
        if t == "describe":
            for p in DESCRIBE_PROMPTS:
                out.append((t, p, describe_answer(sc)))
        elif t == "count":
            out.append((t, "How many shapes are there?", NUMBERS[len(shapes)] + "."))
        elif t == "color":
            for s in shapes:
                if kinds.count(s["shape"]) == 1:
                    out.append((t, f"What color is the {s['shape']}?",
                                grounded(sc, f"The {s['shape']} is {s['color']}.", cap(s["color"]) + ".", t)))
        elif t == "shape":
            for s in shapes:
                if cols.count(s["color"]) == 1:
                    out.append((t, f"What shape is the {s['color']} object?",
                                grounded(sc, f"The {s['color']} object is a {s['shape']}.", f"A {s['shape']}.", t)))
        elif t == "position":
            for s in shapes:
                if sum(1 for o in shapes if o["shape"] == s["shape"] and o["color"] == s["color"]) == 1:
                    where = POSITIONS[s["row"]][s["col"]]
                    out.append((t, f"Where is the {s['color']} {s['shape']}?",
                                grounded(sc, f"The {s['color']} {s['shape']} is {where}.", cap(where) + ".", t)))
    return out


def grounded(sc, clause, short, qtype):
    """The answer to a `qtype` question in the current ANSWER_STYLE: the scene's description then `clause`
    (grounded), `clause` alone (echo; echo-color: for colour questions only), or `short`."""
    if ANSWER_STYLE == "grounded":
        return f"{describe_answer(sc)} {clause}"
    if ANSWER_STYLE == "echo" or (ANSWER_STYLE == "echo-color" and qtype == "color"):
        return clause
    return short


def same_answer(a, b, same, t3):
    """Turn 3's answer (t3: same_color / same_shape / same_count): both images' shape lists, then Yes/No (grounded);
    the asked-about property of this image and of the first, then Yes/No (echo); or Yes/No alone (short)."""
    yes = "Yes." if same else "No."
    if ANSWER_STYLE == "echo":
        if t3 == "same_color":
            return f"This one is {b['shapes'][0]['color']}, the first one is {a['shapes'][0]['color']}. {yes}"
        if t3 == "same_shape":
            return f"This one is a {b['shapes'][0]['shape']}, the first one is a {a['shapes'][0]['shape']}. {yes}"
        nb, na = NUMBERS[len(b["shapes"])].lower(), NUMBERS[len(a["shapes"])].lower()
        return f"This one has {nb} shape{'s' if len(b['shapes']) > 1 else ''}, the first one has {na}. {yes}"
    if ANSWER_STYLE != "grounded":
        return yes
    return (f"The first image has {join([phrase(s, False) for s in a['shapes']])}, "
            f"this one has {join([phrase(s, False) for s in b['shapes']])}. {yes}")


def single_question(rng, sc, qtype=None, exclude=()):
    types = [qtype] if qtype else [t for t in SINGLE_TYPES if t not in exclude]
    while True:
        t = rng.choice(types)
        qs = [q for q in possible_questions(sc, [t])]
        if qs:
            return rng.choice(qs)
        if qtype:
            return None


# ---------------------------------------------------------------------------------------------------------------
# Items

def single_item(rng, qtype=None, big=False):
    while True:
        sc = random_scene(rng, big=big)
        q = single_question(rng, sc, qtype)
        if q:
            t, text, ans = q
            return {"kind": "single", "turns": [{"user": "<image>" + text, "images": [sc], "answer": ans, "type": t}]}


def chain_item(rng, k, big=False, first=None):
    """Training only: one image and k questions about it, the first with the image (of type `first` when given), the
    rest text-only follow-ups (different task types where the scene allows), so one vision encoding carries several
    supervised answers."""
    while True:
        sc = random_scene(rng, big=big)
        turns, used = [], []
        if first is not None:
            q = single_question(rng, sc, first)
            if q is None:
                continue
            turns.append({"user": "<image>" + q[1], "images": [sc], "answer": q[2], "type": q[0]})
            used.append(q[0])
        for i in range(len(turns), k):
            fresh = [t for t in SINGLE_TYPES if t not in used and possible_questions(sc, [t])]
            t, text, ans = single_question(rng, sc, exclude=used) if fresh else single_question(rng, sc)
            used.append(t)
            turns.append({"user": ("<image>" if i == 0 else "") + text, "images": [sc] if i == 0 else [],
                          "answer": ans, "type": t})
        return {"kind": "single" if k == 1 else "chain", "turns": turns}


def long_chain_item(rng, k, big=False):
    """Training only: one image and up to k different questions about it (the first with the image, the rest
    text-only follow-ups). Each question's type is drawn among the types that still have an unasked question, so after
    "describe" and "count" the chain asks the colour, shape and position of every object the scene allows: the
    questions that need one object picked out by the question (the held-out errors) get several supervised answers
    per vision encoding instead of one."""
    while True:
        sc = random_scene(rng, big=big)
        pool = possible_questions(sc)
        if pool:
            break
    turns = []
    for i in range(k):
        types = sorted({q[0] for q in pool}, key=SINGLE_TYPES.index)
        if not types:
            break
        t = rng.choice(types)
        q = rng.choice([q for q in pool if q[0] == t])
        pool = [p for p in pool if p is not q and not (t == "describe" and p[0] == t)]  # one description: one answer
        turns.append({"user": ("<image>" if i == 0 else "") + q[1], "images": [sc] if i == 0 else [],
                      "answer": q[2], "type": q[0]})
    return {"kind": "single" if len(turns) == 1 else "chain", "turns": turns}


def compare_item(rng):
    a, b = random_scene(rng), random_scene(rng)
    return {"kind": "compare", "turns": [{"user": "<image><image>Compare these images.", "images": [a, b],
                                          "answer": compare_answer(a, b), "type": "compare"}]}


def multiturn_item(rng):
    t3 = rng.choice(["same_color", "same_shape", "same_count"])
    same = rng.random() < 0.5
    if t3 in ("same_color", "same_shape"):
        a = random_scene(rng, n=1)
        s = a["shapes"][0]
        if t3 == "same_color":
            color = s["color"] if same else rng.choice([c for c in COLOR_NAMES if c != s["color"]])
            kind = rng.choice(SHAPES)
            q3 = "Is the shape in this image the same color as the one in the first image?"
        else:
            kind = s["shape"] if same else rng.choice([k for k in SHAPES if k != s["shape"]])
            color = rng.choice(COLOR_NAMES)
            q3 = "Is the shape in this image the same shape as the one in the first image?"
        b = random_scene(rng, n=1, fixed=[(kind, color)])
    else:
        a = random_scene(rng)
        na = len(a["shapes"])
        nb = na if same else rng.choice([n for n in (1, 2, 3) if n != na])
        b = random_scene(rng, n=nb)
        q3 = "Does this image have the same number of shapes as the first image?"
    t1, x1, y1 = single_question(rng, a)
    t2, x2, y2 = single_question(rng, a, exclude=(t1,))
    return {"kind": "multiturn", "turns": [
        {"user": "<image>" + x1, "images": [a], "answer": y1, "type": t1},
        {"user": x2, "images": [], "answer": y2, "type": t2},
        {"user": "<image>" + q3, "images": [b], "answer": same_answer(a, b, same, t3), "type": t3}]}


def random_item(rng, mix):
    """mix: dict kind -> weight, kinds 'single', 'big' (single, one large shape), 'chain' / 'bigchain' (1-4
    questions about one image, training only; 'focus': such a chain that starts with a colour, position or shape
    question; 'longchain' / 'biglongchain': long_chain_item, 1-6 / 1-4 questions), 'compare', 'multiturn'."""
    kinds = list(mix)
    k = rng.choices(kinds, weights=[mix[x] for x in kinds])[0]
    if k == "single":
        return single_item(rng)
    if k == "big":
        return single_item(rng, big=True)
    if k == "chain":
        return chain_item(rng, rng.choice([1, 2, 3, 4]))
    if k == "longchain":
        return long_chain_item(rng, rng.choice([1, 2, 3, 4, 5, 6]))
    if k == "biglongchain":
        return long_chain_item(rng, rng.choice([1, 2, 3, 4]), big=True)
    if k == "focus":  # the questions that need one object picked out by the question
        return chain_item(rng, rng.choice([1, 2, 3]), first=rng.choice(["color", "position", "position", "shape"]))
    if k == "bigchain":
        return chain_item(rng, rng.choice([1, 2, 3]), big=True)
    if k == "compare":
        return compare_item(rng)
    return multiturn_item(rng)


def user_content(user_text):
    """Chat content parts for a user text with leading "<image>" markers."""
    n = 0
    while user_text.startswith("<image>"):
        user_text = user_text[len("<image>"):]
        n += 1
    return [{"type": "image"} for _ in range(n)] + [{"type": "text", "text": user_text}]


def messages_for(item, answers, upto=None):
    """Chat messages for the first `upto` turns (all by default), with `answers` as the assistant replies; when
    len(answers) < turns, the conversation ends with the last user message (for generation)."""
    msgs = []
    turns = item["turns"] if upto is None else item["turns"][:upto]
    for i, t in enumerate(turns):
        msgs.append({"role": "user", "content": user_content(t["user"])})
        if i < len(answers):
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
    return msgs


def normalise(ans):
    a = ans.strip().lower()
    return a[:-1] if a.endswith(".") else a


if __name__ == "__main__":
    rng = random.Random(0)
    for _ in range(6):
        it = random_item(rng, {"single": 1, "compare": 1, "multiturn": 1})
        for t in it["turns"]:
            print(it["kind"], t["type"], "|", t["user"], "->", t["answer"], [(s["w"], s["h"]) for s in t["images"]])
