"""Command line: ``python -m lmd_utils <command> ...`` (also installed as ``lmd``).

Commands::

    layout "PROMPT" [--out layout.png] [--source planner|llm|FILE.json] [--llm-model M]   stage 1 for one prompt
    benchmark prompts                                                                the 400 benchmark prompts
    benchmark stage1 [--source FILE.json|planner|llm]                               stage-1 table, last line
                                                                                     "overall: N/400"
    benchmark stage2 [--model toyworld|tiny|ID|PATH] [--method sd,lmd] [--out DIR]  stage 2: toy world (toy detector)
                                                     or the 400 prompts on a real model (OWL-ViT), resumable
    benchmark score-detections FILE.json          raw detector output → the paper's verdicts, last "overall: N/M"
    generate "PROMPT" --model toyworld|tiny|ID|PATH --out image.png [--method lmd|sd|both|boxdiff|...]
    demo --out demo.png                                          offline: layout, plain and LMD images in one PNG

Adding a command: write ``add_<name>_command(subparsers)`` that adds a parser and sets
``handler=<function(args) -> int>``, then append it to :data:`COMMANDS` (or to :data:`BENCHMARK_COMMANDS` for
``benchmark <name>``).  Every mistake a user can fix ends in ONE ``error: ...`` line on stderr, no traceback:
status 2 for a usage error (a bad argument, an output path that cannot be written, a device this machine lacks),
found before any model loads or any LLM is asked; status 1 for a failure while working (an LLM endpoint that fails,
a reply or layout that cannot be used, a model folder that cannot be loaded).  The library raises typed exceptions
(:data:`~lmd_utils.cli.USER_ERRORS`); :func:`main` turns them into that line.  The argument types and checks, the
layout-source options and the error line live in :mod:`lmd_utils.cli`.

The commands that run a model import the model stack (``models``, ``pipeline``, ``viz``: diffusers, transformers,
matplotlib) inside their handlers, so that ``layout`` and ``benchmark prompts`` start without loading it; that is the
one place in the package where sibling imports sit inside functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .cli import (FIGURE_SUFFIXES, IMAGE_SUFFIXES, MAX_ERROR_CHARS, MAX_STEPS, USER_ERRORS, UsageError,  # noqa: F401
                  _Parser, _fraction_arg, _scale_arg, add_source_options, add_source_options_without_model,
                  check_device_arg, check_output_path, check_source_args, check_text_args, one_line, positive_arg,
                  seconds_arg, seed_arg, source_from_args, steps_arg, viewing_scale)
from .downloads import local_model_folder
from .layout import Layout
from .stage2 import METHODS

#: The prompt ``demo`` draws when none is given.
DEMO_PROMPT = "A realistic photo of a scene with a gray cat on the left and two brown dogs on the right"
#: The demo prompt for the shipped toy-world model (its caption grammar).
TOY_DEMO_PROMPT = "a red circle on the left and a blue square on the right"
def _title(layout: Layout) -> str:
    lines = [layout.prompt[:70] + ("…" if len(layout.prompt) > 70 else ""), f"background: {layout.background}"]
    if layout.negative:
        lines.append(f"negative: {layout.negative}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------------------
def add_layout_command(subparsers) -> None:
    p = subparsers.add_parser("layout", help="stage 1: turn a prompt into a layout (JSON on stdout)")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--out", type=Path, default=None, help="also draw the layout to this PNG")
    add_source_options(p)
    p.set_defaults(handler=run_layout_command)


def run_layout_command(args: argparse.Namespace) -> int:
    check_output_path(args.out, "--out", FIGURE_SUFFIXES)
    check_source_args(args)
    layout = source_from_args(args).get_layout(args.prompt)
    print(layout.to_json())
    if args.out is not None:
        from .viz.layout import save_layout_png

        print(f"wrote {save_layout_png(layout, args.out, title=_title(layout))}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------------
# benchmark prompts | stage1
# ------------------------------------------------------------------------------------------------------------
def add_benchmark_prompts_command(subparsers) -> None:
    p = subparsers.add_parser("prompts", help="print the 400 LMD benchmark prompts, one per line")
    p.set_defaults(handler=run_benchmark_prompts_command)


def run_benchmark_prompts_command(args: argparse.Namespace) -> int:
    from .benchmark import benchmark_prompts

    print("\n".join(benchmark_prompts()))
    return 0


def add_benchmark_stage1_command(subparsers) -> None:
    p = subparsers.add_parser("stage1", help="score layouts on the benchmark (last line: overall: N/400)")
    add_source_options(p)
    p.add_argument("--prompts", type=Path, default=None, help="a file of benchmark-grammar prompts, one per line")
    p.add_argument("--show-failures", action="store_true", help="list the failed prompts before the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_benchmark_stage1_command)


def run_benchmark_stage1_command(args: argparse.Namespace) -> int:
    from .benchmark import evaluate_stage1

    check_source_args(args)
    prompts = None
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise UsageError(f"--prompts {str(args.prompts)[:80]!r} is not a file")
        prompts = [line for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    result = evaluate_stage1(source_from_args(args), prompts=prompts, progress=not args.no_progress)
    if args.show_failures:
        for o in result.failures():
            print(f"FAILED [{o.spec.task}] {o.spec.prompt} (sample {o.sample}): {o.error or o.objects}")
    print(result.format_table())
    return 0


#: ``benchmark <name>`` subcommands; a stage-2 evaluator appends its ``add_..._command`` here.
BENCHMARK_COMMANDS: list[Callable] = [add_benchmark_prompts_command, add_benchmark_stage1_command]


def add_benchmark_command(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="the LMD benchmark (prompts, stage-1 scores)")
    sub = p.add_subparsers(dest="benchmark_command", required=True)
    for add in BENCHMARK_COMMANDS:
        add(sub)


# ------------------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------------------
def add_generate_command(subparsers) -> None:
    p = subparsers.add_parser("generate", help="stage 1 + stage 2: prompt → layout → image")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--model", dest="diffusion_model", default="toyworld",
                   help="'toyworld' (shipped, CPU), 'tiny' (random weights, wiring only), a hub id such as "
                        "stable-diffusion-v1-5/stable-diffusion-v1-5, or a local diffusers folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="output PNG (default: %(default)s)")
    p.add_argument("--method", choices=("lmd", "sd", "both", *[m for m in METHODS if m not in ("sd", "lmd")]),
                   default="lmd",
                   help="LMD, plain sampling from the same seed, both side by side with the layout, or a baseline "
                        "on the same layout (lmd_utils.baselines)")
    p.add_argument("--seed", type=seed_arg, default=0, help="0 .. 2**64-1 (default: 0)")
    p.add_argument("--steps", type=steps_arg, default=None, help="denoising steps (default: the model's LMD config)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--sam", default=None,
                   help="refine masks with SAM: a transformers id/folder (e.g. facebook/sam-vit-base) or a "
                        "segment-anything checkpoint .pth, read with torch.load(weights_only=True): tensors only, "
                        "no pickled code (default: thresholded attention, no SAM)")
    p.add_argument("--layout-out", type=Path, default=None, help="also save the layout as JSON")
    p.add_argument("--scale", type=_scale_arg, default=None,
                   help="enlarge the image N times, nearest neighbour (default: small images such as the toy "
                        "world's 32×32 grow to at least 256 px for viewing; --scale 1 keeps the exact pixels)")
    p.add_argument("--llm-model", dest="model", default=None, help="LLM model name for the layout (default: $LMD_LLM_MODEL)")
    add_source_options_without_model(p)
    p.set_defaults(handler=run_generate_command)


def load_sam_backend(spec: str | None):
    """A SAM backend from ``--sam``: a segment-anything ``.pth`` checkpoint or a transformers model id/folder."""
    if not spec:
        return None
    from .sam import SegmentAnythingSam, TransformersSam

    if spec.endswith(".pth"):
        return SegmentAnythingSam.from_checkpoint(spec)
    return TransformersSam.from_pretrained(spec)


def run_generate_command(args: argparse.Namespace) -> int:
    # 0. everything a user can get wrong, before any model loads or any LLM is asked
    check_output_path(args.out, "--out", FIGURE_SUFFIXES if args.method == "both" else IMAGE_SUFFIXES)
    check_output_path(args.layout_out, "--layout-out", (".json",))
    check_source_args(args)
    check_device_arg(args.device)
    if args.sam and args.sam.endswith(".pth") and not Path(args.sam).is_file():
        raise UsageError(f"--sam {args.sam[:80]!r}: no such checkpoint file")
    if args.diffusion_model not in ("tiny", "toyworld"):
        local_model_folder(args.diffusion_model)  # a folder that holds no pipeline fails here, in a second

    from .baselines import check_methods
    from .config import LMDConfig
    from .models import load_pipeline, to_pil
    from .pipeline import check_layout, generate, generate_sd
    from .planner import OfflinePlanner
    from .toyworld.model import is_toyworld, toy_planner
    from .viz.pipeline import comparison_figure

    # 1. the layout source, the model, then the layout (checked against the model before an LLM reply is cached)
    source = source_from_args(args)
    pipe = load_pipeline(args.diffusion_model, device=args.device)
    check_methods(pipe, [args.method])  # GLIGEN and LMD+ need a GLIGEN model
    config = LMDConfig.for_pipe(pipe)
    if args.steps is not None:
        config = config.with_steps(args.steps)
    toy = is_toyworld(pipe)
    if toy and isinstance(source, OfflinePlanner) and source.limits is None:
        source = toy_planner(config)  # boxes the toy model can draw, its background, unknown words named
    sam = load_sam_backend(args.sam)
    if hasattr(source, "validate"):  # an LLM source: a reply stage 2 cannot run is asked again, never cached
        source.validate = lambda candidate: check_layout(pipe, candidate, config)
    layout = check_layout(pipe, source.get_layout(args.prompt), config)
    if args.layout_out is not None:
        layout.save(args.layout_out)
    # 2. the images
    images = {}
    if args.method in ("sd", "both"):
        images["plain sampling"] = generate_sd(pipe, args.prompt, seed=args.seed, config=config,
                                               negative_prompt=layout.negative)
    if args.method not in ("lmd", "sd", "both"):
        from .baselines import layout_image

        images[args.method] = layout_image(pipe, args.method, layout, args.seed, config, sam=sam)
    if args.method in ("lmd", "both"):
        result = generate(pipe, layout, seed=args.seed, config=config, sam=sam)
        images["LMD"] = result.image
        print(f"LMD: {result.method}, overall prompt {result.prompt!r}, "
              f"{', '.join(f'{k} {v:.1f}s' for k, v in result.timings.items())}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.method == "both":
        verdicts = toy_verdicts(layout, images) if toy else None
        comparison_figure(layout, images, seed=args.seed, verdicts=verdicts).savefig(args.out, dpi=120,
                                                                                     bbox_inches="tight")
        note = ""
    else:
        from PIL import Image

        image = to_pil(next(iter(images.values()))[None])[0]
        factor = viewing_scale(min(image.size), args.scale)
        note = f" ({image.width}×{image.height} pixels shown {factor}× larger, nearest neighbour; --scale 1 " \
               "keeps the exact pixels)" if factor > 1 else ""
        image.resize((image.width * factor, image.height * factor), Image.NEAREST).save(args.out)
    print(layout.to_json())
    print(f"wrote {args.out}{note}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------------------
def add_demo_command(subparsers) -> None:
    p = subparsers.add_parser("demo", help="offline: a toy prompt → layout (planner) → plain vs LMD image, one PNG")
    p.add_argument("--out", type=Path, default=Path("demo.png"), help="output PNG (default: demo.png)")
    p.add_argument("--prompt", default=None,
                   help=f"the prompt (default: {TOY_DEMO_PROMPT!r} with the toy model, else {DEMO_PROMPT!r})")
    p.add_argument("--seed", type=seed_arg, default=0, help="0 .. 2**64-1 (default: 0)")
    p.set_defaults(handler=run_demo_command)


def run_demo(prompt: str | None = None, out: str | Path = "demo.png", seed: int = 0) -> Layout:
    """The offline demo: the planner's layout for ``prompt``, then, with the shipped toy model, the plain-sampling
    image and the LMD image from the same seed, side by side with the layout in one picture.  Without the toy
    model (a checkout that has not trained it yet) only the layout is drawn."""
    from .models import TOYWORLD_MODEL_DIR
    from .planner import plan_layout
    from .viz.layout import save_layout_png

    if not (TOYWORLD_MODEL_DIR / "model_index.json").exists():
        layout = plan_layout(prompt or DEMO_PROMPT)
        print(f"no toy model at {TOYWORLD_MODEL_DIR}: drawing the layout only", file=sys.stderr)
        save_layout_png(layout, out, title=f"layout by the {layout.meta['source']}\n" + _title(layout))
        return layout
    from .models import load_pipeline
    from .config import LMDConfig
    from .pipeline import generate, generate_sd
    from .viz.pipeline import comparison_figure

    from .toyworld.model import toy_layout

    prompt = prompt or TOY_DEMO_PROMPT
    pipe = load_pipeline("toyworld", device="cpu")
    config = LMDConfig.for_pipe(pipe)
    layout = toy_layout(prompt, config)  # boxes the toy model can draw, its background, unknown words named
    images = {"plain sampling": generate_sd(pipe, prompt, seed=seed, config=config, negative_prompt=layout.negative),
              "LMD": generate(pipe, layout, seed=seed, config=config).image}
    verdicts = toy_verdicts(layout, images)
    for name, (ok, text) in verdicts.items():
        print(f"{name}: {text}", file=sys.stderr)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    comparison_figure(layout, images, seed=seed, model="toy world", verdicts=verdicts).savefig(
        out, dpi=120, bbox_inches="tight")
    return layout


def toy_verdicts(layout: Layout, images: dict) -> dict[str, tuple[bool, str]]:
    """Per image, the toy detector's verdict on whether it shows ``layout`` (exact on toy-world images)."""
    from .benchmark import layout_verdict
    from .toyworld.benchmark import detected_objects

    return {name: layout_verdict(layout, detected_objects(image)) for name, image in images.items()}


