"""lmd_utils.notebook (set-up, editing, the layout editor widget) and ScriptedLayoutSource."""

from __future__ import annotations

import random
import sys
import warnings

import numpy as np
import pytest
import torch

from lmd_utils import notebook
from lmd_utils.benchmark import evaluate_stage1
from lmd_utils.layout import Layout, LayoutWarning
from lmd_utils.llm_layouts import (
    LayoutParseError,
    LayoutSession,
    MissingReplyError,
    ScriptedLayoutSource,
    load_template,
    reply_to_layout,
    scoring_objects,
)
from lmd_utils.notebook import (
    NotebookEnv,
    checkpoint_resolution,
    default_model_id,
    default_steps,
    edit_box,
    find_reference_file,
    layout_editor,
    model_kind,
    model_usable,
    seed_everything,
    settings_note,
    setup,
    weights_trained,
)

pytestmark = pytest.mark.usefixtures("no_llm_env")

CAT_DOGS = ("Objects: [('a gray cat', [32, 160, 148, 240]), ('a brown dog', [254, 36, 216, 184]), "
            "('a brown dog', [254, 292, 216, 184])]\nBackground prompt: A park\nNegative prompt: people")


@pytest.fixture
def layout() -> Layout:
    return reply_to_layout(CAT_DOGS, prompt="a gray cat on the left and two brown dogs on the right")


# =============================================================================================================
# Set-up
# =============================================================================================================
def test_seed_everything_makes_all_generators_repeat():
    seed_everything(3)
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    seed_everything(3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
    seed_everything(4)
    assert float(torch.rand(())) != first[2]


def test_setup_says_what_it_uses_without_an_llm(capsys, no_accelerator):
    env = setup(model_id="tiny", steps=4, seed=7, uses_llm=True)
    out = capsys.readouterr().out
    assert (env.device, env.dtype, env.seed, env.model_id, env.steps, env.llm) == (
        torch.device("cpu"), torch.float32, 7, "tiny", 4, None)
    assert not env.colab
    assert "device:          cpu (no CUDA or Apple MPS found" in out
    assert "diffusion model: tiny (SD 1.5's layout with random weights" in out and "steps, seed:     4, 7" in out
    assert "LLM:             none configured" in out and "offline planner" in out
    after_setup = float(torch.rand(()))
    torch.manual_seed(7)
    assert after_setup == float(torch.rand(()))  # setup seeded torch with SEED


def test_setup_names_the_llm_but_never_the_key(capsys, monkeypatch, no_accelerator):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    env = setup(llm_model="llama3.1", base_url="http://user:hunter2@localhost:11434/v1", uses_llm=True)
    out = capsys.readouterr().out
    assert env.llm is not None and env.llm.model == "llama3.1"
    assert "LLM:             llama3.1 at http://localhost:11434/v1" in out
    assert "sk-secret-123" not in out + repr(env) and "hunter2" not in out


def test_setup_without_llm_use_prints_no_llm_line_and_checks_steps(capsys, no_accelerator):
    env = setup(uses_llm=False)
    assert "LLM:" not in capsys.readouterr().out and env.llm is None
    with pytest.raises(ValueError, match="steps"):
        setup(steps=0, quiet=True)


# -- the model: one variable, its kind, its settings ------------------------------------------------------------
MODEL_ENV = ("LMD_MODEL_ID", "LMD_STEPS", "LMD_RANDOM_WEIGHTS", "LMD_ALLOW_DOWNLOAD")


@pytest.fixture
def model_env(monkeypatch):
    """None of the notebooks' model variables set, the hub switched off; returns the monkeypatch to set them."""
    for name in MODEL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return monkeypatch


def sd_folder(root, sample_size: int = 16):
    """A folder that looks like a diffusers SD checkpoint (configs only: set-up reads no weights)."""
    import json

    for sub, config in (("unet", {"sample_size": sample_size}), ("vae", {"block_out_channels": [8, 8, 16, 16]})):
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps(config))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def test_default_model_id_is_the_variable_else_sd15_on_cuda_else_the_toy_world(model_env, no_accelerator):
    assert default_model_id() == "toyworld"  # no CUDA here
    assert default_model_id(cuda=False) == "toyworld"
    assert default_model_id(cuda=True) == notebook.SD15_MODEL_ID == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    model_env.setenv("LMD_MODEL_ID", "/some/checkpoint")
    assert default_model_id() == default_model_id(cuda=True) == "/some/checkpoint"


