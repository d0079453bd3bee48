"""Pictures of the composition (notebook 05): alignment and paste order, the frozen steps, images side by side
with their wanted and found boxes, and the attention that attention transfer pulls towards."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..attention import mass_inside_box
from ..composition import (AlignedObject, box_centre_distances, center_of_mass, denoised_trajectory, foreground_indices,
                           paste_order)
from ..layout import Box, draw_box
from ..sam import as_uint8_image
from .common import evenly_spaced_steps, frame_axes, latents_to_rgb, outline_mask


def alignment_figure(
    per_box_latents: torch.Tensor,
    masks: torch.Tensor,
    aligned: Sequence[AlignedObject],
    target_boxes: Sequence[Box],
    generation_boxes: Sequence[Box] | None = None,
    pixel_space: bool = True,
    size: float = 2.2,
) -> Figure:
    """Alignment and paste order: each per-box result with its mask (and the box it was generated in), then
    the canvas where the shifted masks land, coloured by which object ends on top (largest pasted first).

    ``per_box_latents`` ``(n, C, h, w)`` (the final per-box latents), ``masks`` ``(n, h, w)`` on the per-box
    images, ``aligned`` from :func:`~lmd_utils.composition.align_to_box` (one per box), ``target_boxes`` the
    layout's boxes.  The arrow on each per-box panel is the shift from the mask's centre of mass to the target
    box's centre.
    """
    n = per_box_latents.shape[0]
    if not (masks.shape[0] == len(aligned) == len(target_boxes) == n):
        raise ValueError(f"{n} latents, {masks.shape[0]} masks, {len(aligned)} aligned, {len(target_boxes)} boxes")
    h, w = masks.shape[-2:]
    rgb = latents_to_rgb(per_box_latents, pixel_space)
    colours = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(size * (n + 1), size + 0.8), layout="constrained")
    axes = fig.subplots(1, n + 1)
    for i in range(n):
        ax = axes[i]
        ax.imshow(rgb[i].numpy(), extent=(0, w, h, 0), interpolation="nearest")
        layer = torch.zeros(h, w, 4)
        layer[..., :3] = torch.tensor(colours(i % 10)[:3], dtype=layer.dtype)
        layer[..., 3] = masks[i].float() * 0.45
        ax.imshow(layer.numpy(), extent=(0, w, h, 0), interpolation="nearest")
        if generation_boxes is not None:
            draw_box(ax, generation_boxes[i], h, w, "gold")
        if masks[i].any():
            cx, cy = center_of_mass(masks[i])
            s = aligned[i].shift.on_grid(h, w)
            ax.annotate("", xy=(cx + s.dx, cy + s.dy), xytext=(cx, cy),
                        arrowprops=dict(arrowstyle="->", color="white", linewidth=1.5))
        draw_box(ax, target_boxes[i], h, w, colours(i % 10), "--")
        frame_axes(ax, h, w, f"{target_boxes[i].phrase}\nshift (dx, dy) = ({aligned[i].shift.dx}, "
                              f"{aligned[i].shift.dy})")
    ax = axes[-1]
    on_top = foreground_indices(torch.stack([a.mask for a in aligned]))
    canvas = torch.ones(h, w, 3) * 0.93
    for i in range(n):
        canvas[on_top == i + 1] = torch.tensor(colours(i % 10)[:3], dtype=canvas.dtype)
    ax.imshow(canvas.numpy(), extent=(0, w, h, 0), interpolation="nearest")
    order = paste_order(torch.stack([a.mask for a in aligned])).tolist()
    for i in range(n):
        draw_box(ax, target_boxes[i], h, w, colours(i % 10), "--")
    frame_axes(ax, h, w, "aligned masks; paste order\n" + " → ".join(target_boxes[i].phrase for i in order))
    return fig


def frozen_steps_figure(
    composed: torch.Tensor,
    overall: torch.Tensor,
    union_mask: torch.Tensor,
    frozen_steps: int,
    steps: Sequence[int] | int = 6,
    pixel_space: bool = True,
    size: float = 1.5,
    alphas: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Figure:
    """The frozen steps, as three rows: the composed per-box trajectory, the composed generation ("overall"), and
    where they differ inside the masks.

    ``composed`` and ``overall`` ``(T + 1, C, h, w)`` (or ``(T + 1, 1, C, h, w)``) are kept trajectories, entry 0
    the start noise (``composed`` may be shorter: a per-box pass stopped early, whose later columns say so);
    ``union_mask`` ``(h, w)`` is outlined on every panel.  With ``alphas`` (from
    :func:`~lmd_utils.composition.ddim_alphas`) the rows show the **denoised estimate x̂₀** of each step
    (:func:`~lmd_utils.composition.denoised_trajectory`): the picture each step is heading for, which raw ``x_t``,
    mostly noise in the first steps, hides.  Without, they show ``x_t``.  ``steps`` are entries of the trajectories;
    the titles count steps from 1: entry ``k`` is x̂₀ of step ``k + 1`` (made from the latents before it), or
    ``x_t`` after step ``k``; the last entry is the end.  The composed row is
    shown inside the masks only (nothing else of it is ever used); the third row is ``|overall − composed|``
    inside the masks, on one scale for all columns (colour bar): zero in the frozen steps (blue frames), when the
    foreground is pasted, and growing once the whole picture evolves together.
    """
    if overall.ndim == 5:
        overall = overall[:, 0]
    if composed.shape[1:] != overall.shape[1:] or composed.shape[0] > overall.shape[0]:
        raise ValueError(f"composed {tuple(composed.shape)} and overall {tuple(overall.shape)} differ")
    composed_entries = composed.shape[0]  # fewer than overall's if the per-box pass stopped early (per_box_stop)
    entries = overall.shape[0]
    chosen = evenly_spaced_steps(entries, steps) if isinstance(steps, int) else list(steps)
    if not chosen or min(chosen) < 0 or max(chosen) >= entries:
        raise ValueError(f"steps {chosen} outside 0..{entries - 1}")
    composed, overall = composed.detach().float().cpu(), overall.detach().float().cpu()
    if alphas is not None:
        overall = denoised_trajectory(overall, alphas)
        if composed_entries < entries:  # x̂₀ of the steps the stopped pass ran (its last x_t has no next entry)
            composed_entries -= 1
            composed = denoised_trajectory(composed, tuple(a[:composed_entries] for a in alphas))[:-1]
        else:
            composed = denoised_trajectory(composed, alphas)
    what = "x̂₀" if alphas is not None else "x_t"
    inside = union_mask.detach().cpu().bool()
    h, w = composed.shape[-2:]
    ran = torch.tensor([k < composed_entries for k in chosen])
    shown_composed = composed[[min(k, composed_entries - 1) for k in chosen]]
    rgb_composed = latents_to_rgb(shown_composed, pixel_space).clone()
    rgb_composed[:, ~inside] = 0.85  # the composed latents outside the masks are never used
    rgb_composed[~ran] = 0.85  # steps the per-box pass did not run (LMDConfig.per_box_stop)
    difference = (overall[chosen] - shown_composed).abs().mean(dim=1)  # (k, h, w), mean over channels
    difference[~ran] = float("nan")
    top = float(difference[ran][:, inside].max()) if inside.any() and ran.any() else 0.0
    rows = ((f"composed per-box {what}", rgb_composed), (f"composed generation {what}",
                                                         latents_to_rgb(overall[chosen], pixel_space)))
    fig = Figure(figsize=(size * len(chosen) + 1.2, 3 * size + 0.9), layout="constrained")
    axes = fig.subplots(3, len(chosen), squeeze=False)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.85")
    m = inside.float().numpy()
    for c, k in enumerate(chosen):
        end = k == entries - 1
        frozen = (k < frozen_steps) if alphas is not None else (1 <= k <= frozen_steps)
        name = "end" if end else (f"step {k + 1}" if alphas is not None else ("x_T" if k == 0 else f"after step {k}"))
        for r, (label, rgb) in enumerate(rows):
            ax = axes[r, c]
            ax.imshow(rgb[c].numpy(), extent=(0, w, h, 0), interpolation="nearest")
            outline_mask(ax, m, h, w, colour="0.1", linewidth=0.9, halo="white")
            label = name + (" · frozen" if frozen else "") + ("" if ran[c] else "\n(per-box pass stopped)")
            frame_axes(ax, h, w, label if r == 0 else "")
        ax = axes[2, c]
        shown = difference[c].masked_fill(~inside, float("nan")).numpy()
        image = ax.imshow(shown, extent=(0, w, h, 0), interpolation="nearest", cmap=cmap, vmin=0, vmax=top or 1.0)
        outline_mask(ax, m, h, w, colour="0.1", linewidth=0.9, halo="white")
        frame_axes(ax, h, w, "")
        if frozen:
            for spine in (*axes[1, c].spines.values(), *axes[2, c].spines.values()):
                spine.set_edgecolor("tab:blue")
                spine.set_linewidth(2)
    for r, label in enumerate([rows[0][0], rows[1][0], "|difference|\ninside the masks"]):
        axes[r, 0].set_ylabel(label, fontsize=8)
    bar = fig.colorbar(image, ax=axes[2, :].tolist(), shrink=0.9, pad=0.01)
    bar.set_label(f"|{what} difference|", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    steps_word = "steps" if alphas is not None else "entries"
    fig.suptitle(f"the first {frozen_steps} of {entries - 1} steps frozen inside the masks (outlined; blue frames): "
                 f"{what} of the chosen {steps_word}", fontsize=9)
    return fig


def placement_comparison_figure(
    boxes: Sequence[Box],
    images: Mapping[str, torch.Tensor],
    found: Mapping[str, Sequence[tuple[str, Box]]] | None = None,
    size: float = 2.3,
    ncols: int | None = None,
    key: Callable[[str], str] | None = None,
) -> Figure:
    """Images side by side (e.g. LMD, its ablations and plain sampling) with the wanted boxes dashed (white)
    and, if given, the found objects (``found[name]``: ``[(caption, Box), ...]`` from a detector) solid: green
    when their caption is wanted, magenta otherwise; titled with the mean of
    :func:`~lmd_utils.composition.box_centre_distances` (``key`` as there).  ``images[name]`` ``(3, H, W)`` in
    [0, 1]."""
    if not images:
        raise ValueError("no images to draw")
    key = key or (lambda caption: caption)
    wanted = {key(b.phrase) for b in boxes}
    ncols = max(1, min(ncols or len(images), len(images)))
    nrows = -(-len(images) // ncols)
    fig = Figure(figsize=(size * ncols, (size + 0.55) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, image) in zip(axes, images.items()):
        H, W = image.shape[-2:]
        ax.imshow(as_uint8_image(image), extent=(0, W, H, 0), interpolation="nearest")
        for b in boxes:
            draw_box(ax, b, H, W, "white", "--")
        title = name
        if found is not None and name in found:
            for phrase, b in found[name]:
                draw_box(ax, b, H, W, "lime" if key(phrase) in wanted else "magenta")
            d = box_centre_distances(boxes, found[name], key=key)
            title += f"\nmean distance {sum(d) / max(len(d), 1):.2f}"
        frame_axes(ax, H, W, title)
    for ax in axes[len(images):]:
        ax.set_visible(False)
    return fig


def mean_reference_map(reference: Mapping[tuple[str, int], torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """One ``size`` map from an attention-transfer reference ``{(layer, step): (heads, H, W)}``: each map is
    averaged over heads, resized bilinearly to ``size`` and averaged over layers and steps (for pictures)."""
    if not reference:
        raise ValueError("empty reference: was the per-box pass run with attention_transfer=True?")
    total = torch.zeros(size)
    for m in reference.values():
        m = m.detach().float().cpu()
        m = m.mean(0) if m.ndim == 3 else m
        total += F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return total / len(reference)


def attention_maps_figure(maps: torch.Tensor, boxes: Sequence[Box], titles: Sequence[str] | None = None,
                          size: float = 2.2) -> Figure:
    """Attention maps ``(n, h, w)`` side by side, each with its box outlined and the share of its mass inside
    the box in the title (e.g. the shifted per-box attention that attention transfer pulls towards)."""
    if maps.ndim != 3 or maps.shape[0] != len(boxes):
        raise ValueError(f"maps {tuple(maps.shape)} for {len(boxes)} boxes")
    h, w = maps.shape[-2:]
    fig = Figure(figsize=(size * len(boxes), size + 0.6), layout="constrained")
    axes = fig.subplots(1, len(boxes), squeeze=False)[0]
    for i, (ax, box) in enumerate(zip(axes, boxes)):
        m = maps[i].detach().float().cpu()
        share = float(mass_inside_box(m, box.mask(h, w)))
        ax.imshow(m.numpy(), cmap="magma", extent=(0, w, h, 0), interpolation="nearest")
        draw_box(ax, box, h, w, "white", "--")
        frame_axes(ax, h, w, f"{titles[i] if titles is not None else box.phrase}\n{share:.0%} inside its box")
    return fig
