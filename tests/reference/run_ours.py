"""Run our :func:`lmd_utils.pipeline.generate` on the shared model in the authors' mode and record every stage
(runs in ``.venv``).

"Authors' mode" = an :class:`~lmd_utils.config.LMDConfig` with the authors' values (``GuidanceConfig.authors()``:
head-summed energy with their literal scale, threshold and transfer weight; the full guidance forward; one box per
UNet batch; their step schedule from ``scenario.py``) plus EMULATIONS of the authors' behaviours that no config field
selects yet.  Each emulation wraps or replaces one of our functions from the outside (the library is not edited); its
name is what ``--ours NAME`` switches back to our own behaviour, one at a time, to measure that difference alone:

================  ============================================================================================
box_order         boxes sorted by caption before anything else (their ``convert_spec`` sorts ``gen_boxes``)
box_seeds         per-box noise seeds ``fg_seed_start + i`` (+12345 on a clash with the image seed), not ``seed+20+i``
box_raster        a box covers cells ``round(x0·W) .. round(x0·W) + round((x1-x0)·W)`` (their ``scale_proportion``:
                  start and width rounded), not ``round(x0·W) .. round(x1·W)`` (ours: both edges rounded)
tokens            energy tokens include the articles (``phrase_token_indices(skip_articles=False)``)
stop_rule         guidance stops on the loss of the PREVIOUS forward, carried across steps (starts at 10000)
alignment         centre of mass in cell indices (no +0.5) and shifts rounded to 1/8 of the frame
compose_step0     the composed step-0 latents also copy each aligned object's mask bounding box (+1 cell)
sam_point         SAM's point at the arg-max cell's top-left corner (ours: its centre)
sam_to_latent     SAM's masks bilinearly resized to the latent grid, any value > 0 kept (ours: majority per cell)
sam_iou           coarse IoU on the attention grid (ours: on the image grid)
sam_choice        penalised arg-max by latent-grid area (ours: largest mask passing both tests, else the coarse
                  mask)
sam               all four at once, i.e. our own ``extract_object_masks`` as ``generate`` calls it
================  ============================================================================================

Config switches that already exist, flipped back by ``--ours`` as well: ``head_reduction`` (ours: head mean with the
authors' numbers divided by the head count), ``truncate_forward`` (ours: on), ``batching`` (ours: all boxes in one
UNet batch), ``sam_fallback`` (only the existing ``fallback="authors"`` of :func:`~lmd_utils.masks.sam_refine_mask`,
every other SAM detail ours).

Usage: ``python tests/reference/run_ours.py --model DIR --sam DIR --out FILE [--scenario fast] [--ours NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import scenario as scenarios  # noqa: E402

import lmd_utils.composition as composition  # noqa: E402
import lmd_utils.masks as masks_mod  # noqa: E402
import lmd_utils.per_box as per_box_mod  # noqa: E402
import lmd_utils.pipeline as pipeline  # noqa: E402
import lmd_utils.sampling as sampling  # noqa: E402
from lmd_utils.attention import short_layer_name  # noqa: E402
from lmd_utils.config import GuidanceConfig, LMDConfig  # noqa: E402
from lmd_utils.layout import Box, Layout  # noqa: E402
from lmd_utils.masks import ObjectMask, gaussian_blur, normalized_threshold_masks  # noqa: E402

try:  # the SAM backends moved from lmd_utils.masks to lmd_utils.sam
    from lmd_utils.sam import TransformersSam, as_uint8_image  # noqa: E402
except ImportError:  # pragma: no cover - older tree
    from lmd_utils.masks import TransformersSam, as_uint8_image  # noqa: E402
from lmd_utils.models import load_pipeline, scheduler_copy  # noqa: E402

EMULATIONS = ("box_order", "box_seeds", "box_raster", "tokens", "stop_rule", "alignment", "compose_step0",
              "sam_point", "sam_to_latent", "sam_iou", "sam_choice", "sam")
SWITCHES = ("head_reduction", "truncate_forward", "batching", "sam_fallback")

REC: dict[str, torch.Tensor] = {}
META: dict = {"energies": {}, "token_indices": {}, "prompts": {}, "notes": []}


def put(name: str, value) -> None:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    value = torch.as_tensor(value).detach().cpu()
    if value.dtype == torch.float64:
        value = value.float()
    REC[name] = value.contiguous().clone()


# ---------------------------------------------------------------------------------------------------------
# recording (and the authors' stop rule) around BoxGuidance
# ---------------------------------------------------------------------------------------------------------
class _Counter:
    per_box_next = 0


def make_guidance_class(authors_stop: bool, label_of):
    """A BoxGuidance that records energies and guided latents; with ``authors_stop`` it runs the authors' loop."""

    class RecordingGuidance(sampling.BoxGuidance):
        def __init__(self, targets, config=None):
            super().__init__(targets, config)
            self.labels = label_of(len(self.targets))
            self.carried = [10000.0] * len(self.targets)  # the authors' initial ``loss = torch.tensor(10000.)``

        def _log(self, step, it, element, energy):
            META["energies"].setdefault(self.labels[element], []).append([int(step), int(it), float(energy)])

        def before_step(self, state):
            if authors_stop:
                out = self._authors_before_step(state)
            else:
                start = len(self.log)
                out = super().before_step(state)
                for entry in self.log[start:]:
                    for e, energy in zip(entry.elements, entry.energies):
                        self._log(entry.step, entry.iteration, e, energy)
            if state.step < self.config.guidance_steps:
                latents = state.latents if out is None else out
                for e, label in enumerate(self.labels):
                    GUIDED.setdefault(label, {})[state.step] = latents[e].detach().cpu().clone()
            return out

        @torch.enable_grad()
        def _authors_before_step(self, state):
            cfg = self.config
            n_iter = cfg.iterations_at(state.step)
            if n_iter == 0:
                return None
            scale = sampling.guidance_step_scale(state.scheduler, state.timestep, state.step)
            latents = state.latents.detach().clone()
            for e in range(len(self.targets)):
                if not self.targets[e]:
                    continue
                z = latents[e:e + 1]
                it = 0
                # authors: ``while loss / loss_scale > loss_threshold and iteration < max_iter``, ``loss`` being the
                # value of the previous forward (before the last update), kept across steps
                while self.carried[e] > cfg.loss_threshold and it < n_iter:
                    z = z.detach().requires_grad_(True)
                    energy = self.compute_energy(state.pipe, z, state.timestep, state.step,
                                                 state.cond_embeds[e:e + 1], state.scheduler, [e])
                    grad = torch.autograd.grad(energy.sum(), z)[0]
                    z = (z - (cfg.loss_scale * scale) * grad).detach()
                    self.carried[e] = float(energy.detach())
                    self._log(state.step, it, e, self.carried[e])
                    it += 1
                latents[e:e + 1] = z
            return latents

    return RecordingGuidance


