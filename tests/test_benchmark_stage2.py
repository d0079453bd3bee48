"""The toy stage-2 benchmark: prompts, scoring with the real benchmark's predicates, methods, CLI, calibration.

Everything runs on a random-weight tiny toy pipeline built in code (wiring and numbers, not image quality).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch

from lmd_utils.__main__ import main as cli_main
from lmd_utils.benchmark import PromptSpec, TASKS
from lmd_utils.layout import Box, Layout
from lmd_utils.models import build_tiny_pipeline
from lmd_utils.config import GuidanceConfig, LMDConfig
from lmd_utils.pipeline import generate_sd
from lmd_utils.planner import plan_layout
from lmd_utils.toyworld.benchmark import (CALIBRATION_FIRST_SEED, REPORT_FIRST_SEED, calibrate, detected_objects,
                                          four_task_average, merged_settings, parse_methods,
                                          plain_images, run_toy_benchmark, score_images, toy_benchmark_prompts,
                                          toy_lmd_config, toy_prompt)
from lmd_utils.toyworld.model import (TOYWORLD_ATTENTION_LAYERS, TOYWORLD_LMD_CONFIG, ToyWorldConfig,
                                      build_toyworld_pipeline, export_pipeline)
from lmd_utils.toyworld.scenes import COLOURS, PLURAL, SHAPES, parse_caption, render_layout

#: A fast LMD setting for the random tiny pipeline (wiring only).
FAST = merged_settings(TOYWORLD_LMD_CONFIG, {"num_inference_steps": 3, "mask_start_step": 1,
                                             "per_box_guidance.guidance_steps": 1, "per_box_guidance.iterations": [1],
                                             "overall_guidance.guidance_steps": 1, "overall_guidance.iterations": [1]})


@pytest.fixture(scope="module")
def prompts():
    return toy_benchmark_prompts(REPORT_FIRST_SEED, 100)


@pytest.fixture(scope="module")
def tiny_toy():
    return build_toyworld_pipeline(seed=0, config=ToyWorldConfig.tiny())


@pytest.fixture(scope="module")
def tiny_toy_folder(tmp_path_factory, tiny_toy):
    """The tiny toy pipeline saved as a model folder (what ``--model PATH`` loads), without lmd_config.json."""
    return export_pipeline(tiny_toy, tmp_path_factory.mktemp("tiny_toy"))


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def _render(layout: Layout) -> torch.Tensor:
    return _as_tensor(render_layout(layout))


# -- prompts ----------------------------------------------------------------------------------------------
def test_prompts_are_deterministic_and_100_per_task(prompts):
    again = toy_benchmark_prompts(REPORT_FIRST_SEED, 100)
    assert [(p.prompt, p.seed) for p in prompts] == [(p.prompt, p.seed) for p in again]
    assert Counter(p.task for p in prompts) == {t: 100 for t in TASKS}
    assert [p.task for p in prompts] == [t for t in TASKS for _ in range(100)]
    assert [p.seed for p in prompts[:100]] == list(range(100))
    other = toy_benchmark_prompts(CALIBRATION_FIRST_SEED, 100)  # the calibration range: other prompts
    assert sum(a.prompt != b.prompt for a, b in zip(prompts, other)) > 250
    assert toy_prompt("spatial", 123456789) == toy_prompt("spatial", 123456789)  # any seed works
    with pytest.raises(ValueError):
        toy_prompt("counting", 0)
    with pytest.raises(ValueError):
        toy_benchmark_prompts(-1, 3)


def test_prompts_follow_the_toy_grammar(prompts, tiny_toy):
    neg = re.compile(rf"^(a (?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})) without "
                     rf"((?:{'|'.join(COLOURS)}) (?:{'|'.join(PLURAL.values())}))$")
    kinds = {"numeracy": "count", "attribution": "pair", "spatial": "spatial"}
    for p in prompts:
        assert len(tiny_toy.tokenizer(p.prompt).input_ids) <= 16, p.prompt  # fits the toy text encoder
        if p.task == "negation":
            m = neg.match(p.prompt)
            assert m, p.prompt
            assert parse_caption(m[1])[0] == "single" and m[2].rstrip("s") == p.spec.names[0]
            assert m[1][2:] != p.spec.names[0]  # the excluded object is not the wanted one
            continue
        kind, objects = parse_caption(p.prompt)
        assert kind == kinds[p.task], p.prompt
        if p.task == "numeracy":
            assert objects[0].count == p.spec.count and objects[0].phrase[2:] == p.spec.names[0]
        elif p.task == "attribution":  # two colours and two shapes, all different, as the paper's prompts
            assert len({o.colour for o in objects}) == 2 and len({o.shape for o in objects}) == 2
        else:
            assert objects[0].position == p.spec.relation and p.spec.names == tuple(o.phrase for o in objects)
    numeracy = Counter(p.spec.count for p in prompts if p.task == "numeracy")
    relations = Counter(p.spec.relation for p in prompts if p.task == "spatial")
    assert set(numeracy) == {2, 3, 4} and min(numeracy.values()) > 20
    assert set(relations) == {"left", "right", "top", "bottom"} and min(relations.values()) > 15
    for task in TASKS:
        assert len({p.prompt for p in prompts if p.task == task}) > 30, task


def test_planner_layouts_satisfy_every_prompt(prompts):
    """Stage 1 on the toy grammar: the offline planner's boxes pass the benchmark's predicates (400/400)."""
    for p in prompts:
        layout = plan_layout(p.prompt)
        assert p.spec.check(layout.to_xywh_objects()), p.prompt
        if p.task == "negation":
            assert layout.negative == p.prompt.split(" without ")[1] and len(layout) == 1
        if p.task == "numeracy":
            assert len(layout) == p.spec.count


def test_toy_layouts_are_boxes_the_toy_model_can_draw(prompts):
    """The lmd method's layouts: the planner's, made squares of the trained sizes (7–13 px) on whole pixels,
    with the toy background, and still satisfying every prompt (400/400) without a warning."""
    import warnings

    from lmd_utils.layout import LayoutWarning
    from lmd_utils.toyworld.benchmark import benchmark_layout
    from lmd_utils.toyworld.scenes import IMAGE_SIZE, size_range

    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        for p in prompts:
            layout = benchmark_layout(p.prompt)
            default = plan_layout(p.prompt)
            assert layout.background == "" and layout.negative == default.negative, p.prompt
            assert layout.phrases == default.phrases and p.spec.check(layout.to_xywh_objects()), p.prompt
            lo, hi = size_range(len(layout))  # the sizes the toy scenes draw for that many objects
            for box, free in zip(layout.boxes, default.boxes):
                side = box.width * IMAGE_SIZE
                assert box.width == box.height and lo <= side <= hi and side == round(side), (p.prompt, box)
                assert box.x0 * IMAGE_SIZE == round(box.x0 * IMAGE_SIZE) and box.y0 * IMAGE_SIZE == round(box.y0 * IMAGE_SIZE)
                assert abs(box.center[0] - free.center[0]) <= 1 / IMAGE_SIZE
                assert abs(box.center[1] - free.center[1]) <= 1 / IMAGE_SIZE
    assert benchmark_layout(prompts[0].prompt, "default").to_json() == plan_layout(prompts[0].prompt).to_json()
    with pytest.raises(ValueError):
        benchmark_layout("a red circle", "llm")


def test_toy_layout_names_words_the_toy_model_never_learnt():
    from lmd_utils.layout import LayoutWarning
    from lmd_utils.toyworld.model import toy_layout

    with pytest.warns(LayoutWarning) as caught:
        layout = toy_layout("a cat sitting on a sofa")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'sitting'" in message and "LMD_LLM_MODEL" in message  # the planner's part
    assert "the toy model does not know 'cat', 'sitting', 'sofa'" in message and "triangle" in message
    assert layout.background == "" and layout.meta["warnings"] == [message]
    config = LMDConfig.from_dict({**TOYWORLD_LMD_CONFIG, "background": "a plain background"})
    assert toy_layout("a red circle", config).background == "a plain background"


# -- scoring ----------------------------------------------------------------------------------------------
def test_detections_are_512px_xywh_boxes():
    image = _render(Layout([Box("a red square", 4 / 32, 8 / 32, 14 / 32, 18 / 32)]))
    assert detected_objects(image) == [("a red square", [64, 128, 160, 160])]
    assert detected_objects(image.permute(1, 2, 0).numpy()) == detected_objects(image)


def test_ground_truth_scenes_of_the_planner_layouts_pass(prompts):
    chosen = prompts[::8]  # 50 prompts, every task
    images = torch.stack([_render(plan_layout(p.prompt)) for p in chosen])
    result = score_images(chosen, images, "ground truth")
    assert result.successes == result.total == 50
    assert four_task_average(result) == 100.0


def _two(phrase1: str, phrase2: str, side_by_side: bool = True) -> Layout:
    if side_by_side:
        return Layout([Box(phrase1, 0.05, 0.3, 0.4, 0.65), Box(phrase2, 0.55, 0.3, 0.9, 0.65)])
    return Layout([Box(phrase1, 0.3, 0.05, 0.65, 0.4), Box(phrase2, 0.3, 0.55, 0.65, 0.9)])


@pytest.mark.parametrize("spec, layout, ok", [
    (PromptSpec("negation", "a red circle without blue squares", ("blue square",)),
     Layout([Box("a red circle", 0.3, 0.3, 0.7, 0.7)]), True),
    (PromptSpec("negation", "a red circle without blue squares", ("blue square",)),
     _two("a red circle", "a blue square"), False),
    (PromptSpec("negation", "a red circle without blue squares", ("blue square",)),
     _two("a red circle", "a blue circle"), True),  # another blue object is allowed
    (PromptSpec("numeracy", "two green triangles", ("green triangle",), count=2),
     _two("a green triangle", "a green triangle"), True),
    (PromptSpec("numeracy", "three green triangles", ("green triangle",), count=3),
     _two("a green triangle", "a green triangle"), False),
    (PromptSpec("numeracy", "two green triangles", ("green triangle",), count=2),
     _two("a green triangle", "a green square"), False),  # wrong shape does not count
    (PromptSpec("attribution", "a red circle and a blue square", ("a red circle", "a blue square")),
     _two("a red circle", "a blue square"), True),
    (PromptSpec("attribution", "a red circle and a blue square", ("a red circle", "a blue square")),
     _two("a blue circle", "a red square"), False),  # colours swapped: the binding failure
    (PromptSpec("spatial", "a yellow triangle on the left and a blue circle on the right",
                ("a yellow triangle", "a blue circle"), relation="left"),
     _two("a yellow triangle", "a blue circle"), True),
    (PromptSpec("spatial", "a yellow triangle on the left and a blue circle on the right",
                ("a yellow triangle", "a blue circle"), relation="left"),
     _two("a blue circle", "a yellow triangle"), False),
    (PromptSpec("spatial", "a red square on the bottom and a green circle on the top",
                ("a red square", "a green circle"), relation="bottom"),
     _two("a green circle", "a red square", side_by_side=False), True),
    (PromptSpec("spatial", "a red square on the bottom and a green circle on the top",
                ("a red square", "a green circle"), relation="bottom"),
     _two("a red square", "a green circle", side_by_side=False), False),
])
def test_predicates_on_rendered_scenes(spec, layout, ok):
    from lmd_utils.toyworld.benchmark import ToyPrompt

    assert spec.check(detected_objects(_render(layout))) is ok
    result = score_images([ToyPrompt(spec, 0)], _render(layout)[None], "hand-made")
    assert result.successes == int(ok)


def test_repeated_prompts_are_scored_against_their_own_images():
    from lmd_utils.toyworld.benchmark import ToyPrompt

    spec = PromptSpec("numeracy", "two red circles", ("red circle",), count=2)
    good, bad = _render(_two("a red circle", "a red circle")), _render(_two("a red circle", "a red square"))
    result = score_images([ToyPrompt(spec, 0), ToyPrompt(spec, 1)], torch.stack([bad, good]), "x")
    assert [o.success for o in result.outcomes] == [False, True]


# -- settings ---------------------------------------------------------------------------------------------
def test_calibrated_settings_parse_like_the_model_folder(tmp_path, tiny_toy):
    config = LMDConfig.from_dict(TOYWORLD_LMD_CONFIG)
    assert isinstance(config.per_box_guidance, GuidanceConfig)
    assert config.per_box_guidance.layers == tuple(TOYWORLD_LMD_CONFIG["per_box_guidance"]["layers"])
    from lmd_utils.attention import resolve_layers

    for layers in (config.per_box_guidance.layers, config.overall_guidance.layers, TOYWORLD_ATTENTION_LAYERS):
        assert resolve_layers(tiny_toy.unet, layers)  # every name is a layer of the toy UNet
    assert len(resolve_layers(tiny_toy.unet, TOYWORLD_ATTENTION_LAYERS)) == 7  # ... and "all" of them
    assert config.background == "" and config.overall_prompt == "source"
    assert config.per_box_negative_prompt == config.overall_negative_prompt == ""
    folder = export_pipeline(tiny_toy, tmp_path / "model")
    (folder / "lmd_config.json").write_text(json.dumps(TOYWORLD_LMD_CONFIG))
    from lmd_utils.models import load_pipeline

    loaded = load_pipeline(str(folder), device="cpu")
    assert LMDConfig.for_pipe(loaded) == config == toy_lmd_config(loaded)
    assert toy_lmd_config(loaded, steps=10).num_inference_steps == 10
    # the folder's file wins over the constant
    (folder / "lmd_config.json").write_text(json.dumps(merged_settings(TOYWORLD_LMD_CONFIG, {"guidance_scale": 2.5})))
    assert toy_lmd_config(loaded).guidance_scale == 2.5


def test_merged_settings_takes_dotted_keys_and_leaves_the_base_alone():
    out = merged_settings(TOYWORLD_LMD_CONFIG, {"per_box_guidance.loss_scale": 1.5, "frozen_ratio": 0.2})
    assert out["per_box_guidance"]["loss_scale"] == 1.5 and out["frozen_ratio"] == 0.2
    assert TOYWORLD_LMD_CONFIG["per_box_guidance"]["loss_scale"] != 1.5
    assert out["overall_guidance"] == TOYWORLD_LMD_CONFIG["overall_guidance"]


def test_export_writes_the_calibrated_settings(tmp_path):
    from lmd_utils.toyworld.train import export_checkpoint, main as train_main

    assert train_main(["--steps", "1", "--batch", "2", "--config", "tiny", "--sample-every", "0",
                       "--out", str(tmp_path / "run")]) == 0
    folder = export_checkpoint(tmp_path / "run", tmp_path / "model")
    assert json.loads((folder / "lmd_config.json").read_text()) == TOYWORLD_LMD_CONFIG


def test_methods_are_checked():
    assert parse_methods("sd, lmd,sd") == ["sd", "lmd"]
    with pytest.raises(ValueError):
        parse_methods("sd,dalle")
    with pytest.raises(ValueError):
        run_toy_benchmark(build_tiny_pipeline(), n_per_task=1)  # SD-shaped latents: not a toy model


# -- methods ----------------------------------------------------------------------------------------------
def test_batched_plain_sampling_equals_one_prompt_at_a_time(tiny_toy):
    config = LMDConfig.from_dict(FAST)
    chosen = toy_benchmark_prompts(7, 2)[::2]  # four prompts, four seeds
    batched = plain_images(tiny_toy, chosen, config, batch_size=3, progress=False)
    assert batched.shape == (4, 3, 32, 32)
    for image, p in zip(batched, chosen):
        alone = generate_sd(tiny_toy, p.prompt, seed=p.seed, config=config, progress=False)
        torch.testing.assert_close(image, alone, atol=1e-4, rtol=1e-4)


def test_run_toy_benchmark_scores_both_methods(tiny_toy):
    report = run_toy_benchmark(tiny_toy, "sd,lmd", first_seed=3, n_per_task=1, config=LMDConfig.from_dict(FAST),
                               progress=False)
    assert list(report.runs) == ["sd", "lmd"]
    for run in report.runs.values():
        assert run.images.shape == (4, 3, 32, 32) and run.result.total == 4
        assert run.seconds > 0 and run.cpu_seconds > 0
    text = report.format()
    assert re.fullmatch(r"overall: sd \d+\.\d% lmd \d+\.\d%", text.splitlines()[-1])
    d = report.to_dict()
    assert [p["seed"] for p in d["prompts"]] == [3, 3, 3, 3] and set(d["runs"]) == {"sd", "lmd"}


def test_cli_stage2_end_to_end(tiny_toy_folder, tmp_path, capsys):
    (tiny_toy_folder / "lmd_config.json").write_text(json.dumps(FAST))
    out = tmp_path / "stage2.json"
    try:
        rc = cli_main(["benchmark", "stage2", "--model", str(tiny_toy_folder), "--method",
                       "sd,backward-guidance,multidiffusion,lmd", "--n-per-task", "1", "--first-seed", "5",
                       "--no-progress", "--json", str(out)])
    finally:
        (tiny_toy_folder / "lmd_config.json").unlink()
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    methods = ["sd", "backward-guidance", "multidiffusion", "lmd"]  # one 'name N%' per method, in the order given
    assert re.fullmatch(" ".join(["overall:"] + [rf"{m} \d+\.\d%" for m in methods]), lines[-1]), lines[-1]
    assert sum(any(line.startswith(f"[{m}] stage 2") for m in methods) for line in lines) == 4
    for task in TASKS:
        assert sum(line.startswith(task) for line in lines) == 4
    table = lines[-6:-1]  # one row per method: four task scores, the average, seconds per image
    assert table[0].split() == ["method", *TASKS, "average", "s/image"]
    assert [row.split()[0] for row in table[1:]] == methods and all(len(row.split()) == 7 for row in table[1:])
    saved = json.loads(out.read_text())
    assert saved["meta"]["n_per_task"] == 1 and saved["meta"]["steps"] == 3
    assert cli_main(["benchmark", "stage2", "--model", str(tiny_toy_folder), "--method", "sd,dalle"]) == 2  # a usage error
    assert "error:" in capsys.readouterr().err


def test_per_box_object_and_box_iou_on_a_rendered_scene():
    from lmd_utils.toyworld.benchmark import box_iou, per_box_object
    from lmd_utils.toyworld.scenes import shape_mask

    box = Box("a red circle", 8 / 32, 10 / 32, 20 / 32, 22 / 32)
    image = _render(Layout([box, Box("a blue square", 24 / 32, 2 / 32, 30 / 32, 8 / 32)]))
    found = per_box_object(image, "a red circle")
    assert found.colour == "red" and found.box == Box("a red circle", *box.bbox)
    assert np.array_equal(found.silhouette, shape_mask("circle", 10, 8, 12))  # the object's own pixels
    assert per_box_object(image, "a green circle") is None
    assert box_iou(box, box) == 1.0 and box_iou(box, Box("b", 0.0, 0.0, 0.1, 0.1)) == 0.0
    assert box_iou(box, Box("b", box.x0, box.y0, box.x0 + box.width / 2, box.y1)) == pytest.approx(0.5)


def test_check_masks_scores_every_per_box_object(tiny_toy):
    from lmd_utils.toyworld.benchmark import check_masks, mask_check_prompts

    chosen = mask_check_prompts(5, first_seed=2)
    assert [p.task for p in chosen] == list(TASKS) + [TASKS[0]] and [p.seed for p in chosen] == [2, 2, 2, 2, 3]
    report = check_masks(tiny_toy, chosen[:2], LMDConfig.from_dict(FAST), progress=False)
    n_boxes = sum(len(plan_layout(p.prompt)) for p in chosen[:2])
    assert len(report.box_ious) == len(report.mask_ious) == n_boxes and 0 <= report.missing <= n_boxes
    assert all(0.0 <= v <= 1.0 for v in report.box_ious + report.mask_ious)
    assert re.fullmatch(rf"masks: box fit IoU \d\.\d\d, mask IoU \d\.\d\d \({n_boxes} objects\)",
                        report.format().splitlines()[-1])


def test_cli_check_masks_prints_the_summary_last(tiny_toy_folder, capsys):
    from lmd_utils.toyworld.benchmark import main as toy_main

    (tiny_toy_folder / "lmd_config.json").write_text(json.dumps(FAST))
    try:
        rc = toy_main(["--check-masks", "--n", "2", "--first-seed", "4", "--model", str(tiny_toy_folder)])
    finally:
        (tiny_toy_folder / "lmd_config.json").unlink()
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and re.fullmatch(r"masks: box fit IoU \d\.\d\d, mask IoU \d\.\d\d \(\d+ objects\)", out[-1])


def test_calibration_keeps_the_best_value(tiny_toy):
    knobs = {"frozen_ratio": [{"frozen_ratio": 0.5}, {"frozen_ratio": 0.3}]}
    result = calibrate(tiny_toy, FAST, knobs, first_seed=1, n_per_task=1, max_seconds_per_image=60, tolerance=0,
                       progress=False)
    assert [t.knob for t in result.trials] == ["(start)", "frozen_ratio"]  # 0.5 is the start: not re-run
    start, tried = result.trials
    assert set(start.per_task) == set(TASKS) and 0 <= start.average <= 100
    moved = tried.average > start.average or (tried.seconds_per_image <= 0.9 * start.seconds_per_image
                                              and tried.average >= start.average)
    assert result.best["frozen_ratio"] == (0.3 if moved else 0.5)
    assert "frozen_ratio" in result.format()


def test_calibration_never_takes_a_value_over_the_time_budget(tiny_toy):
    knobs = {"num_inference_steps": [{"num_inference_steps": 4}]}
    result = calibrate(tiny_toy, FAST, knobs, first_seed=1, n_per_task=1, max_seconds_per_image=0.0,
                       tolerance=100, progress=False)
    assert len(result.trials) == 2 and result.best == FAST


def test_unet_of_another_shape_without_lmd_config_guides_on_all_layers(tiny_toy):
    """No ``lmd_config.json`` and not SD-shaped: the defaults select every cross-attention layer (was a crash)."""
    from lmd_utils.attention import default_layers
    from lmd_utils.pipeline import generate
    assert default_layers(tiny_toy.unet) == ("all", "all")
    config = LMDConfig.for_pipe(tiny_toy, background="", per_box_negative_prompt="",
                                overall_negative_prompt="").with_steps(4)
    layout = Layout([Box("a red circle", 0.05, 0.1, 0.45, 0.6)], "", "", "a red circle")
    result = generate(tiny_toy, layout, seed=0, config=config, progress=False)
    assert result.image.shape[-2:] == (32, 32) and torch.isfinite(result.image).all()


def test_single_object_check_counts_and_scores_attention(tiny_toy):
    from lmd_utils.toyworld.benchmark import single_object_check, single_object_prompts
    prompts = single_object_prompts(20)
    assert prompts[0] == "a red circle" and len(set(prompts)) == len(COLOURS) * len(SHAPES) == 12
    report = single_object_check(tiny_toy, n=3, config=LMDConfig.from_dict(FAST), batch_size=2, progress=False)
    assert report.n == 3 and 0 <= report.exact <= report.present <= report.colour <= 3
    if report.scored:  # a random model rarely draws the object; when it does the mass is a fraction
        assert 0.0 <= report.attention_mass <= 1.0 and 0.0 < report.box_area <= 1.0
    assert "single objects (3 prompts" in report.format()
