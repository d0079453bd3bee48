"""Per-box generation (LMD §3.2, step 1): generate every object alone, steered into its box.

For box *i* with caption *c_i* LMD runs the diffusion model on the prompt ``"[background] with [c_i]"``, starting from
a noise that is the shared initial noise ``z_T`` everywhere except inside the box, where a little independent noise is
blended in (``√(1−r)·z_T + √r·z_i``, ``r = 0.01``) so objects do not all come out the same.  During the first steps the
latent is nudged by the box energy (``energy.py``, ``sampling.BoxGuidance``) so that the caption's attention gathers
inside the box.  We keep every step's latent and the mask-layer attention of the caption's object word: the masks
(``masks.py``) and the composition (``composition.py``) are made from them.

Where the object is generated (authors' default): not at its final place but **centred horizontally with its bottom
edge at 80 % of the height** ("floor padding" 0.2), same width and height as the target box; the composition later
shifts it to the target box.  ``placement="box"`` generates it in its real box instead.

All boxes of a layout run **batched** (one UNet call for all boxes per step), unlike the authors' code that runs them one
after another; ``batch_size`` caps the batch when memory is short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .layout import Box, Layout

Placement = Literal["authors", "box"]

#: The authors' negative prompt for per-box generation (discourages duplicates and cut-off objects).
PER_BOX_NEGATIVE_PROMPT = (
    "artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image, bad proportions, "
    "duplicate, two, many, group, occlusion, occluded, side, border, collate"
)


def per_box_prompt(background: str, caption: str) -> str:
    """The per-box prompt ``"[background] with [caption]"`` (authors' ``convert_spec``); just the caption if no background."""
    background = background.strip().rstrip(".")
    return f"{background} with {caption}" if background else caption


def object_word(caption: str) -> str:
    """The word whose attention gives the object's mask: the caption's last word (authors' choice, e.g. "a red *car*")."""
    return caption.strip().rstrip(".").split()[-1]


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
                 negative_prompt: str = PER_BOX_NEGATIVE_PROMPT, box_seed_offset: int = 20) -> PerBoxPlan:
    """Prompts, object words, generation boxes and noise seeds of every box of ``layout``.

    The layout's own negative prompt (e.g. "birds" for "... without birds") is prepended to ``negative_prompt`` as the
    authors do.  Box *i*'s extra noise uses seed ``seed + box_seed_offset + i`` (the authors use a fixed 20 + i,
    independent of the image seed; we tie it to the seed so that different seeds give different objects).
    """
    negative = ", ".join(p for p in (layout.negative.strip(), negative_prompt.strip()) if p)
    return PerBoxPlan(
        prompts=[per_box_prompt(layout.background, b.phrase) for b in layout.boxes],
        words=[object_word(b.phrase) for b in layout.boxes],
        generation_boxes=[generation_box(b, placement, floor_padding) for b in layout.boxes],
        target_boxes=list(layout.boxes),
        negative_prompt=negative,
        seeds=[seed + box_seed_offset + i for i in range(len(layout.boxes))],
    )
