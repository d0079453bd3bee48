"""Cross-attention maps of the UNet: capture, aggregation, and which tokens belong to a phrase.

LMD reads and steers the UNet's cross-attention probabilities ``A = softmax(q kᵀ / √d)`` (paper §3.2):
the guidance energy (Eq. for the BoxDiff-style energy, :mod:`lmd_utils.energy`) uses the maps of the layers in
:data:`GUIDANCE_LAYERS`; the per-box masks come from :data:`MASK_LAYERS` averaged over steps 10..50.

How the capture works
---------------------
:func:`capture_cross_attention` swaps the attention *processor* of the chosen ``attn2`` (cross-attention)
modules only, and restores the originals on exit, even when the body raises.  Every other layer keeps the
fast SDPA processor.  The capturing processor lets the original processor compute the layer's output (so the
UNet's result is bit-identical with and without capture) and recomputes the probabilities from the same
``q`` and ``k`` (one extra ``to_q``/``to_k`` projection and ``q kᵀ`` per captured layer, on the conditional half
only when the store keeps that half of a classifier-free-guidance batch).  Probabilities are
computed in float32 whatever the model's dtype.

Conventions
-----------
* A classifier-free-guidance batch is ``[uncond; cond]`` (diffusers' order); ``keep="cond"`` keeps the second half.
* Records are ``(batch, heads, H, W, tokens)``; ``H, W`` follow the latent's aspect ratio (read from the UNet
  input by a forward pre-hook).
* Layer names: the prefix of a ``Transformer2DModel`` (``"up_blocks.1.attentions.0"``) selects every
  ``transformer_blocks.*.attn2`` under it (one for SD 1.x/2.x, several for SDXL); a full name
  (``"...transformer_blocks.0.attn2"``) selects one module.  Records carry the full module name.

It is one module of about 550 lines because capture, aggregation and token lookup are one lesson (notebook 01): a map
means nothing without the layer it came from and the token it belongs to.
"""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from dataclasses import dataclass
from typing import Any, Container, Iterator, Sequence

import torch
import torch.nn.functional as F

from .grammar import ARTICLES

#: The authors' guidance layers (``DEFAULT_GUIDANCE_ATTN_KEYS``: the mid block and the first cross-attention up
#: block; 8×8 and 16×16 maps for a 512×512 SD image).
GUIDANCE_LAYERS: tuple[str, ...] = (
    "mid_block.attentions.0",
    "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
)
#: The authors' layer for per-box masks (``obj_attn_key = ("down", 2, 1, 0)``, 16×16 for 512×512 SD images).
MASK_LAYERS: tuple[str, ...] = ("down_blocks.2.attentions.1",)
ALL_LAYERS = "all"



class _StopForward(Exception):
    """Raised by a capturing processor once every needed layer has run (see :func:`run_unet_until_captured`)."""


# -- layer names ----------------------------------------------------------------------------------
_MODULES_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """All cross-attention ``Attention`` modules of ``unet`` by full name (``...attn2`` in SD's UNets).

    Found once per UNet (a walk over every module costs about a millisecond, and the loop asks on every captured
    step); the walk is redone if a found module has left the UNet."""
    cached = _MODULES_CACHE.get(unet)
    if cached is not None:
        try:
            if all(unet.get_submodule(n) is m for n, m in cached.items()):
                return dict(cached)
        except AttributeError:  # a path that no longer exists
            pass
    found = {}
    for name, module in unet.named_modules():
        if hasattr(module, "set_processor") and getattr(module, "is_cross_attention", False):
            found[name] = module
    _MODULES_CACHE[unet] = found
    return dict(found)


def resolve_layers(unet: torch.nn.Module, layers: str | Sequence[str]) -> dict[str, torch.nn.Module]:
    """Map layer names or prefixes (or ``"all"``, alone or inside the sequence) to the cross-attention modules they
    select, in UNet order."""
    modules = cross_attention_modules(unet)
    if isinstance(layers, str):
        layers = (layers,)
    if ALL_LAYERS in layers:
        return modules
    chosen: dict[str, torch.nn.Module] = {}
    for layer in layers:
        hits = [n for n in modules if n == layer or n.startswith(layer.rstrip(".") + ".")]
        if not hits:
            prefixes = sorted({re.sub(r"\.transformer_blocks\.\d+\.attn2$", "", n) for n in modules})
            raise ValueError(f"no cross-attention layer matches {layer!r}; this UNet has: {prefixes}")
        for n in hits:
            chosen[n] = modules[n]
    return {n: modules[n] for n in modules if n in chosen}


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


