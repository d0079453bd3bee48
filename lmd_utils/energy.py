"""Energies on cross-attention maps that pull each object's attention into its box (paper §3.2).

LMD guides both the per-box and the composed generation with a BoxDiff-style energy (paper Eq. for
``E(A, b)``, following Xie et al., BoxDiff, ICCV 2023)::

    E(A, b) = w_in · (1 − TopK(A · b)) + w_out · TopK(A · (1 − b))

where ``A`` is a token's cross-attention map, ``b`` the box mask and ``TopK`` the mean of the largest ``k``
values, ``k`` = 20 % of the cells inside (resp. outside) the box; ``w_in = 1``, ``w_out = 4`` (the authors'
``fg_weight``/``bg_weight`` for LMD).  The paper writes ``−TopK(A·b)``; the authors' code uses ``1 − TopK``,
which has the same gradient and makes the stopping threshold (:class:`~lmd_utils.config.GuidanceConfig`)
meaningful, so we keep it.

The composed ("overall") pass adds LMD's attention-transfer term (paper §3.2, "attention transfer"):
``λ · Σ |Â_comp − Â_i|`` between the composed pass's map and the per-box pass's map of the same box, each
normalised to sum 1 inside the box (λ = 2 in the authors' code, with their head handling; see
:class:`~lmd_utils.config.GuidanceConfig`).

Normalisation: the authors' LMD energy uses the raw softmax probabilities (each pixel's distribution over the
77 tokens); BoxDiff's own code renormalises over the tokens without ⟨sot⟩ and smooths the maps.  We follow LMD:
no normalisation before the top-k.

All functions broadcast over leading dimensions (boxes, heads, tokens, images): ``maps (..., H, W)`` with
``masks`` broadcastable to it give energies of shape ``(...)``, differentiable in ``maps``.
"""

from __future__ import annotations

import torch

#: The authors' defaults (``fg_top_p = bg_top_p``, ``fg_weight``, ``bg_weight``); :class:`~lmd_utils.config.GuidanceConfig`
#: uses them.
TOP_FRACTION = 0.2
INSIDE_WEIGHT = 1.0
OUTSIDE_WEIGHT = 4.0


def topk_mean(values: torch.Tensor, mask: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Mean of the ``k = max(1, ⌊fraction · |mask|⌋)`` largest values of ``values`` inside ``mask``.

    ``values (..., H, W) ≥ 0`` and a binary ``mask`` broadcastable to it; returns ``(...)``.  Each map may
    have its own ``k`` (boxes of different sizes in one batch): we sort once and read the cumulative sum at
    ``k``, which is differentiable like ``torch.topk``.  ``⌊·⌋`` and the ``max(1, ·)`` follow the authors'
    ``(mask.sum() * top_p).long().clamp_(min=1)``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values, mask = torch.broadcast_tensors(values, mask.to(values.dtype))
    flat = (values * mask).flatten(-2)
    k = (mask.flatten(-2).sum(-1) * fraction).long().clamp(min=1)
    ranked = flat.sort(dim=-1, descending=True).values.cumsum(-1)
    return ranked.gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1) / k.to(values.dtype)


def box_energy(maps: torch.Tensor, masks: torch.Tensor, top_fraction: float = TOP_FRACTION,
               inside_weight: float = INSIDE_WEIGHT, outside_weight: float = OUTSIDE_WEIGHT) -> torch.Tensor:
    """``w_in · (1 − TopK(A·b)) + w_out · TopK(A·(1−b))`` per map: ``(..., H, W) → (...)``.

    Low when the map's strongest cells are inside the box and the cells outside are quiet.  Vectorised: e.g.
    maps ``(n, H, W)`` with masks ``(n, H, W)`` give ``(n,)``, maps ``(n, heads, H, W)`` with masks
    ``(n, 1, H, W)`` give ``(n, heads)``.
    """
    masks = masks.to(maps.dtype)
    inside = topk_mean(maps, masks, top_fraction)
    outside = topk_mean(maps, 1 - masks, top_fraction)
    return inside_weight * (1 - inside) + outside_weight * outside


