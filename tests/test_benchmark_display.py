"""lmd_utils.viz.benchmark: stage-1 benchmark results as bars."""

from __future__ import annotations

import pytest

from lmd_utils.benchmark import evaluate_stage1
from lmd_utils.llm_layouts import ScriptedLayoutSource
from lmd_utils.viz.benchmark import plot_benchmark

pytestmark = pytest.mark.usefixtures("no_llm_env")


def test_plot_benchmark_bars_are_the_accuracies():
    prompts = ["A realistic photo of a scene without cats", "A realistic photo of a scene with two cups"]
    one_cup = ScriptedLayoutSource(["Objects: [('a cup', [10, 10, 50, 50])]"] * 2, name="one cup")
    results = {"planner": evaluate_stage1("planner", prompts=prompts, progress=False),
               "one cup": evaluate_stage1(one_cup, prompts=prompts, progress=False)}
    fig = plot_benchmark(results)
    ax = fig.axes[0]
    heights = [round(p.get_height()) for p in ax.patches]
    assert heights == [100, 100, 100, 0]  # planner: negation, numeracy; one cup: negation ok, numeracy wrong
    assert [t.get_text() for t in ax.get_xticklabels()] == ["negation", "numeracy"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["planner: 2/2", "one cup: 1/2"]
    with pytest.raises(ValueError):
        plot_benchmark({})


def test_plot_benchmark_says_in_the_figure_what_is_missing():
    results = {"planner": evaluate_stage1("planner", prompts=["A realistic photo of a scene without cats"],
                                          progress=False)}
    assert plot_benchmark(results)._supxlabel is None
    fig = plot_benchmark(results, note="the published replies were not found")
    assert fig._supxlabel.get_text() == "the published replies were not found"