def run_demo_command(args: argparse.Namespace) -> int:
    check_output_path(args.out, "--out", FIGURE_SUFFIXES)
    layout = run_demo(args.prompt, args.out, args.seed)
    print(layout.to_json())
    print(f"layout source: {layout.meta['source']}; wrote {args.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------------
# benchmark stage2 (toy world: toy prompts and detector, lmd_utils.toyworld.benchmark; any other model: the 400
# prompts, layouts from a source, OWL-ViT/OWLv2, saved as it goes, lmd_utils.stage2)
# ------------------------------------------------------------------------------------------------------------
def add_benchmark_stage2_command(subparsers) -> None:
    p = subparsers.add_parser(
        "stage2", help="stage 2: plain sampling vs LMD on the four tasks, scored by a detector (last line: "
                       "overall: sd X%% lmd Y%%); the toy world with its exact detector, or a real model on the "
                       "400 prompts with OWL-ViT, resumable, sharded with accelerate launch")
    p.add_argument("--model", dest="diffusion_model", default="toyworld", metavar="MODEL",
                   help="'toyworld' (shipped), a toy-world folder, 'tiny', or a Stable Diffusion hub id or folder "
                        "(default: %(default)s)")
    p.add_argument("--method", default="sd,lmd",
                   help="comma-separated methods, run on the same layouts and seeds: " + ", ".join(METHODS)
                        + " (default: %(default)s)")
    p.add_argument("--first-seed", type=seed_arg, default=0,
                   help="toy world: seed of each task's first prompt; real models: prompt i uses seed FIRST+i "
                        "(default: 0)")
    p.add_argument("--n-per-task", type=positive_arg, default=100, help="prompts per task (default: %(default)s)")
    p.add_argument("--steps", type=steps_arg, default=None, help="denoising steps (default: the model's LMD config)")
    p.add_argument("--batch-size", type=positive_arg, default=50, help="toy world: prompts per batch of plain "
                                                                        "sampling")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: cpu for the toy world, else the "
                                                  "best here; under accelerate launch each process its own)")
    p.add_argument("--detector", choices=("owlvit", "owlv2", "toy"), default=None,
                   help="real models: owlvit (the paper's, default) or owlv2; the toy world uses its exact detector")
    p.add_argument("--detector-model", default=None, metavar="ID_OR_FOLDER",
                   help="the detector checkpoint (default: google/owlvit-base-patch32 or the OWLv2 ensemble)")
    p.add_argument("--out", type=Path, default=None,
                   help="real models: the run folder (images, layouts, detections, verdicts, summary); a re-run "
                        "resumes (default: runs/stage2)")
    p.add_argument("--llm-model", dest="model", default=None, help="LLM model name for the layouts")
    add_source_options_without_model(p)
    p.add_argument("--json", type=Path, default=None, help="toy world: also write scores, failures and timings")
    p.add_argument("--show-failures", action="store_true", help="list the failed prompts with their detections")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_benchmark_stage2_command)


