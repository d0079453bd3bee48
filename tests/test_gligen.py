"""gligen.py: GLIGEN grounding on our denoising loop (scheduled sampling, null grounding, guidance forwards), the
GLIGEN baseline and LMD+, on tiny random-weight models with GLIGEN's gated self-attention."""

import pytest
import torch
from diffusers import StableDiffusionGLIGENPipeline

from lmd_utils import per_box, pipeline
from lmd_utils.composition import alignment_shift
from lmd_utils.config import GLIGEN_BETA, GuidanceConfig, LMDConfig
from lmd_utils.gligen import (MAX_OBJECTS, GligenGrounding, NotGligenError, fusers, gligen_baseline, is_gligen,
                              phrase_embeddings)
from lmd_utils.layout import Box, Layout
from lmd_utils.models import build_tiny_pipeline, encode_prompts, initial_noise, load_pipeline
from lmd_utils.pipeline import generate, generate_sd
from lmd_utils.sampling import BoxGuidance, ImageTargets, ObjectTarget, denoise

PROMPTS = ["a realistic scene with a cat", "a realistic scene with a dog"]
CAT, DOG = Box("a cat", 0.05, 0.1, 0.5, 0.6), Box("a dog", 0.5, 0.4, 0.95, 0.9)


@pytest.fixture(scope="module")
def gpipe():
    return build_tiny_pipeline(seed=0, gligen=True)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def layout():
    return Layout([CAT, DOG], "a park", "birds", "a cat and a dog in a park")


def _denoise(pipe, hooks=(), batch=1, steps=4):
    z = initial_noise(pipe, batch, 64, 64, seed=3)
    return denoise(pipe, z, encode_prompts(pipe, PROMPTS[:batch]), encode_prompts(pipe, [""]), steps, hooks=hooks,
                   progress=False).latents


class _PositionNetSpy:
    """Records the masks every UNet forward hands to GLIGEN's position net, and whether gradients were on."""

    def __init__(self, unet):
        self.masks, self.grad = [], []
        self.handle = unet.position_net.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, _args, kwargs):
        self.masks.append(kwargs["masks"].sum(-1).tolist())
        self.grad.append(torch.is_grad_enabled())

    def remove(self):
        self.handle.remove()


class _FuserFlags:
    """``after_step`` hook: the fusers' ``enabled`` flags during each step."""

    def __init__(self, pipe):
        self.pipe, self.flags = pipe, []

    def after_step(self, state):
        self.flags.append({f.enabled for f in fusers(self.pipe)})


def test_tiny_gligen_pipe_has_gated_layers_and_the_default_one_none(gpipe, pipe):
    assert is_gligen(gpipe) and is_gligen(gpipe.unet) and len(fusers(gpipe)) == 16  # one per transformer block
    assert not is_gligen(pipe) and not fusers(pipe)
    assert all(float(f.alpha_attn.detach()) == 1.0 for f in fusers(gpipe))  # gates open: the fusers change the output
    plain = build_tiny_pipeline(seed=0, gligen=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.unet.state_dict().values(), pipe.unet.state_dict().values()))


def test_phrase_embeddings_are_each_captions_pooled_text_feature(gpipe):
    features = phrase_embeddings(gpipe, ["a cat", "a red dog"])
    assert features.shape == (2, gpipe.text_encoder.config.hidden_size)
    alone = gpipe.text_encoder(**gpipe.tokenizer(["a red dog"], return_tensors="pt")).pooler_output
    torch.testing.assert_close(features[1:], alone)
    assert phrase_embeddings(gpipe, []).shape == (0, 32)


def test_grounding_reaches_the_fusers_and_beta_zero_is_plain_sampling(gpipe):
    plain = _denoise(gpipe)
    grounded = _denoise(gpipe, [GligenGrounding([[CAT]], beta=0.5)])
    assert not torch.equal(grounded, plain)
    assert torch.equal(_denoise(gpipe, [GligenGrounding([[CAT]], beta=0.0)]), plain)  # bit for bit


def test_scheduled_sampling_switches_the_fusers_and_restores_their_flags(gpipe):
    unet, steps = gpipe.unet, 5
    fusers(gpipe)[0].enabled = False  # the flags found at attach time come back, whatever they were
    before, hooks_before = [f.enabled for f in fusers(gpipe)], len(unet._forward_pre_hooks)
    grounding, flags = GligenGrounding([[CAT, DOG]], beta=0.5), _FuserFlags(gpipe)
    _denoise(gpipe, [grounding, flags], steps=steps)
    on = int(0.5 * steps)  # the authors' num_grounding_steps = int(beta * len(timesteps)) = 2
    assert flags.flags == [{True}] * on + [{False}] * (steps - on)
    assert sorted({f.step for f in grounding.log}) == list(range(on))
    assert [f.enabled for f in fusers(gpipe)] == before and len(unet._forward_pre_hooks) == hooks_before
    fusers(gpipe)[0].enabled = True


