"""Cost of LMD relative to plain sampling, measured in one run on one model and device.

    python benchmarks/lmd_cost.py --model toyworld            # CPU default
    python benchmarks/lmd_cost.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda

For 1, 3 and 5 boxes it prints wall time and peak memory of LMD divided by plain sampling (same model, seed,
scheduler, steps), for four variants: per-box pass batched or one box at a time (the authors' code), and the
guidance forward truncated after the last guidance layer or run through the whole UNet (the authors' code).
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU each measurement runs in a fresh
subprocess and reports its peak resident set size (which includes the loaded model).
Target (issue): LMD with 3 boxes ≤ 3× plain sampling.  The authors' design costs ≈ 12×.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

CAPTIONS = {
    "toyworld": ["a red circle", "a blue square", "a yellow triangle", "a green circle", "a red square"],
    "default": ["a cat", "a dog", "a red car", "a cup", "a book"],
}
VARIANTS = {  # name: (max_batch, truncate_forward)
    "ours (batched, truncated)": (None, True),
    "batched, full forward": (None, False),
    "one box at a time, truncated": (1, True),
    "authors (one at a time, full forward)": (1, False),
}


def grid_layout(n: int, captions: list[str], prompt_joiner: str = " and "):
    from lmd_utils.layout import Box, Layout

    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    boxes = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c / cols + 0.03, r / rows + 0.03
        boxes.append(Box(captions[i % len(captions)], x0, y0, x0 + 1 / cols - 0.06, y0 + 1 / rows - 0.06))
    return Layout(boxes, "", "", prompt_joiner.join(b.phrase for b in boxes))


def measure(spec: dict) -> dict:
    """One measurement (time in seconds, peak memory in MiB) of ``spec`` in this process."""
    import torch

    from lmd_utils.models import load_pipeline
    from lmd_utils.config import LMDConfig
    from lmd_utils.pipeline import generate, generate_sd

    torch.set_num_threads(1)
    pipe = load_pipeline(spec["model"], device=spec["device"])
    config = LMDConfig.for_pipe(pipe)
    if spec["steps"]:
        config = config.with_steps(spec["steps"])
    family = "toyworld" if spec["model"] == "toyworld" else "default"
    cuda = pipe.device.type == "cuda"

    def run():
        if spec["method"] == "sd":
            return generate_sd(pipe, "a red circle" if family == "toyworld" else "a cat", seed=0, config=config,
                               progress=False)
        max_batch, truncate = VARIANTS[spec["variant"]]
        cfg = replace(config, max_batch=max_batch,
                      per_box_guidance=replace(config.per_box_guidance, truncate_forward=truncate),
                      overall_guidance=replace(config.overall_guidance, truncate_forward=truncate))
        return generate(pipe, grid_layout(spec["boxes"], CAPTIONS[family]), seed=0, config=cfg, progress=False)

    run()  # warm-up (allocator, lazy imports)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": min(times), "peak_mib": peak}


def measure_in_subprocess(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's LMD config)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return 0
    base = dict(model=args.model, device=args.device, steps=args.steps, repeats=args.repeats)
    sd = measure_in_subprocess({**base, "method": "sd"})
    print(f"model {args.model} on {args.device}: plain sampling {sd['seconds']:.2f} s, peak {sd['peak_mib']:.0f} MiB")
    print(f"{'variant':40s} {'boxes':>5s} {'time ×SD':>9s} {'memory ×SD':>11s} {'seconds':>8s}")
    for variant in args.variants:
        for n in args.boxes:
            m = measure_in_subprocess({**base, "method": "lmd", "variant": variant, "boxes": n})
            print(f"{variant:40s} {n:5d} {m['seconds'] / sd['seconds']:9.2f} {m['peak_mib'] / sd['peak_mib']:11.2f} "
                  f"{m['seconds']:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
