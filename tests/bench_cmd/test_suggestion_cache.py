"""The suggestion cache alone (pure): what it serves, what it refuses, what it forgets."""

from __future__ import annotations

import pytest

from greentrack.suggestion_cache import SuggestionCache

BEFORE = "def add(a, b):\n    return"
AFTER = "\n\nprint(add(1, 2))\n"
DOC = BEFORE + AFTER
PLACE = len(BEFORE)


def typed(extra: str) -> tuple[str, int]:
    """The document after typing ``extra`` at the place, and the cursor."""
    return BEFORE + extra + AFTER, PLACE + len(extra)


def cache_with(suggestion: str = " a + b") -> SuggestionCache:
    cache = SuggestionCache()
    cache.remember("c1", "doc", DOC, PLACE, suggestion)
    return cache


@pytest.mark.parametrize(("extra", "rest"), [("", " a + b"), (" ", "a + b"), (" a", " + b"), (" a + ", "b")])
def test_what_was_typed_into_the_suggestion_serves_the_rest(extra: str, rest: str) -> None:
    cache = cache_with()
    hit = cache.lookup("doc", *typed(extra))
    assert hit is not None and (hit.text, hit.source_id, hit.typed) == (rest, "c1", extra)
    assert cache.hits == 1


@pytest.mark.parametrize("extra", [" b", " a - ", " a + b", " a + bc"])
def test_a_diverging_or_finished_suggestion_is_not_served(extra: str) -> None:
    cache = cache_with()
    assert cache.lookup("doc", *typed(extra)) is None
    assert cache.misses == 1


def test_the_text_before_the_place_and_after_the_cursor_must_be_unchanged() -> None:
    cache = cache_with()
    text, offset = typed(" a")
    assert cache.lookup("doc", "#\n" + text, offset + 2) is None  # an edit above the place
    assert cache.lookup("doc", text + "# more", offset) is None  # an edit below the cursor
    assert cache.lookup("doc", text.replace("return", "retval"), offset) is None
    assert cache.lookup("other", text, offset) is None  # another document
    assert cache.lookup("doc", BEFORE[:-1] + AFTER, PLACE - 1) is None  # before the place (backspace)
    assert cache.lookup("doc", text, offset) is not None


def test_the_newest_suggestion_for_a_place_wins_and_empty_ones_are_not_kept() -> None:
    cache = cache_with(" a + b")
    cache.remember("c2", "doc", DOC, PLACE, " a * b")
    cache.remember("c3", "doc", DOC, PLACE, "")
    hit = cache.lookup("doc", DOC, PLACE)
    assert hit is not None and (hit.source_id, hit.text) == ("c2", " a * b")
    hit = cache.lookup("doc", *typed(" a +"))
    assert hit is not None and (hit.source_id, hit.text) == ("c1", " b")
    assert len(cache) == 2


def test_least_recently_used_suggestions_go_first() -> None:
    cache = SuggestionCache(capacity=2)
    cache.remember("old", "a", "x", 1, "1")
    cache.remember("used", "b", "y", 1, "2")
    assert cache.lookup("a", "x", 1) is not None  # "old" is now the most recently used
    cache.remember("new", "c", "z", 1, "3")
    assert cache.lookup("b", "y", 1) is None
    assert cache.lookup("a", "x", 1) is not None and cache.lookup("c", "z", 1) is not None
    cache.forget_document("a")
    assert cache.lookup("a", "x", 1) is None and len(cache) == 1
    with pytest.raises(ValueError):
        SuggestionCache(capacity=0)


def test_offsets_outside_the_text_are_refused() -> None:
    cache = SuggestionCache()
    cache.remember("c", "doc", "abc", 9, "x")
    assert len(cache) == 0
    assert cache.lookup("doc", "abc", -1) is None