GUIDED: dict[str, dict[int, torch.Tensor]] = {}


def per_box_labels(n):
    start = _Counter.per_box_next
    _Counter.per_box_next += n
    return [f"per_box.{start + e}" for e in range(n)]


# ---------------------------------------------------------------------------------------------------------
# emulations of the authors' behaviours (outside the library)
# ---------------------------------------------------------------------------------------------------------
def emulate_box_seeds(fg_seed_start: int, seed: int) -> None:
    original = per_box_mod.plan_per_box

    def plan_per_box(layout, seed_, *args, **kwargs):
        plan = original(layout, seed_, *args, **kwargs)
        plan.seeds = [s + 12345 if s == seed else s for s in (fg_seed_start + i for i in range(len(plan.prompts)))]
        return plan

    per_box_mod.plan_per_box = plan_per_box


def emulate_box_raster() -> None:
    import lmd_utils.layout as layout_mod

    def mask(self, height, width, dtype=torch.float32):
        x0, y0 = round(self.x0 * width), round(self.y0 * height)
        x1, y1 = x0 + round((self.x1 - self.x0) * width), y0 + round((self.y1 - self.y0) * height)
        m = torch.zeros(height, width, dtype=dtype)
        m[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)] = 1
        return m

    layout_mod.Box.mask = mask


def emulate_tokens() -> None:
    original = sampling.ObjectTarget.for_phrase.__func__

    def for_phrase(cls, tokenizer, prompt, phrase, boxes, start=0, **kwargs):
        kwargs.setdefault("skip_articles", False)
        return original(cls, tokenizer, prompt, phrase, boxes, start=start, **kwargs)

    sampling.ObjectTarget.for_phrase = classmethod(for_phrase)


