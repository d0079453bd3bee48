"""Per-box masks: from a per-box generation's cross-attention to a binary object mask (LMD §3.2).

Each box ``i`` is first generated alone ("per-box generation").  Its cross-attention map for the object's word
token on the mask layer (``down_blocks.2.attentions.1``), averaged over steps 10..end, is ``A_i`` (``h'×w'``,
the attention resolution).  This module turns ``A_i`` into the object's mask, at latent resolution, that
:mod:`lmd_utils.composition` uses to paste the per-box latents.

Two routes, as in the paper:

* **Threshold (no SAM)**: :func:`threshold_masks` keeps the top ``keep_fraction`` of the in-box attention
  cells (rank based); :func:`normalized_threshold_masks` keeps cells whose min-max-normalised value is above a
  threshold.  About "keep the top 75 % of the attention values": the authors' code (``preprocess_mask`` in
  ``models/sam.py``, ``mask_th_for_point = 0.25``) min-max normalises the smoothed map and keeps values
  ``> 0.25``, i.e. the top 75 % of the *value range*, not 75 % of the *cells*.  Both readings are here; the
  value-range one (:func:`normalized_threshold_masks`, default ``threshold=0.25``) is the authors' and is the
  coarse mask of the SAM route.

  **Is the mask cut to its box?**  The authors' code has no threshold route (its masks always come from SAM) and
  cuts nothing to the box: the coarse mask is normalised over the whole map, SAM's point and mask are not
  restricted.  Our threshold route (``LMDConfig.mask_method``, :func:`threshold_object_mask`):

  - ``"object"``: the coarse mask's rule, smoothed map min-max normalised over the WHOLE map, ``> 0.25``, on the
    latent grid; of its blobs (4-connected) those that touch the generation box are kept
    (:func:`keep_blobs_touching`).  The mask follows the object, also where the object spills over its box; a
    blob away from the box (a duplicate drawn elsewhere) is not pasted.  Up to the grid it is the coarse mask SAM
    is given, less such blobs.  The toy world's setting (its ``lmd_config.json``).
  - ``"normalized"`` (``LMDConfig``'s default, ours since the start): min-max normalised inside the box and cut to
    it.  On the toy model's per-box objects (7–13 px, often drawn a few pixels off their box) it covers a part of
    the object: mean IoU with the object's pixels 0.47 against 0.68 for ``"object"``
    (``python -m lmd_utils.toyworld.benchmark --check-masks --masks attention``, 40 layouts).  Stable Diffusion's
    default is left so: with untrained (random) weights the whole-map rule gives masks as large as the image.
  - ``"quantile"``: the top ``keep_fraction`` of the in-box cells (by definition cut to the box).

  No threshold follows an object's outline closely where attention is coarse: the toy model's 16×16 maps for
  32×32 images reach an IoU of about 0.75 with the object only with each object's best threshold.  That is SAM's
  job (below); the toy world has a SAM stand-in for flat colours, :class:`lmd_utils.toyworld.segment.
  FlatColourSegmenter` (IoU 0.99).
* **SAM refinement** (the authors' default): :func:`sam_refine_mask` smooths ``A_i`` with a Gaussian
  (σ = 1.5 attention cells), prompts SAM with one positive point at the smoothed map's arg-max, and keeps the
  *largest* of SAM's three masks among those with predicted IoU (SAM's confidence) ``>= 0.85`` and IoU with
  the coarse mask ``>= 0.25``.  The SAM models themselves (two backends behind one small interface) are in
  :mod:`lmd_utils.sam`.

Everything is plain ``torch``; torchvision is not needed (the Gaussian blur is a small separable convolution).
Maps are ``(..., h, w)`` float tensors, masks ``(..., h, w)`` bool tensors, images ``(H, W, 3)`` uint8 arrays,
points ``(x, y)`` in image pixels (x to the right, y down, the pixel grid's top-left corner at ``(0, 0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

import torch
import torch.nn.functional as F

from .layout import Box
from .sam import SamBackend, as_uint8_image

#: σ of the Gaussian applied to the attention map before the arg-max point prompt (authors, point input).
SAM_POINT_SIGMA = 1.5
#: Coarse-mask threshold on the min-max-normalised smoothed map (authors' ``mask_th_for_point``).
COARSE_THRESHOLD = 0.25
#: SAM masks whose predicted IoU is below this are not chosen (authors' ``discourage_mask_below_confidence``).
MIN_SAM_SCORE = 0.85
#: SAM masks whose IoU with the coarse mask is below this are not chosen (``discourage_mask_below_coarse_iou``).
MIN_COARSE_IOU = 0.25

BoxesLike = Union[Sequence[Box], Box, torch.Tensor]
MaskSource = Literal["sam", "coarse-fallback", "threshold"]


# ---------------------------------------------------------------------------------------------------------
# Small tensor helpers: box masks, Gaussian blur, resizing
# ---------------------------------------------------------------------------------------------------------
def box_masks(boxes: BoxesLike, height: int, width: int) -> torch.Tensor:
    """Boxes as a ``(n, height, width)`` bool tensor.

    ``boxes`` is a list of :class:`~lmd_utils.layout.Box` (rasterised with :meth:`Box.mask`, the same grid rule
    the rest of the package uses), a single ``Box``, or already-made box masks ``(n, h, w)`` / ``(h, w)`` at
    this resolution.
    """
    if isinstance(boxes, Box):
        boxes = [boxes]
    if isinstance(boxes, torch.Tensor):
        m = boxes if boxes.ndim == 3 else boxes[None]
        if m.ndim != 3 or tuple(m.shape[-2:]) != (height, width):
            raise ValueError(f"box masks of shape {tuple(boxes.shape)} do not match maps of size {(height, width)}")
        return m.bool()
    boxes = list(boxes)
    if not all(isinstance(b, Box) for b in boxes):
        raise TypeError("boxes must be Box objects or a tensor of box masks")
    if not boxes:
        return torch.zeros(0, height, width, dtype=torch.bool)
    return torch.stack([b.mask(height, width, dtype=torch.bool) for b in boxes])


def _as_batch(maps: torch.Tensor, name: str = "maps") -> tuple[torch.Tensor, bool]:
    """``(h, w)`` → ``(1, h, w)``; returns the batch and whether it was a single map."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim == 2:
        return maps[None], True
    if maps.ndim == 3:
        return maps, False
    raise ValueError(f"{name} must be (h, w) or (n, h, w), got shape {tuple(maps.shape)}")


