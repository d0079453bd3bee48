"""Stage 1 of LMD: an LLM turns a prompt into a layout (paper §3.1; multi-round dialog and other languages: §3,
"instruction-based scene specification").  This module is what notebook 06 teaches; the plumbing that talks to a
real LLM (the OpenAI-compatible client, retries, the reply cache) is in :mod:`lmd_utils.llm_client`.

Four pieces, each usable alone:

* **Template** (:func:`load_template`, :class:`LayoutTemplate`): the versioned text file
  ``data/templates/layout_template_v1.txt`` holds the task, the canvas/box conventions, the paper's two rules
  (one box per object instance; every foreground object in the layout) and in-context examples.  We send the
  examples as *chat turns* (user caption → assistant layout) after the system message, rather than inline in one
  long user message as the authors do: the same dialogue shape then carries on naturally into multi-round
  editing (:class:`LayoutSession`).
* **Parser** (:func:`parse_layout_reply`, :func:`reply_to_layout`): a small hand-written reader for the
  Python/JSON literal subset LLMs write (never ``eval``).  It tolerates code fences, prose around the answer, an
  ``Objects:`` prefix, JSON lists, ``{"name": ..., "bounding_box": ...}`` dicts, a missing/"None" negative
  prompt and trailing commentary; anything else raises :class:`LayoutParseError`.  It reads a reply in time
  linear in its length (no regex that backtracks, no repeated slicing) and refuses replies longer than
  :data:`MAX_REPLY_CHARS`, so a runaway or hostile reply costs milliseconds, not minutes.
* **Sources** of layouts, all with ``get_layout(prompt, sample=None) -> Layout`` (:class:`LayoutSource`):
  :class:`ReplyFileSource` (read-only replies in the authors' ``{prompt: [reply, ...]}`` format),
  :class:`ScriptedLayoutSource` (replies written in advance, an offline stand-in for an LLM), a live LLM
  (:class:`lmd_utils.llm_client.LLMLayoutSource`) and the offline planner (:mod:`lmd_utils.planner`).  As in the
  authors' code, the k-th request for a prompt gets the k-th reply, so multi-sample runs are reproducible.
* **Dialog** (:class:`LayoutSession`): keeps the message history and the current layout, so that
  ``session.ask("make the dog bigger")`` returns an edited layout.

It is one module of about 600 lines because these four pieces are one lesson: the template says what shape a reply
has, the parser reads that shape, and the sources and the dialog hand replies to the parser.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from .data import DATA_DIR
from .layout import Layout, quote, shorten

TEMPLATE_VERSION = "v1"
TEMPLATES_DIR = DATA_DIR / "templates"
CAPTION_PREFIX = "Caption: "
FOLLOW_UP_PREFIX = "Follow-up instruction: "

# =============================================================================================================
# Template
# =============================================================================================================
@dataclass(frozen=True)
class LayoutTemplate:
    """The prompt template: a system message and in-context examples as (user, assistant) chat turns."""

    version: str
    system: str
    examples: tuple[tuple[str, str], ...]

    def messages(self, prompt: str | None = None, history: Sequence[dict[str, str]] = ()) -> list[dict[str, str]]:
        """Chat messages for one request: system, the examples as turns, ``history``, then ``Caption: prompt``."""
        msgs = [{"role": "system", "content": self.system}]
        for user, assistant in self.examples:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        msgs += [dict(m) for m in history]
        if prompt is not None:
            msgs.append(caption_turn(prompt))
        return msgs

    def render(self, prompt: str | None = None) -> str:
        """The whole conversation as readable text (what notebook 06 prints)."""
        blocks = [f"--- {m['role']} ---\n{m['content']}" for m in self.messages(prompt)]
        return f"LMD layout template {self.version}\n\n" + "\n\n".join(blocks)


_SECTION_RE = re.compile(r"^\[(system|user|assistant)\]\s*$", re.M)


def load_template(version: str = TEMPLATE_VERSION, path: str | Path | None = None) -> LayoutTemplate:
    """Read ``data/templates/layout_template_<version>.txt`` (or ``path``) into a :class:`LayoutTemplate`."""
    path = Path(path) if path is not None else TEMPLATES_DIR / f"layout_template_{version}.txt"
    text = path.read_text(encoding="utf-8")
    parts = _SECTION_RE.split(text)  # [header, name, body, name, body, ...]
    sections = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if not sections or sections[0][0] != "system":
        raise ValueError(f"{path}: the template must start with a [system] section")
    turns = sections[1:]
    if len(turns) % 2 or any(
        (name, other) != ("user", "assistant") for (name, _), (other, _) in zip(turns[::2], turns[1::2])
    ):
        raise ValueError(f"{path}: after [system], sections must alternate [user] / [assistant]")
    examples = tuple((u, a) for (_, u), (_, a) in zip(turns[::2], turns[1::2]))
    for _, reply in examples:  # the examples must be readable by our own parser
        parse_layout_reply(reply)
    return LayoutTemplate(version=version, system=sections[0][1], examples=examples)


def show_template(prompt: str | None = None, version: str = TEMPLATE_VERSION) -> str:
    """The template as text, optionally with a request for ``prompt`` at the end."""
    return load_template(version).render(prompt)


def caption_turn(prompt: str) -> dict[str, str]:
    """The user turn that asks for a layout of ``prompt``."""
    return {"role": "user", "content": CAPTION_PREFIX + prompt.strip()}


def follow_up_turn(instruction: str) -> dict[str, str]:
    """The user turn that asks to edit the previous layout (multi-round dialog)."""
    return {"role": "user", "content": FOLLOW_UP_PREFIX + instruction.strip()}


def format_layout_reply(
    objects: Iterable[tuple[str, Sequence[float]]], background: str | None = None, negative: str | None = None
) -> str:
    """Write a layout in the template's reply format (the inverse of :func:`parse_layout_reply`)."""

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    items = ", ".join(f"({str(name)!r}, [{', '.join(num(v) for v in xywh)}])" for name, xywh in objects)
    lines = [f"Objects: [{items}]", f"Background prompt: {background or ''}", f"Negative prompt: {negative or ''}"]
    return "\n".join(line.rstrip() for line in lines)


