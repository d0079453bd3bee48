"""Layouts: the interface between LMD's two stages.

Stage 1 (an LLM, or the offline planner) writes a layout; stage 2 (layout-grounded diffusion) reads it.
A :class:`Layout` holds one :class:`Box` per object instance (paper §3.1: "one box per object instance"),
a background prompt and a negative prompt.

Coordinates
-----------
Boxes are stored *normalised* (``0 <= x0 < x1 <= 1``, top-left origin, y down), so the same layout serves
the 512×512 LLM canvas, a 64×64 latent, a 16×16 attention map or a 32×32 toy image.  The LLM speaks
``[x, y, w, h]`` in pixels of a 512×512 canvas; :meth:`Box.from_xywh` / :meth:`Box.to_xywh` convert.

Validation (:func:`Layout.from_xywh_objects`) follows the authors' rules: zero-area boxes are dropped,
"background" boxes that cover the whole canvas or start outside it are dropped, boxes that stick out of the
canvas are clipped (with a warning), and at most ``max_boxes`` boxes are kept.  We also drop boxes too small to
represent and captions without a word (stage 2 needs a word to attend to).  Hand-built layouts skip those
repairs; :meth:`Layout.validate` checks them with the same rules and raises :class:`LayoutError`.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch

from .sam import as_uint8_image

#: How a box's edges land on a grid: ``"edges"`` (ours, both edges rounded) or ``"authors"`` (start and width).
BoxRounding = Literal["edges", "authors"]

CANVAS_SIZE = 512
DEFAULT_BACKGROUND = "A realistic scene"
#: Most boxes we generate for one image; the authors' prompts rarely exceed 5, per-box cost grows linearly.
MAX_BOXES = 8
#: Most repair notes (warnings) one layout reports; past it, one note counts the rest.
_MAX_NOTES = 12


class LayoutWarning(UserWarning):
    """A layout was repaired (a box clipped or dropped); the message says which and why."""


class LayoutError(ValueError):
    """A layout that stage 2 cannot run (a box outside the canvas, a caption without a word, too many boxes,
    a prompt longer than the text encoder reads, ...); the message says which and why."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to at most ``limit`` characters, ending with "…" when cut.

    Error messages and warnings quote user text (prompts, captions, LLM replies) through this, so a 100 KB
    prompt gives a one-line message, not a 100 KB one.
    """
    text = str(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def single_line(text: Any, limit: int = 80) -> str:
    """``text`` with its whitespace runs (newlines included) made single spaces, then :func:`shorten`: how an
    exception's message is quoted inside another one-line message."""
    return shorten(" ".join(str(text).split()), limit)


