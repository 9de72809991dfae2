"""The background sampler: a daemon thread that reads a ``Counter`` at a fixed period into a bounded ring.

Flow: ``EnergyMonitor`` starts one ``Sampler`` per counter; the engine only records timestamps, so no
counter read ever sits on a completion's critical path. ``EnergyMonitor.phase_energy`` waits on the
sampler until it holds a counter step after the phases' end, then hands a slice of samples to
``attribution.attribute``.

Period (see ``docs/measurement.md``): NVML 20 ms. The H100's counter steps every ~100 ms, and a knot is
timed to half the gap between two reads (plus half a read), so 20 ms reads time each step within ~12 ms,
while each read costs ~3.9 ms of a CPU thread (~20 % of one core; 10 ms would take ~40 % for ~7 ms).
RAPL and the CPU-time estimate are continuous and cheap (µs): 10 ms.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import deque

from greentrack.energy.counter import Counter
from greentrack.energy.types import CounterSample
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)


class Sampler:
    """Reads ``counter`` every ``period_s`` on a daemon thread; keeps the last ``ring_s`` seconds of samples.

    Thread-safe: ``samples_between``/``wait_until`` may be called from any thread. A counter that fails
    (``MeterUnavailable``) stops the sampler; ``error`` then says why.
    """

    def __init__(self, counter: Counter, *, period_s: float | None = None, ring_s: float = 120.0) -> None:
        self.counter = counter
        self.period_s = period_s if period_s is not None else counter.sample_period_s
        maxlen = max(16, int(ring_s / max(self.period_s, 1e-4)) + 1)
        self._ring: deque[CounterSample] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.error: str | None = None
        self.reads = 0
        self.read_time_s = 0.0  # total wall time spent in reads
        self._thread: threading.Thread | None = None

    def _read(self) -> CounterSample:
        t0 = time.monotonic()
        value_j = self.counter.read_j()
        t1 = time.monotonic()
        self.reads += 1
        self.read_time_s += t1 - t0
        return CounterSample(0.5 * (t0 + t1), value_j, t1 - t0)

    def start(self) -> Sampler:
        """Take a first sample now (so failures surface here), then sample in the background."""
        first = self._read()
        with self._cond:
            self._ring.append(first)
        self._thread = threading.Thread(target=self._run, name=f"greentrack-sampler[{self.counter.name}]",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_s = time.monotonic() + self.period_s
        while not self._stop.is_set():
            delay = next_s - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_s += self.period_s
            if next_s < time.monotonic():  # fell behind (a slow read): do not burst to catch up
                next_s = time.monotonic() + self.period_s
            try:
                sample = self._read()
            except MeterUnavailable as e:
                log.warning("energy sampler stopped: %s", e)
                with self._cond:
                    self.error = str(e)
                    self._cond.notify_all()
                return
            with self._cond:
                self._ring.append(sample)
                self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def samples(self) -> list[CounterSample]:
        with self._cond:
            return list(self._ring)

    def samples_between(self, start_s: float, end_s: float, *, margin: int = 2) -> list[CounterSample]:
        """The samples from ``margin`` reads before ``start_s`` to ``margin`` after ``end_s``."""
        with self._cond:
            ring = list(self._ring)
        ts = [s.t_s for s in ring]
        lo = max(0, bisect.bisect_left(ts, start_s) - margin)
        hi = min(len(ring), bisect.bisect_right(ts, end_s) + margin)
        return ring[lo:hi]

    def wait_for_step_after(self, t_s: float, deadline_s: float) -> bool:
        """Block until a counter step surely after ``t_s`` is in the ring, or ``deadline_s`` (monotonic) passes.

        A step is *surely after* ``t_s`` when the read before it had taken its value after ``t_s`` (for a
        continuous counter: when a read started after ``t_s`` plus the timing slack). Returns whether it came.
        """
        slack = self.counter.timing_slack_s + self.counter.lag_s
        continuous = self.counter.update_period_s <= 0.0
        with self._cond:
            while True:
                after: list[CounterSample] = []  # reads that took their value surely after t_s
                for s in reversed(self._ring):
                    if s.t_s - 0.5 * s.read_s - slack < t_s:
                        break
                    after.append(s)
                if continuous and after:
                    return True
                # Stepped: a change between two such reads.
                if any(y.energy_j != x.energy_j for y, x in itertools.pairwise(after)):
                    return True
                if self.error is not None or not self.running:
                    return False
                remaining = deadline_s - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def describe(self) -> dict[str, object]:
        with self._cond:
            n = len(self._ring)
            span_s = self._ring[-1].t_s - self._ring[0].t_s if n >= 2 else 0.0
        return {
            "period_s": self.period_s,
            "samples": n,
            "ring_span_s": span_s,
            "mean_read_s": self.read_time_s / self.reads if self.reads else None,
            "running": self.running,
            "error": self.error,
        }
