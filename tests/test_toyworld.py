"""Toy world: scenes, exact detector, tiny pixel-space pipeline and its training loop (all on CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmd_utils.attention import ALL_LAYERS, AttentionRecord, AttentionStore, capture_cross_attention
from lmd_utils.layout import Box, Layout
from lmd_utils.toyworld.detector import check_caption, connected_components, detect, detect_boxes, matches_scene
from lmd_utils.toyworld.model import ToyWorldConfig, build_tokenizer, build_toyworld_pipeline
from lmd_utils.toyworld.scenes import (CAPTION_MIX, COLOURS, PLURAL, VOCABULARY, generate_scene, generate_scenes,
                                       images_to_tensor, parse_caption, parse_phrase, render_layout,
                                       tensor_to_images)
from lmd_utils.toyworld.train import (attention_box_loss, export_checkpoint, main,
                                     span_targets)


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(200, seed=11)


def test_scenes_are_deterministic_from_seed():
    a, b, c = generate_scene(5), generate_scene(5), generate_scene(6)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.layout.to_dict() == b.layout.to_dict()
    assert not np.array_equal(a.image, c.image)
    assert [s.caption for s in generate_scenes(20, seed=3)] == [s.caption for s in generate_scenes(20, seed=3)]


def test_caption_mix_is_mostly_single_objects():
    kinds = [s.kind for s in generate_scenes(1000, seed=1)]
    for kind, p in CAPTION_MIX.items():
        assert abs(kinds.count(kind) / 1000 - p) < 0.05, kind
    assert kinds.count("single") > kinds.count("pair") > kinds.count("empty") > 0


def test_boxes_match_rendered_pixels(scenes):
    for scene in scenes:
        background = np.all(scene.image == np.array(scene.background_rgb, dtype=np.uint8), axis=-1)
        covered = np.zeros_like(background)
        for obj in scene.objects:
            rows, cols = obj.box.pixel_slices(*background.shape)
            crop = np.all(scene.image[rows, cols] == np.array(COLOURS[obj.colour], dtype=np.uint8), axis=-1)
            # tight box: the shape touches all four sides of its box
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
            assert not covered[rows, cols].any(), "objects must not overlap"
            covered[rows, cols] = True
        assert np.array_equal(~background, ~background & covered), "every object pixel lies in a box"


def test_spatial_scenes_respect_their_relation():
    for scene in generate_scenes(60, seed=2, kind="spatial"):
        _, wanted = parse_caption(scene.caption)
        centre = {o.phrase: o.box.center for o in scene.objects}
        axis = 0 if {wanted[0].position, wanted[1].position} == {"left", "right"} else 1
        low = [w for w in wanted if w.position in ("left", "top")][0]
        high = [w for w in wanted if w.position in ("right", "bottom")][0]
        assert centre[low.phrase][axis] < centre[high.phrase][axis]


def test_captions_parse_with_the_grammar(scenes):
    for scene in scenes:
        kind, wanted = parse_caption(scene.caption)
        assert kind == scene.kind
        if kind != "empty":
            assert sorted(o.phrase for w in wanted for o in [w] * w.count) == sorted(o.phrase for o in scene.objects)
    assert parse_caption("three green squares")[1][0].count == 3
    assert parse_phrase("a blue triangle") == ("blue", "triangle")
    for bad in ["a purple circle", "a red circle on the left and a blue square on the top", "red"]:
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_span_words_are_single_tokens_that_name_their_objects(scenes):
    tok = build_tokenizer(ToyWorldConfig())
    for word in VOCABULARY:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    for scene in scenes[:50]:
        tokens = tok.convert_ids_to_tokens(tok(scene.caption).input_ids)
        assert len(tokens) <= tok.model_max_length
        for span in scene.spans:
            named = {tokens[t].removesuffix("</w>") for t in span.token_positions()}
            for j in span.object_indices:
                assert scene.objects[j].colour in named
                assert {scene.objects[j].shape, PLURAL[scene.objects[j].shape]} & named


def test_detector_is_exact_on_clean_scenes(scenes):
    exact = sum(matches_scene(detect(s.image), s) for s in scenes)
    assert exact / len(scenes) >= 0.99  # measured: 2000/2000 scenes
    assert all(check_caption(s.caption, detect(s.image)) for s in scenes)


def _ragged(mask: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """``mask`` with ``k`` random pixels added just outside its outline and ``k`` removed from it: the 1-pixel
    spurs and notches generated images have."""
    m = mask.copy()
    p = np.pad(m, 1)
    touches = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    for cells, value in ((np.argwhere(touches & ~m), True), (np.argwhere(m & ~interior), False)):
        for y, x in cells[rng.choice(len(cells), k, replace=False)]:
            m[y, x] = value
    return m


def test_shape_features_survive_ragged_outlines():
    from lmd_utils.toyworld.detector import classify_shape, silhouette_features
    from lmd_utils.toyworld.scenes import SHAPES, shape_mask

    rng = np.random.default_rng(0)
    clean_right, tight_right, trimmed_right = [], [], []
    for _ in range(600):
        shape, size = SHAPES[rng.integers(3)], int(rng.integers(7, 14))
        clean = shape_mask(shape, 8, 8, size)
        clean_right.append(classify_shape(*silhouette_features(clean)) == shape)
        ragged = _ragged(clean, rng, int(rng.integers(1, 3)))
        tight_right.append(classify_shape(*silhouette_features(ragged, trim=0.0)) == shape)
        trimmed_right.append(classify_shape(*silhouette_features(ragged)) == shape)
    assert all(clean_right)
    tight, trimmed = np.mean(tight_right), np.mean(trimmed_right)
    print(f"ragged outlines: tight box {tight:.3f}, trimmed {trimmed:.3f}")
    assert trimmed >= 0.95 and trimmed - tight >= 0.2  # measured: 0.98 vs 0.74 (tight box)


def test_detector_reads_tensors_and_ignores_small_noise():
    scene = generate_scene(42, kind="pair")
    noisy = scene.image.copy()
    noisy[0, 0] = COLOURS["red"] if scene.objects[0].colour != "red" else COLOURS["blue"]  # one stray pixel
    assert matches_scene(detect(noisy), scene)
    assert matches_scene(detect(scene.tensor()), scene)  # [-1, 1] tensor round trip
    decoded = (scene.tensor() + 1) / 2  # what decode_latents / LMDResult.image give: [0, 1]
    assert matches_scene(detect(decoded, value_range=(0, 1)), scene)
    assert not matches_scene(detect(decoded), scene)  # read as [-1, 1] the colours wash out: the range matters
    with pytest.raises(ValueError, match="value_range"):
        detect(decoded, value_range=(1, 0))
    assert np.array_equal(tensor_to_images(images_to_tensor([scene.image]))[0], scene.image)
    assert [p for p, _ in detect_boxes(scene.image)] == [d.phrase for d in detect(scene.image)]


def test_check_caption_rejects_wrong_counts_and_sides():
    scene = generate_scene(0, kind="count")
    dets = detect(scene.image)
    n = len(scene.objects)
    colour, shape = scene.objects[0].colour, scene.objects[0].shape
    words = {2: "two", 3: "three", 4: "four"}
    assert check_caption(f"{words[n]} {colour} {PLURAL[shape]}", dets)
    other = 2 if n != 2 else 3
    assert not check_caption(f"{words[other]} {colour} {PLURAL[shape]}", dets)
    spatial = generate_scene(1, kind="spatial")
    swapped = (spatial.caption.replace("left", "@").replace("right", "left").replace("@", "right")
               .replace("top", "@").replace("bottom", "top").replace("@", "bottom"))
    assert check_caption(spatial.caption, detect(spatial.image))
    assert not check_caption(swapped, detect(spatial.image))


def test_connected_components_counts_separate_blobs():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0:2, 0:2] = True
    mask[3:6, 3] = True
    mask[1, 5] = True
    labels, n = connected_components(mask)
    assert n == 3 and set(np.unique(labels)) == {0, 1, 2, 3}


def test_render_layout_draws_what_the_layout_says():
    layout = Layout([Box("a red circle", 0.0, 0.0, 0.375, 0.375), Box("a blue square", 0.5, 0.5, 0.875, 0.875),
                     Box("a green triangle", 0.0, 20 / 32, 10 / 32, 30 / 32)])  # pixel-aligned
    found = detect_boxes(render_layout(layout))
    assert sorted((p, b.bbox) for p, b in found) == sorted((b.phrase, b.bbox) for b in layout.boxes)
    with pytest.raises(ValueError):
        render_layout(Layout([Box("a dog", 0, 0, 0.5, 0.5)]))


def _store(*maps: torch.Tensor) -> AttentionStore:
    """An AttentionStore holding ``(batch, heads, H·W, tokens)`` maps as records of square layers."""
    store = AttentionStore(layers=ALL_LAYERS, keep="all")
    for i, m in enumerate(maps):
        res = int(round(m.shape[2] ** 0.5))
        store.records.append(AttentionRecord(f"layer{i}", 0, m.unflatten(2, (res, res))))
    return store


def test_attention_box_loss_is_zero_inside_and_one_minus_area_squared_for_uniform_maps():
    scene = generate_scene(3, kind="single")
    tokens, res = 16, 8
    masks, weights = span_targets([scene], tokens, res)
    assert weights.sum() == 2  # "red", "circle"
    inside = masks[0][None, None].repeat(1, 2, 1, 1) + 1e-9  # (batch, heads, N, T): all mass in the box
    assert attention_box_loss(_store(inside), [scene]).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 2, res * res, tokens), 1 / tokens)
    area = masks[0][:, weights[0].argmax()].mean().item()
    assert 0 < area < 0.5
    expected = 2 * (1 - area) ** 2  # two layers
    assert attention_box_loss(_store(uniform, uniform), [scene]).item() == pytest.approx(expected, rel=1e-5)


def test_pipeline_is_pixel_space_with_cross_attention_at_two_resolutions():
    pipe = build_toyworld_pipeline(seed=0, config=ToyWorldConfig.tiny())
    assert pipe.vae is None and pipe.unet.config.in_channels == 3
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with capture_cross_attention(pipe.unet, ALL_LAYERS, keep="all") as store:
        pipe.unet(torch.zeros(1, 3, 32, 32), 10, encoder_hidden_states=pipe.text_encoder(ids)[0])
    sizes = {r.probs.shape[2] * r.probs.shape[3] for r in store.records}
    assert sizes == {16 * 16, 8 * 8}


def test_training_smoke_resume_equals_uninterrupted_and_export_reloads(tmp_path):
    from diffusers import StableDiffusionPipeline

    common = ["--batch", "4", "--config", "tiny", "--sample-every", "0", "--seed", "1"]
    assert main(["--steps", "3", "--out", str(tmp_path / "straight"), *common]) == 0
    assert main(["--steps", "2", "--out", str(tmp_path / "split"), *common]) == 0
    with pytest.raises(SystemExit):  # refuses to overwrite a run without --resume
        main(["--steps", "3", "--out", str(tmp_path / "split"), *common])
    assert main(["--steps", "3", "--out", str(tmp_path / "split"), "--resume", *common]) == 0
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert straight["step"] == split["step"] == 3
    for name, value in straight["unet"].items():
        assert torch.allclose(value, split["unet"][name], atol=1e-6), name
    lines = (tmp_path / "split" / "loss.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in lines[1:]] == ["1", "2", "3"]
    assert np.isfinite([float(row.split(",")[3]) for row in lines[1:]]).all()

    assert [(h["from_step"], h["to_step"]) for h in split["history"]] == [(0, 2), (2, 3)]  # one entry per launch
    assert all(h["lr"] == 5e-4 and h["threads"] >= 1 and h["hours"] >= 0 for h in split["history"])
    folder = export_checkpoint(tmp_path / "split", tmp_path / "model")
    card = (folder / "README.md").read_text()
    assert card.count("3 at batch 4") == 1
    assert "| 0–2 | 0.0005 |" in card and "| 2–3 | 0.0005 |" in card  # the card lists the training parts
    pipe = StableDiffusionPipeline.from_pretrained(folder, vae=None, safety_checker=None)
    ema = split["ema"]["shadow_params"]
    reloaded = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    assert len(ema) == len(reloaded)
    assert all(torch.equal(e, p.detach()) for e, p in zip(ema, reloaded))
    assert not torch.equal(ema[0], split["unet"][next(iter(split["unet"]))])  # EMA, not raw weights


def test_a_new_run_can_start_from_an_exported_model(tmp_path):
    common = ["--batch", "2", "--config", "tiny", "--sample-every", "0", "--seed", "1"]
    assert main(["--steps", "2", "--out", str(tmp_path / "a"), *common, "--export", str(tmp_path / "exported")]) == 0
    assert main(["--steps", "3", "--out", str(tmp_path / "b"), *common, "--init-from", str(tmp_path / "exported")]) == 0
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert state["step"] == 3  # continued from the exported step 2, one more step


def test_size_range_shrinks_in_crowded_scenes_and_matches_the_drawn_shapes():
    from lmd_utils.toyworld.scenes import box_sides, generate_scene, size_range

    assert [size_range(n) for n in (1, 2, 3, 4)] == [(7, 13), (7, 13), (7, 11), (7, 9)]
    assert box_sides(4) == (7 / 32, 9 / 32) and box_sides(0) == box_sides(1)
    for seed in range(40):
        scene = generate_scene(seed)
        lo, hi = size_range(len(scene.objects))
        for o in scene.objects:
            side = max(o.box.width, o.box.height) * 32
            assert lo - 1 <= side <= hi, (seed, o)
