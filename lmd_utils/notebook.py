"""Small helpers shared by the notebooks (``notebooks/0N_*.ipynb``): set-up, and the pure functions that the
notebooks' widgets wrap.

Not part of the method: this module only keeps the notebooks thin.  Each notebook has ONE set-up cell::

    env = setup(model_id=MODEL_ID, steps=STEPS, seed=SEED, uses_llm=True)

which seeds everything, picks the device (``cuda`` → ``mps`` → ``cpu``, or ``$LMD_DEVICE``), and prints what
the notebook will use (device, diffusion model, LLM or its offline stand-in).  Installing on Colab happens in
the set-up cell itself, before this module can be imported (see ``notebooks/README.md``).

Pictures (:mod:`lmd_utils.viz`) are :class:`matplotlib.figure.Figure` objects built without pyplot's global
state, so a cell that ends with one shows it once and tests can inspect it.  Widgets (:func:`layout_editor`) only
wrap pure functions (:func:`edit_box`, :func:`~lmd_utils.viz.layout.draw_layouts`) that tests call directly;
building a widget never blocks, so notebooks also run headless (CI).
"""

from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .layout import CANVAS_SIZE, Box, Layout
from .models import ENV_DEVICE, default_dtype, pick_device
from .llm_client import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, LLMConfig, LLMNotConfigured, redact_url
from .viz.common import figure_to_png
from .viz.layout import draw_layouts

#: The repository root (``lmd_utils/..``) in a clone; reference data (``shared/``) may lie next to it.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where reference data (the benchmark prompts, the authors' published replies) lies next to the repository.
SHARED_BENCHMARK_DIR = REPO_ROOT.parent / "shared" / "benchmark"


# =============================================================================================================
# Set-up
# =============================================================================================================
def in_colab() -> bool:
    """Whether this runs in Google Colab (its ``google.colab`` module is loaded in every Colab kernel)."""
    return "google.colab" in sys.modules


def enable_inline_figures() -> bool:
    """In a Jupyter kernel (Jupyter, Colab, VS Code), show matplotlib figures as pictures: ``%matplotlib inline``.

    Recent IPython no longer registers the inline display of a :class:`~matplotlib.figure.Figure` made without
    pyplot until that magic runs, so a cell ending with ``draw_layouts(...)`` would print ``<Figure ...>``.
    Returns whether a kernel was found (nothing happens in a plain Python process or a terminal IPython).
    """
    try:
        from IPython import get_ipython
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return False
    shell = get_ipython()
    if not isinstance(shell, ZMQInteractiveShell):
        return False
    shell.run_line_magic("matplotlib", "inline")
    return True


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def llm_from_env(model: str | None = None, base_url: str | None = None) -> tuple[LLMConfig | None, str]:
    """The LLM the notebook may call (arguments first, then the environment) and a sentence saying which.

    ``(None, reason)`` when none is configured; the API key is never part of the sentence.
    """
    try:
        config = LLMConfig.from_env(model=model, base_url=base_url)
    except LLMNotConfigured:
        return None, (f"none configured (set {ENV_MODEL} and {ENV_BASE_URL} or {ENV_API_KEY}) → the LLM cells "
                      "are skipped; layouts come from the offline planner and scripted replies")
    where = redact_url(config.base_url) or "api.openai.com"
    return config, f"{config.model} at {where} (replies cached; key from ${ENV_API_KEY} if set, never shown)"


