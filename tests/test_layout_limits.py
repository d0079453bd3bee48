"""Limits on stage 1's inputs, by defect class: every bad reply or prompt ends, within a second, in a typed error
(:class:`LayoutParseError`, :class:`LayoutError`) or in a repaired layout with a warning; never an untyped error,
a hang, a flood of warnings or a message that quotes 100 KB."""

from __future__ import annotations

import json
import math
import random
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmd_utils import planner
from lmd_utils.benchmark import benchmark_prompts
from lmd_utils.layout import MAX_BOXES, Box, Layout, LayoutError, LayoutWarning, has_word, quote, shorten
from lmd_utils.llm_layouts import (
    MAX_REPLY_CHARS,
    LayoutParseError,
    MissingReplyError,
    ReplyFileSource,
    parse_layout_reply,
    reply_to_layout,
    scoring_objects,
)
from lmd_utils.planner import MAX_PROMPT_CHARS, ObjectGroup, cap_counts, parse_prompt, place_groups, plan_layout

#: Every parse, plan or repair below must end within this much CPU time of this process (they take milliseconds; a
#: regression takes minutes).  CPU time, not wall time: a busy machine must not fail these guards.
TIME_LIMIT_S = 1.0
#: The longest error message or warning we accept (quotes are cut at about 80 characters).
MESSAGE_LIMIT = 300
#: The planner's one "did not understand" warning quotes a cut prompt, a cut word list and where to set up an LLM:
#: longer than an error, but bounded whatever the prompt.
WARNING_LIMIT = 900


