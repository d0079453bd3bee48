"""Attention maps and stores made by hand, with known numbers: shared by a step's math tests and its picture
tests (``test_X.py`` and ``test_X_display.py``), so that no model runs."""

from __future__ import annotations

import torch

from lmd_utils.attention import AttentionRecord, AttentionStore
from lmd_utils.layout import Box

FINE = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
COARSE = "mid_block.attentions.0.transformer_blocks.0.attn2"
LEFT = Box("left", 0.0, 0.0, 0.5, 1.0)  # the left half


def record(layer: str, step: int, maps: torch.Tensor, heads: int = 2, tokens: int = 5) -> AttentionRecord:
    """A record whose token 1 has ``maps`` (batch, H, W) on every head; the rest of the mass sits on token 0."""
    b, h, w = maps.shape
    probs = torch.zeros(b, heads, h, w, tokens)
    probs[..., 1] = maps[:, None]
    probs[..., 0] = 1 - maps[:, None]
    return AttentionRecord(layer, step, probs)


def two_layer_store(steps=(0, 1)) -> AttentionStore:
    """Two layers: FINE (8×8) puts token 1 entirely in the left half; COARSE (4×4) spreads it uniformly."""
    store = AttentionStore(layers="all")
    inside = LEFT.mask(8, 8)
    for step in steps:
        store.records.append(record(FINE, step, (inside / inside.sum() * 4).expand(2, 8, 8)))
        store.records.append(record(COARSE, step, torch.full((2, 4, 4), 0.25)))
    return store


def blob(size: int = 16, centre: tuple[float, float] = (8.0, 8.0), width: float = 2.5) -> torch.Tensor:
    """A Gaussian bump of attention: the shape an object word's map has."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * width**2))
