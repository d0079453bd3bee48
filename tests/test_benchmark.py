"""The LMD benchmark: exact prompts, the four predicates, and stage-1 scores (396/400 on the published replies)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lmd_utils.benchmark import (
    TASKS,
    PromptSpec,
    Stage1Result,
    attribution_ok,
    benchmark_prompts,
    benchmark_specs,
    drop_unscorable_boxes,
    evaluate_stage1,
    first_box,
    negation_ok,
    numeracy_ok,
    parse_benchmark_prompt,
    run_benchmark,
    spatial_ok,
)
from lmd_utils.llm_client import LLMConfig, LLMLayoutSource
from lmd_utils.llm_layouts import ReplyFileSource
from lmd_utils.planner import OfflinePlanner

pytestmark = pytest.mark.usefixtures("no_llm_env")


# =============================================================================================================
# Prompts
# =============================================================================================================
def test_prompts_equal_the_published_file_line_for_line(prompts_file):
    published = prompts_file.read_text(encoding="utf-8").splitlines()
    ours = benchmark_prompts()
    assert len(ours) == len(published) == 400
    for i, (a, b) in enumerate(zip(ours, published), start=1):
        assert a == b, f"line {i}"


def test_prompt_specs_structure():
    specs = benchmark_specs()
    assert Counter(s.task for s in specs) == {t: 100 for t in TASKS}
    assert [s.task for s in specs] == [t for t in TASKS for _ in range(100)]  # published order
    assert specs[0] == PromptSpec("negation", "A realistic photo of a scene without backpacks", ("backpack",))
    assert specs[100].count == 1 and specs[199].count == 5
    assert specs[200].names == ("a blue dog", "a white bowl")  # np.random.seed(0) draws (published line 201)
    assert specs[300].relation == "left" and specs[302].relation == "top"
    assert len(set(benchmark_prompts())) == 250  # repeats: negation ×10, numeracy ×2, a few random repeats


def test_parse_benchmark_prompt_recovers_every_spec():
    for spec in benchmark_specs():
        assert parse_benchmark_prompt(spec.prompt) == spec
    toy = parse_benchmark_prompt("a toy world with a red circle on the left and a blue square on the right")
    assert (toy.task, toy.names, toy.relation) == ("spatial", ("a red circle", "a blue square"), "left")
    assert parse_benchmark_prompt("a toy world with three circles").names == ("circle",)
    with pytest.raises(ValueError, match="not a prompt of the LMD benchmark grammar"):
        parse_benchmark_prompt("a cat sitting on a mat")


# =============================================================================================================
# Predicates
# =============================================================================================================
def test_drop_rules():
    objects = [("a", [0, 0, 0, 10]), ("b", [0, 0, 10, -1]), ("c", [0, 0, 512, 512]), ("d", [513, 0, 5, 5]),
               ("e", [0, 513, 5, 5]), ("f", [0, 0, 512, 100]), ("g", [500, 500, 100, 100]), ("h", [512, 512, 1, 1])]
    assert [n for n, _ in drop_unscorable_boxes(objects)] == ["f", "g", "h"]  # no clipping: g keeps its size
    assert drop_unscorable_boxes(objects)[1][1] == [500.0, 500.0, 100.0, 100.0]


def test_negation_and_numeracy_predicates():
    objects = [("a dog", [0, 0, 10, 10]), ("a big dog", [20, 0, 10, 10]), ("a cat", [40, 0, 10, 10])]
    assert negation_ok(objects, "cup") and not negation_ok(objects, "dog")
    assert numeracy_ok(objects, "dog", 2) and not numeracy_ok(objects, "dog", 1) and numeracy_ok(objects, "cup", 0)
    assert not numeracy_ok([("two chairs", [0, 0, 9, 9])], "chair", 2)  # a group box counts once


def test_attribution_predicate_needs_the_whole_phrase():
    objects = [("a red car", [0, 0, 10, 10]), ("an orange bottle", [20, 0, 10, 10])]
    assert attribution_ok(objects, "a red car", "an orange bottle")
    assert not attribution_ok(objects, "a red car", "a orange bottle")
    assert not attribution_ok([("a car", [0, 0, 1, 1]), ("a red bottle", [0, 0, 1, 1])], "a red car", "a bottle")
    assert attribution_ok([("A Red Car", [0, 0, 1, 1]), ("an orange bottle", [0, 0, 1, 1])],
                          "a red car", "an orange bottle")  # case-insensitive (our choice)


def test_spatial_predicate_uses_first_matching_box_centres():
    objects = [("a cup", [300, 0, 100, 100]), ("a dog", [100, 300, 100, 100]), ("a cup", [0, 0, 10, 10])]
    assert first_box(objects, "a cup") == [300.0, 0.0, 100.0, 100.0]
    assert first_box([("a cupboard", [0, 0, 1, 1])], "a cup") is None  # "a cup " or ends with "a cup"
    assert first_box([("a cup of tea", [0, 0, 1, 1])], "a cup") == [0.0, 0.0, 1.0, 1.0]
    assert spatial_ok(objects, "a dog", "a cup", "left") and not spatial_ok(objects, "a dog", "a cup", "right")
    assert spatial_ok(objects, "a cup", "a dog", "top") and spatial_ok(objects, "a dog", "a cup", "bottom")
    assert not spatial_ok(objects, "a cat", "a cup", "left")  # missing object
    same = [("a cup", [0, 0, 100, 100]), ("a dog", [0, 0, 100, 100])]
    assert not spatial_ok(same, "a cup", "a dog", "left") and not spatial_ok(same, "a cup", "a dog", "right")
    with pytest.raises(ValueError):
        spatial_ok(objects, "a cup", "a dog", "behind")


def test_spec_check_dispatches_to_the_task_predicate():
    spec = PromptSpec("numeracy", "p", ("cat",), count=2)
    assert spec.check([("a cat", [0, 0, 1, 1]), ("a cat", [2, 0, 1, 1])]) and not spec.check([])
    assert PromptSpec("negation", "p", ("cat",)).check([])
    with pytest.raises(ValueError, match="unknown task"):
        PromptSpec("counting", "p", ("cat",)).check([])


# =============================================================================================================
# Stage-1 evaluation
# =============================================================================================================
def test_published_gpt35_replies_score_396(gpt35_replies_file):
    result = evaluate_stage1(gpt35_replies_file, progress=False)
    assert isinstance(result, Stage1Result)
    assert result.counts() == {"negation": (100, 100), "numeracy": (97, 100), "attribution": (100, 100),
                               "spatial": (99, 100)}
    assert (result.successes, result.total) == (396, 400)
    assert result.accuracy() == pytest.approx(99.0) and result.accuracy("numeracy") == pytest.approx(97.0)
    failures = result.failures()
    assert [o.spec.prompt.split(" with ")[-1] for o in failures] == [
        "one cat", "two chairs", "two chairs", "a dog on the top and a bowl on the bottom"]
    assert failures[0].objects == []  # its only box covered the canvas and was dropped
    assert failures[1].objects[0][0] == "two chairs" and [o.sample for o in failures[1:3]] == [0, 1]
    assert all(o.error is None for o in result.outcomes)
    table = result.format_table().splitlines()
    assert table[-1] == "overall: 396/400"
    assert any(line.split()[:3] == ["numeracy", "97", "100"] for line in table)
    summary = result.to_dict()
    assert summary["overall"] == [396, 400] and len(summary["failures"]) == 4
    json.dumps(summary)


def test_offline_planner_scores_400():
    result = evaluate_stage1("planner", progress=False)
    assert result.counts() == {t: (100, 100) for t in TASKS}
    assert result.format_table().splitlines()[-1] == "overall: 400/400"
    assert result.source == "offline planner"


def test_subset_of_prompts_and_the_kth_occurrence(gpt35_replies_file):
    prompts = ["A realistic photo of a scene with two chairs"] * 2 + ["A realistic photo of a scene with one cat"]
    result = evaluate_stage1(ReplyFileSource(gpt35_replies_file), prompts=prompts, progress=False)
    assert [o.sample for o in result.outcomes] == [0, 1, 0]
    assert result.counts() == {"numeracy": (1, 3)}  # both "two chairs" samples fail, the first "one cat" passes
    assert result.format_table().splitlines()[-1] == "overall: 1/3"


def test_missing_and_unparseable_replies_count_as_failures(tmp_path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"A photo with one cat": ["[('a cat', [0, 0, 50, 50])]"],
                                "A photo without dogs": ["I won't draw that."]}))
    prompts = ["A photo with one cat", "A photo without dogs", "A photo with two cats"]
    result = evaluate_stage1(path, prompts=prompts, progress=False)
    assert [o.success for o in result.outcomes] == [True, False, False]
    assert "LayoutParseError" in result.outcomes[1].error and "MissingReplyError" in result.outcomes[2].error
    lines = result.format_table().splitlines()
    assert lines[-2].startswith("(2 prompts had no usable layout") and lines[-1] == "overall: 1/3"


def test_llm_source_through_the_server(openai_server, tmp_path, gpt35_replies):
    """The whole client path (HTTP, parsing, cache, k-th sample) scores the same as the reply file."""
    prompts = ["A realistic photo of a scene with two chairs"] * 2 + [
        "A realistic photo of a scene with a dog on the top and a bowl on the bottom",
        "A realistic photo of a scene without cats"]
    openai_server.recorded = {p: gpt35_replies[p] for p in prompts}
    llm = LLMLayoutSource(LLMConfig(model="gpt-3.5-turbo", base_url=openai_server.base_url, max_retries=0),
                          cache=tmp_path / "cache.json")
    result = evaluate_stage1(llm, prompts=prompts, progress=False)
    assert [o.success for o in result.outcomes] == [False, False, False, True]
    assert len(openai_server.requests) == 4


def test_run_benchmark_is_reusable_for_other_stages():
    specs = benchmark_specs()[::100]
    planner = OfflinePlanner()

    def objects_for(spec, k):  # e.g. stage 2 would detect boxes in generated images here
        if spec.task == "attribution":
            raise KeyError("detector failed")
        return planner.get_layout(spec.prompt).to_xywh_objects()

    result = run_benchmark(specs, objects_for, "stage 2 (images)", "test", expected_errors=(KeyError,),
                           progress=False)
    assert [o.success for o in result.outcomes] == [True, True, False, True]
    assert result.format_table().splitlines()[0] == "stage 2 (images) — source: test"


def test_layout_verdict_names_what_is_wrong():
    from lmd_utils.benchmark import layout_verdict
    from lmd_utils.layout import Box, Layout

    layout = Layout([Box("a red circle", 0.0, 0.0, 0.5, 0.5), Box("a blue square", 0.5, 0.5, 1.0, 1.0)])
    right = [("a red circle", [50, 50, 100, 100]), ("a blue square", [300, 300, 100, 100])]
    assert layout_verdict(layout, right) == (True, "✓ matches the layout")
    ok, text = layout_verdict(layout, [("a red circle", [50, 50, 100, 100]), ("a green square", [300, 300, 100, 100])])
    assert not ok and text == "✗ no blue square; extra green square"
    ok, text = layout_verdict(layout, [("a red circle", [300, 300, 100, 100]), ("a blue square", [300, 300, 90, 90])])
    assert not ok and text == "✗ red circle outside its box"
    ok, text = layout_verdict(Layout([]), [("a cat", [0, 0, 10, 10])] * 5)
    assert text == "✗ extra cat; extra cat; extra cat (+2 more)"