def _timed(fn, *args):
    """``(outcome, seconds, warnings)``: ``fn(*args)`` or the typed exception it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.process_time()
        try:
            outcome = fn(*args)
        except (LayoutParseError, LayoutError) as e:
            outcome = e
        seconds = time.process_time() - start
    return outcome, seconds, [w for w in caught if issubclass(w.category, LayoutWarning)]


def _fill(unit: str, size: int, head: str = "", tail: str = "") -> str:
    """``head + unit * k + tail``, as long as possible within ``size`` characters."""
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


# =============================================================================================================
# 1. Unbounded planner work: counts are capped at MAX_BOXES before any placement, with ONE warning
# =============================================================================================================
HUGE_COUNT_PROMPTS = [
    "100000000 cats",
    "1000000 cats",
    "99999999999999999999999 dogs and 3 cats",
    "9" * 1990 + " cats",                                   # past int()'s 4,300-digit limit if it were longer
    "ten cats and ten dogs and ten birds",                   # number words, capped in total
    "five cats and five dogs",
    ", ".join(f"{n} cats" for n in range(1, 40)),           # many groups
    " and ".join(["a cat"] * 190),                          # many groups of one
    "a toy world with 4000000000 red circles on the left and 7 blue squares on the right",
]


@pytest.mark.parametrize("prompt", HUGE_COUNT_PROMPTS, ids=lambda p: p[:40])
def test_huge_counts_are_capped_with_one_warning(prompt):
    layout, seconds, caught = _timed(plan_layout, prompt)
    assert seconds < TIME_LIMIT_S
    assert isinstance(layout, Layout) and len(layout) == MAX_BOXES
    capped = [w for w in caught if "capped" in str(w.message)]
    assert len(caught) == len(capped) == 1, [str(w.message) for w in caught]
    assert str(MAX_BOXES) in str(capped[0].message) and len(str(capped[0].message)) < MESSAGE_LIMIT
    assert layout.meta["warnings"] == [str(capped[0].message)]
    layout.validate()


def test_counts_within_the_cap_give_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(plan_layout("eight cats")) == 8
        assert len(plan_layout("three cats and five dogs")) == 8


def test_capping_keeps_a_box_per_group_while_boxes_last():
    with pytest.warns(LayoutWarning, match="capped"):
        phrases = plan_layout("100 dogs and 3 cats").phrases
    assert (phrases.count("a dog"), phrases.count("a cat")) == (5, 3)
    with pytest.warns(LayoutWarning, match="capped"):
        phrases = plan_layout("ten cats and ten dogs").phrases
    assert (phrases.count("a cat"), phrases.count("a dog")) == (4, 4)
    nouns = ["cat", "dog", "bird", "cow", "hen", "fox", "owl", "bee", "ant", "elk"]
    with pytest.warns(LayoutWarning, match="capped"):
        phrases = plan_layout(", ".join(f"a {n}" for n in nouns)).phrases
    assert phrases == [f"an {n}" if n[0] in "aeiou" else f"a {n}" for n in nouns[:MAX_BOXES]]


def test_cap_counts_and_place_groups_never_see_a_huge_count():
    groups = [ObjectGroup("a cat", 10**100, "left"), ObjectGroup("a dog", 10**12)]
    kept, note = cap_counts(groups)
    assert [g.count for g in kept] == [4, 4] and "over a billion" in note
    assert cap_counts(kept) == (kept, None)
    objects, seconds, caught = _timed(place_groups, groups)
    assert seconds < TIME_LIMIT_S and len(objects) == MAX_BOXES and len(caught) == 1


@pytest.mark.parametrize("prompt, count", [("² cats", 3), ("٣ cats", 3), ("0 cats", 0), ("1e9 cats", 3)])
def test_unusual_digits_never_raise(prompt, count):
    assert len(plan_layout(prompt)) == count  # "²" is a digit int() refuses; "٣" is an Arabic-Indic three


# =============================================================================================================
# 2. Parsing time: linear in the text, a size limit, short messages
# =============================================================================================================
def _adversarial_replies(size: int = MAX_REPLY_CHARS) -> dict[str, str]:
    """Replies of ``size`` characters built to make a careless parser backtrack, re-scan or recurse."""
    box = "('a cat', [1, 2, 3, 4]), "
    replies = {
        "16,000-digit quoted number": "[('a', ['" + "9" * 16_000 + "x', 1, 1, 1])]",
        "digit run in a string": _fill("9", size, "[('a', ['", "x', 1, 1, 1])]"),
        "digit run, bare": _fill("9", size, "[('a', [", "x, 1, 1, 1])]"),
        "digit run after a dot": _fill("9", size, "[('a', [1.", "e, 1, 1, 1])]"),
        "exponent digits": _fill("9", size, "[('a', [1e", ", 1, 1, 1])]"),
        "long caption": _fill("a", size, "[('", "', [1, 2, 3, 4])]"),
        "unterminated string": _fill("a", size, "[('"),
        "deep brackets": _fill("[", size),
        "deep mixed brackets": _fill("[(", size),
        "deep dicts": _fill("{'a': ", size),
        "many boxes": _fill(box, size, "Objects: [", "]"),
        "many boxes, last one bad": _fill(box, size, "Objects: [", "('x', [1, 2, 3])]"),
        "many boxes, no header": _fill(box, size, "[", "]"),
        "quotes": _fill("'", size),
        "quote, blank": _fill("' ", size),
        "brackets in strings": _fill("'[', ", size, "["),
        "brackets in one string": _fill("[', '", size, "['"),
        "backslashes": _fill("\\", size, "[('"),
        "escaped quotes": _fill("\\'", size, "[('"),
        "unicode escapes": _fill("\\u12", size, "[('"),
        "surrogate escapes": _fill("\\ud800", size, "[('"),
        "blanks": _fill(" ", size, "", "[]"),
        "newlines": _fill("\n", size),
        "blanks then junk": _fill(" ", size, "Objects:", "x"),
        "repeated Objects: headers": _fill("Objects:\n", size),
        "repeated Objects: on a line": _fill("Objects: ", size),
        "label-like prefix": _fill("*", size, "", "Objects"),
        "label-like lines": _fill("*" * 100 + "\n", size),
        "background labels": _fill("Background prompt: x\n", size),
        "many lists": _fill("[1] ", size),
        "many dicts": _fill("{a: 1} ", size),
        "nested lists, then a long list": "[" * 16 + _fill("1, ", size - 40) + "]" * 16,
        "numbers": _fill("1, ", size, "[", "]"),
        "booleans": _fill("true, ", size, "[", "]"),
        "bare words": _fill("abc ", size, "["),
        "dict with many keys": _fill("a: 1, ", size, "{", "}"),
        "dict objects": _fill('{"name": "a", "bbox": [1, 2, 3, 4]}, ', size, "[", "]"),
        "nested objects keys": _fill('{"objects": ', size, "", "[]"),
        "signs": _fill("-", size, "[('a', ["),
        "dots": _fill(".", size, "[('a', ["),
        "half exponents": _fill("1e+", size, "[('a', ["),
        "colons": _fill(":", size),
        "all the syntax": _fill("[{('\"\\ :,", size),
        "non-ASCII caption": _fill("é猫", size, "[('", "', [1, 2, 3, 4])]"),
        "NUL caption": _fill("\x00", size, "[('", "', [1, 2, 3, 4])]"),
        "brackets before a long string": "[" * 70 + _fill("a", size - 70, "'"),
    }
    rng = random.Random(0)  # and syntax soup, at the limit
    soup = list("[](){},:'\"\\ \n.-+eE0123456789") + ["None", "Objects:", "Background prompt:", "nan", "a cat"]
    for i in range(6):
        text = "".join(rng.choice(soup) for _ in range(size))
        replies[f"syntax soup {i}"] = text[:size]
    return replies


ADVERSARIAL = _adversarial_replies()


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_any_reply_up_to_the_limit_parses_within_a_second(name):
    text = ADVERSARIAL[name]
    assert len(text) <= MAX_REPLY_CHARS
    outcome, seconds, caught = _timed(reply_to_layout, text)
    assert seconds < TIME_LIMIT_S, f"{name}: {seconds:.2f} s"
    assert isinstance(outcome, (Layout, LayoutParseError))
    if isinstance(outcome, LayoutParseError):
        assert len(str(outcome)) < MESSAGE_LIMIT
    else:
        outcome.validate()
        assert len(caught) <= 13  # a few repairs and "… and N more repairs", never one per box
        assert all(len(str(w.message)) < WARNING_LIMIT for w in caught)


def test_a_reply_past_the_limit_is_refused_at_once():
    assert MAX_REPLY_CHARS == 20_000
    for text in ("x" * (MAX_REPLY_CHARS + 1), "[('a', ['" + "9" * 10**6 + "', 1, 1, 1])]"):
        start = time.process_time()
        with pytest.raises(LayoutParseError) as info:
            parse_layout_reply(text)
        assert time.process_time() - start < 0.1
        message = str(info.value)
        assert str(len(text)) in message and str(MAX_REPLY_CHARS) in message and len(message) < MESSAGE_LIMIT


def test_a_reply_at_the_limit_is_read():
    text = _fill(" ", MAX_REPLY_CHARS, "Sure!\nObjects: [('a cat', [10, 20, 100, 100])]\n", "Background prompt: A room")
    assert len(text) == MAX_REPLY_CHARS
    parsed = parse_layout_reply(text)
    assert parsed.objects == [("a cat", [10.0, 20.0, 100.0, 100.0])] and parsed.background == "A room"


def test_the_16000_digit_number_is_a_short_error():
    outcome, seconds, _ = _timed(parse_layout_reply, ADVERSARIAL["16,000-digit quoted number"])
    assert isinstance(outcome, LayoutParseError) and seconds < 0.5
    assert "is not a number" in str(outcome) and "…" in str(outcome) and len(str(outcome)) < MESSAGE_LIMIT


def _adversarial_prompts(size: int) -> dict[str, str]:
    """Prompts of ``size`` characters built to make the planner's regexes backtrack or its loops blow up."""
    return {
        "groups": _fill("a cat and ", size),
        "commas": _fill("a cat, ", size),
        "words": _fill("a ", size),
        "one word": _fill("x", size),
        "digits": _fill("9", size, "", " cats"),
        "picture prefixes": _fill("photo of ", size),
        "settings then a comma": _fill("in a ", size, "", ", x"),
        "settings then an and": _fill("in a ", size, "", " and x"),
        "settings with nouns": _fill("a cat in a x ", size, "", ", y"),
        "setting words": _fill("in the cat ", size, "", ",x"),
        "positions": _fill("a cat on the left ", size),
        "positions of": _fill("on the left of the ", size),
        "relations": _fill("a cat to the left of ", size),
        "relation chain": _fill("x left of ", size, "", "y"),
        "negations": _fill("without ", size),
        "with": _fill("with ", size),
        "with no": _fill("with no x, ", size),
        "punctuation": _fill(",", size),
        "bangs": _fill("!", size),
        "blanks": _fill(" \n\t", size),
        "of": _fill("cups of ", size),
        "number words": _fill("ten ", size),
        "pairs": _fill("a pair of ", size),
        "superscripts": _fill("² cats and ", size),
        "non-ASCII": _fill("猫 ", size),
    }


