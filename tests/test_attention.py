"""attention.py: capture leaves the UNet untouched, records true probabilities, truncation, token indices, labels
and localisation scores."""

import copy

import pytest
import torch

from lmd_utils.attention import (GUIDANCE_LAYERS, MASK_LAYERS, AttentionStore, CaptureProcessor,
                                 capture_cross_attention, cross_attention_modules, localisation_by_layer,
                                 mass_inside_box, object_map, phrase_token_indices, resolve_layers,
                                 run_unet_until_captured, short_layer_name, token_labels, word_token_indices)
from lmd_utils.models import TINY_VOCABULARY, build_tiny_pipeline, encode_prompts, initial_noise
from lmd_utils.offline_tokenizer import build_clip_tokenizer
from hand_made_maps import COARSE, FINE, LEFT, two_layer_store


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def inputs(pipe):
    z = initial_noise(pipe, 2, 128, 128, seed=0)
    emb = encode_prompts(pipe, ["", "a realistic scene with a cat"])
    return torch.cat([z[:1], z[:1]]), emb  # a CFG batch: [uncond; cond] on the same latent


def _processors(unet):
    return {n: m.processor for n, m in unet.named_modules() if hasattr(m, "set_processor")}


def _run(unet, z, emb, t=500):
    with torch.no_grad():
        return unet(z, t, encoder_hidden_states=emb).sample


def test_capture_is_bit_identical_and_only_touches_chosen_layers(pipe, inputs):
    z, emb = inputs
    before_procs = _processors(pipe.unet)
    plain = _run(pipe.unet, z, emb)
    with capture_cross_attention(pipe.unet, GUIDANCE_LAYERS) as store:
        during = _processors(pipe.unet)
        captured = _run(pipe.unet, z, emb)
    changed = {n for n in before_procs if during[n] is not before_procs[n]}
    assert changed == set(resolve_layers(pipe.unet, GUIDANCE_LAYERS)) and len(changed) == 4
    assert all(isinstance(during[n], CaptureProcessor) for n in changed)
    assert type(before_procs[next(iter(changed))]).__name__ == "AttnProcessor2_0"
    assert torch.equal(captured, plain)  # outputs bit-identical while capturing
    assert _processors(pipe.unet) == before_procs  # and the very same processor objects after
    assert torch.equal(_run(pipe.unet, z, emb), plain)
    assert len(store) == 4


