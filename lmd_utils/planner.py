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

Planning for a model that can draw less (:class:`ModelLimits`, e.g. the toy world's
:data:`~lmd_utils.toyworld.model.TOY_PLANNER_LIMITS`): every box becomes a square whose side is kept within the
sizes the model was trained on (``box_sides``), at the same centre, optionally snapped to the model's pixel grid;
the background can be replaced by the one the model knows; and words outside the model's vocabulary are named.

What it does not understand it says: words in other scripts than the Latin one, and English words its captions
cannot hold (verbs such as "sitting", prepositions and pronouns inside an object phrase: "a man with a hat") are
named in one :class:`~lmd_utils.layout.LayoutWarning` that points to the LLM set-up (:func:`unread_words`; a
rule of thumb: it cannot tell an unknown noun from a known one, so "a corgi" passes).
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .grammar import ARTICLES, NUMBER_WORDS, is_plural, singularize, with_article
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
    #: Words the grammar could not read (:func:`unread_words`); :func:`plan_layout` warns about them.
    unread: tuple[str, ...] = ()


def _check_sides(sides: tuple[float, float]) -> tuple[float, float]:
    lo, hi = sides
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"box_sides must be (min, max) with 0 < min <= max <= 1, got {sides}")
    return float(lo), float(hi)


@dataclass(frozen=True)
class ModelLimits:
    """What the diffusion model the layout is planned for can draw and read (``None`` fields: no limit).

    box_sides: ``(min, max)`` side of a box as a fraction of the canvas, or a function of the number of boxes that
        gives it; every box becomes a SQUARE of a side in that range, centred where the box would have been
        (:func:`place_groups`).  For models trained on objects of a few sizes only, such as the toy world (7–13 px
        of 32, smaller in crowded scenes).
    grid: the model's image side in pixels: box sides and corners snap to whole pixels (needs ``box_sides``).
    background: the background the layout carries instead of the planner's (the toy world: ``""``, what its
        ``lmd_config.json`` gives stage 2).
    vocabulary: every word the model's text encoder learnt (lower case); other words of the prompt are named in
        the planner's warning (:func:`words_outside`), with the words it knows.
    name: how the warning calls the model ("the toy model").
    """

    box_sides: tuple[float, float] | Callable[[int], tuple[float, float]] | None = None
    grid: int | None = None
    background: str | None = None
    vocabulary: tuple[str, ...] | None = None
    name: str = "the diffusion model"

    def __post_init__(self) -> None:
        if self.box_sides is not None and not callable(self.box_sides):
            _check_sides(self.box_sides)
        if self.grid is not None and (self.box_sides is None or self.grid < 1):
            raise ValueError("grid needs box_sides and must be >= 1")
        if self.vocabulary is not None:
            object.__setattr__(self, "vocabulary", tuple(dict.fromkeys(w.lower() for w in self.vocabulary)))


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
# Words the grammar cannot read
# ------------------------------------------------------------------------------------------------------------
#: English words an object phrase of the grammar cannot hold: verbs and auxiliaries, prepositions (other than
#: "of": "a cup of tea"), pronouns and conjunctions.  Found inside a caption they mean the planner read a clause
#: ("a man with a hat", "a cat that is sleeping") as one object.
_CLAUSE_WORDS = frozenset("""
    is are was were be been being am has have had do does did can could will would should may might must
    about across against along among around at behind beside besides between beyond by down during for from in
    inside into near off on onto out outside over past through to toward towards under underneath up upon with
    within without above below beneath next onto against
    i you he she it we they me him her us them my your his its our their this that these those who whom whose
    which what where when while there here or but nor because if then than not no never
""".split())
#: Nouns ending in "-ing" ("a red building"): other "-ing" words at the end of a caption, or before an article,
#: are read as verbs ("a cat sitting", "a dog chasing a ball").
_ING_NOUNS = frozenset("""
    awning bedding building ceiling clothing dumpling drawing duckling earring evening filling frosting icing king
    lightning morning painting pudding railing ring seedling sibling siding sling spring string stuffing swing
    thing topping viking wedding wing
""".split())


def _is_non_latin(word: str) -> bool:
    """A word with a letter of another script than the Latin one ("빨간", "猫", "кот")."""
    return not word.isascii() and any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN")
                                      for ch in word)


