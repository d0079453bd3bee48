"""Build the one random-weight model both sides of the reference comparison load (runs in ``.venv``).

Writes ``<out>/model``: a Stable Diffusion pipeline folder with SD 1.5's block layout and tiny widths
(:func:`lmd_utils.models.build_tiny_pipeline` at ``sample_size=64``, so images are 512×512, latents 64×64 and the
authors' layers give 16×16 / 8×8 / 16×16 maps exactly as on SD 1.5; the authors' code hard-codes that geometry).
Its tokenizer folder also gets the slow-tokenizer files ``vocab.json`` + ``merges.txt`` that transformers 4.40 reads.

The vocabulary is the tiny model's plus the words of the authors' negative prompts: their ``encode_prompts`` does
not truncate the negative prompt, so it must fit in 77 tokens (letter-by-letter it would not).

Usage: ``python tests/reference/make_model.py OUT_DIR``
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lmd_utils.config import OVERALL_NEGATIVE_PROMPT, PER_BOX_NEGATIVE_PROMPT  # noqa: E402
from lmd_utils.models import TINY_VOCABULARY, build_tiny_pipeline  # noqa: E402
from lmd_utils.offline_tokenizer import build_clip_tokenizer, single_token_order  # noqa: E402

SAMPLE_SIZE = 64  # latent size: 512×512 images, as the authors' lmd.py assumes (height = width = 512, H = W = 64)


def vocabulary() -> list[str]:
    extra = re.findall(r"[a-z]+", (PER_BOX_NEGATIVE_PROMPT + " " + OVERALL_NEGATIVE_PROMPT).lower())
    return single_token_order(list(TINY_VOCABULARY) + extra)


def main(out: Path) -> None:
    folder = out / "model"
    if (folder / "model_index.json").exists() and (folder / "tokenizer" / "merges.txt").exists():
        print(f"model already at {folder}")
        return
    words = vocabulary()
    pipe = build_tiny_pipeline(seed=0, sample_size=SAMPLE_SIZE, vocabulary=words)
    pipe.save_pretrained(folder)
    # slow-tokenizer files (what transformers 4.40's CLIPTokenizer reads), from the same word list
    build_clip_tokenizer(words, save_dir=folder / "tokenizer_slow")
    for name in ("vocab.json", "merges.txt"):
        (folder / "tokenizer" / name).write_bytes((folder / "tokenizer_slow" / name).read_bytes())
    (folder / "reference_vocabulary.json").write_text(json.dumps(words))
    print(f"model written to {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
