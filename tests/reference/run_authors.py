"""Run the authors' LMD (``generation/lmd.py::run``) on the shared model and record every stage (runs in ``.venv-ref``).

Their code is imported from a COPY of the reference folder made here in a temporary directory (never edited);
everything below only wraps their functions from the outside:

* stand-ins the reference README names: a ``gradio`` module whose ``Error`` is an exception class, and
  ``torch_device = "cpu"`` in every module that imported it;
* CPU stand-ins the README does not name: ``utils/guidance.py`` builds masks with ``device="cuda"`` and calls
  ``.cuda()`` on tensors, ``generation/lmd.py`` calls ``composed_latents.cuda()``: here ``torch.Tensor.cuda`` returns
  the tensor itself and ``torch.zeros(device="cuda")`` allocates on the CPU.  ``models/sam.py`` runs SAM inside
  ``torch.autocast(torch_device)``, i.e. bfloat16 on a CPU (float16 on their GPU): disabled here so SAM runs in
  float32 like ours (see the report's list of differences);
* the model: their ``models.model_dict`` is filled from the shared folder (``make_model.py``) with their vendored
  ``UNet2DConditionModel``, diffusers 0.18's VAE and DDIM, transformers 4.40's CLIP text model and slow
  ``CLIPTokenizer`` (vocab.json + merges.txt), and the shared random SAM (``make_sam.py``);
* recording: wrappers around ``get_input_latents_list``, ``encode_prompts``, ``get_phrase_indices``,
  ``latent_backward_guidance``, ``compute_ca_lossv3``, ``generate_single_object_with_box``, ``get_token_attnv2``,
  the SAM steps, ``align_with_bboxes``, ``compose_latents_with_alignment`` and ``generate_partial_frozen`` store
  their inputs/outputs under the stage names ``compare.py`` reads.

Usage: ``python tests/reference/run_authors.py --model DIR --sam DIR --out FILE [--scenario fast|full]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scenario as scenarios  # noqa: E402

REPO = HERE.parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "LLM-groundedDiffusion"

REC: dict[str, torch.Tensor] = {}
META: dict = {"energies": {}, "token_indices": {}, "prompts": {}, "sam": {}, "notes": []}
STATE = {"pass": None, "box": -1, "iter": {}}


def put(name: str, value) -> None:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    value = value.detach().cpu()
    if value.dtype == torch.float64:
        value = value.float()
    REC[name] = value.contiguous().clone()


# ---------------------------------------------------------------------------------------------------------
# importing their code on a CPU
# ---------------------------------------------------------------------------------------------------------
class _TorchOnCpu(types.ModuleType):
    """``torch`` as seen by one of their modules: ``zeros(device="cuda")`` allocates on the CPU, ``autocast`` is off."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)

    @staticmethod
    def autocast(*args, **kwargs):
        return torch.autocast("cpu", enabled=False)


def import_reference(reference: Path, workdir: Path):
    copy = workdir / "LLM-groundedDiffusion"
    shutil.copytree(reference, copy, ignore=shutil.ignore_patterns("__pycache__", "cache", "*.ipynb"))
    sys.path.insert(0, str(copy))
    gradio = types.ModuleType("gradio")
    gradio.Error = type("Error", (Exception,), {})
    sys.modules["gradio"] = gradio
    torch.Tensor.cuda = lambda self, *a, **k: self  # their .cuda() calls: stay on the CPU

    import utils  # noqa: F401  (utils/__init__ star-imports torch_device from utils.utils)
    import utils.utils
    utils.utils.torch_device = utils.torch_device = "cpu"
    import models
    import models.models
    import models.pipelines
    import models.sam
    import utils.guidance
    import utils.latents
    for module in (utils, utils.utils, utils.latents, models, models.models, models.pipelines, models.sam):
        module.torch_device = "cpu"
    utils.guidance.torch = _TorchOnCpu()
    models.sam.torch = _TorchOnCpu()
    return copy


