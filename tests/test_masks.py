"""Tests for lmd_utils.masks: threshold masks, the SAM selection rule, and both SAM backends on random weights."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import partial

import numpy as np
import pytest
import torch

from lmd_utils.layout import Box
from lmd_utils.sam import SamBackend, SegmentAnythingSam, TransformersSam, as_uint8_image
from lmd_utils.masks import (
    ObjectMask,
    argmax_points,
    box_masks,
    extract_object_masks,
    gaussian_blur,
    mask_iou,
    normalized_threshold_masks,
    resize_maps,
    resize_masks,
    sam_refine_mask,
    select_sam_mask,
    threshold_masks,
    threshold_object_mask,
    threshold_sweep,
)
from hand_made_maps import blob

BOXES = [Box("cat", 0.1, 0.2, 0.6, 0.7), Box("dog", 0.5, 0.05, 0.95, 0.5), Box("ball", 0.0, 0.6, 0.3, 1.0)]
BOX = Box("a red circle", 0.25, 0.25, 0.75, 0.75)  # the threshold sweep's box


# -- Gaussian blur ------------------------------------------------------------------------------------------
# scipy.ndimage.gaussian_filter(np.arange(20.).reshape(5, 4) ** 2 / 100, sigma) (mode="reflect", truncate=4)
SCIPY_SIGMA_1_5 = [
    [0.2945635, 0.33284818, 0.38867829, 0.4294549],
    [0.55287991, 0.60718136, 0.68563235, 0.74242573],
    [1.03393339, 1.11376317, 1.22826846, 1.31059017],
    [1.60245004, 1.70780815, 1.85836773, 1.96621777],
    [2.00264614, 2.12402101, 2.29720148, 2.42106828],
]
SCIPY_SIGMA_0_7 = [
    [0.04762443, 0.07441343, 0.12222783, 0.17104114],
    [0.25813181, 0.33299762, 0.44162401, 0.53851413],
    [0.75818543, 0.89445879, 1.08075912, 1.23905679],
    [1.56275513, 1.76043603, 2.0244103, 2.24411552],
    [2.3736552, 2.61941292, 2.94419918, 3.2119812],
]


@pytest.mark.parametrize("sigma, expected", [(1.5, SCIPY_SIGMA_1_5), (0.7, SCIPY_SIGMA_0_7)])
def test_gaussian_blur_matches_scipy_reflect(sigma, expected):
    a = torch.arange(20, dtype=torch.float64).reshape(5, 4) ** 2 / 100
    out = gaussian_blur(a.float(), sigma)
    assert torch.allclose(out.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_gaussian_blur_batches_keeps_mass_and_constants():
    maps = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = gaussian_blur(maps, 1.5)
    for i in range(4):
        assert torch.allclose(out[i], gaussian_blur(maps[i], 1.5), atol=1e-6)
    # reflect boundary preserves the total and leaves a constant map unchanged
    assert torch.allclose(out.sum((1, 2)), maps.sum((1, 2)), rtol=1e-5)
    assert torch.allclose(gaussian_blur(torch.full((5, 7), 3.0), 2.0), torch.full((5, 7), 3.0))
    assert torch.equal(gaussian_blur(maps, 0.0), maps)


# -- resizing, IoU, box masks ---------------------------------------------------------------------------
def test_resize_masks_rules():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:4, :4] = True  # top-left block fully covered
    m[4:7, 4:8] = True  # bottom-right block 12/16 covered
    m[0, 4] = True  # top-right block 1/16 covered
    assert resize_masks(m, (2, 2), "majority").tolist() == [[True, False], [False, True]]
    assert resize_masks(m, (2, 2), "any").tolist() == [[True, True], [False, True]]
    up = resize_masks(torch.tensor([[True, False], [False, True]]), (4, 4), "nearest")
    assert up.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert resize_maps(torch.ones(3, 4, 4), (8, 8)).shape == (3, 8, 8)


def test_mask_iou_numbers():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True  # 8 cells
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    b[0, :2] = True  # identical
    b[1, 1:3] = True  # overlap 4, union 12
    iou = mask_iou(a, b)
    assert iou.tolist() == pytest.approx([1.0, 4 / 12, 0.0])


def test_box_masks_accepts_boxes_or_masks_and_checks_size():
    m = box_masks(BOXES, 16, 16)
    assert m.shape == (3, 16, 16) and m.dtype == torch.bool
    assert torch.equal(box_masks(m, 16, 16), m)
    with pytest.raises(ValueError):
        box_masks(m, 8, 8)


# -- threshold masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_fraction", [0.75, 0.5, 0.2, 1.0])
def test_threshold_masks_keep_fraction_of_in_box_cells(keep_fraction):
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = threshold_masks(maps, BOXES, keep_fraction=keep_fraction)
    inside = box_masks(BOXES, 16, 16)
    assert masks.shape == (3, 16, 16) and masks.dtype == torch.bool
    assert not (masks & ~inside).any(), "mask leaks outside its box"
    for i in range(3):
        n_in = int(inside[i].sum())
        assert abs(int(masks[i].sum()) - keep_fraction * n_in) <= 1
        kept, dropped = maps[i][masks[i]], maps[i][inside[i] & ~masks[i]]
        if dropped.numel():
            assert kept.min() >= dropped.max()  # the kept cells are the top ones


def test_threshold_masks_single_map_smoothing_and_errors():
    amap = torch.zeros(16, 16)
    amap[8, 8] = 1.0
    m = threshold_masks(amap, [BOXES[0]], keep_fraction=0.1, sigma=1.5)
    assert m.shape == (16, 16) and m[8, 8]
    # with smoothing the kept cells form a blob around the peak
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert (rows.float().mean() - 8).abs() < 1 and (cols.float().mean() - 8).abs() < 1
    with pytest.raises(ValueError):
        threshold_masks(amap, [BOXES[0]], keep_fraction=0.0)
    with pytest.raises(ValueError):
        threshold_masks(torch.full((16, 16), float("nan")), [BOXES[0]])
    with pytest.raises(ValueError):
        threshold_masks(torch.rand(2, 16, 16), BOXES)  # 2 maps, 3 boxes


def test_normalized_threshold_masks_value_range():
    ramp = torch.linspace(0, 1, 16).repeat(16, 1)  # value = column / 15
    box = Box("x", 0.25, 0.25, 0.75, 0.75)  # columns 4..11 → in-box values 4/15..11/15
    m = normalized_threshold_masks(ramp, [box], threshold=0.25)
    inside = box.mask(16, 16, dtype=torch.bool)
    assert not (m & ~inside).any()
    # in-box normalised value (c - 4) / 7 > 0.25  ⇔  c >= 6
    assert m[8].nonzero().flatten().tolist() == list(range(6, 12))
    # whole-map normalisation (the authors' coarse mask): c / 15 > 0.25 ⇔ c >= 4
    assert normalized_threshold_masks(ramp, None)[0].nonzero().flatten().tolist() == list(range(4, 16))
    # a constant map keeps its whole region
    assert torch.equal(normalized_threshold_masks(torch.ones(16, 16), [box]), inside)


def test_argmax_point_maps_cell_centre_to_image_pixels():
    maps = torch.zeros(2, 16, 16)
    maps[0, 3, 10] = 5.0
    maps[1, 12, 3] = 5.0
    maps[1, 2, 2] = 9.0  # outside box 1 below → ignored when restricted
    pts = argmax_points(maps, image_size=(512, 512), sigma=1.5)
    assert pts[0].tolist() == [pytest.approx(10.5 * 32), pytest.approx(3.5 * 32)]
    inside = argmax_points(maps, (512, 256), sigma=1.5, boxes=[BOXES[0], Box("b", 0.0, 0.5, 0.5, 1.0)])
    assert inside[1].tolist() == [pytest.approx(3.5 * 16), pytest.approx(12.5 * 32)]


def test_threshold_object_mask_on_latent_grid():
    amap = torch.zeros(16, 16)
    amap[6:10, 4:9] = 1.0
    om = threshold_object_mask(amap, BOXES[0], latent_size=(64, 64), method="quantile", keep_fraction=0.75)
    assert isinstance(om, ObjectMask) and om.source == "threshold" and not om.used_sam
    inside = BOXES[0].mask(64, 64, dtype=torch.bool)
    assert om.latent_mask.shape == (64, 64)
    assert not (om.latent_mask & ~inside).any()
    assert abs(om.area - 0.75 * int(inside.sum())) <= 1
    in_box = threshold_object_mask(amap, BOXES[0], latent_size=(64, 64))  # "normalized": in the box, cut to it
    assert not (in_box.latent_mask & ~inside).any() and in_box.area > 0
    with pytest.raises(ValueError):
        threshold_object_mask(amap, BOXES[0], (64, 64), method="otsu")


def test_object_mask_follows_the_object_over_its_box_but_drops_blobs_away_from_it():
    """``method="object"``: the coarse mask's rule (normalised over the whole map, > 0.25) on the latent
    grid, the blobs that touch the box; not cut to the box."""
    from lmd_utils.masks import keep_blobs_touching, resize_maps

    box = Box("a cat", 0.25, 0.25, 0.5, 0.5)  # cells 4..7 of 16
    amap = blob(centre=(8.0, 8.0), width=1.5)  # an object centred on the box's corner: it spills over
    amap = amap + blob(centre=(14.0, 2.5), width=0.8)  # and a duplicate far from the box
    m = threshold_object_mask(amap, box, (32, 32), method="object")
    inside = box.mask(32, 32, dtype=torch.bool)
    assert (m.latent_mask & inside).any() and (m.latent_mask & ~inside).sum() > (m.latent_mask & inside).sum()
    smooth = resize_maps(gaussian_blur(amap, 1.5), (32, 32))
    whole = normalized_threshold_masks(smooth, None)
    assert torch.equal(m.latent_mask, keep_blobs_touching(whole, inside))
    assert whole[4, 28] and not m.latent_mask[4, 28]  # the duplicate's blob is dropped
    assert torch.equal(m.coarse_mask, normalized_threshold_masks(gaussian_blur(amap, 1.5), None))  # SAM's coarse
    # the earlier definition covers only the part of the object inside the box
    cut = threshold_object_mask(amap, box, (32, 32), method="normalized").latent_mask
    assert not (cut & ~inside).any() and cut.sum() < m.latent_mask.sum()


def test_connected_blobs_and_keep_blobs_touching():
    from lmd_utils.masks import connected_blobs, keep_blobs_touching

    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0:2, 0:2] = True
    mask[4:6, 3:6] = True
    mask[2, 5] = True  # touches the second blob diagonally only: its own blob (4-connectivity)
    labels, n = connected_blobs(mask)
    assert n == 3 and set(labels[mask].tolist()) == {1, 2, 3} and not labels[~mask].any()
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[5, 5] = True
    assert torch.equal(keep_blobs_touching(mask, region), (labels == labels[5, 5]))
    assert torch.equal(keep_blobs_touching(mask, torch.zeros(6, 6, dtype=torch.bool)), mask)  # none touches: all


def test_sweep_masks_are_nested_and_match_the_threshold_route():
    amap = blob()
    thresholds = [0.1, 0.25, 0.5, 0.75, 0.9]
    masks = threshold_sweep(amap, BOX, (32, 32), thresholds)
    assert masks.shape == (5, 32, 32) and masks.dtype == torch.bool
    areas = masks.flatten(1).sum(1).tolist()
    assert areas == sorted(areas, reverse=True) and areas[0] > areas[-1] > 0  # higher threshold, fewer cells
    for wider, narrower in zip(masks[:-1], masks[1:]):
        assert not (narrower & ~wider).any()  # nested
    inside = BOX.mask(32, 32, dtype=torch.bool)
    assert not (masks & ~inside).any()  # "normalized": never outside the box
    expected = threshold_object_mask(amap, BOX, (32, 32), method="normalized", threshold=0.25).latent_mask
    assert torch.equal(masks[1], expected)
    following = threshold_sweep(amap, BOX, (32, 32), thresholds, method="object")
    assert all(not (n & ~w).any() for w, n in zip(following[:-1], following[1:]))  # nested too
    assert torch.equal(following[1], threshold_object_mask(amap, BOX, (32, 32), method="object").latent_mask)
    assert (following[0] & ~inside).any()  # the low threshold's halo reaches over the box
    with pytest.raises(ValueError):
        threshold_sweep(amap, BOX, (32, 32), [])


# -- SAM selection rule -------------------------------------------------------------------------------------
def _three_masks(areas_rows):
    masks = torch.zeros(len(areas_rows), 10, 10, dtype=torch.bool)
    for i, rows in enumerate(areas_rows):
        masks[i, :rows] = True  # rows·10 cells, nested: larger masks contain smaller ones
    return masks


def test_select_sam_mask_largest_qualifying():
    masks = _three_masks([1, 3, 6])  # areas 10, 30, 60
    coarse = torch.zeros(10, 10, dtype=torch.bool)
    coarse[:3] = True  # IoU 1/3, 1, 1/2
    sel = select_sam_mask(masks, torch.tensor([0.90, 0.95, 0.80]), coarse)
    assert sel.index == 1  # largest (60) fails the score; next largest qualifies
    assert sel.coarse_ious.tolist() == pytest.approx([1 / 3, 1.0, 0.5])
    assert sel.qualifies.tolist() == [True, True, False]
    sel = select_sam_mask(masks, torch.tensor([0.90, 0.95, 0.90]), coarse)
    assert sel.index == 2  # all qualify → the largest
    # IoU rule: a confident mask far from the coarse mask is rejected
    coarse_low = torch.zeros(10, 10, dtype=torch.bool)
    coarse_low[0, :2] = True  # IoU with masks: 0.2, 0.067, 0.033 → all < 0.25
    assert select_sam_mask(masks, torch.tensor([0.99, 0.99, 0.99]), coarse_low).index is None


def test_select_sam_mask_ties_go_to_lower_index():
    masks = _three_masks([4, 4, 2])
    coarse = masks[0]
    assert select_sam_mask(masks, torch.tensor([0.9, 0.9, 0.9]), coarse).index == 0


class ScriptedSam:
    """A SamBackend returning fixed masks/scores (to test our refinement logic, not SAM); records the point."""

    def __init__(self, masks, scores):
        self.masks, self.scores, self.points = masks, scores, []

    def predict(self, image, point_xy):
        self.points.append(point_xy)
        return self.masks.clone(), self.scores.clone()


def _peak_map():
    amap = torch.zeros(16, 16)
    amap[4:8, 4:8] = 1.0  # object in the top-left quarter
    return amap


def _image_masks():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 20:24, 20:24] = True  # tiny part
    masks[1, 16:32, 16:32] = True  # the object (matches the coarse mask well)
    masks[2] = True  # whole image
    return masks


def test_sam_refine_mask_chooses_and_reports():
    backend = ScriptedSam(_image_masks(), torch.tensor([0.95, 0.90, 0.97]))
    assert isinstance(backend, SamBackend)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    om = sam_refine_mask(_peak_map(), image, backend, latent_size=(8, 8))
    # the whole-image mask is confident but its IoU with the coarse mask is too low → mask 1
    assert om.source == "sam" and om.used_sam and om.sam_index == 1
    x, y = backend.points[0]
    assert 16 <= x <= 32 and 16 <= y <= 32  # arg-max of the smoothed map, in image pixels
    assert om.image_mask.shape == (64, 64) and torch.equal(om.image_mask, _image_masks()[1])
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 2:4] = True
    assert torch.equal(om.latent_mask, expected)


def test_sam_refine_mask_falls_back_to_coarse_and_says_so():
    backend = ScriptedSam(_image_masks(), torch.tensor([0.5, 0.6, 0.7]))  # nothing confident
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    om = sam_refine_mask(_peak_map(), image, backend, latent_size=(16, 16))
    assert om.source == "coarse-fallback" and om.sam_index is None and not om.used_sam
    assert om.notes and "coarse mask" in om.notes[0]
    assert torch.equal(om.latent_mask, om.coarse_mask)  # coarse mask at attention = latent resolution
    authors = sam_refine_mask(_peak_map(), image, backend, latent_size=(16, 16), fallback="authors")
    assert authors.source == "sam" and authors.sam_index == 1  # penalised arg-max: only IoU passes for 1
    # clipping to a grown box
    clipped = sam_refine_mask(
        _peak_map(), image, ScriptedSam(_image_masks(), torch.tensor([0.9, 0.9, 0.9])), (16, 16),
        box=Box("o", 0.25, 0.25, 0.5, 0.5), box_margin=0.0, min_iou=0.0,
    )
    assert clipped.sam_index == 2
    assert torch.equal(clipped.image_mask, Box("o", 0.25, 0.25, 0.5, 0.5).mask(64, 64, dtype=torch.bool))


def test_extract_object_masks_threshold_route_and_checks():
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = extract_object_masks(maps, BOXES, (32, 32), method="quantile")
    assert [o.source for o in out] == ["threshold"] * 3
    with pytest.raises(ValueError):
        extract_object_masks(maps, BOXES[:2], (32, 32))
    with pytest.raises(ValueError):
        extract_object_masks(maps, BOXES, (32, 32), backend=ScriptedSam(_image_masks(), torch.ones(3)))


def test_as_uint8_image_conversions():
    chw = torch.ones(3, 5, 7) * 0.5
    img = as_uint8_image(chw)
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8 and img[0, 0, 0] == 128
    assert np.array_equal(as_uint8_image(chw.to(torch.bfloat16)), img)  # no numpy dtype: read as float32
    with pytest.raises(ValueError):
        as_uint8_image(np.zeros((5, 7), dtype=np.uint8))


# -- backend 1: transformers SamModel with random weights -------------------------------------------------
@pytest.fixture(scope="module")
def tiny_transformers_sam():
    from transformers import (
        SamConfig, SamMaskDecoderConfig, SamModel, SamProcessor, SamPromptEncoderConfig, SamVisionConfig,
    )

    try:  # the torchvision-free image processor (transformers >= 5); older versions have only SamImageProcessor
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import SamImageProcessor as ImageProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
            patch_size=16, mlp_dim=64, global_attn_indexes=[1], window_size=2, num_pos_feats=8,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
        ),
    )
    processor = SamProcessor(
        image_processor=ImageProcessor(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16},
        )
    )
    return SamModel(config).eval(), processor


def test_transformers_backend_end_to_end(tiny_transformers_sam, tmp_path):
    model, processor = tiny_transformers_sam
    backend = TransformersSam(model, processor)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)  # not square, not 64
    masks, scores = backend.predict(image, (10.0, 20.0))
    assert masks.shape == (3, 40, 56) and masks.dtype == torch.bool and scores.shape == (3,)
    # the real loading code, from a local folder (no hub here)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = TransformersSam.from_pretrained(str(tmp_path))
    masks2, scores2 = loaded.predict(image, (10.0, 20.0))
    assert torch.equal(masks2, masks) and torch.allclose(scores2, scores)
    # refinement around it
    amap = torch.zeros(16, 16)
    amap[4:9, 6:12] = 1.0
    om = sam_refine_mask(amap, image, backend, latent_size=(5, 7), min_score=-1e9, min_iou=0.0)
    assert om.source == "sam" and om.latent_mask.shape == (5, 7) and om.image_mask.shape == (40, 56)
    assert om.point_xy == pytest.approx((9.5 * 56 / 16, 6.5 * 40 / 16), abs=56 / 16)
    with pytest.raises(ValueError):
        backend.predict(image, (100.0, 5.0))  # outside the image


# -- backend 2: Meta's segment-anything with random weights -----------------------------------------------
def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def _torchvision_standin() -> dict[str, types.ModuleType]:
    """The two torchvision functions ``import segment_anything`` binds, with torchvision's PIL semantics.

    ``segment_anything.utils.transforms`` binds ``resize`` and ``to_pil_image`` (used only by
    ``ResizeLongestSide.apply_image``: ``np.array(resize(to_pil_image(image), target_size))``; for a PIL image
    torchvision's ``resize`` is ``img.resize((w, h), BILINEAR)``).  ``automatic_mask_generator`` binds
    ``batched_nms``/``box_area``, which ``SamPredictor`` never calls; they raise if anything does.
    """
    from PIL import Image

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    functional.to_pil_image = lambda array: Image.fromarray(np.asarray(array))
    functional.resize = lambda img, size: img.resize((int(size[1]), int(size[0])), Image.BILINEAR)

    def _unavailable(*args, **kwargs):
        raise NotImplementedError("torchvision.ops is not available in this test environment")

    boxes.batched_nms = boxes.box_area = _unavailable
    tv.transforms, transforms.functional, tv.ops, ops.boxes = transforms, functional, ops, boxes
    return {
        "torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional,
        "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
    }


@pytest.fixture(scope="module")
def segment_anything_pkg():
    """``segment_anything``, imported for real when torchvision loads, else with a scoped torchvision stand-in.

    The PyPI torchvision wheels are CUDA builds whose C extension cannot load beside a CPU-only torch, and
    ``import segment_anything`` imports torchvision.  The stand-in lives in ``sys.modules`` only while
    ``segment_anything`` is imported and is removed right after, so nothing else sees it.
    """
    if importlib.util.find_spec("segment_anything") is None:
        pytest.skip("segment-anything not installed (pip install segment-anything, the `sam` extra)")
    if _torchvision_importable():
        return importlib.import_module("segment_anything")
    for name in [m for m in sys.modules if m == "segment_anything" or m.startswith("segment_anything.")]:
        del sys.modules[name]
    standin = _torchvision_standin()
    saved = {k: sys.modules.get(k) for k in standin}
    sys.modules.update(standin)
    try:
        module = importlib.import_module("segment_anything")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def _tiny_segment_anything_sam(sa):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim = 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=dim,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=2,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=16,
        ),
    )


def test_segment_anything_backend_end_to_end(segment_anything_pkg, tmp_path):
    sam = _tiny_segment_anything_sam(segment_anything_pkg)
    backend = SegmentAnythingSam.from_model(sam)
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks, scores = backend.predict(image, (30.0, 12.0))
    assert masks.shape == (3, 40, 56) and masks.dtype == torch.bool and scores.shape == (3,)
    # the predictor really resized the image to the encoder's 64-pixel longest side
    assert tuple(backend.predictor.input_size) == (46, 64)
    amap = torch.zeros(16, 16)
    amap[2:6, 6:12] = 1.0
    om = sam_refine_mask(amap, image, backend, latent_size=(5, 7), min_score=-1e9, min_iou=0.0)
    assert om.source == "sam" and om.latent_mask.shape == (5, 7)
    with pytest.raises(ValueError):
        SegmentAnythingSam.from_checkpoint(str(tmp_path / "none.pth"), model_type="vit_q")


def test_sam_rules_ours_by_default_and_the_authors_point_resize_iou_and_choice():
    import torch.nn.functional as F
    from lmd_utils.masks import extract_object_masks, gaussian_blur, normalized_threshold_masks
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    scores = torch.tensor([0.5, 0.6, 0.7])  # nothing confident: ours falls back, the authors' arg-max does not
    default = sam_refine_mask(_peak_map(), image, ScriptedSam(_image_masks(), scores), latent_size=(8, 8))
    ours = sam_refine_mask(_peak_map(), image, ScriptedSam(_image_masks(), scores), latent_size=(8, 8),
                           rules="ours")
    assert default.source == ours.source == "coarse-fallback" and torch.equal(default.latent_mask, ours.latent_mask)
    assert default.point_xy == ours.point_xy
    backend = ScriptedSam(_image_masks(), scores)
    theirs = sam_refine_mask(_peak_map(), image, backend, latent_size=(8, 8), rules="authors")
    # the point: the arg-max cell's top-left corner (16×16 map on a 64×64 image: 4 pixels a cell)
    smooth = gaussian_blur(_peak_map(), 1.5)
    row, col = divmod(int(smooth.flatten().argmax()), 16)
    assert backend.points == [(4.0 * col, 4.0 * row)] and default.point_xy == (4.0 * col + 2, 4.0 * row + 2)
    # latent masks: bilinear, any value > 0; IoU on the attention grid
    on_latent = F.interpolate(_image_masks().float()[None], (8, 8), mode="bilinear")[0] > 0
    on_attention = F.interpolate(on_latent.float()[None], (16, 16), mode="bilinear")[0] > 0
    coarse = normalized_threshold_masks(smooth, None, threshold=0.25)
    inter = (coarse[None] & on_attention).flatten(1).sum(1).double()
    union = (coarse[None] | on_attention).flatten(1).sum(1).double()
    assert torch.allclose(theirs.sam_coarse_ious, (inter / (union + 1e-6)).float())
    # the choice: area − max·[score < 0.85] − max·[IoU < 0.25] on the latent grid → mask 1, a SAM mask
    areas = on_latent.flatten(1).sum(1)
    penalised = areas - areas.max() * (scores < 0.85).long() - areas.max() * (theirs.sam_coarse_ious < 0.25).long()
    assert theirs.sam_index == int(penalised.argmax()) == 1 and theirs.source == "sam"
    assert torch.equal(theirs.latent_mask, on_latent[1])
    # reachable through extract_object_masks (as generate passes LMDConfig.sam_rules)
    via = extract_object_masks(_peak_map()[None], [Box("o", 0, 0, 1, 1)], (8, 8), images=[image],
                               backend=ScriptedSam(_image_masks(), scores), progress=False, rules="authors")
    assert torch.equal(via[0].latent_mask, theirs.latent_mask)
    with pytest.raises(ValueError):
        sam_refine_mask(_peak_map(), image, backend, latent_size=(8, 8), rules="theirs")


class _Trap:
    """Unpickling this runs code: it creates the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_segment_anything_checkpoints_are_read_as_tensors_only(tmp_path, monkeypatch):
    import types

    from lmd_utils import sam as sam_module

    def build(checkpoint=None):
        assert checkpoint is None  # never segment-anything's own loader, which unpickles on older torch
        return torch.nn.Linear(2, 2)

    registry = types.SimpleNamespace(sam_model_registry={"vit_b": build})
    monkeypatch.setattr(sam_module, "import_segment_anything", lambda: registry)
    monkeypatch.setattr(SegmentAnythingSam, "from_model", classmethod(lambda cls, model: model))
    good = torch.nn.Linear(2, 2)
    torch.save(good.state_dict(), tmp_path / "good.pth")
    loaded = SegmentAnythingSam.from_checkpoint(str(tmp_path / "good.pth"))
    assert torch.equal(loaded.weight, good.weight)
    torch.save({"trap": _Trap(tmp_path / "ran")}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a vit_b segment-anything checkpoint of plain tensors"):
        SegmentAnythingSam.from_checkpoint(str(tmp_path / "evil.pth"))
    assert not (tmp_path / "ran").exists()
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        SegmentAnythingSam.from_checkpoint(str(tmp_path / "garbage.pth"))
    with pytest.raises(FileNotFoundError):
        SegmentAnythingSam.from_checkpoint(str(tmp_path / "missing.pth"))
