"""Small helpers shared by the notebooks (``notebooks/0N_*.ipynb``): set-up, and the pure functions that the
notebooks' widgets wrap.

Not part of the method: this module only keeps the notebooks thin.  Each notebook has ONE set-up cell::

    MODEL_ID = default_model_id()   # THE setting: "toyworld", "tiny", or any SD 1.x/2.x hub id or folder
    STEPS = None                    # None: $LMD_STEPS, else the model's default (SD: the authors' 50)
    env = setup(model_id=MODEL_ID, steps=STEPS, seed=SEED, toy_steps=25)
    MODEL_ID, STEPS = env.model_id, env.steps

which seeds everything, picks the device (``cuda`` → ``mps`` → ``cpu``, or ``$LMD_DEVICE``), checks that the
model can be loaded here (a hub id is not downloaded onto a CPU unless ``$LMD_ALLOW_DOWNLOAD=1``, see
:mod:`lmd_utils.downloads`; otherwise it says why and uses the toy world), and prints what the notebook will use:
device, diffusion model, its settings (steps, CFG, where the settings come from, image size), LLM or its offline
stand-in.  Installing on Colab happens in the set-up cell itself, before this module can be imported (see
``notebooks/README.md``).

Environment variables (CI sets them to run every notebook on a random-weight SD-shaped checkpoint):
``$LMD_MODEL_ID`` (the default ``MODEL_ID``), ``$LMD_STEPS`` (the default ``STEPS``), ``$LMD_RANDOM_WEIGHTS=1``
(the checkpoint has random weights: :meth:`NotebookEnv.can_check` skips the claims that need trained ones),
``$LMD_ALLOW_DOWNLOAD=1`` (large downloads on a CPU), ``$LMD_DEVICE``.

Three kinds of model (:func:`model_kind`): ``"toy"`` (the toy world: its own calibrated settings, toy prompts, the
exact detector), ``"sd"`` (any real checkpoint: the authors' settings, photo prompts, the native resolution) and
``"tiny"`` (SD 1.5's layout with random weights, built offline: the SD code path on small images).

Pictures (:mod:`lmd_utils.viz`) are :class:`matplotlib.figure.Figure` objects built without pyplot's global
state, so a cell that ends with one shows it once and tests can inspect it.  Widgets (:func:`layout_editor`) only
wrap pure functions (:func:`edit_box`, :func:`~lmd_utils.viz.layout.draw_layouts`) that tests call directly;
building a widget never blocks, so notebooks also run headless (CI).  Progress bars are widgets only in a live
front end and text elsewhere (nbconvert, nbval), so a saved notebook shows no bar frozen at 0 (see
:mod:`lmd_utils.progress`; ``$LMD_PROGRESS`` overrides).
"""

from __future__ import annotations

import json
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
from .downloads import weights_status
from .layout import CANVAS_SIZE, Box, Layout
from .progress import quiet_library_bars
from .models import DEFAULT_MODEL, ENV_DEVICE, TOYWORLD_MODEL_DIR, default_dtype, pick_device
from .llm_client import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, LLMConfig, LLMNotConfigured, redact_url
from .viz.common import figure_to_png
from .viz.layout import draw_layouts

#: The repository root (``lmd_utils/..``) in a clone; reference data (``shared/``) may lie next to it.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where reference data (the benchmark prompts, the authors' published replies) lies next to the repository.
SHARED_BENCHMARK_DIR = REPO_ROOT.parent / "shared" / "benchmark"

#: The default ``MODEL_ID`` when set (a hub id, a folder, ``toyworld`` or ``tiny``).
ENV_MODEL_ID = "LMD_MODEL_ID"
#: The default ``STEPS`` when set.
ENV_STEPS = "LMD_STEPS"
#: ``1``: the checkpoint has random weights (CI's SD-shaped checkpoint); claims that need trained weights are skipped.
ENV_RANDOM_WEIGHTS = "LMD_RANDOM_WEIGHTS"
#: The model a CUDA machine uses by default: Stable Diffusion 1.5, as in the paper.
SD15_MODEL_ID = DEFAULT_MODEL
#: The authors' number of DDIM steps (``LMDConfig().num_inference_steps``), the default on real checkpoints.
SD_STEPS = 50
#: ``tiny`` (random weights): few steps and small images, for a fast CPU run of the SD code path.
TINY_STEPS = 5
TINY_IMAGE_SIZE = (128, 128)
#: Tolerance of :meth:`NotebookEnv.same` on an accelerator (float16, kernels not bit-reproducible); 0 on a CPU.
ACCELERATOR_ATOL = 1e-2


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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def default_model_id(cuda: bool | None = None) -> str:
    """The notebooks' default ``MODEL_ID``: ``$LMD_MODEL_ID`` if set, else Stable Diffusion 1.5 when the device is
    CUDA (``cuda``: whether it is; default: :func:`~lmd_utils.models.pick_device` says so), else ``"toyworld"``."""
    chosen = os.environ.get(ENV_MODEL_ID, "").strip()
    if chosen:
        return chosen
    if cuda is None:
        try:
            cuda = pick_device().type == "cuda"
        except (RuntimeError, ValueError):  # a bad $LMD_DEVICE: setup() reports it
            cuda = torch.cuda.is_available()
    return SD15_MODEL_ID if cuda else "toyworld"