def _symmetric_indices(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices ``-radius .. n-1+radius`` folded back into ``0..n-1`` by half-sample symmetric reflection.

    This is scipy's ``mode="reflect"`` (``d c b a | a b c d | d c b a``), which the authors'
    ``ndimage.gaussian_filter`` uses; ``torch``'s ``"reflect"`` padding omits the edge sample and cannot pad
    by more than the input size, so we gather instead.
    """
    idx = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` (cells), radius ``int(truncate·σ + 0.5)`` as scipy."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of the last two dims of ``maps`` (``(..., h, w)``), σ in cells.

    Matches ``scipy.ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=4.0)`` applied per map, which is
    what the authors run on ``A_i`` before picking SAM's point (σ = 1.5).  ``sigma <= 0`` returns a copy.
    """
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least 2 dims (h, w), got shape {tuple(maps.shape)}")
    if sigma <= 0:
        return maps.clone()
    h, w = maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w)
    if not x.is_floating_point():
        x = x.float()
    k = gaussian_kernel1d(sigma, truncate, dtype=x.dtype).to(x.device)
    r = (k.numel() - 1) // 2
    x = x[:, :, _symmetric_indices(h, r, x.device), :]
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = x[:, :, :, _symmetric_indices(w, r, x.device)]
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.reshape(*maps.shape[:-2], h, w)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of real-valued maps ``(..., h, w)`` to ``size = (H, W)`` (antialiased when shrinking)."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps.clone()
    x = maps.reshape(-1, 1, h, w).float()
    shrinking = size[0] < h or size[1] < w
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)
    return x.reshape(*maps.shape[:-2], *size).to(maps.dtype if maps.is_floating_point() else torch.float32)


