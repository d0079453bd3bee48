"""The offline planner: grammar, one box per instance, non-overlapping placement, positions."""

from __future__ import annotations

import itertools

import pytest

from lmd_utils.benchmark import benchmark_prompts
from lmd_utils.layout import LayoutWarning
from lmd_utils.planner import (
    ModelLimits,
    ObjectGroup,
    OfflinePlanner,
    parse_prompt,
    place_groups,
    plan_layout,
)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


@pytest.mark.parametrize("prompt, captions", [
    ("A realistic photo of a scene with one cat", ["a cat"]),
    ("A realistic photo of a scene with five dogs", ["a dog"] * 5),
    ("a photo of 4 cups", ["a cup"] * 4),
    ("two cups of coffee", ["a cup of coffee"] * 2),
    ("a pair of shoes and a few apples", ["a shoe"] * 2 + ["an apple"] * 3),
    ("A realistic photo of a scene with an orange bottle and a gray cup", ["an orange bottle", "a gray cup"]),
    ("a cat, a dog and a bird", ["a cat", "a dog", "a bird"]),
    ("a red circle", ["a red circle"]),
    ("three green squares", ["a green square"] * 3),
    ("a toy world with three circles", ["a circle"] * 3),
    ("two blue triangles and a yellow circle", ["a blue triangle"] * 2 + ["a yellow circle"]),
    ("The cat", ["a cat"]),
    ("", []),
])
def test_one_box_per_instance(prompt, captions):
    layout = plan_layout(prompt)
    assert layout.phrases == captions
    assert layout.meta["source"] == "offline planner" and layout.prompt == prompt


def test_negation_goes_to_the_negative_prompt():
    layout = plan_layout("A realistic photo of a scene without backpacks")
    assert (layout.phrases, layout.negative, layout.background) == ([], "backpacks", "A realistic scene")
    layout = plan_layout("a cat and a dog without a leash")
    assert (layout.phrases, layout.negative) == (["a cat", "a dog"], "leash")


def test_trailing_setting_becomes_the_background():
    layout = plan_layout("three apples on a table")
    assert layout.phrases == ["an apple"] * 3 and layout.background == "a table"
    layout = plan_layout("A photo of a cat and two dogs in a snowy park")
    assert layout.phrases == ["a cat", "a dog", "a dog"] and layout.background == "a snowy park"
    # "on the left" is a position, not a setting
    assert plan_layout("a cat on the left").background == "A realistic scene"


@pytest.mark.parametrize("prompt, first, second, axis, sign", [
    ("a yellow triangle on the left and a blue circle on the right", "a yellow triangle", "a blue circle", 0, -1),
    ("a bottle on the right and a laptop on the left", "a bottle", "a laptop", 0, 1),
    ("A realistic photo of a scene with a dog on the top and a bowl on the bottom", "a dog", "a bowl", 1, -1),
    ("a dog on the bottom side and a car on the top side", "a dog", "a car", 1, 1),
    ("a cat to the left of a dog", "a cat", "a dog", 0, -1),
    ("a lamp above a sofa", "a lamp", "a sofa", 1, -1),
    ("a ball under a chair", "a ball", "a chair", 1, 1),
])
def test_positions_are_respected(prompt, first, second, axis, sign):
    layout = plan_layout(prompt)
    boxes = {b.phrase: b for b in layout.boxes}
    c1, c2 = boxes[first].center[axis], boxes[second].center[axis]
    assert (c1 - c2) * sign > 0.2  # clearly apart, not just by a pixel


def test_lone_positioned_object_keeps_to_its_half():
    (box,) = plan_layout("a cat on the right").boxes
    assert box.x0 >= 0.5
    (box,) = plan_layout("a cat on the left").boxes
    assert box.x1 <= 0.5


@pytest.mark.parametrize("prompt", [
    "A realistic photo of a scene with five dogs", "three green squares", "a cat, two dogs and three birds",
    "two cats on the left and three dogs on the right", "a cat on the top and four cups on the bottom",
    "a red circle on the left, a blue square on the top and two green triangles", "eight apples",
])
def test_boxes_inside_canvas_and_never_overlapping(prompt):
    layout = plan_layout(prompt)
    assert len(layout) >= 1 and "warnings" not in layout.meta
    for b in layout.boxes:
        assert 0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1
        assert b.area > 0.005  # still a visible object, 1/200 of the canvas at least
    for a, b in itertools.combinations(layout.boxes, 2):
        assert _overlap(a, b) == 0


def test_box_shapes_vary_with_the_count():
    sizes = [plan_layout(f"{n} cats").boxes[0].area for n in ("one", "two", "three", "four", "five")]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1]
    single = plan_layout("a cat").boxes[0]
    assert 0.3 < single.area < 0.6 and single.center[1] > 0.5  # big, a little below the centre


def test_place_groups_direct():
    objects = place_groups([ObjectGroup("a cup", 2, "left"), ObjectGroup("a bowl", 1, "right")], canvas=512)
    assert [n for n, _ in objects] == ["a cup", "a cup", "a bowl"]
    assert all(x + w <= 512 and y + h <= 512 and min(x, y) >= 0 for _, (x, y, w, h) in objects)
    assert max(x + w for n, (x, y, w, h) in objects if n == "a cup") <= min(x for n, (x, _, _, _) in objects
                                                                            if n == "a bowl")


