"""Observations of attribution error against long-window truth, from a recorded mixed workload (issue 13).

Used by ``bench/fit_interval_model.py`` (fits ``greentrack/data/interval_model.json``), by
``bench/gpu_validate_attribution.py`` (per-completion figure, interval and truth on the GPU) and by
``tests/energy/test_interval.py``. Input: the ``h100_mixed.json`` format — the real sampler's reads, the
workload's phase spans, the ground-truth powers of steady windows and the calibration.

Each request is attributed on its own, as the pipeline does. Besides its real phases (prefill, decode, the whole
completion), phases of other lengths are cut from the real decodes, with the same truth (decode power × time):
the first ``d`` of a decode (a shorter completion, the rest of the decode unseen) and a middle piece ``d`` between
two other decode spans (a short phase with neighbours), so that the error model has cases from 10 ms to 0.5 s.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from greentrack.energy.attribution import MeterInfo, PhaseWeights, attribute
from greentrack.energy.calibration import Calibration
from greentrack.energy.interval import (
    TIMED_BY_ENGINE,
    ErrorModel,
    Interval,
    Observation,
    figure_interval,
    sum_intervals,
)
from greentrack.energy.types import CounterSample, PhaseSpan

#: Decode prefixes and middle pieces cut from the real decodes. Units: s.
PREFIX_CUTS_S = (0.01, 0.02, 0.05, 0.08, 0.15, 0.25)
MIDDLE_CUTS_S = (0.01, 0.03, 0.06, 0.1, 0.2)


@dataclass(frozen=True)
class Recording:
    samples: list[CounterSample]
    spans: list[PhaseSpan]
    truth: dict[str, Any]
    calibration: Calibration | None
    meter: MeterInfo
    update_period_s: float
    timing_slack_s: float
    lag_s: float
    device: str
    date: str
    timed_by: str = TIMED_BY_ENGINE  # how its phases were timed: "engine" (after a synchronise) or "vllm"


def load_recording(data: dict[str, Any], *, timed_by: str | None = None) -> Recording:
    """A recording; ``timed_by`` for one made before recordings said how their phases were timed (the vLLM runs
    of 2026-11-27 02:24 UTC): it must agree with what the recording says, where it says it."""
    stated = data.get("timed_by")
    if timed_by is not None and stated is not None and stated != timed_by:
        raise ValueError(f"the recording's phases were timed by {stated}, not {timed_by}")
    counter = data.get("counter", {})
    meter = MeterInfo(str(counter.get("name", "nvml:gpu0")), "attributed", float(counter.get("resolution_j", 0.001)),
                      counter.get("max_power_w") or 700.0, 0.0, float(counter.get("relative_uncertainty", 0.0)))
    cal = Calibration.from_dict(data["calibration"]) if data.get("calibration") else None
    return Recording(
        [CounterSample(*x) for x in data["samples"]],
        [PhaseSpan(r, k, a, b, w) for r, k, a, b, w in data["spans"]],
        data["truth"], cal, meter, float(counter.get("update_period_s", 0.1)),
        float(counter.get("timing_slack_s", 0.01)), float(counter.get("lag_s", 0.025)),
        str(data.get("device", "")), str(data.get("date", "")), str(stated or timed_by or TIMED_BY_ENGINE),
    )


#: The output tokens of the ``decode/after/N`` truth windows of recordings that do not say (16 decode steps).
SHAPED_OUTPUT_TOKENS = 17


def valid_decode_truth(window: dict[str, Any], truth: dict[str, Any]) -> bool:
    """Whether a decode truth window's power can be right: not below the power of the gaps between requests (the GPU
    draws at least its idle). One below it is a subtraction gone wrong: the window's prefills removed at the power
    of the prefill window, whose durations through vLLM move with the host (2026-11-27, async scheduling on:
    ``decode/after/4096`` at 18.6 W after 4096-token prefills at 584.9 W × 29.8 ms, which ran ~45 ms in that
    window)."""
    floor_w = float(truth.get("gap", {}).get("power_w", 0.0) or 0.0)
    return float(window.get("power_w", 0.0)) >= floor_w


def truth_power_w(span: PhaseSpan, truth: dict[str, Any], prefill_work: float | None = None) -> float:
    """The steady power of the span's kind and size; a decode's from windows of its own request shape where the
    recording has them (``decode/after/N`` and ``decode/after/N/outM``, N: its request's prompt tokens, M: the
    output tokens asked; of the valid ones, ``valid_decode_truth``, the one whose M − 1 is nearest the decode's
    tokens), else ``decode/power``."""
    if span.kind == "prefill":
        return float(truth[f"prefill/{int(span.work)}"]["power_w"])
    shaped = None
    if prefill_work is not None:
        key = f"decode/after/{int(prefill_work)}"
        shapes = [v for k, v in truth.items()
                  if (k == key or k.startswith(key + "/out")) and valid_decode_truth(v, truth)]
        if shapes:
            shaped = min(shapes, key=lambda v: abs(float(v.get("output_tokens", SHAPED_OUTPUT_TOKENS)) - 1 - span.work))
    return float((shaped or truth["decode/power"])["power_w"])


#: How a prefill's truth is read from its steady window (power P, mean duration d̄, energy per phase E = P·d̄) for a
#: prefill of duration d. ``power``: P × d (the window's power holds however long the phase takes). ``energy``:
#: E + P_gap × (d − d̄) (what a prefill of its size costs, the extra or missing time at the power of the gaps between
#: requests). The two agree where phases take as long as the window's (the engine's synchronised spans); through
#: vLLM a prefill's duration is mostly host time that varies from window to window, and a repeated window moved its
#: power more than its energy per phase (docs/benchmarks.md, "A truth per phase for vLLM's prefills", 2026-11-27).
TRUTH_READINGS = ("power", "energy")


def default_truth_reading(timed_by: str) -> str:
    """``energy`` for phases timed by vLLM's request timestamps, ``power`` for the engine's synchronised spans."""
    return "power" if timed_by == TIMED_BY_ENGINE else "energy"


def truth_energy_j(span: PhaseSpan, truth: dict[str, Any], prefill_work: float | None = None,
                   reading: str = "power") -> float:
    """The span's true energy (J): its steady power (``truth_power_w``) × its duration; a prefill read as ``energy``
    (``TRUTH_READINGS``) where the recording has the window's duration and the gaps' power."""
    if reading not in TRUTH_READINGS:
        raise ValueError(f"truth reading {reading!r}: one of {TRUTH_READINGS}")
    window = truth.get(f"prefill/{int(span.work)}") if span.kind == "prefill" else None
    if reading == "energy" and window is not None and "duration_ms" in window and "gap" in truth:
        mean_s = float(window["duration_ms"]) / 1000
        energy_j = float(window.get("energy_j", float(window["power_w"]) * mean_s))
        return energy_j + float(truth["gap"]["power_w"]) * (span.duration_s - mean_s)
    return truth_power_w(span, truth, prefill_work) * span.duration_s


@dataclass(frozen=True)
class Case:
    """One attributed figure with its truth and worst-case bound. ``request`` groups a completion's cases."""

    request: str
    kind: str
    size: str
    duration_s: float
    figure_j: float
    truth_j: float
    uncertainty_j: float | None
    meter: str
    derived: bool  # cut from a real phase rather than the phase itself

    def observation(self, calibrated: bool, run: str = "") -> Observation:
        """The case as the error model's fit takes it; ``run``: its recording (``fit_error_model(across_runs)``)."""
        return Observation(self.kind, self.duration_s, calibrated, self.figure_j, self.truth_j, run)


