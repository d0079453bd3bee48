"""SAM backends: segment an image from one positive point (the refinement step of LMD's masks, paper §3.2).

:mod:`lmd_utils.masks` prompts SAM with the arg-max of an object's smoothed attention and chooses among the three
masks it returns; this module is the model side of that exchange, behind the small :class:`SamBackend` interface:

* :class:`TransformersSam`: ``transformers``' ``SamModel`` + ``SamProcessor`` (``facebook/sam-vit-base``, as the
  authors use);
* :class:`SegmentAnythingSam`: Meta's ``segment-anything`` package with a local checkpoint file.

Images are ``(H, W, 3)`` uint8 arrays (:func:`as_uint8_image`), points ``(x, y)`` in image pixels (x to the right,
y down, the pixel grid's top-left corner at ``(0, 0)``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .downloads import check_download

#: The SAM checkpoint the authors load (``models/sam.py``: ``SamModel.from_pretrained("facebook/sam-vit-base")``).
DEFAULT_SAM_MODEL_ID = "facebook/sam-vit-base"


@runtime_checkable
class SamBackend(Protocol):
    """Anything that segments an image from one positive point, returning SAM's three masks and scores."""

    def predict(self, image: np.ndarray, point_xy: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(H, W, 3)`` uint8 RGB, ``point_xy`` in pixels → ``(masks (3, H, W) bool, scores (3,))``."""
        ...


def as_uint8_image(image: Any, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from a PIL image, a uint8 array, a float array in [0, 1], or a tensor.

    Float tensors are read in ``value_range`` (default [0, 1], decoded images; ``(-1, 1)`` for the toy world's
    pixel-space latents); a ``(3, H, W)`` tensor (the VAE decoder's layout) is transposed; anything else raises
    ``ValueError``.  SAM's input format, and the one image → array conversion of the package: every picture
    (:mod:`lmd_utils.viz`, :meth:`Layout.draw <lmd_utils.layout.Layout.draw>`) and the toy detector read images
    through it.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.is_floating_point():  # half and bfloat16 have no numpy dtype
            lo, hi = (float(v) for v in value_range)
            if not hi > lo:
                raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
            t = ((t.float().clamp(lo, hi) - lo) * (255.0 / (hi - lo))).round().to(torch.uint8)
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        image = t.numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"expected uint8 or float in [0, 1], got {image.dtype}")
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def _check_point(image: np.ndarray, point_xy: Sequence[float]) -> tuple[float, float]:
    x, y = (float(v) for v in point_xy)
    H, W = image.shape[:2]
    if not (0 <= x <= W and 0 <= y <= H):
        raise ValueError(f"point {(x, y)} lies outside the {W}×{H} image")
    return x, y


class TransformersSam:
    """SAM through ``transformers`` (``SamModel`` + ``SamProcessor``), the authors' route.

    Build it with :meth:`from_pretrained` (default ``facebook/sam-vit-base``) or from ready model and processor
    objects (how the tests use a tiny random-weight ``SamModel``).
    """

    def __init__(self, model: Any, processor: Any, device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if device is not None:
            self.model.to(self.device)

    @classmethod
    def from_pretrained(
        cls, model_id: str = DEFAULT_SAM_MODEL_ID, device: torch.device | str | None = None, **model_kwargs: Any
    ) -> "TransformersSam":
        """Load ``SamModel`` and ``SamProcessor`` from the hub or a local folder (``model_id``).

        From the hub only where a download is allowed (:func:`~lmd_utils.downloads.check_download`: in the local
        cache, on a GPU, or ``$LMD_ALLOW_DOWNLOAD=1``); else :class:`~lmd_utils.downloads.DownloadNotAllowed`.
        """
        from transformers import SamModel, SamProcessor

        check_download(model_id, device, kind="sam")
        model = SamModel.from_pretrained(model_id, **model_kwargs)
        processor = SamProcessor.from_pretrained(model_id)
        return cls(model, processor, device=device)

    @torch.no_grad()
    def predict(self, image: Any, point_xy: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        image = as_uint8_image(image)
        x, y = _check_point(image, point_xy)
        inputs = self.processor(image, input_points=[[[x, y]]], return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        model_inputs = {
            k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
            if k in ("pixel_values", "input_points")
        }
        outputs = self.model(**model_inputs, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )
        # one image, one point batch → (3, H, W)
        return masks[0][0].bool(), outputs.iou_scores[0, 0].float().cpu()


def import_segment_anything() -> Any:
    """Import Meta's ``segment_anything`` package with an explanation when it cannot be imported.

    ``import segment_anything`` imports torchvision (``utils/transforms.py`` resizes the image with
    ``torchvision.transforms.functional.resize``; the automatic mask generator uses ``torchvision.ops``), so
    it needs a torchvision that matches the installed torch.
    """
    try:
        import segment_anything
    except ImportError as e:
        hint = (
            "segment-anything imports torchvision, which is missing or does not match this torch build"
            if "torchvision" in str(e) or "torchvision" in repr(e.__cause__)
            else "install it with `pip install segment-anything` (the `sam` extra of lmd_utils)"
        )
        raise ImportError(f"cannot import segment_anything: {e}. {hint}; or use TransformersSam") from e
    return segment_anything


class SegmentAnythingSam:
    """SAM through Meta's ``segment-anything`` package (``SamPredictor``) and a local checkpoint file.

    The usual Colab route: ``SegmentAnythingSam.from_checkpoint("sam_vit_b_01ec64.pth", "vit_b")``.
    Or wrap a ready ``segment_anything.modeling.Sam`` (:meth:`from_model`) or a ``SamPredictor``.
    """

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    @classmethod
    def from_model(cls, sam_model: Any) -> "SegmentAnythingSam":
        sa = import_segment_anything()
        return cls(sa.SamPredictor(sam_model.eval()))

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str, model_type: str = "vit_b", device: torch.device | str | None = None
    ) -> "SegmentAnythingSam":
        """``sam_model_registry[model_type]()`` with the weights of ``checkpoint``; ``model_type`` in vit_b / vit_l /
        vit_h.  The file is read with ``torch.load(weights_only=True)`` (tensors only: a ``.pth`` from elsewhere
        cannot run code, whatever the torch version; segment-anything's own loader unpickles on older torch)."""
        sa = import_segment_anything()
        if model_type not in sa.sam_model_registry:
            raise ValueError(f"unknown SAM model type {model_type!r}; one of {sorted(sa.sam_model_registry)}")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"no SAM checkpoint at {str(checkpoint)[:120]!r}")
        sam = sa.sam_model_registry[model_type](checkpoint=None)
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
            detail = " ".join(str(e).split())[:200]  # (layout.single_line; layout imports this module)
            raise ValueError(f"{str(checkpoint)[:120]!r} is not a {model_type} segment-anything checkpoint of "
                             f"plain tensors ({type(e).__name__}: {detail})") from e
        if device is not None:
            sam.to(device)
        return cls.from_model(sam)

    @torch.no_grad()
    def predict(self, image: Any, point_xy: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        image = as_uint8_image(image)
        x, y = _check_point(image, point_xy)
        self.predictor.set_image(image, image_format="RGB")
        masks, scores, _ = self.predictor.predict(
            point_coords=np.array([[x, y]], dtype=np.float32), point_labels=np.array([1]), multimask_output=True
        )
        return torch.as_tensor(masks).bool(), torch.as_tensor(scores).float()
