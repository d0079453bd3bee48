"""The LMD benchmark's four tasks in the toy world: stage 2 (layout → image) scored on a CPU.

The paper (§4, Table 1) scores generated images on 400 prompts (negation, generative numeracy, attribute binding,
spatial reasoning) with an open-vocabulary detector.  Here the same four tasks are written in the toy world's
caption grammar, images come from the toy model, and :mod:`~lmd_utils.toyworld.detector` (exact on toy images)
stands in for OWL-ViT.  Scoring uses **the same four predicates** as the real benchmark
(:mod:`lmd_utils.benchmark`), on the detector's boxes converted to ``(name, [x, y, w, h])`` on the 512-px canvas.

Prompts (:func:`toy_benchmark_prompts`), each drawn from its own seed, so any seed range gives a benchmark::

    negation     "a red circle without blue squares"            (the excluded object must not appear)
    numeracy     "three green triangles"                        (2–4: the toy grammar's counts)
    attribution  "a red circle and a blue square"               (two colours, two shapes, all different)
    spatial      "a yellow triangle on the left and a blue circle on the right"   (left/right/top/bottom)

Methods, from the same seed (the prompt's seed is the image seed, so both start from the same ``z_T``):

* ``sd``: plain sampling of the prompt alone (classifier-free guidance against the empty prompt), batched across
  prompts.  The authors' SD baseline also gets the LLM layout's negative prompt (``generate.py``), as
  :mod:`lmd_utils.stage2` gives it on real models; here plain sampling has no layout at all;
* ``lmd``: the offline planner's layout for the toy model (:func:`~lmd_utils.toyworld.model.toy_layout`: square
  boxes of the sizes the toy model was trained on, 7–13 px, where the planner places its boxes; "without X" becomes
  the negative prompt) → :func:`~lmd_utils.pipeline.generate`, masks from the attention (the threshold route, the
  toy model's ``mask_method="object"``: the mask follows the object; ``masks="segmenter"``: refined by the toy
  world's SAM stand-in instead, :data:`MASK_SOURCES`);
* ``backward-guidance``, ``multidiffusion``: the baselines of :mod:`lmd_utils.baselines` on the same layouts.

All use the model's LMD settings (:func:`toy_lmd_config`: the folder's ``lmd_config.json``, else
:data:`~lmd_utils.toyworld.model.TOYWORLD_LMD_CONFIG`) for steps and CFG scale.

Calibration (:func:`calibrate`, ``python -m lmd_utils.toyworld.benchmark --calibrate``) is a coordinate search
over a small grid of LMD knobs (:data:`CALIBRATION_KNOBS`) on a seed range the reported benchmark does not use
(default: first seed 10000; the benchmark reports first seed 0), so the reported numbers are not tuned on.

Where we differ from the paper: the toy numeracy task asks for 2–4 objects (the toy grammar's counts) instead of
1–5; the spatial and attribution objects carry a colour (toy objects are coloured shapes); scoring uses the toy
detector instead of OWL-ViT.

Mask check (:func:`check_masks`, ``python -m lmd_utils.toyworld.benchmark --check-masks``): the per-box pass of
the LMD method on benchmark layouts, scored by the detector: how well each per-box object fills its generation box
(box fit IoU), and how well the mask stage 2 extracts (:func:`~lmd_utils.masks.extract_object_masks`, as
:func:`~lmd_utils.pipeline.generate` calls it) covers the object's silhouette (mask IoU).

It is one module (prompts, the two methods, scoring, the calibration search, the model checks and their command
line) because all of them draw the same prompts and score them with the same detector.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..attention import ALL_LAYERS, AttentionStore, mass_inside_box, word_token_indices
from ..benchmark import SPATIAL_PAIRS, TASKS, BenchmarkResult, PromptSpec, four_task_average, run_benchmark
from ..layout import CANVAS_SIZE, Box, Layout
from ..masks import extract_object_masks, mask_iou, resize_masks
from ..models import decode_latents, default_resolution, encode_prompts, initial_noise
from ..config import LMDConfig
from ..per_box import run_per_box
from ..pipeline import configured_layout, generate
from ..planner import plan_layout
from ..progress import progress_bar
from ..sampling import denoise
from ..sam import SamBackend
from .detector import Detection, detect, detect_boxes
from .model import TOYWORLD_ATTENTION_LAYERS, TOYWORLD_ENCODER_LAYERS, TOYWORLD_LMD_CONFIG, is_toyworld, toy_layout
from .scenes import COLOURS, COUNT_WORDS, PLURAL, SHAPES, parse_phrase
from .segment import FlatColourSegmenter

from ..stage2 import METHODS  # noqa: E402
#: What ``benchmark stage2`` runs by default.
DEFAULT_METHODS = ("sd", "lmd")
METHOD_NAMES = {"sd": "plain sampling (same seed, steps and CFG)", "lmd": "LMD (offline planner's toy layout)"}
#: How the ``lmd`` method's object masks are made: ``"attention"`` (the threshold route, ``LMDConfig.mask_method``:
#: attention alone) or ``"segmenter"`` (the paper's SAM route, with the toy world's SAM stand-in
#: :class:`~lmd_utils.toyworld.segment.FlatColourSegmenter`).  The benchmark uses ``"attention"``: the segmenter's
#: masks are the objects' exact pixels (IoU 1.00 with them, against 0.68), yet compose worse here (seeds 0–24,
#: spatial task: 17/25 against 21/25): without a rim of background around it, a pasted shape is redrawn by the
#: composed pass once it is released, and neighbouring shapes of one colour merge.
MASK_SOURCES = ("attention", "segmenter")
#: Default seed ranges: the report starts at 0, calibration at 10000 (disjoint for any n_per_task <= 10000).
REPORT_FIRST_SEED = 0
CALIBRATION_FIRST_SEED = 10000
_TASK_SALT = {task: i for i, task in enumerate(TASKS)}


# =============================================================================================================
# Prompts
# =============================================================================================================
@dataclass(frozen=True)
class ToyPrompt:
    """A toy benchmark prompt (its :class:`~lmd_utils.benchmark.PromptSpec`) and its seed (also the image seed)."""

    spec: PromptSpec
    seed: int

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    @property
    def task(self) -> str:
        return self.spec.task


def _pick(rng: np.random.Generator, options: Sequence[str], k: int) -> list[str]:
    return [str(x) for x in rng.choice(list(options), k, replace=False)]


def _phrase(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def toy_prompt(task: str, seed: int) -> ToyPrompt:
    """The prompt of ``task`` drawn from ``seed`` (deterministic: ``numpy.random.default_rng([task index, seed])``)."""
    if task not in _TASK_SALT:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if seed < 0:
        raise ValueError(f"seeds must be >= 0, got {seed}")
    rng = np.random.default_rng([_TASK_SALT[task], seed])
    if task == "negation":
        (c1,), (s1,) = _pick(rng, COLOURS, 1), _pick(rng, SHAPES, 1)
        while True:  # the excluded object differs from the wanted one (it may share its colour or its shape)
            (c2,), (s2,) = _pick(rng, COLOURS, 1), _pick(rng, SHAPES, 1)
            if (c2, s2) != (c1, s1):
                break
        spec = PromptSpec(task, f"{_phrase(c1, s1)} without {c2} {PLURAL[s2]}", (f"{c2} {s2}",))
    elif task == "numeracy":
        n = int(rng.choice(sorted(COUNT_WORDS)))
        (c,), (s,) = _pick(rng, COLOURS, 1), _pick(rng, SHAPES, 1)
        spec = PromptSpec(task, f"{COUNT_WORDS[n]} {c} {PLURAL[s]}", (f"{c} {s}",), count=n)
    elif task == "attribution":  # as the paper: two different colours and two different objects
        (c1, c2), (s1, s2) = _pick(rng, COLOURS, 2), _pick(rng, SHAPES, 2)
        p1, p2 = _phrase(c1, s1), _phrase(c2, s2)
        spec = PromptSpec(task, f"{p1} and {p2}", (p1, p2))
    else:  # spatial: two different objects, one of the paper's four relations
        l1, l2 = SPATIAL_PAIRS[int(rng.integers(len(SPATIAL_PAIRS)))]
        (c1, c2), (s1, s2) = _pick(rng, COLOURS, 2), _pick(rng, SHAPES, 2)
        if rng.random() < 0.5:  # half of the pairs share their colour or their shape, as training captions can
            if rng.random() < 0.5:
                c2 = c1
            else:
                s2 = s1
        p1, p2 = _phrase(c1, s1), _phrase(c2, s2)
        spec = PromptSpec(task, f"{p1} on the {l1} and {p2} on the {l2}", (p1, p2), relation=l1)
    return ToyPrompt(spec, int(seed))


def toy_benchmark_prompts(first_seed: int = REPORT_FIRST_SEED, n_per_task: int = 100,
                          tasks: Sequence[str] = TASKS) -> list[ToyPrompt]:
    """``n_per_task`` prompts per task, seeds ``first_seed .. first_seed + n_per_task - 1``, task by task."""
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")
    return [toy_prompt(task, first_seed + i) for task in tasks for i in range(n_per_task)]


# =============================================================================================================
# Scoring
# =============================================================================================================
def detected_objects(image: torch.Tensor | np.ndarray) -> list[tuple[str, list[int]]]:
    """The toy detector's objects as the benchmark predicates want them: ``[("a red circle", [x, y, w, h]), ...]``
    in pixels of the 512-px LLM canvas.  ``image``: ``(3, H, W)`` tensor in [0, 1] or an ``(H, W, 3)`` image."""
    return [(name, box.to_xywh(CANVAS_SIZE)) for name, box in detect_boxes(image, value_range=(0, 1))]


def score_images(prompts: Sequence[ToyPrompt], images: torch.Tensor | Sequence[torch.Tensor], method: str
                 ) -> BenchmarkResult:
    """Score ``images[i]`` against ``prompts[i]`` with the benchmark's predicates (:func:`run_benchmark`)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    by_occurrence: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):  # run_benchmark numbers repeats of a prompt 0, 1, ... in order
        k = seen.get(p.prompt, 0)
        seen[p.prompt] = k + 1
        by_occurrence[(p.prompt, k)] = i

    def objects_for(spec: PromptSpec, k: int) -> list[tuple[str, list[int]]]:
        return detected_objects(images[by_occurrence[(spec.prompt, k)]])

    return run_benchmark([p.spec for p in prompts], objects_for, "stage 2 (toy world)",
                         METHOD_NAMES.get(method, method), progress=False)