def run_benchmark_stage2_command(args: argparse.Namespace) -> int:
    from .notebook import model_kind

    if model_kind(args.diffusion_model) != "toy":
        return run_real_stage2(args)
    import json

    from .baselines import check_methods
    from .models import load_pipeline
    from .toyworld.benchmark import parse_methods, run_toy_benchmark, toy_lmd_config

    try:
        methods = parse_methods(args.method)  # bad names fail before the model loads
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.detector not in (None, "toy"):
        raise UsageError(f"--detector {args.detector}: the toy world is scored by its exact detector ('toy')")
    check_output_path(args.json, "--json", (".json",))
    check_device_arg(args.device or "cpu")
    pipe = load_pipeline(args.diffusion_model, device=args.device or "cpu")
    check_methods(pipe, methods)  # the toy model has no GLIGEN layers
    config = toy_lmd_config(pipe, steps=args.steps)
    report = run_toy_benchmark(pipe, methods, args.first_seed, args.n_per_task, config, args.batch_size,
                               progress=not args.no_progress)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    print(report.format(show_failures=args.show_failures))
    return 0


def run_real_stage2(args: argparse.Namespace) -> int:
    """The 400-prompt benchmark on a real (or tiny) model: :mod:`lmd_utils.stage2`."""
    from .stage2 import parse_stage2_methods, run_stage2, select_specs

    try:
        methods = parse_stage2_methods(args.method)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.detector == "toy":
        raise UsageError("--detector toy reads only toy-world images; use owlvit or owlv2")
    out = args.out or Path("runs/stage2")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)[:80]!r} is a file, not a folder")
    check_output_path(out / "summary.json", "--out")  # the run folder can be made and written, before any model
    check_source_args(args)
    if args.device is not None:
        check_device_arg(args.device)
    if args.diffusion_model != "tiny":
        local_model_folder(args.diffusion_model)
    from accelerate import PartialState

    from .baselines import check_methods
    from .config import LMDConfig
    from .evaluation import load_detector
    from .models import load_pipeline

    import torch

    # on a machine without CUDA, processes started by `accelerate launch --multi_gpu` share the work only as CPU
    # processes (gloo); without cpu=True each would run everything alone
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = state.device if state.num_processes > 1 or args.device is None else args.device
    source = source_from_args(args)
    pipe = load_pipeline(args.diffusion_model, device=device)
    check_methods(pipe, methods)  # GLIGEN and LMD+ need a GLIGEN model: before the detector loads
    detector = load_detector(args.detector or "owlvit", args.detector_model, device=device)
    config = LMDConfig.for_pipe(pipe)
    if args.steps is not None:
        config = config.with_steps(args.steps)
    items = select_specs(args.n_per_task)
    meta = {"model": args.diffusion_model, "detector": args.detector or "owlvit", "source": source.name}
    text = run_stage2(pipe, detector, source, items, methods, out, config, args.first_seed, state,
                      progress=not args.no_progress and state.is_main_process, meta=meta)
    if text is not None:
        if args.show_failures:
            import json

            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            for method, result in summary["methods"].items():
                for f in result["failures"]:
                    found = f["error"] or [(name, [round(v, 1) for v in box]) for name, box in f["objects"]]
                    print(one_line(f"FAILED [{method}] {f['prompt']}: {found}", 2000))
        print(f"wrote {out}/summary.png, {out}/summary.json", file=sys.stderr)
        print(text)
    return 0


