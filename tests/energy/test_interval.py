"""Intervals with a stated coverage (issue 13): the error model's derivation on synthetic ground truth, the
shipped model on the recorded H100 run (held out and whole), the fallbacks, and linear sums."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest
from bench.interval_data import cases, interval_of, load_recording, phase_accuracy, summarize
from tests.energy.fakes import ProfileBuilder, sample_reads, stepped_counter

from greentrack.energy.attribution import MeterInfo, attribute
from greentrack.energy.interval import (
    ErrorModel,
    Interval,
    Observation,
    completion_interval,
    figure_interval,
    fit_error_model,
    shipped_model,
    sum_intervals,
    with_intervals,
)
from greentrack.energy.types import PhaseEnergy, PhaseSpan

DATA = Path(__file__).parent / "data"
NVML = MeterInfo("nvml:gpu0", "attributed", 0.001, 700.0)


def _synthetic_completions(seed: int, n: int) -> list[tuple[float, float, float, float]]:
    """(duration s, figure J, truth J, bound J) of ``n`` completions on an NVML-like counter: prefill 35 ms at
    150–650 W, decode 0.1–0.6 s at 140 W ± 15 % (with ±30 % noise inside), idle gaps at 120 W; 20 ms reads, lag."""
    rng = random.Random(seed)
    b = ProfileBuilder(0.0, idle_w=120.0)
    b.idle(0.5)
    requests = []
    for _ in range(n):
        b.idle(rng.uniform(0.02, 0.12))
        p = b.hold(0.035, rng.uniform(150.0, 650.0))
        level = 140.0 * rng.uniform(0.85, 1.15)
        start = b.t
        for _ in range(int(rng.uniform(0.1, 0.6) / 0.02)):
            b.hold(0.02, level * rng.uniform(0.7, 1.3))
        requests.append((p, (start, b.t)))
    profile = b.build(tail_s=1.0)
    steps, values = stepped_counter(profile, 0.0, b.t + 1.0, period_s=0.1, jitter_s=0.02, lag_s=0.02, rng=rng)
    reads = sample_reads(steps, values, 0.0, b.t + 1.0, period_s=0.02, read_s=0.003, rng=rng)
    out = []
    for i, ((p0, p1), (d0, d1)) in enumerate(requests):
        spans = [PhaseSpan(f"r{i}", "prefill", p0, p1), PhaseSpan(f"r{i}", "decode", d0, d1)]
        near = [s for s in reads if p0 - 1.0 < s.t_s < d1 + 1.0]
        res = attribute(near, spans, NVML, update_period_s=0.1, timing_slack_s=0.01, lag_s=0.02)
        bound = math.fsum(p.uncertainty_j or 0.0 for p in res.phases)
        out.append((d1 - p0, res.total_j, profile.energy(p0, d1), bound))
    return out


def test_derived_interval_covers_90_percent_of_held_out_synthetic_completions() -> None:
    train = _synthetic_completions(1, 150)
    test = _synthetic_completions(2, 150)
    model = fit_error_model(Observation("completion", d, False, f, t) for d, f, t, _ in train)
    inside, widths, bounds = 0, [], []
    for d, f, t, bound in test:
        iv = figure_interval(f, bound, kind="completion", duration_s=d, meter="nvml:gpu0", method="attributed",
                             calibrated=False, model=model)
        assert iv.low_j >= f - bound - 1e-9 and iv.high_j <= f + bound + 1e-9  # inside the worst-case bound
        assert iv.low_j <= f <= iv.high_j
        inside += iv.low_j <= t <= iv.high_j
        widths.append(iv.half_width_j / f)
        bounds.append(bound / f)
    coverage = inside / len(test)
    assert 0.82 <= coverage <= 0.98, coverage  # 90 % stated; 150 cases: ±2.5 points of sampling error
    assert statistics.median(widths) < 0.5 * statistics.median(bounds)  # far narrower than the worst case


def test_fit_uses_conformal_ranks() -> None:
    obs = [Observation("decode", 0.2, True, 1.0, 1.0 + r / 100) for r in range(-50, 50)]  # errors −0.50 … 0.49
    (entry,) = fit_error_model(obs).entries
    assert entry.n == 100 and entry.min_s == 0.1 and entry.max_s == 0.3
    assert entry.q_lo == pytest.approx(-0.46) and entry.q_hi == pytest.approx(0.45)  # ranks 5 and 96 of 100


def test_shipped_model_on_the_recorded_h100_run() -> None:
    """The goal of issue 13 on the recorded mixed workload: completions ≥ 100 ms, calibrated and not."""
    model = shipped_model()
    assert model is not None and model.applies_to("nvml:gpu0") and not model.applies_to("rapl:package")
    assert "H100" in model.provenance["device"] and model.provenance["script"].startswith("bench/")
    rec = load_recording(json.loads((DATA / "h100_mixed.json").read_text()))
    for calibrated in (False, True):
        all_cases = cases(rec, calibrated=calibrated, derived=False)
        rows = [(c, interval_of(c, model, calibrated)) for c in all_cases if c.kind == "completion"]
        long = summarize(rows, min_s=0.1)
        assert long["n"] >= 70 and long["stated_share"] == 1.0
        assert 0.85 <= long["coverage"] <= 0.97, long
        assert long["median_half_width_pct"] <= 20.0, long
        assert long["median_bound_half_width_pct"] > 40.0  # what the user saw before
    # Held out: fitted on the even requests, tested on the odd ones.
    all_cases = cases(rec, calibrated=True)
    roots = sorted({c.request.split("/")[0] for c in all_cases})
    train = set(roots[::2])
    half = fit_error_model(c.observation(True) for c in all_cases if c.request.split("/")[0] in train)
    rows = [(c, interval_of(c, half, True)) for c in all_cases
            if c.request.split("/")[0] not in train and c.kind == "completion"]
    held_out = summarize(rows, min_s=0.1)
    assert 0.8 <= held_out["coverage"] <= 0.97 and held_out["median_half_width_pct"] <= 20.0, held_out
    # The figures themselves: the calibrated per-phase accuracy recorded in docs/benchmarks.md.
    accuracy = phase_accuracy(cases(rec, calibrated=True, derived=False))
    assert all(abs(v["mean_error_pct"]) < 12.0 for v in accuracy.values()), accuracy


def _phase(kind: str, e: float, u: float | None, meter: str = "nvml:gpu0", method: str = "attributed") -> PhaseEnergy:
    return PhaseEnergy("r", kind, e, method, meter, u, 0.001)  # type: ignore[arg-type]


def test_fallbacks_are_labelled_and_claim_no_coverage() -> None:
    model = shipped_model()
    assert model is not None
    rapl = figure_interval(10.0, 4.0, kind="decode", duration_s=0.2, meter="rapl:package", method="attributed",
                           calibrated=False, model=model)
    assert (rapl.low_j, rapl.high_j, rapl.coverage) == (6.0, 14.0, None) and "worst-case bound" in rapl.basis
    estimate = figure_interval(10.0, 5.0, kind="decode", duration_s=0.2, meter="estimate:cpu-time×4.0W/thread",
                               method="estimated", calibrated=False, model=model)
    assert estimate.coverage is None and "not a measurement" in estimate.basis
    too_short = figure_interval(1.0, 3.0, kind="prefill", duration_s=0.002, meter="nvml:gpu0",
                                method="attributed", calibrated=True, model=model)
    assert too_short.coverage is None and too_short.low_j == 0.0 and "2 ms" in too_short.basis
    steps = figure_interval(10.0, 4.0, kind="decode", duration_s=0.2, meter="nvml:gpu0/steps", method="attributed",
                            calibrated=False, model=model)
    assert steps.coverage is None  # batched figures are attributed by engine step: the model does not apply


def test_phase_and_completion_intervals() -> None:
    model = ErrorModel(("nvml:",), 0.9, fit_error_model(
        [Observation(k, 0.05, False, 1.0, 1.0 + r / 100) for k in ("prefill", "decode") for r in range(-20, 21)]
        + [Observation("completion", 0.5, False, 1.0, 1.0 + r / 200) for r in range(-20, 21)]).entries, {})
    spans = [PhaseSpan("r", "prefill", 0.0, 0.05), PhaseSpan("r", "decode", 0.05, 0.1)]
    phases = with_intervals([_phase("prefill", 10.0, 8.0), _phase("decode", 20.0, 30.0)], spans, calibrated=False,
                            model=model)
    assert all(p.interval_coverage == 0.9 for p in phases)
    assert phases[0].interval_low_j == pytest.approx(8.1) and phases[0].interval_high_j == pytest.approx(11.9)
    # A 0.1 s completion: no completion entry for its length, so its phases' intervals add linearly.
    whole = completion_interval(phases, spans, calibrated=False, model=model)
    assert whole is not None and whole.low_j == pytest.approx(8.1 + 16.2) and whole.coverage == 0.9
    # A 0.5 s one: the completion entry (the prefill/decode split cancels in the sum).
    longer = [spans[0], PhaseSpan("r", "decode", 0.05, 0.5)]
    whole = completion_interval(phases, longer, calibrated=False, model=model)
    assert whole is not None and whole.low_j == pytest.approx(30.0 * (1 - 0.095))


def test_sum_is_linear_and_keeps_a_common_coverage() -> None:
    a = Interval(9.0, 12.0, 0.9, "x")
    b = Interval(18.0, 24.0, 0.9, "x")
    total = sum_intervals([a, b])
    assert total == Interval(27.0, 36.0, 0.9, "x")  # ends add: errors of one cause, not in quadrature
    mixed = sum_intervals([a, Interval(1.0, 3.0, None, "worst-case bound")])
    assert mixed is not None and mixed.coverage is None and mixed.low_j == 10.0
    assert sum_intervals([]) is None


def test_shipped_model_on_the_recorded_h200_run_with_shaped_decode_truth() -> None:
    """The H200 run of 2026-11-26 (120 completions; decode truth from windows of the workload's own request
    shape): the 90 % interval covers 85–95 % of completions ≥ 100 ms with a median half-width ≤ 20 %, and the
    calibrated decode is within ±10 % of that truth (docs/benchmarks.md)."""
    model = shipped_model()
    assert model is not None and "H200" in model.provenance["device"]
    rec = load_recording(json.loads((DATA / "h200_mixed.json").read_text()))
    assert {"decode/after/128", "decode/after/1024", "decode/after/4096"} <= set(rec.truth)
    for calibrated in (False, True):
        all_cases = cases(rec, calibrated=calibrated, derived=False)
        long = summarize([(c, interval_of(c, model, calibrated)) for c in all_cases if c.kind == "completion"],
                         min_s=0.1)
        assert long["n"] >= 100 and 0.85 <= long["coverage"] <= 0.95, long
        assert long["median_half_width_pct"] <= 20.0 < long["median_bound_half_width_pct"], long
    accuracy = phase_accuracy(cases(rec, calibrated=True, derived=False))
    assert abs(accuracy["decode"]["mean_error_pct"]) <= 10.0, accuracy


def test_phases_timed_by_vllm_get_the_labelled_bound_not_the_engine_timed_model() -> None:
    """The shipped model was fitted on phases the engine times after a synchronise; vLLM's request timestamps err
    differently (its 90 % interval held 40–50 % of vLLM-served completions of ≥ 100 ms on an H200): no coverage is
    claimed."""
    model = ErrorModel(("nvml:",), 0.9, fit_error_model(
        [Observation(k, 0.05, False, 1.0, 1.0 + r / 100) for k in ("prefill", "decode", "completion")
         for r in range(-20, 21)]).entries, {})
    spans = [PhaseSpan("r", "prefill", 0.0, 0.05), PhaseSpan("r", "decode", 0.05, 0.1)]
    raw = [_phase("prefill", 10.0, 8.0), _phase("decode", 20.0, 30.0)]
    engine = with_intervals(raw, spans, calibrated=False, model=model)
    vllm = with_intervals(raw, spans, calibrated=False, model=model, timed_by="vllm")
    assert all(p.interval_coverage == 0.9 for p in engine)
    assert all(p.interval_coverage is None and "timed by vllm" in (p.interval_basis or "") for p in vllm)
    assert (vllm[0].interval_low_j, vllm[0].interval_high_j) == (2.0, 18.0)  # the worst-case bound, 10 ± 8 J
    whole = completion_interval(vllm, spans, calibrated=False, model=model, timed_by="vllm")
    assert whole is not None and whole.coverage is None and whole.low_j == pytest.approx(2.0 + 0.0)
    assert completion_interval(engine, spans, calibrated=False, model=model) is not None
