"""Progress bars: widgets where a person's notebook front end draws them, nothing in a kernel nobody watches, text
bars in a terminal.

``tqdm.auto`` picks an ipywidgets bar in *any* Jupyter kernel, including the kernels that ``jupyter nbconvert
--execute`` and ``pytest --nbval`` start.  Nobody watches those: the saved notebook keeps each widget's text
fallback as it was when it was created, so a static render shows every bar frozen at ``0/4`` (and text bars would
leave one stream output per update).  So every loop in ``lmd_utils`` makes its bar with :func:`progress_bar`,
which asks :func:`progress_style`:

* ``$LMD_PROGRESS`` when set: ``widgets``, ``text`` (``tqdm.std``) or ``off``;
* else ``widgets`` in a live front end (:func:`live_front_end`: Colab; a kernel that a Jupyter server started
  for a notebook, which sets ``$JPY_SESSION_NAME``; VS Code), ``off`` in any other kernel (nbconvert, nbval: the
  saved notebook shows no bar), and ``text`` outside a kernel (a terminal, a script, the command line).

The libraries underneath (diffusers, transformers, huggingface_hub) draw their own ``tqdm.auto`` bars, e.g.
"Loading pipeline components...".  :func:`quiet_library_bars`, which :func:`lmd_utils.notebook.setup` calls,
turns those off in a kernel where this module would not draw widgets (their public switches; nothing is
patched).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable

#: ``widgets``, ``text`` or ``off``: overrides :func:`live_front_end`'s guess.
ENV_PROGRESS = "LMD_PROGRESS"
PROGRESS_STYLES = ("widgets", "text", "off")


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (a live one or one that nbconvert/nbval started)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # an IPython too broken to say
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def live_front_end() -> bool:
    """Whether a person's notebook front end (which draws widgets) is attached to this kernel: Google Colab, a
    kernel that a Jupyter server started for a notebook (it sets ``$JPY_SESSION_NAME``), or VS Code.

    A guess from the environment: nbconvert and nbval start kernels without a server, so they count as not live.
    A wrong "not live" costs only the bars; set ``$LMD_PROGRESS=widgets`` (or ``text``) to have them.
    """
    if "google.colab" in sys.modules:
        return True
    return in_kernel() and bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"))


def progress_style() -> str:
    """``"widgets"``, ``"text"`` or ``"off"``: ``$LMD_PROGRESS`` if set; else widgets in a live front end, off in
    any other kernel (nbconvert, nbval), text outside a kernel."""
    chosen = os.environ.get(ENV_PROGRESS, "").strip().lower()
    if chosen:
        if chosen not in PROGRESS_STYLES:
            raise ValueError(f"${ENV_PROGRESS} must be one of {', '.join(PROGRESS_STYLES)}, got {chosen!r}")
        return chosen
    if live_front_end():
        return "widgets"
    return "off" if in_kernel() else "text"


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """A ``tqdm`` bar in the style of :func:`progress_style` (same arguments as ``tqdm``; ``disable=True`` still
    hides it).  Use it as ``for x in progress_bar(xs, desc="denoising", disable=not progress): ...``."""
    style = progress_style()
    if style == "widgets":
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    if style == "off":
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def quiet_library_bars(style: str | None = None) -> bool:
    """Turn off the progress bars of diffusers, transformers and huggingface_hub where they would be widgets that
    nobody watches (frozen in a saved notebook): when ``style`` (default: :func:`progress_style`) is ``off``, or
    ``text`` inside a kernel.  In a terminal, or with widgets, they are left alone.  Returns whether they were
    turned off.  Libraries that are not installed are skipped."""
    style = style or progress_style()
    if style == "widgets" or (style == "text" and not in_kernel()):
        return False
    for module, switch in (("diffusers.utils.logging", "disable_progress_bar"),
                           ("transformers.utils.logging", "disable_progress_bar"),
                           ("huggingface_hub.utils", "disable_progress_bars")):
        try:
            getattr(__import__(module, fromlist=[switch]), switch)()
        except (ImportError, AttributeError):
            continue
    return True


__all__ = ["ENV_PROGRESS", "PROGRESS_STYLES", "in_kernel", "live_front_end", "progress_style", "progress_bar",
           "quiet_library_bars"]
