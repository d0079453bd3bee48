"""Train the toy-world text-to-image model on generated scenes (CPU-friendly, resumable).

    python -m lmd_utils.toyworld.train --steps 3000 --batch 64 --out runs/toyworld            # train / continue
    python -m lmd_utils.toyworld.train --steps 3000 --out runs/toyworld --resume              # continue a run
    python -m lmd_utils.toyworld.train --out runs/toyworld --export data/toyworld/model       # export EMA weights

Objective (per batch of generated scenes, fresh every step so nothing is ever seen twice):

* the diffusion loss, v-prediction (Salimans & Ho 2022) with Min-SNR-γ weights (Hang et al. 2023,
  ``min(SNR, γ)/(SNR+1)`` for v-targets), which speeds up convergence of small models;
* an auxiliary cross-attention loss, our addition (not in LMD): for every caption word that names an object
  ("red", "circle"; "left" in spatial captions) the word's cross-attention map, averaged over heads and
  normalised over space, should put its mass inside the object's ground-truth box.  Per word
  ``(1 − mass inside)²``, averaged over words and summed over the ``attn2`` layers, weight ≈ 0.02.  It is LMD's
  guidance energy (paper Eq. 2, the inside term) used as a training loss, so that the toy model's attention
  maps are as localised as Stable Diffusion's (a toy prototype's maps did not localise without it, and box
  guidance then had no effect).

The attention maps are captured with :func:`lmd_utils.attention.capture_cross_attention` (``keep_grad=True``),
the same capture the notebooks and LMD's guidance use; it restores diffusers' processors after each forward.

Checkpoints (``last.pt``: weights, EMA, optimizer, step, RNG states) are written atomically every
``--ckpt-minutes`` and on exit, including SIGTERM and Ctrl-C; the data stream is a pure function of
``(seed, step)``, so a resumed run sees the same scenes it would have seen.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import random
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from ..attention import ALL_LAYERS, AttentionStore, capture_cross_attention
from ..progress import progress_bar
from .detector import check_caption, detect
from .model import (TOYWORLD_LMD_CONFIG, ToyWorldConfig, build_toyworld_pipeline, count_parameters,
                    export_pipeline, sample_images)
from .scenes import Scene, generate_scene, images_to_tensor, scene_seed, tensor_to_images

CHECKPOINT = "last.pt"
#: Fixed prompts for the periodic sample grid (and a rough exact-match score with the detector).
SAMPLE_PROMPTS = (
    "a red circle", "a green square", "a blue triangle", "a yellow circle",
    "a red square", "a green triangle", "a blue circle", "a yellow square",
    "a red circle and a blue square", "a green triangle and a yellow circle",
    "two red squares", "three blue circles",
    "a yellow triangle on the left and a blue circle on the right",
    "a green square on the top and a red triangle on the bottom",
    "a blue square and a yellow triangle", "",
)


# --------------------------------------------------------------------------------------------- attention
def span_targets(scenes: Sequence[Scene], tokens: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scene and token: the box mask its word must attend to at ``resolution``² and a 0/1 word weight.

    Returns ``masks (B, resolution², tokens)`` and ``weights (B, tokens)``.  A count caption's words point at
    the union of all its objects' boxes.
    """
    masks = torch.zeros(len(scenes), resolution, resolution, tokens)
    weights = torch.zeros(len(scenes), tokens)
    for b, scene in enumerate(scenes):
        for span in scene.spans:
            union = torch.zeros(resolution, resolution)
            for j in span.object_indices:
                union = torch.maximum(union, scene.objects[j].box.mask(resolution, resolution))
            for t in span.token_positions():
                if t < tokens:
                    masks[b, :, :, t] = union
                    weights[b, t] = 1.0
    return masks.flatten(1, 2), weights