class _Attributor:
    def __init__(self, rec: Recording, weights: PhaseWeights | None) -> None:
        self.rec, self.weights = rec, weights
        self.ts = [s.t_s for s in rec.samples]

    def __call__(self, spans: Sequence[PhaseSpan]) -> list[tuple[float, float | None]]:
        rec = self.rec
        lo = bisect.bisect_left(self.ts, min(s.start_s for s in spans) - 1.0)
        hi = bisect.bisect_right(self.ts, max(s.end_s for s in spans) + 1.0)
        res = attribute(rec.samples[lo:hi], spans, rec.meter, update_period_s=rec.update_period_s,
                        timing_slack_s=rec.timing_slack_s, lag_s=rec.lag_s, weights=self.weights)
        return [(p.energy_j, p.uncertainty_j) for p in res.phases]


def _size(span: PhaseSpan) -> str:
    return f"prefill/{int(span.work)}" if span.kind == "prefill" else "decode"


def cases(rec: Recording, *, calibrated: bool, derived: bool = True, truth_reading: str | None = None) -> list[Case]:
    """Every real phase and completion of the recording, attributed per request; with ``derived``, also the
    decode prefixes and middle pieces (see the module docstring). ``truth_reading``: how prefills' truth is read
    (``TRUTH_READINGS``; default: ``default_truth_reading`` of how the recording's phases were timed)."""
    weights = rec.calibration.weights if calibrated and rec.calibration is not None else None
    reading = truth_reading or default_truth_reading(rec.timed_by)
    collect = _CaseCollector(rec, _Attributor(rec, weights), reading)
    by_request: dict[str, list[PhaseSpan]] = {}
    for s in rec.spans:
        by_request.setdefault(s.request_id, []).append(s)
    for rid, spans in by_request.items():
        collect.add(rid, spans, range(len(spans)), is_derived=False, completion=True)
        if derived and len(spans) == 2 and spans[1].kind == "decode":
            collect.decode_cuts(rid, spans[0], spans[1])
    return collect.out


