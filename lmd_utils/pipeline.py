"""The complete LMD stage 2: layout → image (paper §3.2), built from the step modules.

:func:`generate` runs, in order:

1. **per-box generation** (:mod:`~lmd_utils.per_box`): every box alone, all boxes in one batch, from the shared
   initial noise with a little own noise inside the box, guided into its generation box by the box energy
   (:class:`~lmd_utils.sampling.BoxGuidance`), saving each step's latents and the object word's attention;
2. **masks** (:mod:`~lmd_utils.masks`): the object word's mask-layer attention, averaged over steps 10..T,
   thresholded (or refined with SAM when a backend is given);
3. **composition** (:mod:`~lmd_utils.composition`): each trajectory, mask and attention shifted onto the target
   box, pasted largest first;
4. **composed generation**: the overall prompt from the shared noise, the foreground replaced by the composed
   latents for the first ``frozen_ratio·T`` steps, with box guidance plus attention transfer towards the
   per-box attention for the first 30 steps; then decoded.

:func:`generate_sd` is the plain Stable Diffusion baseline with the same seed, scheduler and loop.  Every
intermediate a notebook may show is kept in :class:`LMDResult`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch

from .attention import (ALL_LAYERS, GUIDANCE_LAYERS, MASK_LAYERS, AttentionStore, phrase_token_indices,
                        resolve_layers, word_token_indices)
from .composition import FROZEN_RATIO, align_to_box, apply_frozen_step, compose_latents, frozen_step_count
from .layout import Box, Layout
from .masks import ObjectMask, SamBackend, extract_object_masks
from .models import decode_latents, default_resolution, encode_prompts, initial_noise, latent_shape
from .per_box import PER_BOX_NEGATIVE_PROMPT, PerBoxPlan, blend_box_noise, plan_per_box
from .sampling import BoxGuidance, DenoiseResult, GuidanceConfig, ImageTargets, ObjectTarget, TransferTarget, denoise

#: The authors' negative prompt for the composed (overall) generation.
OVERALL_NEGATIVE_PROMPT = ("artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image, "
                           "bad proportions, duplicate")
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass(frozen=True)
class LMDConfig:
    """Every setting of :func:`generate`; defaults are the authors' (``generation/lmd.py``) unless noted.

    num_inference_steps: 50 DDIM steps.  guidance_scale: classifier-free guidance 7.5.
    height, width: image size (``None``: the model's native size).
    per_box_guidance / overall_guidance: :class:`~lmd_utils.sampling.GuidanceConfig` of each pass (authors:
        the same schedule for both, first 30 of 50 steps).  ``layers=None`` in them means "the model's guidance
        layers" (:func:`default_layers`).
    mask_layers: where the object masks are read (authors: ``down_blocks.2.attentions.1``); ``None``: model default.
    mask_start_step: attention for masks is averaged over steps ``mask_start_step..T-1`` (authors: 10 of 50).
    mask_method: ``"normalized"`` (authors' coarse mask: min-max normalised map ≥ 0.25) or ``"quantile"`` (keep
        the top 75 % of in-box cells).  A SAM backend passed to :func:`generate` refines either.
    placement, floor_padding: where each object is generated alone (authors: centred horizontally, bottom at 0.8).
    noise_blend_ratio: r in √(1−r)·z_T + √r·z_i inside each box (authors 0.01).
    frozen_ratio: fraction of steps whose foreground is copied from the composed latents (authors 0.5).
    attention_transfer: pull the overall attention towards the per-box attention (authors: on, λ = 2).
    per_box_negative_prompt / overall_negative_prompt: the authors' negative prompts; the layout's own negative
        prompt is prepended to both.
    background: replaces the layout's background prompt when not ``None`` (models trained without backgrounds,
        such as the toy world, use ``""``: per-box prompts are then the bare captions).
    overall_prompt: ``"authors"`` builds ``"[background] with [phrase], ..."``; ``"source"`` uses the user's prompt
        (``layout.prompt``) when every phrase occurs in it and it does not name the layout's negative prompt (a model
        trained on one caption grammar, such as the toy world, understands its own grammar best), else falls back
        to the authors' form.
    max_batch: boxes per UNet batch in the per-box pass (``None``: all boxes in one batch; 1: one box at a time,
        as the authors' code).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    per_box_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(layers=()))
    overall_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(layers=()))
    mask_layers: tuple[str, ...] | None = None
    mask_start_step: int = 10
    mask_method: Literal["normalized", "quantile"] = "normalized"
    placement: Literal["authors", "box"] = "authors"
    floor_padding: float = 0.2
    noise_blend_ratio: float = 0.01
    frozen_ratio: float = FROZEN_RATIO
    attention_transfer: bool = True
    per_box_negative_prompt: str = PER_BOX_NEGATIVE_PROMPT
    overall_negative_prompt: str = OVERALL_NEGATIVE_PROMPT
    background: str | None = None
    overall_prompt: Literal["authors", "source"] = "authors"
    max_batch: int | None = None

    def with_steps(self, num_inference_steps: int) -> "LMDConfig":
        """The same method on fewer (or more) steps: guidance schedules and the mask window scale along."""
        ratio = num_inference_steps / self.num_inference_steps
        return replace(
            self, num_inference_steps=num_inference_steps,
            per_box_guidance=self.per_box_guidance.scaled_to(num_inference_steps, self.num_inference_steps),
            overall_guidance=self.overall_guidance.scaled_to(num_inference_steps, self.num_inference_steps),
            mask_start_step=min(round(self.mask_start_step * ratio), max(num_inference_steps - 1, 0)),
        )

    @classmethod
    def for_pipe(cls, pipe, **overrides) -> "LMDConfig":
        """Defaults for ``pipe``: the authors' for SD checkpoints, or the ``lmd_config.json`` shipped in the model
        folder (the toy world ships one with its calibrated guidance), then ``overrides``."""
        settings: dict[str, Any] = {}
        folder = Path(str(getattr(pipe, "name_or_path", "") or ""))
        if folder.is_dir() and (folder / "lmd_config.json").exists():
            settings = json.loads((folder / "lmd_config.json").read_text())
        return cls.from_dict({**settings, **overrides})

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> "LMDConfig":
        """An ``LMDConfig`` from an ``lmd_config.json``-style dict: guidance settings as nested dicts, JSON lists for
        tuples, a layer selection as a list of prefixes or the string ``"all"``.  Unknown keys raise ``TypeError``."""
        s = dict(settings)
        for key in ("per_box_guidance", "overall_guidance"):
            if isinstance(s.get(key), dict):
                g = dict(s[key])
                if "iterations" in g:
                    g["iterations"] = tuple(g["iterations"])
                if "layers" in g:
                    g["layers"] = _layer_tuple(g["layers"])
                s[key] = GuidanceConfig(**g)
        if isinstance(s.get("mask_layers"), list):
            s["mask_layers"] = tuple(s["mask_layers"])
        return cls(**s)


