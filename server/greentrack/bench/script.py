"""What the simulated developer types, when, and which suggestions they take.

Place in the flow: the first stage of ``greentrack bench``. ``default_paths`` picks a small deterministic sample of
Python's standard library; ``Segment.from_file`` chooses where in a file the developer starts typing (a function
definition after the file's first third; the text before it is already there, nothing after the cursor);
``keystroke_delay_s`` is the human timing of each character (~100–150 ms jittered, a pause at each line end), the
same for a character whatever the configuration, so that configurations replay the same typing; ``accepted_length``
is the acceptance oracle. Pure but for reading files.
"""

from __future__ import annotations

import random
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

#: Keystroke gap (s): uniform between these, at every character.
KEY_GAP_S = (0.100, 0.150)
#: Extra pause (s) after a line end: the developer reads what they wrote, then thinks about the next line.
LINE_END_PAUSE_S = (0.6, 1.4)
#: Default sample: this many standard-library modules of between these sizes (characters).
DEFAULT_FILES = 3
DEFAULT_SIZE_RANGE = (8_000, 40_000)


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
    """One file's replay: ``before`` is in the document when typing starts; ``typed`` is typed after it."""

    name: str
    before: str
    typed: str

    @classmethod
    def from_file(cls, path: Path, chars: int, seed: int = 0) -> Segment:
        """Start at a ``def`` line after the first third of ``path`` (picked by ``seed``); type ``chars`` characters."""
        text = path.read_text(encoding="utf-8")
        return cls.from_text(path.name, text, chars, seed)

    @classmethod
    def from_text(cls, name: str, text: str, chars: int, seed: int = 0) -> Segment:
        starts = [i for i in _line_starts(text) if i >= len(text) // 3 and text[i:].lstrip(" ").startswith("def ")]
        if not starts:
            starts = [i for i in _line_starts(text) if i >= len(text) // 3] or [0]
        start = random.Random(_key(seed, name)).choice(starts)
        return cls(name, text[:start], text[start:start + max(0, chars)])


def _line_starts(text: str) -> list[int]:
    return [0, *(i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text))]


def _key(seed: int, name: str, position: int = 0) -> int:
    return zlib.crc32(f"{seed}\x00{name}\x00{position}".encode())


def keystroke_delay_s(segment: Segment, position: int, seed: int) -> float:
    """Seconds between the keystroke that typed ``typed[:position]`` and the next one (deterministic)."""
    rng = random.Random(_key(seed, segment.name, position))
    delay = rng.uniform(*KEY_GAP_S)
    if position > 0 and segment.typed[position - 1] == "\n":
        delay += rng.uniform(*LINE_END_PAUSE_S)
    return delay


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