def test_model_kind_tells_the_toy_world_tiny_and_real_checkpoints_apart(tmp_path):
    assert model_kind(None) is None
    assert model_kind("toyworld") == model_kind(str(notebook.TOYWORLD_MODEL_DIR)) == "toy"
    assert model_kind("tiny") == "tiny"
    assert model_kind("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd"
    assert model_kind(str(sd_folder(tmp_path / "sd"))) == "sd"
    (tmp_path / "my-toy").mkdir()
    (tmp_path / "my-toy" / "toyworld.json").write_text("{}")  # what the toy-world training exports
    assert model_kind(str(tmp_path / "my-toy")) == "toy"


def test_weights_are_trained_unless_tiny_or_marked_random(model_env, tmp_path):
    folder = str(sd_folder(tmp_path / "sd"))
    assert weights_trained("toyworld") and weights_trained(folder) and weights_trained("owner/name")
    assert not weights_trained("tiny") and not weights_trained(None)
    model_env.setenv("LMD_RANDOM_WEIGHTS", "1")
    assert not weights_trained(folder) and not weights_trained("owner/name")
    assert weights_trained("toyworld")  # the flag marks a real checkpoint's weights, never the toy world's


def test_default_steps_per_model_and_from_the_variable(model_env, tmp_path):
    folder = str(sd_folder(tmp_path / "sd"))
    assert default_steps(None) is None
    assert default_steps("toyworld", toy=25) == 25  # the notebook's calibrated count
    assert default_steps("toyworld") == 15  # else the toy model's shipped lmd_config.json
    assert default_steps(folder) == default_steps("owner/name") == 50  # the authors'
    assert default_steps("tiny") == 5
    model_env.setenv("LMD_STEPS", "4")
    assert default_steps("toyworld", toy=25) == default_steps(folder) == default_steps("tiny") == 4
    assert default_steps(None) is None
    model_env.setenv("LMD_STEPS", "many")
    with pytest.raises(ValueError, match="LMD_STEPS"):
        default_steps(folder)


def test_checkpoint_resolution_is_read_from_the_configs(tmp_path):
    assert checkpoint_resolution("toyworld") == (32, 32)  # pixel space: no VAE
    assert checkpoint_resolution("tiny") == notebook.TINY_IMAGE_SIZE == (128, 128)
    assert checkpoint_resolution(str(sd_folder(tmp_path / "sd", sample_size=64))) == (512, 512)
    assert checkpoint_resolution("nobody/not-in-the-cache") is None and checkpoint_resolution(None) is None


def test_model_usable_checks_folders_and_downloads(model_env, tmp_path):
    assert model_usable("toyworld")[0] and model_usable("tiny")[0] and model_usable(None)[0]
    assert model_usable(str(sd_folder(tmp_path / "sd")))[0]
    (tmp_path / "empty").mkdir()
    assert model_usable(str(tmp_path / "empty")) == (False, f"{tmp_path / 'empty'} has no model_index.json "
                                                     "(not a diffusers pipeline folder)")
    assert not model_usable(str(tmp_path / "missing"))[0]
    ok, why = model_usable("owner/name", "cpu")
    assert not ok and "HF_HUB_OFFLINE=1" in why
    model_env.delenv("HF_HUB_OFFLINE")
    ok, why = model_usable("owner/name", "cpu")
    assert not ok and "LMD_ALLOW_DOWNLOAD=1" in why and "CPU" in why
    assert model_usable("owner/name", "cuda")[0]  # a GPU downloads (nothing is contacted by the check)
    model_env.setenv("LMD_ALLOW_DOWNLOAD", "1")
    assert model_usable("owner/name", "cpu")[0]


def test_setup_takes_a_real_checkpoint_folder_with_the_authors_settings(capsys, model_env, no_accelerator, tmp_path):
    folder = sd_folder(tmp_path / "sd")
    env = setup(model_id=str(folder), toy_steps=25)
    out = capsys.readouterr().out
    assert (env.model_id, env.kind, env.trained, env.steps, env.note) == (str(folder), "sd", True, 50, "")
    assert f"diffusion model: {folder} (a Stable Diffusion checkpoint, a local folder)" in out
    assert ("settings:        steps 50 (the authors'), CFG 7.5, the authors' settings (LMDConfig.for_pipe), "
            "128×128 (the checkpoint's native size)") in out
    model_env.setenv("LMD_STEPS", "4")
    model_env.setenv("LMD_RANDOM_WEIGHTS", "1")
    env = setup(model_id=str(folder), steps=None)
    out = capsys.readouterr().out
    assert (env.steps, env.trained) == (4, False)
    assert "RANDOM WEIGHTS ($LMD_RANDOM_WEIGHTS=1)" in out
    assert "steps 4 ($LMD_STEPS), CFG 7.5, the authors' settings (LMDConfig.for_pipe) on random weights" in out
    assert setup(model_id=str(folder), steps=9, quiet=True).steps == 9  # an explicit STEPS wins


def test_setup_on_the_toy_world_prints_its_own_settings(capsys, model_env, no_accelerator):
    env = setup(model_id="toyworld", toy_steps=25)
    out = capsys.readouterr().out
    assert (env.kind, env.trained, env.steps) == ("toy", True, 25)
    assert "settings:        steps 25, CFG 4, the toy world's own settings" in out and "32×32" in out
    assert settings_note(None, None) == "none"


def test_setup_falls_back_to_the_toy_world_and_says_why(capsys, model_env, no_accelerator):
    model_env.delenv("HF_HUB_OFFLINE")
    env = setup(model_id="owner/a-checkpoint-not-in-the-cache", toy_steps=25)
    out = capsys.readouterr().out
    assert (env.model_id, env.kind, env.steps) == ("toyworld", "toy", 25)
    assert "MODEL_ID = 'owner/a-checkpoint-not-in-the-cache' cannot be used here" in out
    assert "LMD_ALLOW_DOWNLOAD=1" in out and "using 'toyworld' instead" in out and env.note in out
    env = setup(model_id="/no/such/folder", quiet=True)
    assert env.model_id == "toyworld" and "no model folder" in env.note


def test_can_check_skips_claims_that_need_trained_weights_and_says_why(capsys, model_env, tmp_path):
    folder = str(sd_folder(tmp_path / "sd"))
    assert setup(model_id=folder, quiet=True).can_check("a claim") and capsys.readouterr().out == ""
    model_env.setenv("LMD_RANDOM_WEIGHTS", "1")
    assert not setup(model_id=folder, quiet=True).can_check("guidance moves the object")
    out = capsys.readouterr().out
    assert out == "skipped: needs trained weights (LMD_RANDOM_WEIGHTS=1): guidance moves the object\n"
    assert not setup(model_id="tiny", quiet=True).can_check("x")
    assert "needs trained weights (MODEL_ID = 'tiny')" in capsys.readouterr().out


def test_same_is_exact_on_a_cpu_and_tolerant_on_an_accelerator():
    def env_on(device, dtype):
        return NotebookEnv(device=torch.device(device), dtype=dtype, seed=0, model_id=None, steps=None, llm=None,
                           llm_note="", colab=False)

    a = torch.linspace(0, 1, 10)
    cpu, gpu = env_on("cpu", torch.float32), env_on("cuda", torch.float16)
    assert cpu.tolerance == 0 and gpu.tolerance == notebook.ACCELERATOR_ATOL
    assert cpu.same(a, a.clone()) and not cpu.same(a, a + 1e-6) and not cpu.same(a, a[:5])
    assert gpu.same(a, a + 1e-3) and not gpu.same(a, a + 0.1)
    mask = torch.tensor([True, False])
    assert gpu.same(mask, mask.clone()) and not gpu.same(mask, ~mask)  # masks are compared exactly everywhere


def test_colab_and_kernel_detection(monkeypatch):
    assert not notebook.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert notebook.in_colab()
    assert notebook.enable_inline_figures() is False  # no Jupyter kernel in a test process


def test_find_reference_file(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook, "SHARED_BENCHMARK_DIR", tmp_path / "shared")
    path, why = find_reference_file("replies.json")
    assert path is None and "not found" in why
    given = tmp_path / "mine.json"
    path, why = find_reference_file("replies.json", explicit=given)
    assert path is None and "does not exist" in why
    given.write_text("{}")
    assert find_reference_file("replies.json", explicit=str(given))[0] == given
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "replies.json").write_text("{}")
    path, why = find_reference_file("replies.json")
    assert path == tmp_path / "shared" / "replies.json" and "next to the repository" in why


