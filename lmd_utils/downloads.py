"""Large downloads need a yes: no weights over ~50 MB are fetched from the Hugging Face hub onto a CPU-only machine
unless ``$LMD_ALLOW_DOWNLOAD=1``.

Stable Diffusion 1.5 is about 4 GB and SAM ``facebook/sam-vit-base`` 375 MB.  On a GPU (or Apple MPS) that is the
normal way to get them, so downloads go ahead; on a CPU a run of SD takes minutes per image, so a download there is
far more often a mistake (a notebook left on a hub id, a laptop on a metered line) than a plan.
:func:`check_download` is called by :func:`~lmd_utils.models.load_pipeline`,
:meth:`~lmd_utils.sam.TransformersSam.from_pretrained` and the detectors' ``from_pretrained``
(:mod:`lmd_utils.evaluation`) before they touch the hub; it raises
:class:`DownloadNotAllowed` (an ``OSError``, as a missing file is) with a message that names the variable.
:func:`weights_status` answers the same question without raising, for cells that check first and then either run
or say what they would do.

Nothing here contacts the network: whether weights are present is read from the local hub cache only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

#: ``1`` allows downloading large weights onto a CPU-only machine.
ENV_ALLOW_DOWNLOAD = "LMD_ALLOW_DOWNLOAD"
#: A hub id: ``owner/name`` (or a bare ``name``), no path separators beyond the one slash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

#: What each kind of checkpoint weighs, and the files that show it is in the local hub cache (any one will do).
KINDS = {
    "pipeline": ("a Stable Diffusion pipeline (SD 1.5: about 4 GB)",
                 ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                  "unet/diffusion_pytorch_model.bin")),
    "sam": ("SAM (facebook/sam-vit-base: 375 MB)", ("model.safetensors", "pytorch_model.bin")),
    "detector": ("an OWL-ViT/OWLv2 detector (google/owlvit-base-patch32: about 600 MB)",
                 ("model.safetensors", "pytorch_model.bin")),
}


class DownloadNotAllowed(OSError):
    """Large weights would be downloaded where that is not allowed (a CPU without ``$LMD_ALLOW_DOWNLOAD=1``, or
    ``HF_HUB_OFFLINE=1``); the message says how to allow it."""


class ModelLoadError(OSError):
    """A model folder or hub id that does not hold a Stable Diffusion pipeline diffusers can load."""


def local_model_folder(model: str) -> Path | None:
    """The diffusers folder ``model`` names, or ``None`` when ``model`` is a hub id (``owner/name``).

    Cheap (no diffusers import), so the command line checks ``--model`` before loading anything: a folder without
    ``model_index.json`` or a file raises :class:`ModelLoadError`, a path that does not exist ``FileNotFoundError``.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{model[:120]!r} is not a diffusers pipeline folder (no model_index.json; "
                                 "save one with pipe.save_pretrained(folder))")
        return path
    if path.exists():
        raise ModelLoadError(f"{model[:120]!r} is a file; give a diffusers pipeline folder or a hub id")
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or not is_hub_id(model):
        raise FileNotFoundError(f"no model folder at {model[:120]!r} (and it does not look like a hub id)")
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def downloads_allowed() -> bool:
    """Whether ``$LMD_ALLOW_DOWNLOAD`` says yes (``1``, ``true``, ``yes``, ``on``)."""
    return _truthy(os.environ.get(ENV_ALLOW_DOWNLOAD))


def hub_offline() -> bool:
    """Whether the hub is switched off for this process (``HF_HUB_OFFLINE=1``)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def is_hub_id(name: str) -> bool:
    """``name`` looks like a hub id (``owner/name``) and is not an existing local folder."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().is_dir()


def in_local_cache(repo_id: str, filenames: tuple[str, ...]) -> bool:
    """Whether any of ``filenames`` of ``repo_id`` is in the local hub cache (read from disk, no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers and transformers
        return False
    for filename in filenames:
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except Exception:  # an id the cache cannot hold (bad characters): not there
            return False
    return False


def weights_status(model_id: str, device: torch.device | str | None = None, kind: str = "pipeline"
                   ) -> tuple[bool, str]:
    """``(True, where)`` when ``model_id``'s weights can be loaded here without an unwanted download, else
    ``(False, why and how to allow it)``.  ``kind``: ``"pipeline"`` (a diffusers SD checkpoint), ``"sam"`` or
    ``"detector"`` (OWL-ViT/OWLv2, :mod:`lmd_utils.evaluation`).

    A local folder is always fine (whether it holds the right files is for the loader to say); a hub id is fine when
    its weights are in the local hub cache, or when a download is allowed: not offline, and a GPU/MPS ``device``
    or ``$LMD_ALLOW_DOWNLOAD=1``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    what, files = KINDS[kind]
    if Path(model_id).expanduser().is_dir():
        return True, f"{model_id} (a local folder)"
    if not is_hub_id(model_id):
        return False, f"{model_id!r} is neither a local folder nor a hub id (owner/name)"
    if in_local_cache(model_id, files):
        return True, f"{model_id} (in the local Hugging Face cache)"
    if hub_offline():
        return False, (f"{model_id} is not in the local Hugging Face cache and the hub is switched off "
                       "(HF_HUB_OFFLINE=1); unset it where a network is available, or pass a local folder")
    device_type = torch.device(device).type if device is not None else "cpu"
    if device_type == "cpu" and not downloads_allowed():
        return False, (f"{model_id} would download {what} onto a CPU-only machine (and run there slowly); "
                       f"set {ENV_ALLOW_DOWNLOAD}=1 to allow it, use a GPU, or pass a local folder")
    why = "a download is fine on a GPU" if device_type != "cpu" else f"{ENV_ALLOW_DOWNLOAD}=1"
    return True, f"{model_id} (from the Hugging Face hub: {what}; {why})"


def check_download(model_id: str, device: torch.device | str | None = None, kind: str = "pipeline") -> None:
    """Raise :class:`DownloadNotAllowed` where :func:`weights_status` says no (see the module docstring)."""
    ok, why = weights_status(model_id, device, kind)
    if not ok:
        raise DownloadNotAllowed(why)


__all__ = ["ENV_ALLOW_DOWNLOAD", "DownloadNotAllowed", "downloads_allowed", "hub_offline", "is_hub_id",
           "in_local_cache", "weights_status", "check_download"]
