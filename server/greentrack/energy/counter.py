"""The one meter interface: a cumulative energy counter that the background sampler reads.

Flow: a ``Counter`` (NVML, RAPL or the CPU-time estimate) is read only by ``sampler.Sampler``'s thread, never
on a completion's critical path; the sampler's ``CounterSample``s and the engine's ``PhaseSpan``s go to
``attribution.attribute``. Every counter says how coarse it is (``resolution_j``, ``update_period_s``),
what one read costs (``read_cost_s``) and the most power it can report (``max_power_w``), because the
attribution's uncertainty is derived from exactly these.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from greentrack.energy.types import Method


@dataclass(frozen=True)
class MeterStatus:
    """Whether a meter works here, for ``greentrack doctor``. ``reason`` says why not (or what it reads)."""

    name: str
    available: bool
    reason: str


class Counter(ABC):
    """A cumulative energy counter. Units: J, s, W.

    Attributes:
        name: what the figures' ``meter`` field says, e.g. ``"nvml:gpu0"`` or ``"estimate:cpu-time×4.0W/thread"``.
        method: ``"attributed"`` for a real counter, ``"estimated"`` for a model.
        resolution_j: the smallest step of the value (NVML: 1 mJ; RAPL: 1 µJ).
        update_period_s: how often the value moves; 0 for a value computed at the read (a continuous counter).
        read_cost_s: what one ``read_j`` costs in wall time (NVML on H100: ~3.9 ms; RAPL: ~20 µs).
        sample_period_s: the period the sampler should poll at (see ``docs/measurement.md``).
        timing_slack_s: extra uncertainty on when a value applies (e.g. a power reading averaged over a window).
        lag_s: how long after the energy it covers the counter shows it (0 unless measured otherwise).
        max_power_w: a ceiling on the power the counter can see (the device's power limit), or None.
        relative_uncertainty: the meter's own relative error (0 for a counter whose sensor error we do not
            add, 0.5 for the CPU-time estimate).
    """

    name: str = "counter"
    method: Method = "attributed"
    resolution_j: float = 0.0
    update_period_s: float = 0.0
    read_cost_s: float = 0.0
    sample_period_s: float = 0.02
    timing_slack_s: float = 0.0
    lag_s: float = 0.0
    max_power_w: float | None = None
    relative_uncertainty: float = 0.0

    @abstractmethod
    def read_j(self) -> float:
        """The cumulative energy, J, since an arbitrary origin. Raises ``MeterUnavailable`` when it stops working."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the vendor library (NVML shutdown); reads after close are an error."""

    def describe(self) -> dict[str, object]:
        """The counter's properties, for ``greentrack doctor`` and logs."""
        return {
            "name": self.name,
            "method": self.method,
            "resolution_j": self.resolution_j,
            "update_period_s": self.update_period_s,
            "read_cost_s": self.read_cost_s,
            "sample_period_s": self.sample_period_s,
            "timing_slack_s": self.timing_slack_s,
            "lag_s": self.lag_s,
            "max_power_w": self.max_power_w,
            "relative_uncertainty": self.relative_uncertainty,
        }


def measure_read_cost_s(counter: Counter, reads: int = 5) -> float:
    """The median wall time of ``reads`` calls of ``counter.read_j()``. Units: s."""
    costs: list[float] = []
    for _ in range(max(1, reads)):
        t0 = time.perf_counter()
        counter.read_j()
        costs.append(time.perf_counter() - t0)
    costs.sort()
    return costs[len(costs) // 2]