def layout_to_reply(layout: Layout) -> str:
    """A :class:`Layout` in the template's reply format (pixels of the 512×512 canvas)."""
    return format_layout_reply(layout.to_xywh_objects(), layout.background, layout.negative)


# =============================================================================================================
# Parser
# =============================================================================================================
class LayoutParseError(ValueError):
    """An LLM reply that does not contain a readable layout; the message quotes the offending text."""


@dataclass
class ParsedReply:
    """What an LLM reply says: raw ``(caption, [x, y, w, h])`` objects (pixels, unclipped), prompts, the text."""

    objects: list[tuple[str, list[float]]]
    background: str | None
    negative: str
    text: str = field(default="", repr=False)

    def to_layout(self, prompt: str = "", meta: dict[str, Any] | None = None) -> Layout:
        """Validate into a :class:`Layout` (drops/clips boxes as the authors do); keeps the raw reply in meta."""
        meta = {"reply": self.text, "objects": [[n, list(b)] for n, b in self.objects], **(meta or {})}
        return Layout.from_xywh_objects(self.objects, self.background, self.negative, prompt=prompt, meta=meta)


#: Longest reply the parser reads.  A layout of :data:`~lmd_utils.layout.MAX_BOXES` boxes with prose around it
#: takes under 2,000 characters; the limit leaves room for chatty LLMs and bounds the parser's work.
MAX_REPLY_CHARS = 20_000
_MAX_DEPTH = 16
_MAX_CANDIDATES = 64
#: The '['/'{' tried as the start of the list may read, together, this many times the reply's length: a bound on
#: the work when every candidate reads to the end of the reply (brackets inside a long unterminated string).
_READ_BUDGET = 4
_LABEL = r"^[ \t>*_#-]*{}[ \t*_]*:[ \t*_]*"
_OBJECTS_RE = re.compile(_LABEL.format(r"objects?"), re.I | re.M)
_BACKGROUND_RE = re.compile(_LABEL.format(r"background(?:[ _]prompt)?") + r"(?P<value>[^\n]*)", re.I | re.M)
_NEGATIVE_RE = re.compile(_LABEL.format(r"negative(?:[ _]prompt)?") + r"(?P<value>[^\n]*)", re.I | re.M)
#: One way only to read each number (``\d+\.?\d*`` had many ways to split a digit run, and ``fullmatch`` on
#: 16,000 digits followed by a letter tried them all, quadratic: 9 to 12 s).
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WORD_RE = re.compile(r"[A-Za-z_]\w*")
_BLANKS_RE = re.compile(r"\s*")
_OPENER_RE = re.compile(r"[\[{]")
#: Where a string's scan stops: its quote or a backslash (everything between is copied in one slice).
_STRING_STOP_RE = {"'": re.compile(r"['\\]"), '"': re.compile(r'["\\]')}
_EMPTY_WORDS = {"", "none", "n/a", "na", "null", "nothing", "no", "-", "empty"}
_NAME_KEYS = ("name", "caption", "object", "label", "phrase", "description")
_BOX_KEYS = ("bounding_box", "boundingbox", "box", "bbox", "xywh", "coordinates")


