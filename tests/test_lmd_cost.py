"""benchmarks/lmd_cost.py: the ratio table (the default variant's rows start with ``ours``), the per-stage breakdown,
``--set`` overrides and the random-weight full-size SD path, end to end on the CPU with tiny runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "lmd_cost.py"
OURS = "ours (batched, truncated)"


def _run(*args: str, timeout: int = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _module():
    spec = importlib.util.spec_from_file_location("lmd_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_and_breakdown_on_the_tiny_model():
    out = _run("--model", "tiny", "--steps", "2", "--boxes", "1", "2", "--repeats", "1", "--variants", OURS,
               "--set", "per_box_stop=needed")
    lines = out.splitlines()
    assert "per_box_stop=needed" in lines[0]
    assert lines[1].split() == ["variant", "boxes", "time", "×SD", "memory", "×SD", "seconds"]
    rows = [line for line in lines if line.startswith("ours")]
    assert [line.split()[-4] for line in rows] == ["1", "2"]  # one row per box count, the box count before 3 numbers
    assert all(float(x) > 0 for line in rows for x in line.split()[-3:])
    module = _module()
    for stage in (*module.STAGES, *module.SUMS, "total (breakdown run)"):
        assert any(line.startswith(stage + " ") for line in lines), stage
    per_box = next(line for line in lines if line.startswith("per-box denoising "))
    assert float(per_box.split()[2]) > 0  # seconds of the 1-box run


def test_set_overrides_nested_fields_and_refuses_unknown_ones():
    from lmd_utils.config import LMDConfig

    module = _module()
    config = module.with_settings(LMDConfig(), ["per_box_stop=needed", "per_box_guidance.iterations=[1, 2]",
                                                "overall_guidance.guidance_steps=3", "guidance_scale=4"])
    assert config.per_box_stop == "needed" and config.per_box_guidance.iterations == (1, 2)
    assert config.overall_guidance.guidance_steps == 3 and config.guidance_scale == 4
    assert config.per_box_guidance.guidance_steps == LMDConfig().per_box_guidance.guidance_steps
    with pytest.raises(SystemExit, match="no field"):
        module.with_settings(LMDConfig(), ["per_box_guidance.no_such=1"])


@pytest.mark.slow  # builds a random-weight full-size SD 1.5 three times (about a minute)
def test_full_size_random_sd15_smoke_on_the_cpu():
    out = _run("--model", "sd15-random", "--steps", "2", "--boxes", "1", "--size", "128", "--repeats", "1",
               "--variants", OURS, timeout=900)
    assert any(line.startswith("ours") and line.split()[-4] == "1" for line in out.splitlines())
    assert "where the time goes" in out


def test_a_setting_the_model_own_config_refuses_ends_in_one_line_before_measuring():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # the toy model's settings use shared_forward, which the authors' stop rule cannot take
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", "toyworld", "--boxes", "1",
                          "--set", "per_box_guidance.stop_rule=authors"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode != 0 and "variant" not in out.stdout  # nothing measured
    assert out.stderr.strip().splitlines() == ["error: --set: shared_forward needs stop_rule='current' (the "
                                               "authors' rule decides before the forward)"]