def _matches(name: str, layers: str | Sequence[str] | None) -> bool:
    if isinstance(layers, str):
        layers = (layers,)
    if layers is None or ALL_LAYERS in layers:
        return True
    return any(name == l or name.startswith(l.rstrip(".") + ".") for l in layers)


# -- the probabilities ------------------------------------------------------------------------------
def cross_attention_probs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                          attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask)`` of a diffusers ``Attention`` module: ``(batch, heads, queries, keys)``.

    Mirrors the pre-processing of diffusers' ``AttnProcessor``/``AttnProcessor2_0`` (spatial norm, 4-D input,
    group norm, ``norm_cross``, ``norm_q``/``norm_k``, the attention mask) so the probabilities are the ones
    the layer really uses.  Scores and softmax are computed in float32.
    """
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch, _, _ = hidden_states.shape
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, key.shape[-2], batch)
        scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1]).float()
    return scores.softmax(dim=-1)


def _grid_for(num_queries: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """``(H, W)`` of an attention layer with ``num_queries`` positions, from the latent's size.

    Each UNet level halves the size with ``ceil`` (stride-2 convs with padding 1), so we try ``2^k`` factors.
    """
    if latent_hw is not None:
        h, w = latent_hw
        for k in range(12):
            hh, ww = math.ceil(h / 2 ** k), math.ceil(w / 2 ** k)
            if hh * ww == num_queries:
                return hh, ww
    side = math.isqrt(num_queries)
    if side * side != num_queries:
        raise ValueError(f"cannot recover a grid for {num_queries} queries (latent size {latent_hw})")
    return side, side


# -- the store -----------------------------------------------------------------------------------------
@dataclass
class AttentionRecord:
    layer: str  # full module name
    step: int
    probs: torch.Tensor  # (batch, heads, H, W, tokens)


class AttentionStore:
    """Captured cross-attention maps and what to capture.

    Parameters
    ----------
    layers: names/prefixes (or ``"all"``) of the cross-attention layers to capture.
    keep: ``"cond"`` keeps the conditional half of a ``[uncond; cond]`` batch (set ``cfg_batch=False`` for a
        batch without unconditional half, e.g. the guidance forward); ``"all"`` keeps the whole batch.
    token_indices: ``None`` (all tokens), one list of token positions for every batch element, or one list per
        (kept) batch element, all of the same length (e.g. each box's word token in the batched per-box pass).
    keep_grad: keep the autograd graph (guidance needs differentiable maps); otherwise maps are detached.
    steps: the loop's step indices to record in (``None``: all); :func:`~lmd_utils.sampling.denoise` only
        installs the capture on these steps, so the others run at full speed.
    offload: move detached maps to the CPU (memory for long runs on "all" layers).
    stop_after_last_layer: raise a private exception once every chosen layer has run in a forward, so
        :func:`run_unet_until_captured` can skip the rest of the UNet.
    grad_until_last_layer: switch autograd off once every chosen layer has run, so the rest of the forward builds no
        graph (the guidance through the denoising forward, ``GuidanceConfig.shared_forward``); the forward's caller
        restores the grad mode afterwards (e.g. by leaving a ``torch.enable_grad()`` block).
    """

    def __init__(self, layers: str | Sequence[str] = GUIDANCE_LAYERS, keep: str = "cond",
                 token_indices: Sequence[int] | Sequence[Sequence[int]] | None = None, keep_grad: bool = False,
                 steps: Container[int] | None = None, offload: bool = False, stop_after_last_layer: bool = False,
                 grad_until_last_layer: bool = False):
        if keep not in ("cond", "all"):
            raise ValueError(f"keep must be 'cond' or 'all', got {keep!r}")
        self.layers = layers
        self.keep = keep
        self.token_indices = token_indices
        self.keep_grad = keep_grad
        self.steps = steps
        self.offload = offload
        self.stop_after_last_layer = stop_after_last_layer
        self.grad_until_last_layer = grad_until_last_layer
        self.cfg_batch = True  # whether a captured batch is [uncond; cond]; only matters for keep="cond"
        self.step = 0
        self.records: list[AttentionRecord] = []
        self.latent_hw: tuple[int, int] | None = None
        self._needed: set[str] = set()
        self._seen: set[str] = set()

    # -- bookkeeping used by the loop --------------------------------------------------------------
    def set_step(self, step: int) -> None:
        self.step = int(step)

    def wants_step(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)

    # -- recording (called by the processors) --------------------------------------------------------
    def _record(self, layer: str, probs: torch.Tensor, halved: bool = False) -> None:
        """``probs`` (batch, heads, queries, tokens) → kept part as (batch, heads, H, W, tokens); ``halved``: the
        capture computed the kept (conditional) half only."""
        if self.keep == "cond" and self.cfg_batch and not halved:
            if probs.shape[0] % 2:
                raise ValueError(f"keep='cond' needs an [uncond; cond] batch, got batch {probs.shape[0]}; "
                                 "use keep='all' or set store.cfg_batch = False")
            probs = probs[probs.shape[0] // 2:]
        probs = self._select_tokens(probs)
        if not self.keep_grad:
            probs = probs.detach()
            if self.offload:
                probs = probs.cpu()
        h, w = _grid_for(probs.shape[2], self.latent_hw)
        probs = probs.unflatten(2, (h, w))
        self.records.append(AttentionRecord(layer, self.step, probs))

    def _select_tokens(self, probs: torch.Tensor) -> torch.Tensor:
        idx = self.token_indices
        if idx is None:
            return probs
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=probs.device)
        if idx_t.ndim == 1:
            return probs[..., idx_t]
        if idx_t.ndim != 2 or idx_t.shape[0] != probs.shape[0]:
            raise ValueError(f"per-element token_indices must be (batch={probs.shape[0]}, k), got {tuple(idx_t.shape)}")
        b, heads, q, _ = probs.shape
        gather = idx_t[:, None, None, :].expand(b, heads, q, idx_t.shape[1])
        return probs.gather(-1, gather)

    # -- reading ---------------------------------------------------------------------------------------
    def select(self, layers: str | Sequence[str] | None = None, steps: Container[int] | None = None
               ) -> list[AttentionRecord]:
        return [r for r in self.records if _matches(r.layer, layers) and (steps is None or r.step in steps)]

    def get(self, layer: str, step: int) -> torch.Tensor:
        """The one record of ``layer`` (full name or prefix selecting one module) at ``step``."""
        hits = self.select(layer, (step,))
        if len(hits) != 1:
            raise KeyError(f"expected one record for layer {layer!r} at step {step}, found {len(hits)}")
        return hits[0].probs

    @property
    def recorded_layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.records))

    @property
    def recorded_steps(self) -> list[int]:
        return sorted({r.step for r in self.records})

    def aggregate(self, layers: str | Sequence[str] | None = None, steps: Container[int] | None = None,
                  size: int | tuple[int, int] | None = None, reduce_heads: str = "mean") -> torch.Tensor:
        """Mean map ``(batch, tokens, size_h, size_w)`` over the selected records.

        Heads are averaged (``"mean"``) or summed (``"sum"``); each record is resampled bilinearly to ``size``
        (default: the largest recorded grid) before averaging over layers and steps.  Differentiable when the
        records are.  This is the authors' mask-layer aggregation (``get_token_attnv2``: mean over steps ≥ 10,
        mean over heads) when called with ``layers=MASK_LAYERS, steps=range(10, 50)``.
        """
        chosen = self.select(layers, steps)
        if not chosen:
            raise ValueError(f"no records for layers={layers!r}, steps={steps!r}; recorded layers "
                             f"{self.recorded_layers}, steps {self.recorded_steps}")
        if size is None:
            size = max((r.probs.shape[2], r.probs.shape[3]) for r in chosen)
        elif isinstance(size, int):
            size = (size, size)
        total = None
        for r in chosen:
            m = reduce_over_heads(r.probs.float(), reduce_heads, dim=1).permute(0, 3, 1, 2)  # (B, T, H, W)
            if tuple(m.shape[-2:]) != tuple(size):
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            total = m if total is None else total + m.to(total.device)
        return total / len(chosen)

    def per_element_maps(self, element: int, token: int = 0) -> dict[tuple[str, int], torch.Tensor]:
        """``{(layer, step): (heads, H, W)}`` for one batch element and one kept token.

        The shape the attention-transfer reference of :class:`~lmd_utils.sampling.TransferTarget` expects.
        """
        return {(r.layer, r.step): r.probs[element, ..., token] for r in self.records}


def reduce_over_heads(x: torch.Tensor, mode: str, dim: int) -> torch.Tensor:
    if mode == "mean":
        return x.mean(dim=dim)
    if mode == "sum":
        return x.sum(dim=dim)
    raise ValueError(f"head reduction must be 'mean' or 'sum', got {mode!r}")


class CaptureProcessor:
    """Attention processor that delegates the output to ``original`` and records the probabilities."""

    def __init__(self, original: Any, store: AttentionStore, name: str):
        self.original = original
        self.store = store
        self.name = name

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        if temb is not None:  # only pass what the original processor was given (not all processors take temb)
            kwargs["temb"] = temb
        out = self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                            attention_mask=attention_mask, **kwargs)
        store = self.store
        rows = slice(None)
        if store.keep == "cond" and store.cfg_batch and hidden_states.shape[0] % 2 == 0:
            rows = slice(hidden_states.shape[0] // 2, None)  # only the kept half: [uncond; cond] → cond
        with torch.set_grad_enabled(store.keep_grad and torch.is_grad_enabled()):
            probs = cross_attention_probs(attn, hidden_states[rows], _rows(encoder_hidden_states, rows),
                                          _rows(attention_mask, rows), _rows(temb, rows))
            store._record(self.name, probs, halved=rows.start is not None)
        store._seen.add(self.name)
        if store._needed <= store._seen:
            if store.stop_after_last_layer:
                raise _StopForward
            if store.grad_until_last_layer:  # the rest of the forward needs no graph (the caller restores the mode)
                torch.set_grad_enabled(False)
        return out


def _rows(x: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """``x[rows]`` along the batch, for a per-element input (a shared ``(1, ...)`` one or ``None`` stays)."""
    return x if x is None or rows.start is None or x.shape[0] == 1 else x[rows]


@contextlib.contextmanager
def capture_cross_attention(unet: torch.nn.Module, layers: str | Sequence[str] = GUIDANCE_LAYERS,
                            keep_grad: bool = False, keep: str = "cond",
                            token_indices: Sequence[int] | Sequence[Sequence[int]] | None = None,
                            stop_after_last_layer: bool = False, store: AttentionStore | None = None,
                            ) -> Iterator[AttentionStore]:
    """Record cross-attention probabilities of ``layers`` while the block runs; yields the store.

    ``store`` reuses an existing :class:`AttentionStore` (its own settings win over the other arguments), so
    one store can collect maps over a whole denoising loop.  Only the chosen modules get a new processor (set
    with ``module.set_processor``); the original processors are put back on exit, also after an exception.
    """
    if store is None:
        store = AttentionStore(layers=layers, keep=keep, token_indices=token_indices, keep_grad=keep_grad,
                               stop_after_last_layer=stop_after_last_layer)
    modules = resolve_layers(unet, store.layers)
    originals = {name: module.processor for name, module in modules.items()}
    store._needed = set(modules)

    def _pre_hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        store.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        store._seen = set()

    handle = unet.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    try:
        for name, module in modules.items():
            module.set_processor(CaptureProcessor(originals[name], store, name))
        yield store
    finally:
        handle.remove()
        for name, module in modules.items():
            module.set_processor(originals[name])


def run_unet_until_captured(unet: torch.nn.Module, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                            store: AttentionStore, **unet_kwargs) -> torch.Tensor | None:
    """Run ``unet`` inside an active capture into ``store``; stop early once every captured layer has run.

    Returns the UNet's output sample when the forward ran to the end (``store.stop_after_last_layer`` off),
    ``None`` when it was cut short.  The guidance forward only needs the maps of ``mid_block`` and
    ``up_blocks.1`` (:data:`GUIDANCE_LAYERS`), so truncation skips the two highest-resolution up blocks.
    """
    try:
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **unet_kwargs)[0]
    except _StopForward:
        return None


# -- tokens of a phrase --------------------------------------------------------------------------------
#: A word of a phrase: whitespace-separated, without sentence punctuation ("cat." → "cat").
_WORD = r"[^\s.,;:!?]+"


def object_word(caption: str) -> str:
    """The word whose attention gives the object's mask and attention-transfer reference: the caption's last
    word (the authors' ``phrase.split(" ")[-1]``: "a red *car*"), without sentence punctuation."""
    words = re.findall(_WORD, caption)
    if not words:
        raise ValueError(f"caption {caption!r} has no words")
    return words[-1]


def _occurrence_span(prompt: str, phrase: str, start: int = 0) -> tuple[int, int]:
    words = phrase.strip().split()
    if not words:
        raise ValueError("phrase is empty")
    pattern = r"(?<![\w])" + r"\s+".join(re.escape(w) for w in words) + r"(?![\w])"
    hits = list(re.finditer(pattern, prompt[start:], flags=re.IGNORECASE))
    if not hits:
        raise ValueError(f"phrase {phrase!r} does not occur as whole words in {prompt[start:]!r}")
    return hits[-1].start() + start, hits[-1].end() + start


def _word_spans(prompt: str, a: int, b: int) -> list[tuple[int, int]]:
    spans = [(m.start() + a, m.end() + a) for m in re.finditer(_WORD, prompt[a:b])]
    if not spans:
        raise ValueError(f"phrase {prompt[a:b]!r} has no words")
    return spans


def _token_spans(tokenizer, prompt: str) -> list[tuple[int, int]]:
    enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=tokenizer.model_max_length)
    return [tuple(o) for o in enc["offset_mapping"]]


