"""The bench's typing script: the acceptance oracle, human timing, the default sample (pure, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from greentrack.bench.script import (
    AFTER_CHARS,
    KEY_GAP_S,
    LINE_END_PAUSE_S,
    MID_LINE_PAUSE_S,
    THINK_PAUSE_S,
    Segment,
    accepted_length,
    at_line_start,
    at_token_boundary,
    default_paths,
    keystroke_delay_s,
    keystroke_length,
    line_budget_tokens,
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
        high = KEY_GAP_S[1] + (LINE_END_PAUSE_S[1] + THINK_PAUSE_S[1] if after_newline else 0.0)
        assert low <= delay <= high


def test_enter_types_the_indentation_and_the_pause_comes_after_it() -> None:
    typed = "    if x:\n        y = f(a, b)\n\n    return y\n"
    enter = typed.index("\n")
    assert keystroke_length(typed, 0) == 1 and keystroke_length(typed, 4) == 1
    assert keystroke_length(typed, enter) == 1 + 8  # the editor's auto-indent puts the cursor at the indentation
    blank = typed.index("\n\n")
    assert keystroke_length(typed, blank) == 1  # a blank line gets no indentation
    assert keystroke_length(typed, blank + 1) == 1 + 4  # a dedent: Backspace folded into the Enter
    assert keystroke_length("a\n  ", 1) == 1  # only blanks after it: nothing to indent for
    assert at_line_start(typed, enter + 9) and not at_line_start(typed, enter) and not at_line_start(typed, 4)
    segment = Segment("g.py", "", typed)
    long_pauses = [p for p in range(1, len(typed)) if keystroke_delay_s(segment, p, 0) > KEY_GAP_S[1]]
    assert enter + 9 in long_pauses and blank + 6 in long_pauses


def test_mid_line_pauses_come_only_after_token_boundaries_now_and_then() -> None:
    line = "        result = self.compute(value, other) if flag else None\n"
    boundaries = [p for p in range(len(line)) if at_token_boundary(line, p)]
    expected = {line.index("= ") + 2, line.index(".") + 1, line.index("(") + 1, line.index(", ") + 2,
                line.index(" if ") + 4, line.index(" else ") + 6}
    assert set(boundaries) == expected
    assert not at_token_boundary(line, 8)  # the indentation alone is not a token boundary
    pauses, boundary_pauses = 0, 0
    for seed in range(40):
        segment = Segment(f"m{seed}.py", "", line)
        for p in range(1, len(line)):
            delay = keystroke_delay_s(segment, p, seed)
            assert KEY_GAP_S[0] <= delay <= KEY_GAP_S[1] + MID_LINE_PAUSE_S[1]
            if delay > KEY_GAP_S[1]:
                pauses += 1
                boundary_pauses += p in expected
    assert pauses == boundary_pauses and 0 < pauses < 40 * len(expected)  # some boundaries, never elsewhere


def test_a_segment_keeps_what_the_file_goes_on_with_and_reads_crlf_as_lf(tmp_path: Path) -> None:
    text = "".join(f"def f{i}(x):\r\n    return x + {i}\r\n\r\n" for i in range(30))
    path = tmp_path / "crlf.py"
    path.write_bytes(text.encode())
    segment = Segment.from_file(path, 20, seed=3)
    lf = text.replace("\r\n", "\n")
    assert "\r" not in segment.before + segment.typed + segment.after and len(segment.typed) == 20
    end = len(segment.before) + len(segment.typed)
    assert lf.startswith(segment.before + segment.typed) and segment.after == lf[end:end + AFTER_CHARS]


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


@pytest.mark.parametrize(("upcoming", "cap", "budget"), [
    ("2 * math.pi * self.radius\n    def area", 64, 9),  # the rest of the line: 25 characters / 3.5, + the newline
    ("\n\n    return total\n", 64, 5),  # at a line end: the next line with something on it
    ("x\n", 64, 2),
    ("", 64, 1),  # nothing left: one token
    ("a" * 1000, 16, 16),  # never past the cap
])
def test_line_budget_is_the_next_lines_tokens(upcoming: str, cap: int, budget: int) -> None:
    assert line_budget_tokens(upcoming, cap) == budget
