"""Property tests of the reply parser: whatever the text, the only exception is LayoutParseError."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GPT35_REPLIES_FILE
from lmd_utils.layout import Layout
from lmd_utils.llm_layouts import LayoutParseError, format_layout_reply, parse_layout_reply, reply_to_layout

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

if GPT35_REPLIES_FILE.is_file():
    SHARED_REPLIES = [r for rs in json.loads(GPT35_REPLIES_FILE.read_text()).values() for r in rs]
else:  # the mutation strategies still get real-looking seeds
    SHARED_REPLIES = ["[('a dog', [82, 120, 163, 195]), ('a cat', [267, 120, 163, 195])]\n"
                      "Background prompt: A realistic scene\nNegative prompt: "]
SEED_REPLIES = sorted(set(SHARED_REPLIES), key=SHARED_REPLIES.index)

#: Characters that matter to the parser, mixed with arbitrary text.
SYNTAX = list("[](){},:'\"\\ \n.-+eE0123456789") + ["None", "null", "Objects:", "Background prompt:",
                                                     "Negative prompt:", "```", "bounding_box", "name", "nan"]
fragments = st.one_of(st.sampled_from(SYNTAX), st.text(max_size=8))


@st.composite
def mutated_replies(draw) -> str:
    """A published reply with a few random edits: deletions, insertions, duplications, truncation."""
    text = draw(st.sampled_from(SEED_REPLIES))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "truncate"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(fragments) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(fragments) + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i]
    return text


def _check_only_parse_errors(text: str) -> None:
    try:
        parsed = parse_layout_reply(text)
    except LayoutParseError:
        return
    for name, box in parsed.objects:
        assert isinstance(name, str) and len(box) == 4 and all(isinstance(v, float) for v in box)
    assert parsed.background is None or isinstance(parsed.background, str)
    assert isinstance(parsed.negative, str)


@PROPERTY_SETTINGS
@given(st.text(max_size=300))
def test_random_text_raises_only_layout_parse_error(text):
    _check_only_parse_errors(text)


@PROPERTY_SETTINGS
@given(st.lists(fragments, max_size=40).map("".join))
def test_syntax_soup_raises_only_layout_parse_error(text):
    _check_only_parse_errors(text)


@PROPERTY_SETTINGS
@given(mutated_replies())
def test_mutated_replies_raise_only_layout_parse_error(text):
    _check_only_parse_errors(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            layout = reply_to_layout(text)
        except LayoutParseError:
            return
    assert isinstance(layout, Layout)
    assert all(0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1 for b in layout.boxes)
    layout.validate()  # what the parser and the repairs produce, stage 2 accepts
    json.loads(layout.to_json(), parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))


captions = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s)
coords = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(captions, st.lists(coords, min_size=4, max_size=4)), max_size=6),
       st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
def test_format_then_parse_is_the_identity(objects, background):
    text = format_layout_reply(objects, background.replace("\n", " "), "")
    parsed = parse_layout_reply(text)
    assert [n for n, _ in parsed.objects] == [n for n, _ in objects]
    for (_, got), (_, want) in zip(parsed.objects, objects):
        assert all(math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-12) for g, w in zip(got, want))


@pytest.mark.parametrize("text", SEED_REPLIES[:50])
def test_every_published_reply_survives_reformatting(text):
    p = parse_layout_reply(text)
    again = parse_layout_reply(format_layout_reply(p.objects, p.background, p.negative))
    assert (again.objects, again.background, again.negative) == (p.objects, p.background, p.negative)
