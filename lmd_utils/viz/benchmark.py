"""Pictures of benchmark results (notebook 06): accuracy per task, one bar per result."""

from __future__ import annotations

from typing import Any, Mapping

from matplotlib.figure import Figure


def plot_benchmark(results: Mapping[str, Any], title: str = "LMD benchmark", note: str | None = None) -> Figure:
    """Accuracy per task, one bar group per task and one bar per result (``{label: BenchmarkResult}``).

    ``note`` (optional) is written in the figure, under the bars: e.g. that a reference result is missing and why,
    so that a chart with one source on its own says so."""
    if not results:
        raise ValueError("no results to plot")
    tasks = list(dict.fromkeys(t for r in results.values() for t in r.counts()))
    fig = Figure(figsize=(1.6 * len(tasks) + 2.5, 3.2 + (0.5 if note else 0.0)), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(results)
    for j, (label, result) in enumerate(results.items()):
        counts = result.counts()
        values = [100.0 * counts[t][0] / counts[t][1] if t in counts else 0.0 for t in tasks]
        bars = ax.bar([i + (j - (len(results) - 1) / 2) * width for i in range(len(tasks))], values, width,
                      label=f"{label}: {result.successes}/{result.total}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 112)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(results), frameon=False)
    if note:
        import textwrap

        fig.supxlabel("\n".join(textwrap.wrap(note, 100)), fontsize=8, color="firebrick")
    return fig
