"""Tests for lmd_utils.composition: alignment shifts, latent composition, the frozen-step rule, box-centre
distances."""

from __future__ import annotations

import pytest
import torch

from lmd_utils.composition import (
    Shift,
    align_to_box,
    alignment_shift,
    apply_frozen_step,
    box_centre_distances,
    center_of_mass,
    compose_latents,
    foreground_indices,
    frozen_step_count,
    paste_order,
    replace_foreground,
    shift_tensor,
)
from lmd_utils.layout import Box


def _rect(h, w, rows, cols):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows, cols] = True
    return m


# -- centre of mass and shifts ----------------------------------------------------------------------------
def test_center_of_mass_uses_cell_centres():
    m = _rect(10, 12, slice(2, 5), slice(5, 9))  # rows 2..4, cols 5..8
    assert center_of_mass(m) == pytest.approx((6.5 + 0.5, 3.0 + 0.5))  # mean index + half a cell
    with pytest.raises(ValueError):
        center_of_mass(torch.zeros(4, 4, dtype=torch.bool))


def test_shift_tensor_zero_fills_instead_of_wrapping():
    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 4, 4)
    right = shift_tensor(x, Shift(1, 0, (4, 4)))
    assert right[0, :, 0].tolist() == [0, 0, 0, 0]  # vacated column is zero, not the wrapped last column
    assert torch.equal(right[0, :, 1:], x[0, :, :3])
    up_left = shift_tensor(x, Shift(-2, -1, (4, 4)))
    assert torch.equal(up_left[0, :3, :2], x[0, 1:, 2:]) and up_left[0, 3].abs().sum() == 0
    assert shift_tensor(x, Shift(5, 0, (4, 4))).abs().sum() == 0  # moved out of frame entirely
    # a shift measured on a 64-grid moves a 16-grid map by a quarter as many cells
    assert Shift(8, -4, (64, 64)).on_grid(16, 16) == Shift(2, -1, (16, 16))


@pytest.mark.parametrize("seed", range(6))
def test_alignment_moves_centre_of_mass_onto_box_centre(seed):
    g = torch.Generator().manual_seed(seed)
    h = w = 64
    # a blob somewhere near the centred per-box location, a target box elsewhere
    r0, c0 = (int(v) for v in torch.randint(16, 30, (2,), generator=g))
    mask = (torch.rand(h, w, generator=g) < 0.7) & _rect(h, w, slice(r0, r0 + 14), slice(c0, c0 + 11))
    x0, y0 = (float(v) for v in torch.rand(2, generator=g) * 0.5)
    box = Box("obj", x0, y0, x0 + 0.3 + 0.1 * seed / 6, y0 + 0.35)
    aligned = align_to_box(torch.randn(3, 4, h, w, generator=g), mask, box)
    cx, cy = center_of_mass(aligned.mask)
    assert abs(cx - box.center[0] * w) <= 0.5 and abs(cy - box.center[1] * h) <= 0.5
    assert aligned.mask.sum() == mask.sum()  # nothing fell off the frame here


def test_alignment_quantum_and_horizontal_only():
    mask = _rect(64, 64, slice(30, 40), slice(26, 36))  # centre (31, 35)
    box = Box("o", 0.6, 0.1, 0.8, 0.3)  # centre (44.8, 12.8) cells
    s = alignment_shift(mask, box, quantum=8)  # authors' 1/8-frame rounding
    assert (s.dx, s.dy) == (16, -24)
    s = alignment_shift(mask, box, horizontal_only=True)
    assert (s.dx, s.dy) == (14, 0)