def resize_masks(
    masks: torch.Tensor, size: tuple[int, int], rule: Literal["nearest", "majority", "any"] = "nearest"
) -> torch.Tensor:
    """Resize bool masks ``(..., h, w)`` to ``size = (H, W)``.

    ``"nearest"`` samples the source cell under each target cell's centre (``nearest-exact``, so an 8×
    down-sample reads pixel 4 of each 8, not pixel 0).  ``"majority"`` keeps a target cell when at least half
    of its area is covered (area average ``>= 0.5``), ``"any"`` when any of it is; both equal ``"nearest"``
    when upsampling by an integer factor.  We use ``"majority"`` to bring SAM's image-resolution mask to the
    latent grid; the authors bilinearly sample it and cast to bool, which is close to ``"nearest"``.
    """
    h, w = masks.shape[-2:]
    x = masks.reshape(-1, 1, h, w).float()
    if rule == "nearest":
        y = F.interpolate(x, size=tuple(size), mode="nearest-exact") > 0.5
    elif rule in ("majority", "any"):
        if size[0] <= h and size[1] <= w:
            cover = F.interpolate(x, size=tuple(size), mode="area")
        else:  # upsampling: every target cell lies in one source cell (up to rounding)
            cover = F.interpolate(x, size=tuple(size), mode="nearest-exact")
        y = cover >= 0.5 - 1e-6 if rule == "majority" else cover > 0
    else:
        raise ValueError(f"unknown rule {rule!r}; use 'nearest', 'majority' or 'any'")
    return y.reshape(*masks.shape[:-2], *size)


