"""Pictures of the per-box generation (notebook 03): x_t over the steps, the blended start noise, and where
each object is generated and where it goes."""

from __future__ import annotations

from typing import Sequence

import torch
from matplotlib.figure import Figure

from ..layout import Box, Layout, draw_box
from ..per_box import PerBoxPlan
from .common import evenly_spaced_steps, halo_box, latents_to_rgb


def trajectory_figure(latents: torch.Tensor, steps: Sequence[int] | int = 6, titles: Sequence[str] | None = None,
                      boxes: Sequence[Box] | None = None, pixel_space: bool = True, size: float = 1.4) -> Figure:
    """A strip of ``x_t`` over the denoising steps, one row per box of the per-box pass.

    ``latents`` ``(T + 1, n, C, h, w)`` is :attr:`~lmd_utils.per_box.PerBoxResult.latents` (``x_T`` first, then
    after each step); ``steps`` the entries to show (or how many, evenly spaced); ``boxes`` (optional, one per
    row) are outlined in gold (the generation boxes); ``titles`` label the rows.  See
    :func:`~lmd_utils.viz.common.latents_to_rgb` for ``pixel_space``.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (T + 1, n, C, h, w), got shape {tuple(latents.shape)}")
    entries, n = latents.shape[:2]
    chosen = evenly_spaced_steps(entries, steps) if isinstance(steps, int) else list(steps)
    if not chosen or min(chosen) < 0 or max(chosen) >= entries:
        raise ValueError(f"steps {chosen} outside 0..{entries - 1}")
    for name, seq in (("titles", titles), ("boxes", boxes)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {name} for {n} boxes")
    rgb = latents_to_rgb(latents[chosen], pixel_space)  # (k, n, h, w, 3)
    h, w = rgb.shape[2:4]
    fig = Figure(figsize=(size * len(chosen) + 0.6, size * n + 0.5), layout="constrained")
    axes = fig.subplots(n, len(chosen), squeeze=False)
    for r in range(n):
        for c, k in enumerate(chosen):
            ax = axes[r, c]
            ax.imshow(rgb[c, r].numpy(), interpolation="nearest")
            if boxes is not None:  # gold on a dark halo, visible on noise and on the picture; pixel centres on integers
                halo_box(ax, boxes[r], h, w, colour="gold", halo="black", style="-", linewidth=1.3, offset=-0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("x_T (start)" if k == 0 else f"after step {k}", fontsize=8)
        if titles is not None:
            axes[r, 0].set_ylabel(titles[r], fontsize=8)
    kind = "pixels: the latents are the images" if pixel_space else "channels 0-2 of the latents, false colour"
    fig.suptitle(f"x_t over {entries - 1} steps ({kind})", fontsize=9)
    return fig


def noise_blend_figure(shared_noise: torch.Tensor, blended: torch.Tensor, boxes: Sequence[Box],
                       titles: Sequence[str] | None = None, channel: int = 0, size: float = 2.0) -> Figure:
    """The shared ``z_T``, each box's blended start noise, and where they differ (one channel).

    ``shared_noise`` ``(1 or C, ...)``: ``(1, C, h, w)`` or ``(C, h, w)``; ``blended`` ``(n, C, h, w)`` from
    :func:`~lmd_utils.per_box.blend_box_noise`; ``boxes`` the generation boxes (outlined).  The difference panel
    uses its own colour scale, since with ``r = 0.01`` the change is about a tenth of the noise's size.
    """
    shared = shared_noise[0] if shared_noise.ndim == 4 else shared_noise
    if blended.ndim != 4 or tuple(blended.shape[1:]) != tuple(shared.shape):
        raise ValueError(f"blended {tuple(blended.shape)} does not match the shared noise {tuple(shared.shape)}")
    n = blended.shape[0]
    if len(boxes) != n:
        raise ValueError(f"{len(boxes)} boxes for {n} blended noises")
    h, w = shared.shape[-2:]
    fig = Figure(figsize=(size * (1 + 2 * n), size + 0.6), layout="constrained")
    axes = fig.subplots(1, 1 + 2 * n)
    axes[0].imshow(shared[channel].float().cpu().numpy(), cmap="gray", vmin=-3, vmax=3)
    axes[0].set_title("shared z_T", fontsize=8)
    for i in range(n):
        diff = (blended[i, channel] - shared[channel]).float().cpu()
        name = titles[i] if titles is not None else f"box {i}"
        axes[1 + 2 * i].imshow(blended[i, channel].float().cpu().numpy(), cmap="gray", vmin=-3, vmax=3)
        axes[1 + 2 * i].set_title(f"start of {name}", fontsize=8)
        lim = float(diff.abs().max()) or 1.0
        axes[2 + 2 * i].imshow(diff.numpy(), cmap="coolwarm", vmin=-lim, vmax=lim)
        axes[2 + 2 * i].set_title(f"difference (±{lim:.2f})", fontsize=8)
        for ax in axes[1 + 2 * i: 3 + 2 * i]:
            draw_box(ax, boxes[i], h, w, "gold", offset=-0.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"initial noise, channel {channel} (grey scale -3..3)", fontsize=9)
    return fig


def placement_figure(plan: PerBoxPlan, images: Sequence | torch.Tensor | None = None, size: float = 2.4) -> Figure:
    """Per box: its target box (dashed), the box it is generated in (solid) and the move between them.

    ``images`` (optional, one per box: ``(3, H, W)`` in [0, 1] or anything :meth:`Layout.draw` takes) are drawn
    under the boxes, e.g. :attr:`~lmd_utils.per_box.PerBoxResult.images`.  With the authors' placement the solid
    box is centred horizontally with its bottom at ``1 − floor_padding``; the composition moves the object to the
    dashed one.
    """
    n = len(plan.generation_boxes)
    if n == 0:
        raise ValueError("the plan has no boxes")
    if images is not None and len(images) != n:
        raise ValueError(f"{len(images)} images for {n} boxes")
    fig = Figure(figsize=(size * n, size + 0.7), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    canvas = 512
    for i, (ax, gen, target) in enumerate(zip(axes, plan.generation_boxes, plan.target_boxes)):
        image = images[i] if images is not None else None
        Layout([]).draw(ax=ax, image=image, title=f"{plan.prompts[i]!r}", canvas=canvas)
        draw_box(ax, target, canvas, canvas, "tab:red", "--", label="target box")
        draw_box(ax, gen, canvas, canvas, "gold", label="generated in")
        (gx, gy), (tx, ty) = gen.center, target.center
        if (gx, gy) != (tx, ty):
            ax.annotate("", xy=(tx * canvas, ty * canvas), xytext=(gx * canvas, gy * canvas),
                        arrowprops=dict(arrowstyle="->", color="tab:red", linewidth=1.5))
        ax.set_title(f"{plan.prompts[i]!r}", fontsize=8)
    axes[0].legend(loc="upper left", fontsize=7, framealpha=0.8)
    return fig
