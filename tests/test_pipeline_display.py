"""lmd_utils.viz.pipeline (notebook 07): looking inside an LMDResult and comparing methods, on tiny
random-weight models: the wiring and what each picture shows, not image quality."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from lmd_utils.layout import Box, Layout
from lmd_utils.models import build_tiny_pipeline
from lmd_utils.config import LMDConfig
from lmd_utils.pipeline import generate
from lmd_utils.viz.common import figure_to_png
from lmd_utils.viz.pipeline import (RESULT_VIEWS, prompt_grid_figure, result_explorer, result_figure,
                                    result_is_pixel_space)

STEPS = 4
LAYOUT = Layout([Box("a red cat", 0.05, 0.1, 0.45, 0.6), Box("a dog", 0.55, 0.3, 0.95, 0.9)],
                background="", prompt="a red cat and a dog")


def _config(pipe, size: int) -> LMDConfig:
    return LMDConfig.for_pipe(pipe, per_box_negative_prompt="", overall_negative_prompt="", background="",
                              height=size, width=size).with_steps(STEPS)


@pytest.fixture(scope="module")
def latent_result():
    """SD-shaped (VAE latents 8× smaller than the image)."""
    pipe = build_tiny_pipeline(seed=0)
    return generate(pipe, LAYOUT, seed=1, config=_config(pipe, 64), progress=False)


def pixel_pipe_scheduler():
    """The scheduler of the pixel-space pipeline (a result keeps none)."""
    return build_tiny_pipeline(seed=0, pixel_space=True, sample_size=16).scheduler


@pytest.fixture(scope="module")
def pixel_result():
    """Toy-world-shaped (the latents are the image)."""
    pipe = build_tiny_pipeline(seed=0, pixel_space=True, sample_size=16)
    return generate(pipe, LAYOUT, seed=1, config=_config(pipe, 16), progress=False)


def test_pixel_space_is_read_from_the_tensors(latent_result, pixel_result):
    assert result_is_pixel_space(pixel_result) and not result_is_pixel_space(latent_result)
    no_boxes = generate(build_tiny_pipeline(seed=0), Layout([], background="a park"), seed=0,
                        config=_config(build_tiny_pipeline(seed=0), 64), progress=False)
    assert no_boxes.per_box is None
    with pytest.raises(ValueError, match="no per-box pass"):
        result_is_pixel_space(no_boxes)
    with pytest.raises(ValueError, match="no per-box pass"):
        result_figure(no_boxes)


@pytest.mark.parametrize("view", list(RESULT_VIEWS))
def test_every_view_draws_a_figure_on_both_kinds_of_model(view, latent_result, pixel_result):
    for result in (latent_result, pixel_result):
        fig = result_figure(result, view, steps=3)
        assert isinstance(fig, Figure) and fig.axes
        assert figure_to_png(fig, dpi=40).startswith(b"\x89PNG")


def test_views_show_what_they_say(pixel_result):
    n, T = len(LAYOUT), STEPS
    per_box = result_figure(pixel_result, "per-box images")
    assert [ax.get_title() for ax in per_box.axes] == [repr(p) for p in pixel_result.per_box.plan.prompts]
    strip = result_figure(pixel_result, "per-box trajectories", steps=3)
    assert len(strip.axes) == n * 3 and [strip.axes[k * 3].get_ylabel() for k in range(n)] == LAYOUT.phrases
    masks = result_figure(pixel_result, "masks and alignment")
    assert len(masks.axes) == n + 1 and "paste order" in masks.axes[-1].get_title()
    composed = result_figure(pixel_result, "composed vs overall")
    titles = [ax.get_title() for ax in composed.axes if ax.get_title()]
    assert titles[0] == "x_T" and titles[-1] == "end" and any("frozen" in t for t in titles)
    estimates = result_figure(pixel_result, "composed vs overall", scheduler=pixel_pipe_scheduler())
    assert estimates.axes[0].get_ylabel() == "composed per-box x̂₀" and "x̂₀" in estimates._suptitle.get_text()
    energy = result_figure(pixel_result, "energy")
    labels = [line.get_label() for line in energy.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == [f"alone: {p}" for p in LAYOUT.phrases] + ["composed pass"]
    with pytest.raises(ValueError, match="unknown view"):
        result_figure(pixel_result, "attention of the cat")


def test_composed_view_of_a_stopped_per_box_pass_runs_to_the_end():
    """per_box_stop="needed": the composed trajectory is shorter; the view still ends at the image's last step."""
    from dataclasses import replace

    pipe = build_tiny_pipeline(seed=0, pixel_space=True, sample_size=16)
    config = replace(_config(pipe, 16).with_steps(8), per_box_stop="needed")
    result = generate(pipe, LAYOUT, seed=1, config=config, progress=False)
    assert result.composed_latents.shape[0] < result.overall_latents.shape[0] == 9
    for scheduler in (None, pipe.scheduler):
        fig = result_figure(result, "composed vs overall", scheduler=scheduler)
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles[-1].startswith("end") and titles[-1].endswith("(per-box pass stopped)")
        assert "of 8 steps" in fig._suptitle.get_text()


