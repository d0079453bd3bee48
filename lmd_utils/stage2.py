"""Stage 2 of the LMD benchmark on a real model (paper §4, Table 2): one image per prompt and method, judged by a
detector and the four rules.

For each benchmark prompt (:func:`~lmd_utils.benchmark.benchmark_specs`, index ``i``) and each method:

1. the layout from a layout source (an LLM, a reply file such as the published GPT-3.5 replies, or the offline
   planner), asked once per prompt and saved as ``layouts/NNN.json``;
2. the image from seed ``first_seed + i`` (the authors' ``generate.py``: seed = prompt index + offset):
   ``sd`` is plain sampling of the prompt with the layout's negative prompt and the overall negative prompt (the
   authors' SD baseline), ``lmd`` is :func:`~lmd_utils.pipeline.generate`, ``backward-guidance`` and
   ``multidiffusion`` the baselines of :mod:`lmd_utils.baselines` on the same layout;
3. the detector's raw output on the image (:func:`~lmd_utils.evaluation.detect_record`) and the verdict of the
   prompt's rule (:func:`~lmd_utils.evaluation.score_record`: score ≥ 0.15, class-aware NMS at IoU 0.15).

Everything is saved as it is made, each file written whole (a temporary file, then renamed): ``METHOD/NNN.png``
and ``METHOD/NNN.json`` (prompt, seed, layout, raw detections, verdict).  A run that stops resumes where it
stopped: an image whose record exists is skipped.  Under 🤗 Accelerate (``accelerate launch -m lmd_utils benchmark
stage2 ...``) the unfinished prompts are split between the processes (one per GPU); the main process then writes
the summary from the records on disk: ``summary.json``, ``summary.png`` (accuracy per task, a bar per method),
``METHOD/detections.json`` (the raw detections in ``benchmark score-detections``' format) and the table, whose
last line is ``overall: sd X% lmd Y%`` (the four-task average of each method, in the order given).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .benchmark import TASKS, BenchmarkResult, PromptOutcome, PromptSpec, benchmark_specs, four_task_average
from .evaluation import Detector, detect_record, score_record
from .grammar import join_phrases
from .layout import Layout, LayoutError
from .llm_layouts import LayoutParseError
from .progress import progress_bar

#: Every method the benchmarks and ``generate`` can run, in the order of the paper's table: plain sampling (the
#: prompt alone), the baselines of :data:`~lmd_utils.baselines.BASELINES` on LMD's layout, then LMD and LMD+ (LMD with
#: GLIGEN; ``gligen`` and ``lmd+`` need a GLIGEN model).  (Named here,
#: not imported, so that usage errors are answered before torch loads; a test keeps the two lists in step.)
METHODS = ("sd", "multidiffusion", "backward-guidance", "boxdiff", "gligen", "lmd", "lmd+")


def parse_stage2_methods(methods: str | Sequence[str]) -> list[str]:
    """``"sd,lmd"`` → ``["sd", "lmd"]``; unknown or repeated names are a ``ValueError``."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--method takes a comma-separated list of distinct methods from {', '.join(METHODS)}; "
                         f"got {','.join(names)!r}")
    return names


def select_specs(n_per_task: int | None = None, tasks: Sequence[str] = TASKS) -> list[tuple[int, PromptSpec]]:
    """``(index, spec)`` of the benchmark prompts to run: the first ``n_per_task`` of each task (all: ``None``);
    the index is the prompt's place among the 400, so seeds and file names do not depend on the selection."""
    chosen, seen = [], {t: 0 for t in tasks}
    for i, spec in enumerate(benchmark_specs()):
        if spec.task in seen and (n_per_task is None or seen[spec.task] < n_per_task):
            chosen.append((i, spec))
            seen[spec.task] += 1
    return chosen


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: a stopped run never leaves half a file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))


