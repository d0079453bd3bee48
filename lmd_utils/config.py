"""Every setting of LMD's stage 2 in one place, with where each default comes from.

:class:`GuidanceConfig` configures the box guidance of one pass (:class:`~lmd_utils.sampling.BoxGuidance`);
:class:`LMDConfig` configures a whole :func:`~lmd_utils.pipeline.generate` run (both passes, masks, composition).
The defaults are the authors' (``generation/lmd.py``, ``models/pipelines.py``, ``utils/guidance.py``); every place
where we differ is a field named in the docstrings, so the authors' behaviour is one switch away.  Models that ship
an ``lmd_config.json`` (the toy world) get their calibrated settings from :meth:`LMDConfig.for_pipe`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from .attention import GUIDANCE_LAYERS
from .energy import INSIDE_WEIGHT, OUTSIDE_WEIGHT, TOP_FRACTION
from .models import default_resolution

#: The authors' negative prompt for per-box generation (discourages duplicates and cut-off objects).
PER_BOX_NEGATIVE_PROMPT = (
    "artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image, bad proportions, "
    "duplicate, two, many, group, occlusion, occluded, side, border, collate"
)
#: Fraction of the denoising steps during which the foreground is copied from the composed latents (authors).
FROZEN_RATIO = 0.5
#: GLIGEN's scheduled sampling: grounding on the first 40 % of the steps (the authors' ``generation/gligen.py``
#: ``gligen_scheduled_sampling_beta`` and both ``*_gligen_scheduled_sampling_beta`` of ``generation/lmd_plus.py``).
GLIGEN_BETA = 0.4


@dataclass(frozen=True)
class GuidanceConfig:
    """Settings of :class:`BoxGuidance`; defaults reproduce the authors' LMD code on SD 1.5.

    The authors' code (``generation/lmd.py``, ``models/pipelines.py::latent_backward_guidance``,
    ``utils/guidance.py``) SUMS the energy over attention heads and uses ``loss_scale = 5``,
    ``loss_threshold = 5.0``, ``ref_ca_loss_weight = 2`` (transfer term averaged over heads).  Summing makes
    the scale depend on the head count (8 in SD 1.5's guidance layers, 20 in SD 2.x's), so by default we
    AVERAGE over heads and express the authors' numbers per head of SD 1.5, which gives the very same updates
    and stopping decisions on SD 1.5 (for the same tokens: the authors also guide the article tokens, see
    :func:`~lmd_utils.attention.phrase_token_indices`) and keeps the balance on other models:
    ``loss_scale = 5·8``, ``loss_threshold = 5/8``, ``transfer_weight = 2/8``.
    :meth:`authors` gives the literal values with ``head_reduction="sum"``.  Other models (the pixel-space toy
    world, v-prediction) need their own calibration of ``loss_scale``.

    Fields (provenance):
      loss_scale: η, the energy is multiplied by it before the gradient (authors: ``loss_scale=5``).
      loss_threshold: a batch element is updated only while its energy is above this (authors:
        ``loss_threshold=5.0`` on the un-scaled, head-summed loss).  We re-evaluate it on the current latents
        at every iteration and every step; the authors test the loss of the *previous* forward (before the
        last update) and carry it across steps, so once it drops below the threshold guidance never runs
        again in that image.
      iterations: gradient steps per denoising step (authors' ``max_iter = [4]*5 + [3]*5 + [2]*5 + [2]*5 +
        [1]*10``); past the end of the list its last value is used (as the authors do).
      guidance_steps: guidance on denoising steps ``0 .. guidance_steps-1`` (authors: ``max_index_step=30`` of 50).
      top_fraction, inside_weight, outside_weight: the energy's top-k fraction and weights (authors:
        ``fg_top_p = bg_top_p = 0.2``, ``fg_weight = 1``, ``bg_weight = 4``).
      transfer_weight: λ of the attention-transfer term (authors 2, head-averaged; see above).
      head_reduction: ``"mean"`` or ``"sum"`` over heads for the box energy.
      layers: the guidance layers (authors' ``DEFAULT_GUIDANCE_ATTN_KEYS``).
      truncate_forward: stop the guidance forward after the last guidance layer (not in the authors' code:
        same maps, less compute; the energy needs nothing after ``up_blocks.1``).
      batched_energy: compute each layer's energy terms of all elements, objects, tokens and transfer boxes in one
        call on gathered maps (issue #15: no Python loop over boxes per iteration; the same value up to float
        rounding) instead of one call per element, object and layer (``False``, the reference implementation and
        the default until the toy benchmark confirms it).
      shared_forward: the last iteration of each guided step takes the energy's gradient through the denoising
        step's own conditional forward (run with gradients) instead of a separate guidance forward before it, and
        the step then applies the forward's noise prediction, made on the latents before that update, to the updated
        latents (issue #15: one UNet forward per guided step saved; not in the authors' code).  The model sees the
        update only at the next step, which weakens it: the toy model's settings use it with ``loss_scale`` 30
        instead of 10 (chosen on the calibration seeds; with 10 its benchmark lost 5 points).  Needs
        ``stop_rule="current"`` and no GLIGEN; ``False`` (default): every iteration has its own forward, as the
        authors'.
      stop_rule: ``"current"`` (ours): an element is updated while the energy of the CURRENT latents is above
        ``loss_threshold``, re-evaluated at every iteration of every step.  ``"authors"``
        (``models/pipelines.py:30, :161, :552``): the loop runs ``while loss > loss_threshold and iteration <
        max_iter``, ``loss`` being the value of the PREVIOUS forward (before the last update), carried across
        steps and starting at 10000; the first iteration of a step is therefore always run unless the carried
        loss is already below the threshold, after which guidance never runs again in that image.
      skip_articles: the energy's tokens leave out the phrase's articles (ours, ``True``: an article's attention is
        diffuse) or include them (authors, ``False``).  The authors also match a phrase at its FIRST substring
        occurrence in the prompt (``utils/guidance.py`` ``get_token_map``/``get_phrase_indices``), which can pick the
        tokens of another word containing it ("cat" in "caterpillar"): a bug, kept out of this switch, we always
        match whole words (:func:`~lmd_utils.attention.phrase_token_indices`).

    :meth:`authors` sets every field to the authors' value.
    """

    loss_scale: float = 5.0 * 8
    loss_threshold: float = 5.0 / 8
    iterations: tuple[int, ...] = (4,) * 5 + (3,) * 5 + (2,) * 10 + (1,) * 10
    guidance_steps: int = 30
    top_fraction: float = TOP_FRACTION
    inside_weight: float = INSIDE_WEIGHT
    outside_weight: float = OUTSIDE_WEIGHT
    transfer_weight: float = 2.0 / 8
    head_reduction: str = "mean"
    layers: tuple[str, ...] = GUIDANCE_LAYERS
    truncate_forward: bool = True
    batched_energy: bool = False
    shared_forward: bool = False
    stop_rule: Literal["current", "authors"] = "current"
    skip_articles: bool = True

    def __post_init__(self) -> None:
        if self.head_reduction not in ("mean", "sum"):
            raise ValueError(f"head_reduction must be 'mean' or 'sum', got {self.head_reduction!r}")
        if self.stop_rule not in ("current", "authors"):
            raise ValueError(f"stop_rule must be 'current' or 'authors', got {self.stop_rule!r}")
        if self.shared_forward and self.stop_rule != "current":
            raise ValueError("shared_forward needs stop_rule='current' (the authors' rule decides before the forward)")
        if not self.iterations or min(self.iterations) < 0:
            raise ValueError(f"iterations must be a non-empty list of counts >= 0, got {self.iterations}")

    @classmethod
    def authors(cls, **overrides) -> "GuidanceConfig":
        """The authors' ``generation/lmd.py``, for tests/reference: their literal values (head-summed energy, so the
        scale depends on the head count), their stop rule, their tokens (articles included) and the full guidance
        forward; then ``overrides``."""
        return replace(cls(loss_scale=5.0, loss_threshold=5.0, transfer_weight=2.0, head_reduction="sum",
                           stop_rule="authors", skip_articles=False, truncate_forward=False, batched_energy=False,
                           shared_forward=False),
                       **overrides)

    def on_layers(self, layers: str | Sequence[str]) -> "GuidanceConfig":
        """These settings, guiding on ``layers`` (the model's guidance layers) unless they name their own."""
        return self if self.layers else replace(self, layers=_layer_tuple(layers))

    def iterations_at(self, step: int) -> int:
        if step >= self.guidance_steps:
            return 0
        return self.iterations[min(step, len(self.iterations) - 1)]

    def scaled_to(self, num_inference_steps: int, reference_steps: int = 50) -> "GuidanceConfig":
        """The same schedule stretched to ``num_inference_steps`` (guided fraction and iteration profile kept)."""
        ratio = reference_steps / num_inference_steps
        steps = max(1, round(self.guidance_steps / ratio)) if self.guidance_steps else 0
        iters = tuple(self.iterations[min(int(i * ratio), len(self.iterations) - 1)] for i in range(max(steps, 1)))
        return replace(self, guidance_steps=steps, iterations=iters)



#: The authors' negative prompt for the composed (overall) generation.
OVERALL_NEGATIVE_PROMPT = ("artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image, "
                           "bad proportions, duplicate")


@dataclass(frozen=True)
class LMDConfig:
    """Every setting of :func:`~lmd_utils.pipeline.generate`; defaults are the authors' (``generation/lmd.py``) unless noted.

    num_inference_steps: 50 DDIM steps.  guidance_scale: classifier-free guidance 7.5.
    height, width: image size (``None``: the model's native size).
    per_box_guidance / overall_guidance: :class:`GuidanceConfig` of each pass (authors:
        the same schedule for both, first 30 of 50 steps).  ``layers=None`` in them means "the model's guidance
        layers" (:func:`~lmd_utils.attention.default_layers`).
    mask_layers: where the object masks are read (authors: ``down_blocks.2.attentions.1``); ``None``: model default.
    mask_start_step: attention for masks is averaged over steps ``mask_start_step..T-1`` (authors: 10 of 50; the end:
        ``mask_end_step``).
    mask_method: ``"normalized"`` (authors' coarse mask: min-max normalised map ≥ 0.25, cut to the box),
        ``"object"`` (the same rule over the whole map, keeping the blobs that touch the box: follows an object
        that spills out of its box; the toy model's setting) or ``"quantile"`` (keep the top 75 % of in-box
        cells); see :func:`~lmd_utils.masks.threshold_object_mask`.  A SAM backend passed to :func:`~lmd_utils.pipeline.generate` refines either.
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
    per_box_stop: how long the per-box pass runs (issue #15): ``"end"`` (the default, as the authors: all T steps) or
        ``"needed"``: it stops after the last step anything reads, ``max(frozen_step_count(T, frozen_ratio),
        mask_end_step or mask_start_step + 1`` (without ``mask_jumps``: they reach the mask window from the stop)``,
        overall_guidance.guidance_steps`` (with attention transfer: its references)``)`` steps
        (:func:`~lmd_utils.per_box.per_box_step_count`; toy world: 7 of 15); its per-box images (what SAM refines,
        what the notebooks show) are the scheduler's x_0 estimate there.
    mask_end_step: the mask attention is averaged over steps ``mask_start_step..mask_end_step−1``; ``None`` (authors):
        up to the last step the per-box pass runs (T with ``per_box_stop="end"``).  With ``"needed"`` a later end
        makes the pass run longer, for masks from later (sharper) attention, unless ``mask_jumps`` reach it.
    mask_jumps: with ``per_box_stop="needed"``, the rest of the mask window (up to ``mask_end_step``, else T) is not
        run step by step but reached by this many deterministic DDIM jumps from the stopped pass's x_0 estimate, evenly
        spaced over the window's steps after the stop (``max(stop, mask_start_step)`` on) and ending at its last
        step, each one conditional UNet forward whose attention joins the masks
        (:func:`~lmd_utils.per_box.jump_for_masks`; issue #15: late, sharp attention at a fraction of the steps).
        0 (default): no jumps.
    per_box_guidance_scale: classifier-free guidance scale of the per-box pass; ``None`` (authors): ``guidance_scale``.
        ``1.0`` runs it without the unconditional half (issue #15: half its UNet work; the objects are drawn alone,
        the composed pass keeps its own scale).
    per_box_uncond_every: the per-box pass runs classifier-free guidance's unconditional half on every k-th step only
        (0, k, 2k, ...) and between them the conditional half alone, with the last ``ε_c − ε_u`` (issue #15; ``1``,
        the authors': every step).
    overall_uncond_every: the same for the composed pass (``1``, the authors': every step).
    overall_uncond_from: the composed pass runs both halves on every step before this one and counts the k-th steps
        from here (``0``: from the start).  The toy model's settings start after the frozen steps (7 of 15), whose
        pasted foreground moves the latents each step: with the same switches, sparse from step 0 scored 89.2 / 89.0 %
        on its benchmark (seeds 0+ / 5000+, 100 prompts per task), from step 7 90.5 / 90.5 % (every step: 90.0 /
        90.8 %).
    max_batch: boxes per UNet batch in the per-box pass (``None``: all boxes in one batch; 1: one box at a time,
        as the authors' code).
    gligen_beta: ``None`` (LMD) or GLIGEN grounding in both passes, on their first ``int(β·T)`` steps (LMD+, the
        authors' ``generation/lmd_plus.py``: β 0.4 for both; :mod:`~lmd_utils.gligen`): each per-box element on its
        generation box and caption, the overall pass on every box with its caption.  Needs a GLIGEN model.
    gligen_guidance: what the guidance forwards of a grounded pass get: ``"null"`` (the authors': the null grounding
        of the unconditional half, ``masks[:condition_len // 2]``) or ``"boxes"`` (the boxes, as the denoising
        forward's conditional half).

    Differences from the authors' code, each a switch (default: ours; :meth:`authors` sets them all to theirs):

    box_seed_start: box *i*'s own noise uses seed ``seed + 20 + i`` (``None``, ours: tied to the image seed, so
        different seeds give different objects) or ``box_seed_start + i``, plus 12345 when that equals the image
        seed (authors' ``fg_seed_start = 20``, ``utils/latents.py:144-147``).
    box_rounding: how boxes land on the latent and attention grids (:meth:`~lmd_utils.layout.Box.mask`):
        ``"edges"`` (ours: both edges rounded) or ``"authors"`` (start and width rounded separately,
        ``utils/utils.py:57-67`` ``scale_proportion``).  Used by the guidance energy of both passes, the per-box
        noise blend and the whole-box fallback of an empty mask.
    alignment: how an object's mask is moved onto its box (:func:`~lmd_utils.composition.alignment_shift`):
        ``"centre"`` (ours: centre of mass with cell centres at ``+0.5``, shift to the nearest cell) or
        ``"authors"`` (cell indices without ``+0.5``, ``utils/utils.py:102-120``, shift rounded to 1/8 of the
        frame, ``:145-154``); ``"none"`` leaves every object where its per-box pass drew it, which is its box only
        with ``placement="box"`` (LMD+'s ``align_with_overall_bboxes=False``).
    compose_initial: the composed pass's first latents (:func:`~lmd_utils.composition.compose_trajectory`):
        ``"masks"`` (ours: z_T with each aligned object's masked z_T pasted in) or ``"authors"``
        (``utils/latents.py:60-69`` + ``utils/utils.py:72-99``: also each aligned mask's bounding box grown by one
        cell, copied from that object's shifted z_T).
    sam_rules: the SAM refinement's details (:func:`~lmd_utils.masks.sam_refine_mask`, only with a SAM backend):
        ``"ours"`` or ``"authors"`` (``models/sam.py:125-175``: point at the arg-max cell's top-left corner, SAM's
        masks bilinearly resized to the latent grid keeping any value > 0, IoU with the coarse mask on the
        attention grid, penalised arg-max by latent-grid area instead of our "largest passing mask, else the coarse
        mask").
    box_order: ``"layout"`` (ours: boxes in the layout's order) or ``"by_phrase"`` (authors' ``utils/parse.py:318,
        332``: ``gen_boxes`` sorted by caption, stable), which changes the order of the per-box passes, of the
        overall prompt's phrases and of the paste order between equal-area objects.
    The guidance's own differences (stop rule, article tokens, head sum) are fields of :class:`GuidanceConfig`.
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    per_box_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(layers=()))
    overall_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(layers=()))
    mask_layers: tuple[str, ...] | None = None
    mask_start_step: int = 10
    mask_end_step: int | None = None
    mask_method: Literal["normalized", "object", "quantile"] = "normalized"
    placement: Literal["authors", "box"] = "authors"
    floor_padding: float = 0.2
    noise_blend_ratio: float = 0.01
    frozen_ratio: float = FROZEN_RATIO
    attention_transfer: bool = True
    per_box_negative_prompt: str = PER_BOX_NEGATIVE_PROMPT
    overall_negative_prompt: str = OVERALL_NEGATIVE_PROMPT
    background: str | None = None
    overall_prompt: Literal["authors", "source"] = "authors"
    per_box_stop: Literal["end", "needed"] = "end"
    mask_jumps: int = 0
    per_box_guidance_scale: float | None = None
    per_box_uncond_every: int = 1
    overall_uncond_every: int = 1
    overall_uncond_from: int = 0
    max_batch: int | None = None
    gligen_beta: float | None = None
    gligen_guidance: Literal["null", "boxes"] = "null"
    box_seed_start: int | None = None
    box_rounding: Literal["edges", "authors"] = "edges"
    alignment: Literal["centre", "authors", "none"] = "centre"
    compose_initial: Literal["masks", "authors"] = "masks"
    sam_rules: Literal["ours", "authors"] = "ours"
    box_order: Literal["layout", "by_phrase"] = "layout"

    def __post_init__(self) -> None:
        for name, allowed in (("box_rounding", ("edges", "authors")), ("alignment", ("centre", "authors", "none")),
                              ("compose_initial", ("masks", "authors")), ("sam_rules", ("ours", "authors")),
                              ("box_order", ("layout", "by_phrase")), ("gligen_guidance", ("null", "boxes")),
                              ("mask_method", ("normalized", "object", "quantile")),
                              ("per_box_stop", ("end", "needed"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.gligen_beta is not None and not 0.0 <= self.gligen_beta <= 1.0:
            raise ValueError(f"gligen_beta must be None or in [0, 1], got {self.gligen_beta}")
        if self.gligen_beta is not None and (self.per_box_guidance.shared_forward
                                             or self.overall_guidance.shared_forward):
            raise ValueError("shared_forward does not combine with GLIGEN (gligen_beta): its guidance forwards run "
                             "without grounding, the denoising forward with it")
        for name in ("per_box_uncond_every", "overall_uncond_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("overall_uncond_from", "mask_jumps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mask_end_step is not None and not self.mask_start_step < self.mask_end_step <= self.num_inference_steps:
            raise ValueError(f"mask_end_step must be None or in ({self.mask_start_step}, {self.num_inference_steps}] "
                             f"(after mask_start_step, at most the steps), got {self.mask_end_step}")
        if self.alignment == "none" and self.placement != "box":
            raise ValueError("alignment='none' leaves each object where its per-box pass drew it: that is its box "
                             "only with placement='box'")

    @classmethod
    def authors(cls, **overrides) -> "LMDConfig":
        """The authors' ``generation/lmd.py``, for tests/reference: every switch listed above at the authors' value,
        :meth:`GuidanceConfig.authors` for both passes, one box per UNet batch; then ``overrides``."""
        return replace(cls(
            per_box_guidance=GuidanceConfig.authors(layers=()), overall_guidance=GuidanceConfig.authors(layers=()),
            mask_method="normalized", placement="authors", attention_transfer=True, overall_prompt="authors",
            max_batch=1, per_box_stop="end", mask_end_step=None, mask_jumps=0, per_box_guidance_scale=None,
            per_box_uncond_every=1, overall_uncond_every=1, overall_uncond_from=0, box_seed_start=20,
            box_rounding="authors", alignment="authors", compose_initial="authors", sam_rules="authors",
            box_order="by_phrase"), **overrides)

    @classmethod
    def lmd_plus(cls, **overrides) -> "LMDConfig":
        """LMD+ (the authors' ``generation/lmd_plus.py`` ``run`` defaults), then ``overrides``: GLIGEN grounding in
        both passes with β = 0.4 (``so_/overall_gligen_scheduled_sampling_beta``); each object generated in its own
        box (``so_center_box=False``: ``placement="box"``) and left there (``align_with_overall_bboxes=False``:
        ``alignment="none"``); box noise ratio 0.1 (``fg_blending_ratio``); no per-box guidance (``max_index_step=0``);
        the overall pass as LMD's (guidance on the first 30 of 50 steps, attention transfer λ 2, half the steps
        frozen).  Needs a GLIGEN model (:data:`~lmd_utils.gligen.GLIGEN_MODEL`).

        What differs from their run: their masks come from SAM prompted with the box (``sam.sam_refine_box``); ours
        are the object word's attention (``mask_method``), refined by SAM only when a SAM backend is passed to
        :func:`~lmd_utils.pipeline.generate`, and then prompted from the attention
        (:func:`~lmd_utils.masks.sam_refine_mask`).
        Every other switch of this class keeps OUR default (e.g. ``box_seed_start``: their ``fg_seed_start=20``;
        ``box_order``: they sort boxes by caption; the head-averaged guidance energy); combine with :meth:`authors`'
        values through ``overrides``.  Their LMD+ runs with autocast in fp16; we run in the model's dtype."""
        return replace(cls().plus(), **overrides)

    def plus(self) -> "LMDConfig":
        """This configuration turned into LMD+ (what :meth:`lmd_plus` changes, on top of ``self``: e.g. a model's
        own steps and guidance schedule); the ``lmd+`` method of ``generate`` and the benchmarks.  Its guidance
        forwards run without grounding (as the authors'), so ``shared_forward`` is switched off."""
        return replace(self, placement="box", alignment="none", noise_blend_ratio=0.1, gligen_beta=GLIGEN_BETA,
                       per_box_guidance=replace(self.per_box_guidance, guidance_steps=0, shared_forward=False),
                       overall_guidance=replace(self.overall_guidance, shared_forward=False))

    def resolution(self, pipe) -> tuple[int, int]:
        """``(height, width)`` of the image: the configured size, else the model's native one."""
        h, w = default_resolution(pipe)
        return self.height or h, self.width or w

    def with_steps(self, num_inference_steps: int) -> "LMDConfig":
        """The same method on fewer (or more) steps: guidance schedules and the mask window scale along."""
        ratio = num_inference_steps / self.num_inference_steps
        return replace(
            self, num_inference_steps=num_inference_steps,
            per_box_guidance=self.per_box_guidance.scaled_to(num_inference_steps, self.num_inference_steps),
            overall_guidance=self.overall_guidance.scaled_to(num_inference_steps, self.num_inference_steps),
            mask_start_step=min(round(self.mask_start_step * ratio), max(num_inference_steps - 1, 0)),
            mask_end_step=None if self.mask_end_step is None else min(max(round(self.mask_end_step * ratio), 1),
                                                                        num_inference_steps),
            overall_uncond_from=round(self.overall_uncond_from * ratio),
        )

    @classmethod
    def for_pipe(cls, pipe, **overrides) -> "LMDConfig":
        """Defaults for ``pipe``: the authors' for SD checkpoints, or the ``lmd_config.json`` shipped in the model
        folder (the toy world ships one with its calibrated guidance), then ``overrides``."""
        return cls.for_folder(str(getattr(pipe, "name_or_path", "") or ""), **overrides)

    @classmethod
    def for_folder(cls, folder: str | Path, **overrides) -> "LMDConfig":
        """The settings a model folder ships (its ``lmd_config.json``; none: the defaults), then ``overrides``;
        what :meth:`for_pipe` gives a pipeline loaded from ``folder``, without loading it."""
        settings: dict[str, Any] = {}
        folder = Path(folder)
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
