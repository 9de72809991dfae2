"""The server's idle energy: what the meter counts that no completion was given, stored apart, adding up exactly.

Place in the flow: the service opens one ``IdleAccounts`` for the pipeline (``idle_accounts``) and reports to it
when a generation starts (``begin``), which phases it ran (``end``) and what energy its stored record got
(``attributed``); a daemon thread ``account``s every ``period_s`` and the sink stores each ``IdleEnergy``
(``Store.record_idle``) and counts it in the metrics. Two implementations, one per engine kind:

- ``LedgerIdle`` (a batching backend whose pipeline has a step ledger: vLLM). The ledger already splits every
  counter interval into the requests' shares and idle (``energy.step_ledger``); this stores its idle windows
  through ``Pipeline.store_idle_energy``. Σ stored completions + stored idle = the counter's delta over the
  ledger's window. With replicas (``greentrack serve --data-parallel-size``), ``ReplicaIdle`` holds one per replica,
  each on its own GPUs' counter.
- ``IdleMeter`` (one generation at a time: transformers). Each completion is attributed alone, from its own
  spans, on the counter's knots. A *cut* is a knot that no completion's spans straddle and before which every
  completion is attributed; the idle energy between two cuts is the counter's delta between them less the
  completions attributed in between, so Σ completions + idle = the counter's delta from the first cut to the last
  by construction (a completion whose figure was extrapolated past the counter moves that error into idle, never
  out of the sum). Without a counter (a calibration's model), idle is the calibration's idle power × idle time.

``totals`` gives the meter's delta over the accounted window, the completions' and the idle part of it (``/metrics``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greentrack.energy.attribution import Knot, find_knots
from greentrack.energy.gaps import idle_time_s
from greentrack.energy.monitor import EnergyMonitor
from greentrack.energy.types import Method, PhaseSpan
from greentrack.errors import GreentrackError

if TYPE_CHECKING:
    from greentrack.energy.step_attribution import IdleWindow
    from greentrack.pipeline import Pipeline

log = logging.getLogger(__name__)

#: How long after a moment the meter is read for it, so the counter has stepped past it. Units: s.
SETTLE_S = 0.5


@dataclass(frozen=True)
class IdleEnergy:
    """The server's energy while no completion ran, over ``[start_s, end_s]`` (``time.monotonic()``). Units: J, s.
    ``idle_s``: how long no completion ran in it."""

    start_s: float
    end_s: float
    idle_s: float
    energy_j: float
    method: Method
    meter: str
    uncertainty_j: float | None


@dataclass(frozen=True)
class EnergyTotals:
    """What was accounted since the server started. Units: J, s. ``meter_j`` is the counter's delta over
    ``window_s``; ``completions_j + idle_j == meter_j`` (to rounding) once every completion in it is stored."""

    meter_j: float
    completions_j: float
    idle_j: float
    window_s: float
    idle_s: float


class IdleAccounts:
    """The interface the service uses; the thread that accounts every ``period_s``. Subclasses do the work."""

    def __init__(self, sink: Callable[[list[IdleEnergy]], None], *, period_s: float) -> None:
        self.sink = sink
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, key: str, now_s: float | None = None) -> None:
        """A generation ``key`` reaches the engine."""

    def end(self, key: str, spans: Sequence[PhaseSpan]) -> None:
        """The generation ``key`` finished; ``spans`` are its phases."""

    def attributed(self, key: str, energy_j: float, uncertainty_j: float | None) -> None:
        """The record of ``key`` was stored with ``energy_j`` (0 for one that could not be stored)."""

    def account(self) -> list[IdleEnergy]:
        """Account (and hand to the sink) the idle energy up to the latest moment that can be accounted."""
        raise NotImplementedError

    def totals(self) -> EnergyTotals:
        raise NotImplementedError

    def start(self) -> IdleAccounts:
        self._thread = threading.Thread(target=self._run, name="greentrack-idle", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.account()
            except Exception:  # the meter must never take the server down
                log.exception("idle energy accounting failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def close(self) -> None:
        """Stop the thread and account the last period."""
        self.stop()


class LedgerIdle(IdleAccounts):
    """Idle energy from the pipeline's step ledger (``Pipeline.store_idle_energy``; the pipeline also stores a
    window at least every ``IDLE_WINDOW_S`` on its own, and the last one when it closes). The pipeline stores every
    window: ``sink`` is only told of them (metrics)."""

    def __init__(self, pipeline: Pipeline, sink: Callable[[list[IdleEnergy]], None], *, period_s: float) -> None:
        super().__init__(sink, period_s=period_s)
        if pipeline.ledger is None:
            raise ValueError("LedgerIdle needs a pipeline with a step ledger")
        self.pipeline = pipeline
        self.ledger = pipeline.ledger
        self._lock = threading.Lock()
        self.stored_idle_j = 0.0
        self.stored_idle_s = 0.0
        pipeline.store_idle = True
        pipeline.on_idle = self._stored

    def _energy(self, window: IdleWindow) -> IdleEnergy:
        from greentrack.pipeline import STEPS_METER_SUFFIX

        monitor = self.pipeline.monitor
        return IdleEnergy(window.start_s, window.end_s, window.idle_s, window.energy_j, monitor.method,
                          monitor.meter_name + STEPS_METER_SUFFIX, window.uncertainty_j)

    def _stored(self, window: IdleWindow) -> None:
        """The pipeline stored ``window`` (any thread): the sink only observes it (metrics), never stores it."""
        with self._lock:
            self.stored_idle_j += window.energy_j
            self.stored_idle_s += window.idle_s
        self.sink([self._energy(window)])

    def account(self) -> list[IdleEnergy]:
        window = self.pipeline.store_idle_energy()
        return [] if window is None else [self._energy(window)]

    def totals(self) -> EnergyTotals:
        t = self.ledger.totals()
        with self._lock:
            idle_s = self.stored_idle_s
        return EnergyTotals(t.window_j, t.requests_j, t.idle_j, max(0.0, t.end_s - t.start_s), idle_s)

    def close(self) -> None:
        self.stop()  # the pipeline stores the last window when it closes (after flushing the ledger)


class ReplicaIdle(IdleAccounts):
    """The idle energy of several replicas (``serve.replicas``), each from its own step ledger (``LedgerIdle``, which
    store their windows): ``account`` accounts each, ``totals`` sums them. Times are replica-seconds: ``window_s``
    and ``idle_s`` add over replicas, so ``1 − idle_s / window_s`` is the replicas' mean utilisation."""

    def __init__(self, parts: Sequence[LedgerIdle], sink: Callable[[list[IdleEnergy]], None], *,
                 period_s: float) -> None:
        super().__init__(sink, period_s=period_s)
        if not parts:
            raise ValueError("ReplicaIdle needs at least one replica")
        self.parts = list(parts)

    def account(self) -> list[IdleEnergy]:
        return [energy for part in self.parts for energy in part.account()]

    def totals(self) -> EnergyTotals:
        each = [part.totals() for part in self.parts]
        return EnergyTotals(
            math.fsum(t.meter_j for t in each), math.fsum(t.completions_j for t in each),
            math.fsum(t.idle_j for t in each), math.fsum(t.window_s for t in each),
            math.fsum(t.idle_s for t in each),
        )

    def start(self) -> IdleAccounts:
        for part in self.parts:
            part.start()
        return self

    def stop(self) -> None:
        for part in self.parts:
            part.stop()

    def close(self) -> None:
        for part in self.parts:
            part.close()