@dataclass
class Stage2Run:
    """Where a stage-2 run keeps its files (see the module docstring), and which are done."""

    out: Path

    def layout_path(self, index: int) -> Path:
        return self.out / "layouts" / f"{index:03d}.json"

    def record_path(self, method: str, index: int) -> Path:
        return self.out / method / f"{index:03d}.json"

    def image_path(self, method: str, index: int) -> Path:
        return self.out / method / f"{index:03d}.png"

    def done(self, method: str, index: int) -> bool:
        return self.record_path(method, index).is_file() and self.image_path(method, index).is_file()

    def pending(self, items: Sequence[tuple[int, PromptSpec]], methods: Sequence[str]) -> list[int]:
        """Indices of the prompts with at least one method still to run."""
        return [i for i, _ in items if not all(self.done(m, i) for m in methods)]

    def layout(self, index: int, spec: PromptSpec, source, check: Callable[[Layout], Layout] | None = None
               ) -> tuple[Layout | None, str | None]:
        """The prompt's layout (saved, so a resumed run asks no LLM again) or ``(None, why)`` when the source's reply
        cannot be used or ``check`` (:func:`~lmd_utils.pipeline.check_layout` for the model) refuses it: the prompt
        then fails for every method that needs a layout, as in the paper."""
        path = self.layout_path(index)
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            return (Layout.from_dict(saved["layout"]), None) if saved["layout"] is not None else (None, saved["error"])
        try:
            layout, error = source.get_layout(spec.prompt), None
            if check is not None:
                layout = check(layout)
        except (LayoutParseError, LayoutError) as e:
            layout, error = None, str(e)
        _write_json(path, {"prompt": spec.prompt, "source": getattr(source, "name", str(source)),
                           "layout": layout.to_dict() if layout is not None else None, "error": error})
        return layout, error


def make_image(pipe, method: str, spec: PromptSpec, layout: Layout | None, seed: int, config):
    """The image ``(3, H, W)`` in [0, 1] of ``method`` for one prompt (``None`` for a layout method without a
    layout)."""
    from .baselines import layout_image
    from .pipeline import generate_sd

    if method == "sd":
        negative = join_phrases(layout.negative if layout is not None else "", config.overall_negative_prompt)
        return generate_sd(pipe, spec.prompt, seed, config, negative_prompt=negative, progress=False)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    if layout is None:
        return None
    return layout_image(pipe, method, layout, seed, config, progress=False)


def run_one(run: Stage2Run, pipe, detector: Detector, method: str, index: int, spec: PromptSpec,
            layout: Layout | None, error: str | None, seed: int, config, process: int = 0) -> dict[str, Any]:
    """Make, save, detect and judge one image; returns (and saves last, as the mark of done) its record.
    (A layout without boxes is a layout: ``len(layout) == 0`` is falsy, so only ``is None`` means "none".)"""
    from .models import to_pil

    start = time.perf_counter()
    image = make_image(pipe, method, spec, layout, seed, config)
    record: dict[str, Any] = {"index": index, "prompt": spec.prompt, "task": spec.task, "method": method,
                              "seed": seed, "layout": layout.to_dict() if layout is not None else None, "error": None}
    if image is None:
        record.update(error=f"no usable layout: {error}", success=False, objects=[], detections=None)
        _write_atomic(run.image_path(method, index), lambda p: p.write_bytes(b""))
    else:
        pil = to_pil(image[None].float().cpu())[0]
        _write_atomic(run.image_path(method, index), lambda p: pil.save(p, format="PNG"))
        detections = detect_record(detector, pil, spec)
        outcome = score_record(detections)
        record.update(success=outcome.success, objects=outcome.objects, detections=detections.to_dict())
    record["seconds"], record["process"] = round(time.perf_counter() - start, 3), process
    _write_json(run.record_path(method, index), record)
    return record


def load_records(run: Stage2Run, items: Sequence[tuple[int, PromptSpec]], methods: Sequence[str]
                 ) -> dict[str, list[dict[str, Any]]]:
    """Every method's records of ``items``, in order (a missing record is a ``FileNotFoundError``: the run is not
    finished)."""
    return {m: [json.loads(run.record_path(m, i).read_text(encoding="utf-8")) for i, _ in items] for m in methods}


