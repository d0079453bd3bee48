"""Pictures of the whole stage 2 (notebook 07 and the CLI): the layout next to the images it gave, one view of
an :class:`~lmd_utils.pipeline.LMDResult` drawn by the step's own picture function (and a widget to choose it),
and several prompts by several methods in one grid."""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from ..composition import ddim_alphas, overall_prompt
from ..layout import Box, Layout, draw_box
from ..sam import as_uint8_image
from ..pipeline import LMDResult
from .common import figure_to_png, frame_axes
from .composition import alignment_figure, frozen_steps_figure
from .energy import energy_curve_figure
from .per_box import placement_figure, trajectory_figure


def comparison_figure(layout: Layout, images: dict[str, torch.Tensor], seed: int | None = None,
                      model: str | None = None, verdicts: dict[str, tuple[bool, str]] | None = None) -> Figure:
    """One matplotlib figure: the layout, then each image (e.g. plain sampling and LMD from the same seed) with the
    layout's boxes drawn over it; returns the :class:`~matplotlib.figure.Figure` (no pyplot state touched).

    ``verdicts``: per image name, ``(ok, text)`` from a detector (e.g. :func:`~lmd_utils.benchmark.layout_verdict`),
    written under the image in green or red, so the picture says on its own what went right or wrong."""
    verdicts = verdicts or {}
    fig = Figure(figsize=(3.2 * (1 + len(images)), 3.6 + 0.3 * bool(verdicts)))
    axes = fig.subplots(1, 1 + len(images))
    layout.draw(ax=axes[0], title="layout" + (f" ({layout.meta['source']})" if layout.meta.get("source") else ""))
    for ax, (name, image) in zip(axes[1:], images.items()):
        Layout(layout.boxes).draw(ax=ax, image=image, title=name)
        if name in verdicts:
            ok, text = verdicts[name]
            ax.set_xlabel(text, fontsize=9, color="darkgreen" if ok else "firebrick", wrap=True)
    suffix = ", ".join(x for x in (f"model: {model}" if model else "", f"seed {seed}" if seed is not None else "") if x)
    title = layout.prompt or overall_prompt(layout)
    fig.suptitle((title[:100] + "…" if len(title) > 100 else title) + (f"\n{suffix}" if suffix else ""), fontsize=9)
    fig.tight_layout()
    return fig


#: What :func:`result_figure` can draw from an :class:`~lmd_utils.pipeline.LMDResult`, with a line each saying what
#: it shows.
RESULT_VIEWS: dict[str, str] = {
    "per-box images": "each object generated alone, in its generation box, and the box it goes to (step 1)",
    "per-box trajectories": "x_t of each object's own generation over the steps (step 1)",
    "masks and alignment": "each object's mask, its shift onto the target box, the paste order (steps 2-3)",
    "composed vs overall": "the composed latents and the composed generation (with a scheduler: each step's "
                           "denoised estimate x̂₀), where they differ, frozen steps marked (steps 3-4)",
    "energy": "the box energy during the guided steps: each per-box generation and the composed one",
}


def result_is_pixel_space(result: LMDResult) -> bool:
    """Whether ``result`` came from a pixel-space model (the toy world: its latents are the images), seen from
    the tensors alone: pixel-space latents have the images' size."""
    if result.per_box is None:
        raise ValueError("this result has no per-box pass (a layout without boxes is plain sampling)")
    return tuple(result.per_box.latents.shape[-2:]) == tuple(result.per_box.images.shape[-2:])