@dataclass
class _Done:
    """A finished generation: where its phases lie and, once stored, its energy. Units: s, J."""

    first_s: float
    last_s: float
    energy_j: float | None = None
    uncertainty_j: float | None = None


@dataclass
class _Sums:
    meter_j: float = 0.0
    completions_j: float = 0.0
    idle_j: float = 0.0
    window_s: float = 0.0
    idle_s: float = 0.0


class IdleMeter(IdleAccounts):
    """Idle energy for a backend that runs one generation at a time: counter delta between cuts less the
    completions attributed between them (see the module docstring)."""

    def __init__(
        self,
        monitor: EnergyMonitor,
        sink: Callable[[list[IdleEnergy]], None],
        *,
        period_s: float = 30.0,
        start_s: float | None = None,
    ) -> None:
        super().__init__(sink, period_s=period_s)
        self.monitor = monitor
        self._lock = threading.Lock()
        self.created_s = time.monotonic() if start_s is None else start_s
        self._cut: Knot | None = None  # the last cut: everything before it is accounted
        self._cut_s = self.created_s  # without a counter: the last cut's time
        self._active: dict[str, float] = {}
        self._done: dict[str, _Done] = {}
        self._sums = _Sums()

    # -- what the service reports ---------------------------------------------------------------------
    def begin(self, key: str, now_s: float | None = None) -> None:
        with self._lock:
            self._active[key] = time.monotonic() if now_s is None else now_s

    def end(self, key: str, spans: Sequence[PhaseSpan]) -> None:
        with self._lock:
            self._active.pop(key, None)
            if spans:
                self._done[key] = _Done(min(s.start_s for s in spans), max(s.end_s for s in spans))

    def attributed(self, key: str, energy_j: float, uncertainty_j: float | None) -> None:
        with self._lock:
            done = self._done.get(key)
            if done is not None:
                done.energy_j, done.uncertainty_j = energy_j, uncertainty_j

    # -- the cut ----------------------------------------------------------------------------------------
    def account(self, now_s: float | None = None) -> list[IdleEnergy]:
        """Account up to the last clean cut before ``now_s - SETTLE_S``: one ``IdleEnergy`` (or none)."""
        now = time.monotonic() if now_s is None else now_s
        with self._lock:
            period = self._cut_by_knots(now) if self.monitor.counter is not None else self._cut_by_time(now)
        if period is None:
            return []
        try:
            self.sink([period])
        except (GreentrackError, OSError) as e:
            log.warning("idle energy %.3f J not stored: %s", period.energy_j, e)
        return [period]

    def _limit_s(self, now: float) -> float:
        """The latest moment a cut may lie at: settled, before any running or not yet attributed generation."""
        pending = [d.first_s for d in self._done.values() if d.energy_j is None]
        return min([now - SETTLE_S, *self._active.values(), *pending])

    def _cut_by_knots(self, now: float) -> IdleEnergy | None:
        """The counter's knots: the idle energy from the last cut to the latest knot that may be the next one."""
        counter, sampler = self.monitor.counter, self.monitor.sampler
        assert counter is not None and sampler is not None
        since_s = self._cut.t_s if self._cut is not None else self.created_s
        samples = sampler.samples_between(since_s - self.monitor.lookback_s, math.inf)
        knots = find_knots(samples, update_period_s=counter.update_period_s, timing_slack_s=counter.timing_slack_s,
                           lag_s=counter.lag_s)
        start = self._cut if self._cut is not None else self._first_cut(knots)
        if start is None:
            return None
        end = self._next_cut(knots, start, self._limit_s(now))
        if end is None:
            return None
        return self._close_window(start, end)

    def _first_cut(self, knots: Sequence[Knot]) -> Knot | None:
        """The first cut: the last knot at or before the meter's creation (else the first knot); the completions
        that began before it leave the books (the meter had no knot yet). None while there is no knot."""
        before = [k for k in knots if k.t_s <= self.created_s]
        first = before[-1] if before else (knots[0] if knots else None)
        if first is None:
            return None
        self._cut = first
        for key in [k for k, d in self._done.items() if d.first_s < first.t_s]:
            del self._done[key]  # before the accounted window (the meter had no knot yet)
        return first

    def _next_cut(self, knots: Sequence[Knot], start: Knot, limit_s: float) -> Knot | None:
        """The latest knot after ``start`` and no later than ``limit_s`` that no attributed completion straddles."""
        done = [d for d in self._done.values() if d.energy_j is not None]
        end: Knot | None = None
        for k in knots:
            if k.t_s <= start.t_s or k.t_s > limit_s:
                continue
            if any(d.first_s < k.t_s < d.last_s for d in done):
                continue  # inside a completion's phases: its energy would be split between two windows
            end = k
        return end

    def _close_window(self, start: Knot, end: Knot) -> IdleEnergy:
        """Moves the cut to ``end``: the counter's delta less the completions that ended inside, added to the sums."""
        inside = {key: d for key, d in self._done.items() if d.energy_j is not None and d.last_s <= end.t_s}
        for key in inside:
            del self._done[key]
        self._cut = end
        meter_j = end.energy_j - start.energy_j
        completions_j = math.fsum(d.energy_j or 0.0 for d in inside.values())
        idle_j = meter_j - completions_j
        window_s = end.t_s - start.t_s
        busy_s = window_s - idle_time_s(start.t_s, end.t_s, [(d.first_s, d.last_s) for d in inside.values()])
        uncertainty = self._idle_uncertainty_j(list(inside.values()), idle_j)
        if idle_j < 0.0:
            log.warning("idle energy %.3f J over %.1f s is negative: the completions in it were given more than the "
                        "counter measured (a figure extrapolated past the counter)", idle_j, window_s)
        s = self._sums
        s.meter_j += meter_j
        s.completions_j += completions_j
        s.idle_j += idle_j
        s.window_s += window_s
        s.idle_s += max(0.0, window_s - busy_s)
        return IdleEnergy(start.t_s, end.t_s, max(0.0, window_s - busy_s), idle_j, self.monitor.method,
                          self.monitor.meter_name, uncertainty)

    def _idle_uncertainty_j(self, inside: Sequence[_Done], idle_j: float) -> float | None:
        """The bound on a window's idle energy: its completions' bounds, the counter's resolution at both ends and
        its relative error; None when a completion has no bound."""
        uncertainties = [d.uncertainty_j for d in inside]
        if not all(u is not None for u in uncertainties):
            return None
        meter = self.monitor.meter_info()
        return (math.fsum(u or 0.0 for u in uncertainties) + 2.0 * meter.resolution_j
                + meter.relative_uncertainty * abs(idle_j))

    def _cut_by_time(self, now: float) -> IdleEnergy | None:
        """No counter: the calibration's idle power over the time no completion ran."""
        calibration = self.monitor.calibration
        start_s, end_s = self._cut_s, self._limit_s(now)
        if end_s <= start_s:
            return None
        inside = {key: d for key, d in self._done.items() if d.energy_j is not None and d.last_s <= end_s}
        if any(d.first_s < end_s < d.last_s for d in self._done.values()):
            return None
        for key in inside:
            del self._done[key]
        self._cut_s = end_s
        idle_s = idle_time_s(start_s, end_s, [(d.first_s, d.last_s) for d in inside.values()])
        s = self._sums
        completions_j = math.fsum(d.energy_j or 0.0 for d in inside.values())
        s.completions_j += completions_j
        s.window_s += end_s - start_s
        s.idle_s += idle_s
        if calibration is None:
            return None
        idle_j = calibration.idle_w * idle_s
        s.idle_j += idle_j
        s.meter_j += idle_j + completions_j
        return IdleEnergy(start_s, end_s, idle_s, idle_j, "estimated", self.monitor.meter_name, None)

    def totals(self) -> EnergyTotals:
        with self._lock:
            s = self._sums
            return EnergyTotals(s.meter_j, s.completions_j, s.idle_j, s.window_s, s.idle_s)

    def close(self) -> None:
        """Stop the thread and account the last period (waits for the counter to cover it)."""
        self.stop()
        if self.monitor.sampler is not None:
            cover = getattr(self.monitor.sampler, "cover", None)
            if cover is not None:
                cover(time.monotonic())
        time.sleep(SETTLE_S)
        try:
            self.account()
        except Exception:
            log.exception("idle energy accounting failed at shutdown")