# =============================================================================================================
# Settings
# =============================================================================================================
def toy_lmd_config(pipe, settings: dict[str, Any] | None = None, steps: int | None = None) -> LMDConfig:
    """The LMD settings for a toy pipeline: ``settings`` if given, else the model folder's ``lmd_config.json``,
    else :data:`TOYWORLD_LMD_CONFIG`; ``steps`` rescales the schedule (:meth:`LMDConfig.with_steps`)."""
    if settings is not None:
        config = LMDConfig.from_dict(settings)
    else:
        folder = Path(str(getattr(pipe, "name_or_path", "") or ""))
        has_file = folder.is_dir() and (folder / "lmd_config.json").exists()
        config = LMDConfig.for_pipe(pipe) if has_file else LMDConfig.from_dict(TOYWORLD_LMD_CONFIG)
    return config.with_steps(steps) if steps else config


def merged_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; keys may be dotted (``"per_box_guidance.loss_scale"``)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = copy.deepcopy(value)
    return out


def check_toy_pipeline(pipe) -> None:
    """Refuse models the toy detector cannot score (it reads 3-channel pixel-space toy images)."""
    if not is_toyworld(pipe):
        raise ValueError("the stage-2 benchmark here needs a toy-world model (pixel space, 3 channels) whose images "
                         "the toy detector can read; scoring real models needs an open-vocabulary detector")