def result_figure(result: LMDResult, view: str = "per-box images", steps: int = 6, scheduler=None) -> Figure:
    """One view of an :class:`~lmd_utils.pipeline.LMDResult` (a key of :data:`RESULT_VIEWS`) as a matplotlib Figure,
    drawn by the steps' own picture functions; ``steps``: how many denoising steps the strips show.

    ``scheduler`` (e.g. ``pipe.scheduler``; the result keeps none): with it, "composed vs overall" shows each
    step's denoised estimate x̂₀ (:func:`~lmd_utils.composition.ddim_alphas`), without it the raw ``x_t``, which
    is mostly noise during the frozen steps.  This is the pure function the result explorer widget of notebook 07
    (:func:`result_explorer`) wraps.
    """
    if view not in RESULT_VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(RESULT_VIEWS)}")
    pixel_space = result_is_pixel_space(result)
    per_box, layout = result.per_box, result.layout
    if view == "per-box images":
        return placement_figure(per_box.plan, per_box.images)
    if view == "per-box trajectories":
        return trajectory_figure(per_box.latents, steps, titles=layout.phrases,
                                 boxes=per_box.plan.generation_boxes, pixel_space=pixel_space)
    if view == "masks and alignment":
        masks = torch.stack([m.latent_mask for m in result.masks])
        return alignment_figure(per_box.final_latents, masks, result.aligned, layout.boxes,
                                per_box.plan.generation_boxes, pixel_space=pixel_space)
    if view == "composed vs overall":
        frozen, T = result.frozen_steps, result.config.num_inference_steps
        alphas = ddim_alphas(scheduler, T) if scheduler is not None else None
        shown = ({0, frozen // 2, max(frozen - 1, 0), frozen, min(frozen + 2, T), T} if alphas is not None
                 else {0, 1, max(frozen // 2, 1), frozen, min(frozen + 2, T), T})
        return frozen_steps_figure(result.composed_latents, result.overall_latents, result.union_mask,
                                   frozen, steps=sorted(shown), pixel_space=pixel_space, alphas=alphas)
    curves = {f"alone: {phrase}": per_box.energy_log(i) for i, phrase in enumerate(layout.phrases)}
    if result.overall_guidance is not None:
        curves["composed pass"] = result.overall_guidance.energies_by_element(0)
    return energy_curve_figure(curves, threshold=result.config.per_box_guidance.loss_threshold,
                               title="box energy during the guided steps (each object alone, then composed)")


def result_explorer(result: LMDResult, view: str = "per-box images", scheduler=None):
    """A widget: a drop-down of :data:`RESULT_VIEWS` and the chosen :func:`result_figure` (``scheduler`` as there)
    as a picture (needs ``ipywidgets``).  Building it draws the first view once and never blocks (notebooks also
    run headless)."""
    import ipywidgets as widgets  # an optional extra (``lmd_utils[notebooks]``): imported only when a widget is built

    chooser = widgets.Dropdown(options=list(RESULT_VIEWS), value=view, description="show")
    note = widgets.HTML()
    picture = widgets.Image(format="png")

    def redraw(_=None) -> None:
        note.value = f"<i>{RESULT_VIEWS[chooser.value]}</i>"
        picture.value = figure_to_png(result_figure(result, chooser.value, scheduler=scheduler), dpi=90)

    chooser.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([chooser, note]), picture])


def prompt_grid_figure(
    prompts: Sequence[str],
    layouts: Sequence[Layout],
    images: Mapping[str, Sequence[torch.Tensor]],
    found: Mapping[str, Sequence[Sequence[tuple[str, Box]]]] | None = None,
    verdicts: Mapping[str, Sequence[bool]] | None = None,
    size: float = 2.1,
    title_width: int = 30,
) -> Figure:
    """Several prompts side by side (columns), one row per method (``images[method][i]``: ``(3, H, W)`` in
    [0, 1]) with prompt ``i``'s layout boxes dashed on each picture.

    ``found[method][i]`` (optional): a detector's ``[(caption, Box), ...]`` on that picture, drawn solid: green
    when the layout asks for that caption, magenta otherwise (a wrong colour or shape, an excluded object).
    ``verdicts[method][i]`` (optional): the benchmark's verdict, written under the picture (✓ / ✗).
    """
    n = len(prompts)
    if n == 0 or len(layouts) != n:
        raise ValueError(f"{len(layouts)} layouts for {n} prompts")
    if not images:
        raise ValueError("no images to draw")
    for name, per_method in (("images", images), ("found", found or {}), ("verdicts", verdicts or {})):
        for method, seq in per_method.items():
            if len(seq) != n:
                raise ValueError(f"{len(seq)} {name} for method {method!r}, {n} prompts")
    fig = Figure(figsize=(size * n + 0.6, (size + 0.35) * len(images) + 0.55), layout="constrained")
    axes = fig.subplots(len(images), n, squeeze=False)
    for r, (method, imgs) in enumerate(images.items()):
        for c in range(n):
            ax = axes[r, c]
            image = as_uint8_image(imgs[c])
            H, W = image.shape[:2]
            ax.imshow(image, extent=(0, W, H, 0), interpolation="nearest")
            wanted = set(layouts[c].phrases)
            for b in layouts[c].boxes:
                draw_box(ax, b, H, W, "white", "--")
            for phrase, b in (found or {}).get(method, [[]] * n)[c]:
                draw_box(ax, b, H, W, "lime" if phrase in wanted else "magenta")
            frame_axes(ax, H, W, "\n".join(textwrap.wrap(prompts[c], title_width)) if r == 0 else "")
            if c == 0:
                ax.set_ylabel(method, fontsize=9)
            if verdicts is not None and method in verdicts:
                ok = bool(verdicts[method][c])
                ax.set_xlabel("✓ correct" if ok else "✗ wrong", fontsize=8, color="green" if ok else "crimson")
    return fig
