"""Cost of LMD relative to plain sampling, measured in one run on one model and device, with where the time goes.

    python benchmarks/lmd_cost.py --model toyworld                      # CPU default, 1, 3 and 5 boxes
    python benchmarks/lmd_cost.py --model sd15-random --device cuda     # full-size SD 1.5, random weights, no hub
    python benchmarks/lmd_cost.py --model sd15-random --steps 2 --boxes 1 --size 128 --repeats 1   # CPU smoke test
    python benchmarks/lmd_cost.py --set per_box_stop=needed --set per_box_guidance.iterations=[1]  # try a lever

For each box count it prints wall time and peak memory of LMD divided by plain sampling (same model, seed,
scheduler, steps; times are the fastest of ``--repeats`` runs (default 5: on the 2-core VM the 1-box ratio of
three runs of 3 repeats spread 1.97–2.09), plain sampling's run in the same process between
LMD's, so both see the same machine), for four variants: per-box pass batched or one box at a time (the authors' code), and the
guidance forward truncated after the last guidance layer or run through the whole UNet (the authors' code).  The
first row of each box count, ``ours``, is the model's default configuration (``LMDConfig.for_pipe``, plus ``--set``).
Then, for that default variant, a per-stage breakdown (exclusive seconds of each stage of one more run, and the
stage's share of plain sampling's time, ×SD, which add up to the ratio): per-box and overall denoising (the UNet
loop), the attention capture for masks and transfer, the guidance's truncated UNet forward, its energy, its backward
(with the update), masks, composition, decoding, and the rest.  The breakdown run wraps the library's functions from
this script (``StageTimer``), on CUDA with a synchronisation around each; the timed runs have no wrappers.
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU each measurement runs in a fresh
subprocess and reports its peak resident set size (which includes the loaded model).
``--model``: ``toyworld``, ``tiny``, a folder or hub id (:func:`~lmd_utils.models.load_pipeline`), or
``sd15-random`` / ``sd21-random``: the full-size architecture with random weights built from its config
(:func:`~lmd_utils.models.build_random_pipeline`, fp16 on CUDA), nothing downloaded; random weights say nothing about
images, only about time and memory.
Targets (issue #15): LMD ≤ 3× plain sampling at 3 boxes, ≤ 2× at 1 box (toy world, CPU, one thread); peak memory
≤ 1.5× at 3 boxes.  The authors' design costs ≈ 12×.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import fields, is_dataclass, replace

CAPTIONS = {
    "toyworld": ["a red circle", "a blue square", "a yellow triangle", "a green circle", "a red square"],
    "default": ["a cat", "a dog", "a red car", "a cup", "a book"],
}
#: Shorter captions for box counts whose prompt would not fit the text encoder (the toy world's 16 tokens hold
#: five objects only without their colours).
SHORT_CAPTIONS = {"toyworld": ["a circle", "a square", "a triangle"], "default": ["a cat", "a dog", "a cup"]}
VARIANTS = {  # name: (max_batch, truncate_forward); None keeps the configuration's own value
    "ours (batched, truncated)": (None, True),
    "batched, full forward": (None, False),
    "one box at a time, truncated": (1, True),
    "authors (one at a time, full forward)": (1, False),
}
RANDOM_MODELS = {"sd15-random": "sd15", "sd21-random": "sd21"}
#: Stages of the breakdown, in print order; the sums printed after them.
STAGES = ("per-box denoising", "per-box attention capture", "per-box guidance forward", "per-box guidance energy",
          "per-box guidance backward", "masks", "composition", "overall denoising", "overall attention capture",
          "overall guidance forward", "overall guidance energy", "overall guidance backward", "decode", "other")
SUMS = {"per-box guidance": ("per-box guidance forward", "per-box guidance energy", "per-box guidance backward"),
        "overall guidance": ("overall guidance forward", "overall guidance energy", "overall guidance backward"),
        "per-box pass": tuple(s for s in STAGES if s.startswith("per-box")),
        "overall pass": tuple(s for s in STAGES if s.startswith("overall"))}


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


def fitting_layout(pipe, n: int, family: str, config):
    """:func:`grid_layout` of ``n`` boxes with the family's captions joined by "and", else by commas, else with the
    short captions: the first that stage 2 can run with the model's text encoder (its token limit)."""
    from lmd_utils.layout import LayoutError
    from lmd_utils.pipeline import check_layout

    for captions, joiner in ((CAPTIONS[family], " and "), (CAPTIONS[family], ", "), (SHORT_CAPTIONS[family], ", ")):
        layout = grid_layout(n, captions, joiner)
        try:
            check_layout(pipe, layout, config)
            return layout
        except LayoutError:
            continue
    raise SystemExit(f"error: {n} boxes do not fit the text encoder's {pipe.tokenizer.model_max_length} tokens")