# ------------------------------------------------------------------------------------------------------------
# benchmark score-detections (raw detector output → the paper's verdicts; lmd_utils.evaluation)
# ------------------------------------------------------------------------------------------------------------
def add_benchmark_score_detections_command(subparsers) -> None:
    p = subparsers.add_parser(
        "score-detections", help="score raw detector output (JSON) the paper's way: score >= 0.15, class-aware NMS "
                                 "at IoU 0.15, the four rules (last line: overall: N/M)")
    p.add_argument("file", type=Path,
                   help='{"records": [{"prompt", "width", "height", "queries", "boxes", "scores", "labels"}, ...]}: '
                        "per image the detector's raw output before thresholding and NMS (boxes in pixels "
                        "[x0, y0, x1, y1], labels index queries)")
    p.add_argument("--score-threshold", type=_fraction_arg, default=None, help="keep scores >= this (default: 0.15)")
    p.add_argument("--nms-iou", type=_fraction_arg, default=None,
                   help="NMS drops a box whose IoU with a kept one is >= this (default: 0.15)")
    p.add_argument("--class-agnostic", action="store_true",
                   help="NMS across labels (the authors' script default) instead of per label (the paper's)")
    p.add_argument("--show-failures", action="store_true", help="list the failed records with their kept boxes")
    p.add_argument("--json", type=Path, default=None, help="also write scores and failures as JSON")
    p.set_defaults(handler=run_benchmark_score_detections_command)


