"""The little English that prompts and captions need, defined once: number words, plurals, articles.

Used by the offline planner (reading "two red cats"), the benchmark (writing and parsing its 400 prompts) and the
composed pass (writing "two cats" for two boxes captioned "a cat", as the authors' ``convert_spec`` does with
``inflect``).  A small rule set, good enough for captions; an LLM handles the rest of English.
"""

from __future__ import annotations

#: The plain number words, 1 to 10.
PLAIN_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: Every count word a prompt may use and the count it means ("a pair of" → 2, a bare "a" → 1).
NUMBER_WORDS: dict[str, int] = {
    "a": 1, "an": 1, **{word: n for n, word in enumerate(PLAIN_NUMBERS, start=1)},
    "a pair of": 2, "a couple of": 2, "a few": 3, "some": 3, "several": 4, "many": 5,
}
#: Articles: words that carry no object (their attention maps are diffuse).
ARTICLES = frozenset({"a", "an", "the"})

_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse", "geese": "goose",
    "teeth": "tooth", "feet": "foot", "oxen": "ox", "knives": "knife", "leaves": "leaf", "wolves": "wolf",
    "shelves": "shelf", "loaves": "loaf", "halves": "half", "scarves": "scarf", "sheep": "sheep", "fish": "fish",
    "deer": "deer", "glasses": "glass", "buses": "bus", "dice": "die", "shoes": "shoe", "toes": "toe",
    "canoes": "canoe",
}
#: singular → plural, the inverse of :data:`_IRREGULAR_PLURALS` ("mouse" → "mice", "person" → "people").
_IRREGULAR_SINGULARS = {singular: plural for plural, singular in _IRREGULAR_PLURALS.items()}
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "ous")
_SAME_IN_PLURAL = ("sheep", "fish", "deer")


def number_word(n: int) -> str:
    """``2 → "two"`` for 1..10 (:data:`PLAIN_NUMBERS`), digits beyond."""
    return PLAIN_NUMBERS[n - 1] if 1 <= n <= len(PLAIN_NUMBERS) else str(n)


def singularize(word: str) -> str:
    """``"chairs" → "chair"``, ``"boxes" → "box"``, ``"berries" → "berry"``, ``"mice" → "mouse"`` (a small rule set)."""
    lower = word.lower()
    if lower in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[lower]
    if lower.endswith(_NOT_PLURAL_ENDINGS) or len(lower) < 3 or not lower.endswith("s"):
        return word
    if lower.endswith("ies") and len(lower) > 4:
        return word[:-3] + "y"
    if lower.endswith(("ches", "shes", "xes", "sses", "oes")):
        return word[:-2]
    return word[:-1]


def is_plural(word: str) -> bool:
    return singularize(word).lower() != word.lower() or word.lower() in _SAME_IN_PLURAL


def pluralize(noun_phrase: str) -> str:
    """``"a red box" → "red boxes"``: the leading article or "one" dropped, the last word made plural."""
    words = noun_phrase.split()
    if words and words[0].lower() in ARTICLES | {"one"}:
        words = words[1:]
    if not words:
        return noun_phrase
    last = words[-1]
    if last.lower() in _IRREGULAR_SINGULARS:  # "mouse" → "mice", "person" → "people" (keeps a leading capital)
        plural = _IRREGULAR_SINGULARS[last.lower()]
        last = plural[:1].upper() + plural[1:] if last[:1].isupper() else plural
    elif last.lower() in _SAME_IN_PLURAL:
        pass
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join(words[:-1] + [last])


def with_article(phrase: str) -> str:
    """``"orange bottle" → "an orange bottle"`` (by the first letter; good enough for captions)."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def counted(n: int, caption: str) -> str:
    """``(1, "a cat") → "a cat"``, ``(2, "a cat") → "two cats"``."""
    return caption if n == 1 else f"{number_word(n)} {pluralize(caption)}"


def join_phrases(*parts: str) -> str:
    """Non-empty parts joined by ", " (a layout's negative prompt before the authors' fixed one)."""
    return ", ".join(p.strip() for p in parts if p and p.strip())