def test_align_to_box_moves_latents_mask_and_attention_together():
    h = w = 64
    mask = _rect(h, w, slice(24, 40), slice(24, 40))  # centre (32, 32)
    latents = torch.randn(5, 4, h, w)  # (T, C, h, w)
    attention = {"mid": torch.rand(5, 2, 8, 8), "up": torch.rand(5, 2, 16, 16)}
    box = Box("o", 0.0, 0.0, 0.25, 0.25)  # centre (8, 8) cells → shift (-24, -24)
    out = align_to_box(latents, mask, box, attention=attention)
    assert (out.shift.dx, out.shift.dy) == (-24, -24)
    assert torch.equal(out.latents[:, :, :16, :16], latents[:, :, 24:40, 24:40])
    assert torch.equal(out.mask, _rect(h, w, slice(0, 16), slice(0, 16)))
    assert torch.equal(out.attention["up"][..., :10, :10], attention["up"][..., 6:, 6:])  # 24/4 = 6 cells
    assert torch.equal(out.attention["mid"][..., :5, :5], attention["mid"][..., 3:, 3:])  # 24/8 = 3 cells
    single = align_to_box(latents[0], mask, box, attention=attention["up"])
    assert torch.equal(single.attention, out.attention["up"])


# -- composition ------------------------------------------------------------------------------------------
def _scene():
    h = w = 8
    big = _rect(h, w, slice(1, 7), slice(1, 7))  # 36 cells
    small = _rect(h, w, slice(3, 5), slice(5, 8))  # 6 cells, overlaps big in (3..4, 5..6)
    return h, w, big, small


def test_compose_writes_exactly_the_masks_and_keeps_small_on_top():
    h, w, big, small = _scene()
    background = torch.full((4, h, w), -1.0)
    for masks in (torch.stack([small, big]), torch.stack([big, small])):  # input order must not matter
        latents = torch.stack([torch.full((4, h, w), float(masks[i].sum())) for i in range(2)])
        composed, union = compose_latents(background, latents, masks)
        assert torch.equal(union, big | small)
        assert torch.equal(composed[:, ~union], background[:, ~union])  # nothing written outside
        assert (composed[:, small] == 6.0).all()  # the smaller object on top where they overlap
        assert (composed[:, big & ~small] == 36.0).all()
    idx = foreground_indices(torch.stack([big, small]))
    assert idx[0, 0] == 0 and idx[2, 2] == 1 and idx[3, 6] == 2
    assert paste_order(torch.stack([small, big, small])).tolist() == [1, 0, 2]


def test_compose_over_time_steps():
    h, w, big, small = _scene()
    n, T, C = 2, 3, 4
    per_box = torch.randn(n, T, C, h, w)
    masks = torch.stack([big, small])
    bg_steps = torch.randn(T, C, h, w)
    composed, union = compose_latents(bg_steps, per_box, masks)
    assert composed.shape == (T, C, h, w)
    for t in range(T):
        single, _ = compose_latents(bg_steps[t], per_box[:, t], masks)
        assert torch.equal(composed[t], single)
    # one background frame is repeated over the steps
    composed_one, _ = compose_latents(bg_steps[0], per_box, masks)
    assert torch.equal(composed_one[2][:, ~union], bg_steps[0][:, ~union])
    with pytest.raises(ValueError):
        compose_latents(bg_steps[:, :2], per_box, masks)
    with pytest.raises(ValueError):
        compose_latents(bg_steps, per_box, masks.float() * 0.5)  # soft masks are refused


# -- frozen steps -----------------------------------------------------------------------------------------
def test_replace_foreground_is_identity_outside_the_mask():
    h, w, big, small = _scene()
    union = big | small
    z = torch.randn(2, 4, h, w)  # a batch of overall latents
    composed_k = torch.randn(4, h, w)
    out = replace_foreground(z, composed_k, union)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert torch.equal(out[:, :, ~union], z[:, :, ~union])
    assert torch.equal(out[:, :, union], composed_k[:, union].expand(2, -1, -1))
    assert torch.equal(replace_foreground(z, composed_k, torch.zeros(h, w, dtype=torch.bool)), z)


