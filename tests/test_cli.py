"""The command line: ``python -m lmd_utils layout | benchmark prompts | benchmark stage1 | demo``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lmd_utils.__main__ import BENCHMARK_COMMANDS, COMMANDS, build_parser, main
from lmd_utils.layout import Layout
from openai_server import Reply

pytestmark = pytest.mark.usefixtures("no_llm_env")
REPO = Path(__file__).resolve().parents[1]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_layout_with_the_planner_prints_json_and_draws(tmp_path, capsys):
    out = tmp_path / "layout.png"
    assert main(["layout", "a yellow triangle on the left and a blue circle on the right", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    layout = Layout.from_json(captured.out)
    assert layout.phrases == ["a yellow triangle", "a blue circle"] and layout.meta["source"] == "offline planner"
    assert layout.boxes[0].center[0] < 0.5 < layout.boxes[1].center[0]
    assert "layout source: offline planner (no LLM configured" in captured.err
    assert min(_png_size(out)) > 200


def test_layout_uses_the_llm_when_configured(openai_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMD_LLM_MODEL", "test-model")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    openai_server.queue(Reply("Objects: [('a dog', [10, 20, 100, 80])]\nBackground prompt: A beach\nNegative prompt:"))
    assert main(["layout", "a dog on a beach", "--cache", str(tmp_path / "c.json")]) == 0
    captured = capsys.readouterr()
    layout = Layout.from_json(captured.out)
    assert layout.phrases == ["a dog"] and layout.background == "A beach" and layout.meta["source"] == "llm test-model"
    assert "layout source: llm test-model" in captured.err
    assert (tmp_path / "c.json").is_file()
    # --no-cache asks again; --source planner overrides the environment
    openai_server.queue(Reply("Objects: [('a cat', [10, 20, 100, 80])]\nBackground prompt: A beach\nNegative prompt:"))
    assert main(["layout", "a dog on a beach", "--no-cache"]) == 0
    assert Layout.from_json(capsys.readouterr().out).phrases == ["a cat"]
    assert main(["layout", "a dog on a beach", "--source", "planner"]) == 0
    assert Layout.from_json(capsys.readouterr().out).meta["source"] == "offline planner"
    assert len(openai_server.requests) == 2


def test_layout_from_a_reply_file(gpt35_replies_file, capsys):
    prompt = "A realistic photo of a scene with two dogs"
    assert main(["layout", prompt, "--source", str(gpt35_replies_file)]) == 0
    layout = Layout.from_json(capsys.readouterr().out)
    assert layout.phrases == ["a dog", "a dog"] and layout.boxes[0].to_xywh() == [82, 120, 163, 195]


def test_user_errors_are_one_line(capsys, tmp_path):
    assert main(["layout", "a cat", "--source", "llm"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no LLM configured") and len(err.strip().splitlines()) == 1
    assert main(["layout", "a cat", "--source", str(tmp_path / "nope.json")]) == 1
    assert "neither 'planner', 'llm' nor a reply file" in capsys.readouterr().err
    assert main(["benchmark"]) == 2  # argparse: a subcommand is required
    assert main(["--help"]) == 0


def test_benchmark_prompts(prompts_file, capsys):
    assert main(["benchmark", "prompts"]) == 0
    assert capsys.readouterr().out.splitlines() == prompts_file.read_text(encoding="utf-8").splitlines()


def test_benchmark_stage1_table(gpt35_replies_file, capsys):
    assert main(["benchmark", "stage1", "--source", str(gpt35_replies_file), "--no-progress",
                 "--show-failures"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "overall: 396/400"
    assert sum(line.startswith("FAILED [") for line in lines) == 4
    rows = {line.split()[0]: line.split()[1:3] for line in lines if line.split()[0] in
            ("negation", "numeracy", "attribution", "spatial")}
    assert rows == {"negation": ["100", "100"], "numeracy": ["97", "100"], "attribution": ["100", "100"],
                    "spatial": ["99", "100"]}


def test_benchmark_stage1_planner_on_a_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a toy world with three circles\na toy world with a red circle and a blue square\n")
    assert main(["benchmark", "stage1", "--source", "planner", "--prompts", str(prompts), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "overall: 2/2"
    assert "layout source: offline planner" in captured.err


def test_demo_draws_a_png(tmp_path, capsys):
    out = tmp_path / "sub" / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert Layout.from_json(captured.out).meta["source"] == "offline planner"
    assert "offline planner" in captured.err and min(_png_size(out)) > 200
    # each image's verdict from the toy detector, on stderr and under the image
    verdicts = [line for line in captured.err.splitlines() if line.startswith(("plain sampling: ", "LMD: "))]
    assert len(verdicts) == 2 and all(v.split(": ", 1)[1][0] in "✓✗" for v in verdicts), captured.err


def test_commands_are_extensible():
    def add_hello(subparsers):
        p = subparsers.add_parser("hello")
        p.set_defaults(handler=lambda args: 7)

    COMMANDS.append(add_hello)
    BENCHMARK_COMMANDS.append(add_hello)
    try:
        assert main(["hello"]) == 7 and main(["benchmark", "hello"]) == 7
    finally:
        COMMANDS.remove(add_hello)
        BENCHMARK_COMMANDS.remove(add_hello)
    assert "hello" not in build_parser().format_help()


def test_module_runs_as_a_subprocess(gpt35_replies_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LMD_LLM_MODEL")}
    env.update(OMP_NUM_THREADS="1", LMD_LLM_CACHE=str(tmp_path / "cache.json"))
    proc = subprocess.run([sys.executable, "-m", "lmd_utils", "benchmark", "stage1", "--source",
                           str(gpt35_replies_file), "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "overall: 396/400"
    assert "layout source: reply file llm_responses_gpt-3.5-turbo.json" in proc.stderr
    json.dumps(proc.stdout)  # plain text
