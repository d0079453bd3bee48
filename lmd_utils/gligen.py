"""GLIGEN's box grounding on our one denoising loop: the GLIGEN baseline, and the grounding LMD+ adds to LMD.

GLIGEN (Li et al. 2023, "Open-set grounded text-to-image generation") teaches a frozen Stable Diffusion to follow
boxes by adding ONE new layer to every transformer block, between its self-attention and its cross-attention: a
**gated self-attention** (diffusers' ``GatedSelfAttentionDense``, the "fuser").  Each box becomes a *grounding
token*: the caption's text feature (the CLIP text encoder's pooled output for the caption alone) joined to a
Fourier embedding of the box corners, through a small MLP (the UNet's ``position_net``).  The fuser lets the image
tokens attend to [image tokens; grounding tokens] and adds what they read through a learned gate ``tanh(α)``.  α
starts at 0, so the new layer starts as "do nothing" and the frozen model is unharmed while GLIGEN learns.  An image
always gets 30 tokens: the missing objects, and every object in the unconditional half of classifier-free guidance,
get a learned *null* token instead (``masks = 0``).

**Scheduled sampling** (β): the layout is decided in the first, noisy steps; the details look better without the
extra layer.  So the fusers are on for the first ``int(β·T)`` of the T steps and off after, when the UNet is plain
SD again (GLIGEN's paper; ``num_grounding_steps = int(beta * len(timesteps))`` in the authors' ``generate_gligen``).
Their GLIGEN and LMD+ runs use β = 0.4 (:data:`GLIGEN_BETA`).

:class:`GligenGrounding` is a hook for :func:`~lmd_utils.sampling.denoise` that grounds EVERY UNet forward of the
run (:meth:`GligenGrounding.attach`), including the guidance forwards of :class:`~lmd_utils.sampling.BoxGuidance`.
:func:`gligen_baseline` is the authors' GLIGEN run (``generation/gligen.py``); LMD+ (``generation/lmd_plus.py``) is
:func:`~lmd_utils.pipeline.generate` with :meth:`LMDConfig.lmd_plus <lmd_utils.config.LMDConfig.lmd_plus>`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
from diffusers.models.attention import GatedSelfAttentionDense

from .composition import overall_prompt_for
from .config import GLIGEN_BETA, LMDConfig
from .grammar import join_phrases
from .layout import Box, Layout
from .models import decode_latents, encode_prompts, initial_noise
from .sampling import GUIDED_ELEMENTS, denoise

#: Grounding tokens per image (``max_objs = 30`` in GLIGEN, diffusers and the authors' ``prepare_gligen_condition``).
MAX_OBJECTS = 30
#: The authors' GLIGEN checkpoint (``models.sd_key`` for ``gligen`` and ``lmd_plus``; SD 1.4 with GLIGEN's layers).
GLIGEN_MODEL = "gligen/diffusers-generation-text-box"

GuidanceGrounding = Literal["null", "boxes"]


class NotGligenError(ValueError):
    """GLIGEN grounding was asked of a model without GLIGEN's layers."""


def _unet(pipe_or_unet):
    return getattr(pipe_or_unet, "unet", pipe_or_unet)


def fusers(pipe_or_unet) -> list[GatedSelfAttentionDense]:
    """GLIGEN's gated self-attention layers of a pipe or UNet (one per transformer block; none in plain SD)."""
    return [m for m in _unet(pipe_or_unet).modules() if isinstance(m, GatedSelfAttentionDense)]


def is_gligen(pipe_or_unet) -> bool:
    """Whether the UNet has GLIGEN's text-box grounding: gated self-attention (``attention_type="gated"``) and the
    ``position_net`` that turns (caption, box) pairs into grounding tokens."""
    unet = _unet(pipe_or_unet)
    config = getattr(unet, "config", None)
    return (getattr(config, "attention_type", None) == "gated" and getattr(unet, "position_net", None) is not None
            and bool(fusers(unet)))


def check_gligen(pipe, method: str = "gligen") -> None:
    """:class:`NotGligenError` (a ``ValueError`` the command line prints as one line) unless ``pipe`` is GLIGEN."""
    if not is_gligen(pipe):
        name = getattr(pipe, "name_or_path", None) or "this model"
        raise NotGligenError(f"{method} needs a GLIGEN model (a UNet with gated self-attention, such as "
                             f"{GLIGEN_MODEL}); {name} has none")


@torch.no_grad()
def phrase_embeddings(pipe, phrases: Sequence[str]) -> torch.Tensor:
    """``(n, D)``: each caption's pooled CLIP text feature (``text_encoder(...).pooler_output``, the end token's
    final feature), as GLIGEN, diffusers and the authors compute it; captions alone, not inside a prompt."""
    encoder = pipe.text_encoder
    if not phrases:
        return torch.zeros(0, encoder.config.hidden_size, device=encoder.device, dtype=encoder.dtype)
    tokens = pipe.tokenizer(list(phrases), padding=True, truncation=True, max_length=pipe.tokenizer.model_max_length,
                            return_tensors="pt").to(encoder.device)
    return encoder(**tokens).pooler_output


