"""sampling.py: the denoising loop equals diffusers' pipeline, hooks, reproducibility, and box guidance."""

import math
import time

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from lmd_utils.attention import GUIDANCE_LAYERS, MASK_LAYERS, AttentionStore, phrase_token_indices
from lmd_utils.layout import Box
from lmd_utils.models import SD_SCHEDULER_CONFIG, build_tiny_pipeline, encode_prompts, initial_noise
from lmd_utils.config import GuidanceConfig
from lmd_utils.sampling import BoxGuidance, ImageTargets, ObjectTarget, TransferTarget, denoise, guidance_step_scale

PROMPTS = ["a realistic scene with a cat", "a realistic scene with a dog"]


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def embeds(pipe):
    return encode_prompts(pipe, PROMPTS), encode_prompts(pipe, [""])


def _targets(tok, boxes=(Box("cat", 0, 0, 0.5, 0.5), Box("dog", 0.5, 0.5, 1, 1))):
    return [ImageTargets((ObjectTarget.for_phrase(tok, p, p.split(" with ")[1], b),)) for p, b in zip(PROMPTS, boxes)]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_vanilla_denoise_equals_the_diffusers_pipeline(pipe, embeds, prediction_type):
    cond, uncond = embeds
    scheduler = DDIMScheduler(**{**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    pipe.scheduler = scheduler
    z = initial_noise(pipe, 2, 64, 64, seed=3)
    ours = denoise(pipe, z, cond, uncond, num_inference_steps=5, guidance_scale=7.5, scheduler=scheduler,
                   progress=False).latents
    theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond.expand(2, -1, -1), latents=z,
                  num_inference_steps=5, guidance_scale=7.5, output_type="latent").images
    assert torch.equal(ours, theirs)
    pipe.scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)


def test_same_seed_same_tensors_and_latent_history(pipe, embeds):
    cond, uncond = embeds

    def run(seed):
        z = initial_noise(pipe, 2, 64, 64, seed=seed)
        guidance = BoxGuidance(_targets(pipe.tokenizer), GuidanceConfig(loss_threshold=0.0))
        return denoise(pipe, z, cond, uncond, num_inference_steps=3, hooks=[guidance], keep_latents=True,
                       progress=False), z

    (a, z), (b, _), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.latents_history, b.latents_history)
    assert not torch.equal(a.latents, c.latents)
    assert a.latents_history.shape == (4, 2, 4, 8, 8) and a.latents_history.device.type == "cpu"
    assert torch.equal(a.latents_history[0], z) and torch.equal(a.latents_history[-1], a.latents)
    assert a.timesteps.tolist() == [667, 334, 1]  # DDIM, 3 steps, steps_offset 1


def test_batch_elements_are_independent(pipe, embeds):
    cond, uncond = embeds
    z = initial_noise(pipe, 2, 64, 64, seed=[10, 11])
    both = denoise(pipe, z, cond, uncond, num_inference_steps=3, progress=False).latents
    one = denoise(pipe, z[1:], cond[1:], uncond, num_inference_steps=3, progress=False).latents
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_hooks_see_every_step_and_can_replace_latents(pipe, embeds):
    cond, uncond = embeds
    calls = []

    class Recorder:
        def before_step(self, state):
            calls.append(("before", state.step, int(state.timestep), state.noise_pred is None))

        def after_step(self, state):
            calls.append(("after", state.step, int(state.timestep), state.noise_pred is not None))
            if state.step == state.num_steps - 1:
                return torch.zeros_like(state.latents)

    z = initial_noise(pipe, 1, 64, 64, seed=0)
    res = denoise(pipe, z, cond[:1], uncond, num_inference_steps=2, hooks=[Recorder()], progress=False,
                  keep_latents=True)
    assert calls == [("before", 0, 501, True), ("after", 0, 501, True), ("before", 1, 1, True), ("after", 1, 1, True)]
    assert res.latents.abs().max() == 0 and res.latents_history[-1].abs().max() == 0
    with pytest.raises(ValueError, match="uncond_embeds"):
        denoise(pipe, z, cond[:1], None, num_inference_steps=1, progress=False)
    with pytest.raises(ValueError, match="batch"):
        denoise(pipe, z, cond, uncond, num_inference_steps=1, progress=False)
    # guidance_scale 1: no CFG batch, no uncond needed
    assert denoise(pipe, z, cond[:1], None, num_inference_steps=1, guidance_scale=1.0, progress=False).latents.shape == z.shape