# =============================================================================================================
# Generation
# =============================================================================================================
@torch.no_grad()
def plain_images(pipe, prompts: Sequence[ToyPrompt], config: LMDConfig, batch_size: int = 50,
                 progress: bool = True) -> torch.Tensor:
    """Plain sampling of every prompt, ``batch_size`` prompts per UNet batch: ``(N, 3, H, W)`` in [0, 1].

    Element ``i`` starts from ``initial_noise(seed_i)`` exactly as :func:`~lmd_utils.pipeline.generate_sd` with
    that seed does (per-element generators), with the same scheduler, steps and CFG scale; the empty prompt is the
    unconditional input (no negative prompt: the paper's SD baseline reads the prompt as it is).
    """
    height, width = config.height or default_resolution(pipe)[0], config.width or default_resolution(pipe)[1]
    uncond = encode_prompts(pipe, [""])
    out = []
    with progress_bar(total=len(prompts), desc="sd", unit="img", disable=not progress) as bar:
        for lo in range(0, len(prompts), batch_size):
            chunk = prompts[lo: lo + batch_size]
            noise = initial_noise(pipe, len(chunk), height, width, [p.seed for p in chunk])
            cond = encode_prompts(pipe, [p.prompt for p in chunk])
            result = denoise(pipe, noise, cond, uncond, config.num_inference_steps, config.guidance_scale,
                             progress=False)
            out.append(decode_latents(pipe, result.latents))
            bar.update(len(chunk))
    return torch.cat(out)


#: Where the ``lmd`` method's layouts come from: ``"toy"`` (:func:`~lmd_utils.toyworld.model.toy_layout`, boxes the
#: toy model can draw) or ``"default"`` (:func:`~lmd_utils.planner.plan_layout` as for Stable Diffusion: rectangles
#: of 0.35–0.7 of the canvas, what the benchmark used before; kept to measure the difference).
LAYOUT_PLANNERS: dict[str, Callable[[str], Layout]] = {"toy": toy_layout, "default": plan_layout}


def benchmark_layout(prompt: str, planner: str = "toy") -> Layout:
    """The layout the ``lmd`` method gets for ``prompt`` (:data:`LAYOUT_PLANNERS`)."""
    if planner not in LAYOUT_PLANNERS:
        raise ValueError(f"unknown planner {planner!r}; choose from {', '.join(LAYOUT_PLANNERS)}")
    return LAYOUT_PLANNERS[planner](prompt)


def mask_backend(masks: str = "attention") -> SamBackend | None:
    """The SAM backend :func:`~lmd_utils.pipeline.generate` gets for ``masks`` (:data:`MASK_SOURCES`): the toy
    world's SAM stand-in, or ``None`` (the threshold route)."""
    if masks.startswith("segmenter+"):  # experiments: the segmenter's masks grown by N pixels ("segmenter+1")
        return FlatColourSegmenter(margin=int(masks.split("+", 1)[1]))
    if masks not in MASK_SOURCES:
        raise ValueError(f"unknown masks {masks!r}; choose from {', '.join(MASK_SOURCES)}")
    return FlatColourSegmenter() if masks == "segmenter" else None