def collect(run: Stage2Run, items: Sequence[tuple[int, PromptSpec]], records: dict[str, list[dict[str, Any]]],
            detector_name: str = "detector") -> dict[str, BenchmarkResult]:
    """Every method's :class:`~lmd_utils.benchmark.BenchmarkResult` from its records (:func:`load_records`)."""
    return {method: BenchmarkResult(f"stage 2 ({detector_name}) — method {method}", str(run.out), [
        PromptOutcome(spec, 0, bool(r["success"]), [(n, list(b)) for n, b in r["objects"]], r.get("error"))
        for (_, spec), r in zip(items, rows)]) for method, rows in records.items()}


def write_summary(run: Stage2Run, records: dict[str, list[dict[str, Any]]], results: dict[str, BenchmarkResult],
                  meta: dict[str, Any]) -> str:
    """``summary.json``, ``summary.png`` and each method's ``detections.json`` (for ``benchmark
    score-detections``); returns the table text, whose last line is ``overall: sd X% lmd Y%``."""
    from .viz.benchmark import plot_benchmark

    lines, methods = [], {}
    for method, result in results.items():
        rows = records[method]
        seconds = sum(r["seconds"] for r in rows) / len(rows)
        detections = [r["detections"] for r in rows if r["detections"] is not None]
        _write_json(run.out / method / "detections.json", {"method": method, "records": detections})
        methods[method] = {**result.to_dict(), "average": four_task_average(result), "seconds_per_image": seconds}
        lines.append(f"[{method}] " + result.format_table())
        lines.append(f"[{method}] 4-task average {four_task_average(result):.1f}%; {seconds:.1f} s per image")
        lines.append("")
    lines.append("overall: " + " ".join(f"{m} {four_task_average(r):.1f}%" for m, r in results.items()))
    fig = plot_benchmark(results, title=f"LMD benchmark, stage 2: {meta.get('model', '')}, "
                                        f"{meta.get('detector', '')}")
    _write_atomic(run.out / "summary.png", lambda p: fig.savefig(p, format="png", dpi=120))
    _write_json(run.out / "summary.json", {**meta, "methods": methods})
    return "\n".join(lines)


def run_stage2(pipe, detector: Detector, source, items: Sequence[tuple[int, PromptSpec]], methods: Sequence[str],
               out: str | Path, config, first_seed: int = 0, state=None, progress: bool = True,
               meta: dict[str, Any] | None = None) -> str | None:
    """Run every unfinished (prompt, method) of ``items`` and, on the main process, write the summary (its text
    is returned; other processes return ``None``).  ``state``: an ``accelerate.PartialState`` to split the
    unfinished prompts between processes (``None``: this process does them all)."""
    from .pipeline import check_layout

    run = Stage2Run(Path(out))
    check = lambda layout: check_layout(pipe, layout, config)  # noqa: E731
    if hasattr(source, "validate"):  # an LLM source: a reply stage 2 cannot run is asked again, never cached
        source.validate = check
    pending = run.pending(items, methods)
    by_index = dict(items)
    share = pending
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(pending) as mine:
            share = list(mine)
    for index in progress_bar(share, desc="stage 2", unit="prompt", disable=not progress):
        spec = by_index[index]
        layout, error = run.layout(index, spec, source, check)
        for method in methods:
            if not run.done(method, index):
                run_one(run, pipe, detector, method, index, spec, layout, error, first_seed + index, config,
                        process=0 if state is None else state.process_index)
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
    records = load_records(run, items, methods)
    results = collect(run, items, records, (meta or {}).get("detector", "detector"))
    return write_summary(run, records, results, {**(meta or {}), "first_seed": first_seed,
                                               "prompts": len(items), "methods_order": list(methods)})


__all__ = ["METHODS", "parse_stage2_methods", "select_specs", "Stage2Run", "make_image", "run_one", "load_records",
           "collect",
           "four_task_average", "write_summary", "run_stage2"]
