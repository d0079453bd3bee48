"""Pictures of the box energy (notebook 02): a map with its box next to the gradient guidance follows, and
the energy over the guided denoising steps."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from ..energy import energy_and_gradient, energy_terms
from .common import outline_mask


def energy_gradient_figure(maps: torch.Tensor, masks: torch.Tensor, titles: Sequence[str] | None = None,
                           size: float = 2.6, **box_energy_kwargs) -> Figure:
    """For each map of ``maps (n, H, W)``: the map with its box, and the gradient ``∂E/∂A`` (blue: the energy
    falls where attention grows, red: it rises), with the energy and its two top-k terms in the title.

    ``masks`` is ``(n, H, W)`` or one ``(H, W)`` box for all maps.  Returns a figure not registered with pyplot.
    """
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
            outline_mask(ax, masks[i], *masks[i].shape, "cyan", offset=-0.5)  # plain imshow: centres on integers
            ax.set_xticks([])
            ax.set_yticks([])
        head = f"{titles[i]}: " if titles is not None else ""
        ax_map.set_title(f"{head}A (box in cyan)\nE = {float(energy):.3f}", fontsize=9)
        ax_grad.set_title(f"∂E/∂A\nTopK in {float(terms['inside']):.2f}, out {float(terms['outside']):.2f}", fontsize=9)
    return fig


def energy_curve_figure(curves: Mapping[str, Sequence[tuple[int, int, float]]], threshold: float | None = None,
                        title: str = "box energy during guided sampling") -> Figure:
    """Energy against denoising step for each labelled run.

    ``curves[label]`` is ``[(step, iteration, energy), ...]`` as :meth:`~lmd_utils.sampling.BoxGuidance.
    energies_by_element` returns it; the iterations of one step are spread over that step's unit interval
    (so the saw-tooth shows each gradient step lowering E and the next denoising step raising it again).
    """
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