def _is_verb_form(words: list[str], i: int) -> bool:
    """``words[i]`` reads as a verb: an "-ing" word (not a known "-ing" noun) that ends the phrase or comes before
    an article ("a cat sitting", "a dog chasing a ball"; "a sleeping cat" is an attribute), or any word before an
    inner article other than "of" ("a dog chases a ball")."""
    w = words[i]
    last = i == len(words) - 1
    before_article = not last and words[i + 1] in ARTICLES
    if w.endswith("ing") and len(w) >= 5 and w not in _ING_NOUNS and (last or before_article):
        return True
    return before_article and w != "of" and i > 0


def unread_words(groups: Sequence[ObjectGroup], prompt: str = "") -> tuple[str, ...]:
    """Words the planner's grammar could not read, in order, once each: every word of ``prompt`` in another script
    than the Latin one, and in the groups' captions the words an object phrase cannot hold (verbs, prepositions,
    pronouns, conjunctions: :data:`_CLAUSE_WORDS`, "-ing" verbs).  A heuristic: unknown nouns ("a corgi") and
    other languages written in Latin letters ("un chat") pass."""
    found: list[str] = []
    for word in dict.fromkeys(prompt.split()):  # each distinct word once: a 100 KB prompt of one word is fast
        if _is_non_latin(word):
            found.append(word.strip(".,;:!?"))
    for g in groups:
        words = [w.strip(".,;:!?\"'") for w in g.caption.lower().split()[1:]]  # after the planner's article
        for i, w in enumerate(words):
            if w and not _is_non_latin(w) and (w in _CLAUSE_WORDS or _is_verb_form(words, i)):
                found.append(w)
    return tuple(dict.fromkeys(w for w in found if w))