def _is_toy_folder(path: Path) -> bool:
    """A toy-world model folder: the one shipped, one the toy-world training exported (it writes toyworld.json), or
    any pipeline folder without a VAE (pixel space, what :func:`~lmd_utils.toyworld.model.is_toyworld` checks)."""
    if path.resolve() == TOYWORLD_MODEL_DIR.resolve() or (path / "toyworld.json").is_file():
        return True
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    vae = index.get("vae", "?") if isinstance(index, dict) and "unet" in index else "?"
    return isinstance(vae, list) and vae[:1] == [None]  # diffusers writes a missing VAE as [null, null]


def model_kind(model_id: str | None) -> str | None:
    """``"toy"`` (``"toyworld"`` or a toy-world folder), ``"tiny"`` (random weights built offline), ``"sd"`` (any
    other hub id or folder: a real Stable Diffusion checkpoint), or ``None`` (no diffusion model)."""
    if model_id is None:
        return None
    if model_id == "toyworld":
        return "toy"
    if model_id == "tiny":
        return "tiny"
    folder = Path(model_id).expanduser()
    return "toy" if folder.is_dir() and _is_toy_folder(folder) else "sd"


def random_weights_from_env() -> bool:
    """Whether ``$LMD_RANDOM_WEIGHTS`` says the checkpoint has random weights (CI's SD-shaped checkpoint)."""
    return _truthy(os.environ.get(ENV_RANDOM_WEIGHTS))


def weights_trained(model_id: str | None) -> bool:
    """Whether claims that need trained weights can be checked: the toy world, or a real checkpoint unless
    ``$LMD_RANDOM_WEIGHTS=1`` says it has random weights; never ``tiny``."""
    kind = model_kind(model_id)
    return kind == "toy" or (kind == "sd" and not random_weights_from_env())


def _model_folder(model_id: str) -> Path | None:
    if model_id == "toyworld":
        return TOYWORLD_MODEL_DIR
    folder = Path(model_id).expanduser()
    return folder if folder.is_dir() else None


def _shipped_settings(model_id: str) -> dict:
    """The ``lmd_config.json`` of a model folder (the toy world ships one), else ``{}``."""
    folder = _model_folder(model_id)
    path = folder / "lmd_config.json" if folder else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def default_steps(model_id: str | None, toy: int | None = None) -> int | None:
    """The notebooks' default ``STEPS``: ``$LMD_STEPS`` if set; else the model's: ``toy`` (a notebook's calibrated
    count, else the toy model's shipped ``lmd_config.json``), the authors' 50 on Stable Diffusion, 5 on ``tiny``;
    ``None`` when there is no model."""
    if model_id is None:
        return None
    chosen = os.environ.get(ENV_STEPS, "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f"${ENV_STEPS} must be a whole number >= 1, got {chosen!r}")
        return int(chosen)
    kind = model_kind(model_id)
    if kind == "toy":
        return toy or int(_shipped_settings(model_id).get("num_inference_steps", SD_STEPS))
    return TINY_STEPS if kind == "tiny" else SD_STEPS


def checkpoint_resolution(model_id: str | None) -> tuple[int, int] | None:
    """``(height, width)`` a checkpoint was trained for, read from its config files without loading weights
    (a folder, or a hub id whose configs are in the local cache); :data:`TINY_IMAGE_SIZE` for ``tiny`` (what the
    notebooks use); ``None`` when unknown."""
    if model_id is None:
        return None
    if model_id == "tiny":
        return TINY_IMAGE_SIZE

    def read(name: str) -> dict | None:
        folder = _model_folder(model_id)
        if folder is not None:
            path = folder / name
            return json.loads(path.read_text()) if path.is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id, name)
        except Exception:
            return None
        return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None

    unet = read("unet/config.json")
    if not unet or "sample_size" not in unet:
        return None
    vae = read("vae/config.json")
    scale = 2 ** (len(vae["block_out_channels"]) - 1) if vae and "block_out_channels" in vae else 1
    size = unet["sample_size"]
    h, w = (size, size) if isinstance(size, int) else size
    return int(h) * scale, int(w) * scale


