"""Per-request energy under batching: several requests that ran together (their spans) → each one's ``PhaseEnergy``.

Flow: the vLLM backend batches concurrent requests, so their phases overlap in time and one counter interval
holds energy spent for several requests at once. ``attribute_batch`` hands the counter's samples and the
requests' spans to the attributor (``attribution.attribute`` with ``by_work=True``) and sums the result back
per request and phase. A request is anything with a ``request_id``, its phase ``spans`` and its per-step decode
``step_spans`` (``BatchedRequest``; the engine's ``EngineResult`` is one): this module knows nothing of models.
Fine-grained spans are used where the backend recorded them:

- prefill: ``scheduled_ts → first_token_ts`` of the request, work = prompt tokens actually computed (not
  reused from the prefix cache);
- decode: one span per engine step (``step_spans``: previous step's end → this step's end, work = tokens the
  request produced in it), else the whole decode span with its token count.

Within each counter interval, energy goes to the time segments where spans are active; inside a segment the
active spans share it in proportion to their work rate (tokens per second). In a step where request B's
prefill of 900 tokens is batched with request A's decode of 1 token, B gets ~900/901 of the step: tokens
processed, the only per-request work figure vLLM exposes (a decode token, memory-bound, costs more than a
prefill token: a calibrated per-kind weight corrects that where ``weights`` are given). Conservation is
exact: Σ per-request phases + unattributed = the counter's energy over the window (+ extrapolated tails).
Pure functions (``attribute_batch``) plus one convenience over an ``EnergyMonitor`` (``batch_phase_energy``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from greentrack.energy.attribution import Attribution, MeterInfo, PhaseWeights, attribute, find_knots
from greentrack.energy.calibration import calibrated_phase_energy
from greentrack.energy.monitor import EnergyMonitor
from greentrack.energy.types import CounterSample, PhaseEnergy, PhaseKind, PhaseSpan
from greentrack.errors import MeterUnavailable

PHASES: tuple[PhaseKind, ...] = ("prefill", "decode")


class BatchedRequest(Protocol):
    """One request of a batch as the energy layer sees it (``engine.types.EngineResult`` is one)."""

    @property
    def request_id(self) -> str: ...

    @property
    def spans(self) -> Sequence[PhaseSpan]:
        """Its phases: the prefill span, and the whole decode span when it decoded."""
        ...

    @property
    def step_spans(self) -> Sequence[PhaseSpan]:
        """Its decode split per engine step, where the backend recorded that (else empty)."""
        ...


def attribution_spans(request: BatchedRequest) -> list[PhaseSpan]:
    """The spans to attribute for one request: its prefill span, and per-step decode spans where recorded."""
    out = [s for s in request.spans if s.kind == "prefill"]
    if request.step_spans:
        out.extend(request.step_spans)
    else:
        out.extend(s for s in request.spans if s.kind == "decode")
    return [s for s in out if s.end_s > s.start_s]


@dataclass
class BatchAttribution:
    """Per-request phase energy for a batch. Units: J.

    ``energy[request_id]`` lists that request's ``PhaseEnergy`` (prefill, then decode when it decoded).
    Conservation: ``total_j + unattributed_j == window_j + extrapolated_j`` (up to float rounding).
    """

    energy: dict[str, list[PhaseEnergy]]
    unattributed_j: float
    window_j: float
    extrapolated_j: float
    attribution: Attribution | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_j(self) -> float:
        return math.fsum(p.energy_j for phases in self.energy.values() for p in phases)

    def request_j(self, request_id: str) -> float:
        return math.fsum(p.energy_j for p in self.energy.get(request_id, []))

    def phase(self, request_id: str, kind: PhaseKind) -> PhaseEnergy | None:
        return next((p for p in self.energy.get(request_id, []) if p.kind == kind), None)

    @property
    def conservation_error_j(self) -> float:
        """|Σ phases + unattributed − (window + extrapolated)|: 0 up to rounding."""
        return abs(self.total_j + self.unattributed_j - self.window_j - self.extrapolated_j)


def attribute_batch(
    results: Sequence[BatchedRequest],
    samples: Sequence[CounterSample],
    meter: MeterInfo,
    *,
    update_period_s: float,
    timing_slack_s: float = 0.0,
    lag_s: float = 0.0,
    weights: PhaseWeights | None = None,
) -> BatchAttribution:
    """Split the counter's energy over the requests' phases (see the module docstring). Request ids must differ."""
    ids = [r.request_id for r in results]
    if len(set(ids)) != len(ids):
        raise ValueError("attribute_batch needs distinct request ids")
    spans: list[PhaseSpan] = []
    for r in results:
        spans.extend(attribution_spans(r))
    if not spans:
        return BatchAttribution({r.request_id: [] for r in results}, 0.0, 0.0, 0.0)
    result = attribute(samples, spans, meter, update_period_s=update_period_s, timing_slack_s=timing_slack_s,
                       lag_s=lag_s, weights=weights, by_work=True)
    knots = find_knots(samples, update_period_s=update_period_s, timing_slack_s=timing_slack_s, lag_s=lag_s)
    energy: dict[str, list[PhaseEnergy]] = {}
    for r in results:
        phases: list[PhaseEnergy] = []
        for kind in PHASES:
            idx = [i for i, s in enumerate(spans) if s.request_id == r.request_id and s.kind == kind]
            if not idx:
                continue
            est = math.fsum(result.phases[i].energy_j for i in idx)
            lo = math.fsum(result.lower_j[i] for i in idx)
            hi = math.fsum(result.upper_j[i] for i in idx)
            start = min(spans[i].start_s for i in idx)
            end = max(spans[i].end_s for i in idx)
            touched = sum(1 for k0, k1 in itertools.pairwise(knots)
                          if k1.t_s > start and k0.t_s < end)
            if math.isfinite(hi):
                u: float | None = (max(est - lo, hi - est, 0.0) + meter.resolution_j * (2 + touched)
                                   + meter.relative_uncertainty * est)
            else:
                u = None
            phases.append(PhaseEnergy(r.request_id, kind, est, meter.method, meter.name, u, meter.resolution_j))
        energy[r.request_id] = phases
    notes = list(result.notes)
    if _requests_overlap(results):
        notes.append(BATCH_NOTE)
    return BatchAttribution(energy, result.unattributed_j, result.window_j, result.extrapolated_j, result, notes)


#: Said with every batched figure: the per-step total is measured, its division among requests is a convention.
BATCH_NOTE = ("requests ran in the same engine steps: each step's energy is split among them by tokens "
              "processed (a convention; a decode token costs more than a prefill token)")


def _requests_overlap(results: Sequence[BatchedRequest]) -> bool:
    """Whether any two requests' phases overlap in time (they were batched)."""
    windows = sorted((min(s.start_s for s in r.spans), max(s.end_s for s in r.spans)) for r in results if r.spans)
    return any(b0 < a1 for (_, a1), (b0, _) in itertools.pairwise(windows))


