"""`python -m lmd_utils generate ...` on the random-weight tiny model (wiring of stage 1 + stage 2)."""
import json

from PIL import Image

from lmd_utils.__main__ import main


def test_generate_writes_an_image_and_the_layout(tmp_path, capsys):
    out, lay = tmp_path / "x.png", tmp_path / "layout.json"
    rc = main(["generate", "a cat on the left and a dog on the right", "--model", "tiny", "--steps", "3",
               "--out", str(out), "--layout-out", str(lay), "--source", "planner"])
    assert rc == 0
    assert Image.open(out).size == (256, 256)
    printed = json.loads(capsys.readouterr().out)
    assert [b["phrase"] for b in printed["boxes"]] == ["a cat", "a dog"]
    assert json.loads(lay.read_text())["boxes"] == printed["boxes"]


def test_generate_both_draws_a_comparison(tmp_path):
    out = tmp_path / "both.png"
    assert main(["generate", "two cats", "--model", "tiny", "--steps", "2", "--method", "both",
                 "--out", str(out), "--source", "planner"]) == 0
    w, h = Image.open(out).size
    assert w > 2 * h  # layout + two images side by side


def test_generate_reports_a_missing_model_folder(tmp_path, capsys):
    rc = main(["generate", "a cat", "--model", str(tmp_path / "nowhere"), "--source", "planner",
               "--out", str(tmp_path / "x.png")])
    assert rc == 1 and "error:" in capsys.readouterr().err


def test_generate_never_caches_a_reply_stage_2_cannot_run(openai_server, tmp_path, monkeypatch, capsys):
    """A reply that parses but cannot run (its background pushes the caption past the text encoder's 77 tokens)
    is answered with a reprompt and never cached; the reply that can run is (issue #12, cache poisoning)."""
    from openai_server import Reply

    monkeypatch.setenv("LMD_LLM_MODEL", "test-model")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    too_long = " ".join(["a very long background"] * 30)
    openai_server.queue(Reply(f"Objects: [('a cat', [10, 20, 200, 200])]\nBackground prompt: {too_long}\n"
                              "Negative prompt:"))
    openai_server.queue(Reply("Objects: [('a cat', [10, 20, 200, 200])]\nBackground prompt: A park\n"
                              "Negative prompt:"))
    cache = tmp_path / "cache.json"
    args = ["generate", "a cat in a park", "--model", "tiny", "--steps", "2", "--out", str(tmp_path / "x.png"),
            "--source", "llm", "--cache", str(cache)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["background"] == "A park"
    assert len(openai_server.requests) == 2  # the reprompt
    cached = json.dumps(json.loads(cache.read_text(encoding="utf-8")))
    assert "A park" in cached and "a very long background" not in cached
    assert main(args) == 0 and len(openai_server.requests) == 2  # the second run reads the cache


def test_generate_enlarges_small_images_for_viewing(tmp_path, capsys):
    """The toy world's 32×32 image is written 8× larger (nearest neighbour); --scale 1 keeps the exact pixels."""
    big, exact = tmp_path / "big.png", tmp_path / "exact.png"
    base = ["generate", "a red circle", "--model", "toyworld", "--steps", "2", "--source", "planner"]
    assert main(base + ["--out", str(big)]) == 0
    assert "32×32 pixels shown 8× larger" in capsys.readouterr().err
    assert main(base + ["--out", str(exact), "--scale", "1"]) == 0
    with Image.open(big) as b, Image.open(exact) as e:
        assert b.size == (256, 256) and e.size == (32, 32)
        assert b.resize((32, 32), Image.NEAREST).tobytes() == e.tobytes()


def test_generate_plans_for_the_toy_model_with_its_planner(tmp_path, capsys):
    """With the toy model the offline planner plans as for the toy model (toy_planner: square boxes of the trained
    sizes, no photo background) and says which words the toy model never learnt; Stable Diffusion keeps its own."""
    from lmd_utils.toyworld.model import toy_layout

    import pytest

    from lmd_utils.layout import LayoutWarning

    out = tmp_path / "x.png"
    with pytest.warns(LayoutWarning, match="the toy model does not know 'cat'"):  # named, not silently dropped
        assert main(["generate", "three green squares and a cat", "--model", "toyworld", "--steps", "2",
                     "--source", "planner", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["boxes"] == json.loads(toy_layout("three green squares and a cat").to_json())["boxes"]
    assert printed["background"] == ""
    assert all(round(b["x1"] - b["x0"], 6) == round(b["y1"] - b["y0"], 6) for b in printed["boxes"])  # squares


def test_generate_runs_each_baseline_on_the_layout(tmp_path):
    for method in ("backward-guidance", "multidiffusion", "boxdiff"):
        out = tmp_path / f"{method}.png"
        assert main(["generate", "a cat on the left and a dog on the right", "--model", "tiny", "--steps", "2",
                     "--method", method, "--out", str(out), "--source", "planner"]) == 0
        assert Image.open(out).size == (256, 256)
