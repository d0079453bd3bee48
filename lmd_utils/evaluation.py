"""Stage-2 scoring of real images, the paper's way: an open-vocabulary detector, then the benchmark's four rules.

The paper (§4, Table 2) scores each generated image with OWL-ViT (``google/owlvit-base-patch32``):

1. **queries** from the prompt (:func:`detection_queries`): ``"a photo of a dog"`` for negation and numeracy (one
   query, the singular object), ``"a photo of a red car"``, ``"a photo of an orange bottle"`` for attribution,
   ``"a photo of a bottle"``, ``"a photo of a laptop"`` for spatial prompts.  Negation queries the *excluded*
   object only: the image passes when none is found;
2. **raw detections**: one box per image patch, its score the best query's sigmoid, its label that query
   (:class:`RawDetections`, pixels ``[x0, y0, x1, y1]``);
3. **score ≥ 0.15**, then **class-aware NMS at IoU 0.15** (:func:`nms`), on boxes divided by the image size;
4. each kept box is named by its query's text and scored by :mod:`lmd_utils.benchmark`'s predicates (the ones that
   also score layouts and toy-world detections) on ``[x, y, w, h]`` pixels.

Steps 3–4 reproduce the authors' verdicts exactly (``utils/eval/eval.py`` + ``utils/eval/lmd.py`` with
``--detection_score_threshold 0.15 --nms_threshold 0.15 --class-aware-nms``; ``tests/test_evaluation.py`` compares
them on hundreds of records), which takes their arithmetic: scores and boxes are float32 (as the detector
outputs them; values read from a file are rounded to float32), NMS runs on the size-normalised boxes, picks by
``numpy.argsort`` (so tied scores go as numpy orders them: the later box first on small arrays), keeps a box
while its IoU with the picked one is ``< 0.15``, drops boxes whose union is zero (0/0), and lists labels in
ascending order, each by falling score; the spatial rule uses the first kept box of each object, and compares
centres in float32.

The detector is a plug-in (:class:`Detector`: ``detect(image, queries) -> RawDetections``):
:class:`OwlViTDetector` (the paper's), :class:`Owlv2Detector` (the authors' follow-up work's) and
:class:`ToyDetector` (the toy world's exact detector, :mod:`lmd_utils.toyworld.detector`).
``python -m lmd_utils benchmark score-detections FILE.json`` scores raw detections saved by any detector
(:func:`load_detection_records`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .benchmark import BenchmarkResult, PromptOutcome, PromptSpec, parse_benchmark_prompt
from .downloads import check_download
from .grammar import with_article
from .sam import as_uint8_image

#: The paper's settings (authors' README: OWL-ViT, score threshold 0.15, class-aware NMS at IoU 0.15).
SCORE_THRESHOLD = 0.15
NMS_IOU = 0.15
QUERY_TEMPLATE = "a photo of {}"
DEFAULT_OWLVIT = "google/owlvit-base-patch32"
DEFAULT_OWLV2 = "google/owlv2-base-patch16-ensemble"
#: Largest image side a record may give (float32 holds every integer up to 2**24 exactly).
MAX_SIDE = 2 ** 24


class DetectionFileError(ValueError):
    """A detections file that cannot be scored (not JSON, a missing or malformed field); the message says where."""


# =============================================================================================================
# Queries and raw detections
# =============================================================================================================
def detection_queries(prompt: str | PromptSpec) -> list[str]:
    """The detector's text queries for a benchmark prompt (or its :class:`PromptSpec`), as the authors build them."""
    spec = parse_benchmark_prompt(prompt) if isinstance(prompt, str) else prompt
    if spec.task in ("negation", "numeracy"):
        return [QUERY_TEMPLATE.format(with_article(spec.names[0]))]
    return [QUERY_TEMPLATE.format(name) for name in spec.names]