def test_parse_prompt_structure():
    parsed = parse_prompt("A realistic photo of a scene with a brown cup on the left and two cats on the right")
    assert parsed.groups == (ObjectGroup("a brown cup", 1, "left"), ObjectGroup("a cat", 2, "right"))
    assert parsed.background == "A realistic scene" and parsed.negative == ""


def test_counts_past_max_boxes_are_capped_once_and_noted():
    with pytest.warns(LayoutWarning, match="capped the count") as caught:
        parsed = parse_prompt("100000000 cats and two dogs")
    assert len(caught) == 1 and parsed.groups == (ObjectGroup("a cat", 6), ObjectGroup("a dog", 2))
    assert parsed.notes == (str(caught[0].message),)
    assert parse_prompt("two dogs").notes == ()


def test_planner_is_deterministic_and_a_layout_source():
    planner = OfflinePlanner()
    prompts = benchmark_prompts()[::37]
    first = [planner.get_layout(p).to_json() for p in prompts]
    assert first == [planner.get_layout(p, sample=3).to_json() for p in prompts]
    assert planner.name == "offline planner"


# -- what the planner did not understand ---------------------------------------------------------------------
@pytest.mark.parametrize("prompt, words", [
    ("a cat sitting on a sofa", ["sitting"]),
    ("빨간 원 두 개", ["빨간", "원", "두", "개"]),
    ("two dogs playing in the park", ["playing"]),
    ("a man with a hat riding a horse", ["with", "riding"]),
    ("a cat that is sleeping", ["that", "is", "sleeping"]),
])
def test_words_not_understood_give_one_warning_pointing_to_the_llm(prompt, words):
    with pytest.warns(LayoutWarning) as caught:
        layout = plan_layout(prompt)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert all(repr(w) in message for w in words)
    assert "LMD_LLM_MODEL" in message and "OPENAI_BASE_URL" in message and "OPENAI_API_KEY" in message
    assert layout.meta["warnings"] == [message]
    assert parse_prompt(prompt).unread == tuple(words)


def test_long_lists_of_unknown_words_are_shortened():
    prompt = " ".join(["고양이"] * 3 + [f"단어{i}" for i in range(60)])
    with pytest.warns(LayoutWarning) as caught:
        plan_layout(prompt)
    assert len(caught) == 1 and len(str(caught[0].message)) < 600


def test_the_grammar_and_the_benchmark_prompts_give_no_warning():
    import warnings

    prompts = list(benchmark_prompts()) + ["a sleeping cat and a red building", "a painting on the left",
                                           "three apples on a table", "a cup of coffee", "a photo of a corgi"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        for p in prompts:
            assert "warnings" not in plan_layout(p).meta, p


# -- planning for a model that draws less: square boxes of given sides -----------------------------------------
def test_box_sides_give_squares_in_range_at_the_same_centres():
    groups = [ObjectGroup("a cup", 1, "left"), ObjectGroup("a bowl", 3, "right")]
    free = place_groups(groups)
    for grid in (None, 32):
        square = place_groups(groups, box_sides=(0.2, 0.4), grid=grid)
        assert [n for n, _ in square] == [n for n, _ in free]
        for (_, (x, y, w, h)), (_, (fx, fy, fw, fh)) in zip(square, free):
            assert w == h and 0.2 * 512 - 1 <= w <= 0.4 * 512 + 1
            assert abs((x + w / 2) - (fx + fw / 2)) <= 8 and abs((y + h / 2) - (fy + fh / 2)) <= 8
            if grid:
                assert x % 16 == y % 16 == w % 16 == 0  # whole pixels of a 32-px image
        for (_, a), (_, b) in itertools.combinations(square, 2):
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def test_model_limits_set_background_and_name_words_outside_the_vocabulary():
    limits = ModelLimits(box_sides=(0.25, 0.5), background="", vocabulary=("a", "red", "blue", "circle", "circles", "squares", "two"),
                         name="the little model")
    layout = plan_layout("two red circles without blue squares", limits)
    assert layout.background == "" and len(layout) == 2 and "warnings" not in layout.meta  # "without" is read
    with pytest.warns(LayoutWarning) as caught:
        layout = plan_layout("A realistic photo of a red circle", limits)
    assert len(caught) == 1 and "the little model does not know 'realistic', 'photo'" in str(caught[0].message)
    assert layout.meta["warnings"] == [str(caught[0].message)]
    assert OfflinePlanner(limits).get_layout("a red circle").background == ""
    by_count = ModelLimits(box_sides=lambda n: (0.1, 0.4 / n), grid=32)  # smaller boxes in a crowd
    sides = [plan_layout(f"{n} cats", by_count).boxes[0].width for n in ("one", "two", "four")]
    assert sides == [0.375, 0.1875, 0.09375]  # the largest side, floored to whole pixels of 32
    with pytest.raises(ValueError):
        ModelLimits(box_sides=(0.5, 0.2))
    with pytest.raises(ValueError):
        ModelLimits(grid=32)
