"""GLIGEN's grounding in one picture (notebook 08 §4): what the grounding tokens are and when they act.

Left: the layout as GLIGEN reads it, one grounding token per box (the caption's text feature plus the box's corners,
normalised). Right: scheduled sampling, the steps on which the gated layers are on (the first ``int(β·T)``).
"""

from __future__ import annotations

from matplotlib.figure import Figure

from ..config import GLIGEN_BETA
from ..layout import Layout


def grounding_figure(layout: Layout, num_steps: int, beta: float = GLIGEN_BETA, size: float = 3.2) -> Figure:
    """The layout's grounding tokens and the scheduled-sampling timeline of a ``num_steps`` run with ``beta``."""
    if num_steps < 1 or not 0.0 <= beta <= 1.0:
        raise ValueError(f"need num_steps >= 1 and 0 <= beta <= 1, got {num_steps}, {beta}")
    on = int(beta * num_steps)  # the authors' num_grounding_steps
    fig = Figure(figsize=(size * 2.6, size), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.6))
    layout.draw(ax=left, title=f"{len(layout.boxes)} grounding token{'s' * (len(layout.boxes) != 1)}")
    lines = [f"token {i + 1}: “{b.phrase}”  ({b.x0:.2f}, {b.y0:.2f}, {b.x1:.2f}, {b.y1:.2f})"
             for i, b in enumerate(layout.boxes)] or ["no boxes: no grounding tokens"]
    left.set_xlabel("\n".join(lines), fontsize=8, color="0.25")
    colours = ["tab:green" if s < on else "0.85" for s in range(num_steps)]
    right.bar(range(num_steps), [1] * num_steps, color=colours, width=0.85)
    right.set_yticks([])
    right.set_xlabel("denoising step (0 = pure noise)")
    right.set_title(f"gated layers on for the first {on} of {num_steps} steps (β = {beta:g}), then plain SD",
                    fontsize=10)
    right.set_xlim(-0.6, num_steps - 0.4)
    return fig


__all__ = ["grounding_figure"]
