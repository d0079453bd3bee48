"""The one denoising loop (classifier-free guidance + hooks) and LMD's box guidance hook (paper §3.2).

:func:`denoise` runs any diffusers scheduler over a batch of independent images.  Everything LMD adds to plain
sampling is a *hook* called around each step:

* ``before_step(state) -> latents | None``: e.g. :class:`BoxGuidance`, the energy-gradient update
  ``z ← z − η·√(1−ᾱ_t)·∇_z E`` applied before the UNet's noise prediction;
* ``after_step(state) -> latents | None``: e.g. the composed pass's frozen foreground (composed per-box latents
  pasted into the masks for the first steps), :class:`~lmd_utils.composition.FrozenForeground`.

Return ``None`` to leave the latents alone.  ``state`` is a :class:`StepState`.  Hooks run in list order.  A hook
whose ``shares_forward(state)`` is true (:class:`BoxGuidance` with ``GuidanceConfig.shared_forward``) gets the
step's own forward instead: run with gradients, its guidance layers captured into ``shared_store(...)``, then
``shared_update(state, z, store)`` gives the latents the step is applied to.  A hook
with an ``attach(pipe)`` context manager acts on the model itself for the whole run (e.g. GLIGEN's grounding,
:class:`~lmd_utils.gligen.GligenGrounding`): it is entered before the first step and left after the last, also
after an exception.  The same loop serves vanilla
SD, the per-box pass (all boxes in one batch: latents ``(n, C, h, w)``, one prompt embedding per box) and the
composed pass, so their differences are only hooks and inputs.

Attention for the masks and for attention transfer is saved during the *real* denoising forward by passing
an :class:`~lmd_utils.attention.AttentionStore` (its ``steps`` says which steps; its ``keep="cond"`` keeps
the conditional half of the CFG batch).
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .attention import (AttentionStore, capture_cross_attention, phrase_token_indices,
                        reduce_over_heads, run_unet_until_captured)
from .config import GuidanceConfig
from .energy import attention_transfer_energy, box_energy
from .layout import Box, BoxRounding
from .models import batch_embeds, model_device, model_dtype, scheduler_copy, scheduler_step_kwargs
from .progress import progress_bar


# -- the loop ------------------------------------------------------------------------------------------
@dataclass
class StepState:
    """What a hook sees at step ``step`` (0-based) of ``num_steps``.

    ``latents`` are x_t before the step in ``before_step`` and x_{t-1} after it in ``after_step`` (where
    ``noise_pred``, the CFG-combined model output, is set too).  ``latents_history`` holds the CPU copies kept
    so far when ``keep_latents=True``.  ``extras`` is one dict shared by every step of the run (returned as
    :attr:`DenoiseResult.extras`), free for hooks to talk to each other.
    """

    step: int
    num_steps: int
    timestep: torch.Tensor
    latents: torch.Tensor
    scheduler: Any
    pipe: Any
    cond_embeds: torch.Tensor
    uncond_embeds: torch.Tensor | None
    guidance_scale: float
    noise_pred: torch.Tensor | None = None
    predicted_x0: torch.Tensor | None = None  # in ``after_step``: the scheduler's x_0 estimate, when it gives one
    latents_history: list[torch.Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class DenoiseResult:
    latents: torch.Tensor  # final x_0 latents (B, C, h, w)
    timesteps: torch.Tensor
    latents_history: torch.Tensor | None = None  # (T+1, B, C, h, w) on the CPU: x_T, then after each step
    attention_store: AttentionStore | None = None
    hooks: tuple = ()
    extras: dict[str, Any] = field(default_factory=dict)
    predicted_x0: torch.Tensor | None = None  # the scheduler's x_0 estimate at the last step run (None: not given)


def _call_hooks(hooks: Sequence, name: str, state: StepState) -> torch.Tensor:
    """Call ``hook.<name>(state)`` in list order; each hook sees the latents the previous one returned."""
    for hook in hooks:
        if hasattr(hook, name):
            new = getattr(hook, name)(state)
            if new is not None:
                state.latents = new.detach()
    return state.latents


def denoise(pipe, latents: torch.Tensor, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor | None,
            num_inference_steps: int = 50, guidance_scale: float = 7.5, scheduler=None, hooks: Sequence = (),
            attention_store: AttentionStore | None = None, progress: bool = True,
            generator: torch.Generator | None = None, keep_latents: bool = False, eta: float = 0.0,
            guidance_rescale: float = 0.0, max_steps: int | None = None, uncond_every: int = 1,
            uncond_from: int = 0) -> DenoiseResult:
    """Sample from x_T = ``latents`` with classifier-free guidance, calling ``hooks`` around each step.

    ``latents`` is unit-variance noise ``(B, C, h, w)`` (see :func:`~lmd_utils.models.initial_noise`); it is
    multiplied by the scheduler's ``init_noise_sigma`` as in diffusers.  ``cond_embeds``/``uncond_embeds``
    are ``(B or 1, L, D)`` (one unconditional embedding may serve the whole batch, as in the authors' per-box
    pass).  CFG runs when ``guidance_scale > 1``: ``ε = ε_u + s·(ε_c − ε_u)``, batch ``[uncond; cond]``.

    ``scheduler``: any diffusers scheduler; a fresh copy is made (``from_config``), so the caller's instance
    and ``pipe.scheduler`` are never stepped.  Default: DDIM with the pipe's scheduler config (the authors'
    sampler).  ``attention_store`` records the chosen layers during the real forward on ``store.steps``.
    ``keep_latents`` keeps every x_t on the CPU (the per-box pass needs them for composition).
    ``max_steps`` runs only the first ``max_steps`` steps of the ``num_inference_steps`` schedule (same timesteps;
    the per-box pass stops once the composition has what it reads, ``LMDConfig.per_box_stop``); the result's
    ``latents`` are then x_t of the step reached and ``predicted_x0`` the scheduler's x_0 estimate there.
    ``uncond_every`` > 1 runs the unconditional half only on every ``uncond_every``-th step (0, k, 2k, ...); the
    steps between run the conditional half alone and reuse the last ``ε_c − ε_u`` (``LMDConfig.per_box_uncond_every``,
    ``overall_uncond_every``); ``uncond_from`` runs both halves on every step before it and counts the ``k`` from
    there (``uncond_from, uncond_from + k, ...``; ``LMDConfig.overall_uncond_from``); ``guidance_rescale`` applies on
    the steps with both halves only.
    Same inputs (and ``generator`` for stochastic schedulers) give identical tensors.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (B, C, h, w), got {tuple(latents.shape)}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    unet = pipe.unet
    device, dtype = model_device(pipe), model_dtype(pipe)
    batch = latents.shape[0]
    do_cfg = guidance_scale > 1.0
    cond = batch_embeds(cond_embeds, batch, "cond_embeds", device, dtype)
    uncond = None
    if do_cfg:
        if uncond_embeds is None:
            raise ValueError("guidance_scale > 1 needs uncond_embeds (the embedding of the negative/empty prompt)")
        uncond = batch_embeds(uncond_embeds, batch, "uncond_embeds", device, dtype)
    embeds = torch.cat([uncond, cond]) if do_cfg else cond

    sched = scheduler_copy(pipe, scheduler)
    sched.set_timesteps(num_inference_steps, device=device)
    step_kwargs = scheduler_step_kwargs(sched, generator, eta)
    latents = latents.to(device=device, dtype=dtype) * sched.init_noise_sigma
    history = [latents.detach().cpu()] if keep_latents else None
    extras: dict[str, Any] = {}  # shared by all steps' states: hooks may leave notes for later steps
    if attention_store is not None:
        if attention_store.stop_after_last_layer:
            raise ValueError("the denoising forward must run to the end: use a store without stop_after_last_layer")
        attention_store.cfg_batch = do_cfg

    timesteps = sched.timesteps
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be None or >= 1, got {max_steps}")
    run_steps = timesteps[:max_steps] if max_steps is not None else timesteps
    predicted = delta = None
    if uncond_every < 1:
        raise ValueError(f"uncond_every must be >= 1, got {uncond_every}")
    if uncond_from < 0:
        raise ValueError(f"uncond_from must be >= 0, got {uncond_from}")
    with contextlib.ExitStack() as attached:  # hooks acting on the model for the whole run (see the module docstring)
        for hook in hooks:
            if hasattr(hook, "attach"):
                attached.enter_context(hook.attach(pipe))
        for i, t in enumerate(progress_bar(run_steps, desc="denoising", disable=not progress, leave=False)):
            state = StepState(step=i, num_steps=len(timesteps), timestep=t, latents=latents, scheduler=sched,
                              pipe=pipe, cond_embeds=cond, uncond_embeds=uncond, guidance_scale=guidance_scale,
                              latents_history=history, extras=extras)
            latents = _call_hooks(hooks, "before_step", state)

            # cond half only, with the last CFG delta, between every uncond_every-th step from uncond_from on
            reuse = do_cfg and delta is not None and i > uncond_from and (i - uncond_from) % uncond_every != 0
            both = do_cfg and not reuse
            # a hook whose guidance takes its gradient through this forward (GuidanceConfig.shared_forward)
            sharing = [h for h in hooks if hasattr(h, "shares_forward") and h.shares_forward(state)]
            if len(sharing) > 1:
                raise ValueError("at most one hook can share the denoising forward")
            z = latents.detach().requires_grad_(True) if sharing else latents
            capturing = attention_store is not None and attention_store.wants_step(i)
            capture = capture_cross_attention(unet, store=attention_store) if capturing else contextlib.nullcontext()
            shared = sharing[0].shared_store(i, both) if sharing else None
            with torch.enable_grad() if sharing else torch.no_grad(), capture, \
                    capture_cross_attention(unet, store=shared) if sharing else contextlib.nullcontext():
                if attention_store is not None:
                    attention_store.set_step(i)
                    attention_store.cfg_batch = both
                model_in = sched.scale_model_input(torch.cat([latents, z]) if both else z, t)
                noise = unet(model_in, t, encoder_hidden_states=embeds if both else cond, return_dict=False)[0]
            if sharing:  # the update from this forward's maps; the step applies its noise to the updated latents
                state.latents = latents = sharing[0].shared_update(state, z, shared)
                noise = noise.detach()
            if reuse:
                noise_cond = noise
                noise = noise_cond + (guidance_scale - 1) * delta
            elif do_cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                delta = noise_cond - noise_uncond if uncond_every > 1 else None
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                if guidance_rescale > 0:
                    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
                    noise = rescale_noise_cfg(noise, noise_cond, guidance_rescale=guidance_rescale)
            stepped = sched.step(noise, t, latents, **step_kwargs, return_dict=False)
            latents = stepped[0]
            predicted = stepped[1] if len(stepped) > 1 else None

            state.latents, state.noise_pred, state.predicted_x0 = latents, noise, predicted
            latents = _call_hooks(hooks, "after_step", state)
            if history is not None:
                history.append(latents.detach().cpu())

    return DenoiseResult(latents=latents, timesteps=timesteps.detach().cpu(),
                         latents_history=torch.stack(history) if history is not None else None,
                         attention_store=attention_store, hooks=tuple(hooks), extras=extras,
                         predicted_x0=predicted)


