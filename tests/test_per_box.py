import pytest
import torch

from lmd_utils.attention import object_word
from lmd_utils.config import PER_BOX_NEGATIVE_PROMPT
from lmd_utils.layout import Box, Layout
from lmd_utils.per_box import blend_box_noise, generation_box, per_box_prompt, plan_per_box


def test_prompts_and_words():
    assert per_box_prompt("A realistic scene.", "a red car") == "A realistic scene with a red car"
    assert per_box_prompt("", "a red car") == "a red car"
    assert object_word("a jumping pink dolphin.") == "dolphin"
    assert object_word("a red car, parked") == "parked" and object_word("two cats!") == "cats"
    with pytest.raises(ValueError, match="has no words"):
        object_word("...")


def test_authors_placement_centres_horizontally_with_floor_padding():
    b = Box("a dog", 0.1, 0.1, 0.3, 0.5)
    g = generation_box(b)
    assert (g.width, g.height) == pytest.approx((b.width, b.height))
    assert g.center[0] == pytest.approx(0.5)
    assert g.y1 == pytest.approx(0.8)
    tall = generation_box(Box("a tree", 0.0, 0.0, 0.2, 0.95))
    assert tall.y0 == 0 and tall.height == pytest.approx(0.95)
    assert generation_box(b, "box") == b
    with pytest.raises(ValueError):
        generation_box(b, "middle")


def test_blended_noise_changes_only_inside_the_box_and_keeps_variance():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(1, 4, 64, 64, generator=g)
    own = torch.randn(2, 4, 64, 64, generator=g)
    masks = Layout([Box("a", 0, 0, 0.5, 0.5), Box("b", 0.5, 0.5, 1, 1)]).masks(64, 64)
    z = blend_box_noise(shared, own, masks, ratio=0.01)
    assert z.shape == (2, 4, 64, 64)
    outside = (1 - masks[:, None]).bool().expand_as(z)
    assert torch.equal(z[outside], shared.expand_as(z)[outside])
    inside = z[0, :, :32, :32]
    assert not torch.equal(inside, shared[0, :, :32, :32])
    assert inside.std().item() == pytest.approx(1.0, abs=0.05)
    assert (inside - shared[0, :, :32, :32]).abs().max() < 0.5  # r = 0.01: mostly the shared noise


def test_plan_prepends_the_layout_negative_prompt():
    lay = Layout([Box("a cat", 0, 0, 0.5, 0.5), Box("a dog", 0.5, 0, 1, 0.5)], "a park", "birds")
    plan = plan_per_box(lay, seed=3)
    assert plan.prompts == ["a park with a cat", "a park with a dog"]
    assert plan.words == ["cat", "dog"]
    assert plan.negative_prompt == "birds, " + PER_BOX_NEGATIVE_PROMPT
    assert plan.seeds == [23, 24]


def test_box_seeds_ours_by_default_and_the_authors_fixed_start():
    layout = Layout([Box("a cat", 0, 0, 0.5, 0.5), Box("a dog", 0.5, 0.5, 1, 1), Box("a cow", 0, 0.5, 0.5, 1)])
    assert plan_per_box(layout, seed=7).seeds == [7 + 20 + i for i in range(3)] == [27, 28, 29]
    assert plan_per_box(layout, seed=7, box_seed_start=None).seeds == [27, 28, 29]
    assert plan_per_box(layout, seed=7, box_seed_start=20).seeds == [20, 21, 22]  # whatever the image seed
    assert plan_per_box(layout, seed=8, box_seed_start=20).seeds == [20, 21, 22]
    # a box seed equal to the image seed gets +12345 (authors' utils/latents.py)
    assert plan_per_box(layout, seed=21, box_seed_start=20).seeds == [20, 21 + 12345, 22]