def load_model(model: str, device: str):
    """The pipeline: a random-weight full-size SD built from its config for ``*-random``, else ``load_pipeline``."""
    import torch

    from lmd_utils.config import OVERALL_NEGATIVE_PROMPT, PER_BOX_NEGATIVE_PROMPT
    from lmd_utils.models import build_random_pipeline, load_pipeline

    if model not in RANDOM_MODELS:
        return load_pipeline(model, device=device)
    text = " ".join([*CAPTIONS["default"], "and", PER_BOX_NEGATIVE_PROMPT, OVERALL_NEGATIVE_PROMPT])
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    pipe = build_random_pipeline(RANDOM_MODELS[model], device=device, dtype=dtype,
                                 extra_words=re.findall(r"[a-z]+", text.lower()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_settings(config, settings: list[str]):
    """``config`` with ``--set`` overrides ``field=JSON`` (``per_box_guidance.iterations=[1,1]``; strings may be
    bare: ``per_box_stop=needed``).  Lists become tuples, as the config's fields are."""
    for item in settings:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        value = tuple(value) if isinstance(value, list) else value
        *path, name = key.split(".")
        owners = [config]
        for part in path:
            owners.append(getattr(owners[-1], part))
        if not is_dataclass(owners[-1]) or name not in {f.name for f in fields(owners[-1])}:
            raise SystemExit(f"error: --set {item}: {type(owners[-1]).__name__} has no field {name!r}")
        new = replace(owners[-1], **{name: value})
        for owner, part in zip(reversed(owners[:-1]), reversed(path)):
            new = replace(owner, **{part: new})
        config = new
    return config


class StageTimer:
    """Exclusive wall time per stage of :func:`~lmd_utils.pipeline.generate`, by wrapping the library's functions
    (module attributes, so only this process and only after :meth:`install`).  A wrapped call's time goes to its
    stage minus the time of wrapped calls inside it; ``{phase}`` in a stage name is ``per-box`` inside
    ``run_per_box`` and ``overall`` after it."""

    def __init__(self, cuda: bool):
        import torch

        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[float] = []
        self.phase = "per-box"

    def wrap(self, owner, attr: str, stage: str, phase: str | None = None) -> None:
        original = getattr(owner, attr)
        timer = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if phase is not None:
                timer.phase = phase
            timer.sync()
            start = time.perf_counter()
            timer.stack.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                timer.sync()
                elapsed = time.perf_counter() - start
                timer.seconds[stage.format(phase=timer.phase)] += elapsed - timer.stack.pop()
                if timer.stack:
                    timer.stack[-1] += elapsed
                if phase is not None:
                    timer.phase = "overall"

        setattr(owner, attr, timed)

    def install(self) -> None:
        from lmd_utils import attention, composition, per_box, pipeline, sampling

        self.wrap(pipeline, "run_per_box", "per-box denoising", phase="per-box")  # its own time: the loop, setup
        self.wrap(per_box, "denoise", "{phase} denoising")
        self.wrap(pipeline, "denoise", "overall denoising")
        self.wrap(attention, "cross_attention_probs", "{phase} attention capture")
        self.wrap(attention.AttentionStore, "_record", "{phase} attention capture")
        self.wrap(sampling.BoxGuidance, "before_step", "{phase} guidance backward")  # its own time: grad + update
        # shared_forward: the last iteration's maps come from the denoising forward (counted there), its update here
        self.wrap(sampling.BoxGuidance, "shared_update", "{phase} guidance backward")
        self.wrap(sampling.BoxGuidance, "compute_energy", "{phase} guidance forward")
        self.wrap(sampling.BoxGuidance, "energy_from_store", "{phase} guidance energy")
        self.wrap(pipeline, "extract_object_masks", "masks")
        for name in ("align_objects", "compose_trajectory", "composed_pass_guidance"):
            self.wrap(pipeline, name, "composition")
        self.wrap(composition.FrozenForeground, "after_step", "composition")
        self.wrap(per_box, "decode_latents", "decode")
        self.wrap(pipeline, "decode_latents", "decode")

    def breakdown(self, total: float) -> dict[str, float]:
        out = {s: self.seconds.get(s, 0.0) for s in STAGES if s != "other"}
        out["other"] = total - sum(out.values())
        return out


def measure(spec: dict) -> dict:
    """One measurement (time in seconds, peak memory in MiB, optionally the breakdown) of ``spec`` in this process."""
    import torch

    from lmd_utils.config import LMDConfig
    from lmd_utils.pipeline import generate, generate_sd

    torch.set_num_threads(1)
    pipe = load_model(spec["model"], spec["device"])
    config = LMDConfig.for_pipe(pipe)
    if spec["steps"]:
        config = config.with_steps(spec["steps"])
    if spec.get("size"):
        config = replace(config, height=spec["size"], width=spec["size"])
    family = "toyworld" if spec["model"] == "toyworld" else "default"
    cuda = pipe.device.type == "cuda"
    layout = fitting_layout(pipe, spec["boxes"], family, config) if spec["method"] != "sd" else None

    def plain():
        return generate_sd(pipe, "a red circle" if family == "toyworld" else "a cat", seed=0, config=config,
                           progress=False)

    def run():
        if spec["method"] == "sd":
            return plain()
        max_batch, truncate = VARIANTS[spec["variant"]]
        cfg = with_settings(config, spec.get("settings", []))
        cfg = replace(cfg, max_batch=max_batch if max_batch is not None else cfg.max_batch,
                      per_box_guidance=replace(cfg.per_box_guidance, truncate_forward=truncate),
                      overall_guidance=replace(cfg.overall_guidance, truncate_forward=truncate))
        return generate(pipe, layout, seed=0, config=cfg, progress=False)

    def timed(f) -> float:
        t = time.perf_counter()
        f()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    interleave = spec["method"] != "sd"
    run()  # warm-up (allocator, lazy imports)
    if interleave:
        plain()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, plain_times = [], []
    for _ in range(spec["repeats"]):
        if interleave:  # plain sampling between the runs: the ratio compares runs made under the same conditions
            plain_times.append(timed(plain))
        times.append(timed(run))
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": min(times), "peak_mib": peak}
    if interleave:
        out["sd_seconds"] = min(plain_times)
    if spec.get("breakdown"):
        timer = StageTimer(cuda)
        timer.install()
        t = time.perf_counter()
        run()
        timer.sync()
        out["breakdown"] = timer.breakdown(time.perf_counter() - t)
    return out


def measure_in_subprocess(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:  # the child's own `error:` line if it printed one, else its last line
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()] or ["(no output)"]
        said = next((line for line in reversed(lines) if line.startswith("error: ")), None)
        raise SystemExit(said or f"error: the measurement of {spec.get('method')} at {spec.get('boxes', '-')} "
                                 f"boxes failed: {lines[-1][:300]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def breakdown_table(breakdowns: dict[int, tuple[dict[str, float], float]]) -> str:
    """Stage rows, one ``seconds (×SD)`` column per box count (``{boxes: (breakdown, plain sampling's seconds)}``),
    then the sums and the breakdown run's total."""
    header = f"{'stage':28s}" + "".join(f"{f'{n} box' + ('es' if n > 1 else ''):>17s}" for n in breakdowns)
    lines = [header]

    def row(name, values):
        lines.append(f"{name:28s}" + "".join(f"{v:8.2f} s ({v / sd:4.2f}×)"
                                             for v, (_, sd) in zip(values, breakdowns.values())))

    for stage in STAGES:
        row(stage, [b[stage] for b, _ in breakdowns.values()])
    lines.append("-" * len(header))
    for name, parts in SUMS.items():
        row(name, [sum(b[p] for p in parts) for b, _ in breakdowns.values()])
    row("total (breakdown run)", [sum(b.values()) for b, _ in breakdowns.values()])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toyworld", help="toyworld, tiny, sd15-random, sd21-random, a folder or hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's LMD config)")
    parser.add_argument("--size", type=int, default=None, help="image height and width (default: the model's own)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an LMDConfig field for every LMD run (repeatable; nested: per_box_guidance.X)")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the per-stage breakdown")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return 0
    if min(args.boxes) < 1 or args.repeats < 1:
        raise SystemExit("error: --boxes and --repeats must be >= 1")
    from lmd_utils.config import LMDConfig
    from lmd_utils.models import TOYWORLD_MODEL_DIR

    try:  # a misspelt field or a value the model's own settings refuse: one line now, not after minutes of measuring
        with_settings(LMDConfig.for_folder(TOYWORLD_MODEL_DIR if args.model == "toyworld" else args.model),
                      args.settings)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: --set: {e}")
    base = dict(model=args.model, device=args.device, steps=args.steps, size=args.size, repeats=args.repeats)
    sd = measure_in_subprocess({**base, "method": "sd"})
    print(f"model {args.model} on {args.device}: plain sampling {sd['seconds']:.2f} s, peak {sd['peak_mib']:.0f} MiB"
          + (f"; settings {' '.join(args.settings)}" if args.settings else ""))
    print(f"{'variant':40s} {'boxes':>5s} {'time ×SD':>9s} {'memory ×SD':>11s} {'seconds':>8s}", flush=True)
    breakdowns = {}
    for k, variant in enumerate(args.variants):
        for n in args.boxes:
            m = measure_in_subprocess({**base, "method": "lmd", "variant": variant, "boxes": n,
                                       "settings": args.settings, "breakdown": args.breakdown and k == 0})
            print(f"{variant:40s} {n:5d} {m['seconds'] / m['sd_seconds']:9.2f} {m['peak_mib'] / sd['peak_mib']:11.2f} "
                  f"{m['seconds']:8.2f}", flush=True)
            if "breakdown" in m:
                breakdowns[n] = (m["breakdown"], m["sd_seconds"])
    if breakdowns:
        print(f"\nwhere the time goes ({args.variants[0]}; seconds of one run, ×SD = share of plain sampling's time "
              f"measured beside it: {', '.join(f'{s:.2f} s' for _, s in breakdowns.values())}):")
        print(breakdown_table(breakdowns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
