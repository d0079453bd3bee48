"""energy.py: top-k means, the BoxDiff-style box energy and LMD's attention-transfer energy, with numbers."""

import pytest
import torch

from lmd_utils.energy import (attention_transfer_energy, box_energy, energy_and_gradient, energy_terms, gaussian_map,
                               normalize_in_box, topk_mean)
from lmd_utils.layout import Box


def _authors_topk(ca_map, mask, top_p):
    """The authors' formulation for one map: topk of (A·mask) over the flattened grid, k = ⌊|mask|·p⌋ ≥ 1."""
    k = int((mask.sum() * top_p).long().clamp(min=1))
    return (ca_map * mask).flatten().topk(k).values.mean()


def test_topk_mean_numbers():
    values = torch.arange(16.0).view(4, 4)
    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1  # cells 0, 1, 4, 5 → k = max(1, ⌊0.8⌋) = 1
    assert topk_mean(values, mask).item() == 5.0
    mask[:, :] = 1  # 16 cells → k = ⌊3.2⌋ = 3 → mean(15, 14, 13)
    assert topk_mean(values, mask).item() == 14.0
    assert topk_mean(values, mask, fraction=1.0).item() == 7.5
    with pytest.raises(ValueError):
        topk_mean(values, mask, fraction=0)


def test_topk_mean_matches_the_authors_per_box_loop():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 3, 16, 16, generator=g)  # (boxes, heads, H, W)
    boxes = [Box("x", 0, 0, 0.5, 0.5), Box("x", 0.1, 0.2, 0.9, 0.4), Box("x", 0.5, 0.5, 0.6, 0.6),
             Box("x", 0, 0, 1, 1), Box("x", 0.3, 0.0, 0.7, 1.0)]
    masks = torch.stack([b.mask(16, 16) for b in boxes])
    got = topk_mean(maps, masks[:, None])
    ref = torch.stack([torch.stack([_authors_topk(maps[i, h], masks[i], 0.2) for h in range(3)]) for i in range(5)])
    torch.testing.assert_close(got, ref)
    out = topk_mean(maps, 1 - masks[:, None])
    ref_out = torch.stack([torch.stack([_authors_topk(maps[i, h], 1 - masks[i], 0.2) for h in range(3)])
                           for i in range(5)])
    torch.testing.assert_close(out, ref_out)  # a full-canvas box: k = 1 of all zeros → 0
    assert out[3].abs().max() == 0


def test_box_energy_numbers_and_vectorisation():
    mask = Box("x", 0, 0, 0.5, 0.5).mask(8, 8)  # 16 cells inside, 48 outside
    inside_only = mask * 0.5  # every in-box cell 0.5, nothing outside
    assert box_energy(inside_only, mask).item() == pytest.approx(1 - 0.5)
    outside_only = (1 - mask) * 0.25
    assert box_energy(outside_only, mask).item() == pytest.approx(1 + 4 * 0.25)
    terms = energy_terms(outside_only, mask)
    assert terms["inside"].item() == 0 and terms["outside"].item() == pytest.approx(0.25)
    assert box_energy(outside_only, mask, inside_weight=2, outside_weight=1).item() == pytest.approx(2 + 0.25)
    # (n, H, W) maps and masks → (n,), equal to one call per box
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    masks = torch.stack([mask, mask.flip(0), Box("x", 0.25, 0.25, 0.75, 0.75).mask(8, 8)])
    vec = box_energy(maps, masks)
    assert vec.shape == (3,)
    torch.testing.assert_close(vec, torch.stack([box_energy(maps[i], masks[i]) for i in range(3)]))
    # leading dims broadcast: images × boxes × heads
    assert box_energy(maps[None, :, None].expand(2, 3, 4, 8, 8), masks[:, None]).shape == (2, 3, 4)


