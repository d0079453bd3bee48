"""The methods side by side on a few prompts (notebook 08): the same layouts and seeds for plain sampling, the
baselines of :mod:`lmd_utils.baselines` and LMD; scored by the toy detector on the toy world; and the attention
that shows why per-box generation counts better than one guided pass (:func:`counting_attention`).

The measured comparison is ``python -m lmd_utils benchmark stage2 --method sd,multidiffusion,backward-guidance,boxdiff,lmd``
(:mod:`lmd_utils.toyworld.benchmark` on the toy world, :mod:`lmd_utils.stage2` on Stable Diffusion).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .benchmark import TASKS, BenchmarkResult, PromptSpec, benchmark_specs
from .layout import Box, Layout
from .models import TOYWORLD_MODEL_DIR

#: The comparison measured on the shipped toy model: ``benchmark stage2 ... --json`` of the command
#: :func:`measured_table` prints (part of the model's card, next to its weights).
TOY_COMPARISON = TOYWORLD_MODEL_DIR / "comparison.json"


@dataclass
class Comparison:
    """One prompt per task, every method's image of it (``images[method][i]``, ``(3, H, W)`` in [0, 1]).  On the
    toy world also the detector's objects (``found``), the verdicts and a :class:`BenchmarkResult` per method."""

    specs: list[PromptSpec]
    layouts: list[Layout]
    seeds: list[int]
    images: dict[str, list[torch.Tensor]]
    seconds: dict[str, float]
    found: dict[str, list[list[tuple[str, Box]]]] | None = None
    verdicts: dict[str, list[bool]] | None = None
    results: dict[str, BenchmarkResult] = field(default_factory=dict)

    @property
    def prompts(self) -> list[str]:
        return [s.prompt for s in self.specs]