@pytest.mark.parametrize("name, prompt", list(_adversarial_prompts(MAX_PROMPT_CHARS).items()))
def test_any_prompt_up_to_the_limit_plans_within_a_second(name, prompt):
    layout, seconds, caught = _timed(plan_layout, prompt)
    assert seconds < TIME_LIMIT_S, f"{name}: {seconds:.2f} s"
    assert isinstance(layout, Layout) and len(layout) <= MAX_BOXES and len(caught) <= 1
    assert all(len(str(w.message)) < WARNING_LIMIT for w in caught)


@pytest.mark.parametrize("name, prompt", list(_adversarial_prompts(100_000).items()))
def test_planner_grammar_is_linear_even_past_the_limit(monkeypatch, name, prompt):
    """The limit is a second line of defence: 100 KB prompts parse within a second even without it."""
    monkeypatch.setattr(planner, "MAX_PROMPT_CHARS", 10**6)
    parsed, seconds, caught = _timed(parse_prompt, prompt)
    assert seconds < TIME_LIMIT_S, f"{name}: {seconds:.2f} s"
    assert sum(g.count for g in parsed.groups) <= MAX_BOXES and len(caught) <= 1


def test_a_100kb_prompt_is_a_short_layout_error():
    outcome, seconds, _ = _timed(plan_layout, "a cat and " * 10_000)
    assert isinstance(outcome, LayoutError) and seconds < 0.1
    assert "100000 characters" in str(outcome) and str(MAX_PROMPT_CHARS) in str(outcome)
    assert len(str(outcome)) < MESSAGE_LIMIT
    with pytest.raises(TypeError, match="must be a str"):
        parse_prompt(None)  # type: ignore[arg-type]


