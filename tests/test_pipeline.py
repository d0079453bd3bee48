"""End to end on the random-weight tiny SD: the wiring of LMD stage 2 (behaviour, not image quality)."""
from dataclasses import replace

import pytest
import torch

from lmd_utils.attention import GUIDANCE_LAYERS, MASK_LAYERS, default_layers
from lmd_utils.composition import compose_trajectory, overall_phrases, overall_prompt, overall_prompt_for
from lmd_utils.config import LMDConfig
from lmd_utils.layout import Box, Layout
from lmd_utils.models import build_tiny_pipeline, initial_noise
from lmd_utils.pipeline import generate, generate_sd


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def layout():
    return Layout([Box("a red cat", 0.05, 0.1, 0.45, 0.6), Box("a dog", 0.55, 0.3, 0.95, 0.9),
                   Box("a dog", 0.3, 0.6, 0.6, 0.95)], "a park", "birds", "a red cat and two dogs in a park")


@pytest.fixture(scope="module")
def config(pipe):
    return LMDConfig.for_pipe(pipe, per_box_negative_prompt="", overall_negative_prompt="").with_steps(6)


@pytest.fixture(scope="module")
def result(pipe, layout, config):
    return generate(pipe, layout, seed=1, config=config, progress=False)


def test_overall_prompt_groups_instances_like_the_authors(layout):
    assert overall_phrases(layout) == [("a red cat", [0]), ("two dogs", [1, 2])]
    assert overall_prompt(layout) == "a park with a red cat, two dogs"
    assert overall_prompt(Layout([Box("a box", 0, 0, .5, .5)] * 3, "")) == "three boxes"
    assert overall_prompt(Layout([], "a quiet park.")) == "a quiet park"


def test_sd_shaped_unet_gets_the_authors_layers(pipe):
    assert default_layers(pipe.unet) == (GUIDANCE_LAYERS, MASK_LAYERS)


def test_config_from_json_style_dict():
    config = LMDConfig.from_dict({"num_inference_steps": 7, "mask_layers": ["mid_block"],
                                  "per_box_guidance": {"iterations": [2, 1], "layers": "all"},
                                  "overall_guidance": {"layers": ["mid_block", "up_blocks.1"]}})
    assert config.num_inference_steps == 7 and config.mask_layers == ("mid_block",)
    assert config.per_box_guidance.iterations == (2, 1)
    assert config.per_box_guidance.layers == ("all",)  # not ("a", "l", "l")
    assert config.overall_guidance.layers == ("mid_block", "up_blocks.1")
    with pytest.raises(TypeError):
        LMDConfig.from_dict({"no_such_setting": 1})


def test_config_scales_the_schedule_with_the_steps(config):
    assert config.num_inference_steps == 6
    assert config.per_box_guidance.guidance_steps == round(30 * 6 / 50)
    assert config.mask_start_step == 1


def test_generate_keeps_every_intermediate(result, layout, config):
    n, T = len(layout), config.num_inference_steps
    assert result.method == "lmd" and result.image.shape == (3, 256, 256)
    assert 0 <= result.image.min() and result.image.max() <= 1
    assert result.per_box.latents.shape[:2] == (T + 1, n)
    assert result.per_box.images.shape == (n, 3, 256, 256)
    assert result.composed_latents.shape[0] == T + 1
    assert result.overall_latents.shape[:2] == (T + 1, 1)
    assert result.negative_prompt == "birds"  # the layout's negative prompt reaches the overall pass
    assert len(result.masks) == n and result.aligned_masks.shape == (n, 32, 32)
    assert result.per_box.guidance[0].log and result.overall_guidance.log
    assert len(result.per_box.energy_log(2)) > 0


def test_result_keeps_what_generate_composed(pipe, result, layout, config):
    assert len(result.aligned) == len(layout)
    assert result.aligned[0].latents.shape == result.per_box.latents[:, 0].shape  # every step moved
    assert result.per_box.plan.words == ["cat", "dog", "dog"]
    assert [pipe.tokenizer.decode([pipe.tokenizer(p).input_ids[t]]) for p, t in
            zip(result.per_box.plan.prompts, result.per_box.word_tokens)] == ["cat", "dog", "dog"]
    shared = initial_noise(pipe, 1, *config.resolution(pipe), seed=1)
    composed, union = compose_trajectory(result.aligned, shared)
    assert torch.equal(composed, result.composed_latents) and torch.equal(union, result.union_mask)