def model_usable(model_id: str | None, device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(True, where)`` when ``model_id`` can be loaded here without an unwanted download, else ``(False, why)``."""
    if model_id is None or model_id == "tiny":
        return True, "built offline" if model_id else "no model"
    if model_id == "toyworld":
        if (TOYWORLD_MODEL_DIR / "model_index.json").exists():
            return True, str(TOYWORLD_MODEL_DIR)
        return False, f"the toy-world model is not at {TOYWORLD_MODEL_DIR} (train it with lmd_utils/toyworld)"
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        if (folder / "model_index.json").is_file():
            return True, f"{folder} (a local folder)"
        return False, f"{folder} has no model_index.json (not a diffusers pipeline folder)"
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        return False, f"no model folder at {model_id!r}"
    return weights_status(model_id, device)


def settings_note(model_id: str | None, steps: int | None, trained: bool = True) -> str:
    """One line: steps (and where they come from), CFG, whose settings, image size."""
    if model_id is None:
        return "none"
    kind = model_kind(model_id)
    shipped = _shipped_settings(model_id)
    cfg = float(shipped.get("guidance_scale", 7.5))
    from_env = bool(os.environ.get(ENV_STEPS, "").strip())
    if kind == "toy":
        whose = "the toy world's own settings, calibrated on it (lmd_config.json and this notebook)"
        step_note = f" (${ENV_STEPS})" if from_env else ""
    else:
        whose = "the authors' settings (LMDConfig.for_pipe)" + ("" if trained else " on random weights")
        step_note = f" (${ENV_STEPS})" if from_env else (" (the authors')" if steps == SD_STEPS else "")
    size = checkpoint_resolution(model_id)
    if kind == "tiny":
        where = f"{size[0]}×{size[1]} (small, for a fast CPU run)"
    elif size:
        where = f"{size[0]}×{size[1]} (the checkpoint's native size)"
    else:
        where = "the checkpoint's native size (SD 1.5: 512×512; read when it loads)"
    return f"steps {steps}{step_note}, CFG {cfg:g}, {whose}, {where}"


def _model_note(model_id: str | None, kind: str | None, trained: bool) -> str:
    if model_id is None:
        return "none (this notebook runs no diffusion model)"
    what = {"toy": "the toy world: 32×32 coloured shapes, trained in this repository",
            "tiny": "SD 1.5's layout with random weights, built offline",
            "sd": "a Stable Diffusion checkpoint, " + ("a local folder" if _model_folder(model_id) else
                                                      "from the Hugging Face hub")}[kind]
    if not trained:
        why = f"${ENV_RANDOM_WEIGHTS}=1" if kind != "tiny" else "MODEL_ID = 'tiny'"
        what += (f"; RANDOM WEIGHTS ({why}): every cell runs, the pictures are noise, and the claims that need "
                 "trained weights are skipped")
    return f"{model_id} ({what})"


@dataclass(frozen=True)
class NotebookEnv:
    """What :func:`setup` chose; notebooks pass ``env.device``, ``env.dtype``, ``env.llm`` on to ``lmd_utils``.

    ``kind``: :func:`model_kind` of ``model_id``; ``trained``: :func:`weights_trained`; ``settings``: the line
    :func:`settings_note` wrote; ``note``: why setup did not use the asked-for model, if it did not.
    """

    device: torch.device
    dtype: torch.dtype
    seed: int
    model_id: str | None
    steps: int | None
    llm: LLMConfig | None
    llm_note: str
    colab: bool
    uses_llm: bool = False
    kind: str | None = None
    trained: bool = True
    settings: str = ""
    note: str = ""

    def describe(self) -> str:
        """The lines :func:`setup` prints."""
        where = "Google Colab" if self.colab else f"local Python {platform.python_version()}"
        threads = torch.get_num_threads()
        if self.device.type != "cpu":
            device_note = "accelerator"
        else:
            why = f"set by ${ENV_DEVICE}" if os.environ.get(ENV_DEVICE) else "no CUDA or Apple MPS found"
            device_note = f"{why}, {threads} CPU thread{'s' if threads > 1 else ''}"
        lines = [f"lmd_utils {__version__} | torch {torch.__version__} | {where}"]
        if self.note:
            lines.append(self.note)
        lines += [
            f"device:          {self.device} ({device_note}), dtype {str(self.dtype).removeprefix('torch.')}",
            f"diffusion model: {_model_note(self.model_id, self.kind, self.trained)}",
        ]
        if self.model_id is not None:
            lines.append(f"settings:        {self.settings}")
        lines.append(f"steps, seed:     {self.steps if self.steps is not None else '-'}, {self.seed}")
        if self.uses_llm:
            lines.append(f"LLM:             {self.llm_note}")
        return "\n".join(lines)

    def can_check(self, claim: str) -> bool:
        """Whether a claim that needs trained weights can be checked here; if not, prints why it is skipped.

        Use as ``if env.can_check("guidance moves the attention into the box"): assert ...``.
        """
        if self.trained:
            return True
        why = f"${ENV_RANDOM_WEIGHTS}=1" if self.kind != "tiny" else "MODEL_ID = 'tiny'"
        print(f"skipped: needs trained weights ({why.lstrip('$')}): {claim}")
        return False

    @property
    def tolerance(self) -> float:
        """0 on a CPU in float32 (results repeat bit for bit), :data:`ACCELERATOR_ATOL` elsewhere."""
        return 0.0 if self.device.type == "cpu" and self.dtype == torch.float32 else ACCELERATOR_ATOL

    def same(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """``a`` equals ``b``: bit for bit on a CPU; within :attr:`tolerance` on an accelerator, where float16 and
        kernels that do not promise bit-reproducible results (e.g. in the backward passes of guidance) may differ
        in the last bits.  Integer and boolean tensors must always be equal."""
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.shape != b.shape:
            return False
        if not self.tolerance or not (a.is_floating_point() and b.is_floating_point()):
            return torch.equal(a, b)
        return torch.allclose(a.float(), b.float(), atol=self.tolerance, rtol=0.0)


def setup(
    model_id: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    llm_model: str | None = None,
    base_url: str | None = None,
    uses_llm: bool = False, quiet: bool = False,
    toy_steps: int | None = None,
) -> NotebookEnv:
    """The one set-up call of every notebook: seed, pick the device, check the model, find the LLM, and say what
    is used (figures are shown inline, see :func:`enable_inline_figures`; outside a live front end the libraries'
    progress bars are turned off, see :func:`~lmd_utils.progress.quiet_library_bars`).

    ``model_id``: the diffusion model (``None`` when the notebook runs none); when it cannot be loaded here (see
    :func:`model_usable`: e.g. a hub id not in the local cache, on a CPU without ``$LMD_ALLOW_DOWNLOAD=1``), setup
    says why and uses the toy world (``env.note``).  ``steps``: sampler steps, ``None``: :func:`default_steps`
    (``toy_steps`` is the notebook's count for the toy world).  ``device``: forces one (else :func:`pick_device`).
    ``llm_model``/``base_url``: the LLM, else ``$LMD_LLM_MODEL``/``$OPENAI_BASE_URL`` (see :func:`llm_from_env`);
    only looked up when ``uses_llm``.
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    seed_everything(seed)
    enable_inline_figures()
    quiet_library_bars()  # not in a live front end: the libraries' widget bars would stay frozen at 0 when saved
    dev = pick_device(device)
    if dev.type == "cuda":  # repeatable convolutions (same seed, same picture); see NotebookEnv.same for the rest
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    note = ""
    usable, why = model_usable(model_id, dev)
    if not usable:
        fallback = "toyworld" if model_id != "toyworld" else "tiny"
        note = (f"MODEL_ID = {model_id!r} cannot be used here: {why}.\n→ using {fallback!r} instead "
                f"(set MODEL_ID or ${ENV_MODEL_ID} to choose another model)")
        model_id, steps = fallback, None
    if steps is None:
        steps = default_steps(model_id, toy=toy_steps)
    kind, trained = model_kind(model_id), weights_trained(model_id)
    llm, llm_note = llm_from_env(llm_model, base_url) if uses_llm else (None, "not used")
    env = NotebookEnv(device=dev, dtype=default_dtype(dev), seed=seed, model_id=model_id, steps=steps, llm=llm,
                      llm_note=llm_note, colab=in_colab(), uses_llm=uses_llm, kind=kind, trained=trained,
                      settings=settings_note(model_id, steps, trained), note=note)
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
    "REPO_ROOT", "in_colab", "enable_inline_figures", "ENV_MODEL_ID", "ENV_STEPS", "ENV_RANDOM_WEIGHTS",
    "SD15_MODEL_ID", "default_model_id", "model_kind", "random_weights_from_env", "weights_trained", "default_steps",
    "checkpoint_resolution", "model_usable", "settings_note",
    "seed_everything", "llm_from_env", "NotebookEnv", "setup", "find_reference_file",
    "edit_box", "LayoutEditor", "layout_editor",
]