def test_processors_restored_after_an_exception(pipe, inputs):
    z, emb = inputs
    before = _processors(pipe.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_cross_attention(pipe.unet, "all"):
            _run(pipe.unet, z, emb)
            raise RuntimeError("boom")
    assert _processors(pipe.unet) == before
    assert not pipe.unet._forward_pre_hooks  # the size hook is gone too


def test_captured_probs_are_the_layer_softmax(pipe, inputs):
    z, emb = inputs
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    attn = dict(pipe.unet.named_modules())[name]
    seen = {}

    def grab(module, args, kwargs):
        seen["hidden"] = args[0]
        seen["enc"] = kwargs["encoder_hidden_states"]

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with capture_cross_attention(pipe.unet, [name], keep="all") as store:
            _run(pipe.unet, z, emb)
    finally:
        handle.remove()
    probs = store.get(name, 0)  # (B, heads, H, W, T)
    b, heads, h, w, t = probs.shape
    assert (b, heads, h, w, t) == (2, 2, 2, 2, 77)  # 128 px → 16 latent → 2×2 in the mid block
    # diffusers' reference computation (AttnProcessor): baddbmm + softmax on (B·heads, N, T)
    q = attn.head_to_batch_dim(attn.to_q(seen["hidden"]))
    k = attn.head_to_batch_dim(attn.to_k(seen["enc"]))
    ref = attn.get_attention_scores(q, k).view(b, heads, h * w, t)
    torch.testing.assert_close(probs.flatten(2, 3), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(b, heads, h, w))


def test_keep_cond_and_token_selection(pipe, inputs):
    z, emb = inputs
    layers = ["up_blocks.1.attentions.0"]
    with capture_cross_attention(pipe.unet, layers, keep="all") as full:
        _run(pipe.unet, z, emb)
    with capture_cross_attention(pipe.unet, layers, keep="cond", token_indices=[6, 1]) as cond:
        _run(pipe.unet, z, emb)
    with capture_cross_attention(pipe.unet, layers, keep="all", token_indices=[[1], [6]]) as per:
        _run(pipe.unet, z, emb)
    a = full.records[0].probs
    assert not torch.allclose(a[0], a[1])  # uncond and cond rows differ
    torch.testing.assert_close(cond.records[0].probs, a[1:, ..., [6, 1]])
    torch.testing.assert_close(per.records[0].probs[:, ..., 0], torch.stack([a[0, ..., 1], a[1, ..., 6]]))
    with pytest.raises(ValueError, match="per-element"):
        with capture_cross_attention(pipe.unet, layers, keep="all", token_indices=[[1], [2], [3]]):
            _run(pipe.unet, z, emb)


def test_grid_follows_a_non_square_latent_and_aggregate(pipe):
    z = initial_noise(pipe, 1, 128, 192, seed=1)  # latent 16×24
    emb = encode_prompts(pipe, ["a dog"])
    with capture_cross_attention(pipe.unet, "all", keep="all") as store:
        store.set_step(3)
        _run(pipe.unet, z, emb)
        store.set_step(4)
        _run(pipe.unet, z * 0.5, emb)
    shapes = {r.layer.split(".transformer")[0]: tuple(r.probs.shape[2:4]) for r in store.records}
    assert shapes["down_blocks.0.attentions.0"] == (16, 24)
    assert shapes["down_blocks.2.attentions.1"] == (4, 6)
    assert shapes["mid_block.attentions.0"] == (2, 3)
    assert shapes["up_blocks.1.attentions.0"] == (4, 6)
    agg = store.aggregate(MASK_LAYERS, steps=[3, 4], size=(8, 12))
    assert agg.shape == (1, 77, 8, 12)
    step3 = store.aggregate(MASK_LAYERS, steps=[3])
    step4 = store.aggregate(MASK_LAYERS, steps=[4])
    raw3 = store.get("down_blocks.2.attentions.1", 3).mean(1).permute(0, 3, 1, 2)
    torch.testing.assert_close(step3, raw3)  # native size: no resampling
    torch.testing.assert_close(store.aggregate(MASK_LAYERS, steps=[3, 4]), (step3 + step4) / 2)
    torch.testing.assert_close(store.aggregate(MASK_LAYERS, steps=[3], reduce_heads="sum"), 2 * step3)
    assert store.aggregate().shape == (1, 77, 16, 24)  # default size: the largest grid recorded
    with pytest.raises(ValueError, match="no records"):
        store.aggregate(MASK_LAYERS, steps=[9])
    store.clear()
    assert len(store) == 0


def test_truncated_forward_gives_the_same_maps_and_skips_the_rest(pipe, inputs):
    z, emb = inputs
    calls = []
    handle = pipe.unet.up_blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        outs = {}
        for truncate in (False, True):
            store = AttentionStore(GUIDANCE_LAYERS, keep="all", stop_after_last_layer=truncate)
            with torch.no_grad(), capture_cross_attention(pipe.unet, store=store):
                outs[truncate] = (run_unet_until_captured(pipe.unet, z, 500, emb, store), store)
    finally:
        handle.remove()
    assert len(calls) == 1  # only the untruncated run reached up_blocks.2
    assert outs[True][0] is None and outs[False][0].shape == z.shape
    full, cut = outs[False][1].records, outs[True][1].records
    assert [r.layer for r in full] == [r.layer for r in cut]
    assert all(torch.equal(a.probs, b.probs) for a, b in zip(full, cut))


def test_keep_grad_gives_differentiable_maps(pipe, inputs):
    z, emb = inputs
    x = z[:1].clone().requires_grad_(True)
    with capture_cross_attention(pipe.unet, GUIDANCE_LAYERS, keep="all", keep_grad=True,
                                 stop_after_last_layer=True) as store:
        run_unet_until_captured(pipe.unet, x, 500, emb[1:], store)
    maps = store.aggregate()
    (grad,) = torch.autograd.grad(maps[0, 6].sum(), x)
    assert grad.abs().sum() > 0
    with capture_cross_attention(pipe.unet, GUIDANCE_LAYERS, keep="all") as detached:
        pipe.unet(x, 500, encoder_hidden_states=emb[1:])
    assert not detached.records[0].probs.requires_grad


def test_resolve_layers(pipe):
    assert len(cross_attention_modules(pipe.unet)) == 16
    assert len(resolve_layers(pipe.unet, "all")) == 16
    assert len(resolve_layers(pipe.unet, ("all",))) == 16  # "all" inside a sequence (a JSON list) selects all
    full = "up_blocks.1.attentions.2.transformer_blocks.0.attn2"
    assert list(resolve_layers(pipe.unet, [full])) == [full]
    assert list(resolve_layers(pipe.unet, "up_blocks.1.attentions.2")) == [full]
    assert len(resolve_layers(pipe.unet, "up_blocks.1")) == 3
    with pytest.raises(ValueError, match="down_blocks.2.attentions.1"):  # the message lists what exists
        resolve_layers(pipe.unet, "down_blocks.3.attentions.0")


# -- token indices -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(pipe):
    return pipe.tokenizer


def _tokens(tok, prompt, idx):
    ids = tok(prompt).input_ids
    return [tok.convert_ids_to_tokens(ids[i]) for i in idx]


def test_whole_word_match_skips_cat_inside_bobcat(tok):
    prompt = "a bobcat and a cat"
    tokens = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "bo", "b", "cat</w>", "and</w>", "a</w>", "cat</w>",
                      "<|endoftext|>"]  # the token "cat" hides in bobcat: a substring match binds it
    idx = phrase_token_indices(tok, prompt, "a cat")
    assert idx == [7] and _tokens(tok, prompt, idx) == ["cat</w>"]
    assert phrase_token_indices(tok, prompt, "a cat", skip_articles=False) == [6, 7]
    assert phrase_token_indices(tok, prompt, "bobcat") == [2, 3, 4]
    assert word_token_indices(tok, prompt, "a bobcat", last_token_only=True) == [4]


