"""Pictures of the mask extraction (notebook 04): one object's road from attention to mask, the mask at several
thresholds, and the point and coarse mask SAM is given.

The threshold route's mask is :func:`~lmd_utils.masks.threshold_object_mask`'s (``method``: ``"normalized"``,
normalised in the box and cut to it, or ``"object"``, normalised over the whole map, the blobs touching the box).  A ``reference`` (e.g. the object's pixels from the toy detector) is outlined dashed yellow in every
panel it is scored against."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..layout import Box, draw_box
from ..sam import as_uint8_image
from ..masks import (COARSE_THRESHOLD, SAM_POINT_SIGMA, _as_batch, argmax_points, gaussian_blur,
                     mask_iou, normalized_threshold_masks, resize_maps, threshold_sweep)

REFERENCE_COLOUR = (1.0, 0.85, 0.0)


def _reference(ax, reference: torch.Tensor, height: int, width: int) -> None:
    """Outline ``reference`` (bool, any size drawn on the ``height``×``width`` frame) dashed yellow, unfilled."""
    _overlay(ax, reference.bool(), height, width, colour=REFERENCE_COLOUR, alpha=0.0, linestyle="dashed")
from .common import frame_axes, outline_mask


def _overlay(ax, mask: torch.Tensor, height: int, width: int, colour=(0.0, 1.0, 1.0), alpha: float = 0.3,
             linestyle: str = "solid") -> None:
    """Draw a bool mask over the ``height``×``width`` cell frame: a light fill and its outline on cell edges."""
    m = mask.detach().cpu().numpy().astype(np.float32)
    layer = np.zeros((*m.shape, 4), dtype=np.float32)
    layer[..., :3] = colour
    layer[..., 3] = m * alpha
    ax.imshow(layer, extent=(0, width, height, 0), interpolation="nearest")
    outline_mask(ax, m, height, width, colour, linestyle=linestyle)


def mask_figure(
    attention_map: torch.Tensor,
    box: Box,
    latent_size: tuple[int, int],
    threshold: float = COARSE_THRESHOLD,
    image: Any = None,
    reference: torch.Tensor | None = None,
    sam_mask: torch.Tensor | None = None,
    sigma: float = SAM_POINT_SIGMA,
    title: str | None = None,
    size: float = 2.3,
    sam_label: str = "SAM mask",
    method: str = "normalized",
) -> Figure:
    """One object's road from attention to mask: the raw map ``A_i``, the smoothed and normalised map, the
    thresholded mask (over ``image`` if given) and, if given, the SAM mask.

    ``attention_map`` ``(h', w')``; ``box`` where the object was generated; ``latent_size`` ``(h, w)``;
    ``method``: :func:`~lmd_utils.masks.threshold_object_mask`'s (``"normalized"``: normalised inside the box and
    cut to it; ``"object"``: normalised over the whole map, the blobs touching the box).
    ``reference`` (optional, bool ``(h, w)``): e.g. the object's pixels (toy detector); the mask's IoU with it is
    shown and it is outlined (dashed yellow) on the mask panels.
    ``sam_mask`` (optional, bool, any size): SAM's chosen mask, drawn over the image and titled ``sam_label``
    (e.g. the :attr:`~lmd_utils.masks.ObjectMask.source`, which says when SAM found nothing and the coarse mask
    was used).  Everything is drawn in latent-cell coordinates, so maps of different resolutions line up.  This
    is the pure function the threshold widget of notebook 04 wraps.
    """
    amap, _ = _as_batch(attention_map, "attention_map")
    h, w = latent_size
    mask = threshold_sweep(amap[0], box, latent_size, [threshold], sigma, method=method)[0]
    smooth = resize_maps(gaussian_blur(amap[0].float(), sigma), latent_size)
    in_box = method != "object"
    region = box.mask(h, w, dtype=torch.bool) if in_box else torch.ones(h, w, dtype=torch.bool)
    lo, hi = smooth[region].min(), smooth[region].max()
    normalised = ((smooth - lo) / (hi - lo).clamp(min=1e-30)).clamp(min=0) * region

    panels = 3 + (sam_mask is not None)
    fig = Figure(figsize=(size * panels, size + 0.7), layout="constrained")
    axes = fig.subplots(1, panels)
    axes[0].imshow(amap[0].float().cpu().numpy(), cmap="magma", extent=(0, w, h, 0), interpolation="nearest")
    draw_box(axes[0], box, h, w)
    frame_axes(axes[0], h, w, f"attention A_i ({amap.shape[-2]}×{amap.shape[-1]})")
    axes[1].imshow(normalised.numpy(), cmap="magma", vmin=0, vmax=1, extent=(0, w, h, 0))
    axes[1].contour(np.arange(w) + 0.5, np.arange(h) + 0.5, normalised.numpy(), levels=[threshold],
                    colors="cyan", linewidths=1.2)
    draw_box(axes[1], box, h, w)
    frame_axes(axes[1], h, w, f"smoothed, normalised {'in box' if in_box else 'over the map'}\n"
                              f"contour at {threshold:.2f}")
    if image is not None:
        axes[2].imshow(as_uint8_image(image), extent=(0, w, h, 0))
    _overlay(axes[2], mask, h, w)
    draw_box(axes[2], box, h, w)
    caption = f"mask (cyan) > {threshold:.2f}: {int(mask.sum())} cells"
    if reference is not None:
        _reference(axes[2], reference, h, w)
        caption += f"\nIoU with reference (dashed) {_iou(mask, reference):.2f}"
    frame_axes(axes[2], h, w, caption)
    if sam_mask is not None:
        if image is not None:
            axes[3].imshow(as_uint8_image(image), extent=(0, w, h, 0))
        _overlay(axes[3], sam_mask.bool(), h, w, colour=(0.2, 1.0, 0.2))
        draw_box(axes[3], box, h, w)
        label = f"{sam_label} ({int(sam_mask.sum())} px)"
        if reference is not None:
            _reference(axes[3], reference, h, w)
            label += f"\nIoU with reference {_iou(sam_mask, reference):.2f}"
        frame_axes(axes[3], h, w, label)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _iou(mask: torch.Tensor, reference: torch.Tensor) -> float:
    """IoU of two bool masks, the first resized (nearest) to the reference's size when they differ."""
    from ..masks import resize_masks

    mask, reference = mask.bool().cpu(), reference.bool().cpu()
    if mask.shape != reference.shape:
        mask = resize_masks(mask, tuple(reference.shape[-2:]), rule="nearest")
    return float(mask_iou(mask, reference[None])[0])