def attention_box_loss(store: AttentionStore, scenes: Sequence[Scene]) -> torch.Tensor:
    """Σ over attn2 layers of the mean over object words of ``(1 − attention mass inside the box)²``.

    ``store`` holds one record per cross-attention layer of the training forward
    (:func:`lmd_utils.attention.capture_cross_attention` with ``keep_grad=True``).  Maps are averaged over heads,
    then normalised over space (a word's map sums to one), as in LMD's energy (paper Eq. 2).  Zero when no caption
    in the batch names an object.
    """
    total = torch.zeros(())
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for record in store.records:
        maps = record.probs.mean(dim=1).flatten(1, 2)  # (B, heads, H, W, T) → (B, H·W, T)
        n, tokens = maps.shape[1:]
        resolution = int(round(n ** 0.5))
        if (resolution, tokens) not in cache:
            cache[(resolution, tokens)] = tuple(x.to(maps.device) for x in span_targets(scenes, tokens, resolution))
        masks, weights = cache[(resolution, tokens)]
        if weights.sum() == 0:
            return total.to(maps.device)
        maps = maps / maps.sum(dim=1, keepdim=True).clamp_min(1e-8)
        inside = (maps * masks).sum(dim=1)  # (B, T)
        total = total.to(maps.device) + (((1 - inside) ** 2) * weights).sum() / weights.sum()
    return total


# --------------------------------------------------------------------------------------------- training
def batch_scenes(seed: int, step: int, batch: int, image_size: int) -> list[Scene]:
    """The scenes of training step ``step``: a pure function of ``(seed, step)`` (resume sees the same data)."""
    return [generate_scene(scene_seed(seed, step * batch + i), image_size) for i in range(batch)]


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for v-prediction, ``min(SNR, γ) / (SNR + 1)``; ε-prediction: ``min(SNR, γ)/SNR``."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = snr.clamp(max=gamma) if gamma > 0 else torch.ones_like(snr)
    if gamma <= 0:
        return clipped
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