def quote(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened: how messages quote a caption or a value (``'a cat'``)."""
    return shorten(repr(value), limit)


def has_word(phrase: str) -> bool:
    """Whether a caption holds a word: any Unicode letter or digit ("a cat", "un chien", "猫", "R2D2").

    Stage 2 attends to the caption's tokens; a caption of blanks or punctuation ("...", "!!!") gives it none.
    """
    return any(ch.isalnum() for ch in phrase)


@dataclass(frozen=True)
class Box:
    """One object instance: a caption and a normalised box ``(x0, y0, x1, y1)``, top-left origin."""

    phrase: str
    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        """Reject what no code can draw: a non-str caption, a non-finite corner, no area (:class:`LayoutError`).

        Corners outside ``[0, 1]`` are allowed here (code moves boxes around); :meth:`Layout.validate` checks them.
        """
        if not isinstance(self.phrase, str):
            raise LayoutError(f"a box caption must be a str, not {type(self.phrase).__name__}: {quote(self.phrase)}")
        name = f"box {quote(self.phrase)}"
        try:
            if any(isinstance(v, (str, bytes)) for v in self.bbox):  # float("1") works, "1" > 0 does not
                raise TypeError
            finite = all(math.isfinite(float(v)) for v in self.bbox)
        except (TypeError, ValueError, OverflowError):
            raise LayoutError(f"{name}: coordinates must be numbers, not {quote(self.bbox)}") from None
        if not finite:
            raise LayoutError(f"{name}: non-finite coordinates {quote(self.bbox)}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise LayoutError(f"{name} has no area: {quote(self.bbox)}")

    # -- conversions --------------------------------------------------------------------------
    @classmethod
    def from_xywh(cls, phrase: str, xywh: Sequence[float], canvas: float = CANVAS_SIZE) -> "Box":
        """From the LLM's ``[x, y, w, h]`` in pixels of a ``canvas``×``canvas`` image (no clipping)."""
        x, y, w, h = (float(v) for v in xywh)
        return cls(phrase, x / canvas, y / canvas, (x + w) / canvas, (y + h) / canvas)

    def to_xywh(self, canvas: float = CANVAS_SIZE) -> list[int]:
        """Back to ``[x, y, w, h]`` in whole pixels of a ``canvas``×``canvas`` image."""
        x, y = round(self.x0 * canvas), round(self.y0 * canvas)
        return [x, y, round(self.x1 * canvas) - x, round(self.y1 * canvas) - y]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def moved_to(self, x0: float, y0: float) -> "Box":
        """The same-size box with its top-left corner at ``(x0, y0)``."""
        return Box(self.phrase, x0, y0, x0 + self.width, y0 + self.height)

    def pixel_slices(self, height: int, width: int, rounding: BoxRounding = "edges") -> tuple[slice, slice]:
        """Row and column slices of this box on a ``height``×``width`` grid.

        ``rounding="edges"`` (ours): both edges are rounded to the nearest grid line, so a box keeps its size when
        the grid is coarse; a box thinner than one cell still covers the cell holding its centre.
        ``rounding="authors"``: the start and the WIDTH are rounded separately, cells
        ``round(x0·W) .. round(x0·W) + round((x1−x0)·W)`` (authors' ``utils/utils.py`` ``scale_proportion``), which
        can be one cell off ours at either end, and is empty for a box thinner than half a cell.
        """
        if rounding == "edges":
            r0, r1 = _grid_span(self.y0, self.y1, height)
            c0, c1 = _grid_span(self.x0, self.x1, width)
        elif rounding == "authors":
            r0, r1 = _authors_span(self.y0, self.y1, height)
            c0, c1 = _authors_span(self.x0, self.x1, width)
        else:
            raise ValueError(f"rounding must be 'edges' or 'authors', not {quote(rounding)}")
        return slice(r0, r1), slice(c0, c1)

    def mask(self, height: int, width: int, dtype: torch.dtype = torch.float32,
             rounding: BoxRounding = "edges") -> torch.Tensor:
        """A ``height``×``width`` tensor: 1 inside the box, 0 outside (the ``b`` of the paper's energy).

        ``rounding``: how the box's edges land on the grid, see :meth:`pixel_slices` (``LMDConfig.box_rounding``).
        """
        m = torch.zeros(height, width, dtype=dtype)
        rows, cols = self.pixel_slices(height, width, rounding)
        m[rows, cols] = 1
        return m


def _representable(x0: float, y0: float, x1: float, y1: float) -> bool:
    """Whether a normalised box's area is a normal positive float.  ``w = 1e-320`` pixels gives ``x + w == x``, or
    a width of 2e-323 whose area underflows to 0: stage 2 divides by areas, so such a box cannot run."""
    return (x1 - x0) * (y1 - y0) >= sys.float_info.min


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists, tuples) replaced by its ``repr``: ``"inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(float(value))
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _grid_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    a = min(max(round(lo * n), 0), n)
    b = min(max(round(hi * n), 0), n)
    if b <= a:  # thinner than a cell: take the cell under the centre
        a = min(max(math.floor((lo + hi) / 2 * n), 0), n - 1)
        b = a + 1
    return a, b


def _authors_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """The authors' ``scale_proportion``: start and size rounded separately, then clipped to the grid."""
    a = round(lo * n)
    b = a + round((hi - lo) * n)
    return min(max(a, 0), n), min(max(b, 0), n)


def draw_box(ax, box: Box, height: float, width: float, colour: Any = "white", style: str = "-",
             label: str | None = None, linewidth: float = 1.5, offset: float = 0.0) -> None:
    """Outline ``box`` (normalised) on a ``height``×``width`` frame whose origin is the top-left corner.

    Pictures drawn with ``imshow(..., extent=(0, width, height, 0))`` need ``offset=0``; plain ``imshow`` puts
    pixel centres on integers, so its frame starts at −0.5: pass ``offset=-0.5``.  Every figure in the package
    draws its boxes with this function.
    """
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((box.x0 * width + offset, box.y0 * height + offset), box.width * width,
                           box.height * height, fill=False, edgecolor=colour, linestyle=style,
                           linewidth=linewidth, label=label))


