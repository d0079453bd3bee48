"""The shared little grammar: number words, singular and plural, articles (planner, benchmark, composed pass)."""

import pytest

from lmd_utils.grammar import NUMBER_WORDS, counted, is_plural, number_word, pluralize, singularize, with_article


@pytest.mark.parametrize("plural, singular", [
    ("chairs", "chair"), ("boxes", "box"), ("berries", "berry"), ("mice", "mouse"), ("glasses", "glass"),
    ("benches", "bench"), ("circles", "circle"), ("squares", "square"), ("triangles", "triangle"),
    ("bus", "bus"), ("people", "person"), ("knives", "knife"), ("tomatoes", "tomato"), ("cat", "cat"),
    ("shoes", "shoe"), ("prizes", "prize"), ("horses", "horse"), ("dresses", "dress"),
])
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_articles():
    assert [with_article(w) for w in ("orange bottle", "red car", "apple")] == [
        "an orange bottle", "a red car", "an apple"]


def test_number_words_round_trip():
    assert [number_word(n) for n in (1, 2, 5, 10, 11)] == ["one", "two", "five", "ten", "11"]
    assert all(NUMBER_WORDS[number_word(n)] == n for n in range(1, 11))
    assert NUMBER_WORDS["a pair of"] == 2 and NUMBER_WORDS["an"] == 1


@pytest.mark.parametrize("caption, plural", [
    ("a red box", "red boxes"), ("a cat", "cats"), ("one berry", "berries"), ("the toy", "toys"),
    ("a sheep", "sheep"), ("a bench", "benches"),
    ("a mouse", "mice"), ("a person", "people"), ("a grey mouse", "grey mice"), ("a knife", "knives"),
    ("a glass", "glasses"), ("a child", "children"),
])
def test_pluralize(caption, plural):
    assert pluralize(caption) == plural
    assert is_plural(plural.split()[-1])


def test_counted():
    assert counted(1, "a cat") == "a cat"
    assert counted(3, "a green square") == "three green squares"


def test_pluralize_inverts_every_irregular_plural():
    from lmd_utils.grammar import _IRREGULAR_PLURALS
    for plural, singular in _IRREGULAR_PLURALS.items():
        assert pluralize(f"a {singular}") == plural
        assert singularize(pluralize(singular)) == singular
