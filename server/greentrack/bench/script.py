"""What the simulated developer types, when, and which suggestions they take.

Place in the flow: the first stage of ``greentrack bench``. ``default_paths`` picks a small deterministic sample of
Python's standard library; ``Segment.from_file`` chooses where in a file the developer starts typing (a function
definition after the file's first third; the text before it is already there, nothing after the cursor);
``keystroke_length`` is what one keystroke types (a character; Enter also types the next line's indentation, as the
editor's auto-indent does); ``keystroke_delay_s`` is the human timing after each keystroke (~100–150 ms jittered,
a pause after each Enter, now and then a longer one, and short pauses at some token boundaries mid-line), the same
for a position whatever the configuration, so that configurations replay the same typing; ``accepted_length`` is
the acceptance oracle. Pure but for reading files.

The timing model (constants below; docs/benchmarks.md, issue 14): keystroke-log studies of programmers find
inter-key gaps of a few hundred ms inside tokens and longer, heavy-tailed pauses at token and line boundaries,
the longest before a new statement. The replay draws them from fixed ranges, never from what a model would suggest:
where the developer pauses does not depend on the configuration or the model.
"""

from __future__ import annotations

import math
import random
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

#: Keystroke gap (s): uniform between these, at every character.
KEY_GAP_S = (0.100, 0.150)
#: Extra pause (s) after a line end (after Enter): the developer reads what they wrote, then thinks about the next line.
LINE_END_PAUSE_S = (0.6, 1.4)
#: Now and then (this share of line ends, seeded) the developer thinks longer before the next line: extra seconds.
THINK_PAUSE_SHARE = 0.2
THINK_PAUSE_S = (1.5, 4.0)
#: Mid-line, after a token boundary (``MID_LINE_BOUNDARIES``, a keyword and a space), this share of the time
#: (seeded) the developer pauses this much longer before going on: where short completions are asked for.
MID_LINE_PAUSE_SHARE = 0.25
MID_LINE_PAUSE_S = (0.3, 1.0)
#: What a mid-line pause may follow: an opening bracket, an attribute dot, an assignment or a separator.
MID_LINE_BOUNDARIES = ("(", "[", "{", ".", "= ", ", ", ": ", "-> ")
#: Keywords after which (and a space) a mid-line pause may come.
MID_LINE_KEYWORDS = frozenset({
    "and", "as", "assert", "await", "class", "def", "del", "elif", "else", "except", "for", "from", "if", "import",
    "in", "is", "lambda", "not", "or", "raise", "return", "while", "with", "yield",
})
#: Default sample: this many standard-library modules of between these sizes (characters), this many characters
#: typed in each: ~110 s of developer time per configuration (~620 keystrokes, ~25 pauses), which a default run
#: of the six configurations replays in ~8 minutes on 2 CPU cores with the embedded model (docs/benchmarks.md).
DEFAULT_FILES = 4
DEFAULT_CHARS = 200
DEFAULT_SIZE_RANGE = (8_000, 40_000)
#: How much of the file after the typed part a segment keeps to judge the last suggestion (characters).
AFTER_CHARS = 400
#: Characters per token of Python source, for ``line_budget_tokens``: SmolLM2's tokenizer on the non-blank lines of
#: six standard-library modules (4 963 lines) gives 3.47 characters and 9.7 tokens a line (docs/benchmarks.md).
CHARS_PER_TOKEN = 3.5
#: ``--budget`` of ``greentrack bench`` and ``bench/load.py``: the same token budget for every request, or the
#: developer's next line (``line_budget_tokens``).
BUDGETS = ("fixed", "line")


