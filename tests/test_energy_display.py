"""lmd_utils.viz.energy (notebook 02): the map and its gradient, the energy curve; and the hand-made maps and
the energy's exact gradient (energy.py) that these pictures show."""

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.energy import box_energy, gaussian_map
from lmd_utils.layout import Box
from lmd_utils.viz.energy import energy_curve_figure, energy_gradient_figure

BOX = Box("target", 0.1, 0.1, 0.5, 0.5)


def test_energy_gradient_figure_shows_map_and_gradient_per_map():
    b = BOX.mask(16, 16)
    maps = torch.stack([gaussian_map(16, 16, (0.7, 0.7)), gaussian_map(16, 16, (0.3, 0.3))])
    fig = energy_gradient_figure(maps, b, titles=["away", "there"])
    images = [ax for ax in fig.axes if ax.images]
    assert isinstance(fig, Figure) and len(images) == 4  # map, gradient, map, gradient (plus colour bars)
    assert f"E = {box_energy(maps[0], b).item():.3f}" in images[0].get_title()
    assert images[0].get_title().startswith("away")
    lo, hi = images[1].images[0].get_clim()
    assert lo == -hi and hi == pytest.approx(1 / 7)  # symmetric around 0, up to the largest |∂E/∂A|
    rect = images[0].patches[0]  # the box outline sits on the cells' edges
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (1.5, 1.5, 6, 6)
    union = b.clone()
    union[12:14, 12:14] = 1  # two boxes: a contour instead of one rectangle
    assert not energy_gradient_figure(maps[0], union).axes[0].patches
    with pytest.raises(ValueError, match="titles"):
        energy_gradient_figure(maps, b, titles=["one"])


def test_energy_curve_spreads_iterations_over_their_step():
    points = [(0, 0, 1.0), (0, 1, 0.9), (0, 2, 0.8), (1, 0, 0.85), (2, 0, 0.7)]
    fig = energy_curve_figure({"guided": points, "empty": []}, threshold=0.5)
    ax = fig.axes[0]
    line = ax.lines[0]
    assert list(line.get_xdata()) == pytest.approx([0, 1 / 3, 2 / 3, 1, 2])
    assert list(line.get_ydata()) == [1.0, 0.9, 0.8, 0.85, 0.7]
    assert len(ax.lines) == 2 and list(ax.lines[1].get_ydata()) == [0.5, 0.5]  # the threshold
    with pytest.raises(ValueError):
        energy_curve_figure({})
