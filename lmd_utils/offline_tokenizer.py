"""A CLIP tokenizer built offline from a word list, for tiny test models and the toy world.

Real checkpoints ship their tokenizer (``openai/clip-vit-large-patch14``'s BPE with 49k tokens); we cannot download
it here, so tests and the toy model use the same :class:`transformers.CLIPTokenizer` class over a small vocabulary
written in code.  Each listed word gets a chain of BPE merges that builds it into one token (``"cat</w>"``); any other
word still tokenizes, letter by letter, so no prompt is ever rejected.  BPE applies merges by rank, so an earlier
word's merge can pre-empt a later word's chain ("right" listed before "triangle" splits it):
:func:`single_token_order` reorders a word list until every word is one token.  As in CLIP, ``<|startoftext|>`` and ``<|endoftext|>`` get the last ids:
text encoders and OWL-ViT-style pooling find the end token as the arg-max id, which breaks when it is id 0.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_CHARS = string.ascii_lowercase + string.digits + ".,;:!?'\"-()[]/&"


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble ``word`` into the single token ``word</w>``."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    merges = []
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return merges


def single_token_order(words: Iterable[str], model_max_length: int = 77, max_rounds: int = 50) -> list[str]:
    """``words`` (deduplicated) reordered so that :func:`build_clip_tokenizer` makes each of them one token.

    Words that come out split are moved to the front (their merges then rank first) until none is split; the
    result is deterministic.  Raises ``RuntimeError`` if that does not converge within ``max_rounds``.
    """
    order = list(dict.fromkeys(w.strip().lower() for w in words))
    split: list[str] = []
    for _ in range(max_rounds):
        tokenizer = build_clip_tokenizer(order, model_max_length=model_max_length)
        split = [w for w in order if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
        if not split:
            return order
        order = split + [w for w in order if w not in split]
    raise RuntimeError(f"could not make every word a single token; still split: {split}")


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77,
                         save_dir: str | Path | None = None) -> CLIPTokenizer:
    """A :class:`CLIPTokenizer` whose vocabulary is single characters plus one token per word in ``words``.

    ``words`` are lower-cased; the vocabulary order is deterministic (characters, then words in the given order,
    then the two special tokens).  ``save_dir`` keeps ``vocab.json``/``merges.txt`` (and the saved tokenizer) there;
    otherwise a temporary folder is used.
    """
    vocab: dict[str, int] = {}
    for c in _CHARS:
        vocab.setdefault(c, len(vocab))
    for c in _CHARS:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in dict.fromkeys(w.strip().lower() for w in words):
        if not word or any(ch not in _CHARS for ch in word):
            raise ValueError(f"word {word!r} must be non-empty and use only {_CHARS!r}")
        for a, b in _merges_for(word):
            if (a, b) not in seen:
                seen.add((a, b))
                merges.append((a, b))
                vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)

    folder = Path(save_dir) if save_dir is not None else Path(tempfile.mkdtemp(prefix="lmd_tokenizer_"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=model_max_length, pad_token=EOS)
    if save_dir is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer
