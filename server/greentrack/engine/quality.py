"""The quality gate of a lossy weight format: does it suggest what the bf16 model suggests?

Place in the flow: outside serving. ``bench/cpu_engine.py`` prints the figure on ≥ 200 points and
``tests/engine/test_cpu_engine.py`` asserts it on 20. ``stdlib_points`` picks fixed completion points in real
code (the standard library of the running Python), ``suggestions`` asks a backend for its greedy suggestion at
each, ``first_line_agreement`` compares the first lines (docs/benchmarks.md, "CPU engine").
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from greentrack.engine.types import CompletionRequest, EngineResult

#: Modules the points come from, in this order (well-known, stable, plain Python); more are taken if needed.
STDLIB_MODULES = (
    "textwrap.py", "json/encoder.py", "json/decoder.py", "argparse.py", "csv.py", "dataclasses.py", "shutil.py",
    "string.py", "fractions.py", "calendar.py", "heapq.py", "bisect.py", "functools.py", "pathlib.py",
    "contextlib.py", "configparser.py", "difflib.py", "glob.py", "fnmatch.py", "statistics.py",
)


@dataclass(frozen=True)
class Point:
    """A cursor position in a real file: complete ``text`` at ``offset``."""

    name: str  # module path and line, for reports
    text: str
    offset: int


def stdlib_points(count: int, per_file: int = 12, stdlib: Path | None = None) -> list[Point]:
    """``count`` fixed cursor positions: in each module, every few lines, alternately mid-line (after half of
    the line) and at the start of a line's code (after its indentation). Deterministic for a Python version."""
    root = stdlib or Path(sysconfig.get_paths()["stdlib"])
    files = [root / name for name in STDLIB_MODULES]
    files += sorted(p for p in root.glob("*.py") if p.name not in STDLIB_MODULES)
    points: list[Point] = []
    for path in files:
        if len(points) >= count:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        lines = text.splitlines(keepends=True)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))
        code = [i for i, line in enumerate(lines) if i >= 20 and len(line.strip()) >= 12
                and not line.lstrip().startswith("#")]
        if len(code) < per_file:
            continue
        stride = len(code) // per_file
        for n, i in enumerate(code[::stride][:per_file]):
            line = lines[i].rstrip("\n")
            indent = len(line) - len(line.lstrip())
            column = indent + (len(line) - indent) // 2 if n % 2 == 0 else indent
            points.append(Point(f"{path.relative_to(root)}:{i + 1}", text, starts[i] + column))
            if len(points) >= count:
                break
    return points


def first_line(suggestion: str) -> str:
    """The first line of a suggestion that has code (trailing blanks dropped): what an editor shows first."""
    for line in suggestion.split("\n"):
        if line.strip():
            return line.rstrip()
    return ""


class Completer(Protocol):
    def complete(self, request: CompletionRequest) -> EngineResult: ...


def suggestions(backend: Completer, points: list[Point], max_tokens: int = 32, context_tokens: int = 512) -> list[str]:
    """The backend's suggestion at each point (each point its own document: no KV reuse between points)."""
    out = []
    for n, point in enumerate(points):
        request = CompletionRequest(
            request_id=f"quality-{n}", document_key=f"quality-{n}", text=point.text, offset=point.offset,
            max_tokens=max_tokens, max_time_s=60.0, context_tokens=context_tokens,
        )
        out.append(backend.complete(request).text)
    return out


def first_line_agreement(reference: list[str], candidate: list[str]) -> float:
    """Share of points whose suggestions have the same first line."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("first_line_agreement needs two equally long, non-empty lists")
    same = sum(first_line(a) == first_line(b) for a, b in zip(reference, candidate, strict=True))
    return same / len(reference)