def layout_images(pipe, prompts: Sequence[ToyPrompt], config: LMDConfig, method: str = "lmd", progress: bool = True,
                  planner: str = "toy", masks: str = "attention") -> torch.Tensor:
    """A layout-based method for every prompt: the planner's layout (:func:`benchmark_layout`), then
    :func:`~lmd_utils.pipeline.generate` (``"lmd"``, with the masks of ``masks``: :func:`mask_backend`) or a
    baseline of :data:`~lmd_utils.baselines.BASELINES` on the same layout and seed; ``(N, 3, H, W)`` in [0, 1]."""
    from ..baselines import layout_image

    sam = mask_backend(masks) if method == "lmd" else None
    make = lambda layout, seed: layout_image(pipe, method, layout, seed, config, sam=sam, progress=False)  # noqa: E731
    out = []
    bar = progress_bar(prompts, desc=method, unit="img", disable=not progress)
    start = time.perf_counter()
    for i, p in enumerate(bar, start=1):
        out.append(make(benchmark_layout(p.prompt, planner), p.seed))
        bar.set_postfix_str(f"{(time.perf_counter() - start) / i:.2f} s/img")
    return torch.stack(out)


def lmd_images(pipe, prompts: Sequence[ToyPrompt], config: LMDConfig, progress: bool = True,
               planner: str = "toy", masks: str = "attention") -> torch.Tensor:
    """:func:`layout_images` of the ``lmd`` method."""
    return layout_images(pipe, prompts, config, "lmd", progress, planner, masks)


# =============================================================================================================
# Model checks: does plain sampling draw single objects, and does each word's attention sit on its object?
# =============================================================================================================
@dataclass
class SingleObjectReport:
    """Plain sampling of single-object prompts ("a red circle"), scored by the detector.

    ``exact``: exactly one object, of the right colour and shape; ``present``: an object of the right colour and
    shape is among the detections; ``colour``: one of the right colour is.  ``attention_mass``: over the images
    where the object was found, the mean fraction of the noun's normalised cross-attention (mean over every
    layer, step and head: :meth:`~lmd_utils.attention.AttentionStore.aggregate`) that lies inside the detector's
    box for that object (:func:`~lmd_utils.attention.mass_inside_box`); ``box_area`` is the mean area of those
    boxes, the score a uniform map would get.
    """

    n: int
    exact: int
    present: int
    colour: int
    attention_mass: float
    box_area: float
    scored: int
    seconds: float

    def format(self) -> str:
        pct = lambda k: f"{100.0 * k / max(self.n, 1):.1f}%"  # noqa: E731
        return (f"single objects ({self.n} prompts, plain sampling): exactly right {pct(self.exact)}, "
                f"right colour and shape present {pct(self.present)}, right colour {pct(self.colour)}\n"
                f"attention mass of the noun inside the detected box: {100 * self.attention_mass:.1f}% "
                f"(uniform: {100 * self.box_area:.1f}%) over {self.scored} images; {self.seconds:.0f} s")


def single_object_prompts(n: int) -> list[str]:
    """``n`` single-object captions cycling through every colour × shape ("a red circle", "a red square", …)."""
    combos = [_phrase(c, s) for c in COLOURS for s in SHAPES]
    return [combos[i % len(combos)] for i in range(n)]


def single_object_check(pipe, n: int = 120, first_seed: int = REPORT_FIRST_SEED, config: LMDConfig | None = None,
                        batch_size: int = 40, progress: bool = True) -> SingleObjectReport:
    """Measure :class:`SingleObjectReport` on ``n`` prompts with seeds ``first_seed + i`` (steps and CFG scale of
    ``config``, default the toy model's calibrated settings)."""
    check_toy_pipeline(pipe)
    config = config or toy_lmd_config(pipe)
    height, width = config.height or default_resolution(pipe)[0], config.width or default_resolution(pipe)[1]
    prompts = single_object_prompts(n)
    uncond = encode_prompts(pipe, [""])
    exact = present = colour_ok = scored = 0
    masses, areas = [], []
    t0 = time.perf_counter()
    with progress_bar(total=n, desc="single objects", unit="img", disable=not progress) as bar:
        for lo in range(0, n, batch_size):
            chunk = prompts[lo: lo + batch_size]
            nouns = [word_token_indices(pipe.tokenizer, c, c, last_token_only=True)[0] for c in chunk]
            store = AttentionStore(layers=ALL_LAYERS, keep="cond", token_indices=[[t] for t in nouns])
            noise = initial_noise(pipe, len(chunk), height, width, [first_seed + lo + i for i in range(len(chunk))])
            result = denoise(pipe, noise, encode_prompts(pipe, chunk), uncond, config.num_inference_steps,
                             config.guidance_scale, attention_store=store, progress=False)
            maps = store.aggregate()[:, 0]  # (B, H, W): the noun's map
            images = decode_latents(pipe, result.latents)
            for caption, image, amap in zip(chunk, images, maps):
                want_colour, want_shape = caption.split()[1:3]
                found = detect(image, value_range=(0, 1))
                right = [d for d in found if d.colour == want_colour and d.shape == want_shape]
                exact += len(found) == 1 and bool(right)
                present += bool(right)
                colour_ok += any(d.colour == want_colour for d in found)
                if right:
                    box = max(right, key=lambda d: d.pixels).box
                    mask = box.mask(*amap.shape)
                    masses.append(float(mass_inside_box(amap, mask)))
                    areas.append(float(mask.mean()))
                    scored += 1
            bar.update(len(chunk))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return SingleObjectReport(n, exact, present, colour_ok, mean(masses), mean(areas), scored,
                              time.perf_counter() - t0)


