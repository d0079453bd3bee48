"""Composing per-box latents into the overall generation (LMD §3.2, "composed image generation").

After the per-box generations (:mod:`lmd_utils.masks` gives each object's mask), the overall generation starts
from the shared initial noise and, for the first ``r·T`` steps (``frozen_ratio r = 0.5``), keeps its
foreground equal to the *composed* per-box latents of the same step:

    z_t ← m ⊙ z_t^composed + (1 − m) ⊙ z_t                          (m: union of the object masks)

This module holds the pure tensor steps:

1. :func:`align_to_box` shifts each per-box trajectory (latents of every step), its mask and its saved
   attention so the mask's centre of mass lands on the centre of the object's box in the overall layout
   (authors' ``align_with_bboxes``: the per-box generation placed the object at a centred box, so the shift
   comes from the mask, not from the box it was generated in).
2. :func:`compose_latents` pastes the aligned, masked per-box latents over the background latents, largest
   mask first so smaller objects end on top.
3. :func:`replace_foreground` is the frozen-step update above; :func:`frozen_step_count` says how many steps.

Shapes: latents ``(C, h, w)`` or with a time axis ``(T, C, h, w)``; masks ``(h, w)`` bool; attention maps
``(..., h', w')`` with the two spatial dims last (unflatten ``h'·w'`` token maps first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch

from .attention import phrase_token_indices, word_token_indices
from .config import FROZEN_RATIO, GuidanceConfig
from .grammar import counted
from .layout import Box, Layout
from .sampling import BoxGuidance, ImageTargets, ObjectTarget, TransferTarget

AttentionLike = Union[torch.Tensor, Mapping[str, torch.Tensor], None]


# ---------------------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shift:
    """An integer translation in cells of the grid it was computed on: ``dx`` to the right, ``dy`` down."""

    dx: int
    dy: int
    grid: tuple[int, int]  # (h, w) of the grid the shift is measured on

    def on_grid(self, height: int, width: int) -> "Shift":
        """The same translation on another grid (rounded to whole cells there)."""
        h, w = self.grid
        return Shift(round(self.dx * width / w), round(self.dy * height / h), (height, width))

    @property
    def normalized(self) -> tuple[float, float]:
        """``(dx, dy)`` as fractions of the image width / height."""
        return self.dx / self.grid[1], self.dy / self.grid[0]


def center_of_mass(mask: torch.Tensor) -> tuple[float, float]:
    """Centre of mass ``(x, y)`` of a 2-D mask in cell units, cell ``(r, c)`` centred at ``(c + 0.5, r + 0.5)``.

    So a box's centre in the same units is ``(box.center[0]·w, box.center[1]·h)``.  (The authors' helper uses
    cell indices without the ``+0.5``, a bias of half a cell towards the top-left that their 1/8-frame shift
    rounding then absorbs.)  Raises on an empty mask: an object with no mask cannot be placed.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (h, w), got shape {tuple(mask.shape)}")
    m = mask.float()
    total = m.sum()
    if total <= 0:
        raise ValueError("empty mask has no centre of mass")
    h, w = m.shape
    x = (m.sum(0) * (torch.arange(w, dtype=m.dtype, device=m.device) + 0.5)).sum() / total
    y = (m.sum(1) * (torch.arange(h, dtype=m.dtype, device=m.device) + 0.5)).sum() / total
    return float(x), float(y)