# =============================================================================================================
# Editing
# =============================================================================================================
def test_edit_box_moves_resizes_and_renames_one_box(layout):
    edited = edit_box(layout, 0, x=10, y=120, w=230, h=330, caption=" a big white cat ")
    assert edited.boxes[0].to_xywh() == [10, 120, 230, 330] and edited.phrases[0] == "a big white cat"
    assert edited.boxes[1:] == layout.boxes[1:]
    assert (edited.background, edited.negative, edited.prompt) == (layout.background, layout.negative, layout.prompt)
    assert layout.boxes[0].to_xywh() == [32, 160, 148, 240] and layout.phrases[0] == "a gray cat"  # unchanged
    assert edit_box(layout, -1, 0, 0, 100, 100).boxes[2].to_xywh() == [0, 0, 100, 100]
    assert edit_box(layout, 1, 254, 36, 216, 184).phrases[1] == "a brown dog"  # no caption: kept


def test_edit_box_clips_to_the_canvas_and_rejects_bad_edits(layout):
    clipped = edit_box(layout, 0, x=450, y=-20, w=200, h=100)
    assert clipped.boxes[0].to_xywh() == [450, 0, 62, 80] and clipped.boxes[0].x1 == 1.0
    with pytest.raises(IndexError, match="3 box"):
        edit_box(layout, 3, 0, 0, 10, 10)
    with pytest.raises(ValueError, match="no area"):
        edit_box(layout, 0, 520, 0, 50, 50)
    with pytest.raises(ValueError, match="no area"):
        edit_box(layout, 0, 0, 0, 0, 50)
    with pytest.raises(ValueError, match="caption"):
        edit_box(layout, 0, 0, 0, 10, 10, caption="  ")