def char_span_token_indices(tokenizer, prompt: str, start: int, end: int) -> list[int]:
    """Positions (in the padded input ids, ⟨bos⟩ = 0) of the tokens overlapping ``prompt[start:end]``."""
    idx = [i for i, (a, b) in enumerate(_token_spans(tokenizer, prompt)) if b > a and a < end and b > start]
    if not idx:
        raise ValueError(f"{prompt[start:end]!r} has no tokens within the first {tokenizer.model_max_length} "
                         f"tokens of {prompt!r} (truncated?)")
    return idx


def phrase_token_indices(tokenizer, prompt: str, phrase: str, skip_articles: bool = True, start: int = 0) -> list[int]:
    """Token positions of ``phrase`` inside ``prompt``: the tokens whose energy guides the phrase's box.

    Differences from the authors' ``get_phrase_indices`` (which finds the first *substring* match of the
    phrase's token string):

    * whole words only, via the tokenizer's character offsets: in "a bobcat and a cat" the phrase "a cat"
      gets the last two tokens, not the ``cat`` token inside ``b o b cat``;
    * the LAST occurrence at or after character ``start`` (pass ``len(background)`` to skip a background
      prompt that mentions the object too: LMD prompts are ``"{background} with {phrases}"``; ``start``
      should sit on a word boundary);
    * articles ("a", "an", "the") are dropped unless the phrase has nothing else: they carry no object and
      their maps are diffuse (the authors include them).

    Matching is case-insensitive; tokens past the tokenizer's maximum length raise ``ValueError``.
    """
    a, b = _occurrence_span(prompt, phrase, start)
    spans = _word_spans(prompt, a, b)
    if skip_articles:
        kept = [s for s in spans if prompt[s[0]:s[1]].lower() not in ARTICLES]
        spans = kept or spans
    indices: list[int] = []
    for s, e in spans:
        indices += [i for i in char_span_token_indices(tokenizer, prompt, s, e) if i not in indices]
    return sorted(indices)