def test_setting_search_is_unchanged_by_the_linear_rewrite():
    """``_find_setting`` finds what the plain (quadratic) regex search finds, on the benchmark and odd prompts."""
    rng = random.Random(0)
    words = ["a", "the", "cat", "on", "in", "inside", "near", "and", "AND", ",", "left", "table", "side", "of"]
    prompts = benchmark_prompts() + [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
                                     for _ in range(3000)]
    prompts += ["a cat on the and dog", "x inside the and y", "a cat, and in a box", "in a in a in a, x in a y"]
    for prompt in prompts:
        text = " ".join(prompt.split())
        want, got = planner._SETTING_RE.search(text), planner._find_setting(text)
        assert (want and (want.span(), want["bg"])) == (got and (got.span(), got["bg"])), text
    assert parse_prompt("a cat and a dog in a snowy park").background == "a snowy park"


# =============================================================================================================
# 3a. Boxes too small to represent, malformed boxes and captions without a word are dropped, never raised
# =============================================================================================================
GOOD = ("a cow", [10, 10, 100, 100])


@pytest.mark.parametrize("xywh", [
    [0, 0, 1e-320, 10], [100, 0, 1e-320, 10], [0, 0, 5e-324, 5e-324], [10, 10, 1e-310, 1e-310],
    [0, 0, 10, 1e-322], [511, 0, 1e-300, 5],
])
def test_denormal_boxes_are_dropped_with_a_warning(xywh):
    with pytest.warns(LayoutWarning, match="too small to represent|zero area"):
        layout = Layout.from_xywh_objects([("a cat", xywh), GOOD])
    assert layout.phrases == ["a cow"]
    layout.validate()


@pytest.mark.parametrize("xywh", [["x", 1, 2, 3], [1, 2, 3], None, [10**400, 0, 1, 1], [1, 2, 3, 4, 5]])
def test_malformed_boxes_are_dropped_with_a_warning(xywh):
    with pytest.warns(LayoutWarning, match="not four numbers"):
        layout = Layout.from_xywh_objects([("a cat", xywh), GOOD])
    assert layout.phrases == ["a cow"]


@pytest.mark.parametrize("caption", ["...", "  ", "!!!", "", "—", "()", "🙂", "\u200b"])
def test_captions_without_a_word_are_dropped(caption):
    with pytest.warns(LayoutWarning, match="the caption has no word"):
        layout = Layout.from_xywh_objects([(caption, [0, 0, 10, 10]), GOOD])
    assert layout.phrases == ["a cow"]
    assert not has_word(caption)


@pytest.mark.parametrize("caption", ["猫", "un chien", "café", "R2D2", "a cat!", "собака", "٣"])
def test_captions_in_any_script_are_kept(caption):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Layout.from_xywh_objects([(caption, [0, 0, 10, 10])]).phrases == [caption]