@dataclass(frozen=True)
class NotebookEnv:
    """What :func:`setup` chose; notebooks pass ``env.device``, ``env.dtype``, ``env.llm`` on to ``lmd_utils``."""

    device: torch.device
    dtype: torch.dtype
    seed: int
    model_id: str | None
    steps: int | None
    llm: LLMConfig | None
    llm_note: str
    colab: bool
    uses_llm: bool = False

    def describe(self) -> str:
        """The lines :func:`setup` prints."""
        where = "Google Colab" if self.colab else f"local Python {platform.python_version()}"
        threads = torch.get_num_threads()
        if self.device.type != "cpu":
            device_note = "accelerator"
        else:
            why = f"set by ${ENV_DEVICE}" if os.environ.get(ENV_DEVICE) else "no CUDA or Apple MPS found"
            device_note = f"{why}, {threads} CPU thread{'s' if threads > 1 else ''}"
        lines = [
            f"lmd_utils {__version__} | torch {torch.__version__} | {where}",
            f"device:          {self.device} ({device_note}), dtype {str(self.dtype).removeprefix('torch.')}",
            f"diffusion model: {self.model_id or 'none (this notebook runs no diffusion model)'}",
            f"steps, seed:     {self.steps if self.steps is not None else '-'}, {self.seed}",
        ]
        if self.uses_llm:
            lines.append(f"LLM:             {self.llm_note}")
        return "\n".join(lines)