def test_frozen_step_count_and_indexing():
    assert frozen_step_count(50) == 25 and frozen_step_count(25) == 12 and frozen_step_count(50, 2.0) == 50
    assert frozen_step_count(50, 0.0) == 0
    h, w, big, _ = _scene()
    T = 4
    composed = torch.arange(T + 1, dtype=torch.float32)[:, None, None, None].expand(T + 1, 1, h, w).clone()
    z = torch.full((1, h, w), -5.0)
    frozen = frozen_step_count(T, 0.5)  # 2
    assert (apply_frozen_step(z, 0, composed, big, frozen)[:, big] == 1.0).all()  # after step 0 → composed[1]
    assert (apply_frozen_step(z, 1, composed, big, frozen)[:, big] == 2.0).all()
    assert torch.equal(apply_frozen_step(z, 2, composed, big, frozen), z)  # no longer frozen


# -- measuring the composition: how far each object landed from its box ------------------------------------
RED = Box("a red circle", 0.1, 0.1, 0.4, 0.4)  # centre (0.25, 0.25)
BLUE = Box("a blue square", 0.6, 0.6, 0.8, 0.8)  # centre (0.7, 0.7)


def test_box_centre_distances_match_by_caption_once_each():
    found = [("a blue square", Box("a blue square", 0.6, 0.7, 0.8, 0.9)),  # 0.1 below its box
             ("a red circle", Box("a red circle", 0.4, 0.1, 0.7, 0.4))]  # 0.3 right of its box
    assert box_centre_distances([RED, BLUE], found) == pytest.approx([0.3, 0.1])
    # a wrongly coloured object does not count; a second red circle has nothing left to match
    assert box_centre_distances([RED, RED], [("a green circle", RED), ("a red circle", RED)]) == [0.0, 1.0]
    assert box_centre_distances([RED], [], missing_distance=0.7) == [0.7]
    # greedy in box order, nearest first: the first box takes the nearer object
    near, far = Box("a red circle", 0.1, 0.1, 0.4, 0.4), Box("a red circle", 0.1, 0.6, 0.4, 0.9)
    d = box_centre_distances([RED, RED], [("a red circle", far), ("a red circle", near)])
    assert d == pytest.approx([0.0, 0.5])
    with pytest.raises(ValueError):
        box_centre_distances([RED], [], missing_distance=-1)
    # a looser match: same colour word, any shape
    colour = lambda caption: caption.split()[1]  # noqa: E731
    found = [("a red square", Box("a red square", 0.1, 0.4, 0.4, 0.7))]  # 0.3 below the red circle's box
    assert box_centre_distances([RED], found) == [1.0]
    assert box_centre_distances([RED], found, key=colour) == pytest.approx([0.3])


# -- LMDConfig.alignment / compose_initial -------------------------------------------------------------------
def test_alignment_rule_centre_by_default_and_the_authors_index_centre_with_eighth_frame_shifts():
    from lmd_utils.composition import align_objects
    mask = _rect(64, 64, slice(30, 34), slice(27, 29))  # cell centres: x 28.0, y 32.0; indices: 27.5, 31.5
    box = Box("o", 0.4, 0.4, 0.6, 0.6)  # centre (32, 32) cells
    ours = alignment_shift(mask, box)
    assert (ours.dx, ours.dy) == (round(32 - 28.0), round(32 - 32.0)) == (4, 0)
    assert alignment_shift(mask, box, rule="centre") == ours
    # authors: (0.5 − 27.5/64)·8 = 0.5625 → 1 eighth of the frame = 8 cells; (0.5 − 31.5/64)·8 = 0.0625 → 0
    theirs = alignment_shift(mask, box, rule="authors")
    assert (theirs.dx, theirs.dy) == (8, 0)
    # our centre with the authors' quantum alone rounds (32 − 28)/8 = 0.5 to 0: the +0.5 is what differs
    assert alignment_shift(mask, box, quantum=8).dx == 0
    assert alignment_shift(mask, box, horizontal_only=True, rule="authors").dy == 0
    latents = torch.randn(2, 1, 3, 64, 64)  # (T, n, C, h, w)
    assert align_objects(latents, [mask], [box])[0].shift == ours
    assert align_objects(latents, [mask], [box], alignment="authors")[0].shift == theirs
    with pytest.raises(ValueError):
        alignment_shift(mask, box, rule="nearest")


