"""attention.py's display and analysis helpers (notebook 01): labels, mass in a box, per-layer scores, figures.

Stores are filled by hand with known maps, so every number is exact and no model runs.
"""

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.attention import (AttentionRecord, AttentionStore, attention_at_figure, attention_grid_figure,
                                 localisation_by_layer, localisation_figure, mass_inside_box, object_map,
                                 short_layer_name, token_labels, token_over_steps_and_layers_figure,
                                 with_padding_panel)
from lmd_utils.layout import Box
from lmd_utils.models import TINY_VOCABULARY
from lmd_utils.offline_tokenizer import build_clip_tokenizer

FINE = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
COARSE = "mid_block.attentions.0.transformer_blocks.0.attn2"
LEFT = Box("left", 0.0, 0.0, 0.5, 1.0)  # the left half


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer(TINY_VOCABULARY)


def _record(layer: str, step: int, maps: torch.Tensor, heads: int = 2, tokens: int = 5) -> AttentionRecord:
    """A record whose token 1 has ``maps`` (batch, H, W) on every head; the rest of the mass sits on token 0."""
    b, h, w = maps.shape
    probs = torch.zeros(b, heads, h, w, tokens)
    probs[..., 1] = maps[:, None]
    probs[..., 0] = 1 - maps[:, None]
    return AttentionRecord(layer, step, probs)


def _store(steps=(0, 1)) -> AttentionStore:
    """Two layers: FINE (8×8) puts token 1 entirely in the left half; COARSE (4×4) spreads it uniformly."""
    store = AttentionStore(layers="all")
    inside = LEFT.mask(8, 8)
    for step in steps:
        store.records.append(_record(FINE, step, (inside / inside.sum() * 4).expand(2, 8, 8)))
        store.records.append(_record(COARSE, step, torch.full((2, 4, 4), 0.25)))
    return store


def test_short_names_and_token_labels(tokenizer):
    assert short_layer_name(FINE) == "up_blocks.1.attentions.0"
    assert short_layer_name("up_blocks.1.attentions.0") == "up_blocks.1.attentions.0"
    assert token_labels(tokenizer, "a red cat") == ["⟨sot⟩", "a", "red", "cat", "⟨eot⟩"]
    assert token_labels(tokenizer, "a red cat", include_end=False) == ["⟨sot⟩", "a", "red", "cat"]
    spelt = token_labels(tokenizer, "a zebu")  # not in the vocabulary: split into pieces, no "</w>" left
    assert spelt[:2] == ["⟨sot⟩", "a"] and "".join(spelt[2:-1]) == "zebu" and len(spelt) > 4
    assert all("</w>" not in s for s in spelt)


def test_mass_inside_box_numbers():
    mask = LEFT.mask(4, 4)
    assert mass_inside_box(torch.ones(4, 4), mask).item() == pytest.approx(0.5)  # uniform: the box's area
    one_hot = torch.zeros(4, 4)
    one_hot[2, 1] = 0.3
    assert mass_inside_box(one_hot, mask).item() == pytest.approx(1.0)
    assert mass_inside_box(one_hot.flip(-1), mask).item() == pytest.approx(0.0)
    batch = torch.stack([torch.ones(4, 4), one_hot, one_hot.flip(-1)])[:, None].expand(3, 2, 4, 4)
    torch.testing.assert_close(mass_inside_box(batch, mask), torch.tensor([[0.5] * 2, [1.0] * 2, [0.0] * 2]))
    assert mass_inside_box(torch.zeros(4, 4), mask).item() == 0.0  # an empty map: 0, not NaN