def alignment_shift(
    mask: torch.Tensor, box: Box, horizontal_only: bool = False, quantum: int = 1, rule: str = "centre"
) -> Shift:
    """The integer shift taking ``mask``'s centre of mass to ``box``'s centre (on the mask's grid).

    ``quantum`` rounds the shift to multiples of that many cells.  The default 1 puts the centre of mass
    within half a cell of the box centre.  The authors round to 1/8 of the frame (``quantum = w // 8``, 8
    latent cells at 64×64) so the shift is also whole on the 8×8 attention maps of the mid block; with
    ``quantum=1`` the attention shift is rounded separately on each attention grid (:meth:`Shift.on_grid`).
    ``horizontal_only`` keeps ``dy = 0`` (the authors' option for LMD+).  ``rule="none"``: no shift (LMD+ draws
    each object in its own box and keeps it there, ``align_with_overall_bboxes=False``).
    ``rule="authors"`` (``LMDConfig.alignment``; ``quantum`` is then ignored): the authors' rule, centre of mass in
    cell INDICES (no ``+0.5``, ``utils/utils.py:102-120`` ``binary_mask_to_center``) as a fraction of the frame,
    offset to the box centre rounded to 1/8 of the frame (``utils/utils.py:145-154`` ``shift_tensor``).
    """
    h, w = mask.shape[-2:]
    if rule in ("authors", "none"):
        return _authors_shift(mask, box, horizontal_only) if rule == "authors" else Shift(0, 0, (h, w))
    if rule != "centre":
        raise ValueError(f"alignment rule must be 'centre', 'authors' or 'none', not {rule!r}")
    if quantum < 1:
        raise ValueError(f"quantum must be a positive number of cells, got {quantum}")
    cx, cy = center_of_mass(mask)
    tx, ty = box.center[0] * w, box.center[1] * h
    dx = round((tx - cx) / quantum) * quantum
    dy = 0 if horizontal_only else round((ty - cy) / quantum) * quantum
    return Shift(int(dx), int(dy), (h, w))


