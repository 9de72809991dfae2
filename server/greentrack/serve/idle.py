"""The server's idle energy: what the meter counts while no completion's phases run.

Place in the flow: the service tells ``IdleMeter`` when a generation starts (``begin``) and which phase spans it
ran (``end``); a daemon thread ``cut``s every ``period_s``: the time since the last cut, up to a moment when no
phase is running, minus the finished phases, is a set of idle gaps whose energy the monitor attributes
(``EnergyMonitor.window_energy``, a pure time window, per gap) and the sink stores (``Store.record_idle``, one
row per gap). Summed with the completions' phases, it accounts for what the counter measured: Σ completions +
idle ≈ counter delta (the two are attributed in separate calls, so they agree to within the attribution's
uncertainty, not exactly).
With one generation at a time (transformers), the gaps are simply the time between requests' phases,
including the server's own bookkeeping between them (prompt building, HTTP).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from greentrack.energy.monitor import EnergyMonitor
from greentrack.energy.types import Method, PhaseSpan
from greentrack.errors import GreentrackError

log = logging.getLogger(__name__)

#: How long after a moment the meter is read for it, so the counter has stepped past it. Units: s.
SETTLE_S = 0.5


@dataclass(frozen=True)
class IdleEnergy:
    """The energy of one idle gap. Units: J, s; ``start_s``/``end_s`` on ``time.monotonic()``'s clock."""

    start_s: float
    end_s: float
    idle_s: float
    energy_j: float
    method: Method
    meter: str
    uncertainty_j: float | None


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


class IdleMeter:
    """Accumulates the energy of the time no completion's phases run; hands each period to ``sink``."""

    def __init__(
        self,
        monitor: EnergyMonitor,
        sink: Callable[[list[IdleEnergy]], None],
        *,
        period_s: float = 30.0,
        start_s: float | None = None,
    ) -> None:
        self.monitor = monitor
        self.sink = sink
        self.period_s = period_s
        self._lock = threading.Lock()
        self._cut_s = time.monotonic() if start_s is None else start_s  # everything before is accounted for
        self._active_since: dict[int, float] = {}
        self._busy: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.total_j = 0.0
        self.total_idle_s = 0.0

    # -- what the service reports ---------------------------------------------------------------------
    def begin(self, key: int, now_s: float | None = None) -> None:
        """A generation starts (``key`` identifies it until ``end``)."""
        with self._lock:
            self._active_since[key] = time.monotonic() if now_s is None else now_s

    def end(self, key: int, spans: Sequence[PhaseSpan]) -> None:
        """The generation ``key`` finished; ``spans`` are its phases (energy that belongs to the completion)."""
        with self._lock:
            self._active_since.pop(key, None)
            self._busy.extend((s.start_s, s.end_s) for s in spans)

    # -- the periodic cut -----------------------------------------------------------------------------
    def cut(self, now_s: float | None = None) -> list[IdleEnergy]:
        """Account the idle gaps up to ``now_s - SETTLE_S`` (or the start of a running generation): one
        ``IdleEnergy`` per gap, each handed to the sink."""
        now = time.monotonic() if now_s is None else now_s
        with self._lock:
            end_s = min([now - SETTLE_S, *self._active_since.values()])
            start_s = self._cut_s
            if end_s <= start_s:
                return []
            busy = [(b0, b1) for b0, b1 in self._busy if b0 < end_s]
            self._busy = [(b0, b1) for b0, b1 in self._busy if b1 > end_s]
            self._cut_s = end_s
        gaps = [g for g in idle_gaps(start_s, end_s, busy) if g[1] > g[0]]
        periods = [p for p in (self._measure(g0, g1) for g0, g1 in gaps) if p is not None]
        for period in periods:
            self.total_j += period.energy_j
            self.total_idle_s += period.idle_s
        try:
            self.sink(periods)
        except (GreentrackError, OSError) as e:
            log.warning("idle energy %.3f J (%d gaps) not stored: %s", math.fsum(p.energy_j for p in periods),
                        len(periods), e)
        return periods

    def _measure(self, start_s: float, end_s: float) -> IdleEnergy | None:
        """The energy of one idle gap: the counter's (a time window), or a calibration's idle power."""
        monitor = self.monitor
        idle_s = end_s - start_s
        if monitor.counter is None:
            if monitor.calibration is None:
                return None
            return IdleEnergy(start_s, end_s, idle_s, monitor.calibration.idle_w * idle_s, "estimated",
                              monitor.meter_name, None)
        try:
            part = monitor.window_energy(start_s, end_s)
        except GreentrackError as e:
            log.warning("idle energy of %.1f s not measured: %s", idle_s, e)
            return None
        return IdleEnergy(start_s, end_s, idle_s, part.energy_j, part.method, part.meter, part.uncertainty_j)

    # -- the thread -------------------------------------------------------------------------------------
    def start(self) -> IdleMeter:
        self._thread = threading.Thread(target=self._run, name="greentrack-idle", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.cut()
            except Exception:  # the meter must never take the server down
                log.exception("idle energy accounting failed")

    def close(self) -> None:
        """Stop the thread and account the last period (waits for the counter to cover it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        time.sleep(SETTLE_S)
        try:
            self.cut()
        except Exception:
            log.exception("idle energy accounting failed at shutdown")
