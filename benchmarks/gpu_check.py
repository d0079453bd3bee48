"""GPU check: LMD vs plain sampling on random-weight FULL-SIZE SD 1.5 and SD 2.1-768, built offline (no hub).

    python benchmarks/gpu_check.py                             # on the lent GPU: sd15 + sd21, then the notebooks
    python benchmarks/gpu_check.py --models sd15 --no-notebooks --repeats 3
    python benchmarks/gpu_check.py --device cpu --tiny --no-notebooks --out /tmp/gpu_check   # same path, tiny, CPU

For each model: 1. build it from configs (:func:`~lmd_utils.models.build_random_pipeline`: SD 1.5 with a CLIP ViT-L/14
text encoder, SD 2.1-768 with an OpenCLIP ViT-H one and v-prediction; offline tokenizer), fp16 on CUDA, save it to
``--out/<model>-random`` and load it back with :func:`~lmd_utils.models.load_pipeline` (what the notebooks do with
``LMD_MODEL_ID``); 2. run LMD (3 boxes, a random-weight SAM ViT-B) and plain sampling, each after a warm-up run;
3. print one markdown table (seconds: median of ``--repeats``; peak GPU memory, weights included; NaN/inf in the last
decoded latents or image; LMD/SD ratios), also in ``--out/gpu_check.json`` (rewritten after each model); 4. run
``tests/test_notebooks.py -k headless`` on the SD 1.5 folder with ``LMD_MODEL_ID``, ``LMD_STEPS``,
``LMD_RANDOM_WEIGHTS=1``.  ``--max-minutes`` skips the stages left once it is spent.  Exit status: 0 all ran, 1 a run
or a notebook failed, 2 a usage error (one ``error:`` line).  Random weights say nothing about image quality: this
checks shapes, dtypes, memory, speed and finiteness at full size.
"""

from __future__ import annotations

import argparse
import re
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("sd15", "sd21")
#: Three real objects, in the LLM's normalised-box form; the plain-sampling baseline uses ``PROMPT``.
PROMPT = "a cat, a dog and a car in a park"
BOXES = [("a cat", 0.05, 0.45, 0.35, 0.90), ("a dog", 0.40, 0.40, 0.70, 0.90), ("a car", 0.72, 0.50, 0.98, 0.85)]
BACKGROUND = "a realistic photo of a park"


