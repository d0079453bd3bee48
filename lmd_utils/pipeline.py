"""The complete LMD stage 2: layout → image (paper §3.2), one call into a step module per step.

:func:`generate` runs, in order (on the layout as configured, :func:`configured_layout`: background override and
``LMDConfig.box_order``):

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

:func:`generate_sd` is plain sampling with the same seed, scheduler and loop.  With ``LMDConfig.gligen_beta`` set
(LMD+, :meth:`LMDConfig.lmd_plus <lmd_utils.config.LMDConfig.lmd_plus>`) both passes are also GLIGEN-grounded
(:class:`~lmd_utils.gligen.GligenGrounding`): steps 1 and 4 on a GLIGEN model.  Every intermediate a notebook may
show is kept in :class:`LMDResult`.  Settings: :class:`~lmd_utils.config.LMDConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from .composition import (AlignedObject, FrozenForeground, align_objects, compose_trajectory, composed_pass_guidance,
                          frozen_step_count, overall_prompt_for, overall_token_targets)
from .config import LMDConfig
from .gligen import GligenGrounding, check_gligen
from .grammar import join_phrases
from .layout import Layout, LayoutError, single_line
from .masks import ObjectMask, extract_object_masks
from .models import decode_latents, encode_prompts, initial_noise, to_pil
from .per_box import PerBoxResult, per_box_token_targets, plan_per_box, run_per_box
from .sam import SamBackend
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
    method: str  # "lmd", "lmd+" with GLIGEN grounding, or "sd" for a layout without boxes
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
    if config.gligen_beta is not None:
        check_gligen(pipe, "LMD+ (gligen_beta)")  # a ValueError now, not after minutes of work
    layout = check_layout(pipe, layout, config)  # a LayoutError now, not after minutes of per-box generation
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
                                 progress=progress, **({"rules": config.sam_rules} if sam is not None
                                                        else {"method": config.mask_method}))
    clock.lap("masks")

    # 3. each trajectory, mask and attention moved onto its target box, then composed (largest first)
    aligned = align_objects(per_box.latents, [m.latent_mask for m in masks], layout.boxes,
                            per_box.references if config.attention_transfer else None, config.alignment,
                            config.box_rounding)
    composed, union = compose_trajectory(aligned, shared, config.compose_initial)

    # 4. the composed generation: frozen foreground + box guidance + attention transfer
    prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
    guidance = composed_pass_guidance(pipe.tokenizer, layout, prompt, background_end, aligned,
                                      config.overall_guidance.on_layers(per_box.guidance_layers),
                                      config.attention_transfer, config.box_rounding)
    frozen = FrozenForeground(composed.to(shared.device), union,
                              frozen_step_count(config.num_inference_steps, config.frozen_ratio))
    grounding = [] if config.gligen_beta is None else [  # LMD+: every box on its caption, before the guidance
        GligenGrounding([layout.boxes], config.gligen_beta, config.gligen_guidance)]
    overall = denoise(pipe, composed[0:1].to(shared.device, shared.dtype), encode_prompts(pipe, [prompt]),
                      encode_prompts(pipe, [negative]), config.num_inference_steps, config.guidance_scale,
                      hooks=[*grounding, guidance, frozen], keep_latents=True, progress=progress,
                      uncond_every=config.overall_uncond_every, uncond_from=config.overall_uncond_from)

    # 5. decode
    image = decode_latents(pipe, overall.latents)[0]
    clock.lap("overall")
    method = "lmd" if config.gligen_beta is None else "lmd+"
    return LMDResult(image, layout, seed, config, prompt, negative, method, per_box=per_box, masks=masks,
                     aligned=aligned, union_mask=union, composed_latents=composed,
                     overall_latents=overall.latents_history, overall_guidance=guidance, timings=clock.done())


def check_layout(pipe, layout: Layout, config: LMDConfig | None = None) -> Layout:
    """``layout`` as :func:`generate` will run it (:func:`configured_layout`), or :class:`~lmd_utils.layout.LayoutError`
    if stage 2 cannot run it with ``pipe``: boxes outside the canvas, a caption without a word, too many boxes
    (:meth:`Layout.validate <lmd_utils.layout.Layout.validate>`), or a caption whose words fall past the text
    encoder's token limit in its per-box or overall prompt (e.g. a very long background).  Cheap (tokenizer only):
    a layout source runs it before caching an LLM reply, so a reply stage 2 cannot use is asked again."""
    config = config or LMDConfig.for_pipe(pipe)
    layout.validate()
    layout = configured_layout(layout, config)
    if not layout.boxes:
        return layout
    try:
        plan = plan_per_box(layout, 0, config.placement, config.floor_padding, config.per_box_negative_prompt)
        per_box_token_targets(pipe.tokenizer, layout, plan, config.per_box_guidance.skip_articles)
        prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
        overall_token_targets(pipe.tokenizer, layout, prompt, background_end, config.overall_guidance.skip_articles)
    except ValueError as e:
        raise LayoutError(f"stage 2 cannot run this layout: {single_line(e, 300)}") from e
    return layout


def configured_layout(layout: Layout, config: LMDConfig) -> Layout:
    """``layout`` as ``config`` wants it: its background replaced by ``config.background`` when that is set, its
    boxes sorted by caption (stable) when ``config.box_order == "by_phrase"`` (the authors' ``convert_spec``)."""
    if config.background is not None:
        layout = replace(layout, background=config.background)
    if config.box_order == "by_phrase":
        layout = replace(layout, boxes=sorted(layout.boxes, key=lambda b: b.phrase))
    elif config.box_order != "layout":
        raise ValueError(f"box_order must be 'layout' or 'by_phrase', not {config.box_order!r}")
    return layout


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