# -- box guidance ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectTarget:
    """One phrase: its box(es) (union mask, as the authors do for "two cats") and its tokens in the prompt."""

    boxes: tuple[Box, ...]
    token_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.boxes or not self.token_indices:
            raise ValueError("an ObjectTarget needs at least one box and one token index")

    @classmethod
    def for_phrase(cls, tokenizer, prompt: str, phrase: str, boxes: Box | Sequence[Box], start: int = 0,
                   **kwargs) -> "ObjectTarget":
        """Tokens from :func:`~lmd_utils.attention.phrase_token_indices` (whole words, last occurrence)."""
        boxes = (boxes,) if isinstance(boxes, Box) else tuple(boxes)
        return cls(boxes, tuple(phrase_token_indices(tokenizer, prompt, phrase, start=start, **kwargs)))


@dataclass(frozen=True)
class TransferTarget:
    """One box of the composed pass pulled towards its per-box attention (LMD's attention transfer).

    ``reference[(layer, step)]`` is the per-box map ``(heads, H, W)`` of the box's word token for each guidance
    layer (full module name) and step, already moved to the box's place in the composed image
    (:meth:`~lmd_utils.attention.AttentionStore.per_element_maps` gives this format).  ``object_index`` names
    the :class:`ObjectTarget` it belongs to, so boxes of one phrase share that phrase's weight as in the
    authors' code.
    """

    box: Box
    token_index: int
    reference: Mapping[tuple[str, int], torch.Tensor]
    object_index: int | None = None