def batch_phase_energy(
    monitor: EnergyMonitor, results: Sequence[BatchedRequest], *, timeout_s: float = 1.0
) -> BatchAttribution:
    """``attribute_batch`` over ``monitor``'s counter: waits (≤ ``timeout_s``) for a counter step after the batch.

    A monitor without a counter (a calibrated model only) estimates each request's phases from its tokens:
    batching then plays no part (method ``estimated``, nothing to conserve).
    """
    counter, sampler = monitor.counter, monitor.sampler
    if counter is None or sampler is None:
        if monitor.calibration is None:
            raise MeterUnavailable("the monitor has neither a counter nor a calibration")
        est = {r.request_id: calibrated_phase_energy(r.spans, monitor.calibration) for r in results}
        return BatchAttribution(est, 0.0, 0.0, 0.0, notes=["estimated from the calibration: no counter"])
    spans = [s for r in results for s in attribution_spans(r)]
    if not spans:
        return BatchAttribution({r.request_id: [] for r in results}, 0.0, 0.0, 0.0)
    first_s = min(s.start_s for s in spans)
    last_s = max(s.end_s for s in spans)
    sampler.wait_for_step_after(last_s, time.monotonic() + timeout_s)
    lookback_s = 3.0 * max(counter.update_period_s, sampler.period_s) + counter.timing_slack_s + counter.lag_s
    samples = sampler.samples_between(first_s - lookback_s, math.inf)
    meter = MeterInfo(name=counter.name, method=counter.method, resolution_j=counter.resolution_j,
                      max_power_w=counter.max_power_w, min_power_w=0.0,
                      relative_uncertainty=counter.relative_uncertainty)
    weights = monitor.calibration.weights if monitor.calibration is not None else None
    return attribute_batch(results, samples, meter, update_period_s=counter.update_period_s,
                           timing_slack_s=counter.timing_slack_s, lag_s=counter.lag_s, weights=weights)
