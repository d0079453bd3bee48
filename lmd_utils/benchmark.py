"""The LMD benchmark (paper §4): 400 prompts in four tasks, and its stage-1 (layout) evaluation.

Tasks, 100 prompts each, in the published order: **negation** ("... without {objects}"), **generative
numeracy** ("... with {n} {objects}"), **attribute binding** ("... with a {colour} {object} and a {colour}
{object}") and **spatial reasoning** ("... with a {object} on the {left} and a {object} on the {right}").

* :func:`benchmark_prompts` regenerates the 400 prompts exactly as published (numpy's legacy global seeding).
* The four predicates (:func:`negation_ok`, :func:`numeracy_ok`, :func:`attribution_ok`, :func:`spatial_ok`) work
  on ``(name, [x, y, w, h])`` lists, so the same code scores LLM layouts (stage 1, here) and detector boxes
  (the toy world's through :func:`run_benchmark`; OWL-ViT's in :mod:`lmd_utils.evaluation`).
* :func:`evaluate_stage1` scores a layout source; on the authors' published GPT-3.5 replies it gives
  negation 100, numeracy 97, attribution 100, spatial 99: 396/400, as published.

Where we differ from the authors' scoring: names are matched case-insensitively (an LLM that writes "A dog"
is not penalised for the capital); on the published replies this changes nothing.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .layout import CANVAS_SIZE, Layout, LayoutWarning
from .llm_client import resolve_source
from .llm_layouts import LayoutParseError, LayoutSource, MissingReplyError, scoring_objects
from .grammar import PLAIN_NUMBERS, singularize, with_article
from .progress import progress_bar

PREFIX = "A realistic photo of a scene"
CLASSES = ("backpack", "book", "bottle", "bowl", "car", "cat", "chair", "cup", "dog", "laptop")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
COUNT_WORDS = PLAIN_NUMBERS[:5]  # the numeracy prompts ask for one to five objects
SPATIAL_PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))
TASKS = ("negation", "numeracy", "attribution", "spatial")

Objects = Sequence[tuple[str, Sequence[float]]]


# =============================================================================================================
# Prompts
# =============================================================================================================
@dataclass(frozen=True)
class PromptSpec:
    """One benchmark prompt and what it asks for.

    ``names``: negation/numeracy: ``(singular object,)``; attribution: ``("a red car", "an orange bottle")``;
    spatial: ``("a bottle", "a laptop")``.  ``count`` is numeracy's n; ``relation`` is where ``names[0]`` must be
    relative to ``names[1]`` (spatial: left/right/top/bottom).
    """

    task: str
    prompt: str
    names: tuple[str, ...]
    count: int | None = None
    relation: str | None = None

    def check(self, objects: Objects) -> bool:
        """Whether boxes ``objects`` satisfy this prompt (the task's predicate; no boxes dropped here)."""
        if self.task == "negation":
            return negation_ok(objects, self.names[0])
        if self.task == "numeracy":
            return numeracy_ok(objects, self.names[0], int(self.count or 0))
        if self.task == "attribution":
            return attribution_ok(objects, self.names[0], self.names[1])
        if self.task == "spatial":
            return spatial_ok(objects, self.names[0], self.names[1], str(self.relation))
        raise ValueError(f"unknown task {self.task!r}")


def benchmark_specs() -> list[PromptSpec]:
    """The 400 prompts with their tasks, built as the authors built them (see the shared README)."""
    specs: list[PromptSpec] = []
    for c in CLASSES:
        specs += [PromptSpec("negation", f"{PREFIX} without {c}s", (c,))] * 10
    for n, word in enumerate(COUNT_WORDS, start=1):
        for c in CLASSES:
            obj = c if n == 1 else f"{c}s"
            specs += [PromptSpec("numeracy", f"{PREFIX} with {word} {obj}", (c,), count=n)] * 2
    colours, classes = list(COLOURS), list(CLASSES)
    for ind in range(100):
        np.random.seed(ind)  # the authors' legacy global seeding; the draw order matters
        colour1, colour2 = np.random.choice(colours, 2, replace=False)
        class1, class2 = np.random.choice(classes, 2, replace=False)
        p1, p2 = with_article(f"{colour1} {class1}"), with_article(f"{colour2} {class2}")
        specs.append(PromptSpec("attribution", f"{PREFIX} with {p1} and {p2}", (p1, p2)))
    for ind in range(25):
        np.random.seed(ind)  # once per group of four relations
        for l1, l2 in SPATIAL_PAIRS:
            class1, class2 = np.random.choice(classes, 2, replace=False)
            p1, p2 = with_article(str(class1)), with_article(str(class2))
            specs.append(PromptSpec("spatial", f"{PREFIX} with {p1} on the {l1} and {p2} on the {l2}", (p1, p2),
                                    relation=l1))
    return specs


def benchmark_prompts() -> list[str]:
    """The 400 LMD benchmark prompts, one string each, in the published order."""
    return [s.prompt for s in benchmark_specs()]


_PHRASE = r"an? [\w-]+(?: [\w-]+)*?"
_SPATIAL_RE = re.compile(rf"^.*? with (?P<p1>{_PHRASE}) on the (?P<l1>left|right|top|bottom) and "
                         rf"(?P<p2>{_PHRASE}) on the (?P<l2>left|right|top|bottom)$")
_ATTRIBUTION_RE = re.compile(rf"^.*? with (?P<p1>{_PHRASE}) and (?P<p2>{_PHRASE})$")
_NUMERACY_RE = re.compile(rf"^.*? with (?P<n>{'|'.join(COUNT_WORDS)}) (?P<obj>[\w-]+(?: [\w-]+)*)$")
_NEGATION_RE = re.compile(r"^.*? without (?P<obj>[\w-]+(?: [\w-]+)*)$")


def parse_benchmark_prompt(prompt: str) -> PromptSpec:
    """The :class:`PromptSpec` of a prompt written in the benchmark's grammar (any prefix, any object words)."""
    text = prompt.strip()
    if m := _SPATIAL_RE.match(text):
        return PromptSpec("spatial", prompt, (m["p1"], m["p2"]), relation=m["l1"])
    if m := _NEGATION_RE.match(text):
        words = m["obj"].split()
        return PromptSpec("negation", prompt, (" ".join(words[:-1] + [singularize(words[-1])]),))
    if m := _NUMERACY_RE.match(text):
        n, words = COUNT_WORDS.index(m["n"]) + 1, m["obj"].split()
        return PromptSpec("numeracy", prompt, (" ".join(words[:-1] + [singularize(words[-1])]),), count=n)
    if m := _ATTRIBUTION_RE.match(text):
        return PromptSpec("attribution", prompt, (m["p1"], m["p2"]))
    raise ValueError(f"not a prompt of the LMD benchmark grammar: {prompt!r}")


# =============================================================================================================
# Predicates (on (name, [x, y, w, h]) boxes)
# =============================================================================================================
def drop_unscorable_boxes(objects: Objects, canvas: float = CANVAS_SIZE) -> list[tuple[str, list[float]]]:
    """The authors' pre-scoring filter: drop boxes with ``w <= 0`` or ``h <= 0`` and "background" boxes that
    cover the canvas (``w >= canvas and h >= canvas``) or start outside it (``x > canvas or y > canvas``).
    Nothing is clipped or rescaled."""
    kept = []
    for name, box in objects:
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0 or (w >= canvas and h >= canvas) or x > canvas or y > canvas:
            continue
        kept.append((str(name), [x, y, w, h]))
    return kept


def _names(objects: Objects) -> list[str]:
    return [str(n).lower() for n, _ in objects]


def negation_ok(objects: Objects, name: str) -> bool:
    """Negation: no box name contains the excluded object's (singular) name."""
    return not any(name.lower() in n for n in _names(objects))


def numeracy_ok(objects: Objects, name: str, count: int) -> bool:
    """Generative numeracy: exactly ``count`` box names contain the object's singular name."""
    return sum(name.lower() in n for n in _names(objects)) == count


def attribution_ok(objects: Objects, phrase1: str, phrase2: str) -> bool:
    """Attribute binding: some box name contains ``"a red car"`` (article included) and some ``"a blue cup"``."""
    names = _names(objects)
    return all(any(p.lower() in n for n in names) for p in (phrase1, phrase2))


def first_box(objects: Objects, phrase: str) -> list[float] | None:
    """The first box whose name contains ``phrase + " "`` or ends with ``phrase`` (the authors' matching).

    Numbers come back as Python floats, except numpy float scalars, which keep their precision: detector boxes
    are float32 and the authors compare their centres in float32 (:mod:`lmd_utils.evaluation`)."""
    phrase = phrase.lower()
    for name, box in objects:
        name = str(name).lower()
        if phrase + " " in name or name.endswith(phrase):
            return [v if isinstance(v, np.floating) else float(v) for v in box]
    return None


def spatial_ok(objects: Objects, phrase1: str, phrase2: str, relation: str) -> bool:
    """Spatial: both objects are found and box 1's centre is strictly ``relation`` (left/right/top/bottom) of
    box 2's centre (x for left/right, y for top/bottom; y grows downwards)."""
    if relation not in ("left", "right", "top", "bottom"):
        raise ValueError(f"unknown relation {relation!r}")
    box1, box2 = first_box(objects, phrase1), first_box(objects, phrase2)
    if box1 is None or box2 is None:
        return False
    axis = 0 if relation in ("left", "right") else 1
    c1, c2 = box1[axis] + box1[axis + 2] / 2, box2[axis] + box2[axis + 2] / 2
    return c1 < c2 if relation in ("left", "top") else c1 > c2


def layout_verdict(layout: Layout, objects: Objects, canvas: float = CANVAS_SIZE) -> tuple[bool, str]:
    """Does a detector's output show ``layout``?  Each box's object found under its caption with its centre inside
    the box, and nothing else: ``(True, "✓ matches the layout")``, else ``(False, "✗ ...")`` naming what is
    wrong (missing, outside its box, extra), for a figure's caption.  ``objects``: ``(name, [x, y, w, h])`` on
    the ``canvas``, like the predicates.  Not one of the paper's four predicates: a per-image explanation."""
    def bare(name: str) -> str:
        return re.sub(r"^(a|an|the)\s+", "", str(name).strip().lower())

    left = [(bare(n), [float(v) for v in b]) for n, b in objects]
    problems = []
    for box in layout.boxes:
        name = bare(box.phrase)
        x, y, w, h = box.to_xywh(canvas)
        same = [k for k, (n, _) in enumerate(left) if n == name]
        if not same:
            problems.append(f"no {name}")
            continue
        def distance(k: int) -> float:
            bx, by, bw, bh = left[k][1]
            return (bx + bw / 2 - x - w / 2) ** 2 + (by + bh / 2 - y - h / 2) ** 2
        _, (bx, by, bw, bh) = left.pop(min(same, key=distance))
        if not (x <= bx + bw / 2 <= x + w and y <= by + bh / 2 <= y + h):
            problems.append(f"{name} outside its box")
    problems += [f"extra {n}" for n, _ in left]
    if not problems:
        return True, "✓ matches the layout"
    return False, "✗ " + "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")