def test_result_explorer_redraws_the_chosen_view(pixel_result):
    pytest.importorskip("ipywidgets")
    box = result_explorer(pixel_result)
    chooser, note = box.children[0].children
    picture = box.children[1]
    assert list(chooser.options) == list(RESULT_VIEWS) and chooser.value == "per-box images"
    first = bytes(picture.value)  # ipywidgets keeps the PNG as a memoryview
    assert first.startswith(b"\x89PNG") and RESULT_VIEWS["per-box images"] in note.value
    chooser.value = "energy"
    assert bytes(picture.value) != first and RESULT_VIEWS["energy"] in note.value


def _images(n: int, value: float) -> list[torch.Tensor]:
    return [torch.full((3, 16, 16), value) for _ in range(n)]


def test_prompt_grid_figure_draws_boxes_detections_and_verdicts():
    layouts = [LAYOUT, Layout([Box("a dog", 0.2, 0.2, 0.8, 0.8)], prompt="a dog")]
    prompts = ["[attribution] a red cat and a dog", "[numeracy] a dog"]
    images = {"plain": _images(2, 0.2), "LMD": _images(2, 0.8)}
    found = {"LMD": [[("a red cat", Box("a red cat", 0.1, 0.1, 0.4, 0.5)), ("a cat", Box("a cat", 0.5, 0.5, 0.9, 0.9))],
                     []],
             "plain": [[], [("a dog", Box("a dog", 0.0, 0.0, 0.5, 0.5))]]}
    verdicts = {"plain": [False, True], "LMD": [True, False]}
    fig = prompt_grid_figure(prompts, layouts, images, found, verdicts)
    axes = fig.axes
    assert len(axes) == 4  # rows: methods, columns: prompts
    assert axes[0].get_title().replace("\n", " ") == prompts[0] and axes[2].get_title() == ""
    assert [axes[0].get_ylabel(), axes[2].get_ylabel()] == ["plain", "LMD"]
    assert [ax.get_xlabel() for ax in axes] == ["✗ wrong", "✓ correct", "✓ correct", "✗ wrong"]
    lmd_first = axes[2]  # two layout boxes (dashed, white), a wanted detection (lime), an unwanted one (magenta)
    edges = [(p.get_linestyle(), tuple(round(c, 2) for c in p.get_edgecolor()[:3])) for p in lmd_first.patches]
    assert edges.count(("--", (1.0, 1.0, 1.0))) == 2
    assert ("-", (0.0, 1.0, 0.0)) in edges and ("-", (1.0, 0.0, 1.0)) in edges
    assert len(axes[3].patches) == 1  # the second layout's box, nothing found
    assert figure_to_png(fig, dpi=40).startswith(b"\x89PNG")
    # without detections or verdicts: the layouts' boxes only, no labels
    plain_fig = prompt_grid_figure(prompts, layouts, images)
    assert sum(len(ax.patches) for ax in plain_fig.axes) == 2 * (2 + 1) and plain_fig.axes[0].get_xlabel() == ""


def test_prompt_grid_figure_refuses_mismatched_inputs():
    layouts = [LAYOUT, LAYOUT]
    with pytest.raises(ValueError, match="layouts"):
        prompt_grid_figure(["a", "b"], [LAYOUT], {"LMD": _images(2, 0.5)})
    with pytest.raises(ValueError, match="images"):
        prompt_grid_figure(["a", "b"], layouts, {"LMD": _images(1, 0.5)})
    with pytest.raises(ValueError, match="verdicts"):
        prompt_grid_figure(["a", "b"], layouts, {"LMD": _images(2, 0.5)}, verdicts={"LMD": [True]})
    with pytest.raises(ValueError, match="no images"):
        prompt_grid_figure(["a", "b"], layouts, {})