class RawDetections(NamedTuple):
    """A detector's output for one image, before thresholding and NMS: ``boxes`` ``(N, 4)`` float32 pixels
    ``[x0, y0, x1, y1]``, ``scores`` ``(N,)`` float32, ``labels`` ``(N,)`` int64 indices into the queries."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@runtime_checkable
class Detector(Protocol):
    """Anything that finds text queries in an RGB image (a PIL image)."""

    name: str

    def detect(self, image: Any, queries: Sequence[str]) -> RawDetections: ...


@dataclass
class DetectionRecord:
    """One image's raw detections with what is needed to score them (one entry of a detections file).
    ``prompt_spec``: the prompt's task when it is not in the benchmark's grammar (toy-world prompts; not saved)."""

    prompt: str
    width: int
    height: int
    queries: list[str]
    boxes: np.ndarray  # (N, 4) float32 pixels [x0, y0, x1, y1]
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    prompt_spec: PromptSpec | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> PromptSpec:
        return self.prompt_spec or parse_benchmark_prompt(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "width": self.width, "height": self.height, "queries": list(self.queries),
                "boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": self.labels.tolist()}

    @classmethod
    def from_dict(cls, entry: Any, where: str = "record") -> "DetectionRecord":
        """Check one entry (``where`` names it in errors) and convert it; :class:`DetectionFileError` if malformed."""
        def bad(message: str) -> DetectionFileError:
            return DetectionFileError(f"{where}: {message}")

        if not isinstance(entry, dict):
            raise bad("must be an object with prompt, width, height, queries, boxes, scores, labels")
        missing = [k for k in ("prompt", "width", "height", "queries", "boxes", "scores", "labels") if k not in entry]
        if missing:
            raise bad(f"missing {', '.join(repr(k) for k in missing)}")
        prompt, queries = entry["prompt"], entry["queries"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad("'prompt' must be a non-empty string")
        sides = []
        for key in ("width", "height"):
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 1 <= v <= MAX_SIDE:
                raise bad(f"{key!r} must be a whole number of pixels from 1 to {MAX_SIDE}, not {str(v)[:40]}")
            sides.append(int(v))
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q for q in queries):
            raise bad("'queries' must be a non-empty list of strings")
        boxes = _numbers(entry["boxes"], "boxes", bad, per_item=4)
        scores = _numbers(entry["scores"], "scores", bad)
        labels = entry["labels"]
        if not isinstance(labels, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
            raise bad("'labels' must be a list of integers (indices into 'queries')")
        if not len(boxes) == len(scores) == len(labels):
            raise bad(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels: one each per detection")
        if any(not 0 <= v < len(queries) for v in labels):
            raise bad(f"a label is outside 0..{len(queries) - 1} (labels index 'queries')")
        try:
            parse_benchmark_prompt(prompt)
        except ValueError as e:
            raise bad(str(e)) from None
        return cls(prompt, sides[0], sides[1], list(queries), np.asarray(boxes, np.float32).reshape(-1, 4),
                   np.asarray(scores, np.float32), np.asarray(labels, np.int64))


def _numbers(value: Any, key: str, bad, per_item: int | None = None) -> list:
    shape = "a list of [x0, y0, x1, y1] lists of numbers" if per_item else "a list of numbers"
    if not isinstance(value, list):
        raise bad(f"{key!r} must be {shape}")
    items = value if per_item else [value]
    for item in items:
        if not isinstance(item, list) or (per_item and len(item) != per_item) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in item):
            raise bad(f"{key!r} must be {shape} (finite numbers)")
    return value


def load_detection_records(path: str | Path) -> list[DetectionRecord]:
    """The records of a detections file ``{"records": [{prompt, width, height, queries, boxes, scores, labels},
    ...]}`` (other keys are ignored); :class:`DetectionFileError` names the first problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DetectionFileError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DetectionFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise DetectionFileError(f"{path}: expected an object with a list \"records\"")
    if not records:
        raise DetectionFileError(f"{path}: \"records\" is empty")
    return [DetectionRecord.from_dict(r, f"{path.name}: record {i}") for i, r in enumerate(records)]


