"""The comparison methods of lmd_utils.baselines (issue #14, item 4): hooks on the one loop, same layout and seed."""
import pytest
import torch

from lmd_utils import baselines, sampling
from lmd_utils.baselines import (BACKWARD_GUIDANCE, Bootstrap, FuseRegions, backward_guidance, multidiffusion,
                                 region_masks)
from lmd_utils.layout import Box, Layout
from lmd_utils.pipeline import generate_sd


@pytest.fixture(scope="module")
def toy():
    from lmd_utils.toyworld.benchmark import toy_lmd_config
    from lmd_utils.toyworld.model import load_toyworld_pipeline

    pipe = load_toyworld_pipeline("data/toyworld/model")
    return pipe, toy_lmd_config(pipe, steps=6)


LAYOUT = Layout([Box("a red circle", 0.06, 0.3, 0.44, 0.68), Box("a blue square", 0.56, 0.3, 0.94, 0.68)], "",
                prompt="a red circle on the left and a blue square on the right")


class _State:
    def __init__(self, latents, step=0, timestep=500):
        from diffusers import DDIMScheduler

        self.latents, self.step, self.timestep = latents, step, torch.tensor(timestep)
        self.scheduler = DDIMScheduler()


def test_regions_first_box_on_top_and_background_everywhere():
    masks = region_masks(Layout([Box("a", 0.0, 0.0, 0.5, 0.5), Box("b", 0.25, 0.25, 0.75, 0.75)]), 8, 8)
    assert masks.shape == (3, 1, 8, 8) and masks[0].sum() == 64
    assert masks[1].sum() == 16 and masks[2].sum() == 16 - 4  # the overlap belongs to the first box
    assert (masks[1:].sum(0) <= 1).all()


def test_fusion_is_the_mask_weighted_mean_copied_to_every_element():
    masks = torch.zeros(2, 1, 2, 2)
    masks[0] = 1
    masks[1, :, 0, 0] = 1
    latents = torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 4.0)])
    fused = FuseRegions(masks).after_step(_State(latents))
    assert fused.shape == latents.shape and torch.equal(fused[0], fused[1])
    assert fused[0, 0, 0, 0] == 3.0 and fused[0, 0, 1, 1] == 2.0  # (2 + 4) / 2 inside the box, background outside


def test_bootstrap_replaces_only_outside_each_box_and_only_early():
    masks = torch.zeros(2, 1, 4, 4)
    masks[0] = 1
    masks[1, :, :2, :2] = 1
    latents = torch.randn(2, 3, 4, 4)
    hook = Bootstrap(masks, torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4), steps=2)
    out = hook.before_step(_State(latents, step=1))
    assert torch.equal(out[0], latents[0]) and torch.equal(out[1, :, :2, :2], latents[1, :, :2, :2])
    assert not torch.allclose(out[1, :, 2:, 2:], latents[1, :, 2:, 2:])
    assert hook.before_step(_State(latents, step=2)) is None


def test_backward_guidance_is_one_guided_pass_on_the_loop(toy, monkeypatch):
    pipe, config = toy
    calls = []
    original = sampling.denoise

    def counting(*args, **kwargs):
        calls.append(kwargs.get("hooks", ()))
        return original(*args, **kwargs)

    monkeypatch.setattr(baselines, "denoise", counting)
    result = backward_guidance(pipe, LAYOUT, seed=3, config=config, progress=False)
    assert len(calls) == 1 and len(calls[0]) == 1  # one pass, one hook: the box guidance
    guidance = calls[0][0]
    assert guidance.log and all(e.energies[0] == e.energies[0] for e in guidance.log)  # it guided (finite)
    assert result.image.shape == (3, 32, 32) and result.method == "backward-guidance"
    again = backward_guidance(pipe, LAYOUT, seed=3, config=config, progress=False).image
    assert torch.equal(result.image, again)  # same seed, same image
    plain = generate_sd(pipe, result.prompts[0], seed=3, config=config, negative_prompt=result.negative_prompt,
                        progress=False)
    assert not torch.equal(plain, result.image)  # the guidance changed the image
    assert BACKWARD_GUIDANCE.loss_scale == 30 and BACKWARD_GUIDANCE.head_reduction == "sum"


def test_multidiffusion_batches_one_prompt_per_region_and_fuses(toy, monkeypatch):
    pipe, config = toy
    seen = []
    original = sampling.denoise

    def counting(pipe_, latents, cond, *args, **kwargs):
        seen.append((latents.shape[0], cond.shape[0], [type(h).__name__ for h in kwargs.get("hooks", ())]))
        return original(pipe_, latents, cond, *args, **kwargs)

    monkeypatch.setattr(baselines, "denoise", counting)
    result = multidiffusion(pipe, LAYOUT, seed=3, config=config, progress=False)
    assert seen == [(3, 3, ["Bootstrap", "FuseRegions"])]
    assert result.prompts == ["", "a red circle", "a blue square"] and result.image.shape == (3, 32, 32)
    empty = Layout([], "", prompt="a plain background")  # no boxes: plain sampling of the background
    assert torch.equal(multidiffusion(pipe, empty, 3, config, progress=False).image,
                       generate_sd(pipe, "a plain background", 3, config, negative_prompt=result.negative_prompt,
                                   progress=False))