def threshold_sweep_figure(
    attention_map: torch.Tensor,
    box: Box,
    latent_size: tuple[int, int],
    thresholds: Sequence[float] = (0.1, 0.25, 0.5, 0.75),
    image: Any = None,
    reference: torch.Tensor | None = None,
    sigma: float = SAM_POINT_SIGMA,
    title: str | None = None,
    size: float = 1.9,
    method: str = "normalized",
) -> Figure:
    """The thresholded mask at several thresholds side by side, then its area (and IoU with ``reference``,
    e.g. the object's pixels from the toy detector, outlined dashed yellow in every panel) against the threshold.
    Arguments as :func:`mask_figure`."""
    h, w = latent_size
    masks = threshold_sweep(attention_map, box, latent_size, thresholds, sigma, method=method)
    fig = Figure(figsize=(size * (len(thresholds) + 1.6), size + 0.8), layout="constrained")
    axes = fig.subplots(1, len(thresholds) + 1, width_ratios=[1] * len(thresholds) + [1.6])
    for ax, t, m in zip(axes, thresholds, masks):
        if image is not None:
            ax.imshow(as_uint8_image(image), extent=(0, w, h, 0))
        _overlay(ax, m, h, w)
        draw_box(ax, box, h, w)
        label = f"> {t:.2f}: {int(m.sum())} cells"
        if reference is not None:
            _reference(ax, reference, h, w)
            label += f"\nIoU {_iou(m, reference):.2f}"
        frame_axes(ax, h, w, label)
    ax = axes[-1]
    areas = (masks.flatten(1).sum(1).float() / max(int(box.mask(h, w).sum()), 1)).tolist()
    ax.plot(list(thresholds), areas, "o-", label="mask area / box area")
    if reference is not None:
        ax.plot(list(thresholds), [_iou(m, reference) for m in masks], "s-", label="IoU with reference")
    ax.set_xlabel("threshold on the normalised map", fontsize=8)
    ax.set_ylim(0, max(1.05, max(areas) * 1.05))
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def point_prompt_figure(
    attention_maps: torch.Tensor,
    images: Sequence[Any],
    boxes: Sequence[Box] | None = None,
    titles: Sequence[str] | None = None,
    sigma: float = SAM_POINT_SIGMA,
    coarse_threshold: float = COARSE_THRESHOLD,
    size: float = 2.4,
) -> Figure:
    """What SAM is given in :func:`~lmd_utils.masks.sam_refine_mask`: per object, its image, the coarse mask
    (cyan; min-max normalised smoothed attention ``> coarse_threshold`` over the whole map, as the authors) and
    the positive point at the smoothed map's arg-max (star).  ``attention_maps`` ``(n, h', w')``, ``images`` one
    per map; ``boxes`` (optional) are outlined.  SAM then returns three masks around the point and LMD keeps the
    largest confident one that overlaps the coarse mask (:func:`~lmd_utils.masks.select_sam_mask`).
    """
    maps, _ = _as_batch(attention_maps, "attention_maps")
    n = maps.shape[0]
    if len(images) != n or (boxes is not None and len(boxes) != n) or (titles is not None and len(titles) != n):
        raise ValueError(f"{n} maps but {len(images)} images, boxes or titles of another length")
    fig = Figure(figsize=(size * n, size + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for i, ax in enumerate(axes):
        image = as_uint8_image(images[i])
        H, W = image.shape[:2]
        smooth = gaussian_blur(maps[i].float(), sigma)
        coarse = normalized_threshold_masks(smooth, None, threshold=coarse_threshold)
        x, y = argmax_points(smooth, (H, W), sigma=0.0).tolist()
        ax.imshow(image, extent=(0, W, H, 0))
        _overlay(ax, coarse, H, W)
        if boxes is not None:
            draw_box(ax, boxes[i], H, W)
        ax.plot([x], [y], marker="*", markersize=14, color="yellow", markeredgecolor="black")
        name = titles[i] if titles is not None else f"object {i}"
        frame_axes(ax, H, W, f"{name}\npoint ({x:.1f}, {y:.1f}), coarse mask")
    return fig
