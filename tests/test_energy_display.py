"""energy.py's display helpers (notebook 02): hand-made maps, the energy's exact gradient, figures."""

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.energy import (box_energy, energy_and_gradient, energy_curve_figure, energy_gradient_figure,
                              gaussian_map, image_grid_figure)
from lmd_utils.layout import Box

BOX = Box("target", 0.1, 0.1, 0.5, 0.5)


def test_gaussian_map_peak_and_place():
    m = gaussian_map(16, 8, center=(0.25, 0.75), sigma=0.1, peak=0.6)
    assert m.shape == (16, 8) and m.max().item() <= 0.6 and m.min().item() >= 0
    row, col = divmod(int(m.argmax()), 8)
    assert (row, col) in {(11, 1), (12, 1), (11, 2), (12, 2)}  # cells around (x 0.25, y 0.75)
    assert torch.equal(m, gaussian_map(16, 8, center=(0.25, 0.75), sigma=0.1, peak=0.6))
    for bad in (dict(peak=0.0), dict(peak=1.5), dict(sigma=0.0)):
        with pytest.raises(ValueError):
            gaussian_map(4, 4, center=(0.5, 0.5), **bad)


def test_energy_gradient_is_minus_one_over_k_inside_and_w_over_k_outside():
    b = BOX.mask(16, 16)  # 6×6 = 36 cells → k_in = 7; 220 outside → k_out = 44
    away = gaussian_map(16, 16, center=(0.72, 0.68))
    energy, grad = energy_and_gradient(away, b)
    assert energy.item() == pytest.approx(box_energy(away, b).item())
    assert not away.requires_grad and grad.shape == away.shape
    assert int((grad != 0).sum()) == 7 + 44
    assert grad[b.bool()].unique().tolist() == pytest.approx([-1 / 7, 0.0])
    assert grad[~b.bool()].unique().tolist() == pytest.approx([0.0, 4 / 44])
    # other weights and fractions scale the same way
    _, g = energy_and_gradient(away, b, outside_weight=1.0, top_fraction=1.0)
    torch.testing.assert_close(g, torch.where(b.bool(), -1 / 36, 1 / 220))
    # batched maps: the summed energy, each map's own gradient
    maps = torch.stack([away, gaussian_map(16, 16, center=(0.3, 0.3))])
    total, grads = energy_and_gradient(maps, b)
    assert total.item() == pytest.approx(box_energy(maps, b).sum().item())
    torch.testing.assert_close(grads[0], grad)


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


def test_image_grid_figure_layout_and_checks():
    images = [[torch.rand(3, 8, 8) for _ in range(3)] for _ in range(2)]
    fig = image_grid_figure(images, ["row a", "row b"], ["x", "y", "z"], boxes=[BOX],
                            notes=[["1", "2", "3"], ["4", "5", "6"]], title="t")
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "x" and fig.axes[3].get_ylabel() == "row b"
    assert fig.axes[5].get_xlabel() == "6" and len(fig.axes[4].patches) == 1
    with pytest.raises(ValueError, match="2 rows of 2"):
        image_grid_figure(images, ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="notes"):
        image_grid_figure(images, ["a", "b"], ["x", "y", "z"], notes=[["1"], ["2"]])
