"""Energies on cross-attention maps that pull each object's attention into its box (paper §3.2).

LMD guides both the per-box and the composed generation with a BoxDiff-style energy (paper Eq. for
``E(A, b)``, following Xie et al., BoxDiff, ICCV 2023)::

    E(A, b) = w_in · (1 − TopK(A · b)) + w_out · TopK(A · (1 − b))

where ``A`` is a token's cross-attention map, ``b`` the box mask and ``TopK`` the mean of the largest ``k``
values, ``k`` = 20 % of the cells inside (resp. outside) the box; ``w_in = 1``, ``w_out = 4`` (the authors'
``fg_weight``/``bg_weight`` for LMD).  The paper writes ``−TopK(A·b)``; the authors' code uses ``1 − TopK``,
which has the same gradient and makes the stopping threshold (:class:`~lmd_utils.sampling.GuidanceConfig`)
meaningful, so we keep it.

The composed ("overall") pass adds LMD's attention-transfer term (paper §3.2, "attention transfer"):
``λ · Σ |Â_comp − Â_i|`` between the composed pass's map and the per-box pass's map of the same box, each
normalised to sum 1 inside the box (λ = 2 in the authors' code, with their head handling; see
:class:`~lmd_utils.sampling.GuidanceConfig`).

Normalisation: the authors' LMD energy uses the raw softmax probabilities (each pixel's distribution over the
77 tokens); BoxDiff's own code renormalises over the tokens without ⟨sot⟩ and smooths the maps.  We follow LMD:
no normalisation before the top-k.

All functions broadcast over leading dimensions (boxes, heads, tokens, images): ``maps (..., H, W)`` with
``masks`` broadcastable to it give energies of shape ``(...)``, differentiable in ``maps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch

if TYPE_CHECKING:  # matplotlib is imported where pictures are drawn
    from matplotlib.figure import Figure

#: The authors' defaults (``fg_top_p = bg_top_p``, ``fg_weight``, ``bg_weight``); :class:`~lmd_utils.config.GuidanceConfig`
#: uses them.
TOP_FRACTION = 0.2
INSIDE_WEIGHT = 1.0
OUTSIDE_WEIGHT = 4.0


def topk_mean(values: torch.Tensor, mask: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Mean of the ``k = max(1, ⌊fraction · |mask|⌋)`` largest values of ``values`` inside ``mask``.

    ``values (..., H, W) ≥ 0`` and a binary ``mask`` broadcastable to it; returns ``(...)``.  Each map may
    have its own ``k`` (boxes of different sizes in one batch): we sort once and read the cumulative sum at
    ``k``, which is differentiable like ``torch.topk``.  ``⌊·⌋`` and the ``max(1, ·)`` follow the authors'
    ``(mask.sum() * top_p).long().clamp_(min=1)``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values, mask = torch.broadcast_tensors(values, mask.to(values.dtype))
    flat = (values * mask).flatten(-2)
    k = (mask.flatten(-2).sum(-1) * fraction).long().clamp(min=1)
    ranked = flat.sort(dim=-1, descending=True).values.cumsum(-1)
    return ranked.gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1) / k.to(values.dtype)


def box_energy(maps: torch.Tensor, masks: torch.Tensor, top_fraction: float = TOP_FRACTION,
               inside_weight: float = INSIDE_WEIGHT, outside_weight: float = OUTSIDE_WEIGHT) -> torch.Tensor:
    """``w_in · (1 − TopK(A·b)) + w_out · TopK(A·(1−b))`` per map: ``(..., H, W) → (...)``.

    Low when the map's strongest cells are inside the box and the cells outside are quiet.  Vectorised: e.g.
    maps ``(n, H, W)`` with masks ``(n, H, W)`` give ``(n,)``, maps ``(n, heads, H, W)`` with masks
    ``(n, 1, H, W)`` give ``(n, heads)``.
    """
    masks = masks.to(maps.dtype)
    inside = topk_mean(maps, masks, top_fraction)
    outside = topk_mean(maps, 1 - masks, top_fraction)
    return inside_weight * (1 - inside) + outside_weight * outside


def normalize_in_box(maps: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``A·b / (Σ A·b + eps)``: the map restricted to the box, summing to 1 there (``eps`` avoids 0/0)."""
    inside = maps * masks.to(maps.dtype)
    return inside / (inside.sum(dim=(-2, -1), keepdim=True) + eps)


