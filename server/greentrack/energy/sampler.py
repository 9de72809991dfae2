"""The background sampler: a daemon thread that reads a ``Counter`` at a fixed period into a bounded ring.

Flow: ``EnergyMonitor`` starts one ``Sampler`` per counter; the engine only records timestamps, so no
counter read ever sits on a completion's critical path. ``EnergyMonitor.phase_energy`` waits on the
sampler until it holds a counter step after the phases' end, then hands a slice of samples to
``attribution.attribute``.

Period (see ``docs/measurement.md``): NVML 20 ms. The H100's counter steps every ~100 ms, and a knot is
timed to half the gap between two reads (plus half a read), so 20 ms reads time each step within ~12 ms,
while each read costs ~3.9 ms of a CPU thread (~20 % of one core; 10 ms would take ~40 % for ~7 ms).
RAPL and the CPU-time estimate are continuous and cheap (µs): 10 ms.

On demand (``on_demand=True``, what the language server and ``greentrack serve`` use): the thread reads only
around work and otherwise sleeps, with one *heartbeat* read every ``idle_period_s`` (5 s: RAPL's wraparound and
long idle windows stay covered) — an NVML read costs ~3 ms of CPU, so polling all day would cost ~17 % of a core.
Sampling runs from ``expect_work`` (a request arrived: the debounce gives the sampler a counter step's head start
before the prefill) until the matching ``begin_work`` or ``hold_s``, while work begun with ``begin_work`` is in
flight, and after ``end_work``/``cover`` until the counter has stepped once surely after the last phase (the knot
``attribution`` needs; issue 13 measured that a second step and a hold outliving the work cost more CPU than the
work's energy share allows).

Around work, a stepped counter is read by phase (``read_planner.ReadPlanner``, on by default when on demand):
once the step grid is locked, one read just before and one just after each predicted step (a third, in the middle,
until the grid is known to ~6 ms), ~2.3 reads per step instead of 5, with brackets no wider than the 20 ms poll's;
unlocked, it polls at ``period_s`` as before. ``docs/measurement.md`` has the figures.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import deque

from greentrack.energy.counter import Counter
from greentrack.energy.read_planner import ReadPlanner
from greentrack.energy.types import CounterSample
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)


class Sampler:
    """Reads ``counter`` every ``period_s`` on a daemon thread; keeps the last ``ring_s`` seconds of samples.

    Thread-safe: ``samples_between``/``wait_until`` may be called from any thread. A counter that fails
    (``MeterUnavailable``) stops the sampler; ``error`` then says why.

    ``on_demand``: sample at ``period_s`` only around work (``expect_work``, ``begin_work``/``end_work``,
    ``cover``) and for ``initial_hold_s`` after ``start``; otherwise one read every ``idle_period_s``.
    ``running`` stays true while the thread waits for work: it means the sampler works, not that it reads.
    ``phase_locked`` (default: ``on_demand``, for a stepped counter): read around predicted steps (``ReadPlanner``)
    instead of every ``period_s``.
    """

    def __init__(
        self,
        counter: Counter,
        *,
        period_s: float | None = None,
        ring_s: float = 120.0,
        on_demand: bool = False,
        idle_period_s: float = 5.0,
        initial_hold_s: float = 2.0,
        hold_s: float = 1.0,
        phase_locked: bool | None = None,
    ) -> None:
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
        self.on_demand = on_demand
        self.idle_period_s = idle_period_s
        self.initial_hold_s = initial_hold_s
        self.hold_s = hold_s
        self._wake = threading.Event()
        self._hold_until_s = 0.0  # sample until then (the start-up hold)
        self._expected: list[float] = []  # deadlines of expect_work calls not yet met by a begin_work
        self._active = 0  # work begun and not ended
        self._cover_s: float | None = None  # sample until the counter has stepped once surely after this instant
        self.idle_reads = 0  # heartbeat reads while waiting for work
        self.started_s = 0.0
        self.sampling_s = 0.0  # time spent sampling at full rate (on demand), for the meter's cost
        self._sampling_since_s: float | None = None
        locked = on_demand if phase_locked is None else phase_locked
        self.planner: ReadPlanner | None = (
            ReadPlanner(counter.update_period_s, self.period_s, read_cost_s=counter.read_cost_s or 0.003)
            if locked and counter.update_period_s > 0.0 else None)

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
        self.started_s = first.t_s
        if self.planner is not None:
            self.planner.observe(first)
        with self._cond:
            self._ring.append(first)
            self._hold_until_s = time.monotonic() + self.initial_hold_s
        self._mark_sampling(True)
        self._thread = threading.Thread(target=self._run, name=f"greentrack-sampler[{self.counter.name}]",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_s = time.monotonic() + self.period_s
        while not self._stop.is_set():
            if self.on_demand and not self._wanted():
                if not self._idle_until_work():
                    return
                next_s = time.monotonic()  # work came: read at once (the planner may say later)
            if self.planner is not None:
                next_s = max(self.planner.next_read_s(time.monotonic()), self._covering_read_s())
            delay = next_s - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self.on_demand and not self._wanted():  # the work was covered while waiting: no read
                continue
            if self.planner is not None and self._covering_read_s() > time.monotonic() + 0.001:
                continue  # the work ended while waiting: plan again, for the read that can cover it
            next_s += self.period_s
            if next_s < time.monotonic():  # fell behind (a slow read): do not burst to catch up
                next_s = time.monotonic() + self.period_s
            if not self._read_into_ring():
                return

    def _read_into_ring(self, *, heartbeat: bool = False) -> bool:
        """One read appended to the ring (waking waiters); False when the counter failed (the sampler stops)."""
        try:
            sample = self._read()
        except MeterUnavailable as e:
            log.warning("energy sampler stopped: %s", e)
            with self._cond:
                self.error = str(e)
                self._cond.notify_all()
            return False
        if self.planner is not None:
            self.planner.observe(sample)
        with self._cond:
            self._ring.append(sample)
            if heartbeat:
                self.idle_reads += 1
            self._cond.notify_all()
        return True

    def _idle_until_work(self) -> bool:
        """Wait for work, reading once every ``idle_period_s``; False when the sampler stopped or failed."""
        self._mark_sampling(False)
        while not self._stop.is_set():
            self._wake.clear()
            if self._wanted():  # asked for between the caller's check and the clear
                self._mark_sampling(True)
                return True
            woken = self._wake.wait(self.idle_period_s if self.idle_period_s > 0 else None)
            if self._stop.is_set():
                return False
            if not woken and not self._read_into_ring(heartbeat=True):
                return False
        return False

    def _mark_sampling(self, on: bool) -> None:
        now = time.monotonic()
        with self._cond:
            if on and self._sampling_since_s is None:
                self._sampling_since_s = now
            elif not on and self._sampling_since_s is not None:
                self.sampling_s += now - self._sampling_since_s
                self._sampling_since_s = None

    def _covering_read_s(self) -> float:
        """While only covering ended work (none in flight or expected): no read before the first that can take its
        value surely after the covered instant — an earlier one cannot be the read before the covering step, and the
        planner would spend a window on it. Else 0 (no constraint)."""
        with self._cond:
            if self._cover_s is None or self._active > 0 or self._expected:
                return 0.0
            if self._ring and self._surely_after(self._ring[-1], self._cover_s):
                return 0.0  # that read is taken: the planner brackets the step after it
            return self._cover_s + self._slack_s

    def _wanted(self) -> bool:
        """Whether to sample now: work expected, in flight, or not yet covered by the counter."""
        now = time.monotonic()
        with self._cond:
            if self._expected and self._expected[0] <= now:
                self._expected = [t for t in self._expected if t > now]
            if self._active > 0 or self._expected or now < self._hold_until_s:
                return True
            if self._cover_s is None:
                return False
            if self._steps_after(self._cover_s) >= 1:
                self._cover_s = None
                return False
            return True

    # -- work around which to sample (on demand) -----------------------------------------------------------

    def expect_work(self, hold_s: float | None = None) -> None:
        """Work is coming (a request arrived, its debounce runs): sample until its ``begin_work``, for at most
        ``hold_s`` seconds (a request superseded during its debounce never begins)."""
        with self._cond:
            self._expected.append(time.monotonic() + (self.hold_s if hold_s is None else hold_s))
            self._expected.sort()
        self._wake.set()

    def begin_work(self) -> None:
        """Work starts (meeting the oldest ``expect_work``): sample until the matching ``end_work`` and the counter
        has covered it."""
        with self._cond:
            self._active += 1
            if self._expected:
                self._expected.pop(0)
        self._wake.set()

    def end_work(self, last_end_s: float | None = None) -> None:
        """Work ended (its last phase at ``last_end_s``, default now): sample on until the counter covers it."""
        with self._cond:
            self._active = max(0, self._active - 1)
        self.cover(time.monotonic() if last_end_s is None else last_end_s)

    def cover(self, t_s: float) -> None:
        """Sample until the counter has stepped once surely after ``t_s`` (then stop, when on demand)."""
        with self._cond:
            self._cover_s = t_s if self._cover_s is None else max(self._cover_s, t_s)
        self._wake.set()

    def thread_cpu_s(self) -> float | None:
        """CPU seconds the sampler thread has used (Linux: its own CPU clock); None where unknown."""
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return None
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (AttributeError, OSError):
            return None

    @property
    def active_work(self) -> int:
        with self._cond:
            return self._active

    @property
    def sampling(self) -> bool:
        """Whether the thread reads at the full period now (always, unless on demand and idle)."""
        with self._cond:
            return self._thread is not None and (not self.on_demand or self._sampling_since_s is not None)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def samples(self) -> list[CounterSample]:
        with self._cond:
            return list(self._ring)

    def samples_between(self, start_s: float, end_s: float, *, margin: int = 2) -> list[CounterSample]:
        """The samples from ``margin`` reads before ``start_s`` to ``margin`` after ``end_s``.

        Walks back from the newest read only as far as ``start_s`` needs: the ring holds minutes of reads, and
        a loaded server's finaliser asks for the last second or so many times a second (copying the whole ring
        each time kept the step ledger's lock, and with it the engine thread, waiting: H200, 64 developers)."""
        with self._cond:
            recent: list[CounterSample] = []
            before = 0
            for sample in reversed(self._ring):
                if sample.t_s < start_s:
                    before += 1
                    if before > margin:
                        break
                recent.append(sample)
        recent.reverse()
        hi = min(len(recent), bisect.bisect_right([x.t_s for x in recent], end_s) + margin)
        return recent[:hi]

    @property
    def _slack_s(self) -> float:
        """How long after an instant a read must start to have surely taken its value after it (lag and slack)."""
        return self.counter.timing_slack_s + self.counter.lag_s

    def _surely_after(self, sample: CounterSample, t_s: float) -> bool:
        """Whether ``sample`` took its value surely after ``t_s``."""
        return sample.t_s - 0.5 * sample.read_s - self._slack_s >= t_s

    def _steps_after(self, t_s: float) -> int:
        """Counter steps (a continuous counter: reads) whose value was surely taken after ``t_s``; call with
        ``_cond`` held."""
        after: list[CounterSample] = []  # reads that took their value surely after t_s, newest first
        for s in reversed(self._ring):
            if not self._surely_after(s, t_s):
                break
            after.append(s)
        if self.counter.update_period_s <= 0.0:
            return len(after)
        return sum(1 for y, x in itertools.pairwise(after) if y.energy_j != x.energy_j)

    def wait_for_step_after(self, t_s: float, deadline_s: float) -> bool:
        """Block until a counter step surely after ``t_s`` is in the ring, or ``deadline_s`` (monotonic) passes.

        A step is *surely after* ``t_s`` when the read before it had taken its value after ``t_s`` (for a
        continuous counter: when a read started after ``t_s`` plus the timing slack). Returns whether it came.
        On demand, the sampler is asked to cover ``t_s`` first (it may have been waiting for work).
        """
        if self.on_demand:
            self.cover(t_s)
        with self._cond:
            while True:
                if self._steps_after(t_s) >= 1:
                    return True
                if self.error is not None or not self.running:
                    return False
                remaining = deadline_s - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
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
            "on_demand": self.on_demand,
            "sampling": self.sampling,
            "reads": self.reads,
            "idle_reads": self.idle_reads,
            "thread_cpu_s": self.thread_cpu_s(),
            "planner": self.planner.describe() if self.planner is not None else None,
            "age_s": time.monotonic() - self.started_s if self.started_s else 0.0,
        }