class Trainer:
    """Holds the pipeline, optimizer and EMA; :meth:`train` runs until a step count or a signal."""

    def __init__(self, out: Path, config: ToyWorldConfig, seed: int = 0, batch: int = 64, lr: float = 5e-4,
                 attn_loss_weight: float = 0.02, min_snr_gamma: float = 5.0, device: str = "cpu",
                 warmup_steps: int = 100):
        self.out, self.config, self.seed, self.batch = out, config, seed, batch
        self.attn_loss_weight, self.min_snr_gamma, self.device = attn_loss_weight, min_snr_gamma, device
        self.lr, self.warmup_steps = lr, warmup_steps
        self.pipe = build_toyworld_pipeline(seed, config)
        self.unet, self.text_encoder = self.pipe.unet.to(device), self.pipe.text_encoder.to(device)
        self.tokenizer, self.scheduler = self.pipe.tokenizer, self.pipe.scheduler
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.ema = EMAModel(self.params, decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
        self.step, self.elapsed_s = 0, 0.0
        self.recent_losses: list[float] = []
        self.stop_requested = False
        #: one entry per training part (each launch of :meth:`train`): steps, learning rate, threads, device, hours
        self.history: list[dict] = []

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self, args: dict | None = None) -> dict:
        return {
            "step": self.step, "elapsed_s": self.elapsed_s, "config": self.config.to_dict(), "seed": self.seed,
            "batch": self.batch, "unet": self.unet.state_dict(), "text_encoder": self.text_encoder.state_dict(),
            "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "recent_losses": self.recent_losses[-200:], "args": args or {}, "history": self.history,
            "machine": machine_description(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_s = int(state["step"]), float(state["elapsed_s"])
        self.recent_losses = list(state.get("recent_losses", []))
        self.history = [dict(part) for part in state.get("history", [])]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, args: dict | None = None) -> Path:
        """Atomically write ``last.pt`` (a reader never sees a half-written file)."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(args), tmp)
        os.replace(tmp, path)
        return path

    def init_from_export(self, folder: Path) -> None:
        """Start from an exported model's (EMA) weights, e.g. the shipped ``data/toyworld/model``, so a later session
        can continue training without the run folder; the optimizer and EMA start afresh, the step count and the
        data stream continue where that model stopped (``toyworld.json``)."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        self.unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict())
        self.text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").state_dict())
        info = json.loads((folder / "toyworld.json").read_text()) if (folder / "toyworld.json").exists() else {}
        self.step, self.elapsed_s = int(info.get("step", 0)), float(info.get("elapsed_s", 0.0))
        self.ema = EMAModel(self.params, decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)

    # -- one step ---------------------------------------------------------------------------------
    def loss(self, scenes: Sequence[Scene]) -> tuple[torch.Tensor, float, float]:
        """Weighted diffusion loss + attention loss for one batch; returns ``(total, diffusion, attention)``."""
        x0 = images_to_tensor([s.image for s in scenes]).to(self.device)
        ids = self.tokenizer([s.caption for s in scenes], padding="max_length",
                             max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(scenes),), device=self.device)
        zt = self.scheduler.add_noise(x0, noise, t)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        with capture_cross_attention(self.unet, ALL_LAYERS, keep_grad=True, keep="all") as store:
            pred = self.unet(zt, t, encoder_hidden_states=self.text_encoder(ids)[0]).sample
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        diffusion = (per_sample * min_snr_weights(self.scheduler, t, self.min_snr_gamma)).mean()
        attention = attention_box_loss(store, scenes) if self.attn_loss_weight > 0 else torch.zeros(())
        total = diffusion + self.attn_loss_weight * attention
        return total, diffusion.item(), attention.detach().item()

    def train_step(self) -> tuple[float, float, float]:
        scenes = batch_scenes(self.seed, self.step, self.batch, self.config.image_size)
        for group in self.optimizer.param_groups:  # linear warm-up, then constant (runs can be extended)
            group["lr"] = self.lr * min(1.0, (self.step + 1) / max(1, self.warmup_steps))
        total, diffusion, attention = self.loss(scenes)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.ema.step(self.params)
        self.step += 1
        self.recent_losses.append(total.item())
        self.recent_losses = self.recent_losses[-200:]
        return self.recent_losses[-1], diffusion, attention

    # -- sampling with EMA weights ----------------------------------------------------------------
    @contextlib.contextmanager
    def ema_pipeline(self):
        """The pipeline with EMA weights in its modules, for sampling."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield self.pipe
        finally:
            self.ema.restore(self.params)

    def sample_grid(self, prompts: Sequence[str] = SAMPLE_PROMPTS, steps: int = 20) -> dict:
        """Sample the fixed prompts with EMA weights, save ``samples/step_XXXXXX.png``; detector exact-match rate."""
        with torch.no_grad(), self.ema_pipeline() as pipe:
            images = tensor_to_images(sample_images(pipe, prompts, steps=steps, guidance_scale=4.0, seed=0))
        scored = [p for p in prompts if p]
        correct = sum(check_caption(p, detect(im)) for p, im in zip(prompts, images) if p)
        path = self.out / "samples" / f"step_{self.step:06d}.png"
        save_grid(images, prompts, path, title=f"step {self.step} (EMA, DDIM {steps}, CFG 4)")
        return {"step": self.step, "exact": correct / max(1, len(scored)), "path": str(path)}

    def train(self, steps: int, ckpt_minutes: float = 5.0, sample_every: int = 250,
              args: dict | None = None, log_every: int = 1, max_minutes: float | None = None) -> None:
        """Train until ``self.step == steps``, ``max_minutes`` of wall time, or a stop request (SIGTERM).

        Checkpoints every ``ckpt_minutes`` and on exit, whatever the reason (also on an exception).
        """
        deadline = None if max_minutes is None else time.monotonic() + max_minutes * 60
        self.out.mkdir(parents=True, exist_ok=True)
        part = {"from_step": self.step, "to_step": self.step, "lr": self.lr, "threads": torch.get_num_threads(),
                "device": str(self.device), "hours": 0.0}
        self.history.append(part)
        part_start_s = self.elapsed_s
        log_path = self.out / "loss.csv"
        new_log = not log_path.exists()
        last_ckpt = time.monotonic()
        self.unet.train()
        self.text_encoder.train()
        with open(log_path, "a", newline="") as f, \
                progress_bar(total=steps, initial=self.step, desc="toyworld", mininterval=30, file=sys.stderr) as bar:
            writer = csv.writer(f)
            if new_log:
                writer.writerow(["step", "elapsed_s", "s_per_step", "loss", "diffusion", "attention", "lr"])
            try:
                while self.step < steps and not self.stop_requested:
                    t0 = time.perf_counter()
                    total, diffusion, attention = self.train_step()
                    dt = time.perf_counter() - t0
                    self.elapsed_s += dt
                    part.update(to_step=self.step, hours=round((self.elapsed_s - part_start_s) / 3600, 3))
                    if self.step % log_every == 0:
                        writer.writerow([self.step, f"{self.elapsed_s:.1f}", f"{dt:.3f}", f"{total:.5f}",
                                         f"{diffusion:.5f}", f"{attention:.5f}",
                                         f"{self.optimizer.param_groups[0]['lr']:.2e}"])
                        f.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(self.recent_losses[-50:]):.4f}", attn=f"{attention:.3f}",
                                    s_step=f"{dt:.2f}", refresh=False)  # keep the log small
                    if sample_every and self.step % sample_every == 0:
                        result = self.sample_grid()
                        with open(self.out / "samples.jsonl", "a") as s:
                            s.write(json.dumps(result) + "\n")
                    if deadline is not None and time.monotonic() > deadline:
                        print(f"time limit of {max_minutes} min reached", file=sys.stderr)
                        break
                    if time.monotonic() - last_ckpt > ckpt_minutes * 60:
                        self.save(args)
                        last_ckpt = time.monotonic()
            except KeyboardInterrupt:
                print("interrupted: saving checkpoint", file=sys.stderr)
            finally:
                self.save(args)
                print(f"saved {self.out / CHECKPOINT} at step {self.step}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- helpers
def machine_description() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch thread(s), {gpu}); torch {torch.__version__}").replace("  ", " ")


def save_grid(images: np.ndarray, captions: Sequence[str], path: Path, title: str = "", columns: int = 8) -> None:
    """A captioned image grid (matplotlib, no interpolation) as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(caption or "(empty)", 22)), fontsize=6)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def model_card(state: dict, n_unet: int, n_text: int, command: str, last_samples: dict | None = None) -> str:
    """README.md for the exported folder: what it is, how it was trained, what it cost."""
    losses = state.get("recent_losses", [])
    cfg = state["config"]
    text_encoder = (f"CLIPTextModel, {cfg['text_layers']} layers, width {cfg['cross_attention_dim']}, "
                    f"{n_text / 1e6:.2f} M parameters, trained jointly")
    attn_weight = state["args"].get("attn_loss_weight", 0.02)
    objective = (f"{cfg['prediction_type']}, {cfg['beta_schedule']} betas {cfg['beta_start']}–{cfg['beta_end']}, "
                 f"Min-SNR-γ weights (γ = {state['args'].get('min_snr_gamma', 5.0)}), "
                 f"+ {attn_weight} × attention-in-box loss")
    samples = ("n/a" if not last_samples else
               f"{last_samples['exact']:.0%} of the 15 non-empty fixed prompts exactly right (detector), "
               f"step {last_samples['step']}, DDIM 20, CFG 4, one seed")
    final = f"{np.mean(losses[-50:]):.4f} (mean of the last {min(50, len(losses))} steps)" if losses else "n/a"
    hours = state["elapsed_s"] / 3600
    return f"""# Toy-world text-to-image model (pixel space, {cfg['image_size']}×{cfg['image_size']})

A tiny `StableDiffusionPipeline` without VAE (latents are RGB images in [-1, 1]) for teaching LLM-grounded
Diffusion (LMD, Lian et al., TMLR 2024) on a CPU.  Trained from scratch on synthetic scenes from
`lmd_utils.toyworld.scenes` (1–4 coloured circles/squares/triangles, captions from a small grammar).

Load: `StableDiffusionPipeline.from_pretrained(folder, vae=None, safety_checker=None)`
or `lmd_utils.toyworld.model.load_toyworld_pipeline(folder)` (DDIM scheduler); sample with `output_type="latent"`.

| | |
|---|---|
| UNet | {n_unet / 1e6:.2f} M parameters, channels {cfg['block_out_channels']}, cross-attention at 16×16 and 8×8 |
| text encoder | {text_encoder} |
| objective | {objective} |
| weights | EMA (warm-up power 2/3) |
| steps | {state['step']} at batch {state['batch']} ({state['step'] * state['batch']:,} generated images) |
| training time | {hours:.2f} h |
| machine | {state.get('machine', 'n/a')} |
| final training loss | {final} |
| last sample grid | {samples} |

Training command (resumable; the data stream is a function of seed and step):

    {command}

Export: `python -m lmd_utils.toyworld.train --out <run folder> --export <this folder>`.
{_history_table(state.get("history", []))}"""