class _CaseCollector:
    """Attributes span sets of one request (``run``) and collects their cases, in order, in ``out``."""

    def __init__(self, rec: Recording, run: _Attributor, reading: str) -> None:
        self.rec, self.run, self.reading = rec, run, reading
        self.out: list[Case] = []

    def _truth_j(self, span: PhaseSpan, prompt: float | None) -> float:
        return truth_energy_j(span, self.rec.truth, prompt, self.reading)

    def add(self, rid: str, spans: Sequence[PhaseSpan], keep: Sequence[int], *, is_derived: bool,
            completion: bool) -> None:
        """Attribute ``spans`` together; keep a case for each span in ``keep``, and (``completion``) one for all."""
        figures = self.run(spans)
        name = self.rec.meter.name
        prompt = spans[0].work if spans[0].kind == "prefill" else None
        for i in keep:
            sp, (e, u) = spans[i], figures[i]
            self.out.append(Case(rid, sp.kind, _size(sp), sp.duration_s, e,
                                 self._truth_j(sp, prompt), u, name, is_derived))
        if completion:
            total = math.fsum(e for e, _ in figures)
            us = [u for _, u in figures]
            self.out.append(Case(rid, "completion", "completion", spans[-1].end_s - spans[0].start_s, total,
                                 math.fsum(self._truth_j(sp, prompt) for sp in spans),
                                 None if None in us else math.fsum(u for u in us if u is not None), name, is_derived))

    def decode_cuts(self, rid: str, pre: PhaseSpan, dec: PhaseSpan) -> None:
        """The derived cases of a prefill + decode request: decode prefixes, then middle pieces."""
        per_s = dec.work / dec.duration_s if dec.duration_s > 0 else 0.0
        for d in PREFIX_CUTS_S:
            if dec.duration_s < d + 0.05:
                continue
            cut = [pre, PhaseSpan(rid, "decode", dec.start_s, dec.start_s + d, max(1.0, per_s * d))]
            self.add(f"{rid}/prefix{d}", cut, [1], is_derived=True, completion=True)
        for d in MIDDLE_CUTS_S:
            a = dec.start_s + 0.1
            if dec.end_s < a + d + 0.05:
                continue
            cut = [pre, PhaseSpan(rid, "decode", dec.start_s, a, per_s * 0.1),
                   PhaseSpan(rid, "decode", a, a + d, max(1.0, per_s * d)),
                   PhaseSpan(rid, "decode", a + d, dec.end_s, per_s * (dec.end_s - a - d))]
            self.add(f"{rid}/middle{d}", cut, [2], is_derived=True, completion=False)


