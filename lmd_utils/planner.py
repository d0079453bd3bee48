"""An offline, rule-based stand-in for the LLM of stage 1: text → :class:`~lmd_utils.layout.Layout`.

Not in the paper.  LMD's stage 1 is an LLM (§3.1); this deterministic planner lets the whole pipeline, the
benchmark and the tests run without any LLM.  It understands a small English grammar, enough for the LMD
benchmark prompts and the toy world's captions:

* an optional picture prefix: "A realistic photo of a scene with ...", "A photo of ...", "An image of ...",
  "a toy world with ...";
* objects joined by "and" / commas, each with a quantity ("a", "an", "one"…"ten", digits, "some", "several",
  "a few", "many", "a pair of"; a bare plural counts as three) and free attribute words: "a red car",
  "three green squares";
* positions: "X on the left/right/top/bottom (side)", "in the middle/center", and the relations
  "X to the left/right of Y", "X above/below/over/under/on top of Y";
* "without X" → ``negative = "X"``, and X gets no box (paper §3.1: excluded objects go to the negative prompt);
* a trailing setting "on/in/at/near a table" → ``background = "a table"`` (our choice: a surface or place is
  scenery the diffusion model draws as background, not an object instance); otherwise "A realistic scene".

Prompts longer than :data:`MAX_PROMPT_CHARS` raise :class:`~lmd_utils.layout.LayoutError`; shorter ones are read in
time linear in their length (no regex that scans to the end from every word).

Each object *instance* gets one box captioned ``"a/an <attributes> <singular noun>"`` (paper rule 1), up to
:data:`~lmd_utils.layout.MAX_BOXES` boxes in all: larger counts ("100000000 cats") are capped right after parsing,
before any placement work, with one :class:`~lmd_utils.layout.LayoutWarning` (:func:`cap_counts`).
Placement: the canvas is cut into rows (top / middle / bottom) and each row into cells per object group
(left / unplaced / right), cell widths proportional to the instance counts; the instances of a group then sit
on a small grid inside their cell, so boxes never overlap and their shapes vary with the count.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

from .grammar import NUMBER_WORDS, is_plural, singularize, with_article
from .layout import CANVAS_SIZE, DEFAULT_BACKGROUND, MAX_BOXES, Layout, LayoutError, LayoutWarning, quote, shorten

SOURCE_NAME = "offline planner"

#: Instances drawn for a bare plural ("apples on a table").
BARE_PLURAL_COUNT = 3
#: A count written with 10 digits or more reads as this: far past :data:`MAX_BOXES`, and ``int()`` refuses
#: strings of over 4,300 digits, so we never convert the whole digit run.
HUGE_COUNT = 10**9
#: Longest prompt the planner reads: its grammar is one sentence, and the text encoder reads 77 tokens anyway.
MAX_PROMPT_CHARS = 2_000
_POSITIONS = ("left", "right", "top", "bottom", "middle", "center", "centre")

_PREFIX_RE = re.compile(
    r"^(?:(?:a|an|the)\s+)?(?:[\w-]+\s+){0,3}?(?:photo|photograph|image|picture|painting|drawing|illustration|"
    r"rendering|render|sketch|scene)\s+of\s+(?:(?:a|an|the)\s+scene\s+)?(?=\S)",
    re.I,
)
#: "with ..." or "a toy world with ...": a scene word, then the objects.
_WITH_RE = re.compile(
    r"^(?:(?:(?:a|an|the)\s+)?(?:[\w-]+\s+){0,2}?(?:scene|world|room|picture|image|photo|view|landscape|canvas)"
    r"\s+)?with\s+",
    re.I,
)
_WITHOUT_RE = re.compile(r"(?:^|,?\s+)(?:without|with no)\s+(?P<neg>.+)$", re.I)
_SETTING_RE = re.compile(
    r"\s+(?:on|in|at|near|inside)\s+(?P<bg>(?:a|an|the)\s+(?!(?:" + "|".join(_POSITIONS) + r")\b)"
    r"(?:(?!\s+and\s)[^,])+)$",
    re.I,
)
#: Where a setting cannot reach back past: a comma, or an " and " (less the 12 characters of " inside the ").
_CLAUSE_END_RE = re.compile(r",|\s+and\s", re.I)
_POSITION_RE = re.compile(
    r"\s+(?:on|at|in|to)\s+the\s+(?P<pos>" + "|".join(_POSITIONS) + r")(?:\s+side)?(?:\s+of\s+the\s+\w+)?$",
    re.I,
)
_RELATION_RE = re.compile(
    r"^(?P<a>.+?)\s+(?P<rel>to the left of|to the right of|left of|right of|on top of|above|over|below|under|"
    r"beneath|next to|beside)\s+(?P<b>.+)$",
    re.I,
)
_RELATION_POSITIONS = {
    "to the left of": ("left", "right"), "left of": ("left", "right"),
    "to the right of": ("right", "left"), "right of": ("right", "left"),
    "on top of": ("top", "bottom"), "above": ("top", "bottom"), "over": ("top", "bottom"),
    "below": ("bottom", "top"), "under": ("bottom", "top"), "beneath": ("bottom", "top"),
    "next to": ("left", "right"), "beside": ("left", "right"),
}


@dataclass(frozen=True)
class ObjectGroup:
    """``count`` instances of one object, e.g. three "a green square", optionally at a stated position."""

    caption: str
    count: int
    position: str | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    """What the planner understood: object groups, background and negative prompt."""

    groups: tuple[ObjectGroup, ...]
    background: str
    negative: str
    #: Repairs made while reading the prompt (the counts capped), also raised as :class:`LayoutWarning`.
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------------------
# Words
# ------------------------------------------------------------------------------------------------------------
def _singular_phrase(words: list[str]) -> str:
    """Singularise the head noun: the last word, or the word before "of" ("cups of tea" → "cup of tea")."""
    head = words.index("of") - 1 if "of" in words[1:] else len(words) - 1
    words = list(words)
    words[head] = singularize(words[head])
    return " ".join(words)


# ------------------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------------------
def _parse_group(phrase: str, position: str | None) -> ObjectGroup | None:
    phrase = phrase.strip(" ,.;:")
    m = _POSITION_RE.search(" " + phrase)
    if m:
        position = m["pos"].lower().replace("centre", "center")
        phrase = (" " + phrase)[: m.start()].strip()
    words = phrase.split()
    if not words:
        return None
    count, lowered = None, [w.lower() for w in words]
    for n_words in (3, 2, 1):  # longest quantity first: "a pair of", "a few", "a"
        key = " ".join(lowered[:n_words])
        if len(words) > n_words and key in NUMBER_WORDS:
            count, words = NUMBER_WORDS[key], words[n_words:]
            break
    if count is None and lowered[0].isdecimal():  # not isdigit(): "²" is a digit that int() refuses
        count, words = (_digit_count(lowered[0]), words[1:]) if len(words) > 1 else (1, words)
    if lowered[0] == "the" and len(words) > 1 and count is None:
        words = words[1:]
    head = words[words.index("of") - 1] if "of" in words[1:] else words[-1]  # "cups of tea": "cups"
    plural = is_plural(head)
    if count is None:
        count = BARE_PLURAL_COUNT if plural else 1
    if count < 1:
        return None
    noun = _singular_phrase(words) if plural or count > 1 else " ".join(words)
    return ObjectGroup(with_article(noun.lower()), count, position)


def _digit_count(token: str) -> int:
    """A count written in digits; 10 digits or more read as :data:`HUGE_COUNT` (capped later anyway)."""
    return int(token) if len(token) < 10 else HUGE_COUNT


def cap_counts(groups: Sequence[ObjectGroup], max_boxes: int = MAX_BOXES
               ) -> tuple[tuple[ObjectGroup, ...], str | None]:
    """Groups asking for ``max_boxes`` instances at most in all, and a note saying what was cut (else ``None``).

    Boxes are dealt out one per group in turn, so every group keeps a box while there are boxes left:
    "100 dogs and 3 cats" keeps 5 dogs and 3 cats.  The work depends on ``max_boxes`` and the number of groups,
    never on the counts, so "100000000 cats" costs what "eight cats" does.
    """
    total = sum(max(min(g.count, HUGE_COUNT), 0) for g in groups)
    if total <= max_boxes:
        return tuple(groups), None
    counts, left = [0] * len(groups), max_boxes
    while left:
        for i, g in enumerate(groups):
            if left and counts[i] < g.count:
                counts[i] += 1
                left -= 1
    kept = tuple(replace(g, count=n) for g, n in zip(groups, counts) if n)
    asked = "over a billion" if total >= HUGE_COUNT else str(total)
    summary = shorten(", ".join(f"{g.count} × {g.caption!r}" for g in kept), 120)
    note = (f"capped the count: the prompt asks for {asked} objects in {len(groups)} group(s), "
            f"at most {max_boxes} boxes are drawn (MAX_BOXES); kept {summary}")
    return kept, note


def _split_objects(body: str) -> list[tuple[str, str | None]]:
    """Object phrases with the position a relation gives them ("a cat above a dog" → top, bottom)."""
    parts = [p for p in re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", body) if p.strip()]
    out: list[tuple[str, str | None]] = []
    for part in parts:
        m = _RELATION_RE.match(part.strip())
        if m:
            pos_a, pos_b = _RELATION_POSITIONS[m["rel"].lower()]
            out += [(m["a"], pos_a), (m["b"], pos_b)]
        else:
            out.append((part, None))
    return out


def _find_setting(text: str) -> re.Match[str] | None:
    """``_SETTING_RE.search(text)`` in linear time.

    A setting runs to the end of the text without a comma or an " and ", so it starts in the last clause (its
    "inside the " may reach 12 characters back over an " and ").  Searching the whole text would scan from every
    "in a" to the end and back: quadratic, 2 minutes for 100 KB of "in a in a ...".
    """
    ends = [(m.start() + 1 if m.group() == "," else m.start() - 12) for m in _CLAUSE_END_RE.finditer(text)]
    return _SETTING_RE.search(text, max(ends + [0]))


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Understand ``prompt`` with the planner's grammar (see the module docstring).

    Counts past :data:`MAX_BOXES` in all are capped here (:func:`cap_counts`), with one :class:`LayoutWarning`.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a str, not {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise LayoutError(f"prompt too long for the offline planner: {len(prompt)} characters, the limit is "
                          f"MAX_PROMPT_CHARS = {MAX_PROMPT_CHARS}; it starts: {quote(prompt, 60)}")
    text = " ".join(prompt.strip().rstrip(".!").split())
    text = _PREFIX_RE.sub("", text, count=1)
    negative = ""
    m = _WITHOUT_RE.search(text)
    if m:
        negative = re.sub(r"^(?:a|an|the|any)\s+", "", m["neg"].strip(" ,."), flags=re.I)
        text = text[: m.start()]
    text = _WITH_RE.sub("", text, count=1).strip(" ,")
    background = DEFAULT_BACKGROUND
    m = _find_setting(text)
    if m:
        background, text = m["bg"].strip(), text[: m.start()]
    groups = [g for phrase, pos in _split_objects(text) if (g := _parse_group(phrase, pos)) is not None]
    if len(groups) == 1 and groups[0].caption in ("a scene", "an image", "a picture"):
        groups = []  # "A realistic photo of a scene" alone has no objects
    capped, note = cap_counts(groups)
    if note:
        warnings.warn(note, LayoutWarning, stacklevel=2)
    return ParsedPrompt(capped, background, negative, notes=(note,) if note else ())


# ------------------------------------------------------------------------------------------------------------
# Placement
# ------------------------------------------------------------------------------------------------------------
_ROW_OF = {"top": 0, "bottom": 2}
_COLUMN_OF = {"left": 0, "right": 2}


def _grid_shape(count: int, cell_w: float, cell_h: float) -> tuple[int, int]:
    """Rows × columns for ``count`` boxes in a cell, chosen so the boxes come out closest to square."""
    best = None
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        aspect = (cell_w / cols) / (cell_h / rows)
        score = abs(math.log(aspect)) + 0.05 * (rows * cols - count)
        if best is None or score < best[0]:
            best = (score, rows, cols)
    return best[1], best[2]


def _instance_boxes(count: int, x: float, y: float, w: float, h: float) -> list[list[float]]:
    """``count`` non-overlapping ``[x, y, w, h]`` boxes inside a cell; a lone box sits low, as objects do."""
    rows, cols = _grid_shape(count, w, h)
    # One object gets a big box; boxes in a crowd are smaller, so counts also look different.
    fill = 0.7 if count == 1 else 0.72
    bw, bh = w / cols, h / rows
    boxes = []
    for i in range(count):
        r, c = divmod(i, cols)
        in_row = min(cols, count - r * cols)  # centre a short last row
        x0 = x + (cols - in_row) * bw / 2 + c * bw
        y0 = y + r * bh
        side_w, side_h = bw * fill, bh * fill
        if count == 1:  # keep single objects from filling a tall or wide cell
            side_w, side_h = min(side_w, 1.6 * side_h), min(side_h, 1.6 * side_w)
        boxes.append([x0 + (bw - side_w) / 2, y0 + (bh - side_h) * (0.6 if count == 1 else 0.5), side_w, side_h])
    return boxes


def place_groups(groups: tuple[ObjectGroup, ...] | list[ObjectGroup], canvas: int = CANVAS_SIZE
                 ) -> list[tuple[str, list[int]]]:
    """Boxes for object groups: rows by top/bottom, cells in a row by left/right, a grid of instances per cell.

    Groups asking for more than :data:`MAX_BOXES` instances in all are capped first (:func:`cap_counts`, with a
    :class:`LayoutWarning`), so a huge count never reaches the placement loops.
    """
    groups, note = cap_counts(groups)
    if note:
        warnings.warn(note, LayoutWarning, stacklevel=2)
    rows: dict[int, list[ObjectGroup]] = {}
    for g in groups:
        rows.setdefault(_ROW_OF.get(g.position or "", 1), []).append(g)
    row_ids = sorted(rows)
    row_h = canvas / len(row_ids) if row_ids else canvas
    objects: list[tuple[str, list[int]]] = []
    for r, row_id in enumerate(row_ids):
        row = sorted(rows[row_id], key=lambda g: _COLUMN_OF.get(g.position or "", 1))  # stable: keeps text order
        weights = [math.sqrt(g.count) for g in row]
        x = 0.0
        if len(row) == 1 and row[0].position in _COLUMN_OF:  # alone in its row: keep to the stated half
            spans = [(0.0 if row[0].position == "left" else canvas / 2, canvas / 2)]
        else:
            spans = []
            for wgt in weights:
                spans.append((x, canvas * wgt / sum(weights)))
                x += spans[-1][1]
        for g, (cx, cw) in zip(row, spans):
            for box in _instance_boxes(g.count, cx, r * row_h, cw, row_h):
                objects.append((g.caption, [round(v) for v in box]))
    return objects


# ------------------------------------------------------------------------------------------------------------
# The source
# ------------------------------------------------------------------------------------------------------------
def plan_layout(prompt: str) -> Layout:
    """The planner's layout for ``prompt``; ``meta["source"] == "offline planner"``."""
    parsed = parse_prompt(prompt)
    meta: dict = {"source": SOURCE_NAME}
    if parsed.notes:
        meta["warnings"] = list(parsed.notes)
    return Layout.from_xywh_objects(
        place_groups(parsed.groups), parsed.background, parsed.negative, prompt=prompt, meta=meta,
    )


class OfflinePlanner:
    """:func:`plan_layout` as a layout source (``get_layout(prompt, sample)``; deterministic, so ``sample``
    is ignored)."""

    name = SOURCE_NAME

    def __repr__(self) -> str:
        return "OfflinePlanner()"

    def get_layout(self, prompt: str, sample: int | None = None) -> Layout:
        return plan_layout(prompt)


__all__ = ["OfflinePlanner", "plan_layout", "parse_prompt", "place_groups", "cap_counts", "ObjectGroup",
           "ParsedPrompt", "SOURCE_NAME", "BARE_PLURAL_COUNT", "HUGE_COUNT", "MAX_PROMPT_CHARS"]
