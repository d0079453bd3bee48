"""Command line: ``python -m lmd_utils <command> ...`` (also installed as ``lmd``).

Commands::

    layout "PROMPT" [--out layout.png] [--source planner|llm|FILE.json] [--model M]   stage 1 for one prompt
    benchmark prompts                                                                the 400 benchmark prompts
    benchmark stage1 [--source FILE.json|planner|llm]                               stage-1 table, last line
                                                                                     "overall: N/400"
    demo --out demo.png                                                              a layout drawn to a PNG

Adding a command: write ``add_<name>_command(subparsers)`` that adds a parser and sets
``handler=<function(args) -> int>``, then append it to :data:`COMMANDS` (or to :data:`BENCHMARK_COMMANDS` for
``benchmark <name>``).  Errors a user can fix (nothing configured, a bad file, an unreadable reply) print one
``error: ...`` line on stderr and return 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .layout import Layout
from .llm_layouts import (
    CacheCorruptError,
    LayoutParseError,
    LLMNotConfigured,
    LLMRequestError,
    MissingReplyError,
    resolve_source,
)

#: The prompt ``demo`` draws when none is given.
DEMO_PROMPT = "A realistic photo of a scene with a gray cat on the left and two brown dogs on the right"
#: Errors that come from the user's input or set-up, reported as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    LLMNotConfigured, LLMRequestError, LayoutParseError, MissingReplyError, CacheCorruptError, FileNotFoundError,
    ValueError,
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


def save_layout_png(layout: Layout, out: str | Path, title: str | None = None) -> Path:
    """Draw ``layout`` (boxes on a blank 512×512 canvas) to a PNG without touching pyplot's global state."""
    from matplotlib.figure import Figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    layout.draw(ax=ax, title=title if title is not None else _title(layout))
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out


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
        print(f"wrote {save_layout_png(layout, args.out)}", file=sys.stderr)
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
# demo
# ------------------------------------------------------------------------------------------------------------
def add_demo_command(subparsers) -> None:
    p = subparsers.add_parser("demo", help="draw the offline planner's layout of a default prompt to a PNG")
    p.add_argument("--out", type=Path, default=Path("demo.png"), help="output PNG (default: demo.png)")
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the prompt (default: %(default)r)")
    p.set_defaults(handler=run_demo_command)


def run_demo(prompt: str = DEMO_PROMPT, out: str | Path = "demo.png") -> Layout:
    """The demo: the offline planner's layout for ``prompt``, drawn to ``out``.  Stage 2 extends this to
    generate an image from the layout."""
    from .planner import plan_layout

    layout = plan_layout(prompt)
    save_layout_png(layout, out, title=f"layout by the {layout.meta['source']}\n" + _title(layout))
    return layout


def run_demo_command(args: argparse.Namespace) -> int:
    layout = run_demo(args.prompt, args.out)
    print(layout.to_json())
    print(f"layout source: {layout.meta['source']}; wrote {args.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
#: Top-level commands; another module's command is one more ``add_<name>_command`` in this list.
COMMANDS: list[Callable] = [add_layout_command, add_benchmark_command, add_demo_command]


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