def attention_transfer_energy(maps: torch.Tensor, reference: torch.Tensor, masks: torch.Tensor,
                              eps: float = 1e-5) -> torch.Tensor:
    """``Σ_cells |norm_b(A) − norm_b(A_ref)|`` (L1 between in-box-normalised maps): ``(..., H, W) → (...)``.

    ``maps`` is the composed pass's map of a box's word token, ``reference`` the per-box pass's map of the
    same token at the same step (already shifted to the box's place in the composed image), ``masks`` the
    box.  Ranges over [0, 2]; the gradient flows into ``maps`` only.  Unweighted: multiply by λ.
    """
    diff = normalize_in_box(maps, masks, eps) - normalize_in_box(reference.detach().to(maps.dtype), masks, eps)
    return diff.abs().sum(dim=(-2, -1))


def energy_terms(maps: torch.Tensor, masks: torch.Tensor, **box_energy_kwargs) -> dict[str, torch.Tensor]:
    """The two parts of :func:`box_energy` for plots: ``inside`` = TopK in the box, ``outside`` = TopK outside."""
    k = box_energy_kwargs.get("top_fraction", TOP_FRACTION)
    return {"inside": topk_mean(maps, masks, k), "outside": topk_mean(maps, 1 - masks.to(maps.dtype), k)}


# -- looking at the energy (notebook 02) ------------------------------------------------------------------
def gaussian_map(height: int, width: int, center: tuple[float, float], sigma: float = 0.12,
                 peak: float = 0.8) -> torch.Tensor:
    """A hand-made attention map ``(height, width)``: a Gaussian bump of height ``peak`` at the normalised
    ``center = (x, y)`` (top-left origin, like :class:`~lmd_utils.layout.Box`), ``sigma`` in image widths.

    Values lie in ``[0, peak]`` like one token's softmax probabilities; for experiments with the energy
    without running a model.
    """
    if not 0 < peak <= 1 or sigma <= 0:
        raise ValueError(f"need 0 < peak <= 1 and sigma > 0, got peak={peak}, sigma={sigma}")
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    d2 = (xs[None, :] - center[0]) ** 2 + (ys[:, None] - center[1]) ** 2
    return peak * torch.exp(-d2 / (2 * sigma ** 2))


