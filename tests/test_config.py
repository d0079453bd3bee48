"""config.py: every difference from the authors' code is a switch whose default is ours; ``authors()`` flips all."""

from dataclasses import fields

import pytest

from lmd_utils.config import GuidanceConfig, LMDConfig

#: switch → (ours, the authors')
LMD_SWITCHES = {
    "box_seed_start": (None, 20), "box_rounding": ("edges", "authors"), "alignment": ("centre", "authors"),
    "compose_initial": ("masks", "authors"), "sam_rules": ("ours", "authors"), "box_order": ("layout", "by_phrase"),
    "max_batch": (None, 1),
}
GUIDANCE_SWITCHES = {
    "stop_rule": ("current", "authors"), "skip_articles": (True, False), "head_reduction": ("mean", "sum"),
    "truncate_forward": (True, False), "loss_scale": (40.0, 5.0), "loss_threshold": (5.0 / 8, 5.0),
    "transfer_weight": (2.0 / 8, 2.0),
}


def test_defaults_are_ours_and_authors_sets_every_switch():
    ours, theirs = LMDConfig(), LMDConfig.authors()
    for name, (mine, authors) in LMD_SWITCHES.items():
        assert getattr(ours, name) == mine and getattr(theirs, name) == authors, name
    for g_ours, g_theirs in ((ours.per_box_guidance, theirs.per_box_guidance),
                             (ours.overall_guidance, theirs.overall_guidance)):
        for name, (mine, authors) in GUIDANCE_SWITCHES.items():
            assert getattr(g_ours, name) == mine and getattr(g_theirs, name) == authors, name
        assert g_theirs.layers == () and g_theirs.iterations == g_ours.iterations
    # everything that is not a switch is the same
    switched = set(LMD_SWITCHES) | {"per_box_guidance", "overall_guidance"}
    for f in fields(LMDConfig):
        if f.name not in switched:
            assert getattr(ours, f.name) == getattr(theirs, f.name), f.name


def test_authors_takes_overrides_and_documents_each_switch():
    c = LMDConfig.authors(num_inference_steps=10, box_order="layout")
    assert c.num_inference_steps == 10 and c.box_order == "layout" and c.alignment == "authors"
    assert GuidanceConfig.authors(stop_rule="current").stop_rule == "current"
    for name in LMD_SWITCHES:
        assert name in LMDConfig.__doc__, name
    for name in ("stop_rule", "skip_articles", "head_reduction", "truncate_forward"):
        assert name in GuidanceConfig.__doc__, name
    assert "tests/reference" in LMDConfig.authors.__doc__ and "tests/reference" in GuidanceConfig.authors.__doc__
    for bad in ({"box_rounding": "floor"}, {"alignment": "left"}, {"compose_initial": "boxes"}, {"sam_rules": "x"},
                {"mask_method": "sam"}):
        with pytest.raises(ValueError):
            LMDConfig(**bad)
    for method in ("normalized", "object", "quantile"):  # every mask rule of lmd_utils.masks is a setting
        assert LMDConfig(mask_method=method).mask_method == method
