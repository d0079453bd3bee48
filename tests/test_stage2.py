"""`benchmark stage2` on a real-model path (lmd_utils.stage2): the tiny random SD and a random-weight OWL-ViT,
end to end, resumable, sharded with Accelerate (issue #14, item 3)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmd_utils import stage2
from lmd_utils.__main__ import main
from lmd_utils.benchmark import TASKS, benchmark_specs
from lmd_utils.evaluation import OwlViTDetector, load_detection_records, score_records
from lmd_utils.stage2 import parse_stage2_methods, select_specs

ROOT = Path(__file__).resolve().parents[1]
OVERALL = re.compile(r"^overall: sd \d+\.\d% lmd \d+\.\d%$")


@pytest.fixture(scope="module")
def owl_folder(tmp_path_factory):
    """A random-weight OWL-ViT saved as a folder (what --detector-model takes), built offline."""
    folder = tmp_path_factory.mktemp("owl")
    detector = OwlViTDetector.from_config(seed=0)
    detector.model.save_pretrained(folder)
    detector.processor.save_pretrained(folder)
    return folder


def _args(owl_folder, out, *extra):
    return ["benchmark", "stage2", "--model", "tiny", "--detector-model", str(owl_folder), "--n-per-task", "1",
            "--steps", "2", "--source", "planner", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def test_methods_and_prompt_selection():
    assert parse_stage2_methods("sd,lmd") == ["sd", "lmd"] and parse_stage2_methods(["lmd"]) == ["lmd"]
    for bad in ("sd,boxdiffx", "sd,sd", ""):
        with pytest.raises(ValueError):
            parse_stage2_methods(bad)
    chosen = select_specs(2)
    specs = benchmark_specs()
    assert [s.task for _, s in chosen] == [t for t in TASKS for _ in range(2)]
    assert all(specs[i] == s for i, s in chosen)  # indices are places among the 400: seeds do not move
    assert len(select_specs(None)) == 400


def test_runs_end_to_end_saves_everything_and_scores_like_score_detections(owl_folder, tmp_path, capsys):
    out = tmp_path / "run"
    methods = ["sd", "backward-guidance", "multidiffusion", "lmd"]
    assert main(_args(owl_folder, out, "--method", ",".join(methods))) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(" ".join(["overall:"] + [rf"{m} \d+\.\d%" for m in methods]), text[-1]), text[-1]
    indices = [i for i, _ in select_specs(1)]
    for method in methods:
        for i in indices:
            record = json.loads((out / method / f"{i:03d}.json").read_text())
            assert record["seed"] == i and record["method"] == method and record["error"] is None
            assert (out / method / f"{i:03d}.png").stat().st_size > 0
        # the saved raw detections, scored by `benchmark score-detections`' code, give the saved verdicts
        rescored = score_records(load_detection_records(out / method / "detections.json"))
        saved = [json.loads((out / method / f"{i:03d}.json").read_text())["success"] for i in indices]
        assert [o.success for o in rescored.outcomes] == saved
    negation = json.loads((out / "layouts" / f"{indices[0]:03d}.json").read_text())
    assert negation["layout"]["boxes"] == [] and negation["error"] is None  # a layout without boxes is a layout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == methods and summary["prompts"] == 4
    assert all(m["seconds_per_image"] > 0 for m in summary["methods"].values())
    assert (out / "summary.png").stat().st_size > 0


def test_a_rerun_resumes_and_redoes_only_what_is_missing(owl_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(_args(owl_folder, out)) == 0
    first = capsys.readouterr().out
    made = []
    original = stage2.make_image

    def counting(pipe, method, spec, layout, seed, config):
        made.append((method, seed))
        return original(pipe, method, spec, layout, seed, config)

    monkeypatch.setattr(stage2, "make_image", counting)
    assert main(_args(owl_folder, out)) == 0
    assert made == [] and capsys.readouterr().out == first  # nothing redone, the same table
    index = select_specs(1)[2][0]
    (out / "lmd" / f"{index:03d}.json").unlink()  # as if the run had stopped before this record was written
    (out / "sd" / f".{index:03d}.png.123.tmp").write_bytes(b"half")  # a stopped write leaves only a temp file
    assert main(_args(owl_folder, out)) == 0
    assert made == [("lmd", index)]


@pytest.mark.parametrize("extra, message", [
    (["--method", "sd,nope"], "--method"),
    (["--detector", "toy"], "toy-world images"),
])
def test_usage_errors_come_before_any_model_loads(owl_folder, tmp_path, capsys, extra, message):
    assert main(_args(owl_folder, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_out_must_be_a_folder_we_can_write(owl_folder, tmp_path, capsys):
    assert main(_args(owl_folder, Path("/proc/lmd-run"))) == 2  # cannot be made: said before any model loads
    assert capsys.readouterr().err.startswith("error: --out")
    afile = tmp_path / "x.png"
    afile.write_bytes(b"")
    assert main(_args(owl_folder, afile)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_accelerate_launch_shares_the_prompts_between_two_cpu_processes(owl_folder, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without CUDA: two gloo CPU processes,
    each making its share; the main one writes the summary."""
    out = tmp_path / "run"
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = [a for a in _args(owl_folder, out) if a not in ("--device", "cpu")]
    done = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmd_utils", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert OVERALL.match(done.stdout.strip().splitlines()[-1])
    processes = {json.loads(p.read_text())["process"] for p in (out / "lmd").glob("[0-9]*.json")}
    assert processes == {0, 1}