def word_token_indices(tokenizer, prompt: str, phrase: str, words: str | Sequence[str] | None = None,
                       start: int = 0, last_token_only: bool = False) -> list[int]:
    """Token positions of selected ``words`` of ``phrase`` (in its occurrence found as in
    :func:`phrase_token_indices`).

    ``words=None`` takes the phrase's :func:`object_word` ("a red cat" → "cat"): the token whose per-box map
    becomes the object mask and the attention-transfer reference.
    ``last_token_only`` keeps the final token of a multi-token word (the authors' single token).
    """
    a, b = _occurrence_span(prompt, phrase, start)
    spans = _word_spans(prompt, a, b)
    wanted = [object_word(phrase)] if words is None else [words] if isinstance(words, str) else list(words)
    lowered = [prompt[s:e].lower() for s, e in spans]
    chosen = []
    for w in wanted:
        if w.lower() not in lowered:
            raise ValueError(f"word {w!r} is not a word of {prompt[a:b]!r}")
        j = len(lowered) - 1 - lowered[::-1].index(w.lower())
        chosen.append(spans[j])
    indices: list[int] = []
    for s, e in chosen:
        indices += [i for i in char_span_token_indices(tokenizer, prompt, s, e) if i not in indices]
    indices = sorted(indices)
    return indices[-1:] if last_token_only else indices