@dataclass(frozen=True)
class ImageTargets:
    """What one batch element is guided towards: phrase boxes, and optionally attention-transfer references."""

    objects: tuple[ObjectTarget, ...] = ()
    transfers: tuple[TransferTarget, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.objects or self.transfers)


@dataclass
class GuidanceLogEntry:
    step: int
    iteration: int
    elements: list[int]  # batch elements evaluated in this iteration
    energies: list[float]  # their energies before this iteration's update
    updated: list[bool]  # whether each was above the threshold (and so updated)
    step_size: float  # loss_scale · √(1 − ᾱ_t) (or σ_t² for σ-space schedulers)


def guidance_step_scale(scheduler, timestep: torch.Tensor, step: int) -> float:
    """The factor multiplying the energy gradient at this step, as in the authors' ``latent_backward_guidance``.

    ``√(1 − ᾱ_t)`` for schedulers working on ᾱ-scaled latents (DDIM, PNDM, DPM-Solver: classifier guidance
    à la Dhariwal & Nichol); ``σ_t²`` for σ-parameterised ones whose latents have ``init_noise_sigma > 1``
    (Euler, LMS, Heun; the authors' ``scheduler.sigmas[index] ** 2``).  Works for ε- and v-prediction alike
    since it depends only on the noise level.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and float(scheduler.init_noise_sigma) > 1.0:
        return float(sigmas[min(step, len(sigmas) - 1)]) ** 2
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None:
        t = int(timestep.item()) if torch.is_tensor(timestep) else int(timestep)
        return math.sqrt(1.0 - float(alphas[t]))
    return 1.0


#: The batch elements (indices into the run's batch, in row order) of the guidance forward running now, set by
#: :meth:`BoxGuidance.compute_energy` for model hooks that give each row its own inputs (GLIGEN's grounding).
GUIDED_ELEMENTS: ContextVar[tuple[int, ...] | None] = ContextVar("guided_elements", default=None)

#: The authors' initial loss (``loss = torch.tensor(10000.)``), for ``GuidanceConfig.stop_rule="authors"``.
AUTHORS_INITIAL_LOSS = 10000.0


class BoxGuidance:
    """``before_step`` hook: move the latents down the gradient of the box energy (paper §3.2).

    For each guided step (``config.guidance_steps``, ``config.iterations``) and each iteration: one UNet
    forward on the CONDITIONAL embeddings only, capturing the guidance layers with gradients (truncated after
    the last of them); per batch element the energy (the authors' averaging)

        E = mean over layers ℓ of [ mean over objects o of  mean over o's tokens k of  heads(box_energy(A_ℓ,k, b_o))
                                   + λ · mean over phrases p of  mean over p's boxes i of  mean_heads(transfer(A_ℓ,k_i, R_ℓ,i, b_i)) ]

    with ``box_energy`` and ``transfer`` from :mod:`~lmd_utils.energy`, ``b_o`` the union of an object's boxes,
    ``heads`` the configured head reduction and ``R`` the per-box reference maps.  Elements above
    ``loss_threshold`` are updated ``z ← z − loss_scale · scale_t · ∇_z E`` (:func:`guidance_step_scale`), the
    others stop for this step (``stop_rule="current"``; ``"authors"``: see :meth:`_authors_before_step`).  Batch
    elements are independent (each has its own :class:`ImageTargets`), so one
    batched forward serves every box of the per-box pass.  ``log`` keeps one :class:`GuidanceLogEntry` per
    iteration.  With ``shared_forward`` the last iteration of a step has no forward of its own: the loop's denoising
    forward provides the maps (:meth:`shares_forward`, :meth:`shared_store`, :meth:`shared_update`).
    """

    def __init__(self, targets: Sequence[ImageTargets], config: GuidanceConfig | None = None,
                 box_rounding: BoxRounding = "edges"):
        self.targets = [t if isinstance(t, ImageTargets) else ImageTargets(*t) for t in targets]
        self.config = config or GuidanceConfig()
        self.box_rounding = box_rounding  # how boxes land on the attention grids (LMDConfig.box_rounding)
        self.log: list[GuidanceLogEntry] = []
        self._masks: dict[tuple[tuple[Box, ...], int, int], torch.Tensor] = {}
        #: per element, the loss the authors' stop rule tests (``stop_rule="authors"``): the previous forward's
        self.carried_loss = [AUTHORS_INITIAL_LOSS] * len(self.targets)

    # -- the energy -----------------------------------------------------------------------------------
    def box_mask(self, boxes: Sequence[Box], h: int, w: int, device) -> torch.Tensor:
        """The union of ``boxes`` on an ``h``×``w`` grid (cached: the same boxes come back every iteration)."""
        key = (tuple(boxes), h, w)
        if key not in self._masks:
            self._masks[key] = torch.stack([b.mask(h, w, rounding=self.box_rounding) for b in boxes]).amax(0)
        return self._masks[key].to(device)

    def object_energy(self, maps: torch.Tensor, obj: ObjectTarget) -> torch.Tensor:
        """Mean over the object's tokens of the head-reduced box energy; ``maps`` ``(tokens, heads, H, W)``."""
        cfg = self.config
        mask = self.box_mask(obj.boxes, *maps.shape[-2:], maps.device)
        energy = box_energy(maps[list(obj.token_indices)], mask, cfg.top_fraction, cfg.inside_weight,
                            cfg.outside_weight)  # (tokens, heads)
        return reduce_over_heads(energy, cfg.head_reduction, dim=1).mean()

    def transfer_energy(self, maps: torch.Tensor, transfers: Sequence[TransferTarget], layer: str,
                        step: int) -> torch.Tensor:
        """Mean over phrases of the mean over their boxes of the head-averaged transfer energy (the boxes of one
        phrase share that phrase's weight, as in the authors' code; a box without a phrase is its own)."""
        by_phrase: dict[Any, list[torch.Tensor]] = {}
        for k, tr in enumerate(transfers):
            ref = tr.reference.get((layer, step))
            if ref is None:
                raise KeyError(f"attention-transfer reference misses layer {layer!r} at step {step}")
            if tuple(ref.shape) != tuple(maps.shape[1:]):
                raise ValueError(f"reference map {tuple(ref.shape)} does not match {tuple(maps.shape[1:])} "
                                 f"(heads, H, W) of layer {layer!r}")
            mask = self.box_mask((tr.box,), *maps.shape[-2:], maps.device)
            energy = attention_transfer_energy(maps[tr.token_index], ref.to(maps.device, torch.float32), mask)
            by_phrase.setdefault(tr.object_index if tr.object_index is not None else ("own", k), []).append(
                energy.mean())
        return torch.stack([torch.stack(group).mean() for group in by_phrase.values()]).mean()

    def energy_from_store(self, store: AttentionStore, elements: Sequence[int], step: int) -> torch.Tensor:
        """Energies ``(len(elements),)`` from maps captured for the batch ``elements`` (in that order)."""
        layers = store.recorded_layers
        if not layers:
            raise RuntimeError("no guidance maps were captured")
        if self.config.batched_energy:
            return torch.stack([self._batched_layer_energy(store.get(layer, step), elements, layer, step)
                                for layer in layers]).mean(0)
        energies = []
        for row, element in enumerate(elements):
            target = self.targets[element]
            per_layer = []
            for layer in layers:
                maps = store.get(layer, step)[row].float().permute(3, 0, 1, 2)  # (tokens, heads, H, W)
                energy = maps.new_zeros(())
                if target.objects:
                    energy = energy + torch.stack([self.object_energy(maps, o) for o in target.objects]).mean()
                if target.transfers:
                    energy = energy + self.config.transfer_weight * self.transfer_energy(
                        maps, target.transfers, layer, step)
                per_layer.append(energy)
            energies.append(torch.stack(per_layer).mean())
        return torch.stack(energies)

    def _batched_layer_energy(self, probs: torch.Tensor, elements: Sequence[int], layer: str, step: int
                              ) -> torch.Tensor:
        """One layer's energies ``(len(elements),)`` with every term in one call (``batched_energy``): the same sums
        as :meth:`energy_from_store`, as weights (``1/(objects · tokens)``, ``λ/(phrases · boxes)``) on gathered maps."""
        cfg, probs = self.config, probs.float()  # (batch, heads, H, W, tokens)
        h, w, dev = probs.shape[2], probs.shape[3], probs.device
        rows, tokens, boxes, weights, refs = [], [], [], [], []
        t_rows, t_tokens, t_boxes, t_weights = [], [], [], []
        for row, element in enumerate(elements):
            target = self.targets[element]
            for obj in target.objects:
                for k in obj.token_indices:
                    rows.append(row), tokens.append(k), boxes.append(obj.boxes)
                    weights.append(1.0 / (len(target.objects) * len(obj.token_indices)))
            groups: dict[Any, int] = {}
            for k, tr in enumerate(target.transfers):
                key = tr.object_index if tr.object_index is not None else ("own", k)
                groups[key] = groups.get(key, 0) + 1
            for k, tr in enumerate(target.transfers):
                ref = tr.reference.get((layer, step))
                if ref is None:
                    raise KeyError(f"attention-transfer reference misses layer {layer!r} at step {step}")
                if tuple(ref.shape) != tuple(probs.shape[1:4]):
                    raise ValueError(f"reference map {tuple(ref.shape)} does not match {tuple(probs.shape[1:4])} "
                                     f"(heads, H, W) of layer {layer!r}")
                key = tr.object_index if tr.object_index is not None else ("own", k)
                t_rows.append(row), t_tokens.append(tr.token_index), t_boxes.append((tr.box,)), refs.append(ref)
                t_weights.append(cfg.transfer_weight / (len(groups) * groups[key]))
        out = probs.new_zeros(len(elements))
        for kind, (r, t, b, wt) in (("box", (rows, tokens, boxes, weights)), ("transfer", (t_rows, t_tokens, t_boxes,
                                                                                          t_weights))):
            if not r:
                continue
            r_idx, t_idx = torch.tensor(r, device=dev), torch.tensor(t, device=dev)
            maps = probs[r_idx, :, :, :, t_idx]  # (terms, heads, H, W)
            masks = torch.stack([self.box_mask(bb, h, w, dev) for bb in b])[:, None]
            if kind == "box":
                energy = reduce_over_heads(box_energy(maps, masks, cfg.top_fraction, cfg.inside_weight,
                                                      cfg.outside_weight), cfg.head_reduction, dim=1)
            else:
                reference = torch.stack([ref.to(dev, torch.float32) for ref in refs])
                energy = attention_transfer_energy(maps, reference, masks).mean(1)
            out = out.index_add(0, r_idx, energy * torch.tensor(wt, device=dev, dtype=energy.dtype))
        return out

    def compute_energy(self, pipe, latents: torch.Tensor, timestep, step: int, cond_embeds: torch.Tensor,
                       scheduler, elements: Sequence[int] | None = None) -> torch.Tensor:
        """E for ``latents`` (the batch ``elements`` of the targets), differentiable in ``latents``."""
        elements = list(range(len(self.targets))) if elements is None else list(elements)
        if latents.shape[0] != len(elements) or cond_embeds.shape[0] != len(elements):
            raise ValueError(f"latents {tuple(latents.shape)} / embeds {tuple(cond_embeds.shape)} do not match "
                             f"{len(elements)} guided elements")
        store = AttentionStore(layers=self.config.layers, keep="all", keep_grad=True,
                               stop_after_last_layer=self.config.truncate_forward)
        store.cfg_batch = False
        store.set_step(step)
        rows = GUIDED_ELEMENTS.set(tuple(elements))
        try:
            with torch.enable_grad(), capture_cross_attention(pipe.unet, store=store):
                model_in = scheduler.scale_model_input(latents, timestep)
                run_unet_until_captured(pipe.unet, model_in, timestep, cond_embeds, store)
                return self.energy_from_store(store, elements, step)
        finally:
            GUIDED_ELEMENTS.reset(rows)

    # -- the hook ------------------------------------------------------------------------------------------
    @torch.enable_grad()  # callers (e.g. pipeline.generate) may run the loop under no_grad
    def before_step(self, state: StepState) -> torch.Tensor | None:
        cfg = self.config
        n_iter = cfg.iterations_at(state.step) - (1 if self.shares_forward(state) else 0)
        if len(self.targets) != state.latents.shape[0]:
            raise ValueError(f"{len(self.targets)} targets for a batch of {state.latents.shape[0]}")
        active = [e for e, t in enumerate(self.targets) if t]
        if n_iter == 0 or not active:
            return None
        if cfg.stop_rule == "authors":
            return self._authors_before_step(state, active, n_iter)
        scale = guidance_step_scale(state.scheduler, state.timestep, state.step)
        latents = state.latents.detach().clone()
        for it in range(n_iter):
            idx = torch.tensor(active, device=latents.device)
            z = latents[idx].detach().requires_grad_(True)
            energy = self.compute_energy(state.pipe, z, state.timestep, state.step, state.cond_embeds[idx],
                                         state.scheduler, active)
            moved, above = self._descend(z, energy, active, state.step, it, scale)
            if moved is None:
                break
            latents[idx] = moved
            active = [e for e, a in zip(active, above.tolist()) if a]
        return latents

    def _descend(self, z: torch.Tensor, energy: torch.Tensor, elements: list[int], step: int, iteration: int,
                 scale: float) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One iteration's update (``stop_rule="current"``): logged; ``z − loss_scale · scale · ∇_z E`` over the
        ``elements`` above the threshold (``None`` when none is), and which ones were."""
        cfg = self.config
        above = energy.detach() > cfg.loss_threshold
        self.log.append(GuidanceLogEntry(step, iteration, list(elements), energy.detach().cpu().tolist(),
                                         above.cpu().tolist(), cfg.loss_scale * scale))
        if not bool(above.any()):
            return None, above
        grad = torch.autograd.grad(energy[above].sum(), z)[0]
        return (z - (cfg.loss_scale * scale) * grad.to(z.dtype)).detach(), above

    # -- GuidanceConfig.shared_forward: the last iteration through the denoising forward ------------------
    def shares_forward(self, state: StepState) -> bool:
        """Whether this step's last iteration takes its gradient through the loop's own forward."""
        return self.config.shared_forward and self.config.iterations_at(state.step) > 0 and any(self.targets)

    def shared_store(self, step: int, cfg_batch: bool) -> AttentionStore:
        """The store the loop captures the guidance layers into, with gradients, on its forward of ``step``."""
        store = AttentionStore(layers=self.config.layers, keep="cond", keep_grad=True, grad_until_last_layer=True)
        store.cfg_batch = cfg_batch
        store.set_step(step)
        return store

    @torch.enable_grad()
    def shared_update(self, state: StepState, z: torch.Tensor, store: AttentionStore) -> torch.Tensor:
        """The latents ``z`` (the forward's conditional input) moved down the gradient of the energy of ``store``'s
        maps: the same update as an iteration of :meth:`before_step`, from the loop's forward."""
        active = [e for e, t in enumerate(self.targets) if t]
        energy = self.energy_from_store(store, list(range(len(self.targets))), state.step)[active]
        moved, _ = self._descend(z, energy, active, state.step, self.config.iterations_at(state.step) - 1,
                                 guidance_step_scale(state.scheduler, state.timestep, state.step))
        return z.detach() if moved is None else moved

    def _authors_before_step(self, state: StepState, active: list[int], n_iter: int) -> torch.Tensor:
        """The authors' loop (``models/pipelines.py:30, :161, :552``): ``while loss > threshold and iteration <
        max_iter``, ``loss`` being the energy of the previous forward (before the last update), carried across
        steps in :attr:`carried_loss` (initially 10000).  Every element still looping is updated, whatever its
        current energy."""
        cfg = self.config
        scale = guidance_step_scale(state.scheduler, state.timestep, state.step)
        latents = state.latents.detach().clone()
        for it in range(n_iter):
            active = [e for e in active if self.carried_loss[e] > cfg.loss_threshold]
            if not active:
                break
            idx = torch.tensor(active, device=latents.device)
            z = latents[idx].detach().requires_grad_(True)
            energy = self.compute_energy(state.pipe, z, state.timestep, state.step, state.cond_embeds[idx],
                                         state.scheduler, active)
            grad = torch.autograd.grad(energy.sum(), z)[0]
            latents[idx] = latents[idx] - (cfg.loss_scale * scale) * grad.to(latents.dtype)
            values = energy.detach().cpu().tolist()
            for e, v in zip(active, values):
                self.carried_loss[e] = v
            self.log.append(GuidanceLogEntry(state.step, it, list(active), values, [True] * len(active),
                                             cfg.loss_scale * scale))
        return latents

    def energies_by_element(self, element: int) -> list[tuple[int, int, float]]:
        """``(step, iteration, energy)`` of one batch element, for plots of the guidance's progress."""
        out = []
        for entry in self.log:
            if element in entry.elements:
                out.append((entry.step, entry.iteration, entry.energies[entry.elements.index(element)]))
        return out
