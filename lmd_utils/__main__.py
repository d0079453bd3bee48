"""Command line: ``python -m lmd_utils <command> ...`` (also installed as ``lmd``).

Commands::

    layout "PROMPT" [--out layout.png] [--source planner|llm|FILE.json] [--model M]   stage 1 for one prompt
    benchmark prompts                                                                the 400 benchmark prompts
    benchmark stage1 [--source FILE.json|planner|llm]                               stage-1 table, last line
                                                                                     "overall: N/400"
    generate "PROMPT" --model toyworld|tiny|ID|PATH --out image.png [--method lmd|sd|both]   prompt → image
    demo --out demo.png                                          offline: layout, plain and LMD images in one PNG

Adding a command: write ``add_<name>_command(subparsers)`` that adds a parser and sets
``handler=<function(args) -> int>``, then append it to :data:`COMMANDS` (or to :data:`BENCHMARK_COMMANDS` for
``benchmark <name>``).  Errors a user can fix (nothing configured, a bad file, an unreadable reply) print one
``error: ...`` line on stderr and return 1.

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

from .downloads import DownloadNotAllowed
from .layout import Layout
from .llm_client import CacheCorruptError, LLMNotConfigured, LLMRequestError, resolve_source
from .llm_layouts import LayoutParseError, MissingReplyError

#: The prompt ``demo`` draws when none is given.
DEMO_PROMPT = "A realistic photo of a scene with a gray cat on the left and two brown dogs on the right"
#: The demo prompt for the shipped toy-world model (its caption grammar).
TOY_DEMO_PROMPT = "a red circle on the left and a blue square on the right"
#: Errors that come from the user's input or set-up, reported as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    LLMNotConfigured, LLMRequestError, LayoutParseError, MissingReplyError, CacheCorruptError, FileNotFoundError,
    ValueError, DownloadNotAllowed,
)


# ------------------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------------------
def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``--source``, ``--model``, ``--base-url``, ``--cache``/``--no-cache`` (for commands that need layouts)."""
    parser.add_argument("--source", default=None,
                        help="'planner' (offline), 'llm' (OpenAI-compatible endpoint) or a reply file "
                             "{prompt: [reply, ...]}; default: the LLM if configured, else the planner")
    parser.add_argument("--model", default=None, help="LLM model name (default: $LMD_LLM_MODEL)")
    parser.add_argument("--base-url", default=None,
                        help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (default: $OPENAI_BASE_URL)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="reply cache file (default: $LMD_LLM_CACHE or ~/.cache/lmd_utils/llm_replies.json)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reply cache")


def source_from_args(args: argparse.Namespace):
    """The layout source the options name; says which on stderr."""
    cache = False if args.no_cache else args.cache
    source, note = resolve_source(args.source, model=args.model, base_url=args.base_url, cache=cache)
    print(note, file=sys.stderr)
    return source


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

    prompts = None
    if args.prompts is not None:
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
    p.add_argument("--method", choices=("lmd", "sd", "both"), default="lmd",
                   help="LMD, plain SD from the same seed, or both side by side with the layout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's LMD config)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--sam", default=None,
                   help="refine masks with SAM: a transformers id/folder (e.g. facebook/sam-vit-base) or a "
                        "segment-anything checkpoint .pth (default: thresholded attention, no SAM)")
    p.add_argument("--layout-out", type=Path, default=None, help="also save the layout as JSON")
    p.add_argument("--llm-model", dest="model", default=None, help="LLM model name for the layout (default: $LMD_LLM_MODEL)")
    add_source_options_without_model(p)
    p.set_defaults(handler=run_generate_command)


def add_source_options_without_model(parser: argparse.ArgumentParser) -> None:
    """:func:`add_source_options` minus ``--model`` (``generate`` uses ``--model`` for the diffusion model)."""
    parser.add_argument("--source", default=None,
                        help="layout source: 'planner', 'llm' or a reply file (default: the LLM if configured, "
                             "else the offline planner)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--cache", type=Path, default=None, help="LLM reply cache file")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reply cache")


def load_sam_backend(spec: str | None):
    """A SAM backend from ``--sam``: a segment-anything ``.pth`` checkpoint or a transformers model id/folder."""
    if not spec:
        return None
    from .sam import SegmentAnythingSam, TransformersSam

    if spec.endswith(".pth"):
        return SegmentAnythingSam.from_checkpoint(spec)
    return TransformersSam.from_pretrained(spec)


