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


@pytest.fixture
def denoise_calls(monkeypatch):
    """The hooks of every denoising pass the baselines run."""
    calls = []
    original = sampling.denoise

    def counting(*args, **kwargs):
        calls.append(kwargs.get("hooks", ()))
        return original(*args, **kwargs)

    monkeypatch.setattr(baselines, "denoise", counting)
    return calls


def test_backward_guidance_is_one_guided_pass_on_the_loop(toy, denoise_calls):
    pipe, config = toy
    calls = denoise_calls
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


# -- BoxDiff -----------------------------------------------------------------------------------------------
def test_boxdiff_energy_equals_the_authors_on_the_same_maps():
    """tests/fixtures/authors_boxdiff_energy.json: their add_ca_loss_per_attn_map_to_loss_boxdiff on seeded maps
    (regenerate with tests/fixtures/authors_boxdiff_energy.py)."""
    import json
    import math
    from pathlib import Path

    from lmd_utils.sampling import ObjectTarget

    cases = json.loads((Path(__file__).parent / "fixtures" / "authors_boxdiff_energy.json").read_text())["cases"]
    assert len(cases) == 4
    for case in cases:
        maps = torch.tensor(case["maps"], dtype=torch.float64)
        side = math.isqrt(maps.shape[0])
        objects = []
        for boxes, tokens in zip(case["bboxes"], case["object_positions"]):
            boxes = boxes if isinstance(boxes[0], list) else [boxes]
            objects.append(ObjectTarget(tuple(Box("x", *b) for b in boxes), tuple(tokens)))
        hook = baselines.BoxDiffGuidance(objects, box_rounding="authors")
        ours = float(hook.energy(maps.reshape(side, side, -1)))
        assert ours == pytest.approx(case["loss"], abs=2e-5), case["bboxes"]


def test_boxdiff_energy_is_low_for_a_map_inside_its_box_and_high_outside():
    from lmd_utils.sampling import ObjectTarget

    box = Box("a cat", 0.25, 0.25, 0.75, 0.75)
    probs = torch.full((16, 16, 6), 1e-3)
    inside, outside = probs.clone(), probs.clone()
    inside[4:12, 4:12, 2] = 1.0  # token 2 fills its box exactly
    outside[0:4, 0:4, 2] = 1.0  # token 2 sits in a corner outside
    hook = baselines.BoxDiffGuidance([ObjectTarget((box,), (2,))])
    low, high = float(hook.energy(inside)), float(hook.energy(outside))
    assert low < 0.6 and high > low + 1.0, (low, high)  # outside: the inner-box term alone is ~1


def test_boxdiff_is_one_pass_with_one_step_per_early_step(toy, denoise_calls):
    pipe, config = toy
    calls = denoise_calls
    settings = baselines.BOXDIFF.scaled_to(config.num_inference_steps)
    assert settings.guidance_steps == 3  # the first half of the steps, as 25 of 50
    result = baselines.boxdiff(pipe, LAYOUT, seed=3, config=config, progress=False)
    assert len(calls) == 1 and [type(h).__name__ for h in calls[0]] == ["BoxDiffGuidance"]
    hook = calls[0][0]
    assert [step for step, _ in hook.log] == [0, 1, 2]  # one gradient step on each guided step
    assert all(e == e and e > 0 for _, e in hook.log)
    assert result.method == "boxdiff" and result.image.shape == (3, 32, 32)
    assert torch.equal(result.image, baselines.boxdiff(pipe, LAYOUT, seed=3, config=config, progress=False).image)
    plain = generate_sd(pipe, result.prompts[0], seed=3, config=config, negative_prompt=result.negative_prompt,
                        progress=False)
    assert not torch.equal(plain, result.image)
    assert baselines.BOXDIFF.step_size == 20 and baselines.BOXDIFF.guidance_steps == 25  # the authors' literal run
    assert "boxdiff" in baselines.BASELINES


def test_boxdiff_uses_the_16x16_layers_on_sd_shaped_unets():
    from lmd_utils.models import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    assert baselines.boxdiff_layers(pipe.unet, baselines.BOXDIFF) == baselines.BOXDIFF_LAYERS
    result = baselines.boxdiff(pipe, Layout([Box("a cat", 0.1, 0.2, 0.6, 0.9)], "a garden", prompt="a cat"),
                               seed=0, config=baselines.LMDConfig(num_inference_steps=2), progress=False)
    assert result.image.shape == (3, 256, 256) and torch.isfinite(result.image).all()


def test_the_method_list_names_every_baseline_in_the_papers_order():
    from lmd_utils.stage2 import METHODS

    assert METHODS[0] == "sd" and "lmd" in METHODS
    assert [m for m in METHODS if m in baselines.BASELINES] == list(baselines.BASELINES)
    assert set(METHODS) - {"sd", "lmd", "lmd+"} == set(baselines.BASELINES)
    assert set(baselines.GLIGEN_METHODS) <= set(METHODS)


def test_layout_image_runs_every_layout_method_by_name(toy):
    pipe, config = toy
    for method in ("multidiffusion", "boxdiff"):
        assert torch.equal(baselines.layout_image(pipe, method, LAYOUT, 3, config, progress=False),
                           baselines.BASELINES[method](pipe, LAYOUT, 3, config, progress=False).image)
    with pytest.raises(ValueError, match="unknown layout method"):
        baselines.layout_image(pipe, "magic", LAYOUT, 3, config)
    with pytest.raises(ValueError, match="lmd\\+ needs a GLIGEN model"):
        baselines.check_methods(pipe, ["sd", "lmd+"])  # the toy model has no GLIGEN layers


def test_shipped_settings_override_the_authors_and_explicit_settings_win(tmp_path):
    import json

    class _Pipe:
        name_or_path = str(tmp_path)

    assert baselines.shipped_settings(_Pipe()) == {}
    (tmp_path / baselines.SHIPPED_SETTINGS_FILE).write_text(json.dumps(
        {"_command": "python benchmarks/calibrate_baselines.py", "boxdiff": {"step_size": 60.0}}))
    assert baselines.shipped_settings(_Pipe()) == {"boxdiff": {"step_size": 60.0}}
    got = baselines.method_settings(_Pipe(), "boxdiff", baselines.BOXDIFF)
    assert got.step_size == 60.0 and got.guidance_steps == baselines.BOXDIFF.guidance_steps
    assert baselines.method_settings(_Pipe(), "boxdiff", baselines.BOXDIFF, {"step_size": 5.0}).step_size == 5.0
    mine = baselines.BoxDiffConfig(step_size=1.0)
    assert baselines.method_settings(_Pipe(), "boxdiff", baselines.BOXDIFF, mine) is mine
    assert baselines.method_settings(_Pipe(), "multidiffusion", baselines.MULTIDIFFUSION) == baselines.MULTIDIFFUSION


@pytest.mark.slow  # a subprocess that loads the toy model: about 30 s
def test_the_calibration_script_prints_one_row_per_setting_and_keeps_the_authors_within_the_margin():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_baselines.py"
    out = subprocess.run([sys.executable, str(script), "--n-per-task", "1", "--method", "boxdiff", "--only", "0", "1",
                          "--margin", "100"], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "LMD_PROGRESS": "off"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("boxdiff ")]
    assert len(rows) == 2 and "step_size=20.0" in rows[0] and "step_size=5.0" in rows[1]
    assert json.loads(lines[-1]) == {"boxdiff": {"step_size": 20.0}}  # a 100-point margin: the authors' value stays