def run_benchmark_score_detections_command(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise UsageError(f"{str(args.file)[:80]!r} is not a file")
    check_output_path(args.json, "--json", (".json",))
    import json

    from .evaluation import NMS_IOU, SCORE_THRESHOLD, score_detections_file

    result = score_detections_file(
        args.file, score_threshold=SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold,
        nms_iou=NMS_IOU if args.nms_iou is None else args.nms_iou, class_aware=not args.class_agnostic)
    if args.show_failures:
        for o in result.failures():
            kept = [(name, [round(v, 1) for v in box]) for name, box in o.objects]
            print(one_line(f"FAILED [{o.spec.task}] {o.spec.prompt} (sample {o.sample}): {kept}", 2000))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    print(result.format_table())
    return 0


BENCHMARK_COMMANDS.append(add_benchmark_stage2_command)
BENCHMARK_COMMANDS.append(add_benchmark_score_detections_command)


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
#: Top-level commands; another module's command is one more ``add_<name>_command`` in this list.
COMMANDS: list[Callable] = [add_layout_command, add_benchmark_command, add_generate_command, add_demo_command]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lmd_utils", description="LLM-grounded Diffusion (LMD): layouts, benchmark, demo")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 a failure while working, 2 a usage error)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # draw to files, never open a window
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on bad arguments
        return int(e.code or 0)
    try:
        check_text_args(args)
        return int(args.handler(args))
    except UsageError as e:
        print(one_line(f"error: {e}"), file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(one_line(f"error: {e}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