def test_too_many_boxes_give_one_warning_not_one_each():
    objects = [("a cat", [i % 500, 0, 10, 10]) for i in range(1000)]
    layout, seconds, caught = _timed(Layout.from_xywh_objects, objects)
    assert len(layout) == MAX_BOXES and seconds < TIME_LIMIT_S
    assert len(caught) == 1 and "992 box(es): more than 8 boxes" in str(caught[0].message)
    bad = [("...", [0, 0, 10, 10])] * 1000
    _, _, caught = _timed(Layout.from_xywh_objects, bad)
    assert len(caught) == 12 and "… and 989 more repairs" in str(caught[-1].message)


finite_or_not = st.one_of(st.floats(), st.floats(min_value=-1e-300, max_value=1e-300), st.integers(-10**5, 10**5),
                          st.sampled_from([5e-324, -5e-324, 1e-320, 511.99999999999994, 512, 1e308]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(max_size=12), st.lists(finite_or_not, min_size=4, max_size=4)), max_size=12))
def test_from_xywh_objects_never_raises_and_always_validates(objects):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayoutWarning)
        layout = Layout.from_xywh_objects(objects)
    layout.validate()
    json.loads(layout.to_json(), parse_constant=_reject_constant)


# =============================================================================================================
# 3b. to_json writes strict JSON, whatever the numbers in meta
# =============================================================================================================
def _reject_constant(name: str):
    raise AssertionError(f"non-strict JSON constant {name}")


def test_to_json_is_strict_with_infinite_coordinates_in_the_reply():
    text = "[('a cat', [1e999, 0, 10, 10]), ('a dog', [0, -1e999, 10, 10]), ('a cow', [10, 10, 100, 100])]"
    with pytest.warns(LayoutWarning, match="non-finite"):
        layout = reply_to_layout(text)
    assert layout.phrases == ["a cow"]
    out = layout.to_json()
    assert "Infinity" not in out and "NaN" not in out
    json.loads(out, parse_constant=_reject_constant)
    again = Layout.from_json(out)
    assert scoring_objects(again)[:2] == [("a cat", [math.inf, 0.0, 10.0, 10.0]),
                                          ("a dog", [0.0, -math.inf, 10.0, 10.0])]  # "inf" read back by float()


@pytest.mark.parametrize("word", ["inf", "nan", "Infinity", "NaN", "-inf"])
def test_named_non_finite_numbers_are_a_parse_error(word):
    with pytest.raises(LayoutParseError):
        parse_layout_reply(f"[('a cat', [{word}, 0, 10, 10])]")


def test_to_json_is_strict_with_non_finite_floats_anywhere_in_meta():
    layout = Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5)], meta={"score": math.nan, "raw": [(math.inf, -math.inf)],
                                                              "nested": {"x": [1.5, math.nan]}})
    data = json.loads(layout.to_json(), parse_constant=_reject_constant)
    assert data["meta"] == {"score": "nan", "raw": [["inf", "-inf"]], "nested": {"x": [1.5, "nan"]}}
    assert layout.meta["score"] != layout.meta["score"]  # the layout itself is untouched


# =============================================================================================================
# 3c. Hand-built boxes and layouts: Box rejects what no code can draw, Layout.validate applies the repair rules
# =============================================================================================================
@pytest.mark.parametrize("args, match", [
    (("a cat", math.inf, 0, 1, 1), "non-finite"),
    (("a cat", 0, math.nan, 1, 1), "non-finite"),
    (("a cat", 0, 0, 1e400, 1), "non-finite"),
    (("a cat", 0, 0, "1", 1), "must be numbers"),
    ((123, 0, 0, 1, 1), "must be a str"),
    ((None, 0, 0, 1, 1), "must be a str"),
    (("a cat", 0.2, 0.2, 0.2, 0.5), "has no area"),
    (("a cat", 0, 0, 10**400, 1), "must be numbers"),
])
def test_box_rejects_what_no_code_can_draw(args, match):
    with pytest.raises(LayoutError, match=match):
        Box(*args)


def test_box_errors_are_value_errors_and_out_of_canvas_boxes_are_allowed():
    with pytest.raises(ValueError):
        Box("x", 0.2, 0.2, 0.2, 0.5)
    assert Box("a cat", -0.5, 0.9, 0.1, 1.4).width == pytest.approx(0.6)  # code moves boxes around


def test_validate_accepts_what_from_xywh_objects_builds():
    Layout().validate()
    Layout([Box("a cat", 0.0, 0.0, 1.0, 1.0)] * MAX_BOXES, "a park", "dogs").validate()
    plan_layout("two cats on the left and a dog on the right").validate()