def test_phrase_also_in_the_background_prompt(tok):
    background = "a photo of a cat on a table"
    prompt = f"{background} with a cat"
    idx = phrase_token_indices(tok, prompt, "a cat")
    assert idx == [len(tok(prompt).input_ids) - 2]  # the last one, after the background
    assert phrase_token_indices(tok, prompt, "a cat", start=len(background)) == idx
    # "a cat" must not match inside "a cats": whole words only
    assert phrase_token_indices(tok, "a cats and a Cat", "a cat") == [5]  # case-insensitive


def test_word_token_indices_and_errors(tok):
    prompt = "a realistic scene with a red cat and a blue dog"
    assert _tokens(tok, prompt, word_token_indices(tok, prompt, "a red cat")) == ["cat</w>"]
    assert _tokens(tok, prompt, word_token_indices(tok, prompt, "a red cat", words=["red"])) == ["red</w>"]
    assert _tokens(tok, prompt, phrase_token_indices(tok, prompt, "a blue dog")) == ["blue</w>", "dog</w>"]
    with pytest.raises(ValueError, match="does not occur"):
        phrase_token_indices(tok, prompt, "a green cat")
    with pytest.raises(ValueError, match="not a word"):
        word_token_indices(tok, prompt, "a red cat", words=["dog"])
    short = build_clip_tokenizer(["a", "cat", "dog", "with"], model_max_length=6)
    with pytest.raises(ValueError, match="truncated"):
        phrase_token_indices(short, "a dog with a dog with a cat", "a cat")
    assert phrase_token_indices(tok, "a cat", "a") == [1]  # a phrase of articles only keeps them
    # sentence punctuation is not part of a word
    assert _tokens(tok, "with a cat.", word_token_indices(tok, "with a cat.", "a cat.")) == ["cat</w>"]
    with pytest.raises(ValueError, match="no words"):
        phrase_token_indices(tok, "a cat .", ".")