def normalize_in_box(maps: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``A·b / (Σ A·b + eps)``: the map restricted to the box, summing to 1 there (``eps`` avoids 0/0)."""
    inside = maps * masks.to(maps.dtype)
    return inside / (inside.sum(dim=(-2, -1), keepdim=True) + eps)


def attention_transfer_energy(maps: torch.Tensor, reference: torch.Tensor, masks: torch.Tensor,
                              eps: float = 1e-5) -> torch.Tensor:
    """``Σ_cells |norm_b(A) − norm_b(A_ref)|`` (L1 between in-box-normalised maps): ``(..., H, W) → (...)``.

    ``maps`` is the composed pass's map of a box's word token, ``reference`` the per-box pass's map of the
    same token at the same step (already shifted to the box's place in the composed image), ``masks`` the
    box.  Ranges over [0, 2]; the gradient flows into ``maps`` only.  Unweighted: multiply by λ.
    """
    diff = normalize_in_box(maps, masks, eps) - normalize_in_box(reference.detach().to(maps.dtype), masks, eps)
    return diff.abs().sum(dim=(-2, -1))


def energy_terms(maps: torch.Tensor, masks: torch.Tensor, **box_energy_kwargs) -> dict[str, torch.Tensor]:
    """The two parts of :func:`box_energy` for plots: ``inside`` = TopK in the box, ``outside`` = TopK outside."""
    k = box_energy_kwargs.get("top_fraction", TOP_FRACTION)
    return {"inside": topk_mean(maps, masks, k), "outside": topk_mean(maps, 1 - masks.to(maps.dtype), k)}


# -- BoxDiff's own constraints (Xie et al. 2023; the paper's baseline) ----------------------------------------
#: BoxDiff's settings as in its code and the authors' re-implementation (``utils/boxdiff.py``): top-k fraction
#: ``P``, corner band half-width ``L`` (cells), Gaussian smoothing of each token map, and the ×100 token softmax.
BOXDIFF_TOP_FRACTION = 0.2
BOXDIFF_CORNER_WIDTH = 1
BOXDIFF_SMOOTHING = (3, 0.5)  # kernel size, sigma
BOXDIFF_TEMPERATURE = 100.0


def boxdiff_token_maps(probs: torch.Tensor, temperature: float = BOXDIFF_TEMPERATURE) -> torch.Tensor:
    """BoxDiff's token maps from cross-attention probabilities ``(..., H, W, T)``: drop ⟨sot⟩ and the last token,
    multiply by ``temperature`` and softmax over the remaining tokens (Attend-and-Excite's renormalisation), so that
    each cell's values say which WORD it belongs to.  Returns ``(..., H, W, T − 2)``: token ``k`` is at ``k − 1``."""
    return torch.softmax(probs[..., 1:-1] * temperature, dim=-1)


def gaussian_smooth(maps: torch.Tensor, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Each map ``(..., H, W)`` smoothed by BoxDiff's Gaussian kernel with reflected borders.  The kernel is theirs
    literally, ``exp(−((x − μ) / (2σ))²)`` per axis (not the textbook ``2σ²``), normalised to sum 1."""
    x = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
    g = torch.exp(-(x / (2 * sigma)) ** 2)
    kernel = (g[:, None] * g[None, :])
    kernel = (kernel / kernel.sum()).to(maps.device, maps.dtype)[None, None]
    pad = kernel_size // 2
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (pad,) * 4, mode="reflect"), kernel)
    return out.reshape(maps.shape)


def boxdiff_energy(maps: torch.Tensor, mask: torch.Tensor, corner_x: torch.Tensor, corner_y: torch.Tensor,
                   top_fraction: float = BOXDIFF_TOP_FRACTION) -> torch.Tensor:
    """BoxDiff's three constraints on token maps ``(..., H, W)`` (from :func:`boxdiff_token_maps`, smoothed):

    * inner box: ``max(0, 1 − TopK(A·b))``; outer box: ``TopK(A·(1−b))`` (both with ``k = P·|region|``);
    * corners: the L1 distance between the map's column maxima (row maxima) and the box's projection on the x (y)
      axis, averaged over the axis but counted only in a band of ``±L`` cells around the box's edges
      (``corner_x (W,)``, ``corner_y (H,)``: 1 in the bands).

    Returns the sum of the four terms per map, ``(...)``.  Unlike LMD's energy (:func:`box_energy`) there is no
    weight on the outside term and the terms are summed (not averaged) over tokens by the caller, as BoxDiff does.
    """
    mask = mask.to(maps.dtype)
    inner = torch.relu(1 - topk_mean(maps, mask, top_fraction))
    outer = topk_mean(maps, 1 - mask, top_fraction)
    dist_x = ((maps.amax(-2) - mask.amax(-2)).abs() * corner_x.to(maps.dtype)).mean(-1)
    dist_y = ((maps.amax(-1) - mask.amax(-1)).abs() * corner_y.to(maps.dtype)).mean(-1)
    return inner + outer + dist_x + dist_y


def corner_bands(spans: list[tuple[int, int]], n: int, width: int = BOXDIFF_CORNER_WIDTH) -> torch.Tensor:
    """``(n,)``: 1 within ``width`` cells of either edge of each ``(start, stop)`` span on an axis of ``n`` cells
    (BoxDiff's ``corner_mask_x``/``corner_mask_y``)."""
    band = torch.zeros(n)
    for lo, hi in spans:
        for edge in (lo, hi):
            band[max(edge - width, 0):min(edge + width + 1, n)] = 1
    return band


# -- looking at the energy (notebook 02) ------------------------------------------------------------------
def gaussian_map(height: int, width: int, center: tuple[float, float], sigma: float = 0.12,
                 peak: float = 0.8) -> torch.Tensor:
    """A hand-made attention map ``(height, width)``: a Gaussian bump of height ``peak`` at the normalised
    ``center = (x, y)`` (top-left origin, like :class:`~lmd_utils.layout.Box`), ``sigma`` in image widths.

    Values lie in ``[0, peak]`` like one token's softmax probabilities; for experiments with the energy
    without running a model.
    """
    if not 0 < peak <= 1 or sigma <= 0:
        raise ValueError(f"need 0 < peak <= 1 and sigma > 0, got peak={peak}, sigma={sigma}")
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    d2 = (xs[None, :] - center[0]) ** 2 + (ys[:, None] - center[1]) ** 2
    return peak * torch.exp(-d2 / (2 * sigma ** 2))


def energy_and_gradient(maps: torch.Tensor, masks: torch.Tensor, **box_energy_kwargs
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, ∂E/∂A)`` of :func:`box_energy` for maps ``(..., H, W)``: the energies summed over leading dims
    (each map's gradient is its own, as maps do not interact) and the gradient image, same shape as ``maps``.

    The gradient is what guidance pushes back through the UNet (paper §3.2): it is non-zero only on the top-k
    cells inside the box (negative: "more attention here") and the top-k cells outside (positive, ``w`` times
    larger per cell: "less here").
    """
    leaf = maps.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        energy = box_energy(leaf, masks, **box_energy_kwargs).sum()
        (grad,) = torch.autograd.grad(energy, leaf)
    return energy.detach(), grad
