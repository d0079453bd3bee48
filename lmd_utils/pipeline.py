"""The complete LMD stage 2: layout → image (paper §3.2), one call into a step module per step.

:func:`generate` runs, in order:

0. the shared initial noise ``z_T`` (:mod:`~lmd_utils.models`);
1. **per-box generation** (:func:`~lmd_utils.per_box.run_per_box`): every box alone from ``z_T`` with a little
   own noise inside its box, guided into its generation box by the box energy, keeping each step's latents and
   the object word's attention;
2. **masks** (:func:`~lmd_utils.masks.extract_object_masks`): the object word's attention thresholded, or refined
   with SAM when a backend is given;
3. **composition** (:func:`~lmd_utils.composition.align_objects`, :func:`~lmd_utils.composition.compose_trajectory`):
   each trajectory, mask and attention moved onto its target box, pasted largest first;
4. **composed generation** (:func:`~lmd_utils.sampling.denoise` with two hooks): the overall prompt from ``z_T``,
   the foreground copied from the composed latents for the first ``frozen_ratio·T`` steps
   (:class:`~lmd_utils.composition.FrozenForeground`), box guidance plus attention transfer
   (:func:`~lmd_utils.composition.composed_pass_guidance`);
5. decoding.

:func:`generate_sd` is plain sampling with the same seed, scheduler and loop.  Every intermediate a notebook may
show is kept in :class:`LMDResult`.  Settings: :class:`~lmd_utils.config.LMDConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch

from .composition import (AlignedObject, FrozenForeground, align_objects, compose_trajectory, composed_pass_guidance,
                          frozen_step_count, overall_prompt, overall_prompt_for)
from .config import LMDConfig
from .grammar import join_phrases
from .layout import Box, Layout
from .masks import ObjectMask, SamBackend, extract_object_masks
from .models import decode_latents, encode_prompts, initial_noise, to_pil
from .per_box import PerBoxResult, run_per_box
from .sampling import BoxGuidance, denoise


@dataclass
class LMDResult:
    """Everything :func:`generate` computed (``image`` is the answer; the rest is for looking inside)."""

    image: torch.Tensor  # (3, H, W) in [0, 1]
    layout: Layout
    seed: int
    config: LMDConfig
    prompt: str  # the prompt of the final pass (the overall prompt)
    negative_prompt: str
    method: str  # "lmd", or "sd" for a layout without boxes
    per_box: PerBoxResult | None = None  # step 1 (its plan holds the object words, word_tokens their tokens)
    masks: list[ObjectMask] = field(default_factory=list)  # step 2, on the generation boxes
    aligned: list[AlignedObject] = field(default_factory=list)  # step 3, each object on its target box
    union_mask: torch.Tensor | None = None  # (h, w) bool: where the composed pass's foreground is frozen
    composed_latents: torch.Tensor | None = None  # (T+1, C, h, w)
    overall_latents: torch.Tensor | None = None  # (T+1, 1, C, h, w)
    overall_guidance: BoxGuidance | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def aligned_masks(self) -> torch.Tensor | None:
        """``(n, h, w)`` bool: each object's mask on its target box."""
        return torch.stack([a.mask for a in self.aligned]) if self.aligned else None

    @property
    def frozen_steps(self) -> int:
        return frozen_step_count(self.config.num_inference_steps, self.config.frozen_ratio)

    @property
    def pil(self):
        return to_pil(self.image[None])[0]