def emulate_alignment() -> None:
    def alignment_shift(mask, box, horizontal_only=False, quantum=1):
        h, w = mask.shape[-2:]
        m = mask.double()
        total = m.sum()
        cx = float((m.sum(0) @ torch.arange(w, dtype=torch.float64)) / total) / w  # cell index, no +0.5
        cy = float((m.sum(1) @ torch.arange(h, dtype=torch.float64)) / total) / h
        x_off, y_off = box.center[0] - cx, 0.0 if horizontal_only else box.center[1] - cy
        dx, dy = round(x_off * 8) * (w // 8), round(y_off * 8) * (h // 8)  # 1/8 of the frame
        return composition.Shift(int(dx), int(dy), (h, w))

    composition.alignment_shift = alignment_shift


def emulate_compose_step0() -> None:
    original = pipeline.compose_trajectory

    def compose_trajectory(aligned, shared_noise):
        composed, union = original(aligned, shared_noise)
        first = shared_noise[0].to(composed.dtype).clone()
        order = composition.paste_order(torch.stack([a.mask for a in aligned])).tolist()
        h, w = first.shape[-2:]
        for i in order:  # the mask's bounding box, one cell larger on each side, from the object's x_T
            rows, cols = torch.where(aligned[i].mask)
            r0, r1 = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 1, h)
            c0, c1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 1, w)
            first[..., r0:r1 + 1, c0:c1 + 1] = aligned[i].latents[0][..., r0:r1 + 1, c0:c1 + 1]
        for i in order:
            first = torch.where(aligned[i].mask, aligned[i].latents[0], first)
        composed = composed.clone()
        composed[0] = first
        return composed, union

    pipeline.compose_trajectory = compose_trajectory


