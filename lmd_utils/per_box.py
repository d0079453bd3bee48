"""Per-box generation (LMD §3.2, step 1): generate every object alone, steered into its box.

For box *i* with caption *c_i* LMD runs the diffusion model on the prompt ``"[background] with [c_i]"``, starting from
a noise that is the shared initial noise ``z_T`` everywhere except inside the box, where a little independent noise is
blended in (``√(1−r)·z_T + √r·z_i``, ``r = 0.01``) so objects do not all come out the same.  During the first steps the
latent is nudged by the box energy (``energy.py``, ``sampling.BoxGuidance``) so that the caption's attention gathers
inside the box.  We keep every step's latent and the mask-layer attention of the caption's object word: the masks
(``masks.py``) and the composition (``composition.py``) are made from them.

Where the object is generated (authors' default): not at its final place but **centred horizontally with its bottom
edge at 80 % of the height** ("floor padding" 0.2), same width and height as the target box; the composition later
shifts it to the target box.  ``placement="box"`` generates it in its real box instead (LMD+, which also grounds it
there with GLIGEN: ``LMDConfig.gligen_beta``, :mod:`lmd_utils.gligen`).

All boxes of a layout run **batched** (one UNet call for all boxes per step), unlike the authors' code that runs them one
after another; ``batch_size`` caps the batch when memory is short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .attention import (ALL_LAYERS, GUIDANCE_LAYERS, AttentionStore, capture_cross_attention, default_layers,
                        object_word, word_token_indices)
from .composition import frozen_step_count, predicted_x0
from .config import PER_BOX_NEGATIVE_PROMPT, LMDConfig
from .gligen import GligenGrounding
from .grammar import join_phrases
from .layout import Box, Layout
from .models import decode_latents, encode_prompts, initial_noise, latent_shape, model_dtype, scheduler_copy
from .sampling import BoxGuidance, ImageTargets, ObjectTarget, denoise

Placement = Literal["authors", "box"]

def per_box_prompt(background: str, caption: str) -> str:
    """The per-box prompt ``"[background] with [caption]"`` (authors' ``convert_spec``); just the caption if no background."""
    background = background.strip().rstrip(".")
    return f"{background} with {caption}" if background else caption


def generation_box(box: Box, placement: Placement = "authors", floor_padding: float = 0.2) -> Box:
    """Where box ``box``'s object is generated in its per-box pass.

    ``"authors"``: same size, centred horizontally, bottom edge at ``1 − floor_padding`` (authors' ``get_centered_box``
    with ``vertical_placement="floor_padding"``); a box taller than ``1 − floor_padding`` keeps its top at 0.
    ``"box"``: the target box itself.
    """
    if placement == "box":
        return box
    if placement != "authors":
        raise ValueError(f"placement must be 'authors' or 'box', not {placement!r}")
    x0 = 0.5 - box.width / 2
    y0 = max(1.0 - floor_padding - box.height, 0.0)
    return Box(box.phrase, x0, y0, x0 + box.width, y0 + box.height)


def blend_box_noise(shared_noise: torch.Tensor, box_noise: torch.Tensor, box_masks: torch.Tensor,
                    ratio: float = 0.01) -> torch.Tensor:
    """Per-box initial noise: ``√(1−r)·z_T + √r·z_i`` inside each box, ``z_T`` outside (authors' ``blend_latents``).

    ``shared_noise`` (1 or n, C, h, w); ``box_noise`` (n, C, h, w) independent noise per box; ``box_masks`` (n, h, w) in
    {0, 1} at latent resolution.  The mixture keeps unit variance, so it is still a valid ``z_T``.
    """
    if box_noise.shape[0] != box_masks.shape[0]:
        raise ValueError(f"{box_noise.shape[0]} noises for {box_masks.shape[0]} boxes")
    m = box_masks[:, None].to(shared_noise.dtype)
    inside = shared_noise * (1.0 - ratio) ** 0.5 + box_noise * ratio ** 0.5
    return shared_noise * (1 - m) + inside * m


@dataclass
class PerBoxPlan:
    """Everything the per-box pass needs, derived from a layout (pure data, easy to show in a notebook)."""

    prompts: list[str]
    words: list[str]
    generation_boxes: list[Box]
    target_boxes: list[Box]
    negative_prompt: str = PER_BOX_NEGATIVE_PROMPT
    seeds: list[int] = field(default_factory=list)


def plan_per_box(layout: Layout, seed: int, placement: Placement = "authors", floor_padding: float = 0.2,
                 negative_prompt: str = PER_BOX_NEGATIVE_PROMPT, box_seed_offset: int = 20,
                 box_seed_start: int | None = None) -> PerBoxPlan:
    """Prompts, object words, generation boxes and noise seeds of every box of ``layout``.

    The layout's own negative prompt (e.g. "birds" for "... without birds") is prepended to ``negative_prompt`` as the
    authors do.  Box *i*'s extra noise uses seed ``seed + box_seed_offset + i`` (the authors use a fixed 20 + i,
    independent of the image seed; we tie it to the seed so that different seeds give different objects).
    ``box_seed_start`` (``LMDConfig.box_seed_start``) gives the authors' seeds instead: ``box_seed_start + i``, plus
    12345 where that equals the image seed (``utils/latents.py:144-147``).
    """
    negative = join_phrases(layout.negative, negative_prompt)
    if box_seed_start is None:
        # modulo 2**64 so that the largest seeds a generator takes still work (box seeds wrap around)
        seeds = [(seed + box_seed_offset + i) % 2 ** 64 for i in range(len(layout.boxes))]
    else:
        seeds = [s + 12345 if s == seed else s for s in (box_seed_start + i for i in range(len(layout.boxes)))]
    return PerBoxPlan(
        prompts=[per_box_prompt(layout.background, b.phrase) for b in layout.boxes],
        words=[object_word(b.phrase) for b in layout.boxes],
        generation_boxes=[generation_box(b, placement, floor_padding) for b in layout.boxes],
        target_boxes=list(layout.boxes),
        negative_prompt=negative,
        seeds=seeds,
    )


# =============================================================================================================
# The per-box pass (LMD's step 1, as generate() runs it)
# =============================================================================================================
@dataclass
class PerBoxResult:
    """The per-box pass: one entry per box, in layout order."""

    plan: PerBoxPlan
    latents: torch.Tensor  # (S+1, n, C, h, w): x_T, then after each of the S = per_box_step_count steps run
    images: torch.Tensor  # (n, 3, H, W) in [0, 1] (the x_0 estimate when the pass stopped early)
    mask_maps: torch.Tensor  # (n, h', w') aggregated object-word attention on the mask layers (on the CPU)
    word_tokens: list[int]  # per box, the token of its object word (plan.words) in its prompt
    #: per box, the object word's attention ``{(layer, step): (heads, H, W)}`` on the guidance layers during the
    #: guided steps: the reference of the composed pass's attention transfer (empty when transfer is off)
    references: list[dict[tuple[str, int], torch.Tensor]]
    guidance: list[BoxGuidance]  # one hook per batch of boxes (one batch unless ``max_batch`` splits them)
    guidance_layers: tuple[str, ...] | str = GUIDANCE_LAYERS
    #: (n, C, h, w): the latents ``images`` were decoded from: ``latents[-1]``, or the x_0 estimate when the pass
    #: stopped early (``LMDConfig.per_box_stop="needed"``); what to show as "the per-box object"
    final_latents: torch.Tensor | None = None

    def energy_log(self, box: int) -> list[tuple[int, int, float]]:
        """``(step, iteration, energy)`` of box ``box``'s guidance, for plots."""
        start = 0
        for hook in self.guidance:
            if box < start + len(hook.targets):
                return hook.energies_by_element(box - start)
            start += len(hook.targets)
        raise IndexError(f"no box {box}")


def per_box_token_targets(tokenizer, layout: Layout, plan: PerBoxPlan,
                          skip_articles: bool = False) -> tuple[list[ImageTargets], list[int]]:
    """Per box, the energy target (its caption's tokens in its prompt, on its generation box) and the token of
    its object word.  Raises ``ValueError`` when a caption's words are not within the text encoder's tokens."""
    background_end = len(layout.background.strip().rstrip("."))  # the caption's tokens come after this
    targets, word_tokens = [], []
    for prompt, box, caption in zip(plan.prompts, plan.generation_boxes, (b.phrase for b in layout.boxes)):
        targets.append(ImageTargets(objects=(ObjectTarget.for_phrase(
            tokenizer, prompt, caption, box, start=background_end, skip_articles=skip_articles),)))
        word_tokens.append(word_token_indices(tokenizer, prompt, caption, start=background_end,
                                              last_token_only=True)[0])
    return targets, word_tokens


def per_box_step_count(config: LMDConfig) -> int:
    """Steps the per-box pass runs (``LMDConfig.per_box_stop``): all ``T``, or (``"needed"``) up to the last step
    whose output is read: the frozen steps' latents, the mask window (to ``mask_end_step`` unless ``mask_jumps``
    reach its rest, else one step from ``mask_start_step`` on), and with attention transfer the references of the
    composed pass's guided steps."""
    steps = config.num_inference_steps
    if config.per_box_stop == "end":
        return steps
    transfer = config.overall_guidance.guidance_steps if config.attention_transfer else 0
    if config.mask_jumps:
        masks = 0  # the jumps reach the mask window from wherever the pass stops
    else:
        masks = config.mask_end_step or config.mask_start_step + 1
    return min(steps, max(frozen_step_count(steps, config.frozen_ratio), masks, transfer, 1))


def mask_jump_steps(config: LMDConfig, run_steps: int) -> list[int]:
    """The steps ``LMDConfig.mask_jumps`` reaches after a stopped pass: that many, evenly spaced over the part of
    the mask window the pass did not run (``max(run_steps, mask_start_step)..mask_end_step−1``, else ``..T−1``), the
    last one included."""
    end = config.mask_end_step or config.num_inference_steps
    first = max(run_steps, config.mask_start_step)
    span = end - first
    if config.per_box_stop != "needed" or config.mask_jumps < 1 or span < 1:
        return []
    jumps = min(config.mask_jumps, span)
    return sorted({first - 1 + round((i + 1) * span / jumps) for i in range(jumps)})


def mask_steps(config: LMDConfig) -> list[int]:
    """The steps whose object-word attention the masks average: ``mask_start_step`` up to ``mask_end_step`` (else
    the last step the per-box pass runs), and the steps ``mask_jumps`` reach after a stopped pass."""
    run_steps = per_box_step_count(config)
    return sorted(_mask_window(config, run_steps) | set(mask_jump_steps(config, run_steps)))


def _mask_window(config: LMDConfig, run_steps: int) -> set[int]:
    """The mask window's steps the per-box pass runs (without the jumps)."""
    return set(range(config.mask_start_step, min(config.mask_end_step or run_steps, run_steps)))


@torch.no_grad()
def jump_for_masks(pipe, latents: torch.Tensor, x0: torch.Tensor, num_steps: int, start: int, targets: list[int],
                   cond: torch.Tensor, store: AttentionStore) -> torch.Tensor:
    """Deterministic DDIM jumps (η = 0) on the ``num_steps``-step schedule from ``latents`` (x at step ``start``) and
    its x_0 estimate ``x0`` to the steps ``targets`` (``LMDConfig.mask_jumps``): at each, ``x = √ᾱ·x̂_0 + √(1−ᾱ)·ε̂``
    and one UNet forward on the conditional embeddings ``cond`` only (the masks read the conditional attention; on
    the toy world the masks came as close to the full pass's without the unconditional half as with it, at half the
    cost), its attention into ``store`` as step ``k``, its output renewing x̂_0 and ε̂.  Returns the last x̂_0."""
    sched = scheduler_copy(pipe)
    sched.set_timesteps(num_steps, device=latents.device)
    alphas, kind, dtype = sched.alphas_cumprod.to(torch.float64), sched.config.prediction_type, model_dtype(pipe)

    def alpha(step: int) -> float:
        return float(alphas[int(sched.timesteps[step])])

    a = alpha(start)
    eps = (latents - a ** 0.5 * x0) / (1 - a) ** 0.5
    was_cfg, store.cfg_batch = store.cfg_batch, False
    try:
        for k in targets:
            a, t = alpha(k), sched.timesteps[k]
            x = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
            store.set_step(k)
            with capture_cross_attention(pipe.unet, store=store):
                model_in = sched.scale_model_input(x, t).to(dtype)
                noise = pipe.unet(model_in, t, encoder_hidden_states=cond.to(dtype), return_dict=False)[0]
            x0 = predicted_x0(x, noise.to(x.dtype), a, kind)
            eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
    finally:
        store.cfg_batch = was_cfg
    return x0


def run_per_box(pipe, layout: Layout, seed: int, config: LMDConfig, shared_noise: torch.Tensor,
                progress: bool = True) -> PerBoxResult:
    """Generate every box alone, guided into its generation box; keep latents and the object word's attention.

    All boxes share one batch (one UNet call per step) unless ``config.max_batch`` splits them; the authors run
    them one after another, which ``max_batch=1`` reproduces (same tensors, batched or not, up to float noise).
    With ``config.gligen_beta`` set (LMD+) every element is also GLIGEN-grounded on its generation box and caption.
    """
    # 1. what each box's pass needs: prompt, generation box, seed, start noise
    height, width = config.resolution(pipe)
    _, _, h, w = latent_shape(pipe, height, width)
    guidance_layers, default_mask_layers = default_layers(pipe.unet)
    mask_layers = config.mask_layers or default_mask_layers
    guidance_cfg = config.per_box_guidance.on_layers(guidance_layers)
    plan = plan_per_box(layout, seed, config.placement, config.floor_padding, config.per_box_negative_prompt,
                        box_seed_start=config.box_seed_start)
    n = len(plan.prompts)
    box_noise = initial_noise(pipe, n, height, width, plan.seeds)
    gen_masks = torch.stack([b.mask(h, w, rounding=config.box_rounding)
                             for b in plan.generation_boxes]).to(box_noise.device)
    start = blend_box_noise(shared_noise, box_noise, gen_masks, config.noise_blend_ratio)

    # 2. each box's energy targets (its caption's tokens) and its object word's token
    targets, word_tokens = per_box_token_targets(pipe.tokenizer, layout, plan, guidance_cfg.skip_articles)

    # 3. which attention to keep: the mask layers from mask_start_step on, the guidance layers on the steps the
    #    composed pass will transfer
    transfer_steps = set(range(config.overall_guidance.guidance_steps)) if config.attention_transfer else set()
    run_steps = per_box_step_count(config)  # T, or fewer with per_box_stop="needed"
    window = _mask_window(config, run_steps)
    jumps = mask_jump_steps(config, run_steps)  # LMDConfig.mask_jumps: the rest of the mask window, jumped to
    layers = [mask_layers] if isinstance(mask_layers, str) else list(mask_layers)
    if config.attention_transfer:
        layers += list(guidance_cfg.layers)
    layers = ALL_LAYERS if ALL_LAYERS in layers else tuple(dict.fromkeys(layers))

    # 4. denoise, all boxes in one batch (or max_batch at a time), guided by the box energy
    cond = encode_prompts(pipe, plan.prompts)
    uncond = encode_prompts(pipe, [plan.negative_prompt])
    chunk = config.max_batch or n
    hooks, latents, maps, references, finals = [], [], [], [], []
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        hook = BoxGuidance(targets[sl], guidance_cfg, box_rounding=config.box_rounding)
        grounding = [] if config.gligen_beta is None else [  # LMD+; first: the guidance runs the UNet too
            GligenGrounding([[b] for b in plan.generation_boxes[sl]], config.gligen_beta, config.gligen_guidance)]
        store = AttentionStore(layers=layers, keep="cond", token_indices=[[t] for t in word_tokens[sl]],
                               steps=window | transfer_steps)
        scale = config.guidance_scale if config.per_box_guidance_scale is None else config.per_box_guidance_scale
        result = denoise(pipe, start[sl], cond[sl], uncond, config.num_inference_steps, scale,
                         hooks=[*grounding, hook], attention_store=store, keep_latents=True, progress=progress,
                         max_steps=run_steps if run_steps < config.num_inference_steps else None,
                         uncond_every=config.per_box_uncond_every)
        hooks.append(hook)
        latents.append(result.latents_history)
        x0 = result.predicted_x0
        if jumps and x0 is not None:
            x0 = jump_for_masks(pipe, result.latents, x0, config.num_inference_steps, run_steps, jumps, cond[sl],
                                store)
        if run_steps < config.num_inference_steps and x0 is not None:
            finals.append(x0)  # stopped early: the images are the x_0 estimate
        else:
            finals.append(result.latents)
        maps.append(store.aggregate(layers=mask_layers, steps=window | set(jumps if x0 is not None else ())
                                    )[:, 0])  # (chunk, h', w'), word token
        guided = {r.layer for r in store.select(guidance_cfg.layers)}
        for e in range(sl.stop - sl.start):
            references.append({k: v for k, v in store.per_element_maps(e).items()
                               if k[1] in transfer_steps and k[0] in guided})
    latents_all = torch.cat(latents, dim=1)
    final = torch.cat(finals).to(shared_noise.device)
    images = decode_latents(pipe, final)
    return PerBoxResult(plan, latents_all, images, torch.cat(maps).cpu(), word_tokens, references, hooks,
                        guidance_cfg.layers, final.cpu())