# -- labels and localisation scores (notebook 01; stores filled by hand, no model) ---------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer(TINY_VOCABULARY)


def test_short_names_and_token_labels(tokenizer):
    assert short_layer_name(FINE) == "up_blocks.1.attentions.0"
    assert short_layer_name("up_blocks.1.attentions.0") == "up_blocks.1.attentions.0"
    assert token_labels(tokenizer, "a red cat") == ["⟨sot⟩", "a", "red", "cat", "⟨eot⟩"]
    assert token_labels(tokenizer, "a red cat", include_end=False) == ["⟨sot⟩", "a", "red", "cat"]
    spelt = token_labels(tokenizer, "a zebu")  # not in the vocabulary: split into pieces, no "</w>" left
    assert spelt[:2] == ["⟨sot⟩", "a"] and "".join(spelt[2:-1]) == "zebu" and len(spelt) > 4
    assert all("</w>" not in s for s in spelt)


def test_mass_inside_box_numbers():
    mask = LEFT.mask(4, 4)
    assert mass_inside_box(torch.ones(4, 4), mask).item() == pytest.approx(0.5)  # uniform: the box's area
    one_hot = torch.zeros(4, 4)
    one_hot[2, 1] = 0.3
    assert mass_inside_box(one_hot, mask).item() == pytest.approx(1.0)
    assert mass_inside_box(one_hot.flip(-1), mask).item() == pytest.approx(0.0)
    batch = torch.stack([torch.ones(4, 4), one_hot, one_hot.flip(-1)])[:, None].expand(3, 2, 4, 4)
    torch.testing.assert_close(mass_inside_box(batch, mask), torch.tensor([[0.5] * 2, [1.0] * 2, [0.0] * 2]))
    assert mass_inside_box(torch.zeros(4, 4), mask).item() == 0.0  # an empty map: 0, not NaN


def test_object_map_is_the_head_and_token_mean():
    probs = torch.rand(3, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(object_map(probs, [2, 5]), probs.mean(0)[..., [2, 5]].mean(-1))


def test_localisation_by_layer_scores_each_layer_and_step():
    store = two_layer_store()
    objects = [[([1], LEFT)], [([1], LEFT)]]
    scores = localisation_by_layer(store, objects)
    assert list(scores) == [FINE, COARSE]
    # token 1 is averaged with nothing else: FINE holds all its mass in the box, COARSE half (the box's area)
    torch.testing.assert_close(scores[FINE], torch.ones(2))
    torch.testing.assert_close(scores[COARSE], torch.full((2,), 0.5))
    # token 0 has the complement: nothing of FINE's inside (its in-box cells are 0), half of COARSE's
    complement = localisation_by_layer(store, [[([0], LEFT)], []], steps=[1])
    assert complement[FINE].shape == (1,) and complement[COARSE].item() == pytest.approx(0.5)
    assert complement[FINE].item() < 0.5
    with pytest.raises(ValueError, match="no objects"):
        localisation_by_layer(store, [[], []])
    with pytest.raises(ValueError, match="3 elements"):
        localisation_by_layer(store, [[([1], LEFT)]] * 3)


def test_cross_attention_modules_are_found_once_and_again_when_the_unet_changes():
    unet = build_tiny_pipeline(seed=0).unet
    first = cross_attention_modules(unet)
    assert cross_attention_modules(unet) == first and cross_attention_modules(unet) is not first  # a copy each time
    name = next(iter(first))
    parent, _, child = name.rpartition(".")
    replacement = copy.deepcopy(first[name])
    setattr(unet.get_submodule(parent), child, replacement)  # a module swapped after the first walk
    assert cross_attention_modules(unet)[name] is replacement