class _Syntax(Exception):
    """Internal: the literal reader failed at ``pos``."""

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos


class _LiteralReader:
    """Reads one Python/JSON literal (lists, tuples, dicts, strings, numbers, None/null/true/false).

    A quote closes a string only when the next non-blank character ends the item (``, ) ] } :``) or the text
    ends, so captions such as ``'a man's hat'`` survive.  Nesting is limited to keep errors cheap.
    ``reach`` is the farthest position looked at: one read costs time proportional to ``reach - start``.
    """

    _CLOSERS = {"[": "]", "(": ")", "{": "}"}

    def __init__(self, text: str) -> None:
        self.text = text
        self.reach = 0

    def _seen(self, pos: int) -> int:
        self.reach = max(self.reach, pos)
        return pos

    def skip_blanks(self, pos: int) -> int:
        return self._seen(_BLANKS_RE.match(self.text, pos).end())

    def read(self, pos: int, depth: int = 0) -> tuple[Any, int]:
        """The value starting at ``pos`` (after blanks) and the position just after it."""
        if depth > _MAX_DEPTH:
            raise _Syntax(pos, f"nested deeper than {_MAX_DEPTH} levels")
        pos = self.skip_blanks(pos)
        if pos >= len(self.text):
            raise _Syntax(pos, "the text ends where a value should start")
        c = self.text[pos]
        if c in "[(":
            return self._read_sequence(pos, depth)
        if c == "{":
            return self._read_dict(pos, depth)
        if c in "'\"":
            return self._read_string(pos)
        m = _NUMBER_RE.match(self.text, pos)
        if m:
            return float(m.group()), self._seen(m.end())
        m = _WORD_RE.match(self.text, pos)
        if m:
            self._seen(m.end())
        if m and m.group().lower() in ("none", "null"):
            return None, m.end()
        if m and m.group().lower() in ("true", "false"):
            return m.group().lower() == "true", m.end()
        raise _Syntax(pos, f"unexpected {quote(self.text[pos:pos + 12])}")

    def _read_sequence(self, pos: int, depth: int) -> tuple[Any, int]:
        opener = self.text[pos]
        closer = self._CLOSERS[opener]
        items: list[Any] = []
        pos = self.skip_blanks(pos + 1)
        while True:
            if pos < len(self.text) and self.text[pos] == closer:
                return (items if opener == "[" else tuple(items)), pos + 1
            value, pos = self.read(pos, depth + 1)
            items.append(value)
            pos = self.skip_blanks(pos)
            if pos < len(self.text) and self.text[pos] == ",":
                pos = self.skip_blanks(pos + 1)
            elif pos >= len(self.text) or self.text[pos] != closer:
                raise _Syntax(pos, f"expected ',' or {closer!r}")

    def _read_dict(self, pos: int, depth: int) -> tuple[dict[str, Any], int]:
        items: dict[str, Any] = {}
        pos = self.skip_blanks(pos + 1)
        while True:
            if pos < len(self.text) and self.text[pos] == "}":
                return items, pos + 1
            m = _WORD_RE.match(self.text, pos)
            if m:  # a bare key, as in JavaScript
                key, pos = m.group(), self._seen(m.end())
            else:
                key, pos = self.read(pos, depth + 1)
                if not isinstance(key, str):
                    raise _Syntax(pos, "a dictionary key must be a string")
            pos = self.skip_blanks(pos)
            if pos >= len(self.text) or self.text[pos] != ":":
                raise _Syntax(pos, "expected ':' after a dictionary key")
            items[key], pos = self.read(pos + 1, depth + 1)
            pos = self.skip_blanks(pos)
            if pos < len(self.text) and self.text[pos] == ",":
                pos = self.skip_blanks(pos + 1)
            elif pos >= len(self.text) or self.text[pos] != "}":
                raise _Syntax(pos, "expected ',' or '}'")

    def _read_string(self, pos: int) -> tuple[str, int]:
        """Jumps from one quote or backslash to the next (a regex search), copying the text between in one
        slice: linear in the string's length, even for ``'a' 'b' 'c' ...`` or a run of backslashes."""
        quote_char, start = self.text[pos], pos
        stop = _STRING_STOP_RE[quote_char]
        out: list[str] = []
        pos += 1
        while True:
            m = stop.search(self.text, pos)
            if m is None:
                self._seen(len(self.text))
                raise _Syntax(start, "unterminated string")
            out.append(self.text[pos:m.start()])
            pos = self._seen(m.start())
            if self.text[pos] == "\\":
                if pos + 1 >= len(self.text):  # a lone backslash at the very end
                    out.append("\\")
                    pos += 1
                    continue
                char, pos = self._escape(pos + 1)
                out.append(char)
                continue
            after = self.skip_blanks(pos + 1)
            if after >= len(self.text) or self.text[after] in ",)]}:":
                return "".join(out), pos + 1
            out.append(quote_char)
            pos += 1

    def _escape(self, pos: int) -> tuple[str, int]:
        """The character of the escape whose letter is at ``pos`` (Python/JSON escapes); unknown ones stay."""
        c = self.text[pos]
        simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0"}
        if c in simple:
            return simple[c], pos + 1
        width = {"x": 2, "u": 4, "U": 8}.get(c)
        digits = self.text[pos + 1:pos + 1 + width] if width else ""
        if width and len(digits) == width and all(d in "0123456789abcdefABCDEF" for d in digits):
            code, pos = int(digits, 16), pos + 1 + width
            if 0xD800 <= code < 0xDC00 and re.match(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}", self.text[pos:pos + 6]):
                low = int(self.text[pos + 2:pos + 6], 16)  # a JSON surrogate pair: one character
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), pos + 6
            if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                return "\ufffd", pos  # a lone surrogate cannot be written out as UTF-8
            return chr(code), pos
        return c, pos + 1