def test_fusers_and_the_unet_are_restored_after_an_exception(gpipe):
    class Boom:
        def after_step(self, state):
            if state.step == 1:
                raise RuntimeError("boom")

    hooks_before = len(gpipe.unet._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        _denoise(gpipe, [GligenGrounding([[CAT]], beta=1.0), Boom()])
    assert all(f.enabled for f in fusers(gpipe)) and len(gpipe.unet._forward_pre_hooks) == hooks_before
    assert torch.equal(_denoise(gpipe, steps=2), _denoise(gpipe, steps=2))  # nothing left behind


def test_unconditional_rows_get_null_grounding(gpipe):
    spy = _PositionNetSpy(gpipe.unet)
    grounding = GligenGrounding([[CAT, DOG], [DOG]], beta=1.0)
    try:
        _denoise(gpipe, [grounding], batch=2, steps=2)
    finally:
        spy.remove()
    assert spy.masks == [[0, 0, 2, 1]] * 2  # [uncond; cond]: the authors' masks[:condition_len // 2] = 0
    assert [(f.kind, f.objects) for f in grounding.log] == [("cfg", [0, 0, 2, 1])] * 2
    rows = grounding.rows([0, 1], null=True)  # null rows keep the boxes, as the authors' tensors do
    assert rows["masks"].sum() == 0 and rows["boxes"][0, 1].tolist() == pytest.approx(list(DOG.bbox))


def _guidance(pipe, elements=(0, 1)):
    tok = pipe.tokenizer
    targets = [ImageTargets((ObjectTarget.for_phrase(tok, p, p.split(" with ")[1], b),)) if e in elements
               else ImageTargets() for e, (p, b) in enumerate(zip(PROMPTS, (CAT, DOG)))]
    return BoxGuidance(targets, GuidanceConfig(loss_threshold=0.0, iterations=(1,), guidance_steps=2))


@pytest.mark.parametrize("mode", ["null", "boxes"])
def test_guidance_forwards_are_grounded_null_like_the_authors_or_on_the_boxes(gpipe, mode):
    spy = _PositionNetSpy(gpipe.unet)
    grounding = GligenGrounding([[CAT, DOG], [DOG]], beta=1.0, guidance_grounding=mode)
    try:  # only element 1 is guided: its guidance forward has one row, GUIDED_ELEMENTS says which
        _denoise(gpipe, [grounding, _guidance(gpipe, elements=(1,))], batch=2, steps=3)
    finally:
        spy.remove()
    guided = [m for m, grad in zip(spy.masks, spy.grad) if grad]
    assert guided == ([[0]] if mode == "null" else [[1]]) * 2  # steps 0 and 1 are guided
    assert [f.kind for f in grounding.log] == ["guidance", "cfg"] * 2 + ["cfg"]


def test_grounding_must_come_before_the_hooks_that_run_the_unet(gpipe):
    with pytest.raises(RuntimeError, match="before the hooks"):
        _denoise(gpipe, [_guidance(gpipe), GligenGrounding([[CAT], [DOG]])], batch=2, steps=2)


def test_more_than_30_objects_or_a_bad_beta_is_an_error():
    GligenGrounding([[CAT] * MAX_OBJECTS])
    with pytest.raises(ValueError, match="at most 30 objects"):
        GligenGrounding([[CAT], [CAT] * (MAX_OBJECTS + 1)])
    with pytest.raises(ValueError, match="beta"):
        GligenGrounding([[CAT]], beta=1.5)


def test_a_model_without_gligen_fails_before_any_denoising(pipe, layout, monkeypatch):
    def no_denoising(*args, **kwargs):
        raise AssertionError("denoising started")

    monkeypatch.setattr("lmd_utils.gligen.denoise", no_denoising)
    monkeypatch.setattr(pipeline, "run_per_box", no_denoising)
    with pytest.raises(NotGligenError, match=r"^gligen needs a GLIGEN model \(a UNet with gated self-attention"):
        gligen_baseline(pipe, layout, progress=False)
    with pytest.raises(NotGligenError, match="LMD\\+") as info:
        generate(pipe, layout, config=LMDConfig.lmd_plus(), progress=False)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    monkeypatch.undo()
    with pytest.raises(NotGligenError):  # the hook itself checks too, before the first step
        _denoise(pipe, [GligenGrounding([[CAT]])])


def test_gligen_baseline_end_to_end(gpipe, layout):
    config = LMDConfig(height=128, width=128).with_steps(4)
    result = gligen_baseline(gpipe, layout, seed=1, config=config, progress=False)
    assert result.method == "gligen" and result.image.shape == (3, 128, 128)
    assert torch.isfinite(result.image).all() and 0 <= result.image.min() <= result.image.max() <= 1
    assert result.prompts == ["a park with a cat, a dog"] and result.negative_prompt.startswith("birds, artifacts")
    empty = gligen_baseline(gpipe, Layout([], "a quiet park"), seed=1, config=config, progress=False)
    assert torch.equal(empty.image, generate_sd(gpipe, "a quiet park", 1, config, empty.negative_prompt, False))


def test_lmd_plus_settings():
    config = LMDConfig.lmd_plus()
    assert (config.gligen_beta, config.placement, config.alignment, config.noise_blend_ratio) == (
        GLIGEN_BETA, "box", "none", 0.1)
    assert config.per_box_guidance.guidance_steps == 0 and config.with_steps(4).per_box_guidance.guidance_steps == 0
    assert config.overall_guidance == LMDConfig().overall_guidance and config.frozen_ratio == 0.5
    assert config.attention_transfer and LMDConfig().gligen_beta is None
    assert LMDConfig().plus() == config  # plus(): LMD+'s changes on top of any configuration (e.g. a model's own)
    own = LMDConfig(num_inference_steps=7, guidance_scale=4.0).plus()
    assert (own.num_inference_steps, own.guidance_scale, own.gligen_beta) == (7, 4.0, GLIGEN_BETA)
    with pytest.raises(ValueError, match="placement='box'"):
        LMDConfig.lmd_plus(placement="authors")
    with pytest.raises(ValueError, match="gligen_beta"):
        LMDConfig(gligen_beta=2.0)
    assert alignment_shift(torch.ones(4, 4).tril().bool(), CAT, rule="none") == alignment_shift(
        torch.ones(4, 4).bool(), DOG, rule="none")
    assert alignment_shift(torch.ones(4, 4).bool(), DOG, rule="none").dx == 0


def test_lmd_plus_grounds_both_passes_end_to_end(gpipe, layout, monkeypatch):
    made = []

    class Recorded(GligenGrounding):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(per_box, "GligenGrounding", Recorded)
    monkeypatch.setattr(pipeline, "GligenGrounding", Recorded)
    config = LMDConfig.lmd_plus(height=128, width=128).with_steps(4)
    result = generate(gpipe, layout, seed=1, config=config, progress=False)
    assert result.method == "lmd+" and result.image.shape == (3, 128, 128) and torch.isfinite(result.image).all()
    assert all((a.shift.dx, a.shift.dy) == (0, 0) for a in result.aligned)  # drawn in their boxes, left there
    assert not any(g.log for g in result.per_box.guidance)  # no per-box guidance (their max_index_step=0)
    boxes, overall = made
    assert boxes.boxes == [[CAT], [DOG]] and overall.boxes == [[CAT, DOG]]
    assert {f.kind for f in boxes.log} == {"cfg"} and {f.step for f in boxes.log} == {0}  # int(0.4 * 4) = 1
    assert {f.kind for f in overall.log} == {"guidance", "cfg"}


def test_default_generate_runs_no_grounding_and_beta_zero_changes_nothing(gpipe, pipe, layout, monkeypatch):
    config = LMDConfig.lmd_plus(height=128, width=128).with_steps(3)
    lmd = generate(gpipe, layout, seed=2, config=LMDConfig.lmd_plus(gligen_beta=None, height=128, width=128)
                   .with_steps(3), progress=False)
    zero = generate(gpipe, layout, seed=2, config=LMDConfig.lmd_plus(gligen_beta=0.0, height=128, width=128)
                    .with_steps(3), progress=False)
    assert lmd.method == "lmd" and zero.method == "lmd+" and config.gligen_beta == GLIGEN_BETA
    assert torch.equal(lmd.image, zero.image) and torch.equal(lmd.overall_latents, zero.overall_latents)

    def no_grounding(*args, **kwargs):
        raise AssertionError("the default path built a grounding hook")

    monkeypatch.setattr(per_box, "GligenGrounding", no_grounding)
    monkeypatch.setattr(pipeline, "GligenGrounding", no_grounding)
    default = generate(pipe, layout, seed=2, config=LMDConfig(height=128, width=128).with_steps(3), progress=False)
    assert default.method == "lmd" and default.config.gligen_beta is None


def test_load_pipeline_reads_a_saved_gligen_folder(gpipe, tmp_path):
    saved = StableDiffusionGLIGENPipeline(vae=gpipe.vae, text_encoder=gpipe.text_encoder, tokenizer=gpipe.tokenizer,
                                          unet=gpipe.unet, scheduler=gpipe.scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    saved.save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path), device="cpu", dtype=torch.float32)
    assert is_gligen(loaded) and len(fusers(loaded)) == len(fusers(gpipe))
    ours, theirs = gpipe.unet.state_dict(), loaded.unet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_grounding_figure_shows_one_token_per_box_and_the_grounded_steps():
    from matplotlib.colors import to_rgba

    from lmd_utils.viz.gligen import grounding_figure

    fig = grounding_figure(Layout([CAT, DOG], "a park"), num_steps=15)
    left, right = fig.axes
    assert "2 grounding tokens" in left.get_title() and left.get_xlabel().count("token") == 2
    greens = [p for p in right.patches if p.get_facecolor() == to_rgba("tab:green")]
    assert len(right.patches) == 15 and len(greens) == int(0.4 * 15) == 6
    with pytest.raises(ValueError):
        grounding_figure(Layout([CAT], ""), num_steps=0)
