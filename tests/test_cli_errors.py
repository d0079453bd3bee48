"""Every user mistake ends in ONE ``error:`` line, no traceback, within seconds (issue #12).

The real command line runs in subprocesses (two at a time): exit status 2 for usage errors found before any model
loads (bad numbers, devices, output paths, text that is not UTF-8), 1 for failures while working (a model folder
diffusers cannot load).  A fuzz test throws random argument lists at every command.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: CPU seconds a failing command may take (the issue's bound); most take the import time of torch, 3-8 s here.
TIME_LIMIT_S = 20
#: Wall-clock seconds before a run counts as hanging (generous: test machines may be loaded).
WALL_LIMIT_S = 120


def run_cli(args: list, cwd: Path) -> tuple[int, str, float]:
    """``python -m lmd_utils ARGS`` in a subprocess: (status, stderr, CPU seconds of the child).  ``args`` may hold
    bytes.  The time is the child's own CPU time (``os.wait4``), so a loaded test machine does not fail the bound;
    the wall clock is bounded separately by :data:`WALL_LIMIT_S`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LMD_LLM_MODEL")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", LMD_LLM_CACHE=str(cwd / "cache.json"),
               PYTHONPATH=str(REPO))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "lmd_utils", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + WALL_LIMIT_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{args}: still running after {WALL_LIMIT_S} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return proc.returncode, text, usage.ru_utime + usage.ru_stime


def run_many(cases: list[list], cwd: Path) -> list[tuple[int, str, float]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda a: run_cli(a, cwd), cases))


