"""lmd_utils.viz.common: what every step's pictures share (mask outlines, latents as RGB, the steps to show,
the image grid)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.layout import Box
from lmd_utils.viz.common import evenly_spaced_steps, figure_to_png, image_grid_figure, latents_to_rgb, outline_mask

BOX = Box("target", 0.1, 0.1, 0.5, 0.5)


def test_pixel_space_latents_are_the_image():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 4).expand(3, 1, 4)  # (C, h, w)
    rgb = latents_to_rgb(x, pixel_space=True)
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0.0, 0.5, 1.0, 1.0]  # (x + 1) / 2, clipped


def test_latent_space_channels_are_stretched_one_by_one():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g) * torch.tensor([1.0, 10.0, 0.1, 5.0]).view(1, 4, 1, 1)
    rgb = latents_to_rgb(z, pixel_space=False)
    assert rgb.shape == (2, 8, 8, 3)  # channels 0-2 only
    for b in range(2):
        for c in range(3):  # every channel spans [0, 1] whatever its scale
            assert rgb[b, ..., c].min() == pytest.approx(0.0) and rgb[b, ..., c].max() == pytest.approx(1.0)
    assert latents_to_rgb(torch.zeros(1, 5, 5), pixel_space=False).shape == (5, 5, 3)  # grey, no NaN
    assert not latents_to_rgb(torch.zeros(1, 5, 5), pixel_space=False).isnan().any()
    with pytest.raises(ValueError):
        latents_to_rgb(torch.zeros(4, 4))


def test_evenly_spaced_steps_keep_both_ends():
    assert evenly_spaced_steps(21, 6) == [0, 4, 8, 12, 16, 20]
    assert evenly_spaced_steps(3, 10) == [0, 1, 2]
    assert evenly_spaced_steps(5, 1) == [4]
    with pytest.raises(ValueError):
        evenly_spaced_steps(0, 3)


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


def test_outline_mask_is_a_rectangle_or_a_contour_on_cell_edges():
    rect = torch.zeros(4, 8)
    rect[1:3, 2:6] = 1
    ax = Figure().subplots()
    outline_mask(ax, rect, 8, 16)  # drawn with extent=(0, 16, 8, 0): cells of 2×2
    (patch,) = ax.patches
    assert (patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()) == (4, 2, 8, 4)
    ax = Figure().subplots()
    outline_mask(ax, rect.bool(), 4, 8, offset=-0.5)  # a plain imshow of the grid: cell centres on integers
    (patch,) = ax.patches
    assert (patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()) == (1.5, 0.5, 4, 2)
    corner = rect.clone()
    corner[0, 2] = 1  # no longer a rectangle: a contour instead
    ax = Figure().subplots()
    outline_mask(ax, corner.numpy(), 4, 8)
    assert not ax.patches and len(ax.collections) == 1
    ax = Figure().subplots()
    outline_mask(ax, torch.zeros(4, 8), 4, 8)  # nothing to outline
    assert not ax.patches and not ax.collections
    assert figure_to_png(ax.figure).startswith(b"\x89PNG")


def test_halo_box_shows_on_any_background_and_labels_inside_the_canvas():
    from lmd_utils.viz.common import halo_box, label_box

    ax = Figure().subplots()
    ax.imshow(torch.rand(8, 8, 3).numpy(), extent=(0, 8, 8, 0))
    halo_box(ax, BOX, 8, 8, label="target")
    (patch,) = ax.patches
    effects = patch.get_path_effects()
    assert patch.get_linestyle() == "--" and len(effects) == 2  # a dark dashed line over a light halo
    assert effects[0]._gc["foreground"] == "white" and ax.texts[0].get_text() == "target"
    right = Box("a long caption for a box at the right edge", 0.7, 0.6, 1.0, 0.95)
    text = label_box(ax, right, 8, 8, right.phrase, wrap=12)
    assert text.get_ha() == "right" and text.get_position()[0] <= 8  # ends at the box's right edge
    assert text.get_text().count("\n") == 1  # wrapped, onto two lines at most
    low = label_box(ax, Box("low", 0.1, 0.95, 0.3, 1.0), 8, 8, "low")
    assert low.get_va() == "bottom" and low.get_position()[1] <= 8
    above = label_box(ax, BOX, 8, 8, "above", outside=True)
    assert above.get_va() == "bottom" and above.get_position()[1] < BOX.y0 * 8  # over the box, not on what is in it


def test_image_grid_notes_are_readable():
    images = [[torch.rand(3, 8, 8)]]
    fig = image_grid_figure(images, ["row"], ["col"], boxes=[BOX], notes=[["0.87"]])
    assert fig.axes[0].xaxis.label.get_fontsize() == 10
    assert fig.axes[0].patches[0].get_path_effects()  # the target box has its halo