def default_paths(count: int = DEFAULT_FILES, seed: int = 0) -> list[Path]:
    """``count`` modules of the standard library of the running Python (top level, plain ``.py``, sized within
    ``DEFAULT_SIZE_RANGE``), picked by ``seed``: the same files for the same Python and seed."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    low, high = DEFAULT_SIZE_RANGE
    candidates = sorted(p for p in stdlib.glob("*.py")
                        if not p.name.startswith("_") and low <= p.stat().st_size <= high)
    return sorted(random.Random(seed).sample(candidates, min(count, len(candidates))))


@dataclass(frozen=True)
class Segment:
    """One file's replay: ``before`` is in the document when typing starts; ``typed`` is typed after it; ``after``
    is what the file goes on with (never in the document: it judges a suggestion shown after the last keystroke)."""

    name: str
    before: str
    typed: str
    after: str = ""

    @classmethod
    def from_file(cls, path: Path, chars: int, seed: int = 0) -> Segment:
        """Start at a ``def`` line after the first third of ``path`` (picked by ``seed``); type ``chars`` characters.
        Line ends are read as ``\\n`` (universal newlines: a CRLF file is typed as the editor shows it)."""
        text = path.read_text(encoding="utf-8")
        return cls.from_text(path.name, text, chars, seed)

    @classmethod
    def from_text(cls, name: str, text: str, chars: int, seed: int = 0) -> Segment:
        starts = [i for i in _line_starts(text) if i >= len(text) // 3 and text[i:].lstrip(" ").startswith("def ")]
        if not starts:
            starts = [i for i in _line_starts(text) if i >= len(text) // 3] or [0]
        start = random.Random(_key(seed, name)).choice(starts)
        end = start + max(0, chars)
        return cls(name, text[:start], text[start:end], text[end:end + AFTER_CHARS])


def _line_starts(text: str) -> list[int]:
    return [0, *(i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text))]


def _key(seed: int, name: str, position: int = 0) -> int:
    return zlib.crc32(f"{seed}\x00{name}\x00{position}".encode())


def keystroke_length(typed: str, position: int) -> int:
    """Characters the keystroke at ``position`` of ``typed`` types: 1, or for Enter the newline and the next line's
    indentation (the editor's auto-indent puts the cursor there; where the next line dedents, the developer's
    Backspace is folded into the same keystroke). A blank next line gets no indentation. Pass the text the file
    goes on with too (``Segment.typed + Segment.after``): a segment may end inside an indentation."""
    if typed[position:position + 1] != "\n":
        return 1
    line_end = typed.find("\n", position + 1)
    line = typed[position + 1:line_end if line_end >= 0 else len(typed)]
    indent = len(line) - len(line.lstrip(" \t"))
    return 1 + (indent if line[indent:] else 0)


def at_line_start(typed: str, position: int) -> bool:
    """Whether ``typed[:position]`` ends with a newline and the whole indentation after it (where Enter leaves the
    cursor; typed a character at a time, as ``bench load`` does, the pause comes once, after the indentation)."""
    head = typed[:position].rstrip(" \t")
    return position > 0 and head.endswith("\n") and typed[position:position + 1] not in (" ", "\t")


def at_token_boundary(typed: str, position: int) -> bool:
    """Whether ``typed[:position]`` ends mid-line after ``MID_LINE_BOUNDARIES`` or a keyword and a space."""
    head = typed[:position]
    line = head[head.rfind("\n") + 1:]
    if not line.strip():
        return False
    if line.endswith(MID_LINE_BOUNDARIES):
        return True
    words = line[:-1].split() if line.endswith(" ") else []
    return bool(words) and words[-1] in MID_LINE_KEYWORDS


def keystroke_delay_s(segment: Segment, position: int, seed: int) -> float:
    """Seconds between the keystroke that typed ``typed[:position]`` and the next one (deterministic for ``seed``):
    a keystroke gap, plus a pause after Enter (now and then a long one), or now and then a short one after a token
    boundary mid-line."""
    rng = random.Random(_key(seed, segment.name, position))
    delay = rng.uniform(*KEY_GAP_S)
    if at_line_start(segment.typed, position):
        delay += rng.uniform(*LINE_END_PAUSE_S)
        if rng.random() < THINK_PAUSE_SHARE:
            delay += rng.uniform(*THINK_PAUSE_S)
    elif at_token_boundary(segment.typed, position) and rng.random() < MID_LINE_PAUSE_SHARE:
        delay += rng.uniform(*MID_LINE_PAUSE_S)
    return delay


def line_budget_tokens(upcoming: str, cap: int) -> int:
    """The token budget of ``--budget line``: what a model that suggests the developer's next line and stops at its
    end would generate — the rest of the current line, or the next line with something on it when the cursor is at
    the end of one — at ``CHARS_PER_TOKEN``, plus one for the newline; at least 1, at most ``cap``.

    For models that cannot stop there: the random-weight models of a real model's shape that GPU benchmarks use
    (weights cannot be downloaded here) run every request to the budget, so a fixed budget would time 64-token
    babbles where a real model writes one line (Fernandez et al.: median ~8 output tokens on code completion).
    """
    line = upcoming.split("\n", 1)[0]
    if not line.strip():
        line = next((rest for rest in upcoming.split("\n")[1:] if rest.strip()), "")
    return max(1, min(cap, math.ceil(len(line.strip()) / CHARS_PER_TOKEN) + 1))


def accepted_length(suggestion: str, upcoming: str) -> int:
    """The acceptance oracle: how many characters a Tab on ``suggestion`` types, 0 when the developer would not take it.

    Taken when the suggestion's first line (up to the end of its first line that is not blank) is exactly what the
    developer types next; where the suggestion goes on past that line, the developer's line must end there too
    (else Tab would break their line). Then the whole suggestion is taken if the developer would type all of it,
    else that first line (as a partial accept would).
    """
    unit = _first_line(suggestion)
    if not unit.strip() or not upcoming.startswith(unit):
        return 0
    if len(suggestion) > len(unit) and upcoming[len(unit):len(unit) + 1] not in ("", "\n"):
        return 0
    if len(suggestion) > len(unit) and upcoming.startswith(suggestion):
        return len(suggestion)
    return len(unit)


def _first_line(suggestion: str) -> str:
    """``suggestion`` up to (not including) the newline that ends its first line with something on it."""
    position = 0
    while True:
        end = suggestion.find("\n", position)
        if end < 0:
            return suggestion
        if suggestion[position:end].strip():
            return suggestion[:end]
        position = end + 1
