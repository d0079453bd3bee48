"""Pictures of cross-attention maps (notebook 01): one panel per token, a store's step and layer, how well
each layer localises, and one token across layers and steps."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..attention import AttentionStore, short_layer_name
from ..sam import as_uint8_image
from .common import halo_box

#: How :func:`with_padding_panel` labels its panel (the sum over the padding tokens).
PADDING_LABEL = "⟨pad⟩"
#: The overlays' contour levels, as fractions of the colour scale's top.
OVERLAY_LEVELS = (0.25, 0.5, 0.75)


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
    return torch.cat([maps[:n], pad]), list(labels) + [f"{PADDING_LABEL} ×{maps.shape[0] - n} (sum)"]


def _overlay(ax, image, attention: torch.Tensor, norm, cmap: str, levels: Sequence[float] | None = None) -> None:
    """``image`` at full brightness, ``attention`` (upsampled to it) as contour lines at ``levels`` (default:
    :data:`OVERLAY_LEVELS` of the scale's top), coloured by ``cmap`` on a white halo (visible on pale and dark
    pictures alike), thicker for higher levels, over a light tint of the same colours above the lowest level."""
    from matplotlib import patheffects

    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
    values = attention.numpy()
    levels = sorted(levels) if levels is not None else [f * norm.vmax for f in OVERLAY_LEVELS]
    if values.max() > levels[0]:
        xs, ys = torch.arange(w) + 0.5, torch.arange(h) + 0.5
        ax.contourf(xs.numpy(), ys.numpy(), values, levels=[*levels, max(float(values.max()), levels[-1]) * 1.01],
                    cmap=cmap, norm=norm, alpha=0.3)  # a light tint where it is above the lowest level
        rings = ax.contour(xs.numpy(), ys.numpy(), values, levels=levels, cmap=cmap, norm=norm,
                           linewidths=[1.1 + 0.5 * i for i in range(len(levels))])
        rings.set_path_effects([patheffects.Stroke(linewidth=3.4, foreground="white"), patheffects.Normal()])
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)


def attention_grid_figure(maps: torch.Tensor, labels: Sequence[str], image=None, boxes: Sequence[Any] = (),
                          shared_scale: bool = True, vmax: float | None = None, ncols: int | None = None,
                          size: float = 1.7, title: str | None = None, cmap: str = "inferno") -> Figure:
    """One panel per token: its attention map ``maps[i]`` (``(T, H, W)``) titled ``labels[i]``, with a colour bar.

    **Scale.**  ``shared_scale=True`` (default): every panel on ONE colour scale, from 0 to ``vmax`` (default: the
    largest value of the maps, leaving out :func:`with_padding_panel`'s panel, a sum over many tokens).  Panels
    can be compared: a token that takes little attention looks faint.  The padding panel, when it goes past the
    scale, is drawn on its own scale, said under it ("own scale, max ..."); any other panel past ``vmax``
    saturates (the colour bar's arrow).  ``shared_scale=False``: each panel scaled to its own maximum, printed
    under it (the *shape* of faint maps); the colour bar then reads as a fraction of each panel's maximum.

    **Over a picture.**  With ``image`` (``(3, H, W)`` in [0, 1], any size) the picture is shown at full
    brightness and each map, upsampled bilinearly to it, is drawn over it as contour lines at 25, 50 and 75 % of
    the scale's top (thicker: higher), which shows *where in the picture* a word looks without hiding its colours.

    ``boxes`` (normalised :class:`~lmd_utils.layout.Box` objects) are outlined on every panel and labelled with
    their phrase inside the canvas.  Returns a :class:`matplotlib.figure.Figure` not registered with pyplot.
    """
    from matplotlib.colors import Normalize

    if maps.ndim != 3:
        raise ValueError(f"maps must be (tokens, H, W), got {tuple(maps.shape)}")
    if len(labels) != maps.shape[0]:
        raise ValueError(f"{len(labels)} labels for {maps.shape[0]} maps")
    maps = maps.detach().float().cpu()
    shown = maps
    img = None
    if image is not None:
        img = as_uint8_image(image)
        shown = F.interpolate(maps[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
    h, w = shown.shape[-2:]
    n = maps.shape[0]
    ncols = max(1, min(ncols or 8, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size * ncols + 0.9, (size + 0.45) * nrows + (0.3 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    padding = [i for i, label in enumerate(labels) if str(label).startswith(PADDING_LABEL)]
    scaled = [i for i in range(n) if i not in padding] or list(range(n))
    top = float(vmax) if vmax is not None else (float(maps[scaled].max()) or 1.0)
    saturated = False
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_visible(False)
            continue
        own = float(maps[i].max()) or 1.0
        alone = not shared_scale or (i in padding and own > top)  # its own scale (said under the panel)
        norm = Normalize(0.0, own if alone else top)
        saturated |= not alone and own > top * 1.001
        if img is not None:
            _overlay(ax, img, shown[i], norm, cmap)
        else:
            ax.imshow(shown[i].numpy(), extent=(0, w, h, 0), cmap=cmap, norm=norm, interpolation="nearest")
        for b in boxes:
            halo_box(ax, b, h, w, colour="cyan", halo="black", style="-", linewidth=1.2,
                     label=getattr(b, "phrase", None), fontsize=6, outside=True)
        ax.set_title(labels[i], fontsize=9)
        if alone:
            ax.set_xlabel(f"{'' if not shared_scale else 'own scale, '}max {own:.2f}", fontsize=7,
                          color="0.35" if not shared_scale else "firebrick", labelpad=1)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, top if shared_scale else 1.0), cmap),
                       ax=[ax for ax in axes[:n]], shrink=0.9 if nrows > 1 else 0.8, aspect=25 * max(nrows, 1),
                       extend="max" if saturated else "neither", pad=0.01)
    bar.set_label("attention (one scale for all panels)" if shared_scale else "fraction of the panel's maximum",
                  fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if img is not None:
        for f in OVERLAY_LEVELS:
            bar.ax.axhline(f * (top if shared_scale else 1.0), color="white", linewidth=1.0)
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
    ``steps`` defaults to five steps spread over the run.  The question here is *where* the word looks, not how
    much attention it gets (which grows over the run), and a cell of a 16×16 map holds a quarter of what a cell of
    an 8×8 map holds for the same spread; so each map is shown as a **density**, divided by its mean (1: spread
    evenly; 8: eight times denser than that), on ONE logarithmic colour scale for all panels, with one colour bar.
    With ``image`` the maps are contour lines over the picture at full brightness, at 4, 8, 16, ... times the even
    density (thicker: denser).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    layers = list(layers) if layers is not None else store.recorded_layers
    recorded = store.recorded_steps
    if not layers or not recorded:
        raise ValueError("the store holds no records")
    if steps is None:
        picks = torch.linspace(0, len(recorded) - 1, min(5, len(recorded))).round().long().tolist()
        steps = [recorded[i] for i in picks]
    maps = {}
    for step in steps:
        for layer in layers:
            m = store.get(layer, step)[element].float().mean(dim=0)[..., token_index].cpu()
            maps[step, layer] = m / m.mean().clamp(min=1e-12)  # density: 1 = spread evenly
    norm = LogNorm(1.0, max(max(float(m.max()) for m in maps.values()), 2.0))
    levels = [2.0 ** k for k in range(2, 12) if 2.0 ** k < norm.vmax]  # 4, 8, 16, ... times the even density
    fig = Figure(figsize=(size * len(layers) + 1.2, size * len(steps) + 0.9), layout="constrained")
    axes = fig.subplots(len(steps), len(layers), squeeze=False)
    img = as_uint8_image(image) if image is not None else None
    for r, step in enumerate(steps):
        for c, layer in enumerate(layers):
            ax, m = axes[r, c], maps[step, layer]
            if img is not None:
                up = F.interpolate(m[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
                _overlay(ax, img, up.clamp(min=1e-3), norm, cmap, levels or [norm.vmax / 2])  # > 0: a log scale
            else:
                ax.imshow(m.clamp(min=1.0).numpy(), cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                name = short_layer_name(layer).replace("attentions.", "attn.").replace("_blocks", "")
                ax.set_title(f"{name}\n{m.shape[0]}×{m.shape[1]}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=8)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes.ravel().tolist(), shrink=0.6, pad=0.01)
    bar.set_label("density: × an evenly spread map (one scale)", fontsize=8)
    bar.set_ticks([2.0 ** k for k in range(12) if 2.0 ** k <= norm.vmax], labels=None)
    bar.ax.set_yticklabels([f"{2 ** k:g}" for k in range(12) if 2.0 ** k <= norm.vmax])
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=7)
    if img is not None:
        for level in levels:
            bar.ax.axhline(level, color="white", linewidth=1.0)
    fig.suptitle(f"the map of {label!r} across layers (columns) and denoising steps (rows)", fontsize=10)
    return fig
