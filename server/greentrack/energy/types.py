"""Shared value types of the energy layer: phase spans from the engine, energy figures to the store.

The engine records *when* each phase ran (``PhaseSpan``, monotonic seconds, taken after a device
synchronize); meters and the attributor turn spans into ``PhaseEnergy`` figures. This module knows
nothing of models or of the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["measured", "attributed", "estimated"]
PhaseKind = Literal["prefill", "decode"]


@dataclass(frozen=True)
class PhaseSpan:
    """One phase of one request, as the engine saw it.

    Units: seconds on ``time.monotonic()``'s clock. ``work`` is what the phase processed (prompt tokens
    for prefill, decoded tokens for decode); under batching, intervals are shared among the spans active
    in them in proportion to ``work`` per second where the attributor is told to.
    """

    request_id: str
    kind: PhaseKind
    start_s: float
    end_s: float
    work: float = 1.0

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)


@dataclass(frozen=True)
class PhaseEnergy:
    """The energy of one phase. Units: J.

    ``method`` says how it was obtained; ``meter`` names the counter or model; ``uncertainty_j`` is a worst-case
    bound on the error of ``energy_j`` (None where unknown); ``resolution_j`` is the counter's smallest step.
    ``interval_low_j``/``interval_high_j``: where the truth lies for a share ``interval_coverage`` of cases (0.9;
    None: the interval is the worst-case bound or a model range), ``interval_basis`` says what it rests on
    (``energy.interval``). None until ``interval.with_intervals`` fills them.
    """

    request_id: str
    kind: PhaseKind
    energy_j: float
    method: Method
    meter: str
    uncertainty_j: float | None
    resolution_j: float | None = None
    interval_low_j: float | None = None
    interval_high_j: float | None = None
    interval_coverage: float | None = None
    interval_basis: str | None = None


@dataclass(frozen=True)
class CounterSample:
    """One reading of a cumulative energy counter. Units: s (monotonic), J (since an arbitrary origin).

    ``t_s`` is the middle of the read call and ``read_s`` its duration: the value was taken somewhere in
    ``[t_s - read_s / 2, t_s + read_s / 2]`` (an NVML energy read takes ~4 ms).
    """

    t_s: float
    energy_j: float
    read_s: float = 0.0
