"""Intervals with a stated coverage around attributed figures, beside the worst-case bound.

Flow: ``attribution.attribute`` gives each phase a figure ``ê`` and a worst-case bound ``uncertainty_j`` (true
whenever power stays within ``[0, power limit]``: honest, but as wide as the figure for short phases). This
module adds an interval that holds for a stated share of cases (90 %): ``EnergyMonitor.phase_energy`` attaches
one to each phase (``with_intervals``), the pipeline one to each completion (``completion_interval``), and the
report sums them (``sum_intervals``: linearly, the errors sharing one cause).

Where it comes from: an *error model*, the quantiles of the relative error ``r = truth / ê − 1`` of attributed
figures against long-window ground truth (many identical phases back to back, power = counter energy over the
window), per (phase kind, duration bin, calibrated or not), measured on one kind of meter (NVML on an H100) and
kept as data with its provenance (``greentrack/data/interval_model.json``, made by
``bench/fit_interval_model.py`` from ``bench/gpu_validate_attribution.py``'s output). The interval is
``[ê·(1 + q_lo), ê·(1 + q_hi)]``, widened to contain ``ê`` and cut to the worst-case bound ``ê ± uncertainty_j``
(which always holds under its assumptions). A completion's interval comes from the model's ``completion`` entries
(prefill + decode as one figure: the split between them cancels in the sum) or, without one, from its phases'
intervals summed linearly.

Where no model applies, the interval is the worst-case bound, labelled so (``coverage`` None, ``basis`` says
why): another meter kind (RAPL, AMD, Apple), a duration or kind the model has too few cases of, no counter, or
phases timed other than the model's were (``timed_by``): the main model is fitted on phases the engine times itself
after a device synchronise; phases timed from vLLM's per-request timestamps err differently (its 90 % interval held
40–50 % of vLLM-served completions of ≥ 100 ms on an H200, 2026-11-27), so they get a model fitted on vLLM-timed
phases (the file's ``by_timing`` entry of that name, ``bench/fit_interval_model.py --timed-by vllm``) where the
package ships one, else the bound. Their errors differ between machines (a per-run bias of ±15 %, mostly in the
prefills), so that model is fitted ``across_runs``: phases per kind, any length (``PER_KIND_BINS_S``), calibrated
completions per duration bin, each end the extreme runs' median widened by the within-run spread (an uncalibrated
completion, with no entry, gets its phases' intervals summed: a time split errs by its prefill share).
For the CPU-time estimate the interval is the model's ±50 % range (a TDP share, not a measurement): it states no
coverage. For the calibrated model (no counter): ±max(10 %, 2 × fit error), about 95 % of the calibration's bins.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

from greentrack.energy.types import PhaseEnergy, PhaseSpan

#: How the shipped model's phases were timed: by the engine itself, after a device synchronise (the transformers
#: backend and greentrack's CPU engine). ``timed_by`` of figures the model does not apply to, e.g. "vllm".
TIMED_BY_ENGINE = "engine"

#: The coverage the shipped error model states.
DEFAULT_COVERAGE = 0.9
#: Duration bins of the error model, in seconds: [0, 10 ms), [10, 30 ms), … [1 s, ∞).
DURATION_BINS_S: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, math.inf)
#: One bin of any duration: a model per phase kind only (the vLLM-timed model, too few runs to split by length).
PER_KIND_BINS_S: tuple[float, ...] = (0.0, math.inf)
#: An entry is used only with at least this many cases (fewer cannot place a 5 % quantile).
MIN_CASES = 20
BASIS_BOUND = "worst-case bound"


@dataclass(frozen=True)
class Interval:
    """Where the true energy lies. Units: J. ``coverage``: the share of cases it holds for (0.9), None for a
    bound or a model range that states none; ``basis``: what it rests on, for the user."""

    low_j: float
    high_j: float
    coverage: float | None
    basis: str

    @property
    def half_width_j(self) -> float:
        return 0.5 * (self.high_j - self.low_j)


@dataclass(frozen=True)
class ErrorEntry:
    """Quantiles of ``truth / figure − 1`` for one (kind, duration bin, calibrated) cell, from ``n`` cases."""

    kind: str
    calibrated: bool
    min_s: float
    max_s: float
    n: int
    q_lo: float
    q_hi: float
    median: float


@dataclass(frozen=True)
class ErrorModel:
    """The error model of one meter kind (``meters``: name prefixes it applies to). See the module docstring."""

    meters: tuple[str, ...]
    coverage: float
    entries: tuple[ErrorEntry, ...]
    provenance: dict[str, Any]
    timed_by: str = TIMED_BY_ENGINE  # how the phases it was fitted on were timed; it applies to those only

    def applies_to(self, meter: str) -> bool:
        # Not for figures attributed another way (``…/steps``: by engine step under batching).
        return any(meter.startswith(m) for m in self.meters) and "nvml-power" not in meter and "/" not in meter

    def entry(self, kind: str, duration_s: float, calibrated: bool) -> ErrorEntry | None:
        for e in self.entries:
            if e.kind == kind and e.calibrated == calibrated and e.min_s <= duration_s < e.max_s and e.n >= MIN_CASES:
                return e
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "meters": list(self.meters),
            "coverage": self.coverage,
            "timed_by": self.timed_by,
            "provenance": self.provenance,
            "entries": [
                {"kind": e.kind, "calibrated": e.calibrated, "min_s": e.min_s,
                 "max_s": None if math.isinf(e.max_s) else e.max_s, "n": e.n, "q_lo": e.q_lo, "q_hi": e.q_hi,
                 "median": e.median}
                for e in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorModel:
        entries = tuple(
            ErrorEntry(str(e["kind"]), bool(e["calibrated"]), float(e["min_s"]),
                       math.inf if e["max_s"] is None else float(e["max_s"]), int(e["n"]), float(e["q_lo"]),
                       float(e["q_hi"]), float(e["median"]))
            for e in data["entries"]
        )
        return cls(tuple(data["meters"]), float(data["coverage"]), entries, dict(data.get("provenance", {})),
                   str(data.get("timed_by", TIMED_BY_ENGINE)))


#: The key of ``interval_model.json`` under which models of phases not timed by the engine are kept, by ``timed_by``
#: (``{"by_timing": {"vllm": {...}}}``); the file's top level is the engine-timed model.
BY_TIMING_KEY = "by_timing"


def model_from_document(data: dict[str, Any], timed_by: str = TIMED_BY_ENGINE) -> ErrorModel | None:
    """The model for phases timed by ``timed_by`` in an ``interval_model.json`` document; None when it has none."""
    if timed_by == TIMED_BY_ENGINE:
        return ErrorModel.from_dict(data) if "entries" in data else None
    entry = (data.get(BY_TIMING_KEY) or {}).get(timed_by)
    if entry is None:
        return None
    return ErrorModel.from_dict({**entry, "timed_by": timed_by})


@cache
def shipped_model(timed_by: str = TIMED_BY_ENGINE) -> ErrorModel | None:
    """The package's error model for phases timed by ``timed_by`` (``greentrack/data/interval_model.json``), None
    when it has none."""
    try:
        text = resources.files("greentrack").joinpath("data/interval_model.json").read_text()
    except (FileNotFoundError, OSError):
        return None
    return model_from_document(json.loads(text), timed_by)


@dataclass(frozen=True)
class Observation:
    """One attributed figure against its long-window truth. Units: J, s."""

    kind: str
    duration_s: float
    calibrated: bool
    figure_j: float
    truth_j: float
    run: str = ""  # the recording it comes from (``fit_error_model(across_runs=True)`` groups by it)

    @property
    def relative_error(self) -> float:
        return self.truth_j / self.figure_j - 1.0


def _conformal_quantiles(sorted_values: Sequence[float], tail: float) -> tuple[float, float]:
    """The order statistics of ranks ⌊(n + 1)·tail⌋ and ⌈(n + 1)·(1 − tail)⌉ (1-based, clipped): split-conformal
    ends, which cover a new exchangeable case with probability ≥ 1 − 2·tail (plain sample quantiles of a few
    dozen cases cover less: they were ~83 % for 90 % when fitted on half of the H100 run and tested on the other)."""
    n = len(sorted_values)
    lo_rank = max(1, math.floor((n + 1) * tail))
    hi_rank = min(n, math.ceil((n + 1) * (1.0 - tail)))
    return sorted_values[lo_rank - 1], sorted_values[hi_rank - 1]


def fit_error_model(
    observations: Iterable[Observation],
    *,
    meters: Sequence[str] = ("nvml:",),
    coverage: float = DEFAULT_COVERAGE,
    bins_s: Sequence[float] = DURATION_BINS_S,
    provenance: dict[str, Any] | None = None,
    timed_by: str = TIMED_BY_ENGINE,
    across_runs: bool = False,
) -> ErrorModel:
    """The ``coverage`` interval of the relative error per (kind, bin, calibrated), by split-conformal ranks.

    ``across_runs``: for errors with a bias of their own per run (``Observation.run``; vLLM-timed phases on
    different machines), the ranks are taken of each error less its run's median (the spread within a run), and
    the ends moved out to the lowest and the highest run's median: every run's centre lies inside, however few
    cases it has (pooled ranks are set by the runs with the most cases and miss a small run's bias)."""
    cells: dict[tuple[str, bool, int], dict[str, list[float]]] = {}
    for o in observations:
        if o.figure_j <= 0.0 or not math.isfinite(o.truth_j):
            continue
        b = bisect.bisect_right(bins_s, o.duration_s) - 1
        cells.setdefault((o.kind, o.calibrated, b), {}).setdefault(o.run if across_runs else "", []).append(
            o.relative_error)
    tail = 0.5 * (1.0 - coverage)
    entries = []
    for (kind, calibrated, b), by_run in sorted(cells.items()):
        errors = sorted(e for run_errors in by_run.values() for e in run_errors)
        if across_runs:
            centres = {run: statistics.median(run_errors) for run, run_errors in by_run.items()}
            spread_lo, spread_hi = _conformal_quantiles(
                sorted(e - centres[run] for run, run_errors in by_run.items() for e in run_errors), tail)
            q_lo, q_hi = min(centres.values()) + spread_lo, max(centres.values()) + spread_hi
        else:
            q_lo, q_hi = _conformal_quantiles(errors, tail)
        entries.append(ErrorEntry(kind, calibrated, bins_s[b], bins_s[b + 1], len(errors), q_lo, q_hi,
                                  statistics.median(errors)))
    return ErrorModel(tuple(meters), coverage, tuple(entries), dict(provenance or {}), timed_by)


def bound_interval(figure_j: float, uncertainty_j: float | None, why: str = "") -> Interval:
    """The worst-case bound as an interval, labelled (no coverage stated)."""
    if uncertainty_j is None:
        return Interval(figure_j, figure_j, None, "unknown" + (f" ({why})" if why else ""))
    return Interval(max(0.0, figure_j - uncertainty_j), figure_j + uncertainty_j, None,
                    BASIS_BOUND + (f" ({why})" if why else ""))


def _from_entry(figure_j: float, uncertainty_j: float | None, entry: ErrorEntry, model: ErrorModel) -> Interval:
    low = min(figure_j, figure_j * (1.0 + entry.q_lo))
    high = max(figure_j, figure_j * (1.0 + entry.q_hi))
    if uncertainty_j is not None:  # the bound holds whatever the model says
        low, high = max(low, figure_j - uncertainty_j), min(high, figure_j + uncertainty_j)
    device = model.provenance.get("device", "") or "this meter"
    upper = "" if math.isinf(entry.max_s) else f"–{entry.max_s * 1000:.0f}"
    length = "any length" if entry.min_s <= 0.0 and not upper else f"{entry.min_s * 1000:.0f}{upper} ms"
    timing = "" if model.timed_by == TIMED_BY_ENGINE else f", timed by {model.timed_by}"
    basis = f"errors of {entry.kind}s of {length} on {device}{timing}"
    return Interval(max(0.0, low), high, model.coverage, basis)


def figure_interval(
    figure_j: float,
    uncertainty_j: float | None,
    *,
    kind: str,
    duration_s: float,
    meter: str,
    method: str,
    calibrated: bool,
    model: ErrorModel | None = None,
    timed_by: str = TIMED_BY_ENGINE,
) -> Interval:
    """The interval of one figure (a phase, or a whole completion with ``kind="completion"``). ``model``: the error
    model to use (default: the package's for ``timed_by``); one fitted on phases timed otherwise gives the bound."""
    if method == "estimated":
        if meter.startswith("estimate:"):
            return bound_interval(figure_j, uncertainty_j, "CPU-time estimate: ±50 % model range, not a measurement")
        return bound_interval(figure_j, uncertainty_j, "calibrated model: ±max(10 %, 2 × fit error)")
    model = model if model is not None else shipped_model(timed_by)
    if timed_by != TIMED_BY_ENGINE and (model is None or model.timed_by != timed_by):
        return bound_interval(figure_j, uncertainty_j, f"no error model for phases timed by {timed_by}")
    if model is None or not model.applies_to(meter):
        return bound_interval(figure_j, uncertainty_j, f"no error model for {meter}")
    if model.timed_by != timed_by:
        return bound_interval(figure_j, uncertainty_j, f"no error model for phases timed by {timed_by}")
    entry = model.entry(kind, duration_s, calibrated)
    if entry is None or figure_j <= 0.0:
        return bound_interval(figure_j, uncertainty_j, f"no error model for {kind}s of {duration_s * 1000:.0f} ms")
    return _from_entry(figure_j, uncertainty_j, entry, model)


def with_intervals(
    phases: Sequence[PhaseEnergy], spans: Sequence[PhaseSpan], *, calibrated: bool, model: ErrorModel | None = None,
    timed_by: str = TIMED_BY_ENGINE,
) -> list[PhaseEnergy]:
    """``phases`` (one per span) with their intervals filled in."""
    out = []
    for p, sp in zip(phases, spans, strict=True):
        iv = figure_interval(p.energy_j, p.uncertainty_j, kind=p.kind, duration_s=sp.duration_s, meter=p.meter,
                             method=p.method, calibrated=calibrated, model=model, timed_by=timed_by)
        out.append(replace(p, interval_low_j=iv.low_j, interval_high_j=iv.high_j, interval_coverage=iv.coverage,
                           interval_basis=iv.basis))
    return out


def phase_interval(p: PhaseEnergy) -> Interval:
    """The interval a phase carries; its worst-case bound when it carries none."""
    if p.interval_low_j is None or p.interval_high_j is None:
        return bound_interval(p.energy_j, p.uncertainty_j)
    return Interval(p.interval_low_j, p.interval_high_j, p.interval_coverage, p.interval_basis or BASIS_BOUND)


def sum_intervals(intervals: Sequence[Interval]) -> Interval | None:
    """The interval of a sum, the errors sharing one cause (the counter's step timing, one error model): the ends
    add linearly, not in quadrature. The coverage stays the parts' when they all state the same; else none."""
    if not intervals:
        return None
    coverages = {iv.coverage for iv in intervals}
    coverage = coverages.pop() if len(coverages) == 1 else None
    bases = sorted({iv.basis for iv in intervals})
    basis = bases[0] if len(bases) == 1 else ("sum of " + "; ".join(bases))
    return Interval(math.fsum(iv.low_j for iv in intervals), math.fsum(iv.high_j for iv in intervals), coverage,
                    basis)


def completion_interval(
    phases: Sequence[PhaseEnergy],
    spans: Sequence[PhaseSpan],
    *,
    calibrated: bool,
    model: ErrorModel | None = None,
    timed_by: str = TIMED_BY_ENGINE,
) -> Interval | None:
    """The interval of a completion's total (Σ phases): the model's ``completion`` entry for its length (first
    start to last end) where there is one, else the phases' intervals summed linearly. None without phases."""
    if not phases:
        return None
    total_j = math.fsum(p.energy_j for p in phases)
    uncertainties = [p.uncertainty_j for p in phases]
    uncertainty = math.fsum(u for u in uncertainties if u is not None) if None not in uncertainties else None
    meters = {p.meter for p in phases}
    methods = {p.method for p in phases}
    if len(meters) == 1 and len(methods) == 1 and spans:
        duration_s = max(s.end_s for s in spans) - min(s.start_s for s in spans)
        whole = figure_interval(total_j, uncertainty, kind="completion", duration_s=duration_s,
                                meter=next(iter(meters)), method=next(iter(methods)), calibrated=calibrated,
                                model=model, timed_by=timed_by)
        if whole.coverage is not None or methods == {"estimated"}:
            return whole
    summed = sum_intervals([phase_interval(p) for p in phases])
    return summed