# =============================================================================================================
# Mask check: does each per-box object fill its generation box, and does its mask cover it?
# =============================================================================================================
def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (normalised corners)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(w, 0.0) * max(h, 0.0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def per_box_object(image: torch.Tensor | np.ndarray, phrase: str) -> Detection | None:
    """The object a per-box image drew for its caption: the largest detection of the caption's colour (its shape
    may be wrong: the check is about where and how large it is), ``None`` if there is none.  ``image``: ``(3, H,
    W)`` in [0, 1] (``PerBoxResult.images``) or ``(H, W, 3)``."""
    colour, _ = parse_phrase(phrase)
    found = [d for d in detect(image, value_range=(0, 1)) if d.colour == colour]
    return max(found, key=lambda d: d.pixels) if found else None


def mask_check_prompts(n: int, first_seed: int = REPORT_FIRST_SEED) -> list[ToyPrompt]:
    """``n`` benchmark prompts, the four tasks in turn (seeds ``first_seed, first_seed, ...`` per task)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    per_task = -(-n // len(TASKS))
    by_task = [toy_benchmark_prompts(first_seed, per_task, [task]) for task in TASKS]
    return [by_task[t][i] for i in range(per_task) for t in range(len(TASKS))][:n]


@dataclass
class MaskCheckReport:
    """Per per-box object of the checked layouts: IoU of its detected box with its generation box, and IoU of the
    extracted mask (up-sampled to the image) with its detected silhouette.  An object the detector does not find
    (no blob of the caption's colour) scores 0 on both and is counted in ``missing``."""

    n_layouts: int
    box_ious: list[float]
    mask_ious: list[float]
    missing: int
    seconds: float
    masks: str = "attention"
    planner: str = "toy"

    @property
    def box_fit_iou(self) -> float:
        return float(np.mean(self.box_ious)) if self.box_ious else float("nan")

    @property
    def mask_iou(self) -> float:
        return float(np.mean(self.mask_ious)) if self.mask_ious else float("nan")

    def format(self) -> str:
        """Two lines; the last: ``masks: box fit IoU X.XX, mask IoU Y.YY (K objects)``."""
        return (f"{self.n_layouts} layouts ({self.planner} planner), masks: {self.masks}: "
                f"{self.missing} of {len(self.box_ious)} per-box objects not found by the detector (scored 0); "
                f"{self.seconds:.0f} s\n"
                f"masks: box fit IoU {self.box_fit_iou:.2f}, mask IoU {self.mask_iou:.2f} "
                f"({len(self.box_ious)} objects)")


@torch.no_grad()
def check_masks(pipe, prompts: Sequence[ToyPrompt], config: LMDConfig, planner: str = "toy",
                masks: str = "attention", progress: bool = True) -> MaskCheckReport:
    """The per-box pass and the masks of the ``lmd`` method on each prompt's layout (:func:`benchmark_layout`),
    as :func:`~lmd_utils.pipeline.generate` runs them (same seed, layout as configured, the same mask call with
    :func:`mask_backend`'s backend), scored with the toy detector: see :class:`MaskCheckReport`."""
    check_toy_pipeline(pipe)
    sam = mask_backend(masks)
    height, width = config.resolution(pipe)
    box_ious: list[float] = []
    mask_ious: list[float] = []
    missing = 0
    t0 = time.perf_counter()
    for p in progress_bar(prompts, desc="masks", unit="layout", disable=not progress):
        layout = configured_layout(benchmark_layout(p.prompt, planner), config)
        if not layout.boxes:
            continue
        shared = initial_noise(pipe, 1, height, width, p.seed)
        per_box = run_per_box(pipe, layout, p.seed, config, shared, progress=False)
        found_masks = extract_object_masks(
            per_box.mask_maps, per_box.plan.generation_boxes, tuple(shared.shape[-2:]),
            images=list(per_box.images) if sam is not None else None, backend=sam, progress=False,
            **({"rules": config.sam_rules} if sam is not None else {"method": config.mask_method}))
        for image, box, m in zip(per_box.images, per_box.plan.generation_boxes, found_masks):
            found = per_box_object(image, box.phrase)
            if found is None:
                missing += 1
                box_ious.append(0.0)
                mask_ious.append(0.0)
                continue
            silhouette = torch.from_numpy(found.silhouette)
            mask = resize_masks(m.latent_mask.cpu(), tuple(silhouette.shape), rule="nearest")
            box_ious.append(box_iou(found.box, box))
            mask_ious.append(float(mask_iou(silhouette, mask[None])[0]))
    label = masks if sam is not None else f"{masks} ({config.mask_method})"
    return MaskCheckReport(len(prompts), box_ious, mask_ious, missing, time.perf_counter() - t0, label, planner)


@dataclass
class MethodRun:
    """One method on the toy benchmark: its scores, images (``(N, 3, H, W)`` in [0, 1]), wall and CPU time.

    CPU time (this process, all threads) is what the wall time would be on an idle machine with one thread; on a
    shared machine the wall time also counts waiting for a core.
    """

    method: str
    result: BenchmarkResult
    images: torch.Tensor
    seconds: float
    cpu_seconds: float = float("nan")

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(len(self.images), 1)

    @property
    def cpu_seconds_per_image(self) -> float:
        return self.cpu_seconds / max(len(self.images), 1)

    @property
    def average(self) -> float:
        return four_task_average(self.result)


@dataclass
class ToyBenchmarkReport:
    """Every method's run on the same prompts and seeds; :meth:`format` ends with ``overall: sd X% lmd Y%``."""

    prompts: list[ToyPrompt]
    runs: dict[str, MethodRun]
    config: LMDConfig
    meta: dict[str, Any] = field(default_factory=dict)

    def format(self, show_failures: bool = False) -> str:
        lines = []
        for name, run in self.runs.items():
            if show_failures:
                for o in run.result.failures():
                    lines.append(f"FAILED [{name}] [{o.spec.task}] {o.spec.prompt}: {o.objects}")
            lines.append(f"[{name}] " + run.result.format_table())
            lines.append(f"[{name}] 4-task average {run.average:.1f}%; {run.seconds:.0f} s wall "
                         f"({run.seconds_per_image:.2f} s/image), {run.cpu_seconds:.0f} s CPU "
                         f"({run.cpu_seconds_per_image:.2f} s/image)")
            lines.append("")
        lines += self.table().splitlines()
        lines.append("overall: " + " ".join(f"{name} {run.average:.1f}%" for name, run in self.runs.items()))
        return "\n".join(lines)

    def table(self) -> str:
        """One row per method (:func:`method_table`); seconds per image are CPU time of this process, all threads:
        what one idle core would take, measured in this run."""
        return method_table((name, run.result.counts(), run.average, run.cpu_seconds_per_image)
                            for name, run in self.runs.items())


    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "prompts": [{"task": p.task, "prompt": p.prompt, "seed": p.seed} for p in self.prompts],
                "runs": {name: {**run.result.to_dict(), "average": run.average, "seconds": run.seconds,
                                "seconds_per_image": run.seconds_per_image, "cpu_seconds": run.cpu_seconds,
                                "cpu_seconds_per_image": run.cpu_seconds_per_image}
                         for name, run in self.runs.items()}}


def method_table(rows: Iterable[tuple[str, dict[str, Sequence[int]], float, float]]) -> str:
    """A header, then one row per ``(method, {task: (correct, total)}, average %, seconds per image)``: its four
    task scores, the four-task average and the seconds per image."""
    lines = [f"{'method':<18}" + "".join(f"{t:>12}" for t in TASKS) + f"{'average':>9}{'s/image':>9}"]
    for name, counts, average, seconds in rows:
        cells = "".join(f"{100.0 * counts[t][0] / counts[t][1]:>11.0f}%" if t in counts else f"{'-':>12}"
                        for t in TASKS)
        lines.append(f"{name:<18}{cells}{average:>8.1f}%{seconds:>9.2f}")
    return "\n".join(lines)


def parse_methods(methods: str | Iterable[str]) -> list[str]:
    """``"sd,lmd"`` → ``["sd", "lmd"]`` (checked, duplicates dropped)."""
    names = [m.strip().lower() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or methods!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def run_toy_benchmark(pipe, methods: str | Iterable[str] = DEFAULT_METHODS, first_seed: int = REPORT_FIRST_SEED,
                      n_per_task: int = 100, config: LMDConfig | None = None, batch_size: int = 50,
                      progress: bool = True, planner: str = "toy", masks: str = "attention") -> ToyBenchmarkReport:
    """Generate and score the toy benchmark with each method (same prompts, same seeds); ``planner``: where the
    ``lmd`` method's layouts come from (:data:`LAYOUT_PLANNERS`), ``masks``: how its masks are made
    (:data:`MASK_SOURCES`)."""
    check_toy_pipeline(pipe)
    config = config or toy_lmd_config(pipe)
    prompts = toy_benchmark_prompts(first_seed, n_per_task)
    runs: dict[str, MethodRun] = {}
    for method in parse_methods(methods):
        t0, c0 = time.perf_counter(), time.process_time()
        if method == "sd":
            images = plain_images(pipe, prompts, config, batch_size, progress)
        else:
            images = layout_images(pipe, prompts, config, method, progress, planner, masks)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs[method] = MethodRun(method, score_images(prompts, images, method), images, seconds, cpu)
    meta = {"first_seed": first_seed, "n_per_task": n_per_task, "threads": torch.get_num_threads(),
            "model": str(getattr(pipe, "name_or_path", "")), "steps": config.num_inference_steps,
            "guidance_scale": config.guidance_scale, "planner": planner, "masks": masks}
    return ToyBenchmarkReport(prompts, runs, config, meta)


# =============================================================================================================
# Calibration
# =============================================================================================================
def _both_guidance(key: str, value: Any) -> dict[str, Any]:
    return {f"per_box_guidance.{key}": value, f"overall_guidance.{key}": value}


#: The knobs :func:`calibrate` tries, one at a time, in this order; each value is a set of (dotted) overrides.
CALIBRATION_KNOBS: dict[str, list[dict[str, Any]]] = {
    "guidance_scale": [{"guidance_scale": v} for v in (3.0, 4.0, 6.0)],
    "loss_scale": [_both_guidance("loss_scale", v) for v in (10.0, 40.0, 120.0)],
    "per_box_schedule": [
        {"per_box_guidance.iterations": [1], "per_box_guidance.guidance_steps": 6},
        {"per_box_guidance.iterations": [2, 2, 1, 1, 1, 1, 1, 1], "per_box_guidance.guidance_steps": 8},
        {"per_box_guidance.iterations": [3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1], "per_box_guidance.guidance_steps": 12},
    ],
    "overall_schedule": [
        {"overall_guidance.guidance_steps": 0},
        {"overall_guidance.iterations": [1], "overall_guidance.guidance_steps": 6},
        {"overall_guidance.iterations": [2, 2, 1, 1, 1, 1, 1, 1], "overall_guidance.guidance_steps": 8},
    ],
    "loss_threshold": [_both_guidance("loss_threshold", v) for v in (0.0, 0.1, 0.3)],
    "frozen_ratio": [{"frozen_ratio": v} for v in (0.3, 0.5, 0.7)],
    "overall_prompt": [{"overall_prompt": v} for v in ("source", "authors")],
    "placement": [{"placement": v} for v in ("authors", "box")],
    "num_inference_steps": [{"num_inference_steps": v, "mask_start_step": round(v / 5)} for v in (15, 20, 25)],
    # every layer, or the encoder half only (the guidance forward then stops after the mid block: about half the
    # cost); the toy model's attention loss trained every layer to localise
    "guidance_layers": [_both_guidance("layers", list(layers)) for layers in
                        (TOYWORLD_ATTENTION_LAYERS, TOYWORLD_ENCODER_LAYERS)],
}


@dataclass
class Trial:
    """One evaluated setting: the LMD 4-task average on the calibration prompts and the CPU time per image."""

    knob: str
    overrides: dict[str, Any]
    average: float
    per_task: dict[str, float]
    seconds_per_image: float


@dataclass
class CalibrationResult:
    best: dict[str, Any]
    trials: list[Trial]

    def format(self) -> str:
        lines = [f"{'knob':<20} {'average':>8} {'cpu s/img':>9}  per task / overrides"]
        for t in self.trials:
            tasks = " ".join(f"{k[:3]} {v:.0f}" for k, v in t.per_task.items())
            lines.append(f"{t.knob:<20} {t.average:>7.1f}% {t.seconds_per_image:>9.2f}  {tasks}  "
                         f"{json.dumps(t.overrides)}")
        return "\n".join(lines)


def evaluate_settings(pipe, settings: dict[str, Any], prompts: Sequence[ToyPrompt], progress: bool = False
                      ) -> tuple[BenchmarkResult, float]:
    """LMD with ``settings`` on ``prompts``: the scores and the CPU seconds per image (see :class:`MethodRun`)."""
    config = LMDConfig.from_dict(settings)
    t0 = time.process_time()
    images = lmd_images(pipe, prompts, config, progress)
    return score_images(prompts, images, "lmd"), (time.process_time() - t0) / len(prompts)


def calibrate(pipe, base: dict[str, Any] | None = None, knobs: dict[str, list[dict[str, Any]]] | None = None,
              first_seed: int = CALIBRATION_FIRST_SEED, n_per_task: int = 12, max_seconds_per_image: float = 4.0,
              tolerance: float | None = None, progress: bool = True) -> CalibrationResult:
    """Coordinate search: for each knob in turn, try its values with the others at the best so far, and move to
    a value when it is better by more than ``tolerance`` points of the LMD 4-task average on the calibration
    prompts, or when it is clearly faster (≥ 10 % less CPU per image) and at most ``tolerance`` points worse.

    ``tolerance`` defaults to one prompt's worth (``100 / n_per_task / 4`` points): differences that small are
    noise.  Values slower than ``max_seconds_per_image`` are skipped (the benchmark's time budget).  Few prompts
    and one pass over the knobs on purpose: the toy model keeps training, and a fine grid would fit the noise of
    ~50 prompts rather than the model.
    """
    tol = 100.0 / n_per_task / len(TASKS) if tolerance is None else tolerance
    check_toy_pipeline(pipe)
    best = copy.deepcopy(base if base is not None else TOYWORLD_LMD_CONFIG)
    knobs = knobs if knobs is not None else CALIBRATION_KNOBS
    prompts = toy_benchmark_prompts(first_seed, n_per_task)
    trials: list[Trial] = []
    result, spi = evaluate_settings(pipe, best, prompts)
    current = Trial("(start)", {}, four_task_average(result), {t: result.accuracy(t) for t in TASKS}, spi)
    trials.append(current)
    total = sum(len(v) for v in knobs.values())
    bar = progress_bar(total=total, desc="calibrate", disable=not progress)
    for knob, values in knobs.items():
        for overrides in values:
            bar.update(1)
            candidate = merged_settings(best, overrides)
            if candidate == best:
                continue  # already measured: the current setting
            result, spi = evaluate_settings(pipe, candidate, prompts)
            trial = Trial(knob, overrides, four_task_average(result), {t: result.accuracy(t) for t in TASKS}, spi)
            trials.append(trial)
            bar.set_postfix_str(f"{knob}: {trial.average:.0f}% (best {current.average:.0f}%)")
            if spi > max_seconds_per_image:
                continue
            faster = spi <= 0.9 * current.seconds_per_image
            if trial.average > current.average + tol or (faster and trial.average >= current.average - tol):
                best, current = candidate, trial
    bar.close()
    return CalibrationResult(best, trials)


# =============================================================================================================
# Command line: calibration (the benchmark itself is `python -m lmd_utils benchmark stage2`)
# =============================================================================================================
def main(argv: Sequence[str] | None = None) -> int:
    from ..models import load_pipeline

    p = argparse.ArgumentParser(prog="python -m lmd_utils.toyworld.benchmark",
                                description="Calibrate the toy model's LMD settings on a held-out seed range "
                                            "(the benchmark: python -m lmd_utils benchmark stage2)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--calibrate", action="store_true", help="run the coordinate search")
    mode.add_argument("--check-model", action="store_true",
                      help="single-object accuracy of plain sampling and attention mass in the detected box")
    mode.add_argument("--check-masks", action="store_true",
                      help="per-box objects of benchmark layouts: IoU of each object's box with its generation box "
                           "and of its extracted mask with its silhouette (last line: masks: box fit IoU X, mask IoU "
                           "Y (K objects))")
    p.add_argument("--n", type=int, default=None,
                   help="--check-model: single-object prompts (default 120); --check-masks: layouts (default 40)")
    p.add_argument("--planner", choices=sorted(LAYOUT_PLANNERS), default="toy",
                   help="--check-masks: the layouts, 'toy' (what the lmd method gets) or 'default' (Stable "
                        "Diffusion's box sizes)")
    p.add_argument("--masks", choices=MASK_SOURCES, default="attention",
                   help="--check-masks: 'attention' (the threshold route, what the lmd method uses) or 'segmenter' "
                        "(the toy world's SAM stand-in)")
    p.add_argument("--mask-method", default=None,
                   help="--check-masks --masks attention: LMDConfig.mask_method (default: the model's LMD settings)")
    p.add_argument("--model", default="toyworld", help="'toyworld' or a toy-world diffusers folder")
    p.add_argument("--first-seed", type=int, default=None,
                   help=f"default: {CALIBRATION_FIRST_SEED} for --calibrate, {REPORT_FIRST_SEED} for --check-model")
    p.add_argument("--n-per-task", type=int, default=12)
    p.add_argument("--knobs", default=None, help=f"comma-separated subset of: {', '.join(CALIBRATION_KNOBS)}")
    p.add_argument("--max-seconds-per-image", type=float, default=4.0, help="CPU seconds; slower values are skipped")
    p.add_argument("--tolerance", type=float, default=None,
                   help="points of the 4-task average that count as noise (default: one prompt's worth)")
    p.add_argument("--write", type=Path, default=None, help="write the best settings as JSON here "
                                                            "(e.g. the model folder's lmd_config.json)")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    pipe = load_pipeline(args.model, device="cpu")
    if args.check_model:
        first = REPORT_FIRST_SEED if args.first_seed is None else args.first_seed
        print(single_object_check(pipe, args.n or 120, first).format())
        return 0
    if args.check_masks:
        first = REPORT_FIRST_SEED if args.first_seed is None else args.first_seed
        config = toy_lmd_config(pipe)
        if args.mask_method:
            config = replace(config, mask_method=args.mask_method)
        report = check_masks(pipe, mask_check_prompts(args.n or 40, first), config, args.planner, args.masks)
        print(report.format())
        return 0
    knobs = CALIBRATION_KNOBS
    if args.knobs:
        names = [k.strip() for k in args.knobs.split(",") if k.strip()]
        unknown = [k for k in names if k not in CALIBRATION_KNOBS]
        if unknown:
            p.error(f"unknown knobs {unknown}")
        knobs = {k: CALIBRATION_KNOBS[k] for k in names}
    base = json.loads((Path(pipe.name_or_path) / "lmd_config.json").read_text()) \
        if (Path(str(pipe.name_or_path)) / "lmd_config.json").exists() else None
    first = CALIBRATION_FIRST_SEED if args.first_seed is None else args.first_seed
    result = calibrate(pipe, base, knobs, first, args.n_per_task, args.max_seconds_per_image,
                       args.tolerance)
    print(result.format())
    text = json.dumps(result.best, indent=2)
    print(text)
    if args.write is not None:
        args.write.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


__all__ = ["ToyPrompt", "toy_prompt", "toy_benchmark_prompts", "detected_objects", "score_images",
           "four_task_average", "method_table", "SingleObjectReport", "single_object_prompts", "single_object_check",
           "toy_lmd_config", "merged_settings", "plain_images",
           "lmd_images", "layout_images", "DEFAULT_METHODS", "LAYOUT_PLANNERS", "benchmark_layout", "MASK_SOURCES", "mask_backend", "box_iou", "per_box_object", "mask_check_prompts",
           "MaskCheckReport", "check_masks", "MethodRun", "ToyBenchmarkReport", "run_toy_benchmark", "parse_methods",
           "CALIBRATION_KNOBS", "calibrate", "CalibrationResult", "Trial", "evaluate_settings", "main"]

if __name__ == "__main__":
    sys.exit(main())
