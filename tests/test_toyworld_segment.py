"""The toy world's SAM stand-in (lmd_utils.toyworld.segment): flat-colour regions grown from a point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmd_utils.layout import Box
from lmd_utils.masks import extract_object_masks, mask_iou, sam_refine_mask
from lmd_utils.sam import SamBackend
from lmd_utils.toyworld.scenes import COLOURS, generate_scene, shape_mask
from lmd_utils.toyworld.segment import FlatColourSegmenter, grow_region, region_score


def _scene_image(shape: str = "circle", top: int = 8, left: int = 10, size: int = 11) -> np.ndarray:
    image = np.full((32, 32, 3), (200, 195, 190), dtype=np.uint8)
    image[shape_mask(shape, top, left, size)] = COLOURS["red"]
    return image


def test_is_a_sam_backend_whose_masks_are_the_object():
    seg = FlatColourSegmenter()
    assert isinstance(seg, SamBackend)
    for shape in ("circle", "square", "triangle"):
        image = _scene_image(shape)
        masks, scores = seg.predict(image, (15.5, 15.5))  # a point inside the shape
        assert masks.shape == (3, 32, 32) and masks.dtype == torch.bool and scores.shape == (3,)
        for m in masks:
            assert torch.equal(m, torch.from_numpy(shape_mask(shape, 8, 10, 11)))
        assert scores.tolist() == [1.0, 1.0, 1.0]


def test_the_background_scores_zero_and_noise_is_tolerated():
    image = _scene_image()
    masks, scores = FlatColourSegmenter().predict(image, (1.0, 1.0))  # on the background
    assert scores.tolist() == [0.0, 0.0, 0.0] and masks[0].sum() > 32 * 32 // 2
    noisy = np.clip(image.astype(np.int16) + np.random.default_rng(0).integers(-15, 16, image.shape), 0, 255)
    region = grow_region(noisy.astype(np.uint8), (15.5, 15.5), 70.0)
    assert np.array_equal(region, shape_mask("circle", 8, 10, 11))
    assert region_score(image, np.zeros((32, 32), dtype=bool)) == 0.0
    with pytest.raises(ValueError):
        FlatColourSegmenter(tolerances=())
    grown, _ = FlatColourSegmenter(margin=1).predict(image, (15.5, 15.5))
    exact = torch.from_numpy(shape_mask("circle", 8, 10, 11))
    assert (grown[0] & exact).sum() == exact.sum() and grown[0].sum() > exact.sum()  # a one-pixel rim around it


def test_through_the_sam_route_the_mask_is_the_object():
    """``sam_refine_mask`` with the stand-in: the point at the attention's peak, the largest confident region."""
    image = _scene_image()
    amap = torch.zeros(16, 16)
    amap[6:9, 6:9] = 1.0  # attention on the object (cells of 2×2 pixels)
    box = Box("a red circle", 0.25, 0.25, 0.6, 0.6)
    m = sam_refine_mask(amap, image, FlatColourSegmenter(), (32, 32))
    assert m.source == "sam" and torch.equal(m.latent_mask, torch.from_numpy(shape_mask("circle", 8, 10, 11)))
    (same,) = extract_object_masks(amap[None], [box], (32, 32), images=[image], backend=FlatColourSegmenter(),
                                   progress=False)
    assert torch.equal(same.latent_mask, m.latent_mask)


def test_every_object_of_generated_scenes_is_segmented_from_a_point_on_it():
    for seed in range(20):
        scene = generate_scene(seed)
        for obj in scene.objects:
            rows, cols = obj.box.pixel_slices(32, 32)
            truth = np.zeros((32, 32), dtype=bool)
            truth[rows, cols] = True
            colour = np.all(scene.image == COLOURS[obj.colour], axis=-1) & truth
            r, c = np.argwhere(colour)[len(np.argwhere(colour)) // 2]
            masks, scores = FlatColourSegmenter().predict(scene.image, (c + 0.5, r + 0.5))
            assert scores.min() == 1.0
            assert mask_iou(torch.from_numpy(colour), masks).min() == 1.0