def test_edited_layout_is_scored_on_its_own_boxes(layout):
    assert scoring_objects(layout)[0][1] == [32.0, 160.0, 148.0, 240.0]  # the raw reply
    edited = edit_box(edit_box(layout, 0, 300, 300, 100, 100), 2, 0, 0, 50, 50)
    assert "reply" not in edited.meta and "objects" not in edited.meta and edited.meta["edited_boxes"] == [0, 2]
    assert scoring_objects(edited)[0] == ("a gray cat", [300.0, 300.0, 100.0, 100.0])


# =============================================================================================================
# The layout editor widget
# =============================================================================================================
def test_layout_editor_edits_through_edit_box(layout):
    pytest.importorskip("ipywidgets")
    editor = layout_editor(layout, index=1)
    assert {k: s.value for k, s in editor.sliders.items()} == dict(zip("xywh", [254, 36, 216, 184]))
    png_before = editor.picture.value
    editor.sliders["x"].value = 100
    assert editor.layout.boxes[1].to_xywh() == [100, 36, 216, 184] and editor.picture.value != png_before
    editor.caption.value = "a white dog"
    assert editor.layout.phrases == ["a gray cat", "a white dog", "a brown dog"]
    assert editor.chooser.value == 1 and editor.chooser.label == "1: a white dog"  # the choice survives renaming
    editor.sliders["w"].value = 500  # past the edge: clipped, and the slider shows the kept width
    assert editor.layout.boxes[1].to_xywh() == [100, 36, 412, 184] and editor.sliders["w"].value == 412
    editor.chooser.value = 0
    assert {k: s.value for k, s in editor.sliders.items()} == dict(zip("xywh", [32, 160, 148, 240]))
    assert editor.caption.value == "a gray cat" and editor.layout.boxes[1].to_xywh() == [100, 36, 412, 184]
    assert layout.phrases[1] == "a brown dog"  # the layout given is never changed
    assert "application/vnd.jupyter.widget-view+json" in editor._repr_mimebundle_()
    with pytest.raises(IndexError):
        layout_editor(layout, index=3)


# =============================================================================================================
# ScriptedLayoutSource
# =============================================================================================================
R1 = "Objects: [('a dog', [200, 250, 120, 100])]\nBackground prompt: A park\nNegative prompt:"
R2 = ("```\nObjects: [('a dog', [180, 220, 200, 160]), ('a cat', [40, 260, 110, 100])]\n"
      "Background prompt: A park\nNegative prompt: None\n```")


def test_scripted_source_hands_out_replies_in_order_through_the_real_parser():
    source = ScriptedLayoutSource([R1, R2], name="script")
    first = source.get_layout(" a dog in a park ")
    assert first.phrases == ["a dog"] and first.prompt == "a dog in a park" and first.meta["source"] == "script"
    assert source.remaining == 1
    second = source.get_layout("anything")  # the k-th call gets the k-th reply, whatever the prompt
    assert second.phrases == ["a dog", "a cat"] and second.negative == "" and second.meta["sample"] == 1
    assert source.requests[0] == load_template().messages("a dog in a park")
    with pytest.raises(MissingReplyError, match="all 2 scripted replies are used up"):
        source.get_layout("one more")


def test_scripted_source_errors():
    source = ScriptedLayoutSource(["I'm sorry, I cannot do that.", R1])
    with pytest.raises(LayoutParseError, match="I'm sorry"):
        source.get_layout("a dog")
    assert source.get_layout("a dog").phrases == ["a dog"]  # the bad reply was used up, as an LLM answer is
    with pytest.raises(TypeError):
        ScriptedLayoutSource(R1)
    with pytest.raises(ValueError, match="end with a user turn"):
        source.continue_dialog([{"role": "assistant", "content": R1}])