def assert_one_error_line(args, status: int, err: str, seconds: float, expected_status: int | None = None) -> str:
    """No traceback; exactly one ``error:`` line, the last one; the expected status; within the time limit."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in err, (args, err[-2000:])
    assert status in (1, 2), (args, status, err[-2000:])
    assert len(errors) == 1 and lines[-1] == errors[0], (args, err[-2000:])
    assert len(errors[0]) <= 500, (args, len(errors[0]))
    if expected_status is not None:
        assert status == expected_status, (args, status, errors[0])
    assert seconds < TIME_LIMIT_S, (args, seconds)
    return errors[0]


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "not_diffusers").mkdir()
    (tmp_path / "not_diffusers" / "model_index.json").write_text("{}")
    (tmp_path / "broken_index").mkdir()
    (tmp_path / "broken_index" / "model_index.json").write_text("[1")
    return {"dir": tmp_path, "file": tmp_path / "a_file", "empty": tmp_path / "empty_folder",
            "not_diffusers": tmp_path / "not_diffusers", "broken": tmp_path / "broken_index"}


# ----------------------------------------------------------------------------------------------------------------
# Usage errors: status 2, before any model loads
# ----------------------------------------------------------------------------------------------------------------
def test_usage_errors_are_one_line_with_status_2(places):
    d, f = places["dir"], places["file"]
    gen = ["generate", "a red circle", "--source", "planner"]
    cases = {
        # numbers out of range
        "steps 0": gen + ["--steps", "0", "--out", str(d / "a.png")],
        "steps huge": gen + ["--steps", "100000", "--out", str(d / "a.png")],
        "seed negative": gen + ["--seed", "-1", "--out", str(d / "a.png")],
        "seed past 2**64-1": gen + ["--seed", str(2 ** 64), "--out", str(d / "a.png")],
        "seed not a number": gen + ["--seed", "1e3", "--out", str(d / "a.png")],
        "n-per-task 0": ["benchmark", "stage2", "--n-per-task", "0"],
        "unknown method": ["benchmark", "stage2", "--method", "sd,nope"],
        "llm timeout 0": ["layout", "a cat", "--llm-timeout", "0"],
        # devices
        "device bogus": gen + ["--device", "bogus", "--out", str(d / "a.png")],
        "device cuda:99": gen + ["--device", "cuda:99", "--out", str(d / "a.png")],
        # output paths
        "out is a folder": gen + ["--out", str(d)],
        "out without extension": gen + ["--out", str(d / "noext")],
        "out under a file": gen + ["--out", str(f / "x.png")],
        "out unwritable": gen + ["--out", "/proc/lmd_test.png"],
        "layout-out under a file": gen + ["--layout-out", str(f / "l.json"), "--out", str(d / "b.png")],
        "layout-out not json": gen + ["--layout-out", str(d / "l.txt"), "--out", str(d / "b.png")],
        "layout --out not an image": ["layout", "a cat", "--out", str(d / "x.txt")],
        "demo --out under a file": ["demo", "--out", str(f / "demo.png")],
        "stage2 --json under a file": ["benchmark", "stage2", "--json", str(f / "r.json")],
        "cache under a file": ["layout", "a cat", "--source", "planner", "--cache", str(f / "c.json")],
        # text that is not UTF-8, a missing SAM checkpoint
        "prompt not utf-8": ["generate", b"a red \xff circle", "--out", str(d / "a.png")],
        "sam checkpoint missing": gen + ["--sam", str(d / "nope.pth"), "--out", str(d / "a.png")],
        "missing subcommand": ["benchmark"],
        "unknown option": ["layout", "a cat", "--bogus"],
    }
    if torch.cuda.is_available():
        del cases["device cuda:99"]
    results = run_many(list(cases.values()), d)
    for (name, args), (status, err, seconds) in zip(cases.items(), results):
        line = assert_one_error_line(name, status, err, seconds, expected_status=2)
        assert "Loading pipeline" not in err, (name, "the model loaded before the argument was checked")
    assert not any(p.name in ("a.png", "b.png") for p in d.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# Failures while working: status 1
# ----------------------------------------------------------------------------------------------------------------
def test_model_errors_are_one_line_with_status_1(places):
    gen = ["generate", "a red circle", "--source", "planner", "--out", str(places["dir"] / "a.png"), "--model"]
    cases = {
        "empty folder": gen + [str(places["empty"])],
        "folder without a pipeline": gen + [str(places["not_diffusers"])],
        "broken model_index.json": gen + [str(places["broken"])],
        "a file": gen + [str(places["file"])],
        "unknown hub id offline": gen + ["nobody-lmd-test/no-such-model"],
    }
    results = run_many(list(cases.values()), places["dir"])
    messages = {}
    for (name, args), (status, err, seconds) in zip(cases.items(), results):
        messages[name] = assert_one_error_line(name, status, err, seconds, expected_status=1)
    assert "no model_index.json" in messages["empty folder"]
    assert "cannot load a Stable Diffusion pipeline" in messages["folder without a pipeline"]
    assert "is a file" in messages["a file"]
    assert "not in the local Hugging Face cache" in messages["unknown hub id offline"]


# ----------------------------------------------------------------------------------------------------------------
# Fuzz: random argument lists for every command
# ----------------------------------------------------------------------------------------------------------------
def _fuzz_cases(rng: random.Random, n: int, places: dict[str, Path]) -> list[list]:
    d, f = places["dir"], places["file"]
    values = {
        "prompt": ["a red circle", "", "...", "🙂" * 50, "1000000000 cats", "a cat " * 3000, "a\x00b",
                   b"caf\xe9", "two blue squares and a green circle", "-x", "빨간 원 두 개"],
        "--steps": ["0", "-3", "1", "2", "abc", "1e9", ""],
        "--seed": ["-1", "0", str(2 ** 64 - 1), str(2 ** 64), "x", "007"],
        "--device": ["cpu", "bogus", "cuda", "cuda:7", "mps", "", "meta"],
        "--model": ["tiny", str(places["empty"]), str(places["not_diffusers"]), str(f), "a/b/c", "x y", ""],
        "--out": [str(d / "o.png"), str(d), str(f / "o.png"), str(d / "o"), "/proc/o.png", str(d / "o.gif")],
        "--layout-out": [str(d / "l.json"), str(f / "l.json"), str(d)],
        "--source": ["planner", "llm", str(f), str(d), "nope.json", ""],
        "--method": ["lmd", "sd", "both", "x"],
        "--sam": [str(d / "missing.pth"), str(f)],
        "--llm-timeout": ["0", "-1", "nan", "1e99", "x"],
        "--n-per-task": ["0", "-5", "x"],
        "--first-seed": ["-1", str(2 ** 70)],
        "--json": [str(f / "x.json"), str(d / "x.txt")],
        "--cache": [str(f / "c.json"), str(d)],
    }
    commands = {
        "generate": ["--steps", "--seed", "--device", "--model", "--out", "--layout-out", "--source", "--method",
                     "--sam", "--llm-timeout", "--cache"],
        "layout": ["--out", "--source", "--llm-timeout", "--cache"],
        "demo": ["--out", "--seed"],
        "benchmark stage2": ["--steps", "--device", "--method", "--n-per-task", "--first-seed", "--json"],
    }
    cases = []
    for _ in range(n):
        command = rng.choice(list(commands))
        args: list = command.split()
        if command in ("generate", "layout"):
            args.append(rng.choice(values["prompt"]))
        for option in rng.sample(commands[command], k=rng.randint(1, min(3, len(commands[command])))):
            args += [option, rng.choice(values[option])]
        if command == "generate":  # keep a successful run short
            args += ["--steps", "1"] if "--steps" not in args else []
            args += ["--model", "tiny"] if "--model" not in args else []
        if command == "benchmark stage2" and "--n-per-task" not in args:
            args += ["--n-per-task", "0"]
        cases.append(args)
    return cases


def test_fuzzed_arguments_never_give_a_traceback(places):
    n = int(os.environ.get("LMD_FUZZ_N", "12"))
    cases = _fuzz_cases(random.Random(12), n, places)
    for args, (status, err, seconds) in zip(cases, run_many(cases, places["dir"])):
        if status == 0:
            assert "Traceback" not in err and not any(line.startswith("error:") for line in err.splitlines())
        else:
            assert_one_error_line(args, status, err, seconds)


def test_seed_range_is_the_generators():
    from lmd_utils.__main__ import seed_arg
    from lmd_utils.models import MAX_SEED

    assert seed_arg(str(MAX_SEED)) == MAX_SEED == 2 ** 64 - 1
