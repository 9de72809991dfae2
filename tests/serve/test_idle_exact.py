"""The idle meter of the serialized (transformers) path adds up exactly: Σ completions + idle = the counter's delta.

Real parts: the CPU-time estimate as the counter (this machine has no RAPL), read by the real on-demand sampler;
"generations" are busy loops whose spans the monitor attributes alone, as the pipeline does for transformers.
"""

from __future__ import annotations

import math
import time

from greentrack.energy.monitor import open_monitor
from greentrack.energy.types import PhaseSpan
from greentrack.serve.idle import IdleEnergy, IdleMeter


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def test_completions_plus_idle_equal_the_counter_delta() -> None:
    monitor = open_monitor("cpu", on_demand=True)
    stored: list[IdleEnergy] = []
    meter = IdleMeter(monitor, stored.extend, period_s=0.3).start()
    completions_j: list[float] = []
    try:
        for i in range(4):
            time.sleep(0.25)  # idle between requests
            key = f"c{i}"
            meter.begin(key)
            monitor.begin_work()
            t0 = time.monotonic()
            _busy(0.15)
            t1 = time.monotonic()
            _busy(0.1)
            t2 = time.monotonic()
            monitor.end_work()
            spans = [PhaseSpan(key, "prefill", t0, t1, 10.0), PhaseSpan(key, "decode", t1, t2, 5.0)]
            meter.end(key, spans)
            if i == 2:
                meter.account()  # a cut while a completion waits for its energy: it must not split it
            energies = monitor.phase_energy(spans)
            energy_j = math.fsum(e.energy_j for e in energies)
            completions_j.append(energy_j)
            meter.attributed(key, energy_j, None)
        meter.close()
        totals = meter.totals()
        assert monitor.sampler is not None
        samples = monitor.sampler.samples()
    finally:
        monitor.close()
    assert len(stored) >= 2 and all(p.energy_j > 0 and p.idle_s > 0 for p in stored)
    # every completion inside the accounted window (summed window by window: equal up to rounding)
    assert math.isclose(totals.completions_j, math.fsum(completions_j), rel_tol=1e-12)
    assert math.isclose(totals.completions_j + totals.idle_j, totals.meter_j, rel_tol=1e-12)
    assert math.isclose(math.fsum(p.energy_j for p in stored), totals.idle_j, rel_tol=1e-12)
    # the meter's own delta over the window: the first and the last cut are reads of the counter
    first, last = min(p.start_s for p in stored), max(p.end_s for p in stored)
    by_t = {s.t_s: s.energy_j for s in samples}
    assert first in by_t and last in by_t
    assert math.isclose(by_t[last] - by_t[first], totals.meter_j, rel_tol=1e-12)
    assert 0.0 < totals.idle_s < totals.window_s