def words_outside(prompt: str, vocabulary: Sequence[str]) -> tuple[str, ...]:
    """Words of ``prompt`` (lower case, once each, in order) outside ``vocabulary``, leaving out what the planner
    reads and never passes on: digits and count words ("2", "a few": the boxes carry the count) and the negation
    keyword ("without": the excluded object becomes the negative prompt)."""
    text = prompt.lower()
    m = _WITHOUT_RE.search(" ".join(text.split()))
    skip = {"without", "no"} if m else set()
    skip |= {w for key in NUMBER_WORDS for w in key.split()}
    words = re.findall(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", text)
    known = set(vocabulary) | skip
    return tuple(dict.fromkeys(w for w in words if w not in known))


def unread_note(prompt: str, unread: Sequence[str], outside: Sequence[str] = (), limits: ModelLimits | None = None
                ) -> str | None:
    """The one warning about words not understood (``None`` when there are none): ``unread`` the planner's
    (:func:`unread_words`, with the pointer to the LLM set-up), ``outside`` the model's (:func:`words_outside`,
    with the words ``limits`` says it knows)."""
    if not unread and not outside:
        return None
    parts = []
    if unread:
        parts.append(f"the offline planner did not understand {_word_list(unread)} in {quote(prompt, 60)}: it "
                     "reads a small English grammar (counted objects with attributes, positions, \"without X\", a "
                     "setting) and kept the rest in the captions as it was; an LLM reads any prompt: set "
                     "LMD_LLM_MODEL and OPENAI_BASE_URL or OPENAI_API_KEY (README, \"Layouts from an LLM\")")
    if outside:
        model = limits.name if limits is not None else "the diffusion model"
        knows = f" (it learnt only: {shorten(', '.join(limits.vocabulary), 240)})" if limits and limits.vocabulary else ""
        parts.append(f"{model} does not know {_word_list(outside)}{knows}")
    return "; ".join(parts)


def _word_list(words: Sequence[str], limit: int = 100) -> str:
    return shorten(", ".join(repr(w) for w in words), limit)


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
    return ParsedPrompt(capped, background, negative, notes=(note,) if note else (),
                        unread=unread_words(groups, prompt))


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


def square_box(box: Sequence[float], canvas: int, box_sides: tuple[float, float], grid: int | None = None
               ) -> list[float]:
    """``[x, y, w, h]`` made a square at the same centre: side ``min(w, h)`` kept within ``box_sides`` (fractions
    of ``canvas``), inside the canvas; with ``grid`` (pixels per canvas side) side and corners on whole pixels."""
    x, y, w, h = box
    lo, hi = box_sides[0] * canvas, box_sides[1] * canvas
    side = min(max(min(w, h), lo), hi)
    if grid:
        unit = canvas / grid
        n_lo, n_hi = math.ceil(box_sides[0] * grid - 1e-9), max(math.floor(box_sides[1] * grid + 1e-9), 1)
        side = min(max(round(side / unit), n_lo), n_hi) * unit
    x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
    if grid:
        x0, y0 = round(x0 / unit) * unit, round(y0 / unit) * unit
    return [min(max(x0, 0.0), canvas - side), min(max(y0, 0.0), canvas - side), side, side]


def place_groups(groups: tuple[ObjectGroup, ...] | list[ObjectGroup], canvas: int = CANVAS_SIZE,
                 box_sides: tuple[float, float] | None = None, grid: int | None = None
                 ) -> list[tuple[str, list[int]]]:
    """Boxes for object groups: rows by top/bottom, cells in a row by left/right, a grid of instances per cell.

    Groups asking for more than :data:`MAX_BOXES` instances in all are capped first (:func:`cap_counts`, with a
    :class:`LayoutWarning`), so a huge count never reaches the placement loops.

    ``box_sides`` (``(min, max)`` fractions of the canvas; ``None``: boxes as placed, for Stable Diffusion): every
    box becomes a square of side ``min(w, h)`` kept in that range, at the same centre (:func:`square_box`), with
    ``grid`` snapped to whole pixels of a ``grid``-pixel image.  For models that only draw objects of those sizes
    (the toy world).  Squares no larger than the box never overlap; a side raised to the minimum may.
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
                if box_sides is not None:
                    box = square_box(box, canvas, box_sides, grid)
                objects.append((g.caption, [round(v) for v in box]))
    return objects


# ------------------------------------------------------------------------------------------------------------
# The source
# ------------------------------------------------------------------------------------------------------------
def plan_layout(prompt: str, limits: ModelLimits | None = None) -> Layout:
    """The planner's layout for ``prompt``; ``meta["source"] == "offline planner"``.

    ``limits``: what the diffusion model can draw and read (:class:`ModelLimits`; ``None``: Stable Diffusion, boxes
    as placed).  Words the planner did not understand, or (with ``limits.vocabulary``) the model does not know,
    give one :class:`LayoutWarning`, also in ``meta["warnings"]``.
    """
    parsed = parse_prompt(prompt)
    meta: dict = {"source": SOURCE_NAME}
    notes = list(parsed.notes)
    outside = words_outside(prompt, limits.vocabulary) if limits is not None and limits.vocabulary is not None else ()
    note = unread_note(prompt, parsed.unread, outside, limits)
    if note:
        warnings.warn(note, LayoutWarning, stacklevel=2)
        notes.append(note)
    if notes:
        meta["warnings"] = notes
    box_sides, grid = (limits.box_sides, limits.grid) if limits is not None else (None, None)
    if callable(box_sides):
        box_sides = _check_sides(box_sides(sum(g.count for g in parsed.groups)))
    layout = Layout.from_xywh_objects(
        place_groups(parsed.groups, box_sides=box_sides, grid=grid), parsed.background, parsed.negative,
        prompt=prompt, meta=meta,
    )
    if limits is not None and limits.background is not None:
        layout = replace(layout, background=limits.background)
    return layout


class OfflinePlanner:
    """:func:`plan_layout` as a layout source (``get_layout(prompt, sample)``; deterministic, so ``sample``
    is ignored); ``limits`` as :func:`plan_layout`'s."""

    name = SOURCE_NAME

    def __init__(self, limits: ModelLimits | None = None) -> None:
        self.limits = limits

    def __repr__(self) -> str:
        return "OfflinePlanner()" if self.limits is None else f"OfflinePlanner({self.limits.name!r})"

    def get_layout(self, prompt: str, sample: int | None = None) -> Layout:
        return plan_layout(prompt, self.limits)


__all__ = ["OfflinePlanner", "plan_layout", "parse_prompt", "place_groups", "square_box", "cap_counts", "ObjectGroup",
           "ParsedPrompt", "ModelLimits", "unread_words", "words_outside", "unread_note", "SOURCE_NAME",
           "BARE_PLURAL_COUNT", "HUGE_COUNT", "MAX_PROMPT_CHARS"]