def _history_table(history: Sequence[dict]) -> str:
    """The training parts (each ``--resume`` launch) as a markdown table; empty when none were recorded."""
    if not history:
        return ""
    rows = "\n".join(f"| {h['from_step']}–{h['to_step']} | {h['lr']:g} | {h['threads']} | {h['device']} | "
                     f"{h['hours']:.2f} |" for h in history if h["to_step"] > h["from_step"])
    return f"""
Training parts (one per launch of the script):

| steps | learning rate | torch threads | device | hours |
|---|---|---|---|---|
{rows}
"""


def export_checkpoint(run: Path, folder: Path, device: str = "cpu") -> Path:
    """Write the EMA weights of ``run/last.pt`` as a diffusers folder with a model card (≤ 20 MB)."""
    path = run / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train first")
    state = torch.load(path, map_location=device, weights_only=True)
    config = ToyWorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    pipe = build_toyworld_pipeline(state["seed"], config)
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    ema = EMAModel(params, use_ema_warmup=True)
    ema.load_state_dict(state["ema"])
    ema.copy_to(params)
    n_unet, n_text = count_parameters(pipe.unet), count_parameters(pipe.text_encoder)
    command = state["args"].get("command", "python -m lmd_utils.toyworld.train")
    info = {"step": state["step"], "batch": state["batch"], "elapsed_s": state["elapsed_s"],
            "config": state["config"], "machine": state.get("machine"), "args": state["args"],
            "unet_parameters": n_unet, "text_encoder_parameters": n_text}
    log = run / "samples.jsonl"
    last_samples = json.loads(log.read_text().splitlines()[-1]) if log.exists() and log.read_text().strip() else None
    info["last_samples"] = last_samples
    export_pipeline(pipe, folder, model_card(state, n_unet, n_text, command, last_samples), info)
    # the calibrated LMD settings, read by LMDConfig.for_pipe (see lmd_utils.toyworld.benchmark)
    (folder / "lmd_config.json").write_text(json.dumps(TOYWORLD_LMD_CONFIG, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if size > 20 * 2 ** 20:
        raise RuntimeError(f"exported model is {size / 2 ** 20:.1f} MB, over the 20 MB budget")
    print(f"exported step {state['step']} EMA weights to {folder} ({size / 2 ** 20:.1f} MB)", file=sys.stderr)
    return folder


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="train until this many steps in total")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("runs/toyworld"), help="run folder (checkpoint, logs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--attn-loss-weight", type=float, default=0.02)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="0 disables Min-SNR weighting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", choices=["default", "tiny"], default="default")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--sample-every", type=int, default=250, help="steps between sample grids (0: never)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--export", type=Path, default=None, help="write OUT/last.pt's EMA weights here and exit")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start a new run from an exported model folder (e.g. data/toyworld/model), continuing its "
                        "step count; optimizer and EMA start afresh")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.steps is None and args.export is None:
        raise SystemExit("give --steps to train and/or --export to export")
    if args.steps is not None:
        checkpoint = args.out / CHECKPOINT
        if checkpoint.exists() and not args.resume:
            raise SystemExit(f"{checkpoint} exists: pass --resume to continue it, or choose another --out")
        config = ToyWorldConfig.tiny() if args.config == "tiny" else ToyWorldConfig()
        state = None
        if args.resume and checkpoint.exists():
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            config = ToyWorldConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in state["config"].items()})
        trainer = Trainer(args.out, config, seed=args.seed if state is None else state["seed"],
                          batch=args.batch if state is None else state["batch"], lr=args.lr,
                          attn_loss_weight=args.attn_loss_weight, min_snr_gamma=args.min_snr_gamma, device=device)
        if state is not None:
            trainer.load_state_dict(state)
            print(f"resumed {checkpoint} at step {trainer.step}", file=sys.stderr)
        elif args.init_from is not None:
            trainer.init_from_export(args.init_from)
            print(f"initialised from {args.init_from} at step {trainer.step}", file=sys.stderr)
        print(f"UNet {count_parameters(trainer.unet):,} params, text encoder "
              f"{count_parameters(trainer.text_encoder):,}; device {device}; {torch.get_num_threads()} thread(s)",
              file=sys.stderr)

        def request_stop(signum, frame):  # finish the current step, then save and exit
            trainer.stop_requested = True
        signal.signal(signal.SIGTERM, request_stop)
        run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        run_args["command"] = ("python -m lmd_utils.toyworld.train --steps {steps} --batch {batch} --out {out} "
                               "--attn-loss-weight {attn_loss_weight} --lr {lr} --seed {seed} --resume"
                               ).format(**run_args)
        trainer.train(args.steps, ckpt_minutes=args.ckpt_minutes, sample_every=args.sample_every, args=run_args,
                      max_minutes=args.max_minutes)
    if args.export is not None:
        export_checkpoint(args.out, args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
