"""When to read a stepped energy counter: a narrow bracket around each predicted step, not a fixed poll.

Flow: ``sampler.Sampler`` (on demand) asks ``ReadPlanner.next_read_s`` when to read next and feeds every read back
through ``observe``; the reads go to the ring and from there to ``attribution.find_knots`` unchanged. Pure logic, no
threads, no clock of its own: the replay tests drive it on a virtual clock over recorded traces.

Why (issue 13, ``docs/measurement.md``): an NVML read costs ~3 ms of CPU, and a read tells something only where the
counter may have stepped. NVML's counter steps on a stable grid (median gap 100.0 ms; the steps of the recorded
H100/H200 traces sit within ±3 ms of a fitted 99.97–100.00 ms grid, the odd step up to ~35 ms late under a load
change and back on the grid at the next one). A knot's bracket is the time between the read before a step and the
read after it. Polling every 20 ms gives ~23 ms brackets for five reads per step; once the grid is known, one read
ending just before the predicted step and one starting just after it give a narrower bracket for two reads.

Reads that wait after a step (measured on an H200, ``bench/gpu_nvml_probe.py --reads-only``, docs/benchmarks.md):
the value changes at the step and is seen at once, but for ~19 ms after it the driver is busy: a read that starts
~3–15 ms after the step does not return until ~19 ms after it (~15 ms instead of ~3.4, ~18 ms of CPU; reads 7 ms
apart: 39 of 40 steps seen by such a read). So a long read that saw a step started after the step: its bracket for
the grid ends at the read's start, not its end (the knots still take the reads' own brackets); from those reads the
planner learns how long after a step the driver is busy, and the read after each window starts past that.

Phase lock: the narrow brackets of recent steps (≤ ``narrow_s``) are projected onto one another along the grid
(nominal period, each projection widened by the period's uncertainty per step); the reference that most of them
agree with (≥ 2) gives the grid's window. Unlocked (at start, after a long gap, when steps drift off the grid) the
planner polls at the fixed period, exactly as before, until two steps agree. A step that is late gets a read every
``late_period_s`` until it shows; one that came early shows in the "before" read (a wide bracket, never a wrong
one: find_knots takes the bracket from the reads themselves, never from the prediction).
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from greentrack.energy.types import CounterSample

#: A read this many times longer than the recent ones' median, that saw a step, waited in the driver's busy time after
#: the step (one that starts late in it waits less than the ~15 ms of one that starts early).
WAITED = 1.75


class ReadPlanner:
    """Plans the reads of a counter that steps every ``update_period_s``. Units: s (monotonic).

    ``fixed_period_s``: the poll period while unlocked. ``guard_s``: how far outside the predicted window the
    bracketing reads stay (the steps' own jitter around the grid). ``period_tolerance``: the relative uncertainty
    of the nominal period (widens predictions far from the observed steps).
    """

    def __init__(
        self,
        update_period_s: float,
        fixed_period_s: float,
        *,
        read_cost_s: float = 0.003,
        guard_s: float = 0.003,
        narrow_s: float = 0.03,
        max_window_s: float = 0.03,
        fine_s: float = 0.006,
        late_period_s: float = 0.01,
        period_tolerance: float = 5e-4,
        history: int = 8,
        min_agreeing: int = 4,
    ) -> None:
        if update_period_s <= 0.0:
            raise ValueError("a ReadPlanner needs a stepped counter (update_period_s > 0)")
        self.period_s = update_period_s
        self.fixed_period_s = fixed_period_s
        self.guard_s = guard_s
        self.narrow_s = narrow_s
        self.max_window_s = max_window_s
        self.fine_s = fine_s
        self.late_period_s = late_period_s
        self.period_tolerance = period_tolerance
        self.min_agreeing = min_agreeing
        self._steps: deque[tuple[float, float]] = deque(maxlen=history)  # narrow step brackets (lo, hi)
        self._reads_s: deque[float] = deque([read_cost_s], maxlen=9)
        self._busy_s: deque[float] = deque(maxlen=history)  # how long after a step reads that waited returned
        self._last: CounterSample | None = None
        self._last_step_hi: float = -math.inf  # the end of the last narrow step bracket
        self._grid: tuple[float, float] | None = None  # the locked window of the reference step
        self.locked_reads = 0
        self.fixed_reads = 0

    # -- what the reads showed ---------------------------------------------------------------------------------

    def observe(self, sample: CounterSample) -> None:
        """One read, in time order (every read the sampler makes, heartbeats included)."""
        prev, self._last = self._last, sample
        usual_s = self.read_s  # before this read joins the recent ones
        if sample.read_s <= WAITED * usual_s:
            self._reads_s.append(sample.read_s)
        if prev is None or sample.energy_j == prev.energy_j:
            return
        lo = prev.t_s - 0.5 * prev.read_s
        hi = sample.t_s + 0.5 * sample.read_s
        if sample.read_s > WAITED * usual_s:  # it waited in the busy time after the step: it started after the step
            hi = sample.t_s - 0.5 * sample.read_s
            if self._grid is not None:
                step_s = self._predicted_step_s(hi)
                self._busy_s.append(sample.t_s + 0.5 * sample.read_s - step_s)
        if self._grid is not None and hi - lo < self.period_s and self._early(hi):  # the step came before its
            self._grid = None  # window (a wide bracket): poll until enough steps agree on a grid again
            self._steps.clear()
        # A wide bracket (after a gap, or a step earlier than its window) says nothing of which step it was: the
        # planner brackets the next window anyway. (The read after a step starts past the driver's busy time.)
        if hi - lo <= self.narrow_s + self.busy_s:
            self._steps.append((lo, hi))
            self._grid = self._vote()
            self._last_step_hi = hi
        elif self._grid is not None and self._covers_a_window(lo, hi):  # wide, but around the step it expected:
            self._last_step_hi = hi  # that step is seen (else it would be polled for as a late one)

    def _vote(self) -> tuple[float, float] | None:
        """The grid window at the newest step that agrees with it, or None (fewer than two steps agree)."""
        steps = list(self._steps)
        best: tuple[int, float, float, float] | None = None  # (agreeing, reference centre, lo, hi)
        for ref_lo, ref_hi in steps:
            ref_c = 0.5 * (ref_lo + ref_hi)
            lo, hi, agreeing = ref_lo, ref_hi, 0
            for s_lo, s_hi in steps:
                m = round((ref_c - 0.5 * (s_lo + s_hi)) / self.period_s)
                widen = abs(m) * self.period_tolerance * self.period_s
                p_lo, p_hi = s_lo + m * self.period_s - widen, s_hi + m * self.period_s + widen
                if max(lo, p_lo) <= min(hi, p_hi):
                    lo, hi, agreeing = max(lo, p_lo), min(hi, p_hi), agreeing + 1
            if best is None or agreeing >= best[0]:  # ties: the newer reference
                best = (agreeing, ref_c, lo, hi)
        if best is None or best[0] < self.min_agreeing or best[3] - best[2] > self.max_window_s:
            return None
        if len(steps) >= 3 and all(not self._agrees(s, best[2], best[3]) for s in steps[-3:]):
            for _ in range(len(steps) - 3):  # the grid moved: forget what came before the newest three
                self._steps.popleft()
            return self._vote()
        return best[2], best[3]

    def _agrees(self, step: tuple[float, float], lo: float, hi: float) -> bool:
        c = 0.5 * (step[0] + step[1])
        m = round((0.5 * (lo + hi) - c) / self.period_s)
        widen = abs(m) * self.period_tolerance * self.period_s
        return max(lo, step[0] + m * self.period_s - widen) <= min(hi, step[1] + m * self.period_s + widen)

    def _nearest_window(self, t_s: float) -> int:
        """The index (periods after the grid's reference step) of the predicted window nearest ``t_s``."""
        assert self._grid is not None
        return round((t_s - 0.5 * (self._grid[0] + self._grid[1])) / self.period_s)

    def _covers_a_window(self, lo_s: float, hi_s: float) -> bool:
        """Whether the bracket ``(lo_s, hi_s)`` holds the whole predicted window nearest its end."""
        w_lo, w_hi = self.window(self._nearest_window(hi_s))
        return lo_s <= w_lo and w_hi <= hi_s

    def _early(self, bracket_hi_s: float) -> bool:
        """Whether a step seen by a read ending at ``bracket_hi_s`` came before its predicted window: that read was
        meant to end just before the window. (A late step is harmless: it is read again every ``late_period_s``.)"""
        return bracket_hi_s <= self.window(self._nearest_window(bracket_hi_s))[0] + 0.5 * self.read_s

    # -- when to read next ---------------------------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        return self._grid is not None

    @property
    def grid_width_s(self) -> float:
        """How well the grid is known: the width of the window all agreeing steps share (inf while unlocked)."""
        return self._grid[1] - self._grid[0] if self._grid is not None else math.inf

    @property
    def read_s(self) -> float:
        """The median duration of the recent reads that did not wait for an update."""
        return statistics.median(self._reads_s)

    @property
    def busy_s(self) -> float:
        """How long after a step reads wait for the driver (0 until a read has waited): the median of recent waits'
        ends after the predicted step, within 0–30 % of a period (a read stalled for other reasons must not push the
        read after each window far past it)."""
        return min(0.3 * self.period_s, max(0.0, statistics.median(self._busy_s))) if self._busy_s else 0.0

    def _predicted_step_s(self, t_s: float) -> float:
        """The centre of the predicted window nearest ``t_s`` (the grid's best guess of that step's time)."""
        assert self._grid is not None
        return 0.5 * (self._grid[0] + self._grid[1]) + self._nearest_window(t_s) * self.period_s

    def window(self, n: int) -> tuple[float, float]:
        """The predicted window (guard included) of the step ``n`` periods after the grid's reference step."""
        assert self._grid is not None
        lo, hi = self._grid
        widen = abs(n) * self.period_tolerance * self.period_s + self.guard_s
        return lo + n * self.period_s - widen, hi + n * self.period_s + widen

    def first_window_after(self, t_s: float) -> tuple[float, float] | None:
        """The predicted window of the first step whose centre is after ``t_s``; None while unlocked."""
        if self._grid is None:
            return None
        centre = 0.5 * (self._grid[0] + self._grid[1])
        return self.window(math.floor((t_s - centre) / self.period_s) + 1)

    def next_read_s(self, now_s: float) -> float:
        """When to start the next read (never before ``now_s``)."""
        last = self._last
        if last is None:
            return now_s
        last_start_s = last.t_s - 0.5 * last.read_s
        window = self._target(now_s)
        if window is None:
            self.fixed_reads += 1
            return max(now_s, last_start_s + self.fixed_period_s)
        lo, hi = window
        read_s = self.read_s
        last_end_s = last.t_s + 0.5 * last.read_s
        if last_end_s < lo - 2.0 * read_s - self.late_period_s:  # no read just before the window: take one
            when = lo - read_s
        elif self.grid_width_s > self.fine_s and last_end_s < 0.5 * (lo + hi) - read_s:  # not yet fine: halve it
            when = 0.5 * (lo + hi) - 0.5 * read_s
        elif last_start_s < hi:  # the read before the step is done: now the one after it, past the driver's busy time
            when = hi + self.busy_s
        elif last_start_s - hi > 0.4 * self.period_s:  # no step long past its window: off the grid, poll
            self._grid = None
            self.fixed_reads += 1
            return max(now_s, last_start_s + self.fixed_period_s)
        else:  # a late step: read again soon
            when = last_start_s + self.late_period_s
        self.locked_reads += 1
        return max(now_s, when)

    def _target(self, now_s: float) -> tuple[float, float] | None:
        """The window of the next step to bracket: not seen yet, and with room for a read just before it."""
        last = self._last
        assert last is not None
        last_start_s = last.t_s - 0.5 * last.read_s
        last_end_s = last.t_s + 0.5 * last.read_s
        window = self.first_window_after(max(self._last_step_hi + 0.4 * self.period_s,
                                             last_start_s - 0.5 * self.period_s))
        # Skip the windows we woke too late for: no read fits before them and none was taken just before them.
        while window is not None and last_end_s < window[0] - 2.0 * self.read_s - self.late_period_s \
                and now_s + self.read_s > window[0]:
            window = self.first_window_after(0.5 * (window[0] + window[1]) + 0.5 * self.period_s)
        return window

    def describe(self) -> dict[str, object]:
        return {"locked": self.locked, "steps": len(self._steps), "locked_reads": self.locked_reads,
                "fixed_reads": self.fixed_reads}
