"""Replays of counter traces recorded on the H100 (bench/gpu_validate_attribution.py, 2026-11-22).

``h100_trace.json``: NVML's energy counter polled back to back around known matmul loads — checks that the
fake counters of the other tests behave like the real one (step period, read cost) and that attribution
is consistent on real steps. ``h100_mixed.json``: the real sampler's reads during a mixed completion workload
on Qwen2.5-Coder-1.5B's shape, with its phase spans and the ground truth from steady windows.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from tests.energy.fakes import PowerProfile, sample_reads, stepped_counter

from greentrack.energy.attribution import MeterInfo, attribute, find_knots
from greentrack.energy.calibration import Calibration
from greentrack.energy.nvml import NvmlCounter
from greentrack.energy.types import CounterSample, PhaseSpan

DATA = Path(__file__).parent / "data"
H100 = MeterInfo("nvml:gpu0", "attributed", 0.001, 700.0)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def trace_samples() -> tuple[list[CounterSample], list[PhaseSpan]]:
    d = load("h100_trace.json")
    samples = [CounterSample(t, e, r) for t, e, r in d["samples"]]
    spans = [PhaseSpan(s["label"], "prefill", s["start_s"], s["end_s"]) for s in d["spans"]]
    return samples, spans


def every(samples: list[CounterSample], period_s: float) -> list[CounterSample]:
    """What a sampler polling every ``period_s`` would have read."""
    out, last = [], -1e9
    for s in samples:
        if s.t_s - last >= period_s:
            out.append(s)
            last = s.t_s
    return out


def step_gaps(samples: list[CounterSample]) -> list[float]:
    changes = [b.t_s for a, b in itertools.pairwise(samples) if b.energy_j != a.energy_j]
    return [b - a for a, b in itertools.pairwise(changes)]


def test_real_counter_matches_the_constants_and_the_fake() -> None:
    samples, _ = trace_samples()
    reads = sorted(s.read_s for s in samples)
    read_median_s = reads[len(reads) // 2]
    assert 0.001 < read_median_s < 0.01  # ~3 ms: why the sampler polls at 20 ms, never on the critical path
    gaps = step_gaps(samples)
    median = statistics.median(gaps)
    assert abs(median - NvmlCounter.update_period_s) < 0.01
    assert min(gaps) > 0.05
    # The fake NVML-like counter of the other tests, read back to back the same way: same step statistics.
    rng = random.Random(0)
    profile = PowerProfile([(0.0, 130.0), (20.0, 130.0)])
    steps, values = stepped_counter(profile, 0.0, 20.0, period_s=0.1, jitter_s=0.02, rng=rng)
    fake = sample_reads(steps, values, 0.0, 20.0, period_s=read_median_s, read_s=read_median_s, rng=rng)
    fake_gaps = step_gaps(fake)
    assert abs(statistics.median(fake_gaps) - median) < 0.005
    q = statistics.quantiles(gaps, n=4)
    fq = statistics.quantiles(fake_gaps, n=4)
    assert abs((q[2] - q[0]) - (fq[2] - fq[0])) < 0.02  # similar spread of step times


def test_attribution_on_the_real_trace() -> None:
    samples, spans = trace_samples()
    sampled = every(samples, 0.02)
    res = attribute(sampled, spans, H100, update_period_s=0.1, timing_slack_s=0.01, lag_s=0.025)
    assert abs(res.total_j + res.unattributed_j - res.window_j - res.extrapolated_j) < 1e-9 * res.window_j
    assert res.extrapolated_j == 0.0
    # The 1 s block: its attributed power matches the power of whole counter intervals inside it.
    block = spans[0]
    knots = [k for k in find_knots(samples, update_period_s=0.1) if block.start_s + 0.2 < k.t_s < block.end_s]
    busy_w = (knots[-1].energy_j - knots[0].energy_j) / (knots[-1].t_s - knots[0].t_s)
    plateau = PhaseSpan("plateau", "decode", block.start_s + 0.3, block.end_s - 0.1)
    plateau_w = attribute(sampled, [plateau], H100, update_period_s=0.1, timing_slack_s=0.01,
                          lag_s=0.025).phases[0].energy_j / plateau.duration_s
    assert plateau_w == pytest.approx(busy_w, rel=0.1)
    # Over the whole block, less: the GPU's power ramps up over its first ~200 ms.
    assert 0.7 * busy_w < res.phases[0].energy_j / block.duration_s < busy_w
    # Reading 5× more often (every read of the trace) gives figures within the 20 ms sampler's uncertainty.
    fine = attribute(samples, spans, H100, update_period_s=0.1, timing_slack_s=0.01, lag_s=0.025)
    for coarse, dense in zip(res.phases, fine.phases, strict=True):
        assert coarse.uncertainty_j is not None
        assert abs(coarse.energy_j - dense.energy_j) <= coarse.uncertainty_j
    # 30 ms bursts cannot be resolved by a 100 ms counter, and the bounds say so.
    bursts = [p for s, p in zip(spans, res.phases, strict=True) if "30ms" in s.request_id]
    assert all((p.uncertainty_j or 0) >= 0.5 * p.energy_j for p in bursts)


def mixed() -> tuple[list[CounterSample], list[PhaseSpan], dict[str, Any], Calibration]:
    d = load("h100_mixed.json")
    samples = [CounterSample(*x) for x in d["samples"]]
    spans = [PhaseSpan(r, k, a, b, w) for r, k, a, b, w in d["spans"]]
    return samples, spans, d["truth"], Calibration.from_dict(d["calibration"])


def truth_j(span: PhaseSpan, truth: dict[str, Any]) -> float:
    key = f"prefill/{int(span.work)}" if span.kind == "prefill" else "decode/power"
    return float(truth[key]["power_w"]) * span.duration_s


def per_kind(weights: Any) -> dict[str, tuple[float, float]]:
    """(mean relative error of the mean, share within uncertainty) per kind and size, attributing per request."""
    samples, spans, truth, _ = mixed()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for _, group in itertools.groupby(spans, key=lambda s: s.request_id):
        mine = list(group)
        res = attribute(samples, mine, H100, update_period_s=0.1, timing_slack_s=0.01, lag_s=0.025, weights=weights)
        assert abs(res.total_j + res.unattributed_j - res.window_j) < 1e-9 * res.window_j
        for sp, pe in zip(mine, res.phases, strict=True):
            key = f"prefill/{int(sp.work)}" if sp.kind == "prefill" else "decode"
            rows.setdefault(key, []).append((pe.energy_j, truth_j(sp, truth), pe.uncertainty_j or 0.0))
    out = {}
    for key, vals in rows.items():
        attributed = statistics.fmean(v[0] for v in vals)
        true = statistics.fmean(v[1] for v in vals)
        covered = sum(abs(a - t) <= u for a, t, u in vals) / len(vals)
        out[key] = (attributed / true - 1.0, covered)
    return out


def test_mixed_workload_calibrated_within_12_percent_of_steady_truth() -> None:
    """Measured 2026-11-22 (docs/benchmarks.md): -11.4 % to +11.6 %; decode's excess is real (the GPU draws
    ~8 % more in decodes right after a prefill than in steady decoding: in-situ regression, see the doc)."""
    _, _, _, cal = mixed()
    result = per_kind(cal.weights)
    assert set(result) == {"prefill/128", "prefill/1024", "prefill/4096", "decode"}
    for key, (error, covered) in result.items():
        assert abs(error) < 0.12, (key, error)
        assert covered >= 0.95, (key, covered)


def test_calibration_helps_where_power_differs_most() -> None:
    _, _, _, cal = mixed()
    uncalibrated = per_kind(None)
    calibrated = per_kind(cal.weights)
    assert abs(calibrated["prefill/4096"][0]) < 0.5 * abs(uncalibrated["prefill/4096"][0])
    for _, covered in uncalibrated.values():
        assert covered >= 0.95  # the bounds hold without a calibration too: they do not depend on the weights


def test_whole_run_conserves() -> None:
    samples, spans, _, cal = mixed()
    res = attribute(samples, spans, H100, update_period_s=0.1, timing_slack_s=0.01, lag_s=0.025, weights=cal.weights)
    assert res.extrapolated_j == 0.0
    assert abs(res.total_j + res.unattributed_j - res.window_j) < 1e-9 * res.window_j
    assert 0.0 < res.unattributed_j < 0.2 * res.window_j  # idle gaps between requests


def test_recorded_trace_through_the_real_sampler() -> None:
    """The H100 trace played on the real clock, read by the real sampler thread (20 ms): the monitor's figure
    for the 1 s load matches the attribution from every recorded read, within its uncertainty."""
    import time

    from tests.energy.fakes import TraceReplayCounter

    from greentrack.energy.monitor import EnergyMonitor

    d = load("h100_trace.json")
    rows = [r for r in d["samples"] if r[0] < 2.6]
    samples, spans = trace_samples()
    block = spans[0]
    counter = TraceReplayCounter(rows)
    with EnergyMonitor(counter) as monitor:
        live = PhaseSpan("block", "prefill", block.start_s + counter.origin_s, block.end_s + counter.origin_s)
        time.sleep(max(0.0, live.end_s - time.monotonic()))
        (figure,) = monitor.phase_energy([live], timeout_s=1.0)
        assert monitor.last_attribution is not None and monitor.last_attribution.extrapolated_j == 0.0
    reference = attribute(samples, [block], H100, update_period_s=0.1, timing_slack_s=0.01, lag_s=0.025).phases[0]
    assert figure.uncertainty_j is not None
    assert abs(figure.energy_j - reference.energy_j) <= figure.uncertainty_j
    assert figure.uncertainty_j < 0.25 * figure.energy_j  # a 1 s phase: resolved, unlike the 30 ms bursts