# -- looking at maps (notebook 01) -------------------------------------------------------------------------
#: Labels of CLIP's special tokens in pictures: start of text, end of text (and the padding after it).
SPECIAL_TOKEN_LABELS = {"<|startoftext|>": "⟨sot⟩", "<|endoftext|>": "⟨eot⟩"}


def short_layer_name(name: str) -> str:
    """``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"`` → ``"up_blocks.1.attentions.0"`` (for labels)."""
    return re.sub(r"\.transformer_blocks\.0\.attn2$", "", name)


def token_labels(tokenizer, prompt: str, include_end: bool = True) -> list[str]:
    """One label per token position of ``prompt`` as the text encoder sees it: ``["⟨sot⟩", "a", "red", ...]``.

    Stops at the first end-of-text token (kept when ``include_end``); the padding after it is left out, since
    its maps repeat the ⟨eot⟩ map.  BPE's end-of-word marker ``</w>`` is removed, so a word split into several
    tokens shows as its pieces.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    labels = []
    for tok in tokenizer.convert_ids_to_tokens(ids):
        label = SPECIAL_TOKEN_LABELS.get(tok, tok.replace("</w>", ""))
        if tok == tokenizer.eos_token:
            if include_end:
                labels.append(label)
            break
        labels.append(label)
    return labels


def mass_inside_box(maps: torch.Tensor, masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Fraction of each map's total attention that falls inside its box: ``Σ A·b / Σ A``, ``(..., H, W) → (...)``.

    A plain localisation score (1: all of the word's attention is in the box; the box's area fraction: no
    better than uniform).  Not the paper's energy, which looks at top-k cells only (:mod:`lmd_utils.energy`).
    """
    masks = masks.to(device=maps.device, dtype=maps.dtype)
    return (maps * masks).sum(dim=(-2, -1)) / (maps.sum(dim=(-2, -1)) + eps)


