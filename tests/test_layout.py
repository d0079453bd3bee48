import json
import warnings

import pytest
import torch

from lmd_utils.layout import Box, Layout, LayoutError, LayoutWarning, draw_box


def test_xywh_round_trip():
    b = Box.from_xywh("a cat", [64, 128, 192, 256])
    assert b.bbox == pytest.approx((0.125, 0.25, 0.5, 0.75))
    assert b.to_xywh() == [64, 128, 192, 256]
    assert b.center == pytest.approx((0.3125, 0.5))


def test_zero_area_box_is_rejected():
    with pytest.raises(LayoutError, match="has no area"):  # a LayoutError is a ValueError
        Box("x", 0.2, 0.2, 0.2, 0.5)
    assert issubclass(LayoutError, ValueError)


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
    assert lay.meta["warnings"][-1] == "dropped 1 box(es): more than 2 boxes ('a car')"
    lay.validate()


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


def test_box_rounding_edges_by_default_and_the_authors_start_plus_width():
    box = Box("cat", 0.1875, 0.3, 0.5625, 0.7)  # columns 1.5 .. 4.5 on 8 cells
    assert torch.equal(box.mask(8, 8), box.mask(8, 8, rounding="edges"))
    for lo, hi in ((box.x0, box.x1), (box.y0, box.y1)):  # ours: both edges rounded (direct computation)
        a, b = round(lo * 8), round(hi * 8)
        assert (a, b) == (min(max(a, 0), 8), min(max(b, 0), 8)) and b > a
    rows, cols = box.pixel_slices(8, 8)
    assert (cols.start, cols.stop) == (round(1.5), round(4.5)) == (2, 4)
    assert (rows.start, rows.stop) == (round(2.4), round(5.6)) == (2, 6)
    rows, cols = box.pixel_slices(8, 8, rounding="authors")
    assert (cols.start, cols.stop) == (2, 2 + round(3.0)) == (2, 5)  # start and width rounded separately
    assert (rows.start, rows.stop) == (2, 2 + round(0.4 * 8)) == (2, 5)
    assert box.mask(8, 8, rounding="authors").sum() == 9 and box.mask(8, 8).sum() == 8
    with pytest.raises(ValueError):
        box.mask(8, 8, rounding="floor")
