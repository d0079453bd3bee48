"""The command line's shared parts: argument types and checks, the layout-source options, the error line.

Every check here runs before any model loads or any LLM is asked, so a typo costs seconds; each failure is a
:class:`UsageError` (status 2).  :data:`USER_ERRORS` are the typed exceptions of the library that
:func:`lmd_utils.__main__.main` turns into one ``error: ...`` line (status 1).  Light imports only (no diffusers):
``python -m lmd_utils layout`` must start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .downloads import DownloadNotAllowed
from .llm_client import CacheCorruptError, LLMNotConfigured, LLMRequestError, resolve_source
from .layout import LayoutError
from .llm_layouts import LayoutParseError, MissingReplyError

#: Errors that come from the user's input or set-up, reported as one line instead of a traceback.
#: (``OSError`` covers unreadable or unwritable files, a model folder diffusers cannot load and a download that
#: is not allowed; ``RuntimeError`` is not in the list: there it would hide our own bugs.)
USER_ERRORS: tuple[type[BaseException], ...] = (
    LLMNotConfigured, LLMRequestError, LayoutParseError, LayoutError, MissingReplyError, CacheCorruptError,
    ValueError, OSError, DownloadNotAllowed,
)
#: Longest ``error:`` line (a 100 KB prompt quoted in a message must not flood the terminal).
MAX_ERROR_CHARS = 500
#: What ``--out`` may end with: images (PIL and matplotlib write these) and, for figures, vector formats.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FIGURE_SUFFIXES = IMAGE_SUFFIXES + (".pdf", ".svg")
#: Most denoising steps (the schedulers' 1000 training timesteps).
MAX_STEPS = 1000


class UsageError(ValueError):
    """A bad argument, found before any work (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with our error line: ``error: <message> (see <command> --help)``, status 2, no usage block."""

    def error(self, message: str):
        print(one_line(f"error: {message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(2)


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``message`` on one line, at most ``limit`` characters (cut in the middle with "…")."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 40] + " … " + text[-37:]


# ------------------------------------------------------------------------------------------------------------
# Checking arguments before any work
# ------------------------------------------------------------------------------------------------------------
def seed_arg(text: str) -> int:
    """argparse type: an integer seed in 0 .. 2**64-1 (what a torch generator takes, ``models.MAX_SEED``)."""
    return _int_in(text, 0, 2 ** 64 - 1, "a seed")


def _int_in(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{what} must be from {lo} to {hi}, not {text[:40]}")
    return value


def steps_arg(text: str) -> int:
    """argparse type: denoising steps, 1 .. :data:`MAX_STEPS`."""
    return _int_in(text, 1, MAX_STEPS, "the number of steps")


def _scale_arg(text: str) -> int:
    return _int_in(text, 1, 64, "the scale")


def viewing_scale(size: int, scale: int | None = None, min_side: int = 256) -> int:
    """How many times to enlarge a ``size``-pixel image for viewing: ``scale`` if given, else the smallest
    integer that brings it to ``min_side`` pixels (1 for images that are big enough)."""
    return scale if scale is not None else max(1, -(-min_side // max(size, 1)))


def positive_arg(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_in(text, 1, 10 ** 6, "the number")


def seconds_arg(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds must be a number, not {text[:40]!r}") from None
    if not 0 < value <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"seconds must be > 0 and at most a day, not {text[:40]}")
    return value


def check_output_path(path: Path | None, option: str, suffixes: Sequence[str] | None = None) -> None:
    """:class:`UsageError` unless ``path`` can be written: a file name (not a folder) with one of ``suffixes``,
    under a folder that exists or can be made, where we may create files.  Runs before any model loads, so a
    typo costs seconds, not a finished generation."""
    if path is None:
        return
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {str(path)[:80]!r} must end with one of {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{option} {str(path)[:80]!r} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {str(path)[:80]!r} exists and cannot be overwritten")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {str(path)[:80]!r}: {str(folder)[:80]!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{option} {str(path)[:80]!r}: cannot write in {str(folder)[:80]!r} ({e.strerror})") from None


def check_text_args(args: argparse.Namespace) -> None:
    """:class:`UsageError` for a text argument that is not valid UTF-8 (a terminal in another encoding: Python
    hands such bytes over as lone surrogates, which the tokenizers cannot read)."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                option = "the prompt" if name == "prompt" else f"--{name.replace('_', '-')}"
                raise UsageError(f"{option} is not valid UTF-8 text (check the terminal's encoding)") from None


def check_device_arg(device: str | None) -> None:
    """:class:`UsageError` for a ``--device`` this machine does not have (before a model loads)."""
    if device is None:
        return
    from .models import DeviceNotAvailable, pick_device

    try:
        pick_device(device)
    except (ValueError, DeviceNotAvailable) as e:
        raise UsageError(str(e)) from None


# ------------------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------------------
def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``--source``, ``--model``, ``--base-url``, ``--cache``/``--no-cache`` (for commands that need layouts)."""
    parser.add_argument("--source", default=None,
                        help="'planner' (offline), 'llm' (OpenAI-compatible endpoint) or a reply file "
                             "{prompt: [reply, ...]}; default: the LLM if configured, else the planner")
    parser.add_argument("--llm-model", "--model", dest="model", default=None,
                        help="LLM model name (default: $LMD_LLM_MODEL; --model is an older spelling)")
    parser.add_argument("--base-url", default=None,
                        help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (default: $OPENAI_BASE_URL)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="reply cache file (default: $LMD_LLM_CACHE or ~/.cache/lmd_utils/llm_replies.json)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reply cache")
    add_llm_timeout_option(parser)


def add_llm_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm-timeout", type=seconds_arg, default=None, metavar="SECONDS",
                        help="most seconds one try of an LLM request may take in all, however slowly the server sends "
                             "(default: 60; failed tries are retried twice)")


def source_from_args(args: argparse.Namespace):
    """The layout source the options name; says which on stderr."""
    cache = False if args.no_cache else args.cache
    source, note = resolve_source(args.source, model=args.model, base_url=args.base_url, cache=cache,
                                  timeout_s=args.llm_timeout)
    print(note, file=sys.stderr)
    return source


def check_source_args(args: argparse.Namespace) -> None:
    """The reply cache must be writable before an LLM is asked (else the paid-for reply would be lost)."""
    if not args.no_cache and args.cache is not None:
        check_output_path(args.cache, "--cache")  # also refuses a folder


def add_source_options_without_model(parser: argparse.ArgumentParser) -> None:
    """:func:`add_source_options` minus ``--model`` (``generate`` uses ``--model`` for the diffusion model)."""
    parser.add_argument("--source", default=None,
                        help="layout source: 'planner', 'llm' or a reply file (default: the LLM if configured, "
                             "else the offline planner)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
    parser.add_argument("--cache", type=Path, default=None, help="LLM reply cache file")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reply cache")
    add_llm_timeout_option(parser)


def _fraction_arg(text: str) -> float:
    """argparse type: a number from 0 to 1 (a score threshold, an IoU)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, not {text[:40]!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, not {text[:40]}")
    return value
