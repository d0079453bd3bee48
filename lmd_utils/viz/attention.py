"""Pictures of cross-attention maps (notebook 01): one panel per token, a store's step and layer, how well
each layer localises, and one token across layers and steps."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..attention import AttentionStore, short_layer_name
from ..layout import draw_box
from ..sam import as_uint8_image


def with_padding_panel(maps: torch.Tensor, labels: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """``maps (tokens, H, W)`` cut to the prompt's ``labels`` (up to ⟨eot⟩), plus ONE panel: the sum of the maps
    of all the padding tokens after it, labelled ``"⟨pad⟩ ×n (sum)"``.

    The text encoder always sees ``model_max_length`` tokens; in some models the padding takes much of the
    attention (it is the toy model's attention *sink*, where ⟨sot⟩ is Stable Diffusion's), so a grid of the
    prompt's tokens alone would hide where the attention goes.  Without padding, returns the prompt's maps.
    """
    n = len(labels)
    if n > maps.shape[0]:
        raise ValueError(f"{n} labels for {maps.shape[0]} token maps")
    if n == maps.shape[0]:
        return maps, list(labels)
    pad = maps[n:].sum(dim=0, keepdim=True)
    return torch.cat([maps[:n], pad]), list(labels) + [f"⟨pad⟩ ×{maps.shape[0] - n} (sum)"]


def attention_grid_figure(maps: torch.Tensor, labels: Sequence[str], image=None, boxes: Sequence[Any] = (),
                          shared_scale: bool = False, alpha: float = 0.65, ncols: int | None = None,
                          size: float = 1.7, title: str | None = None, cmap: str = "inferno") -> Figure:
    """One panel per token: its attention map ``maps[i]`` (``(T, H, W)``) titled ``labels[i]``.

    With ``image`` (``(3, H, W)`` in [0, 1], any size) each map is upsampled bilinearly to the image and laid
    over it (``alpha``), which shows *where in the picture* a word looks.  ``boxes`` (normalised
    :class:`~lmd_utils.layout.Box` objects) are outlined on every panel.  ``shared_scale`` draws every map on
    one colour scale (so a token that takes most of the attention, like ⟨sot⟩, stands out); otherwise each
    panel is scaled to its own maximum (to see the *shape* of weak maps) and its maximum is printed under it.
    Returns a :class:`matplotlib.figure.Figure` not registered with pyplot.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (tokens, H, W), got {tuple(maps.shape)}")
    if len(labels) != maps.shape[0]:
        raise ValueError(f"{len(labels)} labels for {maps.shape[0]} maps")
    maps = maps.detach().float().cpu()
    shown = maps
    if image is not None:
        img = as_uint8_image(image)
        shown = F.interpolate(maps[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
    h, w = shown.shape[-2:]
    n = maps.shape[0]
    ncols = max(1, min(ncols or 8, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size * ncols, (size + 0.45) * nrows + (0.3 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    vmax_all = float(shown.max()) or 1.0
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_visible(False)
            continue
        vmax = vmax_all if shared_scale else (float(shown[i].max()) or 1.0)
        if image is not None:
            ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
            ax.imshow(shown[i].numpy(), extent=(0, w, h, 0), cmap=cmap, vmin=0, vmax=vmax, alpha=alpha)
        else:
            ax.imshow(shown[i].numpy(), extent=(0, w, h, 0), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        for b in boxes:
            draw_box(ax, b, h, w, "cyan")
        ax.set_title(labels[i], fontsize=9)
        if not shared_scale:
            ax.set_xlabel(f"max {float(maps[i].max()):.2f}", fontsize=7, color="0.35", labelpad=1)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attention_at_figure(store: AttentionStore, step: int, layer: str, labels: Sequence[str],
                        token_indices: Sequence[int] | None = None, element: int = 0, image=None,
                        boxes: Sequence[Any] = (), **grid_kwargs) -> Figure:
    """The maps of one denoising ``step`` and one ``layer`` (head mean), one panel per token of ``labels``.

    ``token_indices`` picks positions (default: ``0 .. len(labels)-1``: the prompt up to ⟨eot⟩).  A pure
    function of its arguments, for a slider over steps and layers (notebook 01): nothing is recomputed, the
    maps are read from ``store``.
    """
    probs = store.get(layer, step)[element]  # (heads, H, W, tokens)
    idx = list(range(len(labels))) if token_indices is None else list(token_indices)
    if len(idx) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(idx)} token positions")
    maps = probs.float().mean(dim=0).permute(2, 0, 1)[idx]
    h, w = maps.shape[-2:]
    title = f"step {step} · {short_layer_name(next(r.layer for r in store.select(layer, (step,))))} ({h}×{w})"
    return attention_grid_figure(maps, labels, image=image, boxes=boxes, title=grid_kwargs.pop("title", title),
                                 **grid_kwargs)


def localisation_figure(scores: Mapping[str, torch.Tensor], baseline: float | None = None,
                        steps: Sequence[int] | None = None, title: str = "attention mass inside the object's box"
                        ) -> Figure:
    """Left: mean of :func:`~lmd_utils.attention.localisation_by_layer`'s scores per layer (bars); right: each
    layer over the steps.

    ``baseline`` (e.g. the mean box area: a uniform map's score) is drawn as a dashed line.
    """
    if not scores:
        raise ValueError("no scores to plot")
    names = [short_layer_name(k) for k in scores]
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax_bar, ax_line = fig.subplots(1, 2, width_ratios=(1, 1.2))
    means = [float(v.float().mean()) for v in scores.values()]
    bars = ax_bar.barh(range(len(names)), means, color="tab:blue")
    ax_bar.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_bar.set_yticks(range(len(names)), names, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 1.08)
    ax_bar.set_xlabel("mean over steps")
    for name, v in zip(names, scores.values()):
        xs = list(steps) if steps is not None and len(steps) == len(v) else list(range(len(v)))
        ax_line.plot(xs, v.float().numpy(), label=name, lw=1.4)
    ax_line.set_xlabel("denoising step (0 = pure noise)")
    ax_line.set_ylim(0, 1.02)
    ax_line.legend(fontsize=7, loc="lower right")
    for ax in (ax_bar, ax_line):
        if baseline is not None:
            ax.axvline(baseline, ls="--", color="0.4") if ax is ax_bar else ax.axhline(baseline, ls="--", color="0.4")
    if baseline is not None:
        ax_line.text(0, baseline + 0.02, "uniform map (box area)", fontsize=7, color="0.35")
    fig.suptitle(title, fontsize=10)
    return fig


def token_over_steps_and_layers_figure(store: AttentionStore, token_index: int, label: str, element: int = 0,
                                       steps: Sequence[int] | None = None, layers: Sequence[str] | None = None,
                                       image=None, size: float = 1.35, cmap: str = "inferno") -> Figure:
    """One token's map (head mean) for each recorded layer (columns) at a few ``steps`` (rows).

    The static companion of the step/layer slider (:func:`attention_at_figure`): the whole store at a glance.
    ``steps`` defaults to five steps spread over the run; each panel has its own colour scale.
    """
    layers = list(layers) if layers is not None else store.recorded_layers
    recorded = store.recorded_steps
    if not layers or not recorded:
        raise ValueError("the store holds no records")
    if steps is None:
        picks = torch.linspace(0, len(recorded) - 1, min(5, len(recorded))).round().long().tolist()
        steps = [recorded[i] for i in picks]
    fig = Figure(figsize=(size * len(layers) + 0.6, size * len(steps) + 0.9), layout="constrained")
    axes = fig.subplots(len(steps), len(layers), squeeze=False)
    img = as_uint8_image(image) if image is not None else None
    for r, step in enumerate(steps):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            m = store.get(layer, step)[element].float().mean(dim=0)[..., token_index]
            if img is not None:
                up = F.interpolate(m[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
                h, w = img.shape[:2]
                ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
                ax.imshow(up.numpy(), extent=(0, w, h, 0), cmap=cmap, alpha=0.65, vmin=0)
            else:
                ax.imshow(m.numpy(), cmap=cmap, vmin=0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                name = short_layer_name(layer).replace("attentions.", "attn.").replace("_blocks", "")
                ax.set_title(f"{name}\n{m.shape[0]}×{m.shape[1]}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=8)
    fig.suptitle(f"the map of {label!r} across layers (columns) and denoising steps (rows)", fontsize=10)
    return fig
