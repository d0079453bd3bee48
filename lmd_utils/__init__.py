"""lmd_utils: a small, tested implementation of LLM-grounded Diffusion (LMD), one module per notebook.

Data flows prompt → :class:`~lmd_utils.layout.Layout` (stage 1) → attention → energy → latents → masks →
composition → image (stage 2).
"""

from .layout import Box, Layout, LayoutWarning

__all__ = ["Box", "Layout", "LayoutWarning"]
__version__ = "0.1.0"