def test_scripted_source_runs_a_dialog_session():
    r3 = R2.replace("A park", "A snowy park")
    source = ScriptedLayoutSource([R1, R2, r3])
    session = LayoutSession(source, seed=5)
    for turn in ("a dog in a park", "make the dog bigger and add a cat on its left", "make it snow"):
        session.ask(turn)
    l0, l1, l2 = session.layouts
    assert l1.boxes[0].area > l0.boxes[0].area and l2.background == "A snowy park"
    assert all(layout.prompt == "a dog in a park" for layout in session.layouts)
    base = len(load_template().messages())
    assert [len(r) - base for r in source.requests] == [1, 3, 5]
    assert source.requests[2][base:] == session.history[:-1]
    assert source.requests[1][-1]["content"] == "Follow-up instruction: make the dog bigger and add a cat on its left"


def test_scripted_source_is_a_layout_source_for_the_benchmark():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        result = evaluate_stage1(ScriptedLayoutSource(["Objects: []"] * 3),
                                 prompts=["A realistic photo of a scene without cats",
                                          "A realistic photo of a scene with two cups",
                                          "A realistic photo of a scene with a red car and a blue cup"],
                                 progress=False)
    assert result.counts() == {"negation": (1, 1), "numeracy": (0, 1), "attribution": (0, 1)}


# -- progress bars: widgets only for a person watching a notebook ----------------------------------------------
@pytest.fixture
def progress_env(monkeypatch):
    """No $LMD_PROGRESS, no Jupyter server, no VS Code, no Colab; returns the monkeypatch."""
    for name in ("LMD_PROGRESS", "JPY_SESSION_NAME", "VSCODE_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return monkeypatch


def test_progress_style_widgets_live_off_in_a_kernel_nobody_watches_text_elsewhere(progress_env):
    from lmd_utils import progress

    assert not progress.in_kernel() and progress.progress_style() == "text"  # pytest: a terminal
    progress_env.setattr(progress, "in_kernel", lambda: True)
    assert progress.progress_style() == "off"  # a kernel of nbconvert or nbval: nobody watches, nothing saved
    progress_env.setenv("JPY_SESSION_NAME", "/home/me/01_cross_attention.ipynb")  # set by a Jupyter server
    assert progress.live_front_end() and progress.progress_style() == "widgets"
    progress_env.setenv("LMD_PROGRESS", "text")  # the variable wins
    assert progress.progress_style() == "text"
    progress_env.setenv("LMD_PROGRESS", "bars")
    with pytest.raises(ValueError, match="LMD_PROGRESS"):
        progress.progress_style()


def test_progress_bar_is_text_or_hidden_outside_a_live_front_end(progress_env):
    import tqdm.std

    from lmd_utils import benchmark, progress, sampling

    bar = progress.progress_bar(range(3), desc="x", disable=True)
    assert type(bar) is tqdm.std.tqdm and list(bar) == [0, 1, 2]
    progress_env.setenv("LMD_PROGRESS", "off")
    hidden = progress.progress_bar(range(2))
    assert hidden.disable and list(hidden) == [0, 1]
    assert sampling.progress_bar is progress.progress_bar and benchmark.progress_bar is progress.progress_bar


def test_library_bars_are_turned_off_only_in_a_kernel_without_widgets(progress_env):
    from diffusers.utils import logging as diffusers_logging

    from lmd_utils import progress

    assert diffusers_logging.is_progress_bar_enabled()
    assert not progress.quiet_library_bars("widgets") and not progress.quiet_library_bars("text")  # a terminal
    assert diffusers_logging.is_progress_bar_enabled()
    try:
        assert progress.quiet_library_bars("off")
        assert not diffusers_logging.is_progress_bar_enabled()
    finally:
        diffusers_logging.enable_progress_bar()
        from huggingface_hub.utils import enable_progress_bars
        from transformers.utils import logging as transformers_logging

        transformers_logging.enable_progress_bar()
        enable_progress_bars()


def test_lmd_utils_draws_its_bars_through_progress_bar():
    """No module picks tqdm.auto itself (it would draw frozen widgets in saved notebooks)."""
    from pathlib import Path

    package = Path(notebook.__file__).parent
    others: set[str] = set()
    direct = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")
                    if "tqdm.auto" in p.read_text(encoding="utf-8") and p.name != "progress.py")
    assert set(direct) <= others, f"use lmd_utils.progress.progress_bar in {sorted(set(direct) - others)}"
