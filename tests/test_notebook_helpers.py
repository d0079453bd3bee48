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
    edit_box,
    find_reference_file,
    layout_editor,
    seed_everything,
    setup,
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
    env = setup(model_id="tiny-sd", steps=4, seed=7, uses_llm=True)
    out = capsys.readouterr().out
    assert (env.device, env.dtype, env.seed, env.model_id, env.steps, env.llm) == (
        torch.device("cpu"), torch.float32, 7, "tiny-sd", 4, None)
    assert not env.colab
    assert "device:          cpu (no CUDA or Apple MPS found" in out
    assert "diffusion model: tiny-sd" in out and "steps, seed:     4, 7" in out
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
