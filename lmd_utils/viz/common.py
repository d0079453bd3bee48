"""What every step's pictures share: outlining a mask, a box that shows on any background and its label kept inside
the canvas, framing an axes, latents as RGB, picking steps to show, a figure as PNG bytes, and the generic grid of
images with boxes.

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
                 linestyle: str = "solid", offset: float = 0.0, halo: Any = None) -> None:
    """Outline a 0/1 mask drawn over a ``height``×``width`` frame (origin top left) along its cell edges: one
    rectangle when the mask is one, else a contour; nothing when it is empty.

    ``offset`` as in :func:`~lmd_utils.layout.draw_box`: ``0`` for pictures drawn with ``imshow(..., extent=(0,
    width, height, 0))``, ``-0.5`` for a plain ``imshow`` of the mask's grid (pixel centres on integers).
    ``halo`` (a colour, optional) draws a wider line of it under the outline, as :func:`halo_box` does.
    """
    from matplotlib import patheffects

    effects = ([patheffects.Stroke(linewidth=linewidth + 2.0, foreground=halo), patheffects.Normal()]
               if halo is not None else None)
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32) > 0.5
    if not m.any():
        return
    cell_h, cell_w = height / m.shape[0], width / m.shape[1]
    rows, cols = np.nonzero(m)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if m.sum() == (r1 - r0) * (c1 - c0):
        patch = ax.add_patch(Rectangle((c0 * cell_w + offset, r0 * cell_h + offset), (c1 - c0) * cell_w,
                                       (r1 - r0) * cell_h, fill=False, edgecolor=colour, linewidth=linewidth,
                                       linestyle=linestyle))
        if effects:
            patch.set_path_effects(effects)
        return
    k = 8  # contour a nearest-upsampled copy so the outline follows cell edges, not cell centres
    up = np.kron(m.astype(np.float32), np.ones((k, k), dtype=np.float32))
    ys = (np.arange(up.shape[0]) + 0.5) * height / up.shape[0] + offset
    xs = (np.arange(up.shape[1]) + 0.5) * width / up.shape[1] + offset
    lines = ax.contour(xs, ys, up, levels=[0.5], colors=[colour], linewidths=linewidth, linestyles=linestyle)
    if effects:
        lines.set_path_effects(effects)


def halo_box(ax, box, height: float, width: float, colour: Any = "0.1", halo: Any = "white", style: str = "--",
             linewidth: float = 1.5, offset: float = 0.0, label: str | None = None, fontsize: float = 7,
             outside: bool = False) -> None:
    """Outline ``box`` (:func:`~lmd_utils.layout.draw_box`) as a ``colour`` line over a wider ``halo`` line, so that
    it shows on any background: the line on pale pictures, the halo on dark ones.  ``label`` (optional) is
    written inside the canvas with :func:`label_box` (``outside``: above the box where there is room)."""
    from matplotlib import patheffects

    draw_box(ax, box, height, width, colour, style, linewidth=linewidth, offset=offset)
    ax.patches[-1].set_path_effects([patheffects.Stroke(linewidth=linewidth + 2.5, foreground=halo),
                                     patheffects.Normal()])
    if label:
        label_box(ax, box, height, width, label, colour=colour, text_colour=halo, fontsize=fontsize, offset=offset,
                  outside=outside)


def label_box(ax, box, height: float, width: float, text: str, colour: Any = "0.1", text_colour: Any = "white",
              fontsize: float = 7, offset: float = 0.0, wrap: int | None = None, outside: bool = False):
    """Write ``text`` on a ``colour`` tag at a corner of ``box`` (normalised, on a ``height``×``width`` frame with
    its origin at the top left), kept inside the canvas: in the left half of the canvas it starts at the box's left
    edge and runs right, in the right half it ends at the box's right edge.  It sits just inside the box's top
    edge, or just *above* it with ``outside=True`` (to leave what is inside the box in view) when there is room
    there; a box that starts in the lowest tenth gets its tag at its bottom.  Text wider than the room left to the
    canvas edge (``wrap`` characters; default: estimated from the axes' size) is wrapped onto two lines; anything
    still too wide is clipped at the canvas edge.  Returns the text artist.
    """
    import textwrap

    right = box.x0 + box.x1 > 1.0
    low = box.y0 > 0.9
    room = (box.x1 if right else 1.0 - box.x0) - 0.02  # fraction of the canvas between the anchor and its edge
    try:  # the axes' size in inches, before any layout engine adjusts it (close enough for an estimate)
        position, (fig_w, fig_h) = ax.get_position(), ax.figure.get_size_inches()
        axes_w, axes_h = position.width * fig_w, position.height * fig_h
    except (AttributeError, TypeError):
        axes_w = axes_h = 2.0
    if wrap is None:
        wrap = max(6, int(room * axes_w * 72 / (0.62 * fontsize)))  # DejaVu Sans: about 0.6 em per character
    lines = textwrap.wrap(text, wrap, break_long_words=False, break_on_hyphens=False) or [text]
    if len(lines) > 2:
        lines = [lines[0], " ".join(lines[1:])]
    pad_x, pad_y = 0.012 * width, 0.012 * height
    above = outside and not low and box.y0 > (len(lines) * 1.2 + 0.4) * fontsize / 72 / max(axes_h, 1e-3)
    x = (box.x1 * width - pad_x) if right else (box.x0 * width + pad_x)
    y = (box.y1 * height - pad_y) if low else (box.y0 * height - pad_y) if above else (box.y0 * height + pad_y)
    artist = ax.text(x + offset, y + offset, "\n".join(lines), ha="right" if right else "left",
                     va="bottom" if low or above else "top", fontsize=fontsize, color=text_colour, linespacing=1.0,
                     bbox=dict(facecolor=colour, alpha=0.8, pad=1.2, edgecolor="none"), clip_on=True)
    artist.set_in_layout(False)
    return artist


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
                      title: str | None = None, note_size: float = 10) -> Figure:
    """A grid of pictures ``images[row][column]`` (``(3, H, W)`` in [0, 1]) with the target ``boxes``
    (normalised :class:`~lmd_utils.layout.Box` objects) dashed on each (:func:`halo_box`: dark dashes on a light
    halo, visible on pale and dark pictures alike), for comparing guidance settings.

    ``notes[row][column]`` (optional) is written under each picture in ``note_size`` points (e.g. the
    attention mass it reached).
    """
    rows = [list(r) for r in images]
    if not rows or len(rows) != len(row_labels) or any(len(r) != len(column_labels) for r in rows):
        raise ValueError(f"images must be {len(row_labels)} rows of {len(column_labels)} pictures")
    if notes is not None and (len(notes) != len(rows) or any(len(n) != len(column_labels) for n in notes)):
        raise ValueError("notes must have the shape of images")
    note_room = 0.2 * note_size / 10 if notes is not None else 0.0
    fig = Figure(figsize=(size * len(column_labels) + 1.0,
                          (size + 0.3 + note_room) * len(rows) + (0.3 if title else 0)), layout="constrained")
    axes = fig.subplots(len(rows), len(column_labels), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r, c]
            img = as_uint8_image(image)
            h, w = img.shape[:2]
            ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
            for b in boxes:
                halo_box(ax, b, h, w, linewidth=1.3)  # dark dashes on a light halo: visible on any picture
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_labels[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=9)
            if notes is not None:
                ax.set_xlabel(notes[r][c], fontsize=note_size, labelpad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
