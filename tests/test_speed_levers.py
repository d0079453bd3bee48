"""Issue #15's speed levers (``LMDConfig``/``GuidanceConfig`` fields): each off by default and then the code path
is the reference one; on, each has its promised effect (fewer UNet calls, same energies), on the tiny random SD."""

from dataclasses import replace

import pytest
import torch

from lmd_utils.attention import AttentionRecord, AttentionStore
from lmd_utils.config import GuidanceConfig, LMDConfig
from lmd_utils.layout import Box, Layout
from lmd_utils.models import build_tiny_pipeline, decode_latents
from lmd_utils.per_box import per_box_step_count
from lmd_utils.pipeline import generate
from lmd_utils.sampling import BoxGuidance, ImageTargets, ObjectTarget, TransferTarget


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def layout():
    return Layout([Box("a red cat", 0.05, 0.1, 0.45, 0.6), Box("a dog", 0.55, 0.3, 0.95, 0.9),
                   Box("a dog", 0.3, 0.6, 0.6, 0.95)], "a park", "", "a red cat and two dogs in a park")


@pytest.fixture(scope="module")
def config(pipe):
    # 8 steps: per-box guidance on 0..4, overall guidance (transfer) on 0..4, frozen 0..3, masks from step 2
    return LMDConfig.for_pipe(pipe, per_box_negative_prompt="", overall_negative_prompt="").with_steps(8)