def make_sam_masks(ours: set[str]):
    """The authors' ``sam_refine_attn`` (point input) assembled from our pieces, each of its four rules replaceable by
    ours (``--ours sam_point / sam_to_latent / sam_iou / sam_choice``):

    * point: arg-max cell's top-left corner ``col·W/w`` (theirs) | its centre, :func:`argmax_points` (ours);
    * to_latent: SAM masks bilinearly resized to the latent grid, any value > 0 kept (theirs) | majority of each
      latent cell, ``_to_latent`` (ours);
    * iou: coarse IoU on the attention grid against the latent masks bilinearly resized there, any > 0, eps 1e-6
      (theirs) | on the image grid against the nearest-up-sampled coarse mask, :func:`mask_iou` (ours);
    * choice: arg-max of ``area − max_area·[score < 0.85] − max_area·[IoU < 0.25]`` with areas on the latent grid
      (theirs) | largest mask passing both tests, else the coarse mask, :func:`select_sam_mask` (ours).
    Blur (σ 1.5) and coarse mask (min-max > 0.25 over the whole map) are the same rule on both sides.
    """

    def sam_masks(attention_maps, boxes, latent_size, images=None, backend=None, progress=True, **kwargs):
        out = []
        for i in range(len(boxes)):
            smooth = gaussian_blur(attention_maps[i].float(), 1.5)
            coarse = normalized_threshold_masks(smooth, None, threshold=0.25)
            image = as_uint8_image(images[i])
            H, W = image.shape[:2]
            h, w = smooth.shape
            if "sam_point" in ours:
                p = masks_mod.argmax_points(smooth, (H, W), sigma=0.0)
                point = (float(p[0]), float(p[1]))
            else:
                row, col = divmod(int(smooth.flatten().argmax()), w)
                point = (float(col * (W // w)), float(row * (H // h)))
            sam_masks_, scores = backend.predict(image, point)
            sam_masks_, scores = sam_masks_.bool().cpu(), scores.float().cpu()
            notes: list[str] = []
            if "sam_to_latent" in ours:
                on_latent = torch.stack([masks_mod._to_latent(m, tuple(latent_size), notes) for m in sam_masks_])
            else:
                on_latent = F.interpolate(sam_masks_.float()[None], tuple(latent_size), mode="bilinear")[0] > 0
            if "sam_iou" in ours:
                ious = masks_mod.mask_iou(masks_mod.resize_masks(coarse, (H, W), rule="nearest"), sam_masks_)
            else:
                on_attention = F.interpolate(on_latent.float()[None], (h, w), mode="bilinear")[0] > 0
                inter = (coarse[None] & on_attention).flatten(1).sum(1).double()
                union = (coarse[None] | on_attention).flatten(1).sum(1).double()
                ious = (inter / (union + 1e-6)).float()
            source, index = "sam", None
            if "sam_choice" in ours:
                ok = (scores >= 0.85) & (ious >= 0.25)
                if ok.any():
                    areas = sam_masks_.flatten(1).sum(1)
                    index = int(torch.where(ok, areas, torch.full_like(areas, -1)).argmax())
                    latent = on_latent[index]
                else:
                    source = "coarse-fallback"
                    latent = masks_mod._to_latent(masks_mod.resize_masks(coarse, (H, W), rule="nearest"),
                                                  tuple(latent_size), notes)
            else:
                areas = on_latent.flatten(1).sum(1)
                big = areas.max()
                index = int((areas - big * (scores < 0.85).long() - big * (ious < 0.25).long()).argmax())
                latent = on_latent[index]
            out.append(ObjectMask(latent_mask=latent, source=source, coarse_mask=coarse,
                                  image_mask=None if index is None else sam_masks_[index], point_xy=point,
                                  sam_scores=scores, sam_coarse_ious=ious, sam_index=index, notes=notes))
        return out

    return sam_masks


class RecordingSam:
    """A SAM backend that records what it was asked and what it answered."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def predict(self, image, point_xy):
        masks, scores = self.backend.predict(image, point_xy)
        self.calls.append((np.asarray(image).copy(), point_xy, masks.clone(), scores.clone()))
        return masks, scores


# ---------------------------------------------------------------------------------------------------------
def layout_of(sc: dict, sort: bool) -> Layout:
    boxes = [Box.from_xywh(name, xywh, canvas=sc["width"]) for name, xywh in sc["gen_boxes"]]
    if sort:
        boxes = sorted(boxes, key=lambda b: b.phrase)  # their convert_spec: sorted(gen_boxes, key=name), stable
    return Layout(boxes=boxes, background=sc["bg_prompt"], negative=sc["extra_neg_prompt"], prompt=sc["prompt"])


def config_of(sc: dict, ours: set[str], heads: int) -> LMDConfig:
    def guidance(prefix: str) -> GuidanceConfig:
        g = GuidanceConfig.authors(loss_scale=sc[prefix + "loss_scale"] if prefix else sc["loss_scale"],
                                   loss_threshold=sc[prefix + "loss_threshold"],
                                   iterations=tuple(sc[prefix + "max_iter"]), guidance_steps=sc[prefix + "max_index_step"],
                                   transfer_weight=sc["ref_ca_loss_weight"], layers=(), truncate_forward=False)
        if "head_reduction" in ours:  # ours: head mean, the authors' numbers expressed per head of this model
            g = replace(g, head_reduction="mean", loss_scale=g.loss_scale * heads,
                        loss_threshold=g.loss_threshold / heads, transfer_weight=g.transfer_weight / heads)
        if "truncate_forward" in ours:
            g = replace(g, truncate_forward=True)
        return g

    return LMDConfig(
        num_inference_steps=sc["num_inference_steps"], guidance_scale=sc["guidance_scale"],
        height=sc["height"], width=sc["width"],
        per_box_guidance=guidance(""), overall_guidance=guidance("overall_"),
        mask_start_step=sc["attn_aggregation_step_start"], mask_method="normalized", placement="authors",
        floor_padding=sc["so_floor_padding"], noise_blend_ratio=sc["fg_blending_ratio"],
        frozen_ratio=sc["frozen_step_ratio"], attention_transfer=True, overall_prompt="authors",
        max_batch=None if "batching" in ours else 1,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sam", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenario", default="fast")
    ap.add_argument("--authors", type=Path, default=None,
                    help="the authors' record: also run our mask step on THEIR per-box images and attention maps")
    ap.add_argument("--ours", nargs="*", default=[], choices=EMULATIONS + SWITCHES,
                    help="use our behaviour instead of the authors' for these")
    args = ap.parse_args()
    sc = scenarios.get(args.scenario)
    ours = set(args.ours)
    start = time.perf_counter()

    pipe = load_pipeline(str(args.model), device="cpu", dtype=torch.float32)
    heads = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads
    layout = layout_of(sc, sort="box_order" not in ours)
    config = config_of(sc, ours, heads)

    authors_stop = "stop_rule" not in ours
    per_box_mod.BoxGuidance = make_guidance_class(authors_stop, per_box_labels)
    composition.BoxGuidance = make_guidance_class(authors_stop, lambda n: ["overall"] * n)
    if "box_seeds" not in ours:
        emulate_box_seeds(sc["fg_seed_start"], sc["seed"])
    if "box_raster" not in ours:
        emulate_box_raster()
    if "tokens" not in ours:
        emulate_tokens()
    if "alignment" not in ours:
        emulate_alignment()
    if "compose_step0" not in ours:
        emulate_compose_step0()
    if "sam" not in ours and "sam_fallback" not in ours:
        pipeline.extract_object_masks = make_sam_masks(ours)
    elif "sam" not in ours:  # only the existing switch: our SAM path with the authors' fallback rule
        original_extract = pipeline.extract_object_masks
        pipeline.extract_object_masks = lambda *a, **k: original_extract(
            *a, **({**k, "fallback": "authors"} if k.get("backend") is not None else k))

    # record the shared noise and the prompt embeddings where generate() makes them
    original_noise = pipeline.initial_noise

    def initial_noise(*a, **k):
        x = original_noise(*a, **k)
        put("noise.shared", x[0])
        return x

    pipeline.initial_noise = initial_noise
    encoded: list[tuple[str, list[str], torch.Tensor]] = []
    for module, which in ((per_box_mod, "per_box"), (pipeline, "overall")):
        original_encode = module.encode_prompts

        def encode_prompts(pipe_, prompts, _orig=original_encode, _which=which):
            e = _orig(pipe_, prompts)
            encoded.append((_which, [prompts] if isinstance(prompts, str) else list(prompts), e))
            return e

        module.encode_prompts = encode_prompts

    sam = None
    if args.sam is not None:
        from transformers import SamModel, SamProcessor
        sam = RecordingSam(TransformersSam(SamModel.from_pretrained(str(args.sam)),
                                           SamProcessor.from_pretrained(str(args.sam)), device="cpu"))

    result = pipeline.generate(pipe, layout, seed=sc["seed"], config=config, sam=sam, progress=False)

    # ---- record the stages -------------------------------------------------------------------------------
    tok = pipe.tokenizer
    for which, prompts, e in encoded:
        is_negative = which == "per_box" and len(prompts) == 1 and prompts[0] == result.per_box.plan.negative_prompt \
            or which == "overall" and prompts[0] == result.negative_prompt
        part = "uncond" if is_negative else "cond"
        put(f"embeds.{which}.{part}", e)
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        put(f"tokens.{which}.{'negative_ids' if is_negative else 'ids'}", ids)
        META["prompts"][f"{which}.negative" if is_negative else which] = prompts[0] if is_negative else prompts
    pb = result.per_box
    n = len(layout.boxes)
    for i in range(n):
        put(f"per_box.{i}.start", pb.latents[0, i])
        put(f"per_box.{i}.latents", pb.latents[:, i])
        put(f"per_box.{i}.guided", torch.stack([GUIDED[f"per_box.{i}"][s]
                                                for s in range(config.per_box_guidance.guidance_steps)]))
        put(f"per_box.{i}.mask_map", pb.mask_maps[i])
        put(f"per_box.{i}.image", as_uint8_image(pb.images[i]))
        by_layer: dict[str, dict[int, torch.Tensor]] = {}
        for (layer, step), m in pb.references[i].items():
            by_layer.setdefault(short_layer_name(layer), {})[step] = m
        for layer, steps in by_layer.items():
            put(f"per_box.{i}.reference.{layer}", torch.stack([steps[s] for s in sorted(steps)]))
        hook = pb.guidance[i if config.max_batch == 1 else 0]
        element = 0 if config.max_batch == 1 else i
        t = hook.targets[element]
        META["token_indices"][f"per_box.{i}"] = {"objects": [list(o.token_indices) for o in t.objects],
                                                 "words": [pb.word_tokens[i]], "prompt": pb.plan.prompts[i],
                                                 "phrases": [layout.boxes[i].phrase]}
    ot = result.overall_guidance.targets[0]
    words, seen = [], set()
    for tr in ot.transfers:
        if tr.object_index not in seen:
            seen.add(tr.object_index)
            words.append(tr.token_index)
    META["token_indices"]["overall"] = {"objects": [list(o.token_indices) for o in ot.objects], "words": words,
                                        "prompt": result.prompt,
                                        "phrases": [p for p, _ in composition.overall_phrases(layout)]}
    if sam is not None:
        for i, (image, point, sam_masks, scores) in enumerate(sam.calls):
            put(f"masks.{i}.point", torch.tensor(point, dtype=torch.float32))
            put(f"masks.{i}.sam_scores", scores)
            put(f"masks.{i}.sam_image_masks", sam_masks.bool())
            put(f"masks.{i}.sam_latent_masks",
                F.interpolate(sam_masks.float()[None], tuple(pb.latents.shape[-2:]), mode="bilinear")[0] > 0)
    for i, m in enumerate(result.masks):
        put(f"masks.{i}.coarse", m.coarse_mask)
        put(f"masks.{i}.smooth", gaussian_blur(pb.mask_maps[i].float(), 1.5))
        put(f"masks.{i}.latent", m.latent_mask)
        if m.sam_coarse_ious is not None:
            put(f"masks.{i}.coarse_ious", m.sam_coarse_ious)
        META.setdefault("mask_sources", []).append(m.source)
    for i, a in enumerate(result.aligned):
        put(f"aligned.{i}.latents", a.latents)
        put(f"aligned.{i}.mask", a.mask)
        put(f"aligned.{i}.offset", torch.tensor(a.shift.normalized, dtype=torch.float32))
        by_layer = {}
        for (layer, step), m in (a.attention or {}).items():
            by_layer.setdefault(short_layer_name(layer), {})[step] = m
        for layer, steps in by_layer.items():
            put(f"aligned.{i}.reference.{layer}", torch.stack([steps[s] for s in sorted(steps)]))
    if args.authors is not None and sam is not None:  # the mask step alone, on identical inputs
        from safetensors import safe_open
        with safe_open(str(args.authors), "pt") as f:
            maps = torch.stack([f.get_tensor(f"per_box.{i}.mask_map") for i in range(n)])
            images = [f.get_tensor(f"per_box.{i}.image").numpy() for i in range(n)]
        probe = RecordingSam(sam.backend)
        same = pipeline.extract_object_masks(maps, pb.plan.generation_boxes, tuple(pb.latents.shape[-2:]),
                                             images=images, backend=probe, progress=False)
        for i, (m, (_, point, sam_masks, scores)) in enumerate(zip(same, probe.calls)):
            put(f"same_input.masks.{i}.point", torch.tensor(point, dtype=torch.float32))
            put(f"same_input.masks.{i}.sam_scores", scores)
            put(f"same_input.masks.{i}.sam_image_masks", sam_masks.bool())
            put(f"same_input.masks.{i}.coarse", m.coarse_mask)
            put(f"same_input.masks.{i}.latent", m.latent_mask)
    put("composed.latents", result.composed_latents)
    put("composed.union", result.union_mask)
    put("overall.latents", result.overall_latents[:, 0])
    put("overall.guided", torch.stack([GUIDED["overall"][s] for s in range(config.overall_guidance.guidance_steps)]))
    put("final.latents", result.overall_latents[-1, 0])
    put("final.image", (result.image.permute(1, 2, 0) * 255).round().to(torch.uint8))
    sched = scheduler_copy(pipe)
    sched.set_timesteps(config.num_inference_steps)
    put("timesteps", sched.timesteps)
    META["frozen_steps"] = result.frozen_steps
    META["seconds"] = time.perf_counter() - start
    META["scenario"] = args.scenario
    META["side"] = "ours"
    META["ours"] = sorted(ours)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(REC, str(args.out), metadata={"meta": json.dumps(META)})
    print(f"ours{' (' + ', '.join(sorted(ours)) + ')' if ours else ''}: {len(REC)} tensors in "
          f"{META['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
