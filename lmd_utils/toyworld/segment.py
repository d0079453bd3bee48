"""The toy world's stand-in for SAM: flat-colour regions grown from a point.

LMD refines each object's attention mask with the Segment Anything Model (paper §3.2, :func:`~lmd_utils.masks.
sam_refine_mask`): SAM gets the per-box image and one positive point, at the peak of the object word's attention,
and returns three masks with confidence scores; LMD keeps the largest confident one that agrees with the attention
(the coarse mask).  SAM was trained on photographs; toy-world objects are flat colours on a plain background, so a
region grown from the point does SAM's job there exactly.  :class:`FlatColourSegmenter` has SAM's interface
(:class:`~lmd_utils.sam.SamBackend`), so it runs through the very same selection rules::

    generate(pipe, layout, seed, config, sam=FlatColourSegmenter())

Why the toy world has it: the attention maps are 16×16 for 32×32 images (a cell is 2×2 pixels) and are smoothed
before thresholding, so a mask made from attention alone cannot follow an 11-pixel object's outline: on the toy
benchmark's per-box objects the best threshold *per object* reaches an IoU of about 0.75 with the object's pixels,
the fixed threshold 0.68; the region grown from the attention's peak 1.00 (``python -m
lmd_utils.toyworld.benchmark --check-masks --masks attention|segmenter``, 40 layouts, 81 objects).

Exact is not best for pasting, though: the toy benchmark's LMD keeps the attention masks, whose halo pastes a rim
of the per-box background with the object.  With the exact masks the composed pass, once it releases the pasted
shapes, redraws their outlines, and neighbouring shapes of one colour merge (spatial task, seeds 0–24: 17/25 right
against 21/25).

The three masks (SAM: part, object, whole): the 4-connected region around the point of the pixels whose colour lies
within :data:`TOLERANCES` (RGB distance) of the point's colour, one mask per tolerance.  Score (SAM: its predicted
IoU): how clearly the region stands out from the pixels around it, ``min(1, contrast / CONTRAST_FOR_FULL_SCORE)``
with ``contrast`` the RGB distance between the region's mean colour and the mean colour of the one-pixel ring around
it; a region that touches all four image borders (the background itself) scores 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..sam import as_uint8_image
from .detector import connected_components

#: RGB distances from the point's colour that still count as the object, one mask each (toy colours are ≥ 140 apart
#: from any background, and generated pixels stray by up to ~60 from their colour).
TOLERANCES: tuple[float, float, float] = (40.0, 70.0, 100.0)
#: Contrast (RGB distance between the region and its surroundings) that scores 1; below it the score falls linearly.
CONTRAST_FOR_FULL_SCORE = 100.0


def grow_region(image: np.ndarray, point_xy: Sequence[float], tolerance: float) -> np.ndarray:
    """Bool ``(H, W)``: the 4-connected pixels around ``point_xy`` whose colour is within ``tolerance`` of its pixel."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    col = min(max(int(point_xy[0]), 0), w - 1)
    row = min(max(int(point_xy[1]), 0), h - 1)
    near = np.linalg.norm(img - img[row, col], axis=-1) <= tolerance
    labels, _ = connected_components(near)
    return labels == labels[row, col]


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` pixels (4-neighbourhood, once per pixel)."""
    out = np.asarray(mask, dtype=bool)
    for _ in range(pixels):
        p = np.pad(out, 1)
        out = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


def region_score(image: np.ndarray, region: np.ndarray) -> float:
    """How clearly ``region`` stands out (see the module docstring): 0 for the background, 1 for a clear object."""
    if not region.any():
        return 0.0
    touches = (region[0].any(), region[-1].any(), region[:, 0].any(), region[:, -1].any())
    if all(touches):
        return 0.0
    padded = np.pad(region, 1)
    grown = padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    ring = grown & ~region
    if not ring.any():
        return 0.0
    img = np.asarray(image, dtype=np.float32)
    contrast = float(np.linalg.norm(img[region].mean(0) - img[ring].mean(0)))
    return min(1.0, contrast / CONTRAST_FOR_FULL_SCORE)


class FlatColourSegmenter:
    """A :class:`~lmd_utils.sam.SamBackend` for flat-colour images (the toy world): three regions grown from the point
    at :data:`TOLERANCES`, scored by their contrast with their surroundings (module docstring)."""

    def __init__(self, tolerances: Sequence[float] = TOLERANCES, margin: int = 0) -> None:
        if not tolerances or min(tolerances) <= 0:
            raise ValueError(f"tolerances must be positive RGB distances, got {tolerances}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0 pixels, got {margin}")
        self.tolerances = tuple(float(t) for t in tolerances)
        self.margin = int(margin)

    def __repr__(self) -> str:
        return f"FlatColourSegmenter(tolerances={self.tolerances}, margin={self.margin})"

    def predict(self, image: Any, point_xy: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(H, W, 3)`` (uint8, or anything :func:`~lmd_utils.sam.as_uint8_image` reads), ``point_xy`` in
        pixels → ``(masks (k, H, W) bool, scores (k,))``, one per tolerance."""
        img = as_uint8_image(image)
        regions = [grow_region(img, point_xy, t) for t in self.tolerances]
        scores = [region_score(img, r) for r in regions]
        regions = [dilate(r, self.margin) for r in regions]
        return torch.from_numpy(np.stack(regions)), torch.tensor(scores, dtype=torch.float32)


__all__ = ["FlatColourSegmenter", "grow_region", "region_score", "dilate", "TOLERANCES", "CONTRAST_FOR_FULL_SCORE"]
