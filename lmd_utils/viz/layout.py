"""Pictures of layouts (stage 1; notebooks 01-07, the layout editor and the CLI): several layouts side by side,
and one layout saved as a PNG.  One layout on one axes is :meth:`lmd_utils.layout.Layout.draw`."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from ..layout import Layout


def draw_layouts(
    layouts: Sequence[Layout],
    titles: Sequence[str] | None = None,
    images: Sequence[Any] | None = None,
    ncols: int | None = None,
    size: float = 3.0,
    title_width: int = 34,
    show_prompts: bool = True,
) -> Figure:
    """Several layouts side by side (``ncols`` per row, at most 4 by default), each with :meth:`Layout.draw`.

    ``titles`` (wrapped to ``title_width`` characters) default to :meth:`Layout.draw`'s own (background and
    negative prompt); with ``titles`` and ``show_prompts``, the background and negative prompts are written
    under each canvas, so the picture shows the whole layout (an empty one is left out, and nothing is written
    when both are empty).  ``images`` (optional, one per layout, ``None`` allowed) are drawn under the boxes.
    Captions are written inside the canvas (:meth:`Layout.draw`) and kept out of the grid's layout.  Returns a
    figure that is not registered with pyplot: a cell that ends with it shows it once (see
    :func:`~lmd_utils.notebook.enable_inline_figures`), and nothing leaks between cells.
    """
    layouts = list(layouts)
    if not layouts:
        raise ValueError("no layouts to draw")
    for name, seq in (("titles", titles), ("images", images)):
        if seq is not None and len(seq) != len(layouts):
            raise ValueError(f"{len(seq)} {name} for {len(layouts)} layouts")
    ncols = max(1, min(ncols or 4, len(layouts)))
    nrows = -(-len(layouts) // ncols)
    fig = Figure(figsize=(size * ncols, (size + 0.35) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (ax, layout) in enumerate(zip(axes, layouts)):
        title = titles[i] if titles is not None else None
        if title is not None:
            title = "\n".join(textwrap.wrap(title, title_width)) or " "
        layout.draw(ax=ax, image=images[i] if images is not None else None, title=title)
        for text in ax.texts:  # box captions: inside the canvas, and left out of the grid's layout
            text.set_clip_on(True)
            text.set_in_layout(False)
        if title is not None and show_prompts:
            notes = [f"{name}: {text}" for name, text in (("background", layout.background),
                                                           ("negative", layout.negative)) if text.strip()]
            if notes:
                ax.set_xlabel("\n".join(line for note in notes for line in textwrap.wrap(note, title_width + 6)),
                              fontsize=8, color="0.3")
    for ax in axes[len(layouts):]:
        ax.set_visible(False)
    return fig


def save_layout_png(layout: Layout, out: str | Path, title: str | None = None) -> Path:
    """Draw ``layout`` (boxes on a blank 512×512 canvas) to a PNG without touching pyplot's global state.

    ``title`` defaults to :meth:`~lmd_utils.layout.Layout.draw`'s own (background and negative prompt).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    layout.draw(ax=ax, title=title)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out