def _excerpt(text: str, pos: int = 0, width: int = 60) -> str:
    """A short quote of ``text`` around ``pos`` for error messages (at most ``width + 2`` characters)."""
    lo = max(pos - width // 2, 0)
    snippet = shorten(repr(text[lo:lo + width])[1:-1], width)  # repr may lengthen it (\x00 → 4 characters)
    return ("…" if lo else "") + snippet + ("…" if lo + width < len(text) else "")


def _as_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{quote(value)} is not a number")
    if isinstance(value, str) and not _NUMBER_RE.fullmatch(value.strip()):
        raise ValueError(f"{quote(value)} is not a number")
    return float(value)


def _as_box(value: Any) -> list[float]:
    if isinstance(value, dict):  # {"x": .., "y": .., "w"/"width": .., "h"/"height": ..}
        keys = {k.lower(): v for k, v in value.items()}
        try:
            value = [keys["x"], keys["y"], keys.get("w", keys.get("width")), keys.get("h", keys.get("height"))]
        except KeyError as e:
            raise ValueError(f"box {quote(value)} lacks {e}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"box {quote(value)} is not [x, y, w, h]")
    return [_as_number(v) for v in value]


def _as_object(item: Any) -> tuple[str, list[float]]:
    """One ``(caption, [x, y, w, h])`` from a tuple/list, a 5-tuple or a dict."""
    if isinstance(item, dict):
        keys = {re.sub(r"[\s-]", "_", k.lower()): v for k, v in item.items()}
        name = next((keys[k] for k in _NAME_KEYS if k in keys), None)
        box = next((keys[k] for k in _BOX_KEYS if k in keys), None)
        if not isinstance(name, str) or box is None:
            raise ValueError(f"object {quote(item)} needs a name and a bounding_box")
        return name, _as_box(box)
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
        return item[0], _as_box(item[1])
    if isinstance(item, (list, tuple)) and len(item) == 5 and isinstance(item[0], str):
        return item[0], _as_box(item[1:])
    raise ValueError(f"{quote(item)} is not ('caption', [x, y, w, h])")


def _as_objects(value: Any) -> tuple[list[tuple[str, list[float]]], dict[str, Any]]:
    """Objects from a list of items, or from a JSON-style ``{"objects": [...], ...}`` answer (with its extras)."""
    extras: dict[str, Any] = {}
    if isinstance(value, dict):
        keys = {re.sub(r"[^a-z]", "", k.lower()): v for k, v in value.items()}
        if "objects" not in keys:
            raise ValueError("a dictionary without an 'objects' entry")
        extras = {k: keys[k] for k in ("backgroundprompt", "background", "negativeprompt", "negative") if k in keys}
        value = keys["objects"]
    if not isinstance(value, list):
        raise ValueError(f"{type(value).__name__} is not a list of objects")
    return [_as_object(item) for item in value], extras


def _clean_prompt(value: Any) -> str:
    text = str(value).strip().strip("`'\"*_ ").strip()
    return text


def _is_empty_prompt(text: str) -> bool:
    return text.strip().rstrip(".").strip().lower() in _EMPTY_WORDS


def parse_layout_reply(text: str) -> ParsedReply:
    """Read an LLM reply: ``Objects: [('a red car', [x, y, w, h]), ...]`` / ``Background prompt: ...`` /
    ``Negative prompt: ...`` (the template's format and the authors' published replies, paper §3.1).

    Boxes are returned raw (pixels, not clipped or dropped); :meth:`ParsedReply.to_layout` validates them.
    A missing background gives ``None``; a missing or "None" negative prompt gives ``""``.
    Raises :class:`LayoutParseError` (quoting the text) when no list of objects can be read.
    """
    if not isinstance(text, str):
        raise TypeError(f"an LLM reply must be a string, not {type(text).__name__}")
    if len(text) > MAX_REPLY_CHARS:
        raise LayoutParseError(f"reply too long to be a layout: {len(text)} characters, the limit is "
                               f"MAX_REPLY_CHARS = {MAX_REPLY_CHARS}; it starts: {_excerpt(text)}")

    # The list starts after an "Objects:" label if there is one; prose may hold other brackets, so try each
    # '[' / '{' in turn and take the first that reads as a list of objects.  The tries share a budget of
    # characters read, so that the parse stays linear in the reply's length.
    label = _OBJECTS_RE.search(text)
    start = label.end() if label else 0
    reader = _LiteralReader(text)
    first_problem: tuple[int, str] | None = None
    found: tuple[list[tuple[str, list[float]]], dict[str, Any]] | None = None
    budget, spent = _READ_BUDGET * len(text), 0
    for m in itertools.islice(_OPENER_RE.finditer(text, start), _MAX_CANDIDATES):
        pos = m.start()
        if spent > budget:
            first_problem = first_problem or (pos, "gave up: the tries read the reply over and over")
            break
        reader.reach = pos
        try:
            value, _ = reader.read(pos)
        except _Syntax as e:
            first_problem = first_problem or (e.pos, f"cannot read a literal: {e}")
            continue
        finally:
            spent += reader.reach - pos + 1
        try:
            found = _as_objects(value)
            break
        except ValueError as e:
            first_problem = first_problem or (pos, str(e))
    if found is None:
        where, why = first_problem or (start, "no '[' starts a list of objects")
        raise LayoutParseError(f"no layout in the reply ({why}) near: {_excerpt(text, where)}")
    objects, extras = found

    bg_match, neg_match = _BACKGROUND_RE.search(text), _NEGATIVE_RE.search(text)
    background: str | None = _clean_prompt(bg_match["value"]) if bg_match else None
    negative = _clean_prompt(neg_match["value"]) if neg_match else ""
    if background is None:
        bg = extras.get("backgroundprompt", extras.get("background"))
        background = _clean_prompt(bg) if isinstance(bg, str) else None
    if not neg_match:
        neg = extras.get("negativeprompt", extras.get("negative"))
        negative = _clean_prompt(neg) if isinstance(neg, str) else ""
    if background is not None and _is_empty_prompt(background):
        background = None
    if _is_empty_prompt(negative):
        negative = ""
    return ParsedReply(objects=[(n.strip(), b) for n, b in objects], background=background, negative=negative,
                       text=text)


def reply_to_layout(text: str, prompt: str = "", meta: dict[str, Any] | None = None) -> Layout:
    """Parse a reply and validate it into a :class:`Layout` (``meta`` keeps the raw reply and raw objects)."""
    return parse_layout_reply(text).to_layout(prompt=prompt, meta=meta)


def scoring_objects(layout: Layout) -> list[tuple[str, list[float]]]:
    """The ``(caption, [x, y, w, h])`` pixels a stage-1 evaluation should score: the LLM's raw boxes when the
    layout came from a reply (before clipping), else the layout's own boxes."""
    raw = layout.meta.get("objects")
    if raw is not None:
        return [(str(n), [float(v) for v in b]) for n, b in raw]
    return [(n, [float(v) for v in b]) for n, b in layout.to_xywh_objects()]


# =============================================================================================================
# Sources of layouts
# =============================================================================================================
@runtime_checkable
class LayoutSource(Protocol):
    """Anything that turns a prompt into a layout.  ``sample=k`` asks for the k-th sample of that prompt;
    ``None`` means "the next one" (the k-th request for a prompt gets the k-th reply)."""

    name: str

    def get_layout(self, prompt: str, sample: int | None = None) -> Layout: ...


class MissingReplyError(LookupError):
    """A reply file has no (or not enough) replies for a prompt."""


class SampleCounter:
    """Counts requests per key so that the k-th request gets sample k."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def next(self, key: str, sample: int | None) -> int:
        if sample is None:
            sample = self._counts[key]
            self._counts[key] += 1
        if sample < 0:
            raise ValueError(f"sample must be >= 0, got {sample}")
        return sample

    def reset(self) -> None:
        self._counts.clear()


class ReplyFileSource:
    """Read-only replies in the authors' format ``{prompt: [reply, ...]}`` (e.g. their published GPT-3.5 file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"reply file {self.path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(r, str) for r in v) for v in data.values()
        ):
            raise ValueError(f"reply file {self.path} must map each prompt to a list of reply strings")
        self.replies: dict[str, list[str]] = data
        self.name = f"reply file {self.path.name}"
        self._counter = SampleCounter()

    def __repr__(self) -> str:
        return f"ReplyFileSource({str(self.path)!r}, prompts={len(self.replies)})"

    def reply(self, prompt: str, sample: int | None = None) -> str:
        """The ``sample``-th stored reply for ``prompt`` (the next one when ``sample`` is None)."""
        k = self._counter.next(prompt, sample)
        replies = self.replies.get(prompt)
        if replies is None:
            raise MissingReplyError(f"{self.name} has no reply for {quote(prompt)}")
        if k >= len(replies):
            raise MissingReplyError(f"{self.name} has {len(replies)} replies for {quote(prompt)}; sample {k} asked")
        return replies[k]

    def get_layout(self, prompt: str, sample: int | None = None) -> Layout:
        k = self._counter.next(prompt, sample)
        return reply_to_layout(self.reply(prompt, k), prompt=prompt,
                               meta={"source": self.name, "sample": k})

    def reset(self) -> None:
        """Start counting requests from zero again."""
        self._counter.reset()


def first_caption(history: Sequence[dict[str, str]]) -> str:
    for m in history:
        if m.get("role") == "user" and m["content"].startswith(CAPTION_PREFIX):
            return m["content"][len(CAPTION_PREFIX):]
    return ""


class ScriptedLayoutSource:
    """Replies written in advance, handed out in order and read by the real parser: an offline stand-in for an
    LLM in demos and dialogs (notebook 06 uses it when no LLM is configured).

    Not in the paper.  It has ``continue_dialog`` like :class:`~lmd_utils.llm_client.LLMLayoutSource`, so a
    :class:`LayoutSession` can run several rounds (paper §3, instruction-based scene specification) without any
    LLM.  The chat messages an LLM would have been sent for each request (template + history) are kept in
    :attr:`requests`.  Unlike the other sources, the k-th *call* gets the k-th reply whatever the prompt
    (``sample`` is ignored); a reply that does not parse raises :class:`LayoutParseError` and is used up all the
    same, as an LLM's answer would be.
    """

    def __init__(
        self, replies: Sequence[str], name: str = "scripted replies", template: LayoutTemplate | None = None
    ) -> None:
        if isinstance(replies, str) or not all(isinstance(r, str) for r in replies):
            raise TypeError("replies must be a list of reply strings (one per request)")
        self.replies = list(replies)
        self.name = name
        self.template = template or load_template()
        self.requests: list[list[dict[str, str]]] = []

    def __repr__(self) -> str:
        return f"ScriptedLayoutSource({len(self.replies)} replies, {len(self.requests)} used, name={self.name!r})"

    @property
    def remaining(self) -> int:
        """How many replies are left."""
        return len(self.replies) - len(self.requests)

    def get_layout(self, prompt: str, sample: int | None = None) -> Layout:
        """The next reply, as the layout of ``prompt`` (one user turn after the template)."""
        return self.continue_dialog([caption_turn(prompt)], prompt=prompt.strip())

    def continue_dialog(
        self, history: Sequence[dict[str, str]], sample: int | None = None, prompt: str = ""
    ) -> Layout:
        """The next reply, as the answer to a dialog ``history`` (user/assistant turns, ending with a user turn)."""
        if not history or history[-1].get("role") != "user":
            raise ValueError("a dialog history must end with a user turn")
        k = len(self.requests)
        if k >= len(self.replies):
            raise MissingReplyError(f"{self.name}: all {len(self.replies)} scripted replies are used up")
        self.requests.append(self.template.messages(history=history))
        return reply_to_layout(self.replies[k], prompt=prompt or first_caption(history),
                               meta={"source": self.name, "sample": k})


# -------------------------------------------------------------------------------------------------------------
# Multi-round dialog
# -------------------------------------------------------------------------------------------------------------
class LayoutSession:
    """Instruction-based scene specification (paper §3): a dialog that edits one layout over rounds.

    The first :meth:`ask` is a caption; later ones are follow-up instructions ("make the dog bigger and put a cat
    on its left") sent with the whole history, so the LLM rewrites its previous layout.  The first round works
    with any :class:`LayoutSource`; later rounds need a source with ``continue_dialog`` (an LLM).
    ``seed`` is kept so that stage 2 can regenerate every round with the same initial noise.
    """

    def __init__(self, source: LayoutSource, seed: int = 0) -> None:
        self.source = source
        self.seed = seed
        self.history: list[dict[str, str]] = []
        self.layouts: list[Layout] = []

    @property
    def layout(self) -> Layout | None:
        """The current layout (``None`` before the first round)."""
        return self.layouts[-1] if self.layouts else None

    def ask(self, text: str) -> Layout:
        """One round: a caption first, then follow-up instructions; returns the new current layout."""
        if not self.history:
            turn = caption_turn(text)
            if hasattr(self.source, "continue_dialog"):
                layout = self.source.continue_dialog([turn], prompt=text.strip())
            else:
                layout = self.source.get_layout(text.strip())
        else:
            if not hasattr(self.source, "continue_dialog"):
                raise TypeError(f"{self.source.name} cannot follow instructions; use an LLM source for dialogs")
            turn = follow_up_turn(text)
            layout = self.source.continue_dialog(self.history + [turn], prompt=self.layouts[0].prompt)
        reply = layout.meta.get("reply") or layout_to_reply(layout)
        self.history += [turn, {"role": "assistant", "content": reply}]
        layout.meta["round"] = len(self.layouts)
        self.layouts.append(layout)
        return layout

__all__ = [
    "TEMPLATE_VERSION", "LayoutTemplate", "load_template", "show_template", "caption_turn", "follow_up_turn",
    "format_layout_reply", "layout_to_reply", "LayoutParseError", "MAX_REPLY_CHARS", "ParsedReply",
    "parse_layout_reply", "reply_to_layout", "scoring_objects", "LayoutSource", "MissingReplyError", "ReplyFileSource",
    "ScriptedLayoutSource", "LayoutSession",
]