def object_map(probs: torch.Tensor, token_indices: Sequence[int]) -> torch.Tensor:
    """One record's ``(heads, H, W, tokens)`` → the object's map ``(H, W)``: mean over heads and its tokens."""
    return probs.float().mean(dim=0)[..., list(token_indices)].mean(dim=-1)


def localisation_by_layer(store: AttentionStore, objects: Sequence[Sequence[tuple[Sequence[int], Any]]],
                          steps: Container[int] | None = None) -> dict[str, torch.Tensor]:
    """How well each recorded layer localises: ``{layer: (steps,) mean mass inside the box}``.

    ``objects[e]`` lists ``(token_indices, box)`` for batch element ``e`` (``box``: a
    :class:`~lmd_utils.layout.Box`, e.g. where a detector found the object); each object's map is the head- and
    token-mean of the layer's record (:func:`object_map`) and is scored with :func:`mass_inside_box`.  The
    result averages over elements and objects, per recorded step (in :attr:`AttentionStore.recorded_steps`
    order restricted to ``steps``).  Elements with no objects are skipped.
    """
    if len(objects) == 0 or not any(objects):
        raise ValueError("no objects to score")
    out: dict[str, torch.Tensor] = {}
    for layer in store.recorded_layers:
        records = store.select(layer, steps)
        if not records:
            continue
        per_step = []
        for rec in records:
            if len(objects) > rec.probs.shape[0]:
                raise ValueError(f"objects for {len(objects)} elements, the store holds {rec.probs.shape[0]}")
            h, w = rec.probs.shape[2:4]
            scores = [mass_inside_box(object_map(rec.probs[e], toks), box.mask(h, w))
                      for e, objs in enumerate(objects) for toks, box in objs]
            per_step.append(torch.stack(scores).mean())
        out[layer] = torch.stack(per_step)
    return out