def _authors_shift(mask: torch.Tensor, box: Box, horizontal_only: bool = False, base: int = 8) -> Shift:
    """The authors' ``align_with_bboxes`` shift: normalised offset of the index centre of mass, rounded to 1/``base``."""
    h, w = mask.shape[-2:]
    if h % base or w % base:
        raise ValueError(f"the authors' alignment needs a grid divisible by {base}, got {h}×{w}")
    m = mask.double()
    total = m.sum()
    if total <= 0:
        raise ValueError("empty mask has no centre of mass")
    cx = float((m.sum(0) @ torch.arange(w, dtype=torch.float64, device=m.device)) / total) / w
    cy = float((m.sum(1) @ torch.arange(h, dtype=torch.float64, device=m.device)) / total) / h
    x_off = box.center[0] - cx
    y_off = 0.0 if horizontal_only else box.center[1] - cy
    return Shift(int(round(x_off * base) * (w // base)), int(round(y_off * base) * (h // base)), (h, w))


def shift_tensor(tensor: torch.Tensor, shift: Shift) -> torch.Tensor:
    """Translate the last two dims of ``tensor`` by ``shift`` (rescaled to this grid); vacated cells are 0.

    Parts moved out of the frame are dropped and the uncovered band is zero-filled, as the authors'
    ``shift_tensor`` does (``torch.roll`` would wrap the object round to the other side).  A zero-filled band
    is harmless because the mask is shifted the same way and only masked cells are ever pasted.
    """
    h, w = tensor.shape[-2:]
    s = shift if shift.grid == (h, w) else shift.on_grid(h, w)
    out = torch.zeros_like(tensor)
    dx, dy = s.dx, s.dy
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_y, dst_x] = tensor[..., src_y, src_x]
    return out


@dataclass
class AlignedObject:
    """A per-box trajectory moved onto its overall box: latents, mask, attention and the shift used."""

    latents: torch.Tensor
    mask: torch.Tensor
    attention: AttentionLike
    shift: Shift


def align_to_box(
    latents: torch.Tensor,
    mask: torch.Tensor,
    box: Box,
    attention: AttentionLike = None,
    horizontal_only: bool = False,
    quantum: int = 1,
    rule: str = "centre",
) -> AlignedObject:
    """Shift one object's latents (``(C, h, w)`` or ``(T, C, h, w)``), mask ``(h, w)`` and attention together.

    The shift is measured on the latent grid (:func:`alignment_shift`) and applied to attention maps on their
    own grids (``(..., h', w')`` tensors, or a dict of them keyed by layer); see ``quantum`` there for the
    authors' 1/8-frame rounding, and ``rule`` (``"centre"`` | ``"authors"``) for their whole rule.  Authors'
    ``align_with_bboxes`` + ``shift_saved_attns``.
    """
    if tuple(latents.shape[-2:]) != tuple(mask.shape):
        raise ValueError(f"latents {tuple(latents.shape)} and mask {tuple(mask.shape)} differ in size")
    shift = alignment_shift(mask, box, horizontal_only=horizontal_only, quantum=quantum, rule=rule)
    moved_attention: AttentionLike
    if attention is None:
        moved_attention = None
    elif isinstance(attention, torch.Tensor):
        moved_attention = shift_tensor(attention, shift)
    else:
        moved_attention = {k: shift_tensor(v, shift) for k, v in attention.items()}
    return AlignedObject(shift_tensor(latents, shift), shift_tensor(mask.bool(), shift), moved_attention, shift)


# ---------------------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------------------
def _binary(masks: torch.Tensor) -> torch.Tensor:
    if masks.dtype == torch.bool:
        return masks
    if not torch.all((masks == 0) | (masks == 1)):
        raise ValueError("masks must be bool or contain only 0 and 1")
    return masks.bool()


def paste_order(masks: torch.Tensor) -> torch.Tensor:
    """Indices of ``masks`` ``(n, h, w)`` from largest to smallest area (stable: equal areas keep their order).

    Pasting in this order lets later (smaller) objects overwrite larger ones where they overlap (authors).
    """
    areas = _binary(masks).flatten(1).sum(1)
    return torch.sort(-areas, stable=True).indices


def compose_latents(
    background_latents: torch.Tensor, per_box_latents: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each object's latents inside its mask over the background: ``(composed, union_mask)``.

    Without time axis: ``background (C, h, w)``, ``per_box (n, C, h, w)`` → ``composed (C, h, w)``.
    With time axis: ``per_box (n, T, C, h, w)`` and ``background (T, C, h, w)`` or ``(C, h, w)`` (repeated over
    steps) → ``composed (T, C, h, w)``, one composed latent per step for the frozen steps.  ``masks`` ``(n, h,
    w)``, already aligned.  Largest mask first, so smaller objects stay on top.  ``union_mask`` ``(h, w)`` bool.

    The authors fill steps after the first with zeros outside the masks (to catch accidental reads); we keep
    the background there, since :func:`replace_foreground` reads only masked cells.  They also paste the
    initial noise (step 0) over each mask's *bounding box* before the masks: :func:`compose_trajectory` with
    ``initial="authors"`` does that (an object's step-0 latents are its own blended, shifted z_T, so it does
    paste something different from the shared z_T).
    """
    masks = _binary(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (n, h, w), got {tuple(masks.shape)}")
    n, h, w = masks.shape
    if per_box_latents.shape[0] != n or tuple(per_box_latents.shape[-2:]) != (h, w):
        raise ValueError(f"per-box latents {tuple(per_box_latents.shape)} do not match masks {tuple(masks.shape)}")
    frame_shape = per_box_latents.shape[1:]  # (C, h, w) or (T, C, h, w)
    if per_box_latents.ndim not in (4, 5):
        raise ValueError(f"per-box latents must be (n, C, h, w) or (n, T, C, h, w), got {tuple(per_box_latents.shape)}")
    if background_latents.shape == frame_shape:
        composed = background_latents.clone()
    elif per_box_latents.ndim == 5 and background_latents.shape == frame_shape[1:]:
        composed = background_latents.expand(frame_shape).clone()
    else:
        raise ValueError(
            f"background {tuple(background_latents.shape)} does not fit per-box latents {tuple(per_box_latents.shape)}"
        )
    composed = composed.to(per_box_latents.dtype)
    for i in paste_order(masks).tolist():
        composed = torch.where(masks[i].to(composed.device), per_box_latents[i], composed)
    return composed, masks.any(0)


def foreground_indices(masks: torch.Tensor) -> torch.Tensor:
    """``(h, w)`` long map: 0 for background, ``i + 1`` where object ``i`` is on top after :func:`compose_latents`."""
    masks = _binary(masks)
    index = torch.zeros(masks.shape[-2:], dtype=torch.long)
    for i in paste_order(masks).tolist():
        index[masks[i].cpu()] = i + 1
    return index


def frozen_step_count(num_steps: int, frozen_ratio: float = FROZEN_RATIO) -> int:
    """How many of the first denoising steps copy the composed foreground: ``int(num_steps · ratio)``.

    Floor, as the authors (``int(num_inference_steps * frozen_step_ratio)``); ``round`` would differ only for
    odd step counts.  The ratio is clipped to [0, 1].
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    return int(num_steps * min(max(frozen_ratio, 0.0), 1.0))


def replace_foreground(z: torch.Tensor, composed_k: torch.Tensor, union_mask: torch.Tensor) -> torch.Tensor:
    """``m ⊙ composed_k + (1 − m) ⊙ z`` for a frozen step ``k < frozen_step_count(...)`` (paper §3.2).

    ``z`` is the overall latent ``(C, h, w)`` or ``(B, C, h, w)`` (e.g. a CFG-free batch of images);
    ``composed_k`` the composed latent of the same step, broadcastable to ``z``; ``union_mask`` ``(h, w)``.
    Returns a new tensor in ``z``'s dtype; ``z`` outside the mask is returned unchanged (bit for bit).
    """
    m = _binary(union_mask)
    if tuple(m.shape) != tuple(z.shape[-2:]) or tuple(composed_k.shape[-2:]) != tuple(z.shape[-2:]):
        raise ValueError(
            f"z {tuple(z.shape)}, composed {tuple(composed_k.shape)}, mask {tuple(m.shape)} differ in size"
        )
    return torch.where(m.to(z.device), composed_k.to(device=z.device, dtype=z.dtype), z)


def apply_frozen_step(
    z_after_step: torch.Tensor,
    step_index: int,
    composed: torch.Tensor,
    union_mask: torch.Tensor,
    frozen_steps: int,
) -> torch.Tensor:
    """The frozen-step rule inside the sampling loop, with the authors' trajectory indexing.

    ``composed`` ``(T + 1, C, h, w)`` holds the composed trajectory: ``composed[0]`` the initial noise,
    ``composed[k + 1]`` the latent after denoising step ``k``.  After the overall pass's step ``step_index``
    (0-based), while ``step_index < frozen_steps``, the foreground becomes ``composed[step_index + 1]``
    (authors' ``generate_partial_frozen``); later steps return ``z_after_step`` itself.
    """
    if step_index < 0:
        raise ValueError(f"step_index must be >= 0, got {step_index}")
    if step_index >= frozen_steps:
        return z_after_step
    if step_index + 1 >= composed.shape[0]:
        raise ValueError(
            f"composed trajectory has {composed.shape[0]} entries, step {step_index} needs {step_index + 2}"
        )
    return replace_foreground(z_after_step, composed[step_index + 1], union_mask)


# ---------------------------------------------------------------------------------------------------------
# The composed generation (step 4): its prompt, its guidance, its frozen foreground
# ---------------------------------------------------------------------------------------------------------
def placeable_mask(mask: torch.Tensor, box: Box, box_rounding: str = "edges") -> torch.Tensor:
    """``mask`` if it has a cell, else ``box``'s mask on the same grid: an empty mask has no centre to move, so
    an object the attention did not find is pasted as its whole box (the one fallback of the pipeline)."""
    return mask.bool() if mask.any() else box.mask(*mask.shape[-2:], rounding=box_rounding).bool()


def align_objects(latents: torch.Tensor, masks: Sequence[torch.Tensor], boxes: Sequence[Box],
                  references: Sequence[AttentionLike] | None = None, alignment: str = "centre",
                  box_rounding: str = "edges") -> list[AlignedObject]:
    """:func:`align_to_box` for every box: ``latents`` ``(T+1, n, C, h, w)`` (the per-box trajectories), one
    latent-grid mask and one target box per object, optionally each object's attention to move along.
    ``alignment`` (``LMDConfig.alignment``): ``"centre"`` (ours), ``"authors"`` or ``"none"`` (:func:`alignment_shift`);
    ``box_rounding`` rasterises the box of an empty mask (``LMDConfig.box_rounding``)."""
    if not len(masks) == len(boxes) == latents.shape[1]:
        raise ValueError(f"{latents.shape[1]} trajectories, {len(masks)} masks, {len(boxes)} boxes")
    return [align_to_box(latents[:, i], placeable_mask(mask, box, box_rounding), box,
                         attention=None if references is None else references[i], rule=alignment)
            for i, (mask, box) in enumerate(zip(masks, boxes))]


def mask_bounding_box(mask: torch.Tensor) -> torch.Tensor:
    """``(h, w)`` bool: the bounding box of ``mask`` grown by one cell on each side, clipped to the grid (authors'
    ``binary_mask_to_box_mask``, ``utils/utils.py:72-99``)."""
    rows, cols = torch.where(mask.bool())
    if rows.numel() == 0:
        raise ValueError("the mask is empty")
    h, w = mask.shape[-2:]
    out = torch.zeros(h, w, dtype=torch.bool, device=mask.device)
    r0, r1 = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 1, h)
    c0, c1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 1, w)
    out[r0:r1 + 1, c0:c1 + 1] = True
    return out


def compose_trajectory(aligned: Sequence[AlignedObject], shared_noise: torch.Tensor, initial: str = "masks"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The composed latents of every step ``(T+1, C, h, w)`` and the union mask ``(h, w)``.

    The aligned objects are pasted largest first (:func:`compose_latents`); at step 0 the shared initial noise
    ``z_T`` fills the rest, since the composed pass starts there.  Outside the masks the later steps hold zeros,
    which the frozen steps never read.

    ``initial`` (``LMDConfig.compose_initial``): ``"masks"`` (ours) pastes only the masks at step 0 too;
    ``"authors"`` (``utils/latents.py:60-69``, ``compose_box_to_bg``) first pastes, largest first, each aligned
    mask's bounding box grown by one cell (:func:`mask_bounding_box`) from that object's step-0 latents, then the
    masks.  This matters: an object's step-0 latents are ITS blended z_T shifted by the alignment, which differs
    from the shared z_T around the mask (the box's own noise blend, and with ``placement="authors"`` the shift
    moves the generation box's noise onto the target box; the vacated band is zero, which is why the authors keep
    to the bounding box).
    """
    first = aligned[0].latents
    background = first.new_zeros(first.shape)
    background[0] = shared_noise[0].to(first.device, first.dtype)
    if initial == "authors":
        masks = torch.stack([a.mask for a in aligned])
        for i in paste_order(masks).tolist():
            box = mask_bounding_box(aligned[i].mask).to(background.device)
            background[0] = torch.where(box, aligned[i].latents[0].to(background.dtype), background[0])
    elif initial != "masks":
        raise ValueError(f"compose_initial must be 'masks' or 'authors', not {initial!r}")
    return compose_latents(background, torch.stack([a.latents for a in aligned]),
                           torch.stack([a.mask for a in aligned]))


def overall_phrases(layout: Layout) -> list[tuple[str, list[int]]]:
    """Group identical captions (authors' ``convert_spec``): ``[(phrase, [box indices]), ...]``.

    Two boxes captioned "a cat" become the phrase "two cats" (first-appearance order; the authors sort by name).
    """
    groups: dict[str, list[int]] = {}
    for i, box in enumerate(layout.boxes):
        groups.setdefault(box.phrase, []).append(i)
    return [(counted(len(idx), caption), idx) for caption, idx in groups.items()]


def overall_prompt(layout: Layout) -> str:
    """``"[background] with [phrase 1], [phrase 2], ..."`` (authors' overall prompt), or the background alone."""
    phrases = ", ".join(p for p, _ in overall_phrases(layout))
    background = layout.background.strip().rstrip(".")
    if not phrases:
        return background
    return f"{background} with {phrases}" if background else phrases


def overall_prompt_for(layout: Layout, mode: str, tokenizer) -> tuple[str, int]:
    """The composed pass's prompt (``mode``: ``LMDConfig.overall_prompt``) and the character offset after which
    its phrases are looked up (the background's end in the authors' form)."""
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


def composed_pass_guidance(tokenizer, layout: Layout, prompt: str, background_end: int,
                           aligned: Sequence[AlignedObject], config: GuidanceConfig,
                           attention_transfer: bool = True, box_rounding: str = "edges") -> BoxGuidance:
    """The composed pass's guidance: every phrase of ``prompt`` into its boxes (one energy term per phrase, over
    the union of its boxes) plus, with ``attention_transfer``, each box's object word pulled towards its own
    per-box attention (``aligned[i].attention``, already moved onto the box).  ``config.skip_articles`` selects the
    phrases' tokens; ``box_rounding`` (``LMDConfig.box_rounding``) how the boxes land on the attention grids."""
    objects, transfers = [], []
    for k, (idx, target, word) in enumerate(overall_token_targets(tokenizer, layout, prompt, background_end,
                                                                 config.skip_articles)):
        objects.append(target)
        if attention_transfer:
            transfers += [TransferTarget(layout.boxes[i], word, aligned[i].attention, object_index=k) for i in idx]
    return BoxGuidance([ImageTargets(tuple(objects), tuple(transfers))], config, box_rounding=box_rounding)


def overall_token_targets(tokenizer, layout: Layout, prompt: str, background_end: int, skip_articles: bool = False
                          ) -> list[tuple[list[int], ObjectTarget, int]]:
    """Per phrase of the overall prompt: its boxes' indices, its energy target (its tokens on the union of its
    boxes) and its object word's token (for attention transfer).  ``ValueError`` when a phrase's words are not
    within the text encoder's tokens."""
    out = []
    for phrase, idx in overall_phrases(layout):
        boxes = tuple(layout.boxes[i] for i in idx)
        target = ObjectTarget.for_phrase(tokenizer, prompt, phrase, boxes, start=background_end,
                                         skip_articles=skip_articles)
        word = word_token_indices(tokenizer, prompt, phrase, start=background_end, last_token_only=True)[0]
        out.append((list(idx), target, word))
    return out


class FrozenForeground:
    """``after_step`` hook of :func:`~lmd_utils.sampling.denoise`: for the first ``frozen_steps`` steps, the
    foreground is the composed latent of the same step (:func:`apply_frozen_step`, §3.2)."""

    def __init__(self, composed: torch.Tensor, union_mask: torch.Tensor, frozen_steps: int):
        self.composed, self.union_mask, self.frozen_steps = composed, union_mask, frozen_steps

    def after_step(self, state) -> torch.Tensor | None:
        if state.step >= self.frozen_steps:
            return None
        return apply_frozen_step(state.latents, state.step, self.composed, self.union_mask, self.frozen_steps)


# ---------------------------------------------------------------------------------------------------------
# Measuring the composition (notebook 05; its pictures: lmd_utils.viz.composition)
# ---------------------------------------------------------------------------------------------------------
def box_centre_distances(
    boxes: Sequence[Box], found: Sequence[tuple[str, Box]], missing_distance: float = 1.0,
    key: Callable[[str], str] | None = None,
) -> list[float]:
    """For each wanted box, the distance (image widths) from its centre to the centre of the nearest found
    object with the same caption, each found object used once; ``missing_distance`` when none is left.

    ``found`` is ``[(caption, Box), ...]``, e.g. a detector's output (the toy world's
    :func:`~lmd_utils.toyworld.detector.detect_boxes`).  Greedy matching in the order of ``boxes``.  ``key``
    (optional) maps a caption to what must match, e.g. its colour word, for a looser "same colour" match.
    A measure of "did the object land in its box" that also counts missing and wrong objects (as
    ``missing_distance``, 1.0 by default: about the farthest an object can be from its box); not in the paper,
    which scores images with a detector per task (§4).
    """
    if missing_distance < 0:
        raise ValueError(f"missing_distance must be >= 0, got {missing_distance}")
    key = key or (lambda caption: caption)
    left = list(found)
    out = []
    for box in boxes:
        cx, cy = box.center
        same = [k for k, (phrase, _) in enumerate(left) if key(phrase) == key(box.phrase)]
        if not same:
            out.append(float(missing_distance))
            continue
        dist = [((left[k][1].center[0] - cx) ** 2 + (left[k][1].center[1] - cy) ** 2) ** 0.5 for k in same]
        best = min(range(len(same)), key=dist.__getitem__)
        out.append(float(dist[best]))
        left.pop(same[best])
    return out


# ---------------------------------------------------------------------------------------------------------
# The denoised estimate x̂₀ at each step (what the pictures of the frozen steps show; lmd_utils.viz.composition)
# ---------------------------------------------------------------------------------------------------------
def predicted_x0(x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar_t: float | torch.Tensor,
                 prediction_type: str = "epsilon") -> torch.Tensor:
    """The model's denoised estimate x̂₀ from ``x_t`` and its output at a step with cumulative ᾱ_t:
    ``(x_t − √(1−ᾱ_t)·ε) / √ᾱ_t`` for ``"epsilon"``, ``√ᾱ_t·x_t − √(1−ᾱ_t)·v`` for ``"v_prediction"`` (the toy
    model, SD 2.x-768), the output itself for ``"sample"`` (as diffusers' DDIM computes it before clipping)."""
    a = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    s_a, s_b = float(a.sqrt()), float((1 - a).sqrt())
    if prediction_type == "epsilon":
        return (x_t - s_b * model_output) / s_a
    if prediction_type == "v_prediction":
        return s_a * x_t - s_b * model_output
    if prediction_type == "sample":
        return model_output.clone()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_alphas(scheduler, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ᾱ_t, ᾱ_prev)``, each ``(T,)``: the cumulative alphas a DDIM step ``k`` goes from and to, as
    :func:`~lmd_utils.sampling.denoise` samples by default (DDIM built from ``scheduler``'s config, whatever its
    class: SD 1.5 ships PNDM).  ``ᾱ_prev`` of the last step is the scheduler's final alpha."""
    import warnings
    from diffusers import DDIMScheduler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config keys of another scheduler class are ignored on purpose
        ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_inference_steps)
    t = ddim.timesteps.long()
    prev = t - ddim.config.num_train_timesteps // ddim.num_inference_steps
    cumprod = ddim.alphas_cumprod.double()
    final = torch.as_tensor(ddim.final_alpha_cumprod, dtype=torch.float64)
    return cumprod[t], torch.where(prev >= 0, cumprod[prev.clamp(min=0)], final)


def implied_x0(x_t: torch.Tensor, x_prev: torch.Tensor, alpha_bar_t: float | torch.Tensor,
               alpha_bar_prev: float | torch.Tensor) -> torch.Tensor:
    """The x̂₀ a deterministic DDIM step (η = 0) used to go from ``x_t`` to ``x_prev``.

    The step writes ``x_t = √ᾱ_t·x̂₀ + √(1−ᾱ_t)·ε̂`` and ``x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂`` with one ε̂:
    two equations, two unknowns.  For a plain step this is :func:`predicted_x0` of the model's output (any
    prediction type), read from two kept latents alone; what a hook did during the step (a guidance update of
    ``x_t``, a frozen paste into ``x_prev``) is part of the step, and of the estimate it implies.  (A scheduler
    that clips x̂₀, ``clip_sample``, breaks the first equation; the toy world's and SD's do not clip.)"""
    a_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    b_t, b_p = float((1 - a_t).sqrt()), float((1 - a_p).sqrt())
    denominator = b_t * float(a_p.sqrt()) - b_p * float(a_t.sqrt())
    if denominator <= 0:
        raise ValueError(f"not a denoising step: ᾱ_t = {float(a_t):.4g}, ᾱ_prev = {float(a_p):.4g}")
    return (b_t * x_prev.double() - b_p * x_t.double()).div(denominator).to(x_prev.dtype)


def denoised_trajectory(latents: torch.Tensor, alphas: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x̂₀ at every entry of a kept DDIM trajectory ``latents`` ``(T + 1, ...)`` (``x_T`` first, as
    ``keep_latents=True`` keeps it): entry ``k < T`` is :func:`implied_x0` of step ``k`` (from entries ``k`` and
    ``k + 1``), entry ``T`` the final latents themselves.  ``alphas`` from :func:`ddim_alphas`."""
    a_t, a_prev = alphas
    steps = latents.shape[0] - 1
    if len(a_t) != steps or len(a_prev) != steps:
        raise ValueError(f"{latents.shape[0]} latents are {steps} steps, the alphas have {len(a_t)}")
    out = [implied_x0(latents[k], latents[k + 1], a_t[k], a_prev[k]) for k in range(steps)]
    return torch.stack(out + [latents[-1].clone()])