def compare_methods(pipe, methods: Sequence[str], config, first_seed: int = 0, toy: bool = True,
                    only: Sequence[int] | None = None) -> Comparison:
    """Each method on one prompt per task, from the same layouts and seeds.

    ``toy``: the toy benchmark's prompts drawn from ``first_seed`` (which is also their image seed), the toy
    planner's layouts, the toy benchmark's methods (:func:`~lmd_utils.toyworld.benchmark.layout_images`), scored
    by the toy detector.  Otherwise the first prompt of each task of the 400 (of numeracy, the first that counts two
    or more), seed ``first_seed + index`` (its place among the 400), layouts
    from :func:`~lmd_utils.llm_client.resolve_source` (your LLM if configured, else the planner), images by
    :func:`~lmd_utils.stage2.make_image`, not scored (that needs OWL-ViT's weights).  ``only``: the indices of the
    prompts to run (default all four)."""
    from .toyworld.benchmark import plain_images, score_images, toy_benchmark_prompts
    from .toyworld.benchmark import layout_images, benchmark_layout
    from .toyworld.detector import detect_boxes

    keep = list(range(len(TASKS))) if only is None else list(only)
    images: dict[str, list[torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    if toy:
        prompts = [toy_benchmark_prompts(first_seed, 1)[i] for i in keep]
        specs, seeds = [p.spec for p in prompts], [p.seed for p in prompts]
        layouts = [benchmark_layout(p.prompt, "toy") for p in prompts]
        for method in methods:
            start = time.perf_counter()
            made = (plain_images(pipe, prompts, config, progress=False) if method == "sd"
                    else layout_images(pipe, prompts, config, method, progress=False))
            images[method], seconds[method] = list(made), (time.perf_counter() - start) / len(prompts)
        found = {m: [detect_boxes(im, value_range=(0, 1)) for im in ims] for m, ims in images.items()}
        results = {m: score_images(prompts, ims, m) for m, ims in images.items()}
        verdicts = {m: [o.success for o in r.outcomes] for m, r in results.items()}
        return Comparison(specs, layouts, seeds, images, seconds, found, verdicts, results)
    from .llm_client import resolve_source
    from .pipeline import check_layout
    from .stage2 import make_image

    indexed, every = [], benchmark_specs()  # the first prompt of each task (of numeracy: the first asking for two
    for task in TASKS:                      # or more)
        indexed.append(next((i, s) for i, s in enumerate(every)
                            if s.task == task and (task != "numeracy" or (s.count or 0) >= 2)))
    indexed = [indexed[i] for i in keep]
    source = resolve_source(None)[0]
    specs, seeds = [s for _, s in indexed], [first_seed + i for i, _ in indexed]
    layouts = [check_layout(pipe, source.get_layout(s.prompt), config) for s in specs]
    for method in methods:
        start = time.perf_counter()
        images[method] = [make_image(pipe, method, s, lay, seed, config) for s, lay, seed in zip(specs, layouts, seeds)]
        seconds[method] = (time.perf_counter() - start) / len(specs)
    return Comparison(specs, layouts, seeds, images, seconds)


@dataclass
class CountingAttention:
    """The attention of a counting prompt's object word: a single-pass method's one map (``single_pass``,
    ``(h, w)``, mean over steps and guidance layers; ``method`` names it) and LMD's per-box maps (``per_box``, ``(n, h, w)``, one per
    generation, on the generation boxes), with the share of each map inside one box."""

    layout: Layout
    word: str
    method: str
    single_pass: torch.Tensor
    per_box: torch.Tensor
    generation_boxes: list[Box]
    single_pass_inside: list[float]
    per_box_inside: list[float]

    @property
    def single_pass_best_box(self) -> float:
        """The largest share of the single pass's map inside any ONE of the layout's boxes."""
        return max(self.single_pass_inside)


#: The single-pass methods :func:`counting_attention` can look into (both record their pass's attention).
SINGLE_PASS_METHODS = ("boxdiff", "backward-guidance")


def counting_attention(pipe, comparison: Comparison, config, index: int | None = None,
                       method: str = "boxdiff") -> CountingAttention:
    """:class:`CountingAttention` for prompt ``index`` of ``comparison`` (default: the numeracy prompt), the single
    pass being ``method`` (:data:`SINGLE_PASS_METHODS`)."""
    from .attention import AttentionStore, default_layers, mass_inside_box
    from .baselines import BASELINES
    from .composition import overall_prompt_for, overall_token_targets
    from .pipeline import configured_layout, generate

    if index is None:
        index = next(i for i, s in enumerate(comparison.specs) if s.task == "numeracy")
    layout, seed = configured_layout(comparison.layouts[index], config), comparison.seeds[index]
    if len(layout.boxes) < 1:
        raise ValueError(f"prompt {index} has a layout without boxes")
    if method not in SINGLE_PASS_METHODS:
        raise ValueError(f"method must be one of {', '.join(SINGLE_PASS_METHODS)}, not {method!r}")
    prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
    word_index = overall_token_targets(pipe.tokenizer, layout, prompt, background_end)[0][2]
    word = pipe.tokenizer.decode([pipe.tokenizer(prompt).input_ids[word_index]]).strip()
    layers = config.overall_guidance.layers or default_layers(pipe.unet)[0]
    store = AttentionStore(layers, keep="cond", token_indices=[word_index])
    BASELINES[method](pipe, layout, seed, config, progress=False, attention_store=store)
    lmd = generate(pipe, layout, seed, config, progress=False)
    per_box = lmd.per_box.mask_maps.float().cpu()
    h, w = per_box.shape[-2:]
    single = store.aggregate(size=(h, w))[0, 0].float().cpu()
    boxes = list(lmd.per_box.plan.generation_boxes)
    inside_one = [float(mass_inside_box(single, box.mask(h, w))) for box in layout.boxes]
    per_box_inside = [float(mass_inside_box(m, box.mask(h, w))) for m, box in zip(per_box, boxes)]
    return CountingAttention(layout, word, method, single, per_box, boxes, inside_one, per_box_inside)


def measured_table(path: str | Path = TOY_COMPARISON) -> str:
    """The measured comparison (a ``benchmark stage2 --json`` file of the toy world) as text: the command that
    made it, then one row per method with its four task scores, the four-task average and the CPU seconds per
    image (one thread, measured in the same run)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    meta, runs = data["meta"], data["runs"]
    command = (f"python -m lmd_utils benchmark stage2 --model toyworld --method {','.join(runs)} "
               f"--n-per-task {meta['n_per_task']} --first-seed {meta['first_seed']}")
    from .toyworld.benchmark import method_table

    table = method_table((name, run["counts"], run["average"], run["cpu_seconds_per_image"])
                         for name, run in runs.items())
    return command + "\n" + table


__all__ = ["Comparison", "compare_methods", "CountingAttention", "SINGLE_PASS_METHODS", "counting_attention", "TOY_COMPARISON",
           "measured_table"]
