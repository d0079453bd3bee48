"""lmd_utils.viz.attention (notebook 01): the token grid, one step and layer of a store, the localisation
scores, one token across layers and steps, and the padding panel.

Stores are filled by hand with known maps (``hand_made_maps``), so every number is exact and no model runs.
"""

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.attention import localisation_by_layer
from lmd_utils.viz.attention import (attention_at_figure, attention_grid_figure, localisation_figure,
                                     token_over_steps_and_layers_figure, with_padding_panel)
from hand_made_maps import COARSE, FINE, LEFT, two_layer_store


def _panels(fig):
    """The visible map panels (not the colour bar)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_attention_grid_figure_panels_scales_and_overlay():
    maps = torch.zeros(3, 4, 4)
    maps[0] = 1.0
    maps[1, 0, 0] = 0.2
    maps[2, 3, 3] = 0.05
    fig = attention_grid_figure(maps, ["⟨sot⟩", "cat", "dog"], boxes=[LEFT])
    axes = _panels(fig)
    assert isinstance(fig, Figure) and [ax.get_title() for ax in axes] == ["⟨sot⟩", "cat", "dog"]
    assert {ax.images[0].get_clim() for ax in axes} == {(0.0, 1.0)}  # one scale: the faint "dog" stays faint
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1  # and one colour bar says it
    assert all(len(ax.patches) == 1 for ax in axes)  # the box outline
    assert [t.get_text() for t in axes[1].texts] == ["left"]  # labelled with its phrase ...
    x, y = axes[1].texts[0].get_position()
    assert 0 <= x <= 4 and 0 <= y <= 4 and axes[1].texts[0].get_clip_on()  # ... inside the canvas
    own = attention_grid_figure(maps, ["⟨sot⟩", "cat", "dog"], shared_scale=False)
    assert [ax.images[0].get_clim()[1] for ax in _panels(own)] == pytest.approx([1.0, 0.2, 0.05])
    assert [ax.get_xlabel() for ax in _panels(own)] == ["max 1.00", "max 0.20", "max 0.05"]
    image = torch.rand(3, 16, 16)
    bump = torch.zeros(3, 4, 4)
    bump[1, 1:3, 1:3] = 1.0  # one map with a peak; the others are empty
    over = attention_grid_figure(bump, ["a", "b", "c"], image=image, ncols=2)
    visible = _panels(over)
    assert len(visible) == 3 and len([ax for ax in over.axes if not ax.get_visible()]) == 1  # one empty slot
    assert visible[1].images[0].get_array().shape[:2] == (16, 16)  # the picture, at full brightness
    assert len(visible[1].images) == 1 and len(visible[1].collections) == 2  # the map: a tint and contour lines
    assert not visible[0].collections  # an empty map draws nothing over the picture
    with pytest.raises(ValueError, match="2 labels for 3 maps"):
        attention_grid_figure(maps, ["a", "b"])
    with pytest.raises(ValueError, match="tokens, H, W"):
        attention_grid_figure(maps[0], ["a"])


def test_attention_grid_figure_gives_the_padding_sum_its_own_scale():
    maps = torch.zeros(6, 4, 4)
    maps[1, 0, 0], maps[2, 1, 1] = 0.2, 0.1
    maps[3:] = 0.3  # three padding tokens: their sum (0.9) is far past the prompt's tokens
    shown, labels = with_padding_panel(maps, ["⟨sot⟩", "cat", "dog"])
    fig = attention_grid_figure(shown, labels)
    axes = _panels(fig)
    assert [ax.images[0].get_clim()[1] for ax in axes] == pytest.approx([0.2, 0.2, 0.2, 0.9])
    assert [ax.get_xlabel() for ax in axes] == ["", "", "", "own scale, max 0.90"]
    capped = attention_grid_figure(maps[:3], ["⟨sot⟩", "cat", "dog"], vmax=0.1)  # any other panel past vmax saturates
    assert {ax.images[0].get_clim()[1] for ax in _panels(capped)} == {0.1}


def test_attention_at_figure_reads_one_record_without_changing_the_store():
    store = two_layer_store()
    before = len(store)
    fig = attention_at_figure(store, 1, "up_blocks.1.attentions.0", ["⟨sot⟩", "cat"], element=1)
    assert len(store) == before
    assert "step 1" in fig._suptitle.get_text() and "up_blocks.1.attentions.0 (8×8)" in fig._suptitle.get_text()
    cat = _panels(fig)[1].images[0].get_array()
    torch.testing.assert_close(torch.as_tensor(cat.data), store.get(FINE, 1)[1].mean(0)[..., 1])
    picked = attention_at_figure(store, 0, COARSE, ["cat"], token_indices=[1])
    assert [ax.get_title() for ax in _panels(picked)] == ["cat"]
    with pytest.raises(KeyError):
        attention_at_figure(store, 7, FINE, ["cat"], token_indices=[1])
    with pytest.raises(ValueError, match="labels"):
        attention_at_figure(store, 0, FINE, ["a", "b"], token_indices=[1])


def test_overview_and_localisation_figures():
    store = two_layer_store(steps=range(6))
    fig = token_over_steps_and_layers_figure(store, 1, "cat", image=torch.rand(3, 8, 8))
    panels = _panels(fig)
    assert len(panels) == 5 * 2 and len(fig.axes) == 5 * 2 + 1  # five of the six steps × two layers, a colour bar
    assert [ax.get_ylabel() for ax in panels[::2]] == ["step 0", "step 1", "step 2", "step 4", "step 5"]
    maps = token_over_steps_and_layers_figure(store, 1, "cat")  # no picture: the densities themselves
    first = _panels(maps)[0].images[0]
    raw = store.get(store.recorded_layers[0], 0)[0].float().mean(0)[..., 1]
    torch.testing.assert_close(torch.as_tensor(first.get_array().data), (raw / raw.mean()).clamp(min=1.0))
    assert len({ax.images[0].get_clim() for ax in _panels(maps)}) == 1  # one (logarithmic) scale for all
    scores = localisation_by_layer(store, [[([1], LEFT)], [([1], LEFT)]])
    fig = localisation_figure(scores, baseline=0.5, steps=store.recorded_steps)
    bars = [p.get_width() for p in fig.axes[0].patches]
    assert bars == pytest.approx([1.0, 0.5])
    assert len(fig.axes[1].lines) == 2 + 1  # one curve per layer and the baseline
    with pytest.raises(ValueError):
        localisation_figure({})


def test_padding_panel_sums_the_tokens_after_the_prompt():
    maps = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(1))
    shown, labels = with_padding_panel(maps, ["⟨sot⟩", "cat", "⟨eot⟩"])
    assert labels == ["⟨sot⟩", "cat", "⟨eot⟩", "⟨pad⟩ ×3 (sum)"] and shown.shape == (4, 4, 4)
    torch.testing.assert_close(shown[:3], maps[:3])
    torch.testing.assert_close(shown[3], maps[3:].sum(0))
    torch.testing.assert_close(shown.sum(0), maps.sum(0))  # nothing lost: still the whole distribution
    same, same_labels = with_padding_panel(maps[:2], ["a", "b"])
    assert torch.equal(same, maps[:2]) and same_labels == ["a", "b"]
    with pytest.raises(ValueError):
        with_padding_panel(maps[:2], ["a", "b", "c"])