def test_attention_store_records_the_chosen_steps_of_the_real_forward(pipe, embeds):
    cond, uncond = embeds
    word = [phrase_token_indices(pipe.tokenizer, p, p.split()[-1]) for p in PROMPTS]  # [[6], [6]]
    store = AttentionStore(layers=MASK_LAYERS + GUIDANCE_LAYERS, keep="cond", token_indices=word, steps=range(2, 4))
    z = initial_noise(pipe, 2, 128, 128, seed=0)
    denoise(pipe, z, cond, uncond, num_inference_steps=4, attention_store=store, progress=False)
    assert store.recorded_steps == [2, 3] and len(store) == 2 * 5
    assert store.get("down_blocks.2.attentions.1", 2).shape == (2, 2, 4, 4, 1)  # cond half, word token only
    assert store.aggregate(MASK_LAYERS, steps=range(2, 4), size=16).shape == (2, 1, 16, 16)
    ref = store.per_element_maps(1)
    assert ref[("mid_block.attentions.0.transformer_blocks.0.attn2", 3)].shape == (2, 2, 2)


def test_guidance_schedule_and_configs():
    cfg = GuidanceConfig()
    per_step = [cfg.iterations_at(i) for i in range(50)]
    assert per_step[:30] == [4] * 5 + [3] * 5 + [2] * 10 + [1] * 10 and per_step[30:] == [0] * 20
    assert sum(per_step) == 65
    authors = GuidanceConfig.authors()
    assert (authors.loss_scale, authors.loss_threshold, authors.transfer_weight, authors.head_reduction) == \
        (5.0, 5.0, 2.0, "sum")
    # per head of SD 1.5 (8 heads): the same step size and threshold as the authors' summed energy
    assert cfg.loss_scale == 8 * authors.loss_scale and cfg.loss_threshold * 8 == authors.loss_threshold
    short = cfg.scaled_to(25)
    assert short.guidance_steps == 15 and [short.iterations_at(i) for i in range(16)] == \
        [4, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        GuidanceConfig(head_reduction="max")


def test_guidance_step_scale_follows_the_scheduler():
    ddim = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    ddim.set_timesteps(50)
    t = ddim.timesteps[0]
    assert guidance_step_scale(ddim, t, 0) == pytest.approx(math.sqrt(1 - ddim.alphas_cumprod[int(t)].item()))
    euler = EulerDiscreteScheduler.from_config(ddim.config)
    euler.set_timesteps(50)
    assert guidance_step_scale(euler, euler.timesteps[3], 3) == pytest.approx(euler.sigmas[3].item() ** 2)


def _step_state(pipe, latents, cond, step=0, num_steps=50):
    from lmd_utils.sampling import StepState
    sched = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    sched.set_timesteps(num_steps)
    return StepState(step=step, num_steps=num_steps, timestep=sched.timesteps[step], latents=latents,
                     scheduler=sched, pipe=pipe, cond_embeds=cond, uncond_embeds=None, guidance_scale=7.5)


def test_a_guidance_step_lowers_the_energy_on_the_tiny_model(pipe, embeds):
    cond, _ = embeds
    z = initial_noise(pipe, 2, 256, 256, seed=4)
    guidance = BoxGuidance(_targets(pipe.tokenizer), GuidanceConfig(loss_threshold=0.0, loss_scale=200.0))
    state = _step_state(pipe, z, cond)
    before = guidance.compute_energy(pipe, z, state.timestep, 0, cond, state.scheduler)
    new = guidance.before_step(state)
    after = guidance.compute_energy(pipe, new, state.timestep, 0, cond, state.scheduler)
    assert len(guidance.log) == 4 and all(e.updated == [True, True] for e in guidance.log)
    assert torch.equal(torch.tensor(guidance.log[0].energies), before)
    assert (after < before - 1e-3).all(), (before, after)
    logged = [e for _, _, e in guidance.energies_by_element(0)]
    assert logged == sorted(logged, reverse=True)  # each iteration lowers element 0's energy
    assert not torch.equal(new, z) and new.shape == z.shape


def test_stopping_is_per_element_and_reevaluated(pipe, embeds):
    cond, _ = embeds
    z = initial_noise(pipe, 2, 128, 128, seed=5)
    probe = BoxGuidance(_targets(pipe.tokenizer))
    state = _step_state(pipe, z, cond)
    e = probe.compute_energy(pipe, z, state.timestep, 0, cond, state.scheduler)
    low, high = sorted(e.tolist())
    threshold = (low + high) / 2
    guidance = BoxGuidance(_targets(pipe.tokenizer), GuidanceConfig(loss_threshold=threshold, loss_scale=1.0))
    new = guidance.before_step(state)
    above = int(torch.argmax(e))
    below = 1 - above
    assert torch.equal(new[below], z[below]) and not torch.equal(new[above], z[above])
    assert guidance.log[0].updated[above] and not guidance.log[0].updated[below]
    assert all(entry.elements == [above] for entry in guidance.log[1:])  # the settled one left the batch
    # the next step evaluates every element again (the authors' stale loss would skip it for good)
    guidance.before_step(_step_state(pipe, new, cond, step=1))
    assert [x.elements for x in guidance.log if x.step == 1][0] == [0, 1]
    # above every energy: one evaluation per step and no update
    idle = BoxGuidance(_targets(pipe.tokenizer), GuidanceConfig(loss_threshold=10.0))
    assert torch.equal(idle.before_step(state), z) and len(idle.log) == 1
    assert idle.before_step(_step_state(pipe, z, cond, step=30)) is None  # past the guided steps


def test_truncation_head_reduction_and_attention_transfer(pipe, embeds):
    cond, _ = embeds
    tok = pipe.tokenizer
    z = initial_noise(pipe, 2, 256, 256, seed=6)
    state = _step_state(pipe, z, cond, step=2)
    targets = _targets(tok)

    def energy(config, tgts=targets):
        return BoxGuidance(tgts, config).compute_energy(pipe, z, state.timestep, 2, cond, state.scheduler)

    full, cut = energy(GuidanceConfig(truncate_forward=False)), energy(GuidanceConfig())
    assert torch.equal(full, cut)
    heads = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads
    torch.testing.assert_close(energy(GuidanceConfig(head_reduction="sum")), heads * cut)
    # attention transfer: a reference equal to the pass's own maps adds nothing; another one adds energy
    with torch.no_grad():
        own = _own_maps(pipe, z, cond, state)
    same = [ImageTargets(t.objects, (TransferTarget(t.objects[0].boxes[0], 6, own[e], 0),))
            for e, t in enumerate(targets)]
    other = [ImageTargets(t.objects, (TransferTarget(t.objects[0].boxes[0], 6, own[1 - e], 0),))
             for e, t in enumerate(targets)]
    torch.testing.assert_close(energy(GuidanceConfig(), same), cut, atol=1e-5, rtol=0)
    assert (energy(GuidanceConfig(), other) > cut + 1e-4).all()
    missing = [ImageTargets(t.objects, (TransferTarget(t.objects[0].boxes[0], 6, {}, 0),)) for t in targets]
    with pytest.raises(KeyError, match="reference"):
        energy(GuidanceConfig(), missing)


def _own_maps(pipe, z, cond, state):
    store = AttentionStore(GUIDANCE_LAYERS, keep="all", token_indices=[6])
    store.cfg_batch = False
    store.set_step(state.step)
    from lmd_utils.attention import capture_cross_attention
    with capture_cross_attention(pipe.unet, store=store):
        pipe.unet(state.scheduler.scale_model_input(z, state.timestep), state.timestep, encoder_hidden_states=cond)
    return [store.per_element_maps(e) for e in range(z.shape[0])]


@pytest.mark.slow
def test_full_size_sd15_unet_smoke():
    """Random-weight SD 1.5 UNet (built from its config, nothing downloaded): 2 guided steps on a 64×64 latent."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lmd_utils.models import SD15_UNET_CONFIG

    pipe = build_tiny_pipeline(seed=0)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    tok = pipe.tokenizer
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=256, num_hidden_layers=1, num_attention_heads=12,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)).eval()
    cond = encode_prompts(pipe, PROMPTS[:1])
    uncond = encode_prompts(pipe, [""])
    assert cond.shape == (1, 77, 768)
    z = initial_noise(pipe, 1, 512, 512, seed=0)
    assert z.shape == (1, 4, 64, 64)
    guidance = BoxGuidance(_targets(tok)[:1], GuidanceConfig(iterations=(1,), loss_threshold=0.0))
    store = AttentionStore(MASK_LAYERS + GUIDANCE_LAYERS, keep="cond", token_indices=[6])
    start = time.perf_counter()
    res = denoise(pipe, z, cond, uncond, num_inference_steps=2, hooks=[guidance], attention_store=store,
                  progress=False)
    elapsed = time.perf_counter() - start
    assert res.latents.shape == z.shape and torch.isfinite(res.latents).all()
    assert len(guidance.log) == 2 and all(math.isfinite(e.energies[0]) for e in guidance.log)
    assert store.get("mid_block.attentions.0", 0).shape == (1, 8, 8, 8, 1)  # 8 heads, 8×8
    assert store.get("up_blocks.1.attentions.2", 1).shape == (1, 8, 16, 16, 1)
    assert store.get("down_blocks.2.attentions.1", 1).shape == (1, 8, 16, 16, 1)
    print(f"2 guided steps of a full-size SD 1.5 UNet at 64×64 latents on CPU: {elapsed:.1f} s")


def test_energy_is_the_documented_mean_over_layers_objects_tokens_and_phrases():
    """E = mean_layers[ mean_objects mean_tokens heads(box_energy) + λ·mean_phrases mean_boxes mean_heads(transfer) ]
    on hand-made maps, with objects of one and two tokens, a phrase of two boxes and a box without a phrase."""
    from lmd_utils.attention import AttentionRecord
    from lmd_utils.energy import attention_transfer_energy, box_energy

    g = torch.Generator().manual_seed(0)
    heads, H, W, T = 2, 8, 8, 6
    layers = ["mid_block.attentions.0", "up_blocks.1.attentions.0"]
    store = AttentionStore(layers, keep="all")
    for layer in layers:
        store.records.append(AttentionRecord(layer, 3, torch.rand(1, heads, H, W, T, generator=g).softmax(-1)))
    a, b, c = Box("a cat", 0, 0, .5, .5), Box("a dog", .5, .5, 1, 1), Box("a dog", 0, .5, .5, 1)
    refs = [{(layer, 3): torch.rand(heads, H, W, generator=g) for layer in layers} for _ in range(3)]
    target = ImageTargets(
        objects=(ObjectTarget((a,), (1, 2)), ObjectTarget((b, c), (4,))),
        transfers=(TransferTarget(b, 4, refs[0], object_index=1), TransferTarget(c, 4, refs[1], object_index=1),
                   TransferTarget(a, 2, refs[2])))
    config = GuidanceConfig(transfer_weight=0.7)
    got = BoxGuidance([target], config).energy_from_store(store, [0], 3)

    def mask(*boxes):
        return torch.stack([x.mask(H, W) for x in boxes]).amax(0)

    expected = 0.0
    for layer in layers:
        A = store.get(layer, 3)[0].permute(3, 0, 1, 2)  # (tokens, heads, H, W)
        cat = box_energy(A[[1, 2]], mask(a)).mean(1).mean()
        dogs = box_energy(A[[4]], mask(b, c)).mean(1).mean()
        tr = [attention_transfer_energy(A[t], r[(layer, 3)], mask(x)).mean()
              for t, r, x in ((4, refs[0], b), (4, refs[1], c), (2, refs[2], a))]
        expected += (cat + dogs) / 2 + 0.7 * ((tr[0] + tr[1]) / 2 + tr[2]) / 2
    torch.testing.assert_close(got, torch.stack([expected / len(layers)]))


# -- GuidanceConfig.stop_rule -------------------------------------------------------------------------------
def test_stop_rule_defaults_to_current_and_authors_tests_the_previous_forward(pipe, embeds):
    cond, _ = embeds
    assert GuidanceConfig().stop_rule == "current" and GuidanceConfig.authors().stop_rule == "authors"
    z = initial_noise(pipe, 2, 128, 128, seed=5)
    state = _step_state(pipe, z, cond)
    probe = BoxGuidance(_targets(pipe.tokenizer))
    e = probe.compute_energy(pipe, z, state.timestep, 0, cond, state.scheduler)
    above_all = float(e.detach().max()) + 1.0  # every energy is below this threshold
    # ours: the current energy is tested first, so nothing moves
    ours = BoxGuidance(_targets(pipe.tokenizer), GuidanceConfig(loss_threshold=above_all))
    assert torch.equal(ours.before_step(state), z)
    # authors: the carried loss starts at 10000, so the first iteration updates every element; its loss (the
    # energy before the update) is then below the threshold and the loop stops, for this step and the next ones
    cfg = GuidanceConfig(loss_threshold=above_all, stop_rule="authors")
    authors = BoxGuidance(_targets(pipe.tokenizer), cfg)
    assert authors.carried_loss == [10000.0, 10000.0]
    new = authors.before_step(state)
    zz = z.detach().clone().requires_grad_(True)
    grad = torch.autograd.grad(probe.compute_energy(pipe, zz, state.timestep, 0, cond, state.scheduler).sum(),
                               zz)[0]
    scale = guidance_step_scale(state.scheduler, state.timestep, 0)
    assert torch.allclose(new, z - cfg.loss_scale * scale * grad, atol=1e-6)
    assert len(authors.log) == 1 and authors.log[0].elements == [0, 1]
    assert torch.allclose(torch.tensor(authors.carried_loss), e, atol=1e-6)
    later = authors.before_step(_step_state(pipe, new, cond, step=1))
    assert torch.equal(later, new) and len(authors.log) == 1  # never again in this image
    # losses staying above the threshold run all the step's iterations; an element whose carried loss is below
    # it does not run at all
    low = BoxGuidance(_targets(pipe.tokenizer), GuidanceConfig(loss_threshold=0.0, stop_rule="authors"))
    low.carried_loss = [10000.0, 0.0]
    low.before_step(_step_state(pipe, z, cond, step=2))
    assert [x.elements for x in low.log] == [[0]] * low.config.iterations_at(2) == [[0]] * 4
    with pytest.raises(ValueError):
        GuidanceConfig(stop_rule="never")


def test_box_rounding_reaches_the_energy_masks(pipe):
    box = Box("cat", 0.1875, 0.0, 0.5625, 1.0)  # x: 1.5 .. 4.5 on 8 cells (both edges round to even: 2 .. 4)
    ours, theirs = BoxGuidance([]), BoxGuidance([], box_rounding="authors")
    assert torch.equal(ours.box_mask((box,), 8, 8, "cpu"), box.mask(8, 8))
    assert torch.equal(ours.box_mask((box,), 8, 8, "cpu")[0], torch.tensor([0, 0, 1, 1, 0, 0, 0, 0.]))
    # the authors round the start (2) and the width (3) separately
    assert torch.equal(theirs.box_mask((box,), 8, 8, "cpu")[0], torch.tensor([0, 0, 1, 1, 1, 0, 0, 0.]))