def setup(
    model_id: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    llm_model: str | None = None,
    base_url: str | None = None,
    uses_llm: bool = False,
    quiet: bool = False,
) -> NotebookEnv:
    """The one set-up call of every notebook: seed, pick the device, find the LLM, and say what is used
    (figures are shown inline, see :func:`enable_inline_figures`).

    ``model_id``/``steps``: the diffusion model and sampler steps the notebook will use (``None`` when it runs
    none).  ``device``: forces one (else :func:`pick_device`).  ``llm_model``/``base_url``: the LLM, else
    ``$LMD_LLM_MODEL``/``$OPENAI_BASE_URL`` (see :func:`llm_from_env`); only looked up when ``uses_llm``.
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    seed_everything(seed)
    enable_inline_figures()
    dev = pick_device(device)
    llm, note = llm_from_env(llm_model, base_url) if uses_llm else (None, "not used")
    env = NotebookEnv(device=dev, dtype=default_dtype(dev), seed=seed, model_id=model_id, steps=steps, llm=llm,
                      llm_note=note, colab=in_colab(), uses_llm=uses_llm)
    if not quiet:
        print(env.describe())
    return env


def find_reference_file(filename: str, explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """A reference data file (e.g. the authors' published replies) and a sentence saying where, or why not.

    ``explicit`` (a path the user set) wins; else ``shared/benchmark/<filename>`` next to the repository, where
    this project's CI keeps reference data.  A clean clone has neither: ``(None, reason)``, never an error.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path, f"using {path} (given explicitly)"
        return None, f"{path} (given explicitly) does not exist"
    path = SHARED_BENCHMARK_DIR / filename
    if path.is_file():
        return path, f"using {path} (found next to the repository)"
    return None, (f"{filename} not found: neither given explicitly nor in {SHARED_BENCHMARK_DIR} "
                  "(a clean clone has no reference data)")


# =============================================================================================================
# Editing (pure functions the widgets wrap)
# =============================================================================================================
def edit_box(
    layout: Layout,
    index: int,
    x: float,
    y: float,
    w: float,
    h: float,
    caption: str | None = None,
    canvas: float = CANVAS_SIZE,
) -> Layout:
    """A copy of ``layout`` whose box ``index`` is ``[x, y, w, h]`` (pixels of the LLM's 512×512 canvas),
    clipped to the canvas, with ``caption`` if given.  Other boxes and prompts are kept; ``layout`` is unchanged.

    The raw LLM reply and raw boxes in ``meta`` no longer describe the layout, so the copy drops them (a stage-1
    score of an edited layout then uses its own boxes) and records the edit in ``meta["edited_boxes"]``.
    """
    if not -len(layout) <= index < len(layout):
        raise IndexError(f"box {index} asked for, the layout has {len(layout)} box(es)")
    index %= len(layout)
    old = layout.boxes[index]
    phrase = old.phrase if caption is None else caption.strip()
    if not phrase:
        raise ValueError("a box needs a caption")
    x0, y0 = max(float(x), 0.0), max(float(y), 0.0)
    x1, y1 = min(float(x) + float(w), canvas), min(float(y) + float(h), canvas)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box [x, y, w, h] = {[x, y, w, h]} has no area inside the {canvas:g}-pixel canvas")
    boxes = list(layout.boxes)
    boxes[index] = Box(phrase, x0 / canvas, y0 / canvas, x1 / canvas, y1 / canvas)
    meta = {k: v for k, v in layout.meta.items() if k not in ("reply", "objects")}
    meta["edited_boxes"] = sorted(set(meta.get("edited_boxes", [])) | {index})
    return Layout(boxes=boxes, background=layout.background, negative=layout.negative, prompt=layout.prompt,
                  meta=meta)


class LayoutEditor:
    """Widgets that edit one box of a layout: a box chooser, x/y/w/h sliders (pixels), a caption field, and the
    redrawn layout.  Every change calls :func:`edit_box` then :func:`~lmd_utils.viz.layout.draw_layouts`;
    :attr:`layout` is the current result.  Show it by ending a cell with the editor (or ``display(editor.widget)``).
    """

    def __init__(self, layout: Layout, index: int = 0, size: float = 4.0) -> None:
        import ipywidgets as widgets

        if not -len(layout) <= index < len(layout):
            raise IndexError(f"box {index} asked for, the layout has {len(layout)} box(es)")
        self.layout = layout
        self.size = size
        self.chooser = widgets.Dropdown(options=[(f"{i}: {p}", i) for i, p in enumerate(layout.phrases)],
                                        value=index % len(layout), description="box")
        self.sliders = {k: widgets.IntSlider(min=0 if k in "xy" else 1, max=CANVAS_SIZE, step=2, description=k,
                                             continuous_update=False) for k in ("x", "y", "w", "h")}
        self.caption = widgets.Text(description="caption", continuous_update=False)
        self.picture = widgets.Image(format="png")
        self._loading = False
        self._load_box()
        self.chooser.observe(lambda _: None if self._loading else self._load_box(), names="value")
        for control in (*self.sliders.values(), self.caption):
            control.observe(lambda _: self._apply(), names="value")
        self.widget = widgets.HBox([widgets.VBox([self.chooser, *self.sliders.values(), self.caption]),
                                    self.picture])

    def _load_box(self) -> None:
        """Show the chosen box's values in the controls without triggering edits."""
        self._loading = True
        x, y, w, h = self.layout.boxes[self.chooser.value].to_xywh()
        for k, v in zip("xywh", (x, y, w, h)):
            self.sliders[k].value = v
        self.caption.value = self.layout.boxes[self.chooser.value].phrase
        self._loading = False
        self._redraw()

    def _apply(self) -> None:
        if self._loading:
            return
        try:
            self.layout = edit_box(self.layout, self.chooser.value, *(s.value for s in self.sliders.values()),
                                   caption=self.caption.value or None)
        except ValueError:  # e.g. a box pushed fully off the canvas: keep the last valid layout
            return
        index, self._loading = self.chooser.value, True
        self.chooser.options = [(f"{i}: {p}", i) for i, p in enumerate(self.layout.phrases)]  # new caption
        self.chooser.value, self._loading = index, False  # setting options resets the choice: restore it
        self._load_box()  # the controls show the box as kept (clipped to the canvas), and the picture redraws

    def _redraw(self) -> None:
        fig = draw_layouts([self.layout], size=self.size)
        self.picture.value = figure_to_png(fig)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def layout_editor(layout: Layout, index: int = 0) -> LayoutEditor:
    """A :class:`LayoutEditor` on ``layout``, starting with box ``index`` (needs ``ipywidgets``)."""
    return LayoutEditor(layout, index)


__all__ = [
    "REPO_ROOT", "in_colab", "enable_inline_figures",
    "seed_everything", "llm_from_env", "NotebookEnv", "setup", "find_reference_file",
    "edit_box", "LayoutEditor", "layout_editor",
]