def energy_and_gradient(maps: torch.Tensor, masks: torch.Tensor, **box_energy_kwargs
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, ∂E/∂A)`` of :func:`box_energy` for maps ``(..., H, W)``: the energies summed over leading dims
    (each map's gradient is its own, as maps do not interact) and the gradient image, same shape as ``maps``.

    The gradient is what guidance pushes back through the UNet (paper §3.2): it is non-zero only on the top-k
    cells inside the box (negative: "more attention here") and the top-k cells outside (positive, ``w`` times
    larger per cell: "less here").
    """
    leaf = maps.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        energy = box_energy(leaf, masks, **box_energy_kwargs).sum()
        (grad,) = torch.autograd.grad(energy, leaf)
    return energy.detach(), grad


def energy_gradient_figure(maps: torch.Tensor, masks: torch.Tensor, titles: Sequence[str] | None = None,
                           size: float = 2.6, **box_energy_kwargs) -> "Figure":
    """For each map of ``maps (n, H, W)``: the map with its box, and the gradient ``∂E/∂A`` (blue: the energy
    falls where attention grows, red: it rises), with the energy and its two top-k terms in the title.

    ``masks`` is ``(n, H, W)`` or one ``(H, W)`` box for all maps.  Returns a figure not registered with pyplot.
    """
    from matplotlib.figure import Figure

    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, H, W), got {tuple(maps.shape)}")
    maps = maps.detach().float().cpu()
    masks = masks.float().cpu().expand_as(maps)
    if titles is not None and len(titles) != len(maps):
        raise ValueError(f"{len(titles)} titles for {len(maps)} maps")
    fig = Figure(figsize=(2 * size * len(maps), size + 0.7), layout="constrained")
    axes = fig.subplots(1, 2 * len(maps), squeeze=False)[0]
    for i in range(len(maps)):
        energy, grad = energy_and_gradient(maps[i], masks[i], **box_energy_kwargs)
        terms = energy_terms(maps[i], masks[i], **{k: v for k, v in box_energy_kwargs.items() if k == "top_fraction"})
        ax_map, ax_grad = axes[2 * i], axes[2 * i + 1]
        im = ax_map.imshow(maps[i].numpy(), cmap="inferno", vmin=0, vmax=max(float(maps[i].max()), 1e-6))
        fig.colorbar(im, ax=ax_map, shrink=0.7)
        g = float(grad.abs().max()) or 1.0
        im = ax_grad.imshow(grad.numpy(), cmap="RdBu_r", vmin=-g, vmax=g)
        fig.colorbar(im, ax=ax_grad, shrink=0.7)
        for ax in (ax_map, ax_grad):
            _outline_mask(ax, masks[i])
            ax.set_xticks([])
            ax.set_yticks([])
        head = f"{titles[i]}: " if titles is not None else ""
        ax_map.set_title(f"{head}A (box in cyan)\nE = {float(energy):.3f}", fontsize=9)
        ax_grad.set_title(f"∂E/∂A\nTopK in {float(terms['inside']):.2f}, out {float(terms['outside']):.2f}", fontsize=9)
    return fig


def _outline_mask(ax, mask: torch.Tensor, colour: str = "cyan") -> None:
    """Outline a binary mask drawn with ``imshow``: its cell edges when it is one rectangle, else a contour."""
    from matplotlib.patches import Rectangle

    rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(rows) == 0:
        return
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    if int((mask > 0.5).sum()) == (r1 - r0) * (c1 - c0):
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor=colour, linewidth=1.5))
    else:
        ax.contour(mask.numpy(), levels=[0.5], colors=colour, linewidths=1.5)


def energy_curve_figure(curves: Mapping[str, Sequence[tuple[int, int, float]]], threshold: float | None = None,
                        title: str = "box energy during guided sampling") -> "Figure":
    """Energy against denoising step for each labelled run.

    ``curves[label]`` is ``[(step, iteration, energy), ...]`` as :meth:`~lmd_utils.sampling.BoxGuidance.
    energies_by_element` returns it; the iterations of one step are spread over that step's unit interval
    (so the saw-tooth shows each gradient step lowering E and the next denoising step raising it again).
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    for label, points in curves.items():
        if not points:
            continue
        per_step: dict[int, int] = {}
        for step, _, _ in points:
            per_step[step] = per_step.get(step, 0) + 1
        xs = [step + it / per_step[step] for step, it, _ in points]
        ax.plot(xs, [e for _, _, e in points], marker=".", ms=4, lw=1.2, label=label)
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="0.4", lw=1)
        ax.text(ax.get_xlim()[0], threshold, " stopping threshold", va="bottom", fontsize=7, color="0.35")
    ax.set_xlabel("denoising step (iterations of a step spread over it)")
    ax.set_ylabel("E")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def image_grid_figure(images: Sequence[Sequence[torch.Tensor]], row_labels: Sequence[str],
                      column_labels: Sequence[str], boxes: Sequence = (),
                      notes: Sequence[Sequence[str]] | None = None, size: float = 1.5,
                      title: str | None = None) -> "Figure":
    """A grid of pictures ``images[row][column]`` (``(3, H, W)`` in [0, 1]) with the target ``boxes``
    (normalised :class:`~lmd_utils.layout.Box` objects) outlined on each, for comparing guidance settings.

    ``notes[row][column]`` (optional) is written under each picture (e.g. the energy it reached).
    """
    from matplotlib.figure import Figure

    from .layout import draw_box

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
            img = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
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