def test_object_map_is_the_head_and_token_mean():
    probs = torch.rand(3, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(object_map(probs, [2, 5]), probs.mean(0)[..., [2, 5]].mean(-1))


def test_localisation_by_layer_scores_each_layer_and_step():
    store = _store()
    objects = [[([1], LEFT)], [([1], LEFT)]]
    scores = localisation_by_layer(store, objects)
    assert list(scores) == [FINE, COARSE]
    # token 1 is averaged with nothing else: FINE holds all its mass in the box, COARSE half (the box's area)
    torch.testing.assert_close(scores[FINE], torch.ones(2))
    torch.testing.assert_close(scores[COARSE], torch.full((2,), 0.5))
    # token 0 has the complement: nothing of FINE's inside (its in-box cells are 0), half of COARSE's
    complement = localisation_by_layer(store, [[([0], LEFT)], []], steps=[1])
    assert complement[FINE].shape == (1,) and complement[COARSE].item() == pytest.approx(0.5)
    assert complement[FINE].item() < 0.5
    with pytest.raises(ValueError, match="no objects"):
        localisation_by_layer(store, [[], []])
    with pytest.raises(ValueError, match="3 elements"):
        localisation_by_layer(store, [[([1], LEFT)]] * 3)


def test_attention_grid_figure_panels_scales_and_overlay():
    maps = torch.zeros(3, 4, 4)
    maps[0] = 1.0
    maps[1, 0, 0] = 0.2
    maps[2, 3, 3] = 0.05
    fig = attention_grid_figure(maps, ["⟨sot⟩", "cat", "dog"], boxes=[LEFT])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert isinstance(fig, Figure) and [ax.get_title() for ax in axes] == ["⟨sot⟩", "cat", "dog"]
    assert [ax.images[0].get_clim()[1] for ax in axes] == pytest.approx([1.0, 0.2, 0.05])  # own scale each
    assert all(len(ax.patches) == 1 for ax in axes)  # the box outline
    shared = attention_grid_figure(maps, ["⟨sot⟩", "cat", "dog"], shared_scale=True)
    assert {ax.images[0].get_clim()[1] for ax in shared.axes if ax.get_visible()} == {1.0}
    image = torch.rand(3, 16, 16)
    over = attention_grid_figure(maps, ["a", "b", "c"], image=image, ncols=2)
    visible = [ax for ax in over.axes if ax.get_visible()]
    assert len(over.axes) == 4 and len(visible) == 3  # 2 columns: one empty slot hidden
    assert visible[1].images[1].get_array().shape == (16, 16)  # the map was upsampled to the picture
    with pytest.raises(ValueError, match="2 labels for 3 maps"):
        attention_grid_figure(maps, ["a", "b"])
    with pytest.raises(ValueError, match="tokens, H, W"):
        attention_grid_figure(maps[0], ["a"])


def test_attention_at_figure_reads_one_record_without_changing_the_store():
    store = _store()
    before = len(store)
    fig = attention_at_figure(store, 1, "up_blocks.1.attentions.0", ["⟨sot⟩", "cat"], element=1)
    assert len(store) == before
    assert "step 1" in fig._suptitle.get_text() and "up_blocks.1.attentions.0 (8×8)" in fig._suptitle.get_text()
    cat = fig.axes[1].images[0].get_array()
    torch.testing.assert_close(torch.as_tensor(cat.data), store.get(FINE, 1)[1].mean(0)[..., 1])
    picked = attention_at_figure(store, 0, COARSE, ["cat"], token_indices=[1])
    assert [ax.get_title() for ax in picked.axes] == ["cat"]
    with pytest.raises(KeyError):
        attention_at_figure(store, 7, FINE, ["cat"], token_indices=[1])
    with pytest.raises(ValueError, match="labels"):
        attention_at_figure(store, 0, FINE, ["a", "b"], token_indices=[1])


def test_overview_and_localisation_figures():
    store = _store(steps=range(6))
    fig = token_over_steps_and_layers_figure(store, 1, "cat", image=torch.rand(3, 8, 8))
    assert len(fig.axes) == 5 * 2  # five of the six steps × two layers
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["step 0", "step 1", "step 2", "step 4", "step 5"]
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