class UnetCalls:
    """Batch size of every UNet forward while the context is open."""

    def __init__(self, unet):
        self.unet, self.batches = unet, []

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(
            lambda _m, args, kwargs: self.batches.append((args[0] if args else kwargs["sample"]).shape[0]),
            with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def reference(pipe, layout, config):
    with UnetCalls(pipe.unet) as calls:
        result = generate(pipe, layout, seed=1, config=config, progress=False)
    return result, calls.batches


# -- LMDConfig.per_box_stop ------------------------------------------------------------------------------------
def test_per_box_stop_defaults_to_the_authors_full_pass(pipe, layout, config, reference):
    result, batches = reference
    assert LMDConfig().per_box_stop == LMDConfig.authors().per_box_stop == "end" == config.per_box_stop
    assert per_box_step_count(config) == config.num_inference_steps == 8
    assert result.per_box.latents.shape[0] == 9 and batches.count(2 * len(layout)) == 8  # per-box CFG batches
    # the per-box images are the final latents decoded, as before the lever existed
    torch.testing.assert_close(result.per_box.images, decode_latents(pipe, result.per_box.latents[-1]), atol=0, rtol=0)
    again = generate(pipe, layout, seed=1, config=replace(config, per_box_stop="end"), progress=False)
    assert torch.equal(again.image, result.image)


def test_per_box_stop_needed_runs_only_the_steps_something_reads(pipe, layout, config, reference):
    result, batches = reference
    fast = replace(config, per_box_stop="needed")
    steps = per_box_step_count(fast)
    assert steps == max(int(8 * fast.frozen_ratio), fast.mask_start_step + 1, fast.overall_guidance.guidance_steps)
    assert steps == 5 < 8
    with UnetCalls(pipe.unet) as calls:
        quick = generate(pipe, layout, seed=1, config=fast, progress=False)
    assert calls.batches.count(2 * len(layout)) == steps  # 3 per-box denoising forwards fewer
    # same trajectory up to where it stops (same schedule, same guidance), then the composition reads only that
    assert quick.per_box.latents.shape[0] == steps + 1
    torch.testing.assert_close(quick.per_box.latents, result.per_box.latents[:steps + 1], atol=0, rtol=0)
    assert quick.composed_latents.shape[0] == steps + 1 and quick.image.shape == result.image.shape
    assert quick.per_box.images.shape == result.per_box.images.shape and quick.per_box.images.isfinite().all()
    assert quick.per_box.references[0].keys() == result.per_box.references[0].keys()  # transfer: all it needs
    # the per-box images are the scheduler's x_0 estimate at the last step run, not the noisy latents
    assert not torch.equal(quick.per_box.images, decode_latents(pipe, quick.per_box.latents[-1]))


def test_per_box_stop_is_checked_and_scales_with_the_steps():
    with pytest.raises(ValueError, match="per_box_stop"):
        LMDConfig(per_box_stop="early")
    authors = replace(LMDConfig(), per_box_stop="needed")
    assert per_box_step_count(authors) == 30  # 50 steps: transfer on 30 > frozen 25
    assert per_box_step_count(replace(authors, attention_transfer=False)) == 25
    assert per_box_step_count(authors.with_steps(10)) == 6


# -- GuidanceConfig.batched_energy ----------------------------------------------------------------------------
def _energy_case():
    g = torch.Generator().manual_seed(0)
    heads, H, W, T = 2, 8, 8, 7
    layers = ["mid_block.attentions.0", "up_blocks.1.attentions.0"]
    store = AttentionStore(layers, keep="all", keep_grad=True)
    leaves = [torch.rand(3, heads, H, W, T, generator=g).softmax(-1).requires_grad_(True) for _ in layers]
    for layer, leaf in zip(layers, leaves):
        store.records.append(AttentionRecord(layer, 3, leaf))
    a, b, c = Box("a cat", 0, 0, .5, .5), Box("a dog", .5, .5, 1, 1), Box("a dog", 0, .5, .5, 1)
    refs = [{(layer, 3): torch.rand(heads, H, W, generator=g) for layer in layers} for _ in range(3)]
    targets = [
        ImageTargets(objects=(ObjectTarget((a,), (1, 2)), ObjectTarget((b, c), (4,))),
                     transfers=(TransferTarget(b, 4, refs[0], object_index=1), TransferTarget(c, 4, refs[1], 1),
                                TransferTarget(a, 2, refs[2]))),
        ImageTargets(objects=(ObjectTarget((c,), (5,)),)),
        ImageTargets(),  # not guided
        ImageTargets(objects=(ObjectTarget((b,), (3, 6)),)),
    ]
    return store, leaves, targets


@pytest.mark.parametrize("head_reduction", ["mean", "sum"])
def test_batched_energy_equals_the_loop_in_value_and_gradient(head_reduction):
    store, leaves, targets = _energy_case()
    loop_cfg = GuidanceConfig(transfer_weight=0.7, head_reduction=head_reduction)
    assert loop_cfg.batched_energy is False and GuidanceConfig.authors().batched_energy is False
    elements = [3, 0, 1]  # rows of the captured batch, in this order
    loop = BoxGuidance(targets, loop_cfg).energy_from_store(store, elements, 3)
    grads = torch.autograd.grad(loop.sum(), leaves)
    batched = BoxGuidance(targets, replace(loop_cfg, batched_energy=True)).energy_from_store(store, elements, 3)
    batched_grads = torch.autograd.grad(batched.sum(), leaves)
    torch.testing.assert_close(batched, loop, atol=1e-6, rtol=1e-6)
    for x, y in zip(batched_grads, grads):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_batched_energy_checks_the_references_as_the_loop():
    store, _, targets = _energy_case()
    broken = [ImageTargets(transfers=(TransferTarget(targets[0].transfers[0].box, 4, {}),))]
    for batched in (False, True):
        with pytest.raises(KeyError, match="misses layer"):
            BoxGuidance(broken, GuidanceConfig(batched_energy=batched)).energy_from_store(store, [0], 3)


def test_batched_energy_in_generate_changes_nothing_but_rounding(pipe, layout, config, reference):
    result, batches = reference
    on = replace(config, per_box_guidance=replace(config.per_box_guidance, batched_energy=True),
                 overall_guidance=replace(config.overall_guidance, batched_energy=True))
    with UnetCalls(pipe.unet) as calls:
        batched = generate(pipe, layout, seed=1, config=on, progress=False)
    assert calls.batches == batches
    torch.testing.assert_close(batched.per_box.latents, result.per_box.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.image, result.image, atol=1e-3, rtol=1e-3)


# -- cheaper capture: the kept (conditional) half only ----------------------------------------------------------
def test_capture_of_the_cond_half_computes_only_that_half(pipe):
    from lmd_utils.attention import capture_cross_attention, resolve_layers
    from lmd_utils.models import encode_prompts, initial_noise

    z = initial_noise(pipe, 2, 128, 128, seed=0)
    emb = encode_prompts(pipe, ["", "", "a cat", "a dog"])
    z = torch.cat([z, z])  # [uncond; cond] for two elements
    layer = "up_blocks.1.attentions.0"
    module = next(iter(resolve_layers(pipe.unet, [layer]).values()))
    rows = []
    handle = module.to_q.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad(), capture_cross_attention(pipe.unet, [layer], keep="all") as full:
            pipe.unet(z, 500, encoder_hidden_states=emb)
        with torch.no_grad(), capture_cross_attention(pipe.unet, [layer], keep="cond") as cond:
            pipe.unet(z, 500, encoder_hidden_states=emb)
    finally:
        handle.remove()
    assert rows == [4, 4, 4, 2]  # the layer's own q, then the capture's: whole batch, then the cond half only
    torch.testing.assert_close(cond.records[0].probs, full.records[0].probs[2:], atol=1e-6, rtol=1e-5)


# -- LMDConfig.mask_end_step ----------------------------------------------------------------------------------
def test_mask_end_step_bounds_the_mask_window_and_lengthens_a_stopped_pass(config):
    fast = replace(config, per_box_stop="needed")
    assert per_box_step_count(replace(fast, mask_end_step=7)) == 7
    assert per_box_step_count(replace(fast, mask_end_step=3)) == 5  # the frozen steps and transfer still need 5
    assert per_box_step_count(replace(config, mask_end_step=3)) == 8  # "end" runs every step whatever the masks
    assert LMDConfig().mask_end_step is None is LMDConfig.authors().mask_end_step
    for bad in (config.mask_start_step, 9):
        with pytest.raises(ValueError, match="mask_end_step"):
            replace(config, mask_end_step=bad)
    assert replace(LMDConfig(), mask_end_step=40).with_steps(10).mask_end_step == 8


def test_mask_end_step_averages_only_its_window(pipe, layout, config, reference):
    result, _ = reference
    short = generate(pipe, layout, seed=1, config=replace(config, mask_end_step=config.mask_start_step + 1),
                     progress=False)
    torch.testing.assert_close(short.per_box.latents, result.per_box.latents, atol=0, rtol=0)  # same pass
    assert not torch.equal(short.per_box.mask_maps, result.per_box.mask_maps)  # one step's attention, not all


# -- LMDConfig.mask_jumps ---------------------------------------------------------------------------------------
def test_mask_jump_steps_spread_over_the_rest_of_the_window(config):
    from lmd_utils.per_box import mask_jump_steps, mask_steps

    fast = replace(config, per_box_stop="needed")
    assert mask_jump_steps(fast, 5) == [] and mask_jump_steps(replace(config, mask_jumps=2), 8) == []  # off / "end"
    assert mask_jump_steps(replace(fast, mask_jumps=1), 5) == [7]  # the window's last step, T − 1
    assert mask_jump_steps(replace(fast, mask_jumps=2), 5) == [6, 7]
    assert mask_jump_steps(replace(fast, mask_jumps=9), 5) == [5, 6, 7]  # at most every step left
    assert mask_jump_steps(replace(fast, mask_jumps=1, mask_end_step=7), 5) == [6]
    assert per_box_step_count(replace(fast, mask_jumps=1, mask_end_step=7)) == 5  # jumps: no longer pass
    # a mask window that starts after the stop: the jumps reach it, the pass does not run on to it
    late = replace(fast, mask_jumps=2, mask_start_step=6, overall_guidance=replace(fast.overall_guidance,
                                                                                   guidance_steps=3))
    assert per_box_step_count(late) == 4  # the frozen steps alone (without jumps: mask_start_step + 1 = 7)
    assert per_box_step_count(replace(late, mask_jumps=0)) == 7
    assert mask_jump_steps(late, 4) == [6, 7] and mask_jump_steps(replace(late, mask_jumps=1), 4) == [7]
    assert mask_steps(late) == [6, 7] and mask_steps(replace(fast, mask_jumps=2)) == [2, 3, 4, 6, 7]
    assert mask_steps(config) == list(range(config.mask_start_step, 8))  # the full pass: its window
    assert LMDConfig().mask_jumps == 0 == LMDConfig.authors().mask_jumps
    with pytest.raises(ValueError, match="mask_jumps"):
        LMDConfig(mask_jumps=-1)


def test_mask_jumps_add_one_conditional_forward_each_and_feed_the_masks(pipe, layout, config):
    fast = replace(config, per_box_stop="needed")
    with UnetCalls(pipe.unet) as calls:
        stopped = generate(pipe, layout, seed=1, config=fast, progress=False)
    with UnetCalls(pipe.unet) as more:
        jumped = generate(pipe, layout, seed=1, config=replace(fast, mask_jumps=2), progress=False)
    n = len(layout)
    assert more.batches.count(2 * n) == calls.batches.count(2 * n) == 5  # the same stopped pass
    assert more.batches.count(n) == calls.batches.count(n) + 2  # + two conditional forwards of all boxes
    torch.testing.assert_close(jumped.per_box.latents, stopped.per_box.latents, atol=0, rtol=0)
    assert not torch.equal(jumped.per_box.mask_maps, stopped.per_box.mask_maps)  # steps 6 and 7 joined the masks
    assert jumped.per_box.images.isfinite().all() and not torch.equal(jumped.per_box.images, stopped.per_box.images)


# -- LMDConfig.per_box_guidance_scale -----------------------------------------------------------------------------
def test_per_box_guidance_scale_one_drops_the_unconditional_half_of_the_per_box_pass(pipe, layout, config, reference):
    result, batches = reference
    assert LMDConfig().per_box_guidance_scale is None is LMDConfig.authors().per_box_guidance_scale
    same = generate(pipe, layout, seed=1, config=replace(config, per_box_guidance_scale=config.guidance_scale),
                    progress=False)
    assert torch.equal(same.image, result.image)  # the same scale given explicitly: the same run
    with UnetCalls(pipe.unet) as calls:
        generate(pipe, layout, seed=1, config=replace(config, per_box_guidance_scale=1.0), progress=False)
    n = len(layout)
    assert calls.batches.count(2 * n) == 0 and batches.count(2 * n) == 8
    assert calls.batches.count(n) == batches.count(n) + 8  # the per-box pass: conditional batches only


# -- LMDConfig.per_box_uncond_every, overall_uncond_every ------------------------------------------------------
def sparse_cfg_run(pipe, layout, config, field: str, every: int):
    """The field is 1 by default and for the authors, must be >= 1; the run with ``every`` and its UNet batches."""
    assert getattr(LMDConfig(), field) == 1 == getattr(LMDConfig.authors(), field)
    with pytest.raises(ValueError, match=field):
        LMDConfig(**{field: 0})
    with UnetCalls(pipe.unet) as calls:
        result = generate(pipe, layout, seed=1, config=replace(config, **{field: every}), progress=False)
    return result, calls


def test_per_box_uncond_every_runs_the_unconditional_half_on_every_kth_step(pipe, layout, config, reference):
    result, batches = reference
    sparse, calls = sparse_cfg_run(pipe, layout, config, "per_box_uncond_every", 3)
    n = len(layout)
    assert calls.batches.count(2 * n) == 3  # steps 0, 3, 6 of 8
    assert calls.batches.count(n) == batches.count(n) + 5  # the others: conditional half only
    assert torch.equal(sparse.per_box.latents[:2], result.per_box.latents[:2])  # step 0 as before
    assert not torch.equal(sparse.per_box.latents[2], result.per_box.latents[2])  # step 1 reuses step 0's ε_c − ε_u
    assert sparse.per_box.mask_maps.shape == result.per_box.mask_maps.shape  # captured on every step all the same


def test_overall_uncond_every_runs_the_composed_pass_unconditional_half_on_every_kth_step(pipe, layout, config,
                                                                                      reference):
    result, batches = reference
    sparse, calls = sparse_cfg_run(pipe, layout, config, "overall_uncond_every", 2)
    assert batches.count(2) - calls.batches.count(2) == 4  # steps 1, 3, 5, 7 of 8: conditional half alone ...
    assert calls.batches.count(1) - batches.count(1) == 4  # ... a batch of one
    torch.testing.assert_close(sparse.per_box.latents, result.per_box.latents, atol=0, rtol=0)  # per-box untouched
    assert torch.equal(sparse.overall_latents[1], result.overall_latents[1]) and not torch.equal(sparse.image,
                                                                                                   result.image)


def test_overall_uncond_from_keeps_both_halves_before_it_and_counts_from_it(pipe, layout, config, reference):
    result, batches = reference
    assert LMDConfig().overall_uncond_from == 0 == LMDConfig.authors().overall_uncond_from
    with pytest.raises(ValueError, match="overall_uncond_from"):
        LMDConfig(overall_uncond_from=-1)
    late = replace(config, overall_uncond_every=2, overall_uncond_from=4)
    with UnetCalls(pipe.unet) as calls:
        sparse = generate(pipe, layout, seed=1, config=late, progress=False)
    assert batches.count(2) - calls.batches.count(2) == 2  # steps 5 and 7 of 8: conditional half alone
    assert calls.batches.count(1) - batches.count(1) == 2
    assert torch.equal(sparse.overall_latents[5], result.overall_latents[5])  # steps 0..4 as before
    assert not torch.equal(sparse.overall_latents[6], result.overall_latents[6])  # step 5 reuses step 4's delta
    same = generate(pipe, layout, seed=1, config=replace(config, overall_uncond_from=4), progress=False)
    assert torch.equal(same.image, result.image)  # without overall_uncond_every it changes nothing
    assert replace(late, num_inference_steps=8).with_steps(16).overall_uncond_from == 8


# -- PerBoxResult.final_latents -------------------------------------------------------------------------------------
def test_final_latents_are_what_the_per_box_images_show(pipe, layout, config, reference):
    result, _ = reference
    torch.testing.assert_close(result.per_box.final_latents, result.per_box.latents[-1].cpu(), atol=0, rtol=0)
    stopped = generate(pipe, layout, seed=1, config=replace(config, per_box_stop="needed"), progress=False).per_box
    assert stopped.latents.shape[0] < result.per_box.latents.shape[0]
    assert not torch.equal(stopped.final_latents, stopped.latents[-1].cpu())  # the x_0 estimate, not x_t
    torch.testing.assert_close(decode_latents(pipe, stopped.final_latents), stopped.images, atol=1e-5, rtol=0)


# -- GuidanceConfig.shared_forward ----------------------------------------------------------------------------------
class UpdateAfterTheForward:
    """What ``shared_forward`` computes, with the guidance's own forward: the update of a separate iteration on x_t,
    the step's noise predicted on x_t (this hook leaves the forward's input alone) and applied to the updated x_t."""

    def __init__(self, guidance: BoxGuidance):
        self.guidance, self.updated = guidance, None

    def before_step(self, state):
        self.updated = self.guidance.before_step(state)

    def after_step(self, state):
        z, self.updated = self.updated, None
        return None if z is None else state.scheduler.step(state.noise_pred, state.timestep, z, return_dict=False)[0]


def test_shared_forward_is_the_update_of_the_step_own_forward(pipe, config):
    from lmd_utils.attention import default_layers
    from lmd_utils.models import encode_prompts, initial_noise
    from lmd_utils.sampling import denoise

    assert GuidanceConfig().shared_forward is False and GuidanceConfig.authors().shared_forward is False
    z = initial_noise(pipe, 2, 128, 128, seed=0)
    cond, uncond = encode_prompts(pipe, ["a cat", "a dog"]), encode_prompts(pipe, [""])
    targets = [ImageTargets(objects=(ObjectTarget((Box("a cat", 0, 0, .5, .5),), (2,)),)), ImageTargets()]
    separate = replace(config.per_box_guidance.on_layers(default_layers(pipe.unet)[0]), iterations=(1,),
                       guidance_steps=3, loss_threshold=0.0, loss_scale=400.0)
    runs = {}
    for name, cfg in (("shared", replace(separate, shared_forward=True)), ("separate", separate)):
        guidance = BoxGuidance(targets, cfg)
        hook = guidance if cfg.shared_forward else UpdateAfterTheForward(guidance)
        with UnetCalls(pipe.unet) as calls:
            out = denoise(pipe, z, cond, uncond, 5, 7.5, hooks=[hook], progress=False)
        runs[name] = out, guidance.log, calls.batches
    (shared, log, batches), (emulated, emulated_log, emulated_batches) = runs["shared"], runs["separate"]
    assert batches == [4] * 5  # the denoising forwards only: no guidance forward of the guided element
    assert emulated_batches.count(1) == 3  # the separate run's guidance forwards (element 0 only, steps 0..2)
    assert [(e.step, e.iteration, e.elements) for e in log] == [(s, 0, [0]) for s in range(3)]
    for a, b in zip(log, emulated_log):
        assert a.energies == pytest.approx(b.energies, rel=1e-5)
    torch.testing.assert_close(shared.latents, emulated.latents, atol=1e-4, rtol=1e-4)
    plain = denoise(pipe, z, cond, uncond, 5, 7.5, progress=False).latents
    assert (shared.latents[0] - plain[0]).abs().max() > 1e-2  # the guided element moved ...
    torch.testing.assert_close(shared.latents[1], plain[1], atol=1e-5, rtol=1e-5)  # ... the other did not


def test_shared_forward_in_generate_drops_every_guidance_forward(pipe, layout, config, reference):
    one = {"iterations": (1,)}
    separate = replace(config, per_box_guidance=replace(config.per_box_guidance, **one),
                       overall_guidance=replace(config.overall_guidance, **one))
    shared = replace(separate, per_box_guidance=replace(separate.per_box_guidance, shared_forward=True),
                     overall_guidance=replace(separate.overall_guidance, shared_forward=True))
    counts = {}
    for name, cfg in (("separate", separate), ("shared", shared)):
        with UnetCalls(pipe.unet) as calls:
            result = generate(pipe, layout, seed=1, config=cfg, progress=False)
        counts[name] = calls.batches
        assert [e.iteration for e in result.overall_guidance.log] == [0] * cfg.overall_guidance.guidance_steps
    n, guided = len(layout), config.per_box_guidance.guidance_steps + config.overall_guidance.guidance_steps
    assert counts["separate"].count(n) + counts["separate"].count(1) == guided  # the guidance forwards ...
    assert counts["shared"].count(n) == counts["shared"].count(1) == 0  # ... are gone
    assert len(counts["shared"]) == len(counts["separate"]) - guided
    with pytest.raises(ValueError, match="stop_rule"):
        GuidanceConfig(shared_forward=True, stop_rule="authors")
    with pytest.raises(ValueError, match="GLIGEN"):
        replace(shared, gligen_beta=0.3)
    plus = shared.plus()  # LMD+ guides with separate, ungrounded forwards
    assert not plus.per_box_guidance.shared_forward and not plus.overall_guidance.shared_forward


def test_the_shared_forward_records_no_graph_after_the_last_guidance_layer(pipe):
    from lmd_utils.attention import capture_cross_attention
    from lmd_utils.models import encode_prompts, initial_noise

    z = initial_noise(pipe, 1, 128, 128, seed=0).requires_grad_(True)
    emb = encode_prompts(pipe, ["a cat"])
    for until_last in (False, True):
        store = AttentionStore(layers=("mid_block",), keep="all", keep_grad=True, grad_until_last_layer=until_last)
        store.set_step(0)
        with torch.no_grad():
            with torch.enable_grad(), capture_cross_attention(pipe.unet, store=store):
                out = pipe.unet(z, 500, encoder_hidden_states=emb, return_dict=False)[0]
            assert not torch.is_grad_enabled()  # the caller's mode is back
        assert store.records[0].probs.requires_grad  # the guidance layer's maps keep their graph ...
        assert out.requires_grad is not until_last  # ... the up blocks after it built none
