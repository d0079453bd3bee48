"""Stage 1, the part notebook 06 teaches: template, reply parser, reply file, dialog."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from lmd_utils.layout import LayoutWarning
from lmd_utils.llm_layouts import (
    MAX_REPLY_CHARS,
    TEMPLATE_VERSION,
    LayoutParseError,
    LayoutSession,
    MissingReplyError,
    ReplyFileSource,
    format_layout_reply,
    layout_to_reply,
    load_template,
    parse_layout_reply,
    reply_to_layout,
    scoring_objects,
    show_template,
)
from lmd_utils.planner import OfflinePlanner

pytestmark = pytest.mark.usefixtures("no_llm_env")


# =============================================================================================================
# Template
# =============================================================================================================
def test_template_states_task_canvas_rules_and_examples():
    t = load_template()
    assert t.version == TEMPLATE_VERSION == "v1"
    system = t.system
    for needle in ("512", "[x, y, w, h]", "top-left", "A realistic scene", "One box for each single object",
                   "Every foreground object", "negative prompt", "English", "Objects: [(",
                   "Background prompt:", "Negative prompt:"):
        assert needle in system, needle
    assert len(t.examples) >= 7
    users = [u for u, _ in t.examples]
    assert sum(u.startswith("Caption: ") for u in users) >= 7
    assert any("without" in u for u in users)
    assert any(re.search(r"[áéíóúñ]", u) for u in users)  # a non-English caption
    assert any(u.startswith("Follow-up instruction: ") for u in users)


def test_template_examples_parse_and_stay_inside_the_canvas():
    t = load_template()
    parsed = [parse_layout_reply(a) for _, a in t.examples]
    for p in parsed:
        for name, (x, y, w, h) in p.objects:
            assert name.startswith(("a ", "an ")), name
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 512 and y + h <= 512, (name, x, y, w, h)
    assert any(p.negative for p in parsed)  # negation goes to the negative prompt
    assert any(len(p.objects) == 3 and len({n for n, _ in p.objects}) <= 2 for p in parsed)  # counts
    # the non-English example answers in English
    spanish = next(p for (u, _), p in zip(t.examples, parsed) if "perro" in u)
    assert all(re.fullmatch(r"[a-z ]+", n) for n, _ in spanish.objects)
    assert "dog" in " ".join(n for n, _ in spanish.objects)


def test_messages_are_system_then_example_turns_then_caption():
    t = load_template()
    msgs = t.messages("A photo of a cat")
    assert msgs[0]["role"] == "system" and msgs[0]["content"] == t.system
    roles = [m["role"] for m in msgs[1:]]
    assert roles == ["user", "assistant"] * len(t.examples) + ["user"]
    assert msgs[-1] == {"role": "user", "content": "Caption: A photo of a cat"}
    text = show_template("A photo of a cat")
    assert text.startswith("LMD layout template v1") and text.endswith("Caption: A photo of a cat")
    assert text.count("--- assistant ---") == len(t.examples)


def test_broken_template_file_is_rejected(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("[user]\nCaption: x\n")
    with pytest.raises(ValueError, match="must start with a \\[system\\]"):
        load_template(path=bad)
    bad.write_text("[system]\nhi\n[user]\nCaption: x\n")
    with pytest.raises(ValueError, match="alternate"):
        load_template(path=bad)


# =============================================================================================================
# Parser
# =============================================================================================================
def test_parser_reads_all_published_replies(gpt35_replies):
    replies = [r for rs in gpt35_replies.values() for r in rs]
    assert len(replies) == 400
    parsed = [parse_layout_reply(r) for r in replies]
    assert sum(len(p.objects) for p in parsed) == sum(r.count("', [") for r in replies)
    assert sum(not p.objects for p in parsed) == 96
    assert all(p.background for p in parsed)
    one = parse_layout_reply(gpt35_replies["A realistic photo of a scene with two dogs"][0])
    assert one.objects == [("a dog", [82.0, 120.0, 163.0, 195.0]), ("a dog", [267.0, 120.0, 163.0, 195.0])]
    assert one.background == "A realistic scene" and one.negative == ""
    neg = parse_layout_reply(gpt35_replies["A realistic photo of a scene without books"][0])
    assert neg.objects == [] and neg.negative == "books"


TOLERATED = {
    "code fence and prose": (
        "Sure! Here is the layout:\n```python\nObjects: [('a red car', [10, 20, 30, 40])]\n"
        "Background prompt: A street\nNegative prompt: None\n```\nLet me know if you want changes.",
        [("a red car", [10, 20, 30, 40])], "A street", ""),
    "no Objects prefix, missing negative": (
        "[('a cat', [1, 2, 3, 4]), ('a dog', [5.5, 6, 7, 8e1])]\nBackground prompt: A room",
        [("a cat", [1, 2, 3, 4]), ("a dog", [5.5, 6, 7, 80])], "A room", ""),
    "JSON lists and trailing commentary": (
        'Objects: [["a cup", [0, 0, 100, 100]], ["a bowl", [200, 200, 50, 60]],]\n'
        "Background prompt: A kitchen.\nNegative prompt: blurry\n\nI put the cup in the corner.",
        [("a cup", [0, 0, 100, 100]), ("a bowl", [200, 200, 50, 60])], "A kitchen.", "blurry"),
    "dict items": (
        'Objects: [{"name": "a bird", "bounding_box": [1, 2, 3, 4]}, {"caption": "a tree", "box": '
        '{"x": 5, "y": 6, "width": 7, "height": 8}}]\nBackground prompt: "A forest"\nNegative prompt: N/A',
        [("a bird", [1, 2, 3, 4]), ("a tree", [5, 6, 7, 8])], "A forest", ""),
    "whole JSON answer": (
        '{"objects": [["a boat", [10, 10, 90, 40]]], "background_prompt": "A lake", "negative_prompt": "none"}',
        [("a boat", [10, 10, 90, 40])], "A lake", ""),
    "apostrophe, markdown bold, bracket in prose": (
        "Layout [512x512]:\n**Objects:** [('a man's hat', (1, 2, 3, 4))]\n**Background prompt:** A shop\n"
        "**Negative prompt:** hands",
        [("a man's hat", [1, 2, 3, 4])], "A shop", "hands"),
    "empty list, no background": ("Objects: []\nNegative prompt: dogs", [], None, "dogs"),
    "prompts before the list": (
        "Background prompt: A desert\nNegative prompt: water\n[('a camel', [50, 100, 300, 250])]",
        [("a camel", [50, 100, 300, 250])], "A desert", "water"),
}


@pytest.mark.parametrize("case", list(TOLERATED), ids=list(TOLERATED))
def test_parser_tolerates_common_deviations(case):
    text, objects, background, negative = TOLERATED[case]
    p = parse_layout_reply(text)
    assert p.objects == [(n, [float(v) for v in b]) for n, b in objects]
    assert (p.background, p.negative) == (background, negative)


@pytest.mark.parametrize(
    "text, quoted",
    [
        ("I am sorry, I cannot draw that.", "I am sorry"),
        ("Objects: [('a cat', [1, 2, 3])]\nBackground prompt: x", "is not [x, y, w, h]"),
        ("Objects: [('a cat', [1, 2, 3, 4])", "expected ','"),
        ("Objects: [('a cat, [1, 2, 3, 4])]", "unterminated string"),
        ("Objects: [('a cat', ['one', 2, 3, 4])]", "'one' is not a number"),
        ("Objects: " + "[" * 30, "nested deeper"),
        ("Objects: [{'label': 'a cat'}]", "needs a name and a bounding_box"),
    ],
)
def test_parser_errors_quote_the_text(text, quoted):
    with pytest.raises(LayoutParseError) as info:
        parse_layout_reply(text)
    assert quoted in str(info.value)
    assert len(str(info.value)) < 300  # quotes are truncated


def test_long_garbage_is_rejected_quickly_with_a_short_message():
    with pytest.raises(LayoutParseError) as info:
        parse_layout_reply("['" + "[" * 50_000)
    assert len(str(info.value)) < 300
    with pytest.raises(LayoutParseError, match="too long") as info:
        parse_layout_reply("x" * 300_000)
    assert "300000 characters" in str(info.value) and str(MAX_REPLY_CHARS) in str(info.value)
    assert len(str(info.value)) < 300
    with pytest.raises(TypeError):
        parse_layout_reply(None)  # type: ignore[arg-type]


def test_format_and_parse_round_trip():
    objects = [("a man's hat", [1, 2.5, 3, 4]), ('a "quoted" sign', [0, 0, 512, 10])]
    text = format_layout_reply(objects, "A street", "")
    assert text.splitlines()[1:] == ["Background prompt: A street", "Negative prompt:"]
    p = parse_layout_reply(text)
    assert p.objects == [(n, [float(v) for v in b]) for n, b in objects]


def test_reply_to_layout_clips_but_keeps_raw_boxes_for_scoring():
    text = "[('a car', [400, 100, 200, 100]), ('a wall', [0, 0, 512, 512])]\nBackground prompt: \nNegative prompt: x"
    with pytest.warns(LayoutWarning):
        layout = reply_to_layout(text, prompt="a car")
    assert layout.prompt == "a car" and layout.background == "A realistic scene" and layout.negative == "x"
    assert layout.phrases == ["a car"] and layout.boxes[0].x1 == 1.0  # clipped at the right edge
    assert layout.meta["reply"] == text
    assert scoring_objects(layout) == [("a car", [400.0, 100.0, 200.0, 100.0]), ("a wall", [0.0, 0.0, 512.0, 512.0])]
    assert layout_to_reply(layout).startswith("Objects: [('a car', [400, 100, 112, 100])]")


# =============================================================================================================
# Reply file
# =============================================================================================================
def test_reply_file_gives_the_kth_reply_to_the_kth_request(tmp_path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"two dogs": ["[('a dog', [0, 0, 10, 10])]", "[('a dog', [5, 5, 10, 10])]"]}))
    src = ReplyFileSource(path)
    first, second = src.get_layout("two dogs"), src.get_layout("two dogs")
    assert scoring_objects(first)[0][1] == [0, 0, 10, 10] and scoring_objects(second)[0][1] == [5, 5, 10, 10]
    assert (first.meta["sample"], second.meta["sample"]) == (0, 1)
    with pytest.raises(MissingReplyError, match="has 2 replies"):
        src.get_layout("two dogs")
    assert scoring_objects(src.get_layout("two dogs", sample=1))[0][1] == [5, 5, 10, 10]
    with pytest.raises(MissingReplyError, match="no reply for"):
        src.get_layout("a cat")
    src.reset()
    assert src.get_layout("two dogs").meta["sample"] == 0


def test_reply_file_validation(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ReplyFileSource(bad)
    bad.write_text(json.dumps({"p": "not a list"}))
    with pytest.raises(ValueError, match="list of reply strings"):
        ReplyFileSource(bad)



# =============================================================================================================
# Dialog
# =============================================================================================================
def test_planner_session_does_one_round_only():
    session = LayoutSession(OfflinePlanner())
    assert session.ask("a cat and a dog").phrases == ["a cat", "a dog"]
    assert session.history[1]["content"].startswith("Objects: [('a cat', [")
    with pytest.raises(TypeError, match="cannot follow instructions"):
        session.ask("make the cat bigger")


def test_layout_warnings_are_warnings_not_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        with pytest.raises(LayoutWarning):
            reply_to_layout("[('a', [0, 0, 0, 5])]")
