"""What every step's pictures share: outlining a mask, framing an axes, latents as RGB, picking steps to show,
a figure as PNG bytes, and the generic grid of images with boxes.

Images are turned into arrays by ONE function, :func:`lmd_utils.sam.as_uint8_image` (SAM's input format, so
it lives with the math that needs it); boxes are drawn by :func:`lmd_utils.layout.draw_box`.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..layout import draw_box
from ..sam import as_uint8_image


def outline_mask(ax, mask, height: float, width: float, colour: Any = "white", linewidth: float = 1.5,
                 linestyle: str = "solid", offset: float = 0.0) -> None:
    """Outline a 0/1 mask drawn over a ``height``×``width`` frame (origin top left) along its cell edges: one
    rectangle when the mask is one, else a contour; nothing when it is empty.

    ``offset`` as in :func:`~lmd_utils.layout.draw_box`: ``0`` for pictures drawn with ``imshow(..., extent=(0,
    width, height, 0))``, ``-0.5`` for a plain ``imshow`` of the mask's grid (pixel centres on integers).
    """
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32) > 0.5
    if not m.any():
        return
    cell_h, cell_w = height / m.shape[0], width / m.shape[1]
    rows, cols = np.nonzero(m)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if m.sum() == (r1 - r0) * (c1 - c0):
        ax.add_patch(Rectangle((c0 * cell_w + offset, r0 * cell_h + offset), (c1 - c0) * cell_w, (r1 - r0) * cell_h,
                               fill=False, edgecolor=colour, linewidth=linewidth, linestyle=linestyle))
        return
    k = 8  # contour a nearest-upsampled copy so the outline follows cell edges, not cell centres
    up = np.kron(m.astype(np.float32), np.ones((k, k), dtype=np.float32))
    ys = (np.arange(up.shape[0]) + 0.5) * height / up.shape[0] + offset
    xs = (np.arange(up.shape[1]) + 0.5) * width / up.shape[1] + offset
    ax.contour(xs, ys, up, levels=[0.5], colors=[colour], linewidths=linewidth, linestyles=linestyle)


def frame_axes(ax, height: int, width: int, title: str) -> None:
    """A ``height``×``width`` frame (origin top left) without ticks, with a small title."""
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def latents_to_rgb(latents: torch.Tensor, pixel_space: bool = True) -> torch.Tensor:
    """Latents ``(..., C, h, w)`` as displayable RGB ``(..., h, w, 3)`` floats in [0, 1].

    ``pixel_space=True`` (the toy world): the latents *are* the image in [-1, 1], so this is just
    ``(x + 1) / 2`` clipped.  ``pixel_space=False`` (Stable Diffusion's 4-channel VAE latents): a false-colour
    view of the first three channels, each min-max normalised over its own values; decode with the VAE
    (:func:`~lmd_utils.models.decode_latents`) to see the real image.  One channel is shown as grey.
    """
    if latents.ndim < 3:
        raise ValueError(f"latents must be (..., C, h, w), got shape {tuple(latents.shape)}")
    x = latents.detach().float().cpu()
    if x.shape[-3] == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    x = x[..., :3, :, :]
    if pixel_space:
        rgb = (x + 1) / 2
    else:
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        rgb = (x - lo) / (hi - lo).clamp(min=1e-8)
    return rgb.clamp(0, 1).movedim(-3, -1)


def evenly_spaced_steps(num_entries: int, count: int) -> list[int]:
    """``count`` indices from ``0`` to ``num_entries - 1`` inclusive, evenly spaced (both ends kept)."""
    if num_entries < 1 or count < 1:
        raise ValueError(f"need num_entries >= 1 and count >= 1, got {num_entries}, {count}")
    count = min(count, num_entries)
    if count == 1:
        return [num_entries - 1]
    return sorted({round(i * (num_entries - 1) / (count - 1)) for i in range(count)})


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (for image widgets and for saving pictures from tests)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image_grid_figure(images: Sequence[Sequence[torch.Tensor]], row_labels: Sequence[str],
                      column_labels: Sequence[str], boxes: Sequence = (),
                      notes: Sequence[Sequence[str]] | None = None, size: float = 1.5,
                      title: str | None = None) -> Figure:
    """A grid of pictures ``images[row][column]`` (``(3, H, W)`` in [0, 1]) with the target ``boxes``
    (normalised :class:`~lmd_utils.layout.Box` objects) outlined on each, for comparing guidance settings.

    ``notes[row][column]`` (optional) is written under each picture (e.g. the energy it reached).
    """
    rows = [list(r) for r in images]
    if not rows or len(rows) != len(row_labels) or any(len(r) != len(column_labels) for r in rows):
        raise ValueError(f"images must be {len(row_labels)} rows of {len(column_labels)} pictures")
    if notes is not None and (len(notes) != len(rows) or any(len(n) != len(column_labels) for n in notes)):
        raise ValueError("notes must have the shape of images")
    fig = Figure(figsize=(size * len(column_labels) + 1.0, (size + 0.3) * len(rows) + (0.3 if title else 0)),
                 layout="constrained")
    axes = fig.subplots(len(rows), len(column_labels), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r, c]
            img = as_uint8_image(image)
            h, w = img.shape[:2]
            ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
            for b in boxes:
                draw_box(ax, b, h, w, "white", "--", linewidth=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
            if notes is not None:
                ax.set_xlabel(notes[r][c], fontsize=7, labelpad=1)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
