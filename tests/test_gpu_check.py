"""benchmarks/gpu_check.py: the prepared GPU check runs end to end on the CPU (``--tiny``), reports its table and
JSON, passes the model folder to the notebook tests, and ends a user mistake in one ``error:`` line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lmd_utils.config import OVERALL_NEGATIVE_PROMPT
from lmd_utils.models import default_resolution

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout)


FAKE_NOTEBOOK_TESTS = """
import json, os
from pathlib import Path

def test_headless_sees_the_model_folder():
    folder = Path(os.environ["LMD_MODEL_ID"])
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert os.environ["LMD_STEPS"] == "3" and os.environ["LMD_RANDOM_WEIGHTS"] == "1"

def test_not_selected():
    raise AssertionError("-k headless should deselect this")
"""


def test_tiny_cpu_run_end_to_end(tmp_path):
    """The whole script, tiny models on the CPU: table rows, JSON, saved folders, the notebook stage's pass-through."""
    fake = tmp_path / "test_fake_notebooks.py"
    fake.write_text(textwrap.dedent(FAKE_NOTEBOOK_TESTS))
    out = tmp_path / "out"
    proc = _run("--device", "cpu", "--tiny", "--out", str(out), "--notebook-steps", "3", "--notebook-tests", str(fake))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)

    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sd")]
    assert [r.split("|")[1:3] for r in rows] == [[" sd15 ", " lmd+sam "], [" sd15 ", " sd "],
                                                  [" sd21 ", " lmd+sam "], [" sd21 ", " sd "]]
    assert all(r.split("|")[6].strip() == "no" for r in rows)  # no NaN/inf
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["tiny"] and report["skipped"] == []
    assert [(r["model"], r["method"], r["steps"]) for r in report["rows"]] == [
        ("sd15", "lmd+sam", 4), ("sd15", "sd", 4), ("sd21", "lmd+sam", 4), ("sd21", "sd", 4)]
    for r in report["rows"]:
        assert r["seconds"] > 0 and r["peak_gib"] is None and r["nonfinite"] == "no"
        if r["method"] == "lmd+sam":
            assert r["time_ratio"] == pytest.approx(r["seconds"] / next(
                s["seconds"] for s in report["rows"] if s["model"] == r["model"] and s["method"] == "sd"))

    sd21 = Path(report["folders"]["sd21"])
    assert json.loads((sd21 / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    assert json.loads((sd21 / "unet" / "config.json").read_text())["use_linear_projection"] is True
    assert report["notebooks"]["returncode"] == 0
    assert report["notebooks"]["tests"] == [
        {"name": "test_headless_sees_the_model_folder", "outcome": "passed", "seconds": pytest.approx(0, abs=5)}]
    assert [s["stage"] for s in report["stages"]][-1] == "notebooks"


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "error: --device cuda: CUDA is not available"),
    (["--device", "cpu"], "error: full-size models on the CPU"),
    (["--models", "sd15,sd3"], "error: --models must name some of sd15, sd21"),
    (["--repeats", "0", "--tiny"], "error: --steps, --warmup-steps, --repeats"),
    (["--frobnicate"], "error: unrecognized arguments: --frobnicate"),
])
def test_user_mistakes_end_in_one_error_line(args, message):
    proc = _run(*args, timeout=120, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr


def test_full_size_configs_have_the_published_parameter_counts():
    """SD 1.5 / SD 2.1 UNets, SD's VAE, CLIP ViT-L/14 / OpenCLIP ViT-H text encoders (on the meta device: no memory)."""
    from lmd_utils.models import build_random_pipeline

    expected = {"sd15": (859_520_964, 123_060_480, 512, "epsilon"),
                "sd21": (865_910_724, 340_387_840, 768, "v_prediction")}
    for name, (unet_params, text_params, size, prediction) in expected.items():
        pipe = build_random_pipeline(name, device="meta", dtype=torch.float16,
                                     extra_words=OVERALL_NEGATIVE_PROMPT.replace(",", "").split())
        counts = [sum(p.numel() for p in m.parameters()) for m in (pipe.unet, pipe.text_encoder, pipe.vae)]
        assert counts == [unet_params, text_params, 83_653_863]
        assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
        assert pipe.scheduler.config.prediction_type == prediction and default_resolution(pipe) == (size, size)
        assert pipe.unet.config.use_linear_projection == (name == "sd21")
        assert len(pipe.tokenizer(OVERALL_NEGATIVE_PROMPT).input_ids) < 40  # its words are single tokens
    with pytest.raises(ValueError, match="sd15"):
        build_random_pipeline("sdxl", device="meta")


def test_max_minutes_skips_the_stages_left_with_a_note(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--max-minutes", "1e-9", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["skipped"] == ["sd15: build, save, load", "sd21: build, save, load"] and report["rows"] == []
    assert report["notebooks"] == "not run (no SD 1.5 folder)"
    assert "skipped sd15: build, save, load: past --max-minutes" in capsys.readouterr().out
