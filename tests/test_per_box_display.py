"""lmd_utils.viz.per_box (notebook 03): the trajectory strip, the blended noise, the placement."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.layout import Box, Layout
from lmd_utils.per_box import blend_box_noise, plan_per_box
from lmd_utils.viz.common import figure_to_png
from lmd_utils.viz.per_box import noise_blend_figure, placement_figure, trajectory_figure


def test_trajectory_figure_has_one_row_per_box_and_one_column_per_step():
    latents = torch.randn(11, 2, 3, 16, 16)
    boxes = [Box("a", 0.1, 0.1, 0.5, 0.5), Box("b", 0.5, 0.5, 0.9, 0.9)]
    fig = trajectory_figure(latents, steps=4, titles=["a", "b"], boxes=boxes)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == ["x_T (start)", "after step 3", "after step 7", "after step 10"]
    assert len(fig.axes[0].patches) == 1  # the generation box is outlined, in gold (as notebook 03 says)
    assert fig.axes[0].patches[0].get_edgecolor()[:3] == pytest.approx((1.0, 0.843, 0.0), abs=1e-3)
    assert figure_to_png(fig).startswith(b"\x89PNG")
    fig = trajectory_figure(torch.randn(5, 1, 4, 8, 8), steps=[0, 4], pixel_space=False)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        trajectory_figure(latents, steps=[0, 11])
    with pytest.raises(ValueError):
        trajectory_figure(latents, titles=["only one"])


def test_noise_blend_figure_shows_the_difference_inside_the_box_only():
    g = torch.Generator().manual_seed(1)
    shared, own = torch.randn(1, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    boxes = [Box("a", 0.0, 0.0, 0.5, 0.5), Box("b", 0.5, 0.5, 1.0, 1.0)]
    masks = Layout(boxes).masks(16, 16)
    fig = noise_blend_figure(shared, blend_box_noise(shared, own, masks), boxes, titles=["a", "b"])
    assert len(fig.axes) == 1 + 2 * 2
    diff = fig.axes[2].images[0].get_array()  # box "a": zero outside its quarter
    assert abs(diff[8:, :]).max() == 0 and abs(diff[:8, :8]).max() > 0
    with pytest.raises(ValueError):
        noise_blend_figure(shared, own, boxes[:1])


def test_placement_figure_draws_target_and_generation_boxes():
    layout = Layout([Box("a red circle", 0.05, 0.1, 0.4, 0.45), Box("a blue square", 0.6, 0.5, 0.9, 0.8)])
    plan = plan_per_box(layout, seed=0)
    fig = placement_figure(plan, images=torch.rand(2, 3, 32, 32))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        dashed = [p for p in ax.patches if p.get_linestyle() == "--"]
        assert len(dashed) == 1  # the target box
        assert len(ax.texts) == 1  # the arrow of the move (an annotation)
    assert len(placement_figure(plan_per_box(layout, 0, placement="box")).axes[0].texts) == 0  # nothing to move
    with pytest.raises(ValueError):
        placement_figure(plan, images=torch.rand(1, 3, 32, 32))