@torch.no_grad()
def generate(pipe, layout: Layout, seed: int = 0, config: LMDConfig | None = None,
             sam: SamBackend | None = None, progress: bool = True) -> LMDResult:
    """LMD stage 2: the image of ``layout`` (see the module docstring for the steps).

    ``sam``: a :mod:`~lmd_utils.masks` SAM backend to refine the object masks (paper default); without one the
    attention is thresholded (the paper's no-SAM ablation, and what runs offline).  A layout without boxes
    (e.g. "a scene without cats") is plain sampling of its background prompt with its negative prompt.
    """
    config = config or LMDConfig.for_pipe(pipe)
    if config.background is not None:
        layout = replace(layout, background=config.background)
    negative = join_phrases(layout.negative, config.overall_negative_prompt)
    clock = _Clock()

    # 0. the shared initial noise z_T
    height, width = config.resolution(pipe)
    shared = initial_noise(pipe, 1, height, width, seed)
    if not layout.boxes:
        prompt = layout.background or layout.prompt
        image = _plain(pipe, prompt, negative, shared, config, progress)[0]
        return LMDResult(image, layout, seed, config, prompt, negative, "sd", timings=clock.done())

    # 1. per-box generation
    per_box = run_per_box(pipe, layout, seed, config, shared, progress)
    clock.lap("per_box")

    # 2. masks, on the generation boxes where the objects were drawn
    masks = extract_object_masks(per_box.mask_maps, per_box.plan.generation_boxes, tuple(shared.shape[-2:]),
                                 images=list(per_box.images) if sam is not None else None, backend=sam,
                                 progress=progress, **({} if sam is not None else {"method": config.mask_method}))
    clock.lap("masks")

    # 3. each trajectory, mask and attention moved onto its target box, then composed (largest first)
    aligned = align_objects(per_box.latents, [m.latent_mask for m in masks], layout.boxes,
                            per_box.references if config.attention_transfer else None)
    composed, union = compose_trajectory(aligned, shared)

    # 4. the composed generation: frozen foreground + box guidance + attention transfer
    prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
    guidance = composed_pass_guidance(pipe.tokenizer, layout, prompt, background_end, aligned,
                                      config.overall_guidance.on_layers(per_box.guidance_layers),
                                      config.attention_transfer)
    frozen = FrozenForeground(composed.to(shared.device), union,
                              frozen_step_count(config.num_inference_steps, config.frozen_ratio))
    overall = denoise(pipe, composed[0:1].to(shared.device, shared.dtype), encode_prompts(pipe, [prompt]),
                      encode_prompts(pipe, [negative]), config.num_inference_steps, config.guidance_scale,
                      hooks=[guidance, frozen], keep_latents=True, progress=progress)

    # 5. decode
    image = decode_latents(pipe, overall.latents)[0]
    clock.lap("overall")
    return LMDResult(image, layout, seed, config, prompt, negative, "lmd", per_box=per_box, masks=masks,
                     aligned=aligned, union_mask=union, composed_latents=composed,
                     overall_latents=overall.latents_history, overall_guidance=guidance, timings=clock.done())


class _Clock:
    """Wall-clock seconds of each stage (``lap``) and of the whole run (``done``)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name], self.last = now - self.last, now

    def done(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self.start}


def _plain(pipe, prompt: str, negative: str, noise: torch.Tensor, config: LMDConfig, progress: bool) -> torch.Tensor:
    cond, uncond = encode_prompts(pipe, [prompt]), encode_prompts(pipe, [negative])
    result = denoise(pipe, noise, cond, uncond, config.num_inference_steps, config.guidance_scale, progress=progress)
    return decode_latents(pipe, result.latents)


@torch.no_grad()
def generate_sd(pipe, prompt: str, seed: int = 0, config: LMDConfig | None = None, negative_prompt: str = "",
                progress: bool = True) -> torch.Tensor:
    """Plain sampling: ``prompt`` from the same initial noise ``z_T`` (same seed), scheduler and loop as
    :func:`generate`; returns the image ``(3, H, W)`` in [0, 1]."""
    config = config or LMDConfig.for_pipe(pipe)
    height, width = config.resolution(pipe)
    noise = initial_noise(pipe, 1, height, width, seed)
    return _plain(pipe, prompt, negative_prompt, noise, config, progress)[0]


def comparison_figure(layout: Layout, images: dict[str, torch.Tensor], seed: int | None = None,
                      model: str | None = None):
    """One matplotlib figure: the layout, then each image (e.g. plain SD and LMD from the same seed) with the
    layout's boxes drawn over it; returns the :class:`~matplotlib.figure.Figure` (no pyplot state touched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * (1 + len(images)), 3.6))
    axes = fig.subplots(1, 1 + len(images))
    layout.draw(ax=axes[0], title="layout" + (f" ({layout.meta['source']})" if layout.meta.get("source") else ""))
    for ax, (name, image) in zip(axes[1:], images.items()):
        Layout(layout.boxes).draw(ax=ax, image=image, title=name)
    suffix = ", ".join(x for x in (f"model: {model}" if model else "", f"seed {seed}" if seed is not None else "") if x)
    fig.suptitle(f"{layout.prompt or overall_prompt(layout)}" + (f"\n{suffix}" if suffix else ""), fontsize=9)
    fig.tight_layout()
    return fig


