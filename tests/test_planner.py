"""The offline planner: grammar, one box per instance, non-overlapping placement, positions."""

from __future__ import annotations

import itertools

import pytest

from lmd_utils.benchmark import benchmark_prompts
from lmd_utils.layout import LayoutWarning
from lmd_utils.planner import (
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