def test_gradient_step_moves_attention_mass_into_the_box():
    """A hand-made differentiable map A = softmax(logits) over the grid: descending E fills the box."""
    mask = Box("x", 0.5, 0.5, 1.0, 1.0).mask(8, 8)
    logits = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    history = []
    for _ in range(30):
        attn = logits.flatten().softmax(0).view(8, 8)
        energy = box_energy(attn, mask)
        history.append((energy.item(), (attn * mask).sum().item()))
        (grad,) = torch.autograd.grad(energy, logits)
        with torch.no_grad():
            logits -= 20.0 * grad
    (e0, mass0), (e1, mass1) = history[0], history[-1]
    assert e1 < e0 - 0.05
    assert mass0 < 0.4 and mass1 > 0.9  # the box holds a quarter of the grid; guidance fills it
    assert all(b[0] <= a[0] + 1e-6 for a, b in zip(history, history[1:]))  # monotone for this small step


def test_normalize_in_box_and_attention_transfer():
    mask = Box("x", 0, 0, 0.5, 1.0).mask(4, 4)  # left half
    a = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    n = normalize_in_box(a, mask)
    torch.testing.assert_close(n.sum(dim=(-2, -1)), torch.ones(2), atol=1e-4, rtol=0)
    assert (n * (1 - mask)).abs().max() == 0
    # same map (or a scaled one, or one differing only outside the box) → 0
    assert attention_transfer_energy(a[0], a[0], mask).item() == pytest.approx(0, abs=1e-6)
    assert attention_transfer_energy(a[0], 3 * a[0], mask).item() == pytest.approx(0, abs=1e-4)
    assert attention_transfer_energy(a[0], a[0] + 5 * (1 - mask), mask).item() == pytest.approx(0, abs=1e-6)
    # disjoint supports inside the box → 2 (the maximum)
    left_col, second_col = torch.zeros(4, 4), torch.zeros(4, 4)
    left_col[:, 0], second_col[:, 1] = 1, 1
    assert attention_transfer_energy(left_col, second_col, mask).item() == pytest.approx(2, abs=1e-4)
    # vectorised over boxes and heads; gradient reaches the maps, never the reference
    maps = a[:, None].expand(2, 3, 4, 4).clone().requires_grad_(True)
    ref = torch.rand(2, 3, 4, 4).requires_grad_(True)
    e = attention_transfer_energy(maps, ref, mask)
    assert e.shape == (2, 3)
    e.sum().backward()
    assert maps.grad.abs().sum() > 0 and ref.grad is None


def test_gaussian_map_peak_and_place():
    m = gaussian_map(16, 8, center=(0.25, 0.75), sigma=0.1, peak=0.6)
    assert m.shape == (16, 8) and m.max().item() <= 0.6 and m.min().item() >= 0
    row, col = divmod(int(m.argmax()), 8)
    assert (row, col) in {(11, 1), (12, 1), (11, 2), (12, 2)}  # cells around (x 0.25, y 0.75)
    assert torch.equal(m, gaussian_map(16, 8, center=(0.25, 0.75), sigma=0.1, peak=0.6))
    for bad in (dict(peak=0.0), dict(peak=1.5), dict(sigma=0.0)):
        with pytest.raises(ValueError):
            gaussian_map(4, 4, center=(0.5, 0.5), **bad)


def test_energy_gradient_is_minus_one_over_k_inside_and_w_over_k_outside():
    b = Box("target", 0.1, 0.1, 0.5, 0.5).mask(16, 16)  # 6×6 = 36 cells → k_in = 7; 220 outside → k_out = 44
    away = gaussian_map(16, 16, center=(0.72, 0.68))
    energy, grad = energy_and_gradient(away, b)
    assert energy.item() == pytest.approx(box_energy(away, b).item())
    assert not away.requires_grad and grad.shape == away.shape
    assert int((grad != 0).sum()) == 7 + 44
    assert grad[b.bool()].unique().tolist() == pytest.approx([-1 / 7, 0.0])
    assert grad[~b.bool()].unique().tolist() == pytest.approx([0.0, 4 / 44])
    # other weights and fractions scale the same way
    _, g = energy_and_gradient(away, b, outside_weight=1.0, top_fraction=1.0)
    torch.testing.assert_close(g, torch.where(b.bool(), -1 / 36, 1 / 220))
    # batched maps: the summed energy, each map's own gradient
    maps = torch.stack([away, gaussian_map(16, 16, center=(0.3, 0.3))])
    total, grads = energy_and_gradient(maps, b)
    assert total.item() == pytest.approx(box_energy(maps, b).sum().item())
    torch.testing.assert_close(grads[0], grad)