def run_generate_command(args: argparse.Namespace) -> int:
    from .models import load_pipeline
    from .config import LMDConfig
    from .pipeline import generate, generate_sd
    from .viz.pipeline import comparison_figure

    layout = source_from_args(args).get_layout(args.prompt)
    if args.layout_out is not None:
        layout.save(args.layout_out)
    pipe = load_pipeline(args.diffusion_model, device=args.device)
    config = LMDConfig.for_pipe(pipe)
    if args.steps is not None:
        config = config.with_steps(args.steps)
    images = {}
    if args.method in ("sd", "both"):
        images["plain SD"] = generate_sd(pipe, args.prompt, seed=args.seed, config=config,
                                         negative_prompt=layout.negative)
    if args.method in ("lmd", "both"):
        result = generate(pipe, layout, seed=args.seed, config=config, sam=load_sam_backend(args.sam))
        images["LMD"] = result.image
        print(f"LMD: {result.method}, overall prompt {result.prompt!r}, "
              f"{', '.join(f'{k} {v:.1f}s' for k, v in result.timings.items())}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.method == "both":
        comparison_figure(layout, images, seed=args.seed).savefig(args.out, dpi=120, bbox_inches="tight")
    else:
        from .models import to_pil

        to_pil(next(iter(images.values()))[None])[0].save(args.out)
    print(layout.to_json())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------------------
def add_demo_command(subparsers) -> None:
    p = subparsers.add_parser("demo", help="offline: a toy prompt → layout (planner) → plain vs LMD image, one PNG")
    p.add_argument("--out", type=Path, default=Path("demo.png"), help="output PNG (default: demo.png)")
    p.add_argument("--prompt", default=None,
                   help=f"the prompt (default: {TOY_DEMO_PROMPT!r} with the toy model, else {DEMO_PROMPT!r})")
    p.add_argument("--seed", type=int, default=0)
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

    prompt = prompt or TOY_DEMO_PROMPT
    layout = plan_layout(prompt)
    pipe = load_pipeline("toyworld", device="cpu")
    config = LMDConfig.for_pipe(pipe)
    images = {"plain sampling": generate_sd(pipe, prompt, seed=seed, config=config, negative_prompt=layout.negative),
              "LMD": generate(pipe, layout, seed=seed, config=config).image}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    comparison_figure(layout, images, seed=seed, model="toy world").savefig(out, dpi=120, bbox_inches="tight")
    return layout


def run_demo_command(args: argparse.Namespace) -> int:
    layout = run_demo(args.prompt, args.out, args.seed)
    print(layout.to_json())
    print(f"layout source: {layout.meta['source']}; wrote {args.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------------
# benchmark stage2 (the toy world: plain sampling vs LMD, scored by the toy detector)
# ------------------------------------------------------------------------------------------------------------
def add_benchmark_stage2_command(subparsers) -> None:
    p = subparsers.add_parser(
        "stage2", help="stage 2 on the toy world: plain sampling vs LMD on the four tasks, scored by the toy "
                       "detector (last line: overall: sd X%% lmd Y%%)")
    p.add_argument("--model", dest="diffusion_model", default="toyworld", metavar="MODEL",
                   help="'toyworld' (shipped) or a toy-world diffusers folder (default: %(default)s)")
    p.add_argument("--method", default="sd,lmd", help="comma-separated methods: sd, lmd (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of each task's first prompt (default: 0)")
    p.add_argument("--n-per-task", type=int, default=100, help="prompts per task (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's LMD config)")
    p.add_argument("--batch-size", type=int, default=50, help="prompts per batch of plain sampling")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--json", type=Path, default=None, help="also write scores, failures and timings as JSON")
    p.add_argument("--show-failures", action="store_true", help="list the failed prompts with their detections")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_benchmark_stage2_command)


def run_benchmark_stage2_command(args: argparse.Namespace) -> int:
    import json

    from .models import load_pipeline
    from .toyworld.benchmark import parse_methods, run_toy_benchmark, toy_lmd_config

    methods = parse_methods(args.method)  # bad names fail before the model loads
    if args.n_per_task < 1 or args.first_seed < 0:
        raise ValueError("--n-per-task must be >= 1 and --first-seed >= 0")
    pipe = load_pipeline(args.diffusion_model, device=args.device)
    config = toy_lmd_config(pipe, steps=args.steps)
    report = run_toy_benchmark(pipe, methods, args.first_seed, args.n_per_task, config, args.batch_size,
                               progress=not args.no_progress)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    print(report.format(show_failures=args.show_failures))
    return 0


BENCHMARK_COMMANDS.append(add_benchmark_stage2_command)


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
#: Top-level commands; another module's command is one more ``add_<name>_command`` in this list.
COMMANDS: list[Callable] = [add_layout_command, add_benchmark_command, add_generate_command, add_demo_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lmd_utils",
                                     description="LLM-grounded Diffusion (LMD): layouts, benchmark, demo")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 a user error, 2 bad arguments)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # draw to files, never open a window
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on bad arguments
        return int(e.code or 0)
    try:
        return int(args.handler(args))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