# =============================================================================================================
# Looking inside a result and comparing methods (notebook 07; pure: results and tensors in, a Figure out)
# =============================================================================================================
#: What :func:`result_figure` can draw from an :class:`LMDResult`, with a line each saying what it shows.
RESULT_VIEWS: dict[str, str] = {
    "per-box images": "each object generated alone, in its generation box, and the box it goes to (step 1)",
    "per-box trajectories": "x_t of each object's own generation over the steps (step 1)",
    "masks and alignment": "each object's mask, its shift onto the target box, the paste order (steps 2-3)",
    "composed vs overall": "the composed latents and the composed generation, frozen steps marked (steps 3-4)",
    "energy": "the box energy during the guided steps: each per-box generation and the composed one",
}


def result_is_pixel_space(result: LMDResult) -> bool:
    """Whether ``result`` came from a pixel-space model (the toy world: its latents are the images), seen from
    the tensors alone: pixel-space latents have the images' size."""
    if result.per_box is None:
        raise ValueError("this result has no per-box pass (a layout without boxes is plain SD)")
    return tuple(result.per_box.latents.shape[-2:]) == tuple(result.per_box.images.shape[-2:])


def result_figure(result: LMDResult, view: str = "per-box images", steps: int = 6):
    """One view of an :class:`LMDResult` (a key of :data:`RESULT_VIEWS`) as a matplotlib Figure, drawn by the
    step modules' own picture functions; ``steps``: how many denoising steps the strips show.

    This is the pure function the result explorer widget of notebook 07 (:func:`result_explorer`) wraps.
    """
    from .composition import alignment_figure, frozen_steps_figure
    from .energy import energy_curve_figure
    from .per_box import placement_figure, trajectory_figure

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
        return alignment_figure(per_box.latents[-1], masks, result.aligned, layout.boxes,
                                per_box.plan.generation_boxes, pixel_space=pixel_space)
    if view == "composed vs overall":
        T, frozen = result.config.num_inference_steps, result.frozen_steps
        return frozen_steps_figure(result.composed_latents, result.overall_latents, result.union_mask,
                                   frozen, steps=sorted({0, 1, max(frozen // 2, 1), frozen, min(frozen + 2, T), T}),
                                   pixel_space=pixel_space)
    curves = {f"alone: {phrase}": per_box.energy_log(i) for i, phrase in enumerate(layout.phrases)}
    if result.overall_guidance is not None:
        curves["composed pass"] = result.overall_guidance.energies_by_element(0)
    return energy_curve_figure(curves, threshold=result.config.per_box_guidance.loss_threshold,
                               title="box energy during the guided steps (each object alone, then composed)")


def result_explorer(result: LMDResult, view: str = "per-box images"):
    """A widget: a drop-down of :data:`RESULT_VIEWS` and the chosen :func:`result_figure` as a picture (needs
    ``ipywidgets``).  Building it draws the first view once and never blocks (notebooks also run headless)."""
    import ipywidgets as widgets

    from .notebook import figure_to_png

    chooser = widgets.Dropdown(options=list(RESULT_VIEWS), value=view, description="show")
    note = widgets.HTML()
    picture = widgets.Image(format="png")

    def redraw(_=None) -> None:
        note.value = f"<i>{RESULT_VIEWS[chooser.value]}</i>"
        picture.value = figure_to_png(result_figure(result, chooser.value), dpi=90)

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
):
    """Several prompts side by side (columns), one row per method (``images[method][i]``: ``(3, H, W)`` in
    [0, 1]) with prompt ``i``'s layout boxes dashed on each picture.

    ``found[method][i]`` (optional): a detector's ``[(caption, Box), ...]`` on that picture, drawn solid: green
    when the layout asks for that caption, magenta otherwise (a wrong colour or shape, an excluded object).
    ``verdicts[method][i]`` (optional): the benchmark's verdict, written under the picture (✓ / ✗).
    """
    import textwrap

    from matplotlib.figure import Figure

    from .layout import draw_box

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
            image = imgs[c].detach().float().cpu().clamp(0, 1)
            H, W = image.shape[-2:]
            ax.imshow(image.permute(1, 2, 0).numpy(), extent=(0, W, H, 0), interpolation="nearest")
            wanted = set(layouts[c].phrases)
            for b in layouts[c].boxes:
                draw_box(ax, b, H, W, "white", "--")
            for phrase, b in (found or {}).get(method, [[]] * n)[c]:
                draw_box(ax, b, H, W, "lime" if phrase in wanted else "magenta")
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(prompts[c], title_width)), fontsize=8)
            if c == 0:
                ax.set_ylabel(method, fontsize=9)
            if verdicts is not None and method in verdicts:
                ok = bool(verdicts[method][c])
                ax.set_xlabel("✓ correct" if ok else "✗ wrong", fontsize=8, color="green" if ok else "crimson")
    return fig
