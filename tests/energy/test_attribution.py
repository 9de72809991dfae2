"""Attribution on replayed counter traces made from known power profiles: error within the reported
uncertainty, exact conservation, short phases flagged as unresolved, batching shares, extrapolation."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from tests.energy.fakes import PowerProfile, ProfileBuilder, sample_reads, stepped_counter

from greentrack.energy.attribution import (
    Attribution,
    MeterInfo,
    PhaseWeights,
    attribute,
    find_knots,
    interval_bounds,
)
from greentrack.energy.types import CounterSample, PhaseSpan

MAX_W = 700.0
METER = MeterInfo("test:nvml-like", "attributed", 0.001, MAX_W)
SEEDS = range(40)


def completions(rng: random.Random, n: int, *, ramps: bool, noisy: bool,
                prefill_w: tuple[float, float] = (150, 650), decode_w: tuple[float, float] = (130, 300),
                ) -> tuple[PowerProfile, list[PhaseSpan]]:
    """A typing session: idle gaps, then a prefill (5-60 ms) and a decode (0.1-1 s) per request."""
    b = ProfileBuilder(0.0, idle_w=120.0)
    b.idle(0.5)
    spans: list[PhaseSpan] = []
    for r in range(n):
        b.idle(rng.uniform(0.0, 0.15))
        p = rng.uniform(*prefill_w)
        d = rng.uniform(0.005, 0.06)
        s0, s1 = b.ramp(d, p, p * rng.uniform(0.6, 1.0)) if ramps else b.hold(d, p)
        spans.append(PhaseSpan(f"r{r}", "prefill", s0, s1, rng.choice([128, 1024, 4096])))
        dur = rng.uniform(0.1, 1.0)
        if noisy:  # power not constant: 10 ms blocks ±30 %
            q = rng.uniform(*decode_w)
            start = b.t
            while b.t < start + dur:
                b.hold(0.01, min(MAX_W, q * rng.uniform(0.7, 1.3)))
            d0, d1 = start, b.t
        elif ramps:
            d0, d1 = b.ramp(dur, rng.uniform(*decode_w), rng.uniform(*decode_w))
        else:
            d0, d1 = b.hold(dur, rng.uniform(*decode_w))
        spans.append(PhaseSpan(f"r{r}", "decode", d0, d1, 16))
    return b.build(), spans


def reads_of(profile: PowerProfile, t1: float, rng: random.Random, *, lag_s: float = 0.0,
             jitter_s: float = 0.02) -> list[CounterSample]:
    steps, values = stepped_counter(profile, -0.3, t1 + 0.5, period_s=0.1, jitter_s=jitter_s, lag_s=lag_s, rng=rng)
    return sample_reads(steps, values, -0.25, t1 + 0.45, rng=rng)


def conserved(res: Attribution) -> float:
    return res.total_j + res.unattributed_j - (res.window_j + res.extrapolated_j)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", ["steps", "ramps", "noisy"])
def test_error_within_uncertainty_and_conservation(seed: int, shape: str) -> None:
    rng = random.Random(seed * 7 + {"steps": 0, "ramps": 1, "noisy": 2}[shape] * 1000)
    profile, spans = completions(rng, 8, ramps=shape == "ramps", noisy=shape == "noisy")
    samples = reads_of(profile, spans[-1].end_s, rng)
    # Attributed per request, as the pipeline does, and all at once.
    for rid in {s.request_id for s in spans}:
        mine = [s for s in spans if s.request_id == rid]
        res = attribute(samples, mine, METER, update_period_s=0.1)
        assert res.extrapolated_j == 0.0
        assert abs(conserved(res)) < 1e-9 * max(1.0, res.window_j)
        for sp, pe in zip(mine, res.phases, strict=True):
            truth = profile.energy(sp.start_s, sp.end_s)
            assert pe.uncertainty_j is not None
            assert abs(pe.energy_j - truth) <= pe.uncertainty_j + 1e-9, (sp, pe, truth)
            assert pe.method == "attributed" and pe.meter == METER.name and pe.resolution_j == 0.001
    res = attribute(samples, spans, METER, update_period_s=0.1)
    assert abs(conserved(res)) < 1e-9 * res.window_j
    # The unattributed bucket is the idle time's energy, up to the edges' uncertainty.
    busy_truth = math.fsum(profile.energy(s.start_s, s.end_s) for s in spans)
    assert abs(res.total_j - busy_truth) <= math.fsum(p.uncertainty_j or 0 for p in res.phases)


@pytest.mark.parametrize("seed", range(20))
def test_phases_shorter_than_a_step_conserve_and_say_so(seed: int) -> None:
    rng = random.Random(seed)
    b = ProfileBuilder(0.0, idle_w=120.0)
    b.idle(0.4)
    spans = []
    for i in range(6):
        s0, s1 = b.hold(rng.uniform(0.003, 0.03), rng.uniform(300, 690))
        spans.append(PhaseSpan(f"p{i}", "prefill", s0, s1, 512))
        b.idle(rng.uniform(0.15, 0.4))
    profile = b.build()
    samples = reads_of(profile, spans[-1].end_s, rng)
    res = attribute(samples, spans, METER, update_period_s=0.1)
    assert abs(conserved(res)) < 1e-9 * res.window_j
    for sp, pe in zip(spans, res.phases, strict=True):
        truth = profile.energy(sp.start_s, sp.end_s)
        assert pe.uncertainty_j is not None
        assert abs(pe.energy_j - truth) <= pe.uncertainty_j
        # The counter cannot resolve it: the bound is as wide as the figure itself.
        assert pe.uncertainty_j >= 0.5 * max(pe.energy_j, truth)


def test_long_phase_gets_a_useful_bound() -> None:
    rng = random.Random(1)
    b = ProfileBuilder(0.0, idle_w=120.0)
    b.idle(0.5)
    s0, s1 = b.hold(3.0, 250.0)
    profile = b.build()
    span = PhaseSpan("r", "decode", s0, s1, 100)
    res = attribute(reads_of(profile, s1, rng), [span], METER, update_period_s=0.1)
    pe = res.phases[0]
    assert pe.uncertainty_j is not None
    assert abs(pe.energy_j - 750.0) <= pe.uncertainty_j
    assert pe.uncertainty_j <= 0.12 * 750.0


@pytest.mark.parametrize("seed", range(10))
def test_counter_lag_is_corrected_when_known(seed: int) -> None:
    rng = random.Random(seed)
    profile, spans = completions(rng, 8, ramps=False, noisy=False)
    samples = reads_of(profile, spans[-1].end_s, rng, lag_s=0.025)
    res = attribute(samples, spans, METER, update_period_s=0.1, lag_s=0.025)
    for sp, pe in zip(spans, res.phases, strict=True):
        assert abs(pe.energy_j - profile.energy(sp.start_s, sp.end_s)) <= (pe.uncertainty_j or 0)


def test_calibrated_weights_cut_the_error() -> None:
    """With the true per-kind powers as weights, prefill energy is far closer to the truth than a time split."""
    errors: dict[str, list[float]] = {"time": [], "calibrated": []}
    for seed in range(15):
        rng = random.Random(100 + seed)
        profile, spans = completions(rng, 10, ramps=False, noisy=False, prefill_w=(600, 600), decode_w=(200, 200))
        samples = reads_of(profile, spans[-1].end_s, rng)
        for name, weights in (("time", None), ("calibrated", PhaseWeights(600.0, 200.0, 120.0))):
            for rid in {s.request_id for s in spans}:
                mine = [s for s in spans if s.request_id == rid]
                res = attribute(samples, mine, METER, update_period_s=0.1, weights=weights)
                sp = mine[0]
                truth = profile.energy(sp.start_s, sp.end_s)
                errors[name].append(abs(res.phases[0].energy_j - truth) / truth)
                assert abs(conserved(res)) < 1e-9 * res.window_j
    mean = {k: sum(v) / len(v) for k, v in errors.items()}
    assert mean["calibrated"] < 0.5 * mean["time"], mean
    assert mean["calibrated"] < 0.2, mean


def test_calibrated_per_token_weights_follow_prompt_size() -> None:
    w = PhaseWeights(prefill_w=400.0, decode_w=150.0, idle_w=130.0, prefill_fixed_j=3.6, j_per_prompt_token=0.0046,
                     decode_fixed_j=0.0, j_per_decode_token=5.0)
    small = PhaseSpan("a", "prefill", 0.0, 0.032, 128)
    large = PhaseSpan("b", "prefill", 0.0, 0.037, 4096)
    assert w.power_w(small) == pytest.approx((3.6 + 0.0046 * 128) / 0.032)
    assert w.power_w(large) == pytest.approx((3.6 + 0.0046 * 4096) / 0.037)
    assert w.power_w(PhaseSpan("c", "decode", 1.0, 1.0, 1)) == 150.0  # no duration: the kind's power
    assert w.power_w(PhaseSpan("c", "decode", 0.0, 1e-9, 1)) == 5 * 400.0  # capped
    assert w.power_w(PhaseSpan("d", "decode", 0.0, 10.0, 1)) == 130.0  # never below idle


@pytest.mark.parametrize("seed", range(15))
def test_overlapping_requests(seed: int) -> None:
    """Two request streams whose phases overlap (batching): conservation, and the union within the bounds."""
    rng = random.Random(seed)
    spans: list[PhaseSpan] = []
    for stream in range(2):
        t = 0.5 + stream * rng.uniform(0.05, 0.3)
        for r in range(5):
            p0, p1 = t, t + rng.uniform(0.01, 0.05)
            d1 = p1 + rng.uniform(0.1, 0.6)
            spans += [PhaseSpan(f"s{stream}r{r}", "prefill", p0, p1, 1024),
                      PhaseSpan(f"s{stream}r{r}", "decode", p1, d1, 16)]
            t = d1 + rng.uniform(0.0, 0.1)
    spans.sort(key=lambda s: s.start_s)
    cuts = sorted({0.0, *(s.start_s for s in spans), *(s.end_s for s in spans), max(s.end_s for s in spans) + 1})
    points = []
    for a, b in itertools.pairwise(cuts):
        active = [s for s in spans if s.start_s <= 0.5 * (a + b) < s.end_s]
        p = min(MAX_W, 120.0 + sum(400.0 if s.kind == "prefill" else 80.0 for s in active))
        points += [(a + 1e-9, p), (b, p)]
    profile = PowerProfile([(0.0, 120.0), *points])
    samples = reads_of(profile, max(s.end_s for s in spans), rng)
    for by_work in (False, True):
        res = attribute(samples, spans, METER, update_period_s=0.1, by_work=by_work)
        assert abs(conserved(res)) < 1e-9 * res.window_j
        union = [(a, b) for a, b in itertools.pairwise(cuts)
                 if any(s.start_s <= 0.5 * (a + b) < s.end_s for s in spans)]
        truth = math.fsum(profile.energy(a, b) for a, b in union)
        assert abs(res.total_j - truth) <= math.fsum(p.uncertainty_j or 0 for p in res.phases)


def test_by_work_shares_a_segment_by_work_rate() -> None:
    # Two decodes fully concurrent, one doing 3× the tokens per second: 1:3 of the energy.
    samples = [CounterSample(t / 100, 200.0 * t / 100, 0.0) for t in range(0, 101)]  # continuous, 200 W
    spans = [PhaseSpan("a", "decode", 0.2, 0.8, 10), PhaseSpan("b", "decode", 0.2, 0.8, 30)]
    res = attribute(samples, spans, METER, update_period_s=0.0, by_work=True)
    assert res.phases[0].energy_j == pytest.approx(0.25 * 120.0)
    assert res.phases[1].energy_j == pytest.approx(0.75 * 120.0)
    res = attribute(samples, spans, METER, update_period_s=0.0)
    assert res.phases[0].energy_j == pytest.approx(60.0)
    assert res.window_j == pytest.approx(120.0)  # from the last knot before the spans to the first after
    assert res.unattributed_j == pytest.approx(0.0, abs=1e-9)


def test_extrapolation_when_no_step_came_after() -> None:
    rng = random.Random(3)
    b = ProfileBuilder(0.0, idle_w=120.0)
    b.idle(0.5)
    s0, s1 = b.hold(0.4, 300.0)
    profile = b.build()
    span = PhaseSpan("r", "decode", s0, s1, 16)
    samples = [s for s in reads_of(profile, s1, rng) if s.t_s < s0 + 0.2]  # the counter stopped mid-phase
    res = attribute(samples, [span], METER, update_period_s=0.1)
    assert res.extrapolated_j > 0 and res.extrapolated_s > 0.1
    assert any("extrapolated" in n for n in res.notes)
    assert abs(conserved(res)) < 1e-9 * max(1.0, res.window_j)
    pe = res.phases[0]
    assert pe.uncertainty_j is not None
    assert abs(pe.energy_j - profile.energy(s0, s1)) <= pe.uncertainty_j
    full = attribute(reads_of(profile, s1, random.Random(3)), [span], METER, update_period_s=0.1).phases[0]
    assert pe.uncertainty_j > (full.uncertainty_j or 0)


def test_no_knots_at_all() -> None:
    span = PhaseSpan("r", "prefill", 1.0, 1.02, 8)
    res = attribute([CounterSample(0.5, 10.0, 0.0)], [span], METER, update_period_s=0.1)
    assert res.phases[0].energy_j == pytest.approx(0.5 * MAX_W * 0.02)
    assert res.phases[0].uncertainty_j is not None and res.phases[0].uncertainty_j >= 0.5 * MAX_W * 0.02 - 1e-9
    assert attribute([], [], METER, update_period_s=0.1).phases == []


def test_find_knots_stepped_and_continuous() -> None:
    samples = [CounterSample(0.00, 5.0, 0.004), CounterSample(0.02, 5.0, 0.004), CounterSample(0.04, 7.0, 0.004),
               CounterSample(0.06, 7.0, 0.004)]
    knots = find_knots(samples, update_period_s=0.1)
    assert len(knots) == 1
    assert knots[0].t_s == pytest.approx(0.03) and knots[0].delta_s == pytest.approx(0.012)
    assert knots[0].energy_j == 7.0
    assert find_knots(samples, update_period_s=0.1, lag_s=0.02)[0].t_s == pytest.approx(0.01)
    cont = find_knots(samples, update_period_s=0.0, timing_slack_s=0.001)
    assert [k.t_s for k in cont] == [0.0, 0.02, 0.04, 0.06]
    assert cont[0].delta_s == pytest.approx(0.003)
    # A counter much faster than the reads (RAPL, 1 ms): the bracket is two update periods, not the read gap.
    fast = find_knots([CounterSample(0.0, 1.0, 0.0), CounterSample(0.01, 2.0, 0.0)], update_period_s=0.001)
    assert fast[0].delta_s == pytest.approx(0.001)


def test_interval_bounds_hold_for_extreme_profiles() -> None:
    # 50 J in [0, 0.1]; the span [0.02, 0.05] holds at least 50 - 700 W × 0.07 s, at most 700 W × 0.03 s.
    lo, hi = interval_bounds(50.0, 0.0, 0.0, 0.1, 0.0, 0.02, 0.05, 0.0, 700.0)
    assert lo == pytest.approx(50 - 700 * 0.07)
    assert hi == pytest.approx(700 * 0.03)
    # A mean power above the ceiling widens the ceiling rather than giving an empty range.
    lo, hi = interval_bounds(100.0, 0.0, 0.0, 0.1, 0.0, 0.02, 0.05, 0.0, 700.0)
    assert lo <= hi
    # Fully inside a span: exactly the interval's energy.
    assert interval_bounds(42.0, 1.0, 0.01, 1.1, 0.01, 0.5, 2.0, 0.0, 700.0) == (42.0, 42.0)