@dataclass
class GroundedForward:
    """One grounded UNet forward: its step, its kind (``"cfg"``: the ``[uncond; cond]`` batch, ``"guidance"``: a
    guidance forward, ``"plain"``: a batch without CFG) and how many objects each row was grounded on."""

    step: int
    kind: str
    objects: list[int]


class GligenGrounding:
    """``denoise`` hook: GLIGEN grounding for every UNet forward of the run, on the first ``int(beta·T)`` steps.

    ``boxes[e]``: the boxes of batch element ``e`` (normalised ``x0, y0, x1, y1``; each box's ``phrase`` is its
    caption), at most :data:`MAX_OBJECTS`.  While attached (:meth:`attach`, entered by ``denoise``) a forward
    pre-hook on the UNet adds ``cross_attention_kwargs["gligen"]`` sized to each forward's batch:

    * the CFG batch ``[uncond; cond]`` (2n rows): null grounding for the unconditional rows (masks 0, the authors'
      ``masks[:condition_len // 2] = 0``), each element's boxes for the conditional rows;
    * a guidance forward (gradients on, latents that require them; rows = :data:`~lmd_utils.sampling.GUIDED_ELEMENTS`
      when set, else the whole batch): null grounding, as the authors' ``generate_gligen`` passes the unconditional
      half's zero masks to ``latent_backward_guidance``; ``guidance_grounding="boxes"`` gives those rows their
      boxes instead (not in the authors' code);
    * a batch of n rows without CFG: the boxes.

    Rows with masks 0 keep their boxes and captions, as the authors' do; the position net replaces them by its null
    features anyway.  :meth:`before_step` switches the fusers on for steps ``< int(beta·T)`` and off after (the
    later forwards get no grounding at all: the UNet is plain SD); :meth:`attach` restores the fusers' flags and
    removes the pre-hook on exit, also after an exception.  Put this hook BEFORE hooks that run the UNet
    (``BoxGuidance``), so that their forwards see this step's grounding (a forward at another timestep raises).
    ``log`` keeps one :class:`GroundedForward` per grounded forward.
    """

    def __init__(self, boxes: Sequence[Sequence[Box]], beta: float = GLIGEN_BETA,
                 guidance_grounding: GuidanceGrounding = "null") -> None:
        self.boxes = [list(b) for b in boxes]
        too_many = max((len(b) for b in self.boxes), default=0)
        if too_many > MAX_OBJECTS:
            raise ValueError(f"GLIGEN grounds at most {MAX_OBJECTS} objects per image, got {too_many}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"the scheduled-sampling beta must be in [0, 1], got {beta}")
        if guidance_grounding not in ("null", "boxes"):
            raise ValueError(f"guidance_grounding must be 'null' or 'boxes', got {guidance_grounding!r}")
        self.beta, self.guidance_grounding = beta, guidance_grounding
        self.log: list[GroundedForward] = []
        self._table: dict[str, torch.Tensor] = {}
        self._fusers: list[GatedSelfAttentionDense] = []
        self._step, self._timestep, self._grounded = -1, None, False

    def grounding_steps(self, num_steps: int) -> int:
        """The authors' ``num_grounding_steps = int(beta * len(timesteps))``."""
        return int(self.beta * num_steps)

    # -- the run ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def attach(self, pipe) -> Iterator["GligenGrounding"]:
        check_gligen(pipe, "GLIGEN grounding")
        unet = pipe.unet
        self._table = self._grounding_table(pipe)
        self._fusers = fusers(unet)
        flags = [f.enabled for f in self._fusers]
        handle = unet.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            for fuser, flag in zip(self._fusers, flags):
                fuser.enabled = flag
            self._step, self._timestep, self._grounded = -1, None, False

    def before_step(self, state) -> None:
        if len(self.boxes) != state.latents.shape[0]:
            raise ValueError(f"grounding for {len(self.boxes)} images, but the batch has {state.latents.shape[0]}")
        self._step, self._timestep = state.step, float(state.timestep)
        self._grounded = state.step < self.grounding_steps(state.num_steps)
        for fuser in self._fusers:  # the authors' gligen_enable_fuser: on, then off from step int(beta·T)
            fuser.enabled = self._grounded
        return None

    # -- what each forward gets -------------------------------------------------------------------------------
    def _grounding_table(self, pipe) -> dict[str, torch.Tensor]:
        """Per element: boxes ``(n, 30, 4)``, caption features ``(n, 30, D)`` and masks ``(n, 30)`` (1 = a box)."""
        unet, n = pipe.unet, len(self.boxes)
        phrases = [b.phrase for boxes in self.boxes for b in boxes]
        features = phrase_embeddings(pipe, phrases).to(unet.device, unet.dtype)
        if features.shape[-1] != unet.position_net.positive_len:
            raise ValueError(f"the text encoder's features have {features.shape[-1]} channels, GLIGEN's position net "
                             f"reads {unet.position_net.positive_len}")
        table = {"boxes": torch.zeros(n, MAX_OBJECTS, 4), "positive_embeddings": features.new_zeros(
            n, MAX_OBJECTS, features.shape[-1]), "masks": torch.zeros(n, MAX_OBJECTS)}
        start = 0
        for e, boxes in enumerate(self.boxes):
            k = len(boxes)
            table["boxes"][e, :k] = torch.tensor([list(b.bbox) for b in boxes]).reshape(k, 4)
            table["positive_embeddings"][e, :k] = features[start:start + k]
            table["masks"][e, :k] = 1
            start += k
        return {name: t.to(unet.device, unet.dtype) for name, t in table.items()}

    def rows(self, elements: Sequence[int], null: bool = False) -> dict[str, torch.Tensor]:
        """The ``gligen`` inputs of ``elements`` (one row each), with masks 0 if ``null``."""
        index = torch.tensor(list(elements), dtype=torch.long, device=self._table["masks"].device)
        rows = {name: t[index] for name, t in self._table.items()}
        if null:
            rows["masks"] = torch.zeros_like(rows["masks"])
        return rows

    def _inputs_for(self, sample: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
        batch, n = sample.shape[0], len(self.boxes)
        if torch.is_grad_enabled() and sample.requires_grad:
            elements = GUIDED_ELEMENTS.get()
            if elements is None and batch != n:
                raise ValueError(f"a guidance forward of {batch} rows for {n} grounded images: which images? "
                                 "(BoxGuidance.compute_energy says, through GUIDED_ELEMENTS)")
            return "guidance", self.rows(range(n) if elements is None else elements,
                                         null=self.guidance_grounding == "null")
        if batch == 2 * n:
            null, real = self.rows(range(n), null=True), self.rows(range(n))
            return "cfg", {name: torch.cat([null[name], real[name]]) for name in real}
        if batch == n:
            return "plain", self.rows(range(n))
        raise ValueError(f"a UNet batch of {batch} rows for {n} grounded images (expected {n} or {2 * n})")

    def _pre_forward(self, _unet, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        if self._timestep is None or float(timestep) != self._timestep:
            raise RuntimeError("GligenGrounding must come before the hooks that run the UNet (its before_step sets "
                               "each step's grounding)")
        if not self._grounded:
            return None
        kind, gligen = self._inputs_for(sample)
        self.log.append(GroundedForward(self._step, kind, [int(m.sum()) for m in gligen["masks"]]))
        extra = dict(kwargs.get("cross_attention_kwargs") or {})
        extra["gligen"] = gligen
        return args, {**kwargs, "cross_attention_kwargs": extra}


# -- the GLIGEN baseline -------------------------------------------------------------------------------------
def gligen_baseline(pipe, layout: Layout, seed: int = 0, config: LMDConfig | None = None, beta: float = GLIGEN_BETA,
                    progress: bool = True):
    """GLIGEN alone (the authors' ``generation/gligen.py``): ONE pass of the overall prompt, every box grounded on
    its caption for the first ``int(beta·T)`` steps (β 0.4), with the layout's negative prompt before LMD's overall
    negative prompt.  A layout without boxes is plain sampling of its background, as the other baselines do.
    Returns a :class:`~lmd_utils.baselines.BaselineResult` (method ``"gligen"``); a model without GLIGEN's layers
    raises :class:`NotGligenError` before anything runs."""
    from .baselines import BaselineResult  # imported here: baselines imports pipeline, which imports this module
    from .pipeline import check_layout

    check_gligen(pipe)
    config = config or LMDConfig.for_pipe(pipe)
    layout = check_layout(pipe, layout, config)
    negative = join_phrases(layout.negative, config.overall_negative_prompt)
    noise = initial_noise(pipe, 1, *config.resolution(pipe), seed)
    prompt, hooks = layout.background or layout.prompt, []
    if layout.boxes:  # the authors' overall prompt, every box grounded on its caption
        prompt = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)[0]
        hooks = [GligenGrounding([layout.boxes], beta)]
    result = denoise(pipe, noise, encode_prompts(pipe, [prompt]), encode_prompts(pipe, [negative]),
                     config.num_inference_steps, config.guidance_scale, hooks=hooks, progress=progress)
    return BaselineResult(decode_latents(pipe, result.latents)[0], "gligen", [prompt], negative)
