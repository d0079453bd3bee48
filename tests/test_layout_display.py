"""lmd_utils.viz.layout: several layouts side by side (the notebooks' and the layout editor's picture); the CLI
saves one layout as a PNG (tests/test_cli.py)."""

from __future__ import annotations

import pytest
import torch

from lmd_utils.layout import Box, Layout
from lmd_utils.viz.common import figure_to_png
from lmd_utils.viz.layout import draw_layouts


@pytest.fixture
def layout() -> Layout:
    """A gray cat and two brown dogs in a park, without people."""
    return Layout.from_xywh_objects([("a gray cat", [32, 160, 148, 240]), ("a brown dog", [254, 36, 216, 184]),
                                     ("a brown dog", [254, 292, 216, 184])], background="A park", negative="people")


def test_draw_layouts_grid_titles_and_prompts(layout):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    empty = Layout(negative="dogs")
    fig = draw_layouts([layout, empty, layout], titles=["one", "a rather long title that has to be wrapped", "three"],
                       ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 4 and len(visible) == 3
    assert visible[1].get_title() == "a rather long title that has to be\nwrapped"
    assert visible[0].get_xlabel() == "background: A park\nnegative: people"
    assert visible[1].get_xlabel() == "background: A realistic scene\nnegative: dogs"
    assert [t.get_text() for t in visible[0].texts] == layout.phrases and all(t.get_clip_on() for t in visible[0].texts)
    assert plt.get_fignums() == open_before  # nothing registered with pyplot
    assert figure_to_png(fig).startswith(b"\x89PNG")
    default = draw_layouts([layout])
    assert default.axes[0].get_title() == "A park\nnegative: people" and default.axes[0].get_xlabel() == ""


def test_draw_layouts_on_images_and_bad_arguments(layout):
    fig = draw_layouts([layout, layout], images=[torch.rand(3, 32, 32), None])
    assert len(fig.axes[0].images) == 1 and len(fig.axes[1].images) == 0
    with pytest.raises(ValueError, match="no layouts"):
        draw_layouts([])
    with pytest.raises(ValueError, match="1 titles for 2 layouts"):
        draw_layouts([layout, layout], titles=["x"])


def test_draw_layouts_leaves_out_empty_prompts():
    bare = Layout([Box("a red circle", 0.1, 0.1, 0.4, 0.4)], background="")  # the toy world's: no background
    fig = draw_layouts([bare, Layout(background="", negative="dogs")], titles=["toy", "excluded"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "negative: dogs"]  # never a bare "background:"


def test_box_captions_stay_inside_the_canvas():
    """A caption of a box at the right edge ends at the box's right edge; a long one is wrapped."""
    edge = Layout.from_xywh_objects([("a tall floor lamp next to the window", [440, 40, 72, 400]),
                                     ("a gray sofa", [20, 200, 260, 160])])
    fig = draw_layouts([edge], size=3.0)
    fig.canvas.draw()
    ax = fig.axes[0]
    lamp, sofa = ax.texts
    assert lamp.get_ha() == "right" and lamp.get_position()[0] <= 512 and "\n" in lamp.get_text()
    assert sofa.get_ha() == "left" and sofa.get_text() == "a gray sofa"
    inside = ax.get_window_extent()
    for text in (lamp, sofa):
        box = text.get_window_extent()
        assert inside.x0 - 1 <= box.x0 and box.x1 <= inside.x1 + 1  # drawn within the canvas, not cut at its edge