def interval_of(case: Case, model: ErrorModel | None, calibrated: bool, timed_by: str = TIMED_BY_ENGINE) -> Interval:
    """The case's interval as the product gives it (``model`` None: the package's for ``timed_by``)."""
    return figure_interval(case.figure_j, case.uncertainty_j, kind=case.kind, duration_s=case.duration_s,
                           meter=case.meter, method="attributed", calibrated=calibrated, model=model,
                           timed_by=timed_by)


def completion_intervals(all_cases: Sequence[Case], model: ErrorModel | None, calibrated: bool,
                         timed_by: str = TIMED_BY_ENGINE) -> list[tuple[Case, Interval]]:
    """Each real completion among ``all_cases`` with its interval as the product gives it
    (``interval.completion_interval``): the model's ``completion`` entry where it has one that applies, else its
    real phases' intervals summed linearly (the vLLM-timed model has none for uncalibrated figures)."""
    phases: dict[str, list[Case]] = {}
    for c in all_cases:
        if not c.derived and c.kind != "completion":
            phases.setdefault(c.request, []).append(c)
    out = []
    for c in all_cases:
        if c.kind != "completion" or c.derived:
            continue
        whole = interval_of(c, model, calibrated, timed_by)
        summed = None if whole.coverage is not None else sum_intervals(
            [interval_of(p, model, calibrated, timed_by) for p in phases.get(c.request, [])])
        out.append((c, summed or whole))
    return out


def summarize(rows: Iterable[tuple[Case, Interval]], *, min_s: float = 0.0, max_s: float = math.inf) -> dict[str, Any]:
    """Coverage, median half-width (share of the figure) and the bound's median half-width over the rows whose
    duration lies in ``[min_s, max_s)``."""
    sel = [(c, iv) for c, iv in rows if min_s <= c.duration_s < max_s and c.figure_j > 0]
    if not sel:
        return {"n": 0}
    inside = [iv.low_j <= c.truth_j <= iv.high_j for c, iv in sel]
    stated = [iv.coverage is not None for _, iv in sel]
    return {
        "n": len(sel),
        "coverage": sum(inside) / len(sel),
        "stated_share": sum(stated) / len(sel),
        "median_half_width_pct": 100 * statistics.median(iv.half_width_j / c.figure_j for c, iv in sel),
        "median_bound_half_width_pct": 100 * statistics.median(
            (c.uncertainty_j if c.uncertainty_j is not None else math.inf) / c.figure_j for c, _ in sel),
        "median_abs_error_pct": 100 * statistics.median(abs(c.truth_j / c.figure_j - 1) for c, _ in sel),
    }


def phase_accuracy(all_cases: Iterable[Case], *, min_s: float = 0.01) -> dict[str, dict[str, float]]:
    """Mean attributed vs mean truth per (kind, size) of the real phases of ≥ ``min_s``: the ±10 % goal."""
    groups: dict[str, list[Case]] = {}
    for c in all_cases:
        if not c.derived and c.kind != "completion" and c.duration_s >= min_s:
            groups.setdefault(c.size, []).append(c)
    return {k: {"n": len(v), "mean_error_pct": 100 * (statistics.fmean(c.figure_j for c in v)
                                                      / statistics.fmean(c.truth_j for c in v) - 1)}
            for k, v in sorted(groups.items())}
