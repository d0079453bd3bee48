import json
import warnings

import pytest
import torch

from lmd_utils.layout import Box, Layout, LayoutWarning, draw_box


def test_xywh_round_trip():
    b = Box.from_xywh("a cat", [64, 128, 192, 256])
    assert b.bbox == pytest.approx((0.125, 0.25, 0.5, 0.75))
    assert b.to_xywh() == [64, 128, 192, 256]
    assert b.center == pytest.approx((0.3125, 0.5))


def test_zero_area_box_is_rejected():
    with pytest.raises(ValueError):
        Box("x", 0.2, 0.2, 0.2, 0.5)


def test_validation_drops_clips_and_caps():
    objects = [
        ("a dog", [0, 0, 100, 0]),            # zero area
        ("background", [0, 0, 512, 512]),     # canvas-covering
        ("far away", [600, 10, 20, 20]),      # starts outside
        ("a cat", [400, 400, 200, 200]),      # clipped
        ("a cup", [10, 10, 50, 50]),
        ("a car", [20, 20, 50, 50]),
    ]
    with pytest.warns(LayoutWarning):
        lay = Layout.from_xywh_objects(objects, "", None, max_boxes=2)
    assert lay.phrases == ["a cat", "a cup"]
    assert lay.boxes[0].bbox == pytest.approx((400 / 512, 400 / 512, 1.0, 1.0))
    assert lay.background == "A realistic scene" and lay.negative == ""
    assert len(lay.meta["warnings"]) == 5


def test_valid_layout_raises_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lay = Layout.from_xywh_objects([("a cat", [10, 20, 100, 200])], "a park", "dogs", prompt="p")
    assert lay.to_xywh_objects() == [("a cat", [10, 20, 100, 200])]


def test_json_round_trip(tmp_path):
    lay = Layout([Box("a red ball", 0.1, 0.2, 0.3, 0.4)], "a beach", "people", "a ball on a beach", {"source": "test"})
    assert Layout.from_json(lay.to_json()) == lay
    lay.save(tmp_path / "l.json")
    assert Layout.load(tmp_path / "l.json") == lay
    assert json.loads(lay.to_json())["boxes"][0]["phrase"] == "a red ball"


@pytest.mark.parametrize("size", [8, 16, 64, 512])
def test_masks_cover_the_box_at_any_resolution(size):
    lay = Layout([Box("left", 0.0, 0.25, 0.5, 0.75), Box("tiny", 0.9, 0.9, 0.901, 0.901)])
    m = lay.masks(size, size)
    assert m.shape == (2, size, size)
    assert m[0].sum().item() == pytest.approx(size * size / 4)
    assert m[0][:, size // 2:].sum() == 0  # nothing on the right half
    assert m[1].sum().item() == 1  # a sub-pixel box still covers one cell


def test_masks_of_empty_layout():
    assert Layout().masks(4, 4).shape == (0, 4, 4)


def test_draw_returns_axes():
    import matplotlib
    matplotlib.use("Agg")
    lay = Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5)])
    ax = lay.draw(image=torch.rand(3, 32, 32))
    assert len(ax.patches) == 1 and ax.texts[0].get_text() == "a cat"


@pytest.mark.parametrize("offset", [0.0, -0.5])
def test_draw_box_outlines_the_box_in_frame_coordinates(offset):
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    draw_box(ax, Box("a cat", 0.25, 0.5, 0.75, 1.0), height=8, width=16, colour="gold", style="--", offset=offset)
    (rect,) = ax.patches
    assert rect.get_xy() == (4.0 + offset, 4.0 + offset)
    assert (rect.get_width(), rect.get_height()) == (8.0, 4.0)
    assert not rect.get_fill() and rect.get_linestyle() == "--"