@dataclass
class Layout:
    """Boxes with captions, a background prompt and a negative prompt (paper §3.1).

    ``prompt`` is the user's prompt the layout came from; ``meta`` is free-form (which LLM or planner made it,
    the raw reply, warnings raised while repairing it, ...).
    """

    boxes: list[Box] = field(default_factory=list)
    background: str = DEFAULT_BACKGROUND
    negative: str = ""
    prompt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    # -- views --------------------------------------------------------------------------------
    @property
    def phrases(self) -> list[str]:
        return [b.phrase for b in self.boxes]

    def __len__(self) -> int:
        return len(self.boxes)

    def masks(self, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All box masks stacked: ``(len(self), height, width)``; an empty layout gives ``(0, height, width)``."""
        if not self.boxes:
            return torch.zeros(0, height, width, dtype=dtype)
        return torch.stack([b.mask(height, width, dtype) for b in self.boxes])

    def to_xywh_objects(self, canvas: float = CANVAS_SIZE) -> list[tuple[str, list[int]]]:
        """The LLM's format: ``[(caption, [x, y, w, h]), ...]`` in pixels."""
        return [(b.phrase, b.to_xywh(canvas)) for b in self.boxes]

    # -- construction with validation ---------------------------------------------------------
    @classmethod
    def from_xywh_objects(
        cls,
        objects: Iterable[tuple[str, Sequence[float]]],
        background: str | None = None,
        negative: str | None = None,
        prompt: str = "",
        canvas: float = CANVAS_SIZE,
        max_boxes: int = MAX_BOXES,
        meta: dict[str, Any] | None = None,
    ) -> "Layout":
        """Build a validated layout from ``(caption, [x, y, w, h])`` pairs in pixels of the LLM canvas.

        Repairs, each reported with a :class:`LayoutWarning` and recorded in ``meta["warnings"]``:
        zero-area boxes and canvas-sized "background" boxes (``w >= canvas and h >= canvas``, or a corner
        outside the canvas) are dropped, as the authors do; other boxes are clipped to the canvas; boxes past
        ``max_boxes`` are dropped.  Also dropped: a box that is not four finite numbers, one too small to
        represent once normalised (``w = 1e-320``), and a caption without a word (:func:`has_word`).
        Bad boxes never raise: stage 1 is an LLM, and one bad box should not cost the whole layout.
        An empty background prompt becomes ``"A realistic scene"``.
        """
        kept: list[Box] = []
        notes: list[str] = []
        overflow: list[str] = []  # captions past max_boxes: one note for all, not one warning per box
        for phrase, xywh in objects:
            phrase = str(phrase).strip()
            name = quote(phrase)
            try:
                x, y, w, h = (float(v) for v in xywh)
            except (TypeError, ValueError, OverflowError):
                notes.append(f"dropped {name}: the box is not four numbers {quote(xywh)}")
                continue
            where = shorten(str([x, y, w, h]))
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                notes.append(f"dropped {name}: non-finite coordinates {where}")
                continue
            if w <= 0 or h <= 0:
                notes.append(f"dropped {name}: zero area {where}")
                continue
            if (w >= canvas and h >= canvas) or x > canvas or y > canvas:
                notes.append(f"dropped {name}: background-like box {where}")
                continue
            if x + w <= 0 or y + h <= 0 or x >= canvas or y >= canvas:
                notes.append(f"dropped {name}: outside the canvas {where}")
                continue
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, canvas), min(y + h, canvas)
            corners = (x0 / canvas, y0 / canvas, x1 / canvas, y1 / canvas)
            if not _representable(*corners):
                notes.append(f"dropped {name}: too small to represent {where}")
                continue
            if not has_word(phrase):
                notes.append(f"dropped {name}: the caption has no word")
                continue
            if len(kept) >= max_boxes:
                overflow.append(name)
                continue
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                notes.append(f"clipped {name} to the canvas: {where}")
            kept.append(Box(phrase, *corners))
        if len(notes) > _MAX_NOTES:  # a reply of 800 broken boxes: a few examples and a count
            notes = notes[:_MAX_NOTES - 1] + [f"… and {len(notes) - _MAX_NOTES + 1} more repairs"]
        if overflow:
            notes.append(f"dropped {len(overflow)} box(es): more than {max_boxes} boxes "
                         f"({shorten(', '.join(overflow[:4]), 120)}{', …' if len(overflow) > 4 else ''})")
        for note in notes:
            warnings.warn(note, LayoutWarning, stacklevel=2)
        meta = dict(meta or {})
        if notes:
            meta["warnings"] = list(meta.get("warnings", [])) + notes
        return cls(
            boxes=kept,
            background=(background or "").strip() or DEFAULT_BACKGROUND,
            negative=(negative or "").strip(),
            prompt=prompt,
            meta=meta,
        )

    def validate(self) -> None:
        """Raise :class:`LayoutError` unless stage 2 can run this layout: at most :data:`MAX_BOXES` boxes, each a
        :class:`Box` with finite corners inside the canvas (``0 <= x0 < x1 <= 1``, same for y), an area that is a
        normal float (not 1e-320) and a caption with a word; str prompts.

        :meth:`from_xywh_objects` repairs layouts by these rules; a hand-built :class:`Layout` skips them, so
        stage 2 calls this first.  The messages use the repairs' words.
        """
        for name in ("background", "negative", "prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise LayoutError(f"the {name} prompt must be a str, not {type(value).__name__}: {quote(value)}")
        if len(self.boxes) > MAX_BOXES:
            raise LayoutError(f"{len(self.boxes)} boxes: more than {MAX_BOXES} boxes")
        for i, box in enumerate(self.boxes):
            if not isinstance(box, Box):
                raise LayoutError(f"box {i} is a {type(box).__name__}, not a Box: {quote(box)}")
            name = f"box {i} {quote(box.phrase)}"
            if not all(math.isfinite(v) for v in box.bbox):  # a Box checks this, unless someone bypassed it
                raise LayoutError(f"{name}: non-finite coordinates {quote(box.bbox)}")
            if not (0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1):
                raise LayoutError(f"{name}: outside the canvas {quote(box.bbox)} (need 0 <= x0 < x1 <= 1, same for y)")
            if not _representable(*box.bbox):
                raise LayoutError(f"{name}: too small to represent {quote(box.bbox)}")
            if not has_word(box.phrase):
                raise LayoutError(f"{name}: the caption has no word")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "boxes": [asdict(b) for b in self.boxes],
            "background": self.background,
            "negative": self.negative,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layout":
        """The inverse of :meth:`to_dict`; a malformed box raises :class:`LayoutError`."""
        boxes = []
        for b in d.get("boxes", []):
            try:
                boxes.append(Box(**b))
            except TypeError as e:  # missing or extra fields
                raise LayoutError(f"a box needs phrase, x0, y0, x1, y1: {quote(b)} ({e})") from None
        return cls(
            boxes=boxes,
            background=d.get("background", DEFAULT_BACKGROUND),
            negative=d.get("negative", ""),
            prompt=d.get("prompt", ""),
            meta=dict(d.get("meta", {})),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: non-finite numbers (an LLM's ``inf`` kept in ``meta``) are written as strings
        ``"inf"``, ``"-inf"``, ``"nan"``; ``float()`` reads them back.  Plain ``json.dumps`` would write
        ``Infinity``/``NaN``, which most JSON readers reject."""
        return json.dumps(_finite_json(self.to_dict()), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Layout":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # -- pictures -----------------------------------------------------------------------------
    def draw(self, ax=None, image=None, title: str | None = None, canvas: int = CANVAS_SIZE):
        """Draw the boxes with coloured, labelled outlines (on ``image`` if given); returns the axes.

        ``image`` may be a PIL image, an ``(H, W, 3)`` array or a ``(3, H, W)`` tensor in [0, 1].  Each caption stays
        inside the canvas (:func:`~lmd_utils.viz.common.label_box`: from the box's left edge in the canvas's left
        half, up to its right edge in the right half; wrapped when too long).
        """
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        from .viz.common import label_box

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        if image is not None:
            ax.imshow(as_uint8_image(image), extent=(0, canvas, canvas, 0))
        else:
            ax.add_patch(Rectangle((0, 0), canvas, canvas, color="0.93"))
        colours = plt.get_cmap("tab10")
        for i, b in enumerate(self.boxes):
            c = colours(i % 10)
            draw_box(ax, b, canvas, canvas, c, linewidth=2)
            label_box(ax, b, canvas, canvas, b.phrase, colour=c, fontsize=8)
        ax.set_xlim(0, canvas)
        ax.set_ylim(canvas, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if title is None:
            title = self.background + (f"\nnegative: {self.negative}" if self.negative else "")
        ax.set_title(title, fontsize=9)
        return ax