def test_compose_initial_masks_by_default_and_the_authors_bounding_boxes_at_step_0():
    from lmd_utils.composition import AlignedObject, compose_trajectory, mask_bounding_box
    h, w, big, small = _scene()
    g = torch.Generator().manual_seed(0)
    objects = [AlignedObject(torch.randn(3, 2, h, w, generator=g), m, None, Shift(0, 0, (h, w))) for m in (big, small)]
    shared = torch.randn(1, 2, h, w, generator=g)
    composed, union = compose_trajectory(objects, shared)
    background = torch.zeros(3, 2, h, w)
    background[0] = shared[0]
    expected, _ = compose_latents(background, torch.stack([o.latents for o in objects]), torch.stack([big, small]))
    assert torch.equal(composed, expected) and torch.equal(union, big | small)
    assert torch.equal(compose_trajectory(objects, shared, initial="masks")[0], composed)
    # authors: step 0 first gets each mask's bounding box + 1 cell (largest first) from that object's step 0
    small_box = mask_bounding_box(small)
    assert small_box.sum() == 4 * 4 and small_box[2:6, 4:8].all()  # rows 3..4, cols 5..7, grown and clipped
    assert mask_bounding_box(big).all()  # rows/cols 1..6 grown by one: the whole 8×8 frame
    theirs, union2 = compose_trajectory(objects, shared, initial="authors")
    first = torch.where(mask_bounding_box(big), objects[0].latents[0], shared[0])
    first = torch.where(small_box, objects[1].latents[0], first)
    first = torch.where(big, objects[0].latents[0], first)
    first = torch.where(small, objects[1].latents[0], first)
    assert torch.equal(theirs[0], first) and not torch.equal(theirs[0], composed[0])
    assert torch.equal(theirs[1:], composed[1:]) and torch.equal(union2, union)


# -- the denoised estimate x̂₀ (the pictures of the frozen steps) ------------------------------------------
def _ddim_run(config: dict, steps: int):
    """A DDIM run with random model outputs: (latents x_T..x_0, the scheduler's own x̂₀ of each step, outputs)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(**config)
    ddim.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    latents, estimates, outputs = [x], [], []
    for t in ddim.timesteps:
        out = torch.randn(x.shape, generator=g, dtype=torch.float64)
        step = ddim.step(out, t, x)
        x = step.prev_sample
        latents.append(x), estimates.append(step.pred_original_sample), outputs.append(out)
    return ddim, torch.stack(latents), torch.stack(estimates), outputs


@pytest.mark.parametrize("config", [
    dict(prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1, clip_sample=False),  # toy
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
         steps_offset=1, clip_sample=False),  # Stable Diffusion 1.5's (epsilon)
])
def test_two_kept_latents_give_the_step_s_denoised_estimate(config):
    from lmd_utils.composition import ddim_alphas, denoised_trajectory, implied_x0, predicted_x0

    steps = 12
    ddim, latents, estimates, outputs = _ddim_run(config, steps)
    alphas = ddim_alphas(ddim, steps)
    assert alphas[0].shape == alphas[1].shape == (steps,) and (alphas[1] > alphas[0]).all()
    kind = ddim.config.prediction_type
    for k in range(steps):  # from the model's output, and from the two latents around the step: the same x̂₀
        torch.testing.assert_close(predicted_x0(latents[k], outputs[k], alphas[0][k], kind), estimates[k],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(implied_x0(latents[k], latents[k + 1], alphas[0][k], alphas[1][k]),
                                   estimates[k], atol=1e-3, rtol=1e-3)  # the scheduler's alphas are float32
    trajectory = denoised_trajectory(latents, alphas)
    assert trajectory.shape == latents.shape and torch.equal(trajectory[-1], latents[-1])  # the end is itself
    with pytest.raises(ValueError, match="alphas"):
        denoised_trajectory(latents[:-1], alphas)
    with pytest.raises(ValueError, match="prediction_type"):
        predicted_x0(latents[0], outputs[0], 0.5, "noise")
    with pytest.raises(ValueError, match="not a denoising step"):
        implied_x0(latents[0], latents[1], 0.9, 0.5)