def mask_iou(mask: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of one bool mask ``(H, W)`` with each of ``masks`` ``(k, H, W)``; empty ∪ empty gives 0."""
    if masks.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} and masks {tuple(masks.shape)} differ in size")
    a, b = mask.bool()[None], masks.bool()
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


# ---------------------------------------------------------------------------------------------------------
# (a) Threshold masks
# ---------------------------------------------------------------------------------------------------------
def threshold_masks(
    maps: torch.Tensor, boxes: BoxesLike, keep_fraction: float = 0.75, sigma: float = 0.0
) -> torch.Tensor:
    """Keep the top ``keep_fraction`` of each map's in-box cells (rank based); zero outside the box.

    The "no SAM" mask read literally: among the ``N`` cells inside box ``i``, keep the ``k = round(f·N)``
    (at least 1) with the largest attention, i.e. the cells ``>=`` the ``(1 - f)`` quantile of the in-box
    values (ties at the threshold are all kept).  ``maps`` is ``(n, h, w)`` or ``(h, w)``, ``boxes`` has one
    box per map (a list of :class:`Box` or box masks).  ``sigma > 0`` Gaussian-smooths the maps first.
    Returns bool masks of the maps' shape.  See the module docstring for why the authors' own threshold is
    :func:`normalized_threshold_masks` instead.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    batch, single = _as_batch(maps)
    _check_finite(batch)
    n, h, w = batch.shape
    inside = box_masks(boxes, h, w).to(batch.device)
    if inside.shape[0] != n:
        raise ValueError(f"{n} maps but {inside.shape[0]} boxes")
    values = gaussian_blur(batch.float(), sigma) if sigma > 0 else batch.float()
    flat = values.masked_fill(~inside, -math.inf).flatten(1)
    n_inside = inside.flatten(1).sum(1)
    k = torch.clamp(torch.round(keep_fraction * n_inside.double()).long(), min=1)
    ranked = flat.sort(dim=1, descending=True).values
    cutoff = ranked.gather(1, (k - 1).clamp(max=h * w - 1)[:, None])
    keep = (values >= cutoff[:, :, None]) & inside & (n_inside > 0)[:, None, None]
    return keep[0] if single else keep


def normalized_threshold_masks(
    maps: torch.Tensor, boxes: BoxesLike | None = None, threshold: float = COARSE_THRESHOLD, sigma: float = 0.0
) -> torch.Tensor:
    """Min-max normalise each map inside its box (or over the whole map) and keep cells ``> threshold``.

    This is the authors' ``preprocess_mask``: ``(A - min A) / (max A - min A) > mask_th`` with
    ``mask_th_for_point = 0.25`` ("the top 75 % of the attention value range").  The authors normalise over
    the whole map and do not restrict to the box; pass ``boxes=None`` for exactly that.  With boxes, min and
    max are taken inside the box and the mask is zero outside it.  A constant map (max = min) keeps its whole
    region (the authors' division by zero would give an empty mask).
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    batch, single = _as_batch(maps)
    _check_finite(batch)
    n, h, w = batch.shape
    values = gaussian_blur(batch.float(), sigma) if sigma > 0 else batch.float()
    if boxes is None:
        region = torch.ones(n, h, w, dtype=torch.bool, device=batch.device)
    else:
        region = box_masks(boxes, h, w).to(batch.device)
        if region.shape[0] != n:
            raise ValueError(f"{n} maps but {region.shape[0]} boxes")
    lo = values.masked_fill(~region, math.inf).flatten(1).min(1).values[:, None, None]
    hi = values.masked_fill(~region, -math.inf).flatten(1).max(1).values[:, None, None]
    span = hi - lo
    normalised = torch.where(span > 0, (values - lo) / span.clamp(min=1e-30), torch.ones_like(values))
    keep = (normalised > threshold) & region
    return keep[0] if single else keep


def connected_blobs(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """4-connected components of a bool ``(h, w)`` mask: ``(labels, count)``, labels ``1..count``, 0 outside.

    Label propagation (each cell takes the smallest label among its 4 neighbours in the mask until nothing
    changes): vectorised, no SciPy.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected one (h, w) mask, got shape {tuple(mask.shape)}")
    m = mask.bool()
    h, w = m.shape
    big = h * w + 1
    labels = torch.where(m, torch.arange(1, h * w + 1, device=m.device).view(h, w), torch.full_like(m, big,
                                                                                                  dtype=torch.long))
    while True:
        p = F.pad(labels[None].float(), (1, 1, 1, 1), value=float(big))[0].long()
        nxt = torch.minimum(torch.minimum(torch.minimum(p[1:-1, 1:-1], p[:-2, 1:-1]), torch.minimum(p[2:, 1:-1],
                            p[1:-1, :-2])), p[1:-1, 2:])
        nxt = torch.where(m, nxt, labels)
        if torch.equal(nxt, labels):
            break
        labels = nxt
    roots = torch.unique(labels[m])
    out = torch.zeros(h, w, dtype=torch.long, device=m.device)
    for i, root in enumerate(roots.tolist(), start=1):
        out[labels == root] = i
    return out, len(roots)


def keep_blobs_touching(mask: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The 4-connected blobs of bool ``mask`` ``(h, w)`` that share a cell with bool ``region`` (a box); all of
    ``mask`` when none does (the object lies wholly outside its box: better its attention than nothing)."""
    labels, n = connected_blobs(mask)
    if n <= 1:
        return mask.bool().clone()
    touching = torch.unique(labels[region.bool() & mask.bool()])
    touching = touching[touching > 0]
    if touching.numel() == 0:
        return mask.bool().clone()
    return torch.isin(labels, touching)


def _check_finite(maps: torch.Tensor) -> None:
    if not torch.isfinite(maps).all():
        raise ValueError("attention maps contain NaN or inf")


def argmax_points(
    maps: torch.Tensor, image_size: tuple[int, int], sigma: float = SAM_POINT_SIGMA, boxes: BoxesLike | None = None
) -> torch.Tensor:
    """SAM's point prompt: the arg-max cell of each Gaussian-smoothed map, as ``(x, y)`` image pixels.

    ``maps`` ``(n, h', w')`` or ``(h', w')``; ``image_size = (H, W)``.  Returns ``(n, 2)`` (or ``(2,)``) float
    ``(x, y)`` at the *centre* of the arg-max cell: ``x = (col + 0.5)·W/w'``.  The authors use the cell's
    top-left corner (``col·W/w'``), half a cell (16 px at 512/16) up-left of where the attention peaks; we
    use the centre.  With ``boxes`` the arg-max is searched inside each box only (authors: whole map).
    """
    batch, single = _as_batch(maps)
    _check_finite(batch)
    n, h, w = batch.shape
    values = gaussian_blur(batch.float(), sigma) if sigma > 0 else batch.float()
    if boxes is not None:
        inside = box_masks(boxes, h, w).to(values.device)
        values = values.masked_fill(~inside, -math.inf)
    flat_index = values.flatten(1).argmax(1)
    rows, cols = flat_index // w, flat_index % w
    H, W = image_size
    points = torch.stack([(cols.double() + 0.5) * W / w, (rows.double() + 0.5) * H / h], dim=1).float()
    return points[0] if single else points


# ---------------------------------------------------------------------------------------------------------
# Choosing among SAM's masks, and the per-object result
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SamSelection:
    """Which SAM mask the selection rule picked (``index`` is None when none qualifies), and why."""

    index: int | None
    areas: torch.Tensor
    scores: torch.Tensor
    coarse_ious: torch.Tensor
    qualifies: torch.Tensor


def select_sam_mask(
    masks: torch.Tensor,
    scores: torch.Tensor,
    coarse_mask: torch.Tensor,
    min_score: float = MIN_SAM_SCORE,
    min_iou: float = MIN_COARSE_IOU,
) -> SamSelection:
    """The largest SAM mask with score ``>= min_score`` and IoU with ``coarse_mask`` ``>= min_iou``.

    ``masks`` ``(k, H, W)`` bool, ``scores`` ``(k,)``, ``coarse_mask`` ``(H, W)`` bool (same size; resize it
    first).  Ties in area go to the lower index.  When no mask qualifies ``index`` is None and the caller
    falls back (see :func:`sam_refine_mask`).  The authors' ``select_mask`` instead subtracts the largest area
    from the score of each failed criterion and always takes the arg-max, so it may return a mask that fails
    both tests; ``fallback="authors"`` in :func:`sam_refine_mask` reproduces that.
    """
    if masks.ndim != 3 or scores.shape != (masks.shape[0],):
        raise ValueError(f"masks (k, H, W) and scores (k,) expected, got {tuple(masks.shape)}, {tuple(scores.shape)}")
    areas = masks.flatten(1).sum(1)
    ious = mask_iou(coarse_mask, masks)
    scores = scores.float()
    qualifies = (scores >= min_score) & (ious >= min_iou)
    index = None
    if qualifies.any():
        ranked = torch.where(qualifies, areas, torch.full_like(areas, -1))
        index = int(ranked.argmax())  # argmax returns the first maximum → lower index wins ties
    return SamSelection(index, areas, scores, ious, qualifies)


def _authors_choice(sel: SamSelection, min_score: float, min_iou: float) -> int:
    """Authors' ``largest_over_conf``: area − max_area·[score < min] − max_area·[iou < min], arg-max."""
    big = sel.areas.max()
    penalised = sel.areas - big * (sel.scores < min_score).long() - big * (sel.coarse_ious < min_iou).long()
    return int(penalised.argmax())


@dataclass
class ObjectMask:
    """One object's mask and how it was obtained (one per box).

    ``latent_mask`` ``(h, w)`` bool is what composition uses.  ``image_mask`` ``(H, W)`` is SAM's chosen mask
    (or the up-sampled coarse mask after a fallback); ``None`` on the threshold route.  ``coarse_mask`` is
    the threshold mask at attention resolution.  ``source`` says which path produced ``latent_mask``:
    ``"sam"``, ``"coarse-fallback"`` (SAM ran but no mask qualified) or ``"threshold"`` (no SAM).
    """

    latent_mask: torch.Tensor
    source: MaskSource
    coarse_mask: torch.Tensor
    image_mask: torch.Tensor | None = None
    point_xy: tuple[float, float] | None = None
    sam_scores: torch.Tensor | None = None
    sam_coarse_ious: torch.Tensor | None = None
    sam_index: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def used_sam(self) -> bool:
        return self.source == "sam"

    @property
    def area(self) -> int:
        return int(self.latent_mask.sum())


def _expanded_box_mask(box: Box, margin: float, height: int, width: int) -> torch.Tensor:
    grown = Box(
        box.phrase, max(box.x0 - margin, 0.0), max(box.y0 - margin, 0.0), min(box.x1 + margin, 1.0),
        min(box.y1 + margin, 1.0),
    )
    return grown.mask(height, width, dtype=torch.bool)


def _to_latent(image_mask: torch.Tensor, latent_size: tuple[int, int], notes: list[str]) -> torch.Tensor:
    latent = resize_masks(image_mask, latent_size, rule="majority")
    if not latent.any() and image_mask.any():
        notes.append("object covers no latent cell by majority; kept every cell it touches")
        latent = resize_masks(image_mask, latent_size, rule="any")
    return latent


#: The threshold route's mask definitions (``LMDConfig.mask_method``; see the module docstring).
MASK_METHODS = ("normalized", "object", "quantile")


def threshold_object_mask(
    attention_map: torch.Tensor,
    box: Box,
    latent_size: tuple[int, int],
    method: Literal["normalized", "object", "quantile"] = "normalized",
    keep_fraction: float = 0.75,
    threshold: float = COARSE_THRESHOLD,
    sigma: float = SAM_POINT_SIGMA,
) -> ObjectMask:
    """The no-SAM mask of one object at latent resolution (paper's "w/o SAM" ablation).

    ``attention_map`` ``(h', w')`` is smoothed (``sigma`` attention cells), bilinearly resized to the latent
    grid, then thresholded (thresholding on the latent grid rather than up-sampling a 16×16 mask gives smooth
    outlines):

    * ``"normalized"`` (default): values above ``threshold`` after min-max normalisation inside ``box``
      (:func:`normalized_threshold_masks`), cut to the box;
    * ``"object"``: values above ``threshold`` after min-max normalisation over the whole map (the coarse mask's
      rule, :func:`normalized_threshold_masks` with ``boxes=None``), then the blobs that touch ``box``
      (:func:`keep_blobs_touching`): the mask follows the object, and is not cut to the box;
    * ``"quantile"``: the top ``keep_fraction`` of the in-box cells (:func:`threshold_masks`), cut to the box.

    ``coarse_mask`` is the attention-grid mask of the same rule (``"object"``: the authors' coarse mask, as SAM's
    route makes it; otherwise normalised in the box).
    """
    amap, _ = _as_batch(attention_map, "attention_map")
    if amap.shape[0] != 1:
        raise ValueError("threshold_object_mask takes one (h', w') map; use extract_object_masks for many")
    if method not in MASK_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(repr(m) for m in MASK_METHODS)}")
    smooth = gaussian_blur(amap[0].float(), sigma)
    coarse = normalized_threshold_masks(smooth, None if method == "object" else box, threshold=threshold)
    on_latent = resize_maps(smooth, latent_size)
    if method == "quantile":
        latent = threshold_masks(on_latent[None], [box], keep_fraction=keep_fraction)[0]
    elif method == "normalized":
        latent = normalized_threshold_masks(on_latent[None], [box], threshold=threshold)[0]
    else:
        latent = keep_blobs_touching(normalized_threshold_masks(on_latent, None, threshold=threshold),
                                     box.mask(*latent_size, dtype=torch.bool))
    return ObjectMask(latent_mask=latent, source="threshold", coarse_mask=coarse)


def sam_refine_mask(
    attention_map: torch.Tensor,
    image: Any,
    backend: SamBackend,
    latent_size: tuple[int, int],
    box: Box | None = None,
    box_margin: float | None = None,
    sigma: float = SAM_POINT_SIGMA,
    coarse_threshold: float = COARSE_THRESHOLD,
    min_score: float = MIN_SAM_SCORE,
    min_iou: float = MIN_COARSE_IOU,
    fallback: Literal["coarse", "authors"] = "coarse",
    rules: Literal["ours", "authors"] = "ours",
) -> ObjectMask:
    """Refine one object's attention mask with SAM (paper §3.2; authors' ``sam_refine_attn``, point input).

    1. Smooth ``A_i`` (``(h', w')``) with a Gaussian, σ = 1.5 attention cells.
    2. Coarse mask: min-max-normalised smoothed map ``> 0.25`` (:func:`normalized_threshold_masks`).
    3. Prompt SAM with one positive point at the smoothed arg-max (cell centre, :func:`argmax_points`) on the
       per-box image ``image`` (``(H, W, 3)``).
    4. Choose the largest of SAM's 3 masks with score ``>= 0.85`` and IoU ``>= 0.25`` with the coarse mask
       (IoU measured at image resolution against the nearest-up-sampled coarse mask; the authors measure at
       attention resolution).  If none qualifies: ``fallback="coarse"`` (default) uses the coarse mask and
       says so (``source="coarse-fallback"``); ``fallback="authors"`` takes the authors' penalised arg-max.
    5. Down-sample the chosen image mask to ``latent_size`` by majority.

    Box restriction: the authors do not restrict the SAM mask (nor the coarse mask or the point) to the box,
    and by default neither do we (``box=None``).  Given ``box``, the coarse mask and the point are searched
    inside it; given also ``box_margin`` (normalised units, e.g. 0.05), the final mask is clipped to the box
    grown by that margin.

    ``rules="authors"`` (``LMDConfig.sam_rules``; authors' ``models/sam.py:125-175``) replaces steps 3-5 by theirs:
    the point at the arg-max cell's top-left corner ``(col·W/w', row·H/h')``; SAM's masks bilinearly resized to
    ``latent_size`` keeping any value > 0; the IoU with the coarse mask measured on the attention grid (the latent
    masks bilinearly resized there, any > 0, ``ε = 1e-6``); the choice the penalised arg-max of the latent-grid
    areas (:func:`_authors_choice`: always a SAM mask, so ``fallback`` does not apply).  It takes no ``box``.
    """
    if rules not in ("ours", "authors") or (rules == "authors" and (box is not None or box_margin is not None)):
        raise ValueError(f"rules must be 'ours' or 'authors' (the latter without a box), not {rules!r}")
    amap, _ = _as_batch(attention_map, "attention_map")
    if amap.shape[0] != 1:
        raise ValueError("sam_refine_mask takes one (h', w') map")
    image = as_uint8_image(image)
    H, W = image.shape[:2]
    smooth = gaussian_blur(amap[0].float(), sigma)
    region = None if box is None else [box]
    coarse = normalized_threshold_masks(smooth, region, threshold=coarse_threshold)
    if rules == "authors":
        row, col = divmod(int(smooth.flatten().argmax()), smooth.shape[1])
        point_xy = (float(col * (W // smooth.shape[1])), float(row * (H // smooth.shape[0])))
    else:
        point = argmax_points(smooth, (H, W), sigma=0.0, boxes=region)
        point_xy = (float(point[0]), float(point[1]))

    masks, scores = backend.predict(image, point_xy)
    masks, scores = masks.bool().cpu(), scores.float().cpu().reshape(-1)
    if masks.ndim != 3 or tuple(masks.shape[-2:]) != (H, W) or masks.shape[0] != scores.shape[0]:
        raise ValueError(f"SAM backend returned masks {tuple(masks.shape)} / scores {tuple(scores.shape)}")
    if rules == "authors":
        on_latent = F.interpolate(masks.float()[None], tuple(latent_size), mode="bilinear")[0] > 0
        on_grid = F.interpolate(on_latent.float()[None], tuple(coarse.shape), mode="bilinear")[0] > 0
        c = coarse.cpu()[None]
        ious = ((c & on_grid).flatten(1).sum(1).double() / ((c | on_grid).flatten(1).sum(1).double() + 1e-6)).float()
        sel = SamSelection(None, on_latent.flatten(1).sum(1), scores, ious, (scores >= min_score) & (ious >= min_iou))
        index = _authors_choice(sel, min_score, min_iou)
        return ObjectMask(latent_mask=on_latent[index], source="sam", coarse_mask=coarse, image_mask=masks[index],
                          point_xy=point_xy, sam_scores=scores, sam_coarse_ious=ious, sam_index=index)
    coarse_on_image = resize_masks(coarse, (H, W), rule="nearest")
    sel = select_sam_mask(masks, scores, coarse_on_image, min_score=min_score, min_iou=min_iou)

    notes: list[str] = []
    index, source = sel.index, "sam"
    if index is None:
        pairs = zip(sel.scores.tolist(), sel.coarse_ious.tolist())
        failed = f"no SAM mask passed score>={min_score} and IoU>={min_iou} (" + ", ".join(
            f"score {s:.2f}/IoU {i:.2f}" for s, i in pairs
        ) + ")"
        if fallback == "authors":
            index = _authors_choice(sel, min_score, min_iou)
            notes.append(f"{failed}; the authors' rule chose mask {index}")
        elif fallback == "coarse":
            notes.append(f"{failed}; used the coarse mask")
            source = "coarse-fallback"
        else:
            raise ValueError(f"unknown fallback {fallback!r}; use 'coarse' or 'authors'")
    image_mask = masks[index] if index is not None else coarse_on_image
    if box is not None and box_margin is not None:
        image_mask = image_mask & _expanded_box_mask(box, box_margin, H, W)
    latent = _to_latent(image_mask, latent_size, notes)
    return ObjectMask(
        latent_mask=latent, source=source, coarse_mask=coarse, image_mask=image_mask, point_xy=point_xy,
        sam_scores=sel.scores, sam_coarse_ious=sel.coarse_ious, sam_index=index, notes=notes,
    )


def extract_object_masks(
    attention_maps: torch.Tensor,
    boxes: Sequence[Box],
    latent_size: tuple[int, int],
    images: Sequence[Any] | None = None,
    backend: SamBackend | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> list[ObjectMask]:
    """Masks for all boxes: SAM-refined when ``backend`` and per-box ``images`` are given, else thresholded.

    ``attention_maps`` ``(n, h', w')``, one per box in ``boxes`` (the per-box generation's boxes, i.e. where
    each object was actually generated).  Extra keyword arguments go to :func:`sam_refine_mask` or
    :func:`threshold_object_mask`.
    """
    maps, _ = _as_batch(attention_maps, "attention_maps")
    boxes = list(boxes)
    if maps.shape[0] != len(boxes):
        raise ValueError(f"{maps.shape[0]} attention maps but {len(boxes)} boxes")
    if (backend is None) != (images is None):
        raise ValueError("pass both a SAM backend and the per-box images, or neither")
    if images is not None and len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    from .progress import progress_bar

    out = []
    for i in progress_bar(range(len(boxes)), desc="masks", disable=not progress or backend is None):
        if backend is None:
            out.append(threshold_object_mask(maps[i], boxes[i], latent_size, **kwargs))
        else:
            out.append(sam_refine_mask(maps[i], images[i], backend, latent_size, **kwargs))
    return out


# ---------------------------------------------------------------------------------------------------------
# The threshold sweep (notebook 04; its pictures: lmd_utils.viz.masks)
# ---------------------------------------------------------------------------------------------------------
def threshold_sweep(
    attention_map: torch.Tensor,
    box: Box,
    latent_size: tuple[int, int],
    thresholds: Sequence[float],
    sigma: float = SAM_POINT_SIGMA,
    method: Literal["normalized", "object"] = "normalized",
) -> torch.Tensor:
    """The no-SAM mask of one object at each threshold: ``(len(thresholds), h, w)`` bool on the latent grid.

    Each mask is :func:`threshold_object_mask` with ``method`` (``"normalized"``: the min-max rule inside the box,
    cut to it; ``"object"``: over the whole map, the blobs touching the box; the authors' threshold is 0.25); a
    higher threshold keeps fewer cells, so the masks are nested.
    """
    if not len(thresholds):
        raise ValueError("no thresholds given")
    if method not in ("normalized", "object"):
        raise ValueError(f"threshold_sweep sweeps 'normalized' or 'object', not {method!r}")
    return torch.stack([
        threshold_object_mask(attention_map, box, latent_size, method=method, threshold=float(t),
                              sigma=sigma).latent_mask
        for t in thresholds
    ])
