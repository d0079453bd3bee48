"""lmd_utils.comparisons (notebook 08): every method on the same layouts and seeds, scored; the counting attention."""
import pytest
import torch

from lmd_utils.comparisons import compare_methods, counting_attention


@pytest.fixture(scope="module")
def toy():
    from lmd_utils.toyworld.benchmark import toy_lmd_config
    from lmd_utils.toyworld.model import load_toyworld_pipeline

    pipe = load_toyworld_pipeline("data/toyworld/model")
    return pipe, toy_lmd_config(pipe, steps=4)


def test_compare_methods_gives_every_method_the_same_prompts_layouts_and_seeds(toy):
    pipe, config = toy
    methods = ["sd", "backward-guidance", "multidiffusion", "lmd"]
    c = compare_methods(pipe, methods, config, first_seed=3, only=[1, 2])
    assert [s.task for s in c.specs] == ["numeracy", "attribution"] and c.seeds == [3, 3]
    assert list(c.images) == methods and all(len(v) == 2 and v[0].shape == (3, 32, 32) for v in c.images.values())
    assert all(sum(c.verdicts[m]) == c.results[m].successes for m in methods)  # verdicts are the table's
    assert all(len(c.found[m]) == 2 for m in methods) and all(s > 0 for s in c.seconds.values())
    again = compare_methods(pipe, ["lmd"], config, first_seed=3, only=[2])
    assert torch.equal(again.images["lmd"][0], c.images["lmd"][1])


def test_counting_attention_maps_and_shares(toy):
    pipe, config = toy
    c = compare_methods(pipe, ["sd"], config, first_seed=0)
    counting = counting_attention(pipe, c, config)
    n = len(counting.layout.boxes)
    assert n >= 2 and counting.per_box.shape[0] == n and counting.single_pass.ndim == 2
    assert len(counting.single_pass_inside) == n and all(0 <= v <= 1 for v in counting.single_pass_inside)
    assert counting.single_pass_best_box == max(counting.single_pass_inside)
    assert counting.word in c.specs[1].prompt  # the counted word, as the tokenizer spells it


def test_the_shipped_comparison_is_read_as_one_row_per_method():
    import json

    from lmd_utils.comparisons import TOY_COMPARISON, measured_table

    data = json.loads(TOY_COMPARISON.read_text())
    lines = measured_table().splitlines()
    assert lines[0].startswith("python -m lmd_utils benchmark stage2 --model toyworld --method ")
    assert [row.split()[0] for row in lines[2:]] == list(data["runs"])
    assert data["meta"]["n_per_task"] >= 50  # the measurement size
    for row, run in zip(lines[2:], data["runs"].values()):
        assert row.split()[-2] == f"{run['average']:.1f}%"
