"""The bench's typing script: the acceptance oracle, human timing, the default sample (pure, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from greentrack.bench.script import (
    KEY_GAP_S,
    LINE_END_PAUSE_S,
    Segment,
    accepted_length,
    default_paths,
    keystroke_delay_s,
)

UPCOMING = "return a + b\n    x = 1\n"


@pytest.mark.parametrize(("suggestion", "taken"), [
    ("return a + b", 12),  # the planted suggestion: exactly the rest of the line
    ("return a + b\n    x = 1", 22),  # all of it is what the developer types next
    ("return a + b\n    y = 2", 12),  # the first line only, as a partial accept
    ("return a", 8),  # a suggestion that ends mid-line: what it holds is what comes next
])
def test_the_oracle_accepts_what_the_developer_types_next(suggestion: str, taken: int) -> None:
    assert accepted_length(suggestion, UPCOMING) == taken


@pytest.mark.parametrize("suggestion", [
    "return a - b",  # wrong
    "return a\n    x = 1",  # Tab would break the developer's line after "return a"
    "return a + b + c",
    "",
    "   ",
    "\n",
])
def test_the_oracle_rejects_a_wrong_or_unfinished_line(suggestion: str) -> None:
    assert accepted_length(suggestion, UPCOMING) == 0


def test_a_suggestion_starting_on_the_next_line_is_judged_by_that_line() -> None:
    assert accepted_length("\n    x = 1", "\n    x = 1\n") == len("\n    x = 1")
    assert accepted_length("\n    x = 2", "\n    x = 1\n") == 0
    assert accepted_length("tail", "tail") == 4  # the end of the file ends the line too


def test_timing_is_human_deterministic_and_pauses_at_line_ends() -> None:
    segment = Segment("f.py", "", "ab\ncd")
    delays = [keystroke_delay_s(segment, i, seed=7) for i in range(len(segment.typed) + 1)]
    assert delays == [keystroke_delay_s(segment, i, seed=7) for i in range(len(segment.typed) + 1)]
    assert delays != [keystroke_delay_s(segment, i, seed=8) for i in range(len(segment.typed) + 1)]
    for i, delay in enumerate(delays):
        after_newline = i > 0 and segment.typed[i - 1] == "\n"
        low = KEY_GAP_S[0] + (LINE_END_PAUSE_S[0] if after_newline else 0.0)
        high = KEY_GAP_S[1] + (LINE_END_PAUSE_S[1] if after_newline else 0.0)
        assert low <= delay <= high


def test_segments_start_at_a_definition_after_the_first_third() -> None:
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(30))
    segment = Segment.from_text("m.py", text, 40, seed=3)
    assert segment == Segment.from_text("m.py", text, 40, seed=3)
    assert segment.typed.startswith("def f") and len(segment.typed) == 40
    assert len(segment.before) >= len(text) // 3 and text.startswith(segment.before + segment.typed)


def test_the_default_sample_is_the_standard_library_picked_by_seed() -> None:
    paths = default_paths(3, seed=0)
    assert len(paths) == 3 and paths == default_paths(3, seed=0)
    assert all(isinstance(p, Path) and p.is_file() and p.suffix == ".py" for p in paths)
    assert paths != default_paths(3, seed=1)
