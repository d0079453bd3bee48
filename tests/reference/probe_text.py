"""The text-side differences that the pipeline scenario does not reach, probed on small cases (runs in both venvs).

``--side authors`` (in ``.venv-ref``) runs their ``convert_spec`` (overall prompt, plurals with inflect, per-box
prompts) and ``get_phrase_indices`` (energy tokens) on the cases below with the shared tokenizer; ``--side ours``
(in ``.venv``) runs ``overall_prompt`` / ``per_box_prompt`` / ``phrase_token_indices(skip_articles=False)``; both
write JSON, ``--diff A B`` prints where they differ.

Usage (run.sh does not call this; see the report):
  .venv-ref/bin/python tests/reference/probe_text.py --side authors --model runs/reference/model --out A.json
  .venv/bin/python tests/reference/probe_text.py --side ours --model runs/reference/model --out B.json
  .venv/bin/python tests/reference/probe_text.py --diff A.json B.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: (background, [captions]) -> overall prompt and per-box prompts
SPECS = [
    ("a realistic photo of a park", ["a dog", "a cat", "a cat"]),
    ("a realistic photo of a park.", ["a cat"]),  # trailing period in the background
    ("a kitchen", ["a mouse", "a mouse"]),
    ("a kitchen", ["a sofa bed", "a sofa bed"]),  # "a " inside a word group
    ("a kitchen", ["a glass", "a glass", "a glass"]),
    ("a kitchen", ["an apple", "an apple"]),
    ("a street", ["a bus", "a bus"]),
    ("a farm", ["a sheep", "a sheep"]),
    ("a room", ["a person", "a person"]),
]
#: (prompt, phrase, start of the phrase region for ours) -> energy token positions
TOKEN_CASES = [
    ("a realistic photo of a park with a cat", "a cat", len("a realistic photo of a park")),
    ("a photo of a cat park with a cat", "a cat", len("a photo of a cat park")),  # object word in the background
    ("a realistic photo of a park with two cats, a dog", "a dog", len("a realistic photo of a park")),
    ("a photo of a bobcat with a cat", "cat", len("a photo of a bobcat")),  # the phrase inside a longer word
]


def authors(model: Path) -> dict:
    sys.path.insert(0, str(HERE))
    import run_authors

    with tempfile.TemporaryDirectory() as tmp:
        run_authors.import_reference(Path(run_authors.DEFAULT_REFERENCE), Path(tmp))
        from transformers import CLIPTokenizer

        import utils.guidance as guidance
        import utils.parse as parse
        tok = model / "tokenizer"
        tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), pad_token="<|endoftext|>")
        out = {"specs": [], "tokens": []}
        for bg, captions in SPECS:
            spec = dict(prompt="", bg_prompt=bg, gen_boxes=[(c, (64 * i, 64, 64, 64)) for i, c in enumerate(captions)])
            so, overall, _ = parse.convert_spec(spec, 512, 512)
            out["specs"].append({"overall": overall, "per_box": sorted({p for p, *_ in so})})
        for prompt, phrase, _ in TOKEN_CASES:
            positions = guidance.get_phrase_indices(tokenizer=tokenizer, prompt=prompt, phrases=[phrase])
            out["tokens"].append(positions[0])
    return out


def ours(model: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from transformers import CLIPTokenizer

    from lmd_utils.attention import phrase_token_indices
    from lmd_utils.composition import overall_prompt
    from lmd_utils.layout import Box, Layout
    from lmd_utils.per_box import per_box_prompt

    tokenizer = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    out = {"specs": [], "tokens": []}
    for bg, captions in SPECS:
        boxes = sorted([Box.from_xywh(c, (64 * i, 64, 64, 64)) for i, c in enumerate(captions)], key=lambda b: b.phrase)
        layout = Layout(boxes=boxes, background=bg)
        out["specs"].append({"overall": overall_prompt(layout),
                             "per_box": sorted({per_box_prompt(bg, c) for c in captions})})
    for prompt, phrase, start in TOKEN_CASES:
        try:
            out["tokens"].append(phrase_token_indices(tokenizer, prompt, phrase, skip_articles=False, start=start))
        except ValueError as e:
            out["tokens"].append(str(e))
    return out


def diff(a: dict, b: dict) -> None:
    n = 0
    for (bg, captions), x, y in zip(SPECS, a["specs"], b["specs"]):
        if x != y:
            n += 1
            print(f"{bg!r} + {captions}:\n  theirs {x}\n  ours   {y}")
    for (prompt, phrase, start), x, y in zip(TOKEN_CASES, a["tokens"], b["tokens"]):
        if x != y:
            n += 1
            print(f"tokens of {phrase!r} in {prompt!r}: theirs {x}, ours {y} (ours searches after char {start})")
    print(f"{n} of {len(SPECS) + len(TOKEN_CASES)} cases differ")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=("authors", "ours"))
    ap.add_argument("--model", type=Path, default=REPO / "runs" / "reference" / "model")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--diff", nargs=2, type=Path)
    args = ap.parse_args()
    if args.diff:
        diff(*(json.loads(p.read_text()) for p in args.diff))
        return
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        result = authors(args.model) if args.side == "authors" else ours(args.model)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
