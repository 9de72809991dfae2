"""Test doubles for the energy layer: known power profiles, the counters they would produce, replayed reads.

Kept in tests only. A ``PowerProfile`` is the truth (piecewise-linear power, exact integrals); ``stepped_counter``
turns it into what an NVML-like counter shows (steps every ~100 ms with jitter, mJ quantisation, optional lag);
``sample_reads`` reproduces the sampler's reads of it (20 ms apart, ~4 ms each); ``ReplayCounter`` plays a
profile against the real clock so the real ``Sampler`` thread can read it.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from greentrack.energy.counter import Counter
from greentrack.energy.types import CounterSample


@dataclass
class PowerProfile:
    """Piecewise-linear power through the points ``(t_s, power_w)``; constant outside. Units: s, W, J."""

    points: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.points.sort()
        self._ts = [t for t, _ in self.points]
        # Cumulative energy at each point.
        self._cum = [0.0]
        for (t0, p0), (t1, p1) in zip(self.points, self.points[1:], strict=False):
            self._cum.append(self._cum[-1] + 0.5 * (p0 + p1) * (t1 - t0))

    def power(self, t: float) -> float:
        if t <= self._ts[0]:
            return self.points[0][1]
        if t >= self._ts[-1]:
            return self.points[-1][1]
        i = bisect.bisect_right(self._ts, t) - 1
        (t0, p0), (t1, p1) = self.points[i], self.points[i + 1]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0) if t1 > t0 else p1

    def energy_to(self, t: float) -> float:
        """Energy from the first point to ``t`` (negative before it)."""
        if t <= self._ts[0]:
            return (t - self._ts[0]) * self.points[0][1]
        if t >= self._ts[-1]:
            return self._cum[-1] + (t - self._ts[-1]) * self.points[-1][1]
        i = bisect.bisect_right(self._ts, t) - 1
        t0, p0 = self.points[i]
        return self._cum[i] + 0.5 * (p0 + self.power(t)) * (t - t0)

    def energy(self, a: float, b: float) -> float:
        return self.energy_to(b) - self.energy_to(a)


class ProfileBuilder:
    """Builds a power profile from blocks: ``hold(duration, power)`` or ``ramp(duration, p0, p1)``."""

    def __init__(self, t0: float = 0.0, idle_w: float = 120.0) -> None:
        self.t = t0
        self.idle_w = idle_w
        self.points: list[tuple[float, float]] = [(t0, idle_w)]

    def hold(self, duration_s: float, power_w: float) -> tuple[float, float]:
        start = self.t
        self.points += [(start + 1e-9, power_w), (start + duration_s, power_w)]
        self.t = start + duration_s
        return start, self.t

    def ramp(self, duration_s: float, p0: float, p1: float) -> tuple[float, float]:
        start = self.t
        self.points += [(start + 1e-9, p0), (start + duration_s, p1)]
        self.t = start + duration_s
        return start, self.t

    def idle(self, duration_s: float) -> tuple[float, float]:
        return self.hold(duration_s, self.idle_w)

    def build(self, tail_s: float = 1.0) -> PowerProfile:
        self.idle(tail_s)
        return PowerProfile(list(self.points))


def stepped_counter(
    profile: PowerProfile, t0: float, t1: float, *, period_s: float = 0.1, jitter_s: float = 0.02,
    resolution_j: float = 0.001, lag_s: float = 0.0, rng: random.Random,
) -> tuple[list[float], list[float]]:
    """(step times, values) of an NVML-like counter: each step shows the energy up to (step - lag), quantised."""
    times: list[float] = []
    values: list[float] = []
    u = t0 + rng.uniform(0, period_s)
    while u < t1:
        times.append(u)
        values.append(math.floor((profile.energy_to(u - lag_s) + 1e6) / resolution_j) * resolution_j)
        u += period_s + rng.uniform(-jitter_s, jitter_s)
    return times, values


def sample_reads(
    step_times: Sequence[float], values: Sequence[float], t0: float, t1: float, *, period_s: float = 0.02,
    read_s: float = 0.004, rng: random.Random,
) -> list[CounterSample]:
    """The sampler's reads of a stepped counter: each read takes ``read_s`` and sees the value at a random
    instant inside it; reads start every ``period_s`` (± 2 ms of scheduling jitter)."""
    out: list[CounterSample] = []
    t = t0
    while t < t1:
        cost = read_s * rng.uniform(0.7, 1.5)
        seen = t + rng.uniform(0, cost)
        i = bisect.bisect_right(step_times, seen) - 1
        value = values[i] if i >= 0 else values[0] - 1.0  # before the first step: an older value
        out.append(CounterSample(t + 0.5 * cost, value, cost))
        t += period_s + rng.uniform(0, 0.002)
    return out


class ReplayCounter(Counter):
    """A profile played against the real clock, NVML-like (stepped), for the real ``Sampler`` thread.

    The profile's time 0 is the moment of construction (``origin_s`` on ``time.monotonic()``). Steps happen
    every ``period_s`` after the origin (± jitter, fixed by ``seed``); a read sleeps ``read_cost_s``.
    ``freeze()`` stops the counter moving (a driver that stopped updating).
    """

    method = "attributed"
    resolution_j = 0.001
    update_period_s = 0.1
    sample_period_s = 0.02
    timing_slack_s = 0.0
    lag_s = 0.0

    def __init__(self, profile: PowerProfile, *, period_s: float = 0.1, jitter_s: float = 0.01,
                 read_cost_s: float = 0.002, seed: int = 0, max_power_w: float = 700.0) -> None:
        self.profile = profile
        self.origin_s = time.monotonic()
        rng = random.Random(seed)
        self.steps, self.values = stepped_counter(profile, 0.0, 600.0, period_s=period_s, jitter_s=jitter_s,
                                                  rng=rng)
        self.read_cost_s = read_cost_s
        self.update_period_s = period_s
        self.max_power_w = max_power_w
        self.name = "replay:nvml-like"
        self._frozen_at: float | None = None
        self._lock = threading.Lock()

    def now(self) -> float:
        """Profile time."""
        return time.monotonic() - self.origin_s

    def freeze(self) -> None:
        with self._lock:
            self._frozen_at = self.now()

    def read_j(self) -> float:
        t = self.now()
        with self._lock:
            if self._frozen_at is not None:
                t = min(t, self._frozen_at)
        i = bisect.bisect_right(self.steps, t) - 1
        value = self.values[i] if i >= 0 else self.values[0] - 1.0
        if self.read_cost_s:
            time.sleep(self.read_cost_s)
        return value


class TraceReplayCounter(Counter):
    """A recorded counter trace (``[t_s, energy_j, read_s]`` rows) played back on the real clock: a read at
    trace time ``t`` returns the last recorded value at or before ``t``. Time 0 is construction."""

    method = "attributed"
    resolution_j = 0.001
    update_period_s = 0.1
    sample_period_s = 0.02
    timing_slack_s = 0.01
    lag_s = 0.025
    max_power_w = 700.0

    def __init__(self, rows: Sequence[Sequence[float]], *, read_cost_s: float = 0.003) -> None:
        self.times = [float(r[0]) for r in rows]
        self.values = [float(r[1]) for r in rows]
        self.read_cost_s = read_cost_s
        self.name = "replay:h100"
        self.origin_s = time.monotonic() - self.times[0]

    def read_j(self) -> float:
        time.sleep(self.read_cost_s)
        i = bisect.bisect_right(self.times, time.monotonic() - self.origin_s) - 1
        return self.values[max(0, i)]