def _layer_tuple(layers: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` or ``"mid_block"`` → a one-element tuple (not a tuple of characters); a list → a tuple."""
    return (layers,) if isinstance(layers, str) else tuple(layers)


def default_layers(unet) -> tuple[tuple[str, ...] | str, tuple[str, ...] | str]:
    """``(guidance layers, mask layers)`` for ``unet``: the authors' choice when the UNet has SD's layout
    (``mid_block`` + ``up_blocks.1.attentions.{0,1,2}``; ``down_blocks.2.attentions.1``), otherwise every
    cross-attention layer (small models such as the toy world, whose every layer localises)."""
    try:
        resolve_layers(unet, GUIDANCE_LAYERS)
        resolve_layers(unet, MASK_LAYERS)
        return GUIDANCE_LAYERS, MASK_LAYERS
    except (KeyError, ValueError):
        return ALL_LAYERS, ALL_LAYERS


def _plural(noun_phrase: str) -> str:
    """A small English pluraliser for captions ("a red box" → "red boxes"); the authors use ``inflect``."""
    words = noun_phrase.split()
    if words and words[0].lower() in ("a", "an", "one", "the"):
        words = words[1:]
    if not words:
        return noun_phrase
    last = words[-1]
    if last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join(words[:-1] + [last])


def overall_phrases(layout: Layout) -> list[tuple[str, list[int]]]:
    """Group identical captions (authors' ``convert_spec``): ``[(phrase, [box indices]), ...]``.

    Two boxes captioned "a cat" become the phrase "two cats" (first-appearance order; the authors sort by name).
    """
    groups: dict[str, list[int]] = {}
    for i, box in enumerate(layout.boxes):
        groups.setdefault(box.phrase, []).append(i)
    out = []
    for caption, idx in groups.items():
        phrase = caption if len(idx) == 1 else f"{_COUNT_WORDS.get(len(idx), str(len(idx)))} {_plural(caption)}"
        out.append((phrase, idx))
    return out


def overall_prompt(layout: Layout) -> str:
    """``"[background] with [phrase 1], [phrase 2], ..."`` (authors' overall prompt), or the background alone."""
    phrases = ", ".join(p for p, _ in overall_phrases(layout))
    background = layout.background.strip().rstrip(".")
    if not phrases:
        return background
    return f"{background} with {phrases}" if background else phrases


def _join_negative(*parts: str) -> str:
    return ", ".join(p.strip() for p in parts if p and p.strip())


@dataclass
class PerBoxResult:
    """The per-box pass: one entry per box, in layout order."""

    plan: PerBoxPlan
    latents: torch.Tensor  # (T+1, n, C, h, w): x_T, then after each step
    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    mask_maps: torch.Tensor  # (n, h', w') aggregated object-word attention on the mask layers
    word_tokens: list[int]
    #: per box, the object word's attention ``{(layer, step): (heads, H, W)}`` on the guidance layers during the
    #: guided steps: the reference of the composed pass's attention transfer (empty when transfer is off)
    references: list[dict[tuple[str, int], torch.Tensor]]
    guidance: list[BoxGuidance]  # one hook per batch of boxes (one batch unless ``max_batch`` splits them)
    guidance_layers: tuple[str, ...] | str = GUIDANCE_LAYERS

    def energy_log(self, box: int) -> list[tuple[int, int, float]]:
        """``(step, iteration, energy)`` of box ``box``'s guidance, for plots."""
        start = 0
        for hook in self.guidance:
            if box < start + len(hook.targets):
                return hook.energies_by_element(box - start)
            start += len(hook.targets)
        raise IndexError(f"no box {box}")


@dataclass
class LMDResult:
    """Everything :func:`generate` computed (``image`` is the answer; the rest is for looking inside)."""

    image: torch.Tensor  # (3, H, W) in [0, 1]
    layout: Layout
    seed: int
    config: LMDConfig
    prompt: str  # the overall prompt
    negative_prompt: str
    method: str  # "lmd", or "sd" for a layout without boxes
    per_box: PerBoxResult | None = None
    masks: list[ObjectMask] = field(default_factory=list)
    aligned_masks: torch.Tensor | None = None  # (n, h, w) bool, on the target boxes
    composed_latents: torch.Tensor | None = None  # (T+1, C, h, w)
    overall_latents: torch.Tensor | None = None  # (T+1, 1, C, h, w)
    overall_guidance: BoxGuidance | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def pil(self):
        from .models import to_pil

        return to_pil(self.image[None])[0]


def _resolution(pipe, config: LMDConfig) -> tuple[int, int]:
    h, w = default_resolution(pipe)
    return config.height or h, config.width or w


def _guidance_config(config: GuidanceConfig, layers) -> GuidanceConfig:
    return config if config.layers else replace(config, layers=_layer_tuple(layers))


def run_per_box(pipe, layout: Layout, seed: int, config: LMDConfig, shared_noise: torch.Tensor,
                progress: bool = True) -> PerBoxResult:
    """Step 1: generate every box alone, guided into its generation box; keep latents and attention.

    All boxes share one batch (one UNet call per step) unless ``config.max_batch`` splits them; the authors run
    them one after another, which ``max_batch=1`` reproduces (same tensors, batched or not, up to float noise).
    """
    height, width = _resolution(pipe, config)
    _, _, h, w = latent_shape(pipe, height, width)
    guidance_layers, default_mask_layers = default_layers(pipe.unet)
    mask_layers = config.mask_layers or default_mask_layers
    per_box_cfg = _guidance_config(config.per_box_guidance, guidance_layers)
    plan = plan_per_box(layout, seed, config.placement, config.floor_padding, config.per_box_negative_prompt)
    n = len(plan.prompts)
    box_noise = initial_noise(pipe, n, height, width, plan.seeds)
    gen_masks = torch.stack([b.mask(h, w) for b in plan.generation_boxes]).to(box_noise.device)
    start = blend_box_noise(shared_noise, box_noise, gen_masks, config.noise_blend_ratio)

    tokenizer = pipe.tokenizer
    background_end = len(layout.background.strip().rstrip("."))  # the caption's tokens come after this
    targets, word_tokens = [], []
    for prompt, box, caption in zip(plan.prompts, plan.generation_boxes, (b.phrase for b in layout.boxes)):
        targets.append(ImageTargets(objects=(ObjectTarget.for_phrase(tokenizer, prompt, caption, box,
                                                                     start=background_end),)))
        word_tokens.append(word_token_indices(tokenizer, prompt, caption, start=background_end,
                                              last_token_only=True)[0])
    transfer_steps = set(range(config.overall_guidance.guidance_steps)) if config.attention_transfer else set()
    mask_steps = set(range(config.mask_start_step, config.num_inference_steps))
    layers = [mask_layers] if isinstance(mask_layers, str) else list(mask_layers)
    if config.attention_transfer:
        layers += list(per_box_cfg.layers)
    layers = ALL_LAYERS if ALL_LAYERS in layers else tuple(dict.fromkeys(layers))

    cond = encode_prompts(pipe, plan.prompts)
    uncond = encode_prompts(pipe, [plan.negative_prompt])
    chunk = config.max_batch or n
    hooks, latents, maps, references = [], [], [], []
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        hook = BoxGuidance(targets[sl], per_box_cfg)
        store = AttentionStore(layers=layers, keep="cond", token_indices=[[t] for t in word_tokens[sl]],
                               steps=mask_steps | transfer_steps)
        result: DenoiseResult = denoise(pipe, start[sl], cond[sl], uncond, config.num_inference_steps,
                                        config.guidance_scale, hooks=[hook], attention_store=store,
                                        keep_latents=True, progress=progress)
        hooks.append(hook)
        latents.append(result.latents_history)
        maps.append(store.aggregate(layers=mask_layers, steps=mask_steps)[:, 0])  # (chunk, h', w'), word token
        guided = {r.layer for r in store.select(per_box_cfg.layers)}
        for e in range(sl.stop - sl.start):
            references.append({k: v for k, v in store.per_element_maps(e).items()
                               if k[1] in transfer_steps and k[0] in guided})
    latents_all = torch.cat(latents, dim=1)
    images = decode_latents(pipe, latents_all[-1].to(shared_noise.device))
    return PerBoxResult(plan, latents_all, images, torch.cat(maps), word_tokens, references, hooks,
                        per_box_cfg.layers)


class FrozenForeground:
    """``after_step`` hook: for the first ``frozen_steps`` steps, the foreground is the composed latent (§3.2)."""

    def __init__(self, composed: torch.Tensor, union_mask: torch.Tensor, frozen_steps: int):
        self.composed, self.union_mask, self.frozen_steps = composed, union_mask, frozen_steps

    def after_step(self, state) -> torch.Tensor | None:
        if state.step >= self.frozen_steps:
            return None
        return apply_frozen_step(state.latents, state.step, self.composed, self.union_mask, self.frozen_steps)


@torch.no_grad()
def generate(pipe, layout: Layout, seed: int = 0, config: LMDConfig | None = None,
             sam: SamBackend | None = None, progress: bool = True) -> LMDResult:
    """LMD stage 2: the image of ``layout`` (see the module docstring for the steps).

    ``sam``: a :mod:`~lmd_utils.masks` SAM backend to refine the object masks (paper default); without one the
    attention is thresholded (the paper's no-SAM ablation, and what runs offline).  A layout without boxes
    (e.g. "a scene without cats") is plain SD on its background prompt with its negative prompt.
    """
    config = config or LMDConfig.for_pipe(pipe)
    if config.background is not None:
        layout = replace(layout, background=config.background)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    height, width = _resolution(pipe, config)
    shared = initial_noise(pipe, 1, height, width, seed)
    negative = _join_negative(layout.negative, config.overall_negative_prompt)
    if not layout.boxes:
        image = _plain(pipe, layout.background or layout.prompt, negative, shared, config, progress)
        timings["total"] = time.perf_counter() - t0
        return LMDResult(image[0], layout, seed, config, layout.background, negative, "sd", timings=timings)

    # 1. per-box generation
    per_box = run_per_box(pipe, layout, seed, config, shared, progress)
    timings["per_box"] = time.perf_counter() - t0
    _, _, h, w = latent_shape(pipe, height, width)

    # 2. masks (on the generation boxes, where the objects were drawn)
    masks = extract_object_masks(per_box.mask_maps, per_box.plan.generation_boxes, (h, w),
                                 images=list(per_box.images) if sam is not None else None, backend=sam,
                                 progress=progress, **({} if sam is not None else {"method": config.mask_method}))
    timings["masks"] = time.perf_counter() - timings["per_box"] - t0

    # 3. align each trajectory, mask and attention onto its target box, then compose (largest first)
    overall_cfg = _guidance_config(config.overall_guidance, per_box.guidance_layers)
    aligned = []
    for i, (m, box) in enumerate(zip(masks, layout.boxes)):
        refs = per_box.references[i] if config.attention_transfer else None
        mask = m.latent_mask if m.latent_mask.any() else box.mask(h, w).bool()  # an empty mask cannot be placed
        aligned.append(align_to_box(per_box.latents[:, i], mask, box, attention=refs))
    aligned_masks = torch.stack([a.mask for a in aligned])
    composed, union = compose_latents(per_box.latents[:, 0].new_zeros(per_box.latents.shape[2:]).expand(
        per_box.latents.shape[0], *per_box.latents.shape[2:]).clone(), torch.stack([a.latents for a in aligned]),
        aligned_masks)
    # the overall pass starts from the shared noise, with each object's own start noise inside its mask
    composed[0] = torch.where(union.to(composed.device), composed[0], shared[0].to(composed.device, composed.dtype))

    # 4. the composed generation: frozen foreground + box guidance + attention transfer
    tokenizer = pipe.tokenizer
    prompt, background_end = _overall_prompt_for(layout, config.overall_prompt, tokenizer)
    objects, transfers = [], []
    for k, (phrase, idx) in enumerate(overall_phrases(layout)):
        boxes = tuple(layout.boxes[i] for i in idx)
        objects.append(ObjectTarget.for_phrase(tokenizer, prompt, phrase, boxes, start=background_end))
        if config.attention_transfer:
            word = word_token_indices(tokenizer, prompt, phrase, start=background_end, last_token_only=True)[0]
            for i in idx:
                transfers.append(TransferTarget(layout.boxes[i], word, aligned[i].attention, object_index=k))
    overall_guidance = BoxGuidance([ImageTargets(tuple(objects), tuple(transfers))], overall_cfg)
    frozen = FrozenForeground(composed.to(shared.device), union, frozen_step_count(config.num_inference_steps,
                                                                                    config.frozen_ratio))
    cond, uncond = encode_prompts(pipe, [prompt]), encode_prompts(pipe, [negative])
    t1 = time.perf_counter()
    result = denoise(pipe, composed[0:1].to(shared.device, shared.dtype), cond, uncond, config.num_inference_steps,
                     config.guidance_scale, hooks=[overall_guidance, frozen], keep_latents=True, progress=progress)
    image = decode_latents(pipe, result.latents)[0]
    timings["overall"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    return LMDResult(image, layout, seed, config, prompt, negative, "lmd", per_box, masks, aligned_masks,
                     composed, result.latents_history, overall_guidance, timings)


def _overall_prompt_for(layout: Layout, mode: str, tokenizer) -> tuple[str, int]:
    """The overall prompt and the character offset after which its phrases are looked up."""
    # a prompt naming what the image must NOT show ("... without blue squares") would bring it back into the
    # conditional prompt: use the authors' form, which holds only the layout's phrases
    negated = layout.negative.strip().lower()
    if mode == "source" and layout.prompt and not (negated and negated in layout.prompt.lower()):
        try:
            for phrase, _ in overall_phrases(layout):
                phrase_token_indices(tokenizer, layout.prompt, phrase)
            return layout.prompt, 0
        except ValueError:
            pass  # a phrase the user's prompt does not contain verbatim: use the authors' form
    elif mode not in ("authors", "source"):
        raise ValueError(f"overall_prompt must be 'authors' or 'source', not {mode!r}")
    return overall_prompt(layout), len(layout.background.strip().rstrip("."))


def _plain(pipe, prompt: str, negative: str, noise: torch.Tensor, config: LMDConfig, progress: bool) -> torch.Tensor:
    cond, uncond = encode_prompts(pipe, [prompt]), encode_prompts(pipe, [negative])
    result = denoise(pipe, noise, cond, uncond, config.num_inference_steps, config.guidance_scale, progress=progress)
    return decode_latents(pipe, result.latents)


@torch.no_grad()
def generate_sd(pipe, prompt: str, seed: int = 0, config: LMDConfig | None = None, negative_prompt: str = "",
                progress: bool = True) -> torch.Tensor:
    """The plain-SD baseline: ``prompt`` from the same initial noise ``z_T`` (same seed), scheduler and loop as
    :func:`generate`; returns the image ``(3, H, W)`` in [0, 1]."""
    config = config or LMDConfig.for_pipe(pipe)
    height, width = _resolution(pipe, config)
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


def aligned_objects(result: LMDResult) -> list:
    """The :class:`~lmd_utils.composition.AlignedObject` of each box, recomputed from ``result`` exactly as
    :func:`generate` made them (an empty mask falls back to the box), without attention (for pictures)."""
    if result.per_box is None:
        raise ValueError("this result has no per-box pass (a layout without boxes is plain SD)")
    h, w = result.per_box.latents.shape[-2:]
    out = []
    for i, (m, box) in enumerate(zip(result.masks, result.layout.boxes)):
        mask = m.latent_mask if m.latent_mask.any() else box.mask(h, w).bool()
        out.append(align_to_box(result.per_box.latents[:, i], mask, box))
    return out


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
        return alignment_figure(per_box.latents[-1], masks, aligned_objects(result), layout.boxes,
                                per_box.plan.generation_boxes, pixel_space=pixel_space)
    if view == "composed vs overall":
        T = result.config.num_inference_steps
        frozen = frozen_step_count(T, result.config.frozen_ratio)
        return frozen_steps_figure(result.composed_latents, result.overall_latents, result.aligned_masks.any(0),
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