@pytest.mark.parametrize("layout, match", [
    (Layout([Box("a cat", -0.1, 0, 0.5, 0.5)]), "box 0 'a cat': outside the canvas"),
    (Layout([Box("a cat", 0.1, 0.1, 0.5, 1.2)]), "outside the canvas"),
    (Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5), Box("...", 0.1, 0.1, 0.5, 0.5)]),
     "box 1 '...': the caption has no word"),
    (Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5)] * (MAX_BOXES + 1)), f"more than {MAX_BOXES} boxes"),
    (Layout([Box("a cat", 0.0, 0.0, 2e-323, 0.5)]), "too small to represent"),
    (Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5)], background=None), "background prompt must be a str"),
    (Layout([Box("a cat", 0.1, 0.1, 0.5, 0.5)], negative=3), "negative prompt must be a str"),
    (Layout([("a cat", [0, 0, 10, 10])]), "not a Box"),
])
def test_validate_raises_layout_error_in_the_repairs_words(layout, match):
    with pytest.raises(LayoutError, match=match):
        layout.validate()


def test_validate_catches_a_box_whose_checks_were_bypassed():
    box = Box("a cat", 0.1, 0.1, 0.5, 0.5)
    object.__setattr__(box, "x1", math.inf)
    with pytest.raises(LayoutError, match="non-finite"):
        Layout([box]).validate()


def test_from_dict_with_a_malformed_box_is_a_layout_error():
    with pytest.raises(LayoutError, match="needs phrase"):
        Layout.from_dict({"boxes": [{"phrase": "a cat", "x0": 0}]})
    with pytest.raises(LayoutError, match="non-finite"):
        Layout.from_json('{"boxes": [{"phrase": "a cat", "x0": 0, "y0": 0, "x1": Infinity, "y1": 1}]}')


# =============================================================================================================
# 3d. Messages quote user text cut short
# =============================================================================================================
LONG = "a very long caption " * 5_000  # 100 KB


def test_shorten_and_quote():
    assert shorten("a cat") == "a cat" and shorten("x" * 80) == "x" * 80
    assert shorten("x" * 81) == "x" * 79 + "…" and len(shorten(LONG)) == 80
    assert shorten("abcdef", 4) == "abc…"
    assert quote("a cat") == "'a cat'" and len(quote(LONG)) == 80 and quote(LONG).endswith("…")


@pytest.mark.parametrize("text", [
    "[('" + "a" * 19_000 + "', [1, 2, 3])]",
    "[{'label': '" + "a" * 19_000 + "'}]",
    "[('a', ['" + "b" * 19_000 + "', 1, 2, 3])]",
    "[('a', {'x': '" + "b" * 19_000 + "'})]",
    "[['" + "c" * 19_000 + "']]",
    "Objects: " + "\x00" * 19_000,
])
def test_parse_errors_quote_long_values_cut_short(text):
    with pytest.raises(LayoutParseError) as info:
        parse_layout_reply(text)
    assert len(str(info.value)) < MESSAGE_LIMIT


def test_layout_messages_quote_long_captions_cut_short():
    for objects in ([(LONG, [400, 400, 200, 200])], [(LONG, [0, 0, math.inf, 1])], [(LONG, [0, 0, 0, 1])],
                    [(LONG + "!", [0, 0, 10, 10])] * 20):
        _, _, caught = _timed(Layout.from_xywh_objects, objects)
        assert caught and all(len(str(w.message)) < WARNING_LIMIT for w in caught)
    for make in (lambda: Box(LONG, 0, 0, math.inf, 1), lambda: Box(LONG, 0, 0, 0, 1),
                 lambda: Layout([Box(LONG, 0, 0, 2, 1)]).validate(), lambda: Box(LONG * 2, 0, 0, 1, "1")):
        with pytest.raises((LayoutError, TypeError)) as info:
            make()
        assert len(str(info.value)) < MESSAGE_LIMIT


def test_planner_and_reply_file_messages_quote_long_prompts_cut_short(tmp_path):
    long_captions = ", ".join(f"a {'very ' * 20}big cat number {i}" for i in range(14))[:MAX_PROMPT_CHARS]
    _, _, caught = _timed(plan_layout, long_captions)
    assert len(caught) == 1 and len(str(caught[0].message)) < MESSAGE_LIMIT
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"a cat": ["[('a cat', [0, 0, 10, 10])]"]}))
    with pytest.raises(MissingReplyError) as info:
        ReplyFileSource(path).reply(LONG)
    assert len(str(info.value)) < MESSAGE_LIMIT