class UsageError(Exception):
    """A user mistake: reported as one ``error:`` line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + error; we print one line
        raise UsageError(message)


def parse_args(argv):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu (only with --tiny)")
    p.add_argument("--models", default="sd15,sd21", help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--tiny", action="store_true", help="tiny configs of the same structure, fp32, 4 steps (tests)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; --tiny: 4)")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps of the warm-up runs (default 5; --tiny: 2)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (the median is reported)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="pipelines, JSON and reports")
    p.add_argument("--max-minutes", type=float, default=8.0, help="skip the remaining stages past this")
    p.add_argument("--no-notebooks", action="store_true", help="do not run the notebooks headless")
    p.add_argument("--notebook-steps", type=int, default=10, help="LMD_STEPS for the notebooks")
    p.add_argument("--notebook-tests", default="tests/test_notebooks.py", help=argparse.SUPPRESS)  # tests swap it
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or set(args.models) - set(MODELS):
        raise UsageError(f"--models must name some of {', '.join(MODELS)}, got {','.join(args.models) or 'nothing'}")
    args.steps = (4 if args.tiny else 50) if args.steps is None else args.steps
    args.warmup_steps = (2 if args.tiny else 5) if args.warmup_steps is None else args.warmup_steps
    if min(args.steps, args.warmup_steps, args.repeats, args.notebook_steps) < 1 or args.max_minutes <= 0:
        raise UsageError("--steps, --warmup-steps, --repeats, --notebook-steps and --max-minutes must be positive")
    return args


def pick_device(name):
    """The device, checked with torch alone (fast), before the heavy imports."""
    import torch

    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use cuda, cuda:N or cpu)") from None
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"unsupported device {name!r} (use cuda, cuda:N or cpu)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu --tiny)")
    return device


def build_sam(tiny, device):
    """``TransformersSam`` over a random-weight SamModel: ViT-B (sam-vit-base's config), or the tests' tiny one."""
    import torch
    from transformers import (SamConfig, SamMaskDecoderConfig, SamModel, SamProcessor, SamPromptEncoderConfig,
                              SamVisionConfig)

    from lmd_utils.sam import TransformersSam

    try:  # the torchvision-free image processor (transformers >= 5); older versions have only SamImageProcessor
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import SamImageProcessor as ImageProcessor
    if tiny:  # as tests/test_masks.py
        config = SamConfig(
            vision_config=SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=64, patch_size=16, mlp_dim=64,
                                          global_attn_indexes=[1], window_size=2, num_pos_feats=8),
            prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16,
                                                         mask_input_channels=4),
            mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     mlp_dim=32, iou_head_hidden_dim=16))
        processor = SamProcessor(image_processor=ImageProcessor(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    else:  # ViT-B: 768 wide, 12 layers, 12 heads, global attention in 2, 5, 8, 11; 1024-px input, 256-px masks
        config = SamConfig(vision_config=SamVisionConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                         global_attn_indexes=[2, 5, 8, 11]))
        processor = SamProcessor(image_processor=ImageProcessor())
    torch.manual_seed(0)
    with torch.device(device):
        model = SamModel(config)
    return TransformersSam(model, processor, device=device)


class FiniteWatch:
    """Were the latents entering the VAE decoder, and the raw image it decodes, finite?  (the last decode wins)"""

    def __init__(self, vae):
        self.latents_ok = self.image_ok = None
        self.handles = [vae.post_quant_conv.register_forward_pre_hook(self._latents),
                        vae.decoder.register_forward_hook(self._image)]

    def _latents(self, module, args):
        self.latents_ok = bool(args[0].isfinite().all())

    def _image(self, module, args, output):
        self.image_ok = bool(output.isfinite().all())

    def verdict(self):
        bad = [what for what, ok in (("latents", self.latents_ok), ("image", self.image_ok)) if not ok]
        return f"yes ({', '.join(bad)})" if bad else "no"


def measure(run, device, repeats):
    """Median seconds and the largest peak GPU memory (GiB, weights included; None on the CPU) of ``repeats`` runs."""
    import torch

    cuda = device.type == "cuda"
    times, peaks = [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**30)
        times.append(time.perf_counter() - start)
    return statistics.median(times), (max(peaks) if peaks else None)


class Budget:
    """Elapsed time per stage, and the ``--max-minutes`` guard."""

    def __init__(self, minutes):
        self.start, self.limit_s, self.stages, self.skipped = time.perf_counter(), minutes * 60, [], []

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return self.limit_s - self.elapsed()

    def allows(self, stage):
        if self.left() > 0:
            return True
        self.skipped.append(stage)
        print(f"[{self.elapsed():7.1f}s] skipped {stage}: past --max-minutes ({self.limit_s / 60:g} min)", flush=True)
        return False

    def done(self, stage, since, note=""):
        self.stages.append({"stage": stage, "seconds": round(time.perf_counter() - since, 2)})
        print(f"[{self.elapsed():7.1f}s] {stage}: {time.perf_counter() - since:.1f} s{note}", flush=True)


def run_notebooks(args, folder, timeout_s):
    """``pytest tests/test_notebooks.py -k headless`` with the model folder in the environment; outcome per test."""
    xml = args.out / "notebooks.xml"
    env = {**os.environ, "LMD_MODEL_ID": str(folder), "LMD_STEPS": str(args.notebook_steps), "LMD_RANDOM_WEIGHTS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", args.notebook_tests, "-k", "headless",
           f"--junitxml={xml}"]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)  # own group: kernels die with it
    try:
        rc = proc.wait(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"returncode": None, "timed_out": True, "tests": []}
    tests = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            tests.append({"name": case.get("name"), "outcome": outcome,
                          "seconds": round(float(case.get("time", 0)), 1)})
    return {"returncode": rc, "timed_out": False, "tests": tests}


def table(rows):
    """The markdown table: one row per (model, method), LMD/SD ratios on the LMD rows."""
    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    lines = ["| model | method | steps | seconds | peak GPU GiB | NaN/inf | LMD/SD time | LMD/SD memory |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['steps']} | {fmt(r['seconds'], '.2f')} | "
                     f"{fmt(r['peak_gib'], '.2f')} | {r['nonfinite']} | {fmt(r.get('time_ratio'), '.2f')} | "
                     f"{fmt(r.get('memory_ratio'), '.2f')} |")
    return "\n".join(lines)


def main(argv=None):
    # 0. arguments and device (usage errors end here, before the heavy imports)
    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu" and not args.tiny:
        raise UsageError("full-size models on the CPU take hours; use --tiny (or --device cuda)")
    import torch

    from lmd_utils.config import OVERALL_NEGATIVE_PROMPT, PER_BOX_NEGATIVE_PROMPT, LMDConfig
    from lmd_utils.layout import Box, Layout
    from lmd_utils.models import build_random_pipeline, load_pipeline
    from lmd_utils.pipeline import generate, generate_sd

    budget, cuda = Budget(args.max_minutes), device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    report = dict(device=str(device), gpu=gpu, torch=torch.__version__, tiny=args.tiny, steps=args.steps,
                  warmup_steps=args.warmup_steps, repeats=args.repeats, prompt=PROMPT, background=BACKGROUND,
                  boxes=[list(b) for b in BOXES], rows=[], folders={}, notebooks="not run")
    print(f"device {device} ({gpu}), torch {torch.__version__}, {'tiny' if args.tiny else 'full-size'} models "
          f"{','.join(args.models)}, {args.steps} steps, budget {args.max_minutes:g} min", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    layout = Layout([Box(*b) for b in BOXES], BACKGROUND, prompt=PROMPT)
    progress, sam, failed = sys.stderr.isatty(), None, False
    for name in args.models:
        # 1. build from configs → save (the folder the notebooks read) → load back, as the notebooks do
        if not budget.allows(f"{name}: build, save, load"):
            continue
        t = time.perf_counter()
        try:
            words = re.findall(r"[a-z]+", f"{PROMPT} {BACKGROUND} {PER_BOX_NEGATIVE_PROMPT} {OVERALL_NEGATIVE_PROMPT}".lower())
            built = build_random_pipeline(name, args.tiny, device, torch.float16 if cuda else torch.float32,
                                          extra_words=words)
            params = {k: f"{sum(p.numel() for p in getattr(built, k).parameters()) / 1e6:.1f}M"
                      for k in ("unet", "text_encoder", "vae")}
            folder = args.out / f"{name}{'-tiny' if args.tiny else ''}-random"
            built.save_pretrained(folder)
            del built  # (on CUDA its memory is reused by the loaded copy)
            pipe = load_pipeline(str(folder), device=str(device))
            report["folders"][name] = str(folder)
            budget.done(f"{name}: build, save, load", t, f" → {folder} ({pipe.unet.dtype}, {params})")
            if sam is None:
                t, sam = time.perf_counter(), build_sam(args.tiny, device)
                budget.done("SAM (random weights): build", t)
        except Exception:  # report it, go on with the next model
            traceback.print_exc()
            failed = True
            report["rows"].append(dict(model=name, method="build", steps=None, seconds=None, peak_gib=None,
                                       nonfinite="failed"))
            continue
        # 2. LMD (with SAM) and plain sampling, each after one warm-up run
        watch, config, results = FiniteWatch(pipe.vae), LMDConfig.for_pipe(pipe), {}
        runs = {"lmd+sam": lambda c: generate(pipe, layout, seed=0, config=c, sam=sam, progress=progress),
                "sd": lambda c: generate_sd(pipe, PROMPT, seed=0, config=c, progress=progress)}
        for method, run in runs.items():
            if not budget.allows(f"{name}: {method}"):
                continue
            t, row = time.perf_counter(), results.setdefault(method, dict(model=name, method=method, steps=args.steps))
            try:
                run(config.with_steps(args.warmup_steps))
                timed = config.with_steps(args.steps)
                row["seconds"], row["peak_gib"] = measure(lambda: run(timed), device, args.repeats)
                row["nonfinite"] = watch.verdict()
            except Exception as e:  # report it, go on with the next run
                traceback.print_exc()
                failed = True
                row.update(seconds=None, peak_gib=None, nonfinite=f"failed: {type(e).__name__}")
            budget.done(f"{name}: {method} (warm-up + {args.repeats} timed)", t)
        lmd, sd = results.get("lmd+sam", {}), results.get("sd", {})
        if lmd.get("seconds") and sd.get("seconds"):
            lmd["time_ratio"] = lmd["seconds"] / sd["seconds"]
            lmd["memory_ratio"] = lmd["peak_gib"] / sd["peak_gib"] if cuda else None
        report["rows"] += results.values()
        write_report(args.out, report, budget)  # after each model: a later stage may be killed
        pipe = watch = runs = None  # free the model before the next one
        if cuda:
            torch.cuda.empty_cache()

    # 3. the table
    print("\n" + table(report["rows"]) + "\n", flush=True)

    # 4. the notebooks, headless, on the SD 1.5 folder
    if args.no_notebooks or "sd15" not in report["folders"]:
        report["notebooks"] = "not run (" + ("--no-notebooks" if args.no_notebooks else "no SD 1.5 folder") + ")"
    elif budget.allows("notebooks"):
        t = time.perf_counter()
        report["notebooks"] = nb = run_notebooks(args, report["folders"]["sd15"], budget.left())
        for test in nb["tests"]:
            print(f"  {test['outcome']:7s} {test['seconds']:7.1f} s  {test['name']}")
        failed |= nb["timed_out"] or nb["returncode"] != 0
        budget.done("notebooks", t, " (timed out: killed)" if nb["timed_out"] else f" (pytest exit {nb['returncode']})")
    write_report(args.out, report, budget)
    print(f"total {budget.elapsed():.1f} s; report: {args.out / 'gpu_check.json'}"
          + (f"; skipped: {', '.join(budget.skipped)}" if budget.skipped else ""), flush=True)
    return 1 if failed else 0


def write_report(out, report, budget):
    report.update(stages=budget.stages, skipped=budget.skipped, total_seconds=round(budget.elapsed(), 1))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
