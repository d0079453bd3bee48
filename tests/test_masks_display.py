"""lmd_utils.viz.masks (notebook 04): attention to mask, the threshold sweep, SAM's point prompt."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.layout import Box
from lmd_utils.masks import threshold_sweep
from lmd_utils.viz.common import figure_to_png
from lmd_utils.viz.masks import mask_figure, point_prompt_figure, threshold_sweep_figure
from hand_made_maps import blob

BOX = Box("a red circle", 0.25, 0.25, 0.75, 0.75)


def test_mask_figure_reports_area_and_iou_with_the_reference():
    amap = blob()
    reference = BOX.mask(32, 32, dtype=torch.bool)
    fig = mask_figure(amap, BOX, (32, 32), threshold=0.25, image=torch.rand(3, 32, 32), reference=reference)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    mask = threshold_sweep(amap, BOX, (32, 32), [0.25])[0]
    iou = (mask & reference).sum().item() / (mask | reference).sum().item()
    title = fig.axes[2].get_title()
    assert f"{int(mask.sum())} cells" in title and f"IoU with reference (dashed) {iou:.2f}" in title
    assert "normalised in box" in fig.axes[1].get_title()
    following = mask_figure(amap, BOX, (32, 32), reference=reference, method="object")
    mask = threshold_sweep(amap, BOX, (32, 32), [0.25], method="object")[0]
    assert "normalised over the map" in following.axes[1].get_title()
    assert f"{int(mask.sum())} cells" in following.axes[2].get_title()
    sam = torch.zeros(64, 64, dtype=torch.bool)
    sam[20:40, 20:40] = True
    fig = mask_figure(amap, BOX, (32, 32), image=torch.rand(3, 64, 64), sam_mask=sam)
    assert len(fig.axes) == 4 and fig.axes[3].get_title() == "SAM mask (400 px)"
    fallback = mask_figure(amap, BOX, (32, 32), sam_mask=sam, sam_label="coarse-fallback")
    assert fallback.axes[3].get_title() == "coarse-fallback (400 px)"
    assert figure_to_png(fig).startswith(b"\x89PNG")


def test_threshold_sweep_figure_plots_area_and_iou():
    amap = blob()
    reference = BOX.mask(32, 32, dtype=torch.bool)
    fig = threshold_sweep_figure(amap, BOX, (32, 32), thresholds=(0.1, 0.5, 0.9), reference=reference,
                                 method="object")
    assert len(fig.axes) == 4
    lines = fig.axes[-1].get_lines()
    assert [line.get_label() for line in lines] == ["mask area / box area", "IoU with reference"]
    area = lines[0].get_ydata()
    assert list(area) == sorted(area, reverse=True)
    assert fig.axes[-1].get_ylim()[1] >= max(area)  # a mask may be larger than its box: not cut to it
    for ax, iou in zip(fig.axes[:3], lines[1].get_ydata()):  # the reference is drawn where it is scored
        assert f"IoU {iou:.2f}" in ax.get_title()
        assert any(p.get_linestyle() in ("--", "dashed") for p in ax.patches)  # the reference box, dashed


def test_point_prompt_figure_marks_the_attention_peak():
    maps = torch.stack([blob(centre=(3.5, 3.5)), blob(centre=(12.5, 10.5))])  # peaks on cells (3, 3), (10, 12)
    fig = point_prompt_figure(maps, [torch.rand(3, 32, 32)] * 2, boxes=[BOX, BOX], titles=["a", "b"])
    assert len(fig.axes) == 2
    stars = [ax.get_lines()[0].get_xydata()[0].tolist() for ax in fig.axes]
    # the peak cell's centre on the 32×32 image (2 pixels per cell): x = 2·(col + 0.5), y = 2·(row + 0.5)
    assert stars == [[7.0, 7.0], [25.0, 21.0]]
    with pytest.raises(ValueError):
        point_prompt_figure(maps, [torch.rand(3, 32, 32)])