def save_detection_records(records: Sequence[DetectionRecord], path: str | Path, **extra: Any) -> Path:
    """Write ``records`` (and any ``extra`` top-level keys) as a detections file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, "records": [r.to_dict() for r in records]}) + "\n", encoding="utf-8")
    return path


# =============================================================================================================
# Threshold, NMS, named boxes
# =============================================================================================================
def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = NMS_IOU,
        class_aware: bool = True) -> np.ndarray:
    """Indices of the boxes that survive non-maximum suppression, in the authors' output order.

    Repeatedly pick the highest score (``numpy.argsort``'s last index) and drop the boxes whose IoU with it is not
    ``< iou`` (a 0/0 IoU, two empty boxes, drops too).  ``class_aware``: each label on its own, labels in ascending
    order; else all boxes together.  Areas are ``(x1 - x0) * (y1 - y0)`` in the boxes' own units and dtype.
    """
    labels = np.asarray(labels)
    groups = [np.flatnonzero(labels == lab) for lab in np.unique(labels)] if class_aware else [
        np.arange(len(labels))]
    kept: list[int] = []
    for members in groups:
        b, s = boxes[members], scores[members]
        x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        areas = (x1 - x0) * (y1 - y0)
        order = np.argsort(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            while order.size > 0:
                best, rest = order[-1], order[:-1]
                kept.append(int(members[best]))
                w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
                h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
                inter = w * h
                overlap = inter / (areas[best] + areas[rest] - inter)
                order = rest[overlap < iou]
    return np.asarray(kept, dtype=np.int64)


def kept_detections(record: DetectionRecord, score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
                    class_aware: bool = True) -> np.ndarray:
    """Indices into ``record``'s detections that pass ``score >= score_threshold`` and then :func:`nms` on the
    boxes divided by the image size (float32), in the order the authors list them."""
    passing = np.flatnonzero(record.scores >= np.float32(score_threshold))
    scale = np.array([record.width, record.height, record.width, record.height], dtype=np.float32)
    normalised = record.boxes[passing] / scale
    return passing[nms(normalised, record.scores[passing], record.labels[passing], nms_iou, class_aware)]


def detected_objects(record: DetectionRecord, score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
                     class_aware: bool = True) -> list[tuple[str, list[np.float32]]]:
    """The kept detections as the predicates want them: ``(query text, [x, y, w, h])`` in pixels, float32
    scalars computed as the authors do (normalised box × image size), in :func:`kept_detections`' order."""
    scale = np.array([record.width, record.height, record.width, record.height], dtype=np.float32)
    objects = []
    for i in kept_detections(record, score_threshold, nms_iou, class_aware):
        x0, y0, x1, y1 = record.boxes[i] / scale
        w, h = np.float32(record.width), np.float32(record.height)
        objects.append((record.queries[record.labels[i]], [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]))
    return objects


# =============================================================================================================
# Scoring
# =============================================================================================================
@dataclass
class DetectionResult(BenchmarkResult):
    """:class:`~lmd_utils.benchmark.BenchmarkResult` of scored detections, with notes shown above the last line."""

    notes: list[str] = field(default_factory=list)

    def format_table(self) -> str:
        lines = super().format_table().splitlines()
        return "\n".join(lines[:-1] + [f"({n})" for n in self.notes] + lines[-1:])


def score_record(record: DetectionRecord, sample: int = 0, score_threshold: float = SCORE_THRESHOLD,
                 nms_iou: float = NMS_IOU, class_aware: bool = True) -> PromptOutcome:
    """The verdict on one image: its prompt's predicate on :func:`detected_objects`."""
    spec = record.spec
    objects = detected_objects(record, score_threshold, nms_iou, class_aware)
    success = spec.check(objects)  # float32 boxes: the spatial rule compares centres in float32, as the authors
    return PromptOutcome(spec, sample, bool(success), [(n, [float(v) for v in b]) for n, b in objects])


def settings_label(score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
                   class_aware: bool = True) -> str:
    return f"score >= {score_threshold:g}, {'class-aware' if class_aware else 'class-agnostic'} NMS at IoU {nms_iou:g}"


def score_records(records: Sequence[DetectionRecord], source: str = "detections",
                  score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
                  class_aware: bool = True) -> DetectionResult:
    """Score every record (repeats of a prompt are samples 0, 1, ...); the table ends with ``overall: N/M``."""
    seen: Counter[str] = Counter()
    outcomes = []
    for record in records:
        outcomes.append(score_record(record, seen[record.prompt], score_threshold, nms_iou, class_aware))
        seen[record.prompt] += 1
    other = sum(r.queries != detection_queries(r.spec) for r in records)
    notes = [f"{other} record(s) used queries other than the paper's; boxes are named by the file's queries"
             ] if other else []
    return DetectionResult(stage=f"stage 2 (detections: {settings_label(score_threshold, nms_iou, class_aware)})",
                           source=source, outcomes=outcomes, notes=notes)


def score_detections_file(path: str | Path, **settings: Any) -> DetectionResult:
    """:func:`score_records` on :func:`load_detection_records` (``settings``: threshold, IoU, class_aware)."""
    return score_records(load_detection_records(path), source=str(path), **settings)


def detect_record(detector: Detector, image: Any, prompt: str | PromptSpec,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> DetectionRecord:
    """Run ``detector`` on ``image`` (PIL, array, or tensor in ``value_range``) with the prompt's queries."""
    from PIL import Image

    pil = Image.fromarray(as_uint8_image(image, value_range))
    queries = detection_queries(prompt)
    boxes, scores, labels = detector.detect(pil, queries)
    spec = None if isinstance(prompt, str) else prompt
    return DetectionRecord(spec.prompt if spec else str(prompt), pil.width, pil.height, queries,
                           np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                           np.asarray(labels, np.int64), prompt_spec=spec)


# =============================================================================================================
# Detectors
# =============================================================================================================
def _raw_from_outputs(logits: torch.Tensor, pred_boxes: torch.Tensor, width: float, height: float) -> RawDetections:
    """OWL-ViT/OWLv2 head outputs of one image → raw detections: per patch, the best query's sigmoid score and
    index, the ``(cx, cy, w, h)`` box in ``[0, 1]`` → pixel corners (what transformers' post-processing does
    before its threshold)."""
    best = logits.float().max(dim=-1)
    cx, cy, w, h = pred_boxes.float().unbind(-1)
    corners = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    corners = corners * torch.tensor([width, height, width, height], dtype=torch.float32, device=corners.device)
    return RawDetections(corners.cpu().numpy().astype(np.float32), torch.sigmoid(best.values).cpu().numpy(),
                         best.indices.cpu().numpy().astype(np.int64))


def tiny_owl_config(kind: str = "owlvit", vocab_size: int = 128, image_size: int = 64, patch_size: int = 16,
                    hidden: int = 32, max_text_length: int = 16):
    """A small OWL-ViT / OWLv2 config (random-weight models for tests and wiring); the special tokens are the
    last two ids, as :func:`~lmd_utils.offline_tokenizer.build_clip_tokenizer` makes them."""
    from transformers import Owlv2Config, OwlViTConfig

    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=max_text_length,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    config_class = {"owlvit": OwlViTConfig, "owlv2": Owlv2Config}[kind]
    return config_class(text_config=text, vision_config=vision, projection_dim=hidden)


def _query_words() -> list[str]:
    from .benchmark import CLASSES, COLOURS

    return ["a", "an", "photo", "of", *CLASSES, *COLOURS]


class OwlViTDetector:
    """OWL-ViT through ``transformers`` (``OwlViTForObjectDetection`` + ``OwlViTProcessor``), the paper's detector.

    Build it with :meth:`from_pretrained` (default ``google/owlvit-base-patch32``), :meth:`from_config` (random
    weights, offline tokenizer: tests), or from ready model and processor objects.
    """

    name = "owlvit"
    kind = "owlvit"
    default_model = DEFAULT_OWLVIT

    def __init__(self, model: Any, processor: Any, device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def _classes(cls):
        from transformers import OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

        return OwlViTForObjectDetection, OwlViTProcessor, OwlViTImageProcessor

    @classmethod
    def from_pretrained(cls, model_id: str | None = None, device: torch.device | str | None = None,
                        **model_kwargs: Any):
        """Load model and processor from the hub or a local folder (``model_id``, default the paper's
        checkpoint); from the hub only where :func:`~lmd_utils.downloads.check_download` allows it."""
        model_class, processor_class, _ = cls._classes()
        model_id = model_id or cls.default_model
        check_download(model_id, device, kind="detector")
        model = model_class.from_pretrained(model_id, **model_kwargs)
        return cls(model, processor_class.from_pretrained(model_id), device=device)

    @classmethod
    def from_config(cls, config: Any = None, tokenizer: Any = None, seed: int = 0,
                    device: torch.device | str | None = None):
        """Random weights from ``config`` (default :func:`tiny_owl_config`) with an offline CLIP tokenizer over the
        benchmark's query words (:func:`~lmd_utils.offline_tokenizer.build_clip_tokenizer`); no download."""
        from .offline_tokenizer import build_clip_tokenizer

        model_class, processor_class, image_processor_class = cls._classes()
        if tokenizer is None:
            tokenizer = build_clip_tokenizer(_query_words(), model_max_length=16)
        config = config or tiny_owl_config(cls.kind, vocab_size=len(tokenizer))
        side = config.vision_config.image_size
        size = {"height": side, "width": side}
        image_processor = image_processor_class(size=size, **({} if cls.kind == "owlv2" else {"crop_size": size}))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = model_class(config)
        return cls(model, processor_class(image_processor=image_processor, tokenizer=tokenizer), device=device)

    def _pixel_values(self, image: Any) -> torch.Tensor:
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]

    def _box_scale(self, width: int, height: int) -> tuple[float, float]:
        return float(width), float(height)

    @torch.no_grad()
    def detect(self, image: Any, queries: Sequence[str]) -> RawDetections:
        """Raw detections of ``queries`` in ``image`` (a PIL image or anything :func:`as_uint8_image` reads)."""
        from PIL import Image

        if not hasattr(image, "convert"):
            image = Image.fromarray(as_uint8_image(image))
        image = image.convert("RGB")
        text = self.processor.tokenizer(list(queries), padding="max_length", truncation=True, return_tensors="pt")
        outputs = self.model(input_ids=text["input_ids"].to(self.device),
                             attention_mask=text["attention_mask"].to(self.device),
                             pixel_values=self._pixel_values(image).to(self.device))
        return _raw_from_outputs(outputs.logits[0], outputs.pred_boxes[0], *self._box_scale(*image.size))


class Owlv2Detector(OwlViTDetector):
    """OWLv2 (``Owlv2ForObjectDetection``, default ``google/owlv2-base-patch16-ensemble``): an option, used in the
    authors' follow-up work.  OWLv2 pads the image to a square (grey, bottom/right) before resizing, so its boxes
    are scaled by the longer side.  Where its image processor cannot run (it needs scipy or torchvision), the
    same steps run here in torch (pad with 0.5, bilinear antialiased resize, CLIP normalisation), with a warning."""

    name = "owlv2"
    kind = "owlv2"
    default_model = DEFAULT_OWLV2

    @classmethod
    def _classes(cls):
        from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

        return Owlv2ForObjectDetection, Owlv2Processor, Owlv2ImageProcessor

    _processor_fails = False

    def _pixel_values(self, image: Any) -> torch.Tensor:
        if not self._processor_fails:
            try:
                return super()._pixel_values(image)
            except ImportError as e:
                self._processor_fails = True
                warnings.warn(f"OWLv2's image processor cannot run ({str(e).strip().splitlines()[0]}); "
                              "preprocessing in torch instead", stacklevel=2)
        ip = self.processor.image_processor
        x = torch.from_numpy(np.array(as_uint8_image(image))).permute(2, 0, 1).float() / 255.0
        side = max(x.shape[1:])
        padded = torch.full((3, side, side), 0.5)
        padded[:, : x.shape[1], : x.shape[2]] = x
        size = (ip.size["height"], ip.size["width"])
        resized = torch.nn.functional.interpolate(padded[None], size=size, mode="bilinear", antialias=True,
                                                  align_corners=False)
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (ip.image_mean, ip.image_std))
        return (resized - mean) / std

    def _box_scale(self, width: int, height: int) -> tuple[float, float]:
        side = float(max(width, height))
        return side, side


class ToyDetector:
    """The toy world's exact detector (:func:`lmd_utils.toyworld.detector.detect_boxes`) behind :class:`Detector`.

    Each toy object whose phrase (``"a red circle"``) matches a query, with ``"a photo of"`` and the article
    dropped, by colour and shape (``"red circle"``) or by shape alone (``"circle"``), becomes one detection with
    score 1 and the first matching query as its label; objects no query names are not reported, as an
    open-vocabulary detector reports only what it is asked for.
    """

    name = "toy"

    def __init__(self, **detect_kwargs: Any) -> None:
        self.detect_kwargs = detect_kwargs

    @staticmethod
    def _bare(text: str) -> str:
        words = text.strip().lower().split()
        if words[:3] == ["a", "photo", "of"]:
            words = words[3:]
        if words[:1] in (["a"], ["an"], ["the"]):
            words = words[1:]
        return " ".join(words)

    def detect(self, image: Any, queries: Sequence[str]) -> RawDetections:
        from .toyworld.detector import detect

        pixels = as_uint8_image(image)
        height, width = pixels.shape[:2]
        wanted = [self._bare(q) for q in queries]
        boxes, labels = [], []
        for d in detect(pixels, **self.detect_kwargs):
            names = (self._bare(d.phrase), d.shape)
            label = next((i for i, q in enumerate(wanted) if q in names), None)
            if label is not None:
                boxes.append([d.box.x0 * width, d.box.y0 * height, d.box.x1 * width, d.box.y1 * height])
                labels.append(label)
        return RawDetections(np.asarray(boxes, np.float32).reshape(-1, 4), np.ones(len(boxes), np.float32),
                             np.asarray(labels, np.int64))


DETECTORS = {"owlvit": OwlViTDetector, "owlv2": Owlv2Detector, "toy": ToyDetector}


def load_detector(name: str, model: str | None = None, device: torch.device | str | None = None) -> Detector:
    """``"owlvit"`` / ``"owlv2"`` (``model``: hub id or folder, default the standard checkpoint) or ``"toy"``."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if name == "toy":
        return ToyDetector()
    return DETECTORS[name].from_pretrained(model, device=device)


__all__ = [
    "SCORE_THRESHOLD", "NMS_IOU", "QUERY_TEMPLATE", "DEFAULT_OWLVIT", "DEFAULT_OWLV2", "DetectionFileError",
    "detection_queries", "RawDetections", "Detector", "DetectionRecord", "load_detection_records",
    "save_detection_records", "nms", "kept_detections", "detected_objects", "DetectionResult", "score_record",
    "settings_label", "score_records", "score_detections_file", "detect_record", "tiny_owl_config",
    "OwlViTDetector", "Owlv2Detector", "ToyDetector", "DETECTORS", "load_detector",
]
