"""Synthetic toy-world scenes: plain backgrounds with 1–4 coloured shapes, exact boxes and captions.

The toy world stands in for the photos Stable Diffusion was trained on, so every LMD stage (layout → attention
→ energy guidance → per-box latents → composition → detection) can be run and *measured* on a CPU.  A scene is
a small RGB image, the ground-truth :class:`~lmd_utils.layout.Layout` (one box per object instance, as in the
paper §3.1) and a caption from a small grammar::

    single   "a red circle"
    pair     "a red circle and a blue square"
    count    "three green squares"                      (2–4 identical objects)
    spatial  "a yellow triangle on the left and a blue circle on the right"   (top/bottom too, either order)
    empty    ""                                         (for classifier-free guidance, random objects)

Every object knows which caption words name it (:class:`PhraseSpan`), which is what the auxiliary attention
loss in :mod:`lmd_utils.toyworld.train` pulls into the object's box.  Drawing is aliasing-free (a pixel is
inside a shape or not), so :mod:`lmd_utils.toyworld.detector` can recover every object exactly.
Everything is deterministic from an integer seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..layout import Box, Layout

IMAGE_SIZE = 32
#: Saturated object colours (RGB, 0–255); backgrounds are kept unsaturated so colours never clash.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 205, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURAL: dict[str, str] = {s: s + "s" for s in SHAPES}
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
#: Spatial axis → (words for the first object, words for the second); either may be mentioned first.
POSITIONS: dict[str, tuple[str, str]] = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}
BACKGROUND_PROMPT = "a plain background"
#: Caption kinds and their probabilities: mostly single objects (LMD generates one box at a time), ~10 % empty.
CAPTION_MIX: dict[str, float] = {"single": 0.45, "pair": 0.2, "count": 0.12, "spatial": 0.13, "empty": 0.1}
#: Every word the grammar can produce: the tokenizer gets exactly one token per word.
VOCABULARY: tuple[str, ...] = (
    ("a", "and", "on", "the", "plain", "background")
    + tuple(w for pair in POSITIONS.values() for w in pair)
    + tuple(COUNT_WORDS.values())
    + tuple(COLOURS)
    + SHAPES
    + tuple(PLURAL.values())
)
#: Shape sizes (bounding-box side) as fractions of the image side: 7–13 px on a 32×32 image.
SIZE_RANGE = (7 / 32, 13 / 32)


@dataclass(frozen=True)
class ToyObject:
    """One drawn object; ``box`` is its tight pixel bounding box, normalised, phrase ``"a red circle"``."""

    colour: str
    shape: str
    box: Box

    @property
    def phrase(self) -> str:
        return object_phrase(self.colour, self.shape)


@dataclass(frozen=True)
class PhraseSpan:
    """Caption words that name some objects: ``word_indices`` index ``caption.split()``.

    For a count caption one span covers all its objects; in spatial captions the position word ("left") is part
    of its object's span, so the loss also teaches where that word belongs.
    """

    phrase: str
    word_indices: tuple[int, ...]
    object_indices: tuple[int, ...]

    def token_positions(self, offset: int = 1) -> list[int]:
        """Positions in the tokenized caption (one token per word, ``offset`` = 1 skips the start token)."""
        return [offset + i for i in self.word_indices]


@dataclass
class Scene:
    """An image (``(H, W, 3)`` uint8), its caption, its objects and the caption words that name them."""

    image: np.ndarray
    caption: str
    objects: list[ToyObject]
    spans: list[PhraseSpan]
    background_rgb: tuple[int, int, int]
    kind: str
    seed: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        """The ground-truth layout: one box per object instance, in drawing order."""
        return Layout(boxes=[o.box for o in self.objects], background=BACKGROUND_PROMPT, prompt=self.caption,
                      meta={"source": "toyworld", "kind": self.kind, "seed": self.seed})

    def tensor(self) -> torch.Tensor:
        """The image as a ``(3, H, W)`` float tensor in [-1, 1] (the model's pixel-space latents)."""
        return images_to_tensor([self.image])[0]


def object_phrase(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


# --------------------------------------------------------------------------------------------- drawing
def shape_mask(shape: str, top: int, left: int, size: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean ``(image_size, image_size)`` mask of ``shape`` in the ``size``×``size`` square at (top, left).

    A pixel belongs to the shape when its centre does (no anti-aliasing).  Circles touch all four sides of the
    square; triangles point up with their base on the bottom row; squares fill it.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if size < 2:
        raise ValueError(f"shape size must be at least 2 pixels, got {size}")
    rows = np.arange(image_size)[:, None] + 0.5
    cols = np.arange(image_size)[None, :] + 0.5
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    if shape == "square":
        return inside
    cy, cx = top + size / 2, left + size / 2
    if shape == "circle":
        return inside & ((rows - cy) ** 2 + (cols - cx) ** 2 <= (size / 2) ** 2)
    # triangle: the half-width grows linearly from the apex; using the pixel's lower edge keeps the apex visible
    depth = (np.floor(rows) + 1 - top) / size
    return inside & (np.abs(cols - cx) <= depth * size / 2)


def mask_box(mask: np.ndarray, phrase: str) -> Box:
    """The tight, normalised bounding box of the ``True`` pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError(f"empty mask for {phrase!r}")
    h, w = mask.shape
    return Box(phrase, xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 images → ``(B, 3, H, W)`` float tensor in [-1, 1]."""
    arr = np.stack([np.asarray(im) for im in images]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` tensor in [-1, 1] → ``(B, H, W, 3)`` uint8 (clipped)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def random_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A light, unsaturated colour (grey 150–230 with a ±20 tint), far from every object colour."""
    grey = rng.integers(150, 231)
    tint = rng.integers(-20, 21, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))


# --------------------------------------------------------------------------------------------- placement
def _pixel_rect(top: int, left: int, size: int) -> tuple[int, int, int, int]:
    return top, left, top + size, left + size


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """Rectangles (top, left, bottom, right) separated by at least ``gap`` empty pixels on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def size_range(n_objects: int, image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Smallest and largest shape side, in pixels, in scenes of ``n_objects`` objects: :data:`SIZE_RANGE` (7–13 px
    of 32), the largest 2 px smaller per object past two (crowded scenes: 3 objects 7–11 px, 4 objects 7–9 px)."""
    lo = max(3, round(SIZE_RANGE[0] * image_size))
    hi = max(lo, round(SIZE_RANGE[1] * image_size))
    if n_objects >= 3:  # crowded scenes use smaller shapes so they still fit
        hi = max(lo, hi - 2 * (n_objects - 2))
    return lo, hi


def box_sides(n_objects: int, image_size: int = IMAGE_SIZE) -> tuple[float, float]:
    """:func:`size_range` as fractions of the image side: the square boxes the toy model was trained on for that
    many objects (the offline planner's limits for the toy model, :data:`~lmd_utils.toyworld.model.TOY_PLANNER_LIMITS`)."""
    lo, hi = size_range(max(n_objects, 1), image_size)
    return lo / image_size, hi / image_size


def _place(rng: np.random.Generator, n: int, image_size: int, relation: str | None = None,
           gap: int = 1, max_tries: int = 200) -> list[tuple[int, int, int]]:
    """``n`` non-touching squares ``(top, left, size)``; with ``relation`` the first is left of / above the second."""
    lo, hi = size_range(n, image_size)
    for _ in range(max_tries):
        placed: list[tuple[int, int, int]] = []
        for _ in range(max_tries):
            size = int(rng.integers(lo, hi + 1))
            top = int(rng.integers(0, image_size - size + 1))
            left = int(rng.integers(0, image_size - size + 1))
            rect = _pixel_rect(top, left, size)
            if not all(_apart(rect, _pixel_rect(*p), gap) for p in placed):
                continue
            if relation is not None and placed:
                t0, l0, s0 = placed[0]
                if relation == "horizontal" and not l0 + s0 <= left:
                    continue
                if relation == "vertical" and not t0 + s0 <= top:
                    continue
            placed.append((top, left, size))
            if len(placed) == n:
                return placed
    raise RuntimeError(f"could not place {n} objects on a {image_size}px image")


def _draw(rng: np.random.Generator, specs: Sequence[tuple[str, str]], image_size: int,
          relation: str | None = None) -> tuple[np.ndarray, list[ToyObject], tuple[int, int, int]]:
    background = random_background(rng)
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = background
    objects = []
    for (colour, shape), (top, left, size) in zip(specs, _place(rng, len(specs), image_size, relation)):
        mask = shape_mask(shape, top, left, size, image_size)
        image[mask] = COLOURS[colour]
        objects.append(ToyObject(colour, shape, mask_box(mask, object_phrase(colour, shape))))
    return image, objects, background


# --------------------------------------------------------------------------------------------- captions
def _random_spec(rng: np.random.Generator) -> tuple[str, str]:
    return str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))


def _two_different_specs(rng: np.random.Generator) -> list[tuple[str, str]]:
    first = _random_spec(rng)
    while (second := _random_spec(rng)) == first:
        pass
    return [first, second]


def generate_scene(seed: int | np.random.Generator, image_size: int = IMAGE_SIZE, kind: str | None = None) -> Scene:
    """One random scene of caption ``kind`` (``None``: drawn from :data:`CAPTION_MIX`), deterministic from ``seed``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if kind is None:
        kind = str(rng.choice(list(CAPTION_MIX), p=np.array(list(CAPTION_MIX.values())) / sum(CAPTION_MIX.values())))
    if kind not in CAPTION_MIX:
        raise ValueError(f"unknown caption kind {kind!r}; expected one of {list(CAPTION_MIX)}")
    relation = None
    if kind == "single":
        specs = [_random_spec(rng)]
    elif kind == "pair":
        specs = _two_different_specs(rng)
    elif kind == "count":
        specs = [_random_spec(rng)] * int(rng.integers(2, 5))
    elif kind == "spatial":
        specs = _two_different_specs(rng)
        relation = str(rng.choice(list(POSITIONS)))
    else:  # empty caption: any 1–4 objects
        specs = [_random_spec(rng) for _ in range(int(rng.integers(1, 5)))]
    image, objects, background = _draw(rng, specs, image_size, relation)

    if kind == "single":
        caption, spans = objects[0].phrase, [PhraseSpan(objects[0].phrase, (1, 2), (0,))]
    elif kind == "pair":
        a, b = objects
        caption = f"{a.phrase} and {b.phrase}"
        spans = [PhraseSpan(a.phrase, (1, 2), (0,)), PhraseSpan(b.phrase, (5, 6), (1,))]
    elif kind == "count":
        o = objects[0]
        caption = f"{COUNT_WORDS[len(objects)]} {o.colour} {PLURAL[o.shape]}"
        spans = [PhraseSpan(o.phrase, (0, 1, 2), tuple(range(len(objects))))]
    elif kind == "spatial":
        words = POSITIONS[relation]
        order = [0, 1] if rng.random() < 0.5 else [1, 0]  # mention either object first
        first, second = order
        caption = (f"{objects[first].phrase} on the {words[first]} and "
                   f"{objects[second].phrase} on the {words[second]}")
        spans = [PhraseSpan(objects[first].phrase, (1, 2, 5), (first,)),
                 PhraseSpan(objects[second].phrase, (8, 9, 12), (second,))]
    else:
        caption, spans = "", []
    seed_value = None if isinstance(seed, np.random.Generator) else int(seed)
    scene = Scene(image, caption, objects, spans, background, kind, seed_value,
                  meta={"relation": relation} if relation else {})
    _check_spans(scene)
    return scene


def _check_spans(scene: Scene) -> None:
    words = scene.caption.split()
    for span in scene.spans:
        named = {words[i] for i in span.word_indices}
        for j in span.object_indices:
            o = scene.objects[j]
            if o.colour not in named or not ({o.shape, PLURAL[o.shape]} & named):
                raise AssertionError(f"span {span} does not name object {o} in {scene.caption!r}")


def generate_scenes(n: int, seed: int = 0, image_size: int = IMAGE_SIZE, kind: str | None = None) -> list[Scene]:
    """``n`` scenes; scene ``i`` is ``generate_scene(scene_seed(seed, i))``, so any slice can be regenerated."""
    return [generate_scene(scene_seed(seed, i), image_size, kind) for i in range(n)]


def scene_seed(seed: int, index: int) -> int:
    """A distinct integer seed per (run seed, index), stable across runs and platforms."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------- parsing
_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_PLURAL_RE = "|".join(PLURAL.values())
_COUNT = "|".join(COUNT_WORDS.values())
_POSITION = "|".join(w for pair in POSITIONS.values() for w in pair)
_OBJ = rf"a (?P<c{{i}}>{_COLOUR}) (?P<s{{i}}>{_SHAPE})"
_PATTERNS = {
    "single": re.compile(rf"^{_OBJ.format(i=1)}$"),
    "pair": re.compile(rf"^{_OBJ.format(i=1)} and {_OBJ.format(i=2)}$"),
    "count": re.compile(rf"^(?P<n>{_COUNT}) (?P<c1>{_COLOUR}) (?P<p1>{_PLURAL_RE})$"),
    "spatial": re.compile(rf"^{_OBJ.format(i=1)} on the (?P<w1>{_POSITION}) and "
                          rf"{_OBJ.format(i=2)} on the (?P<w2>{_POSITION})$"),
}


@dataclass(frozen=True)
class ParsedObject:
    """What a caption asks for: ``count`` objects of one colour and shape, optionally at a named side."""

    colour: str
    shape: str
    count: int = 1
    position: str | None = None

    @property
    def phrase(self) -> str:
        return object_phrase(self.colour, self.shape)


def parse_caption(caption: str) -> tuple[str, list[ParsedObject]]:
    """Parse a toy-world caption into ``(kind, objects)``; raises ``ValueError`` outside the grammar."""
    text = " ".join(caption.lower().split())
    if not text:
        return "empty", []
    for kind, pattern in _PATTERNS.items():
        m = pattern.match(text)
        if not m:
            continue
        g = m.groupdict()
        if kind == "count":
            n = {v: k for k, v in COUNT_WORDS.items()}[g["n"]]
            return kind, [ParsedObject(g["c1"], g["p1"][:-1], n)]
        if kind == "spatial":
            w1, w2 = g["w1"], g["w2"]
            if not any({w1, w2} == set(pair) for pair in POSITIONS.values()):
                raise ValueError(f"positions {w1!r} and {w2!r} are not opposite sides in {caption!r}")
        objects = [ParsedObject(g["c1"], g["s1"], 1, g.get("w1"))]
        if "c2" in g:
            objects.append(ParsedObject(g["c2"], g["s2"], 1, g.get("w2")))
        return kind, objects
    raise ValueError(f"caption {caption!r} is not in the toy-world grammar")


def parse_phrase(phrase: str) -> tuple[str, str]:
    """``"a red circle"`` (or ``"red circles"``) → ``("red", "circle")``; raises ``ValueError`` if unknown."""
    words = phrase.lower().replace(",", " ").split()
    colours = [w for w in words if w in COLOURS]
    shapes = [w if w in SHAPES else w[:-1] for w in words if w in SHAPES or w in PLURAL.values()]
    if len(colours) != 1 or len(shapes) != 1:
        raise ValueError(f"phrase {phrase!r} must name exactly one colour of {list(COLOURS)} "
                         f"and one shape of {list(SHAPES)}")
    return colours[0], shapes[0]


def render_layout(layout: Layout, image_size: int = IMAGE_SIZE,
                  background: tuple[int, int, int] = (200, 200, 200)) -> np.ndarray:
    """Draw the ground-truth scene for ``layout``: each box's shape, as large as fits, centred in the box.

    Box phrases must parse with :func:`parse_phrase`.  Later boxes are drawn over earlier ones.
    """
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = background
    for box in layout.boxes:
        colour, shape = parse_phrase(box.phrase)
        rows, cols = box.pixel_slices(image_size, image_size)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        size = max(2, min(h, w))
        top, left = rows.start + (h - size) // 2, cols.start + (w - size) // 2
        image[shape_mask(shape, top, left, size, image_size)] = COLOURS[colour]
    return image
