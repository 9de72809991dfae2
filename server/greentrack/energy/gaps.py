"""Time no busy interval covers, for the two places that charge it at the idle power.

Place in the flow: the server's idle accounts (``serve.idle``: the meter's time between completions) and the
calibration's windows (``calibrate.run_calibration``: the host time between synthetic requests) both need the
complement of a union of intervals within a window. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence


def idle_gaps(start_s: float, end_s: float, busy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """``[start_s, end_s]`` minus the union of ``busy`` intervals: the gaps, in order. Units: s."""
    gaps: list[tuple[float, float]] = []
    cursor = start_s
    for b0, b1 in sorted(busy):
        if b1 <= cursor:
            continue
        if b0 >= end_s:
            break
        if b0 > cursor:
            gaps.append((cursor, b0))
        cursor = max(cursor, b1)
    if cursor < end_s:
        gaps.append((cursor, end_s))
    return gaps


def idle_time_s(start_s: float, end_s: float, busy: Sequence[tuple[float, float]]) -> float:
    """How long ``[start_s, end_s]`` is not covered by ``busy``: the gaps' total length. Units: s."""
    return sum(b - a for a, b in idle_gaps(start_s, end_s, busy))