# =============================================================================================================
# Evaluation
# =============================================================================================================
@dataclass
class PromptOutcome:
    """The score of one prompt: the boxes that were scored and, when no boxes could be had, why."""

    spec: PromptSpec
    sample: int
    success: bool
    objects: list[tuple[str, list[float]]] = field(default_factory=list)
    error: str | None = None


@dataclass
class BenchmarkResult:
    """Per-prompt outcomes with per-task counts; ``format_table()`` ends with ``overall: N/total``."""

    stage: str
    source: str
    outcomes: list[PromptOutcome]

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{task: (successes, prompts)}`` for the tasks present, in the benchmark's order."""
        out: dict[str, tuple[int, int]] = {}
        for task in TASKS:
            scored = [o.success for o in self.outcomes if o.spec.task == task]
            if scored:
                out[task] = (sum(scored), len(scored))
        return out

    @property
    def successes(self) -> int:
        return sum(o.success for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def accuracy(self, task: str | None = None) -> float:
        """Success rate in percent, for one task or overall."""
        ok, n = self.counts()[task] if task else (self.successes, self.total)
        return 100.0 * ok / n if n else 0.0

    def failures(self) -> list[PromptOutcome]:
        return [o for o in self.outcomes if not o.success]

    def format_table(self) -> str:
        """A per-task table; the last line is ``overall: N/total``."""
        lines = [f"{self.stage} — source: {self.source}",
                 f"{'task':<12} {'correct':>7} {'total':>6} {'accuracy':>9}"]
        for task, (ok, n) in self.counts().items():
            lines.append(f"{task:<12} {ok:>7} {n:>6} {100.0 * ok / n:>8.1f}%")
        errors = sum(o.error is not None for o in self.outcomes)
        if errors:
            lines.append(f"({errors} prompts had no usable layout; they count as failures)")
        lines.append(f"overall: {self.successes}/{self.total}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "source": self.source,
                "counts": {t: list(c) for t, c in self.counts().items()},
                "overall": [self.successes, self.total],
                "failures": [{"prompt": o.spec.prompt, "sample": o.sample, "objects": o.objects, "error": o.error}
                             for o in self.failures()]}


def four_task_average(result: BenchmarkResult) -> float:
    """Mean of the per-task accuracies in percent (the paper's "average" column)."""
    counts = result.counts()
    return sum(100.0 * ok / n for ok, n in counts.values()) / len(counts) if counts else 0.0


class Stage1Result(BenchmarkResult):
    """Stage-1 (layout-only) benchmark result."""


def run_benchmark(
    specs: Sequence[PromptSpec],
    objects_for: Callable[[PromptSpec, int], Objects],
    stage: str,
    source_name: str,
    expected_errors: tuple[type[BaseException], ...] = (),
    progress: bool = True,
    result_type: type[BenchmarkResult] = BenchmarkResult,
) -> BenchmarkResult:
    """Score each prompt: ``objects_for(spec, k)`` gives the boxes of the k-th occurrence of ``spec.prompt``
    (k counts repeats, so repeated prompts use successive samples).  An ``expected_errors`` exception makes
    that prompt a failure with the error recorded; any other exception stops the run."""
    seen: Counter[str] = Counter()
    outcomes: list[PromptOutcome] = []
    for spec in progress_bar(specs, desc=stage, disable=not progress, leave=False):
        k = seen[spec.prompt]
        seen[spec.prompt] += 1
        try:
            objects = list(objects_for(spec, k))
        except expected_errors as e:
            outcomes.append(PromptOutcome(spec, k, False, [], error=f"{type(e).__name__}: {e}"))
            continue
        outcomes.append(PromptOutcome(spec, k, spec.check(objects), objects))
    return result_type(stage=stage, source=source_name, outcomes=outcomes)


def evaluate_stage1(
    source: LayoutSource | str | Path,
    prompts: Sequence[str] | None = None,
    progress: bool = True,
    **source_options: Any,
) -> Stage1Result:
    """Score the layouts of ``source`` on the benchmark (paper §4, the layout-generation stage alone).

    ``source``: a :class:`~lmd_utils.llm_layouts.LayoutSource`, ``"planner"``, ``"llm"`` or a reply file path
    (``source_options`` go to :func:`~lmd_utils.llm_client.resolve_source`).  ``prompts`` defaults to the 400
    benchmark prompts; the k-th occurrence of a prompt gets the source's k-th layout.  Boxes are scored raw
    (the LLM's pixels, no clipping) after :func:`drop_unscorable_boxes`.  A reply that cannot be parsed, or a
    prompt missing from a reply file, counts as a failure.
    """
    resolved, _ = resolve_source(source, **source_options)
    specs = benchmark_specs() if prompts is None else [parse_benchmark_prompt(p) for p in prompts]

    def objects_for(spec: PromptSpec, k: int) -> list[tuple[str, list[float]]]:
        with warnings.catch_warnings():  # repairs of the layout do not matter: we score the raw boxes
            warnings.simplefilter("ignore", LayoutWarning)
            layout = resolved.get_layout(spec.prompt, sample=k)
        return drop_unscorable_boxes(scoring_objects(layout))

    result = run_benchmark(specs, objects_for, "stage 1 (layouts)", resolved.name,
                           expected_errors=(LayoutParseError, MissingReplyError), progress=progress,
                           result_type=Stage1Result)
    assert isinstance(result, Stage1Result)
    return result


__all__ = [
    "four_task_average",
    "PREFIX", "CLASSES", "COLOURS", "TASKS", "PromptSpec", "benchmark_specs", "benchmark_prompts",
    "parse_benchmark_prompt", "drop_unscorable_boxes", "negation_ok", "numeracy_ok", "attribution_ok",
    "first_box", "spatial_ok", "layout_verdict", "PromptOutcome", "BenchmarkResult", "Stage1Result", "run_benchmark",
    "evaluate_stage1",
]