def test_a_reply_that_cannot_be_used_fails_its_prompt_only(owl_folder, tmp_path, capsys):
    """A reply that does not parse, and one stage 2 cannot run (a background past the text encoder's 77 tokens),
    fail their prompts for lmd (saved with the reason) while the run goes on; sd needs no layout."""
    from lmd_utils.llm_layouts import layout_to_reply
    from lmd_utils.planner import plan_layout

    specs = [s for _, s in select_specs(1)]
    replies = {s.prompt: [layout_to_reply(plan_layout(s.prompt))] for s in specs}
    replies[specs[1].prompt] = ["I cannot draw boxes, sorry."]
    too_long = " ".join(["a very long background"] * 30)
    replies[specs[2].prompt] = [f"Objects: [('a cat', [10, 20, 200, 200])]\nBackground prompt: {too_long}\n"
                                "Negative prompt:"]
    reply_file = tmp_path / "replies.json"
    reply_file.write_text(json.dumps(replies))
    out = tmp_path / "run"
    args = [a if a != "planner" else str(reply_file) for a in _args(owl_folder, out)]
    assert main(args) == 0
    assert OVERALL.match(capsys.readouterr().out.strip().splitlines()[-1])
    (i0, _), (i1, _), (i2, _), _ = select_specs(1)
    for bad in (i1, i2):
        record = json.loads((out / "lmd" / f"{bad:03d}.json").read_text())
        assert record["success"] is False and record["error"].startswith("no usable layout")
        assert json.loads((out / "sd" / f"{bad:03d}.json").read_text())["error"] is None
    assert "77" in json.loads((out / "layouts" / f"{i2:03d}.json").read_text())["error"]
    assert json.loads((out / "lmd" / f"{i0:03d}.json").read_text())["error"] is None


@pytest.fixture(scope="module")
def gligen_folder(tmp_path_factory):
    """The tiny GLIGEN pipeline saved as a folder (what --model takes for a real GLIGEN checkpoint)."""
    from lmd_utils.models import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("gligen")
    build_tiny_pipeline(gligen=True).save_pretrained(folder)
    return folder


def test_gligen_and_lmd_plus_run_on_a_gligen_model_and_fail_in_one_line_elsewhere(owl_folder, gligen_folder,
                                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    args = _args(owl_folder, out, "--method", "gligen,lmd+", "--n-per-task", "1")
    args[args.index("tiny")] = str(gligen_folder)
    assert main(args) == 0
    assert re.fullmatch(r"overall: gligen \d+\.\d% lmd\+ \d+\.\d%", capsys.readouterr().out.strip().splitlines()[-1])
    for method in ("gligen", "lmd+"):
        records = [json.loads(p.read_text()) for p in sorted((out / method).glob("[0-9]*.json"))]
        assert len(records) == 4 and all(r["method"] == method for r in records)
    # a model without GLIGEN's layers: one error line, before the detector or any image
    assert main(_args(owl_folder, tmp_path / "plain", "--method", "sd,lmd+")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: lmd+ needs a GLIGEN model") and not (tmp_path / "plain" / "sd").exists()
