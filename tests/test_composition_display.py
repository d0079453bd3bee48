"""lmd_utils.viz.composition (notebook 05): alignment, frozen steps, placements compared, attention maps."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.composition import align_to_box, box_centre_distances, compose_latents
from lmd_utils.layout import Box
from lmd_utils.viz.common import figure_to_png
from lmd_utils.viz.composition import (alignment_figure, attention_maps_figure, frozen_steps_figure,
                                       mean_reference_map, placement_comparison_figure)

RED = Box("a red circle", 0.1, 0.1, 0.4, 0.4)  # centre (0.25, 0.25)
BLUE = Box("a blue square", 0.6, 0.6, 0.8, 0.8)  # centre (0.7, 0.7)


def _objects():
    """Two per-box trajectories (T + 1 = 4 steps) with square masks in the middle, aligned to RED and BLUE."""
    latents = torch.randn(2, 4, 3, 20, 20)
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 6:14, 6:14] = True  # 8×8, larger: pasted first
    masks[1, 8:12, 8:12] = True  # 4×4
    aligned = [align_to_box(latents[i], masks[i], box) for i, box in enumerate((RED, BLUE))]
    return latents, masks, aligned


def test_alignment_figure_shows_shifts_and_paste_order():
    latents, masks, aligned = _objects()
    fig = alignment_figure(latents[:, -1], masks, aligned, [RED, BLUE], generation_boxes=[RED, BLUE])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert "(dx, dy) = (-5, -5)" in fig.axes[0].get_title()  # centre 10 → 5 on a 20-cell grid
    assert "a red circle → a blue square" in fig.axes[2].get_title()  # largest first
    assert figure_to_png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        alignment_figure(latents[:, -1], masks, aligned[:1], [RED, BLUE])


def test_frozen_steps_figure_marks_the_frozen_steps():
    latents, masks, aligned = _objects()
    composed, union = compose_latents(torch.zeros(4, 3, 20, 20), torch.stack([a.latents for a in aligned]),
                                      torch.stack([a.mask for a in aligned]))
    fig = frozen_steps_figure(composed, composed[:, None], union, frozen_steps=2, steps=4)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 3 * 4 and len(fig.axes) == 3 * 4 + 1  # composed, overall, their difference; a colour bar
    assert [ax.get_title() for ax in panels[:4]] == ["x_T", "after step 1 · frozen", "after step 2 · frozen", "end"]
    with pytest.raises(ValueError):
        frozen_steps_figure(composed, composed[:3], union, frozen_steps=2)


def test_frozen_steps_figure_shows_where_the_estimates_agree():
    """With the scheduler's alphas: x̂₀ rows, and a difference row that is zero inside the masks while frozen."""
    from diffusers import DDIMScheduler

    from lmd_utils.composition import ddim_alphas

    T, F = 6, 3
    g = torch.Generator().manual_seed(0)
    union = torch.zeros(12, 12, dtype=torch.bool)
    union[3:8, 2:9] = True
    composed = torch.randn(T + 1, 3, 12, 12, generator=g)
    overall = torch.randn(T + 1, 3, 12, 12, generator=g)
    overall[: F + 1, :, union] = composed[: F + 1, :, union]  # pasted after each of the first F steps
    overall[0] = composed[0]  # the same start
    alphas = ddim_alphas(DDIMScheduler(), T)
    fig = frozen_steps_figure(composed, overall, union, F, steps=list(range(T + 1)), alphas=alphas)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels[: T + 1]] == (
        [f"step {k} · frozen" for k in range(1, F + 1)] + [f"step {k}" for k in range(F + 1, T + 1)] + ["end"])
    assert [ax.get_ylabel() for ax in panels[:: T + 1]] == ["composed per-box x̂₀", "composed generation x̂₀",
                                                           "|difference|\ninside the masks"]
    difference = [ax.images[0].get_array() for ax in panels[2 * (T + 1):]]
    assert all(float(d[union.numpy()].max()) == 0 for d in difference[:F])  # frozen: the same x̂₀ inside
    assert all(float(d[union.numpy()].max()) > 0 for d in difference[F:])  # afterwards: its own
    assert difference[0].mask[~union.numpy()].all()  # outside the masks the difference means nothing: not drawn

    # a per-box pass stopped after step F + 1 (LMDConfig.per_box_stop="needed"): x̂₀ of its steps, then nothing
    fig = frozen_steps_figure(composed[: F + 2], overall, union, F, steps=list(range(T + 1)), alphas=alphas)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    titles = [ax.get_title() for ax in panels[: T + 1]]
    assert titles[: F + 1] == [f"step {k} · frozen" for k in range(1, F + 1)] + [f"step {F + 1}"]
    assert all(t.endswith("(per-box pass stopped)") for t in titles[F + 1:])
    difference = [ax.images[0].get_array() for ax in panels[2 * (T + 1):]]
    assert all(float(d[union.numpy()].max()) == 0 for d in difference[:F])
    assert all(d.mask.all() for d in difference[F + 1:])  # no per-box estimate there: nothing to compare


def test_placement_comparison_figure_titles_the_mean_distance():
    images = {"LMD": torch.rand(3, 32, 32), "plain": torch.rand(3, 32, 32)}
    found = {"LMD": [("a red circle", RED), ("a blue square", BLUE)], "plain": [("a red circle", BLUE)]}
    fig = placement_comparison_figure([RED, BLUE], images, found)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "LMD\nmean distance 0.00"
    d = box_centre_distances([RED, BLUE], found["plain"])
    assert titles[1] == f"plain\nmean distance {sum(d) / 2:.2f}"
    assert len(fig.axes[0].patches) == 4  # 2 wanted (dashed) + 2 found (solid)
    assert len(placement_comparison_figure([RED], images, ncols=1).axes) == 2
    by_colour = placement_comparison_figure([RED, BLUE], images, {"plain": [("a blue circle", BLUE)]},
                                            key=lambda caption: caption.split()[1])
    assert by_colour.axes[1].get_title() == "plain\nmean distance 0.50"  # the blue circle counts as the blue one
    with pytest.raises(ValueError):
        placement_comparison_figure([RED], {})


def test_mean_reference_map_and_attention_maps_figure():
    ref = {("a", 0): torch.ones(4, 8, 8), ("b", 0): torch.zeros(2, 4, 4), ("a", 1): torch.ones(4, 8, 8)}
    m = mean_reference_map(ref, (16, 16))
    assert m.shape == (16, 16) and torch.allclose(m, torch.full((16, 16), 2 / 3))
    with pytest.raises(ValueError):
        mean_reference_map({}, (8, 8))
    maps = torch.zeros(2, 10, 10)
    maps[0, 1:4, 1:4] = 1.0  # all of it inside RED (cells 1..3)
    maps[1, 0:5, 0:5] = 1.0  # none inside BLUE
    fig = attention_maps_figure(maps, [RED, BLUE])
    assert [ax.get_title().split("\n")[1] for ax in fig.axes] == ["100% inside its box", "0% inside its box"]