def _clip_text_model(folder: Path):
    """transformers 5 saves ``CLIPTextModel`` weights without the ``text_model.`` prefix that 4.40 expects."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(folder))
    model = CLIPTextModel(config)
    state = load_file(str(folder / "model.safetensors"))
    state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.float()


def load_model_dict(model_dir: Path, sam_dir: Path | None):
    from diffusers import AutoencoderKL, DDIMScheduler
    from easydict import EasyDict
    from transformers import CLIPTokenizer

    from models.unet_2d_condition import UNet2DConditionModel

    dtype = torch.float32
    tok = model_dir / "tokenizer"
    tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    with contextlib.redirect_stderr(io.StringIO()):
        unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet", torch_dtype=dtype)
    model_dict = EasyDict(
        vae=AutoencoderKL.from_pretrained(str(model_dir), subfolder="vae", torch_dtype=dtype),
        tokenizer=tokenizer,
        text_encoder=_clip_text_model(model_dir / "text_encoder"),
        unet=unet,
        scheduler=DDIMScheduler.from_pretrained(str(model_dir), subfolder="scheduler"),
        dtype=dtype,
    )
    for m in (model_dict.vae, model_dict.text_encoder, model_dict.unet):
        m.eval().requires_grad_(False)
    if sam_dir is not None:
        from transformers import SamModel, SamProcessor
        model_dict.sam_model = SamModel.from_pretrained(str(sam_dir)).eval()
        model_dict.sam_processor = SamProcessor.from_pretrained(str(sam_dir))
    return model_dict


# ---------------------------------------------------------------------------------------------------------
# recording wrappers
# ---------------------------------------------------------------------------------------------------------
def install_recorders(lmd, sc: dict) -> None:
    import models
    import models.pipelines as pipelines
    import models.sam as sam
    import utils.attn as attn
    import utils.guidance as guidance
    import utils.latents as latents

    guidance_keys = [tuple(k) for k in pipelines.DEFAULT_GUIDANCE_ATTN_KEYS]
    layer_names = {("mid", 0, 0, 0): "mid_block.attentions.0", ("up", 1, 0, 0): "up_blocks.1.attentions.0",
                   ("up", 1, 1, 0): "up_blocks.1.attentions.1", ("up", 1, 2, 0): "up_blocks.1.attentions.2"}

    original_inputs = latents.get_input_latents_list

    def get_input_latents_list(*args, **kwargs):
        input_latents_list, latents_bg = original_inputs(*args, **kwargs)
        put("noise.shared", latents_bg[0])
        for i, x in enumerate(input_latents_list):
            put(f"per_box.{i}.start", x[0])
        return input_latents_list, latents_bg

    latents.get_input_latents_list = get_input_latents_list

    original_encode = models.encode_prompts
    calls = {"n": 0}

    def encode_prompts(tokenizer, text_encoder, prompts, negative_prompt="", **kwargs):
        out = original_encode(tokenizer=tokenizer, text_encoder=text_encoder, prompts=prompts,
                              negative_prompt=negative_prompt, **kwargs)
        which = "per_box" if calls["n"] == 0 else "overall"
        calls["n"] += 1
        uncond, cond = (out[0], out[1]) if kwargs.get("one_uncond_input_only") else (out[1], out[2])
        put(f"embeds.{which}.cond", cond)
        put(f"embeds.{which}.uncond", uncond)
        META["prompts"][which] = list(prompts)
        META["prompts"][f"{which}.negative"] = negative_prompt
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        put(f"tokens.{which}.ids", ids)
        put(f"tokens.{which}.negative_ids", tokenizer([negative_prompt], padding="max_length",
                                                      max_length=tokenizer.model_max_length,
                                                      return_tensors="pt").input_ids)
        return out

    models.encode_prompts = encode_prompts

    original_indices = guidance.get_phrase_indices

    def get_phrase_indices(*args, **kwargs):
        out = original_indices(*args, **kwargs)
        key = STATE["pass"] or "overall"
        META["token_indices"][key] = {"objects": [list(map(int, p)) for p in out[0]],
                                      "words": [int(w) for w in out[1]] if len(out) > 1 and kwargs.get(
                                          "return_word_token_indices") else None,
                                      "prompt": kwargs.get("prompt"), "phrases": list(kwargs.get("phrases", []))}
        return out

    guidance.get_phrase_indices = get_phrase_indices

    original_loss = guidance.compute_ca_lossv3

    def compute_ca_lossv3(*args, index=None, **kwargs):
        loss = original_loss(*args, index=index, **kwargs)
        key = (STATE["pass"], int(index))
        it = STATE["iter"].get(key, 0)
        STATE["iter"][key] = it + 1
        META["energies"].setdefault(STATE["pass"], []).append([int(index), it, float(loss.item())])
        return loss

    guidance.compute_ca_lossv3 = compute_ca_lossv3

    original_guidance = pipelines.latent_backward_guidance
    trajectory: dict[str, dict] = {}

    def latent_backward_guidance(scheduler, unet, cond_embeddings, index, *args, **kwargs):
        before = args[3] if len(args) > 3 else kwargs["latents"]  # (bboxes, object_positions, t, latents, loss)
        record = trajectory.setdefault(STATE["pass"], {"before": {}, "after": {}})
        record["before"][int(index)] = before.detach()[0].clone()
        latents_out, loss = original_guidance(scheduler, unet, cond_embeddings, index, *args, **kwargs)
        record["after"][int(index)] = latents_out.detach()[0].clone()
        return latents_out, loss

    pipelines.latent_backward_guidance = latent_backward_guidance

    original_single = lmd.generate_single_object_with_box

    def generate_single_object_with_box(prompt, box, phrase, word, *args, **kwargs):
        STATE["box"] += 1
        i = STATE["box"]
        STATE["pass"] = f"per_box.{i}"
        latents_all, mask, saved_attns, image_box_ann = original_single(prompt, box, phrase, word, *args, **kwargs)
        put(f"per_box.{i}.latents", latents_all[:, 0])
        steps = sc["overall_max_index_step"]
        for key in guidance_keys:
            maps = []
            for s in range(steps):
                a = saved_attns[s][key][0, :, :, 0]  # (heads, HW): cond half, the word token
                side = int(math.isqrt(a.shape[-1]))
                maps.append(a.reshape(a.shape[0], side, side))
            put(f"per_box.{i}.reference.{layer_names[key]}", torch.stack(maps))
        META.setdefault("per_box_boxes", []).append([float(v) for v in box])
        META.setdefault("per_box_words", []).append(word)
        guided = trajectory[STATE["pass"]]
        put(f"per_box.{i}.guided", torch.stack([guided["after"][s] for s in range(sc["max_index_step"])]))
        STATE["pass"] = None
        return latents_all, mask, saved_attns, image_box_ann

    lmd.generate_single_object_with_box = generate_single_object_with_box

    original_token_attn = attn.get_token_attnv2

    def get_token_attnv2(*args, **kwargs):
        out = original_token_attn(*args, **kwargs)
        put(f"{STATE['pass']}.mask_map", np.asarray(out, dtype=np.float32))
        return out

    attn.get_token_attnv2 = get_token_attnv2

    # SAM: image, point, SAM's masks/scores, coarse mask, IoUs, choice
    original_refine = sam.sam_refine_attn

    def sam_refine_attn(sam_input_image, token_attn_np, model_dict, **kwargs):
        i = STATE["box"]
        put(f"per_box.{i}.image", np.asarray(sam_input_image))
        mask, conf = original_refine(sam_input_image=sam_input_image, token_attn_np=token_attn_np,
                                     model_dict=model_dict, **kwargs)
        put(f"masks.{i}.latent", np.asarray(mask))
        return mask, conf

    sam.sam_refine_attn = sam_refine_attn

    original_preprocess = sam.preprocess_mask

    def preprocess_mask(smooth, mask_th, n_erode_dilate_mask=0):
        out = original_preprocess(smooth, mask_th, n_erode_dilate_mask=n_erode_dilate_mask)
        put(f"masks.{STATE['box']}.coarse", np.asarray(out))
        put(f"masks.{STATE['box']}.smooth", np.asarray(smooth, dtype=np.float32))
        return out

    sam.preprocess_mask = preprocess_mask

    original_point = sam.sam_point_input

    def sam_point_input(sam_model_dict, image, input_points, **kwargs):
        processor = sam_model_dict["sam_processor"].image_processor
        post = processor.post_process_masks
        full = {}

        def capture(*a, **k):
            out = post(*a, **k)
            full["masks"] = out[0][0]
            return out

        processor.post_process_masks = capture
        try:
            masks, scores = original_point(sam_model_dict, image, input_points, **kwargs)
        finally:
            processor.post_process_masks = post
        i = STATE["box"]
        put(f"masks.{i}.point", torch.tensor(input_points[0][0], dtype=torch.float32))
        put(f"masks.{i}.sam_scores", torch.as_tensor(np.asarray(scores), dtype=torch.float32))
        put(f"masks.{i}.sam_image_masks", full["masks"].bool())
        put(f"masks.{i}.sam_latent_masks", np.asarray(masks[0][0]))
        return masks, scores

    sam.sam_point_input = sam_point_input

    original_iou = sam.get_iou_with_resize

    def get_iou_with_resize(mask, masks, masks_shape):
        out = original_iou(mask, masks, masks_shape)
        put(f"masks.{STATE['box']}.coarse_ious", np.asarray(out, dtype=np.float32))
        return out

    sam.get_iou_with_resize = get_iou_with_resize

    original_align = latents.align_with_bboxes

    def align_with_bboxes(latents_all_list, mask_tensor_list, bboxes, **kwargs):
        new_latents, new_masks, offsets = original_align(latents_all_list, mask_tensor_list, bboxes, **kwargs)
        for i, (x, m, o) in enumerate(zip(new_latents, new_masks, offsets)):
            put(f"aligned.{i}.latents", x[:, 0])
            put(f"aligned.{i}.mask", m.bool())
            # the shift their shift_tensor applies: the normalised offset rounded to 1/8 of the frame
            put(f"aligned.{i}.offset", torch.tensor([round(o[0] * 8) / 8, round(o[1] * 8) / 8], dtype=torch.float32))
            META.setdefault("raw_offsets", []).append([float(o[0]), float(o[1])])
        return new_latents, new_masks, offsets

    latents.align_with_bboxes = align_with_bboxes

    original_compose = latents.compose_latents_with_alignment

    def compose_latents_with_alignment(*args, **kwargs):
        composed, foreground, offsets = original_compose(*args, **kwargs)
        put("composed.latents", composed[:, 0])
        put("composed.union", foreground != 0)
        put("composed.foreground_indices", foreground)
        return composed, foreground, offsets

    latents.compose_latents_with_alignment = compose_latents_with_alignment

    original_frozen = pipelines.generate_partial_frozen

    def generate_partial_frozen(model_dict, latents_all, frozen_mask, input_embeddings, num_inference_steps,
                                frozen_steps, **kwargs):
        STATE["pass"] = "overall"
        ref = kwargs["semantic_guidance_kwargs"]["ref_ca_saved_attns"]
        flat = [box_refs for phrase_refs in ref for box_refs in phrase_refs]
        for j, box_refs in enumerate(flat):  # the per-box attention moved onto the target boxes (attention transfer)
            for key in guidance_keys:
                maps = []
                for s in range(kwargs["semantic_guidance_kwargs"]["max_index_step"]):
                    a = box_refs[s][key][0, :, :, 0]
                    side = int(math.isqrt(a.shape[-1]))
                    maps.append(a.reshape(a.shape[0], side, side))
                put(f"aligned.{j}.reference.{layer_names[key]}", torch.stack(maps))
        out_latents, images = original_frozen(model_dict, latents_all, frozen_mask, input_embeddings,
                                              num_inference_steps, frozen_steps, **kwargs)
        put("timesteps", model_dict.scheduler.timesteps.clone())
        guided = trajectory["overall"]
        steps = sorted(guided["before"])
        history = [latents_all[0][0]] + [guided["before"][s] for s in steps[1:]] + [out_latents[0]]
        put("overall.latents", torch.stack(history))
        put("overall.guided", torch.stack([guided["after"][s] for s in range(sc["overall_max_index_step"])]))
        put("final.latents", out_latents[0])
        put("final.image", np.asarray(images[0]))
        META["frozen_steps"] = int(frozen_steps)
        return out_latents, images

    pipelines.generate_partial_frozen = generate_partial_frozen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sam", type=Path, default=None, help="SAM folder (make_sam.py)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenario", default="fast")
    ap.add_argument("--reference", type=Path, default=Path(os.environ.get("LMD_REFERENCE_DIR", DEFAULT_REFERENCE)))
    ap.add_argument("--log", type=Path, default=None, help="where their prints go (default: next to --out)")
    args = ap.parse_args()
    sc = scenarios.get(args.scenario)
    torch.set_grad_enabled(True)
    start = time.perf_counter()
    log_path = args.log or args.out.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="lmd_reference_") as tmp, open(log_path, "w") as log, \
            contextlib.redirect_stdout(log):
        import_reference(args.reference, Path(tmp))
        import models
        models.model_dict = load_model_dict(args.model, args.sam)
        import generation.lmd as lmd
        lmd.attn_aggregation_step_start = sc["attn_aggregation_step_start"]
        lmd.height, lmd.width = sc["height"], sc["width"]
        lmd.H, lmd.W = sc["height"] // 8, sc["width"] // 8
        install_recorders(lmd, sc)
        spec = dict(prompt=sc["prompt"], gen_boxes=[(n, tuple(b)) for n, b in sc["gen_boxes"]],
                    bg_prompt=sc["bg_prompt"], extra_neg_prompt=sc["extra_neg_prompt"])
        keys = ("num_inference_steps", "loss_scale", "loss_threshold", "max_iter", "max_index_step",
                "overall_loss_scale", "overall_loss_threshold", "overall_max_iter", "overall_max_index_step",
                "ref_ca_loss_weight", "frozen_step_ratio", "fg_blending_ratio", "so_floor_padding", "fg_seed_start")
        lmd.guidance_scale = sc["guidance_scale"]
        lmd.run(spec, bg_seed=sc["seed"], verbose=False, **{k: sc[k] for k in keys})
    META["seconds"] = time.perf_counter() - start
    META["scenario"] = args.scenario
    META["side"] = "authors"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(REC, str(args.out), metadata={"meta": json.dumps(META)})
    print(f"authors: {len(REC)} tensors in {META['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
