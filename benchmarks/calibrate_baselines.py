"""Calibrate the baselines on the toy world, on the calibration seeds (10000+), as LMD's toy settings were.

    python benchmarks/calibrate_baselines.py [--n-per-task 20] [--first-seed 10000] [--method boxdiff ...]

For each baseline, each candidate setting (the authors' value first) runs the toy benchmark's prompts with the
toy planner's layouts and is scored by the toy detector; one line per setting: task scores, four-task average,
CPU seconds per image.  The best setting of each method (ties: the authors' value, then the first) is printed last
as the JSON that ``data/toyworld/model/baselines.json`` ships (read by :func:`lmd_utils.baselines.shipped_settings`).
One CPU thread, as every toy measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lmd_utils import baselines  # noqa: E402
from lmd_utils.benchmark import TASKS, four_task_average  # noqa: E402
from lmd_utils.toyworld.benchmark import (benchmark_layout, score_images, toy_benchmark_prompts,  # noqa: E402
                                          toy_lmd_config)
from lmd_utils.models import TOYWORLD_MODEL_DIR  # noqa: E402
from lmd_utils.toyworld.model import load_toyworld_pipeline  # noqa: E402

#: ``method → (setting name, candidate values)``; the authors' value comes first.
CANDIDATES = {
    "boxdiff": ("step_size", [20.0, 5.0, 60.0, 150.0]),
    "backward-guidance": ("loss_scale", [30.0, 10.0, 100.0]),
    "multidiffusion": ("bootstrap_fraction", [0.4, 0.2, 0.0]),
}


def run(pipe, config, method: str, value: float, prompts) -> tuple[dict, float, float]:
    settings = {CANDIDATES[method][0]: value}
    images, start = [], time.process_time()
    for p in prompts:
        layout = benchmark_layout(p.prompt, "toy")
        images.append(baselines.BASELINES[method](pipe, layout, p.seed, config, progress=False,
                                                  settings=settings).image)
    seconds = (time.process_time() - start) / len(prompts)
    result = score_images(prompts, torch.stack(images), method)
    return {t: result.accuracy(t) for t in TASKS}, four_task_average(result), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-per-task", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=10000)
    parser.add_argument("--method", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_toyworld_pipeline(TOYWORLD_MODEL_DIR)
    config = toy_lmd_config(pipe)
    prompts = toy_benchmark_prompts(args.first_seed, args.n_per_task)
    print(f"toy world, seeds {args.first_seed}..{args.first_seed + args.n_per_task - 1}, "
          f"{args.n_per_task} prompts per task")
    print(f"{'method':<18}{'setting':<26}" + "".join(f"{t:>12}" for t in TASKS) + f"{'average':>9}{'s/img':>8}")
    best = {}
    for method in args.method:
        name, values = CANDIDATES[method]
        for value in values:
            scores, average, seconds = run(pipe, config, method, value, prompts)
            print(f"{method:<18}{f'{name}={value:g}':<26}" + "".join(f"{scores.get(t, 0):>11.0f}%" for t in TASKS)
                  + f"{average:>8.1f}%{seconds:>8.2f}", flush=True)
            if method not in best or average > best[method][1]:
                best[method] = (value, average)
    print(json.dumps({m: {CANDIDATES[m][0]: v} for m, (v, _) in best.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