def test_each_box_prompt_is_background_with_caption(result):
    assert result.per_box.plan.prompts == ["a park with a red cat", "a park with a dog", "a park with a dog"]


def test_aligned_masks_sit_on_their_target_boxes(result, layout):
    for mask, box in zip(result.aligned_masks, layout.boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        cx, cy = (xs.float().mean() + 0.5) / 32, (ys.float().mean() + 0.5) / 32
        assert abs(cx - box.center[0]) <= 1.5 / 32 and abs(cy - box.center[1]) <= 1.5 / 32


def test_frozen_steps_copy_the_composed_foreground(result, config):
    union = result.union_mask
    assert torch.equal(union, result.aligned_masks.any(0))
    frozen = int(config.num_inference_steps * config.frozen_ratio)
    assert result.frozen_steps == frozen
    for k in range(1, frozen + 1):
        z, c = result.overall_latents[k, 0], result.composed_latents[k]
        assert torch.equal(z[:, union], c[:, union].to(z.dtype))
    # after the frozen steps the model is free again
    assert not torch.equal(result.overall_latents[frozen + 1, 0][:, union],
                           result.composed_latents[frozen + 1][:, union])


def test_same_seed_same_image_other_seed_other_image(pipe, layout, config, result):
    again = generate(pipe, layout, seed=1, config=config, progress=False)
    assert torch.equal(again.image, result.image)
    other = generate(pipe, layout, seed=2, config=config, progress=False)
    assert not torch.equal(other.image, result.image)


def test_layout_without_boxes_is_plain_sd_with_the_negative_prompt(pipe, config):
    empty = Layout([], "a park", "cats", "a park without cats")
    out = generate(pipe, empty, seed=1, config=config, progress=False)
    assert out.method == "sd" and out.negative_prompt == "cats" and out.prompt == "a park"
    no_background = generate(pipe, Layout([], "", "", "a park"), seed=1, config=config, progress=False)
    assert no_background.prompt == "a park"  # the prompt it sampled from
    assert torch.equal(out.image, generate_sd(pipe, "a park", seed=1, config=config, negative_prompt="cats",
                                              progress=False))


def test_source_prompt_mode_and_background_override(pipe, config):
    from dataclasses import replace

    lay = Layout([Box("a cat", 0.05, 0.2, 0.45, 0.8), Box("a dog", 0.55, 0.2, 0.95, 0.8)], "a park", "",
                 "a cat on the left and a dog on the right")
    cfg = replace(config, background="", overall_prompt="source")
    out = generate(pipe, lay, seed=0, config=cfg, progress=False)
    assert out.prompt == lay.prompt
    assert out.per_box.plan.prompts == ["a cat", "a dog"]
    # a phrase missing from the user's prompt falls back to the authors' form
    lay2 = replace(lay, prompt="two animals")
    assert generate(pipe, lay2, seed=0, config=cfg, progress=False).prompt == "a cat, a dog"


def test_one_box_at_a_time_equals_the_batched_pass(pipe, layout, config, result):
    from dataclasses import replace

    sequential = generate(pipe, layout, seed=1, config=replace(config, max_batch=1), progress=False)
    assert len(sequential.per_box.guidance) == 3
    torch.testing.assert_close(sequential.per_box.latents, result.per_box.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sequential.image, result.image, atol=1e-3, rtol=1e-3)


def test_source_prompt_is_not_used_when_it_names_the_excluded_object(pipe, config):
    from dataclasses import replace

    lay = Layout([Box("a cat", 0.1, 0.2, 0.5, 0.8)], "", "dogs", "a cat without dogs")
    assert overall_prompt_for(lay, "source", pipe.tokenizer) == ("a cat", 0)
    assert overall_prompt_for(replace(lay, negative=""), "source", pipe.tokenizer) == ("a cat without dogs", 0)


# -- switches: box_order, skip_articles, the authors' config ------------------------------------------------
def test_box_order_keeps_the_layout_by_default_and_sorts_by_phrase_for_the_authors(pipe, layout, config, result):
    from lmd_utils.pipeline import configured_layout
    assert config.box_order == "layout" and configured_layout(layout, config) == layout
    assert result.layout.boxes == layout.boxes
    unsorted = Layout([Box("a dog", 0.5, 0, 1, 1), Box("a cat", 0, 0, 0.5, 1), Box("a bird", 0, 0, 0.2, 0.2),
                       Box("a cat", 0.1, 0.1, 0.3, 0.3)], "a park")
    ordered = configured_layout(unsorted, replace(config, box_order="by_phrase"))
    assert [b.phrase for b in ordered.boxes] == ["a bird", "a cat", "a cat", "a dog"]
    assert ordered.boxes[1] is unsorted.boxes[1] and ordered.boxes[2] is unsorted.boxes[3]  # stable
    with pytest.raises(ValueError):
        LMDConfig(box_order="random")


def test_skip_articles_reaches_both_passes(pipe, layout, config, result):
    from lmd_utils.attention import phrase_token_indices
    from lmd_utils.composition import composed_pass_guidance
    from lmd_utils.per_box import run_per_box
    tok = pipe.tokenizer
    # default: the per-box and composed energies skip the articles (recorded in the result)
    prompt0 = result.per_box.plan.prompts[0]
    background_end = len(layout.background)
    assert result.per_box.guidance[0].targets[0].objects[0].token_indices == tuple(
        phrase_token_indices(tok, prompt0, "a red cat", start=background_end, skip_articles=True))
    overall = result.overall_guidance.targets[0].objects
    assert overall[0].token_indices == tuple(phrase_token_indices(tok, result.prompt, "a red cat",
                                                                  start=background_end))
    # authors: the article's token too
    theirs = replace(config.overall_guidance, skip_articles=False)
    hook = composed_pass_guidance(tok, layout, result.prompt, background_end, result.aligned, theirs)
    with_article = phrase_token_indices(tok, result.prompt, "a red cat", start=background_end, skip_articles=False)
    assert hook.targets[0].objects[0].token_indices == tuple(with_article)
    assert len(with_article) == len(overall[0].token_indices) + 1
    short = replace(config, per_box_guidance=replace(config.per_box_guidance, skip_articles=False)).with_steps(1)
    shared = initial_noise(pipe, 1, *short.resolution(pipe), seed=1)
    per_box = run_per_box(pipe, layout, 1, short, shared, progress=False)
    assert per_box.guidance[0].targets[0].objects[0].token_indices == tuple(
        phrase_token_indices(tok, prompt0, "a red cat", start=background_end, skip_articles=False))


# ----------------------------------------------------------------------------------------------------------------
# check_layout: a layout stage 2 cannot run is a LayoutError before any work (issue #12)
# ----------------------------------------------------------------------------------------------------------------
def test_check_layout_rejects_what_stage_2_cannot_run(pipe, config):
    import time

    from lmd_utils.layout import LayoutError
    from lmd_utils.pipeline import check_layout

    ok = Layout([Box("a red cat", 0.1, 0.1, 0.5, 0.5)], "a park")
    assert check_layout(pipe, ok, config).phrases == ["a red cat"]
    bad = {
        "background past the text encoder's tokens": Layout([Box("a red cat", 0.1, 0.1, 0.5, 0.5)],
                                                            " ".join(["a very long background"] * 30)),
        "caption without a word": Layout([Box("...", 0.1, 0.1, 0.5, 0.5)], "a park"),
        "empty caption": Layout([Box("", 0.1, 0.1, 0.5, 0.5)], "a park"),
        "box outside the canvas": Layout([Box("a cat", 0.5, 0.5, 1.5, 0.9)], "a park"),
        "too many boxes": Layout([Box("a cat", 0.1, 0.1, 0.2, 0.2)] * 9, "a park"),
    }
    for name, layout in bad.items():
        start = time.process_time()  # CPU time: a busy machine must not fail the guard
        with pytest.raises(LayoutError):
            generate(pipe, layout, seed=0, config=config, progress=False)  # generate checks first ...
        assert time.process_time() - start < 1.0, name  # ... before any UNet call
        with pytest.raises(LayoutError):
            check_layout(pipe, layout, config)


def test_largest_seed_runs(pipe, config):
    from lmd_utils.models import MAX_SEED
    from lmd_utils.per_box import plan_per_box

    layout = Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5), Box("a dog", 0.5, 0.5, 0.9, 0.9)], "a park")
    assert plan_per_box(layout, MAX_SEED).seeds == [19, 20]  # box seeds wrap around 2**64
    assert plan_per_box(layout, 5).seeds == [25, 26]  # and are unchanged below it
    image = generate(pipe, layout, seed=MAX_SEED, config=config.with_steps(2), progress=False).image
    assert torch.isfinite(image).all()
    for seed in (-1, MAX_SEED + 1, 1.5):
        with pytest.raises(ValueError, match="seed must be an integer from 0 to 2"):
            initial_noise(pipe, 1, 64, 64, seed)
