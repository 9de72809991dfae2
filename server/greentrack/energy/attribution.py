"""Attribution: split a cumulative counter's energy over the phases that ran, with an honest error bound.

Flow: the sampler hands in ``CounterSample``s (time, cumulative J); the engine hands in ``PhaseSpan``s
(possibly overlapping, from several batched requests); ``attribute`` returns one ``PhaseEnergy`` per span and
an explicit ``unattributed_j`` bucket (intervals, or parts of them, when no span was active). Pure functions,
no threads, no I/O: the monitor and the tests call the same code.

Method (details and the proofs in ``docs/measurement.md``):

1. *Knots.* A counter that moves in steps (NVML, ~100 ms) is known only where it changed: the step
   happened after the previous read took its value and before this read took its value, so the knot is the
   middle of that bracket and ``delta_s`` its half-width (plus the counter's timing slack). A continuous
   counter (RAPL, the CPU-time estimate) gives a knot at every read, ``delta_s`` = half the read's duration.
2. *Split.* The energy ΔC of each interval between consecutive knots is split over the interval's
   elementary segments (cut at every span boundary) in proportion to ``weight × duration``, where the
   weight is the modelled whole-device power of the segment: the calibrated power of the active span
   (its modelled energy over its duration), idle plus each span's excess over idle for concurrent spans,
   ``idle_w`` where no span is active; all weights 1, a pure time split, without a calibration. Within a
   segment, the active spans share its energy in proportion to their modelled power, times their work
   rate (``work / duration``) when ``by_work`` is set (batching). Every joule of ΔC goes to a span or to
   ``unattributed_j``: Σ phases + unattributed = counter delta over the window, exactly.
3. *Bound.* For each interval a span touches, the true energy of the span's time in it lies in
   ``[max(p_lo·d_min, ΔC − p_hi·o_max), min(p_hi·d_max, ΔC − p_lo·o_min)]``, where ``d`` is the span's
   time inside the interval and ``o`` the interval's time outside the span, minimised/maximised over the
   knots' timing brackets, and ``[p_lo, p_hi]`` bounds the instantaneous power (``p_hi``: the device's
   power limit). The uncertainty is the larger distance from the figure to the summed bounds, plus the
   counter's resolution per touched interval, plus the meter's own relative error. It holds whenever the
   power stays within ``[p_lo, p_hi]``; a phase shorter than one counter step gets a bound about as wide as
   ``p_hi × duration``: the counter cannot resolve it, and the figure says so.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from greentrack.energy.types import CounterSample, Method, PhaseEnergy, PhaseKind, PhaseSpan


@dataclass(frozen=True)
class Knot:
    """A time at which the counter's cumulative value is known. Units: s, J.

    The value ``energy_j`` applied at a time within ``t_s ± delta_s``.
    """

    t_s: float
    energy_j: float
    delta_s: float


@dataclass(frozen=True)
class PhaseWeights:
    """Whole-device power of each phase kind and of idle time. Units: W (only ratios matter).

    From a ``Calibration`` where one exists; all 1 (a pure time split) otherwise. With the calibration's
    per-token coefficients, a span's power is its modelled energy over its duration (a 4096-token prefill
    draws more than a 128-token one: 629 W against 157 W on the H100 here), kept between ``idle_w`` and
    five times the larger kind power.
    """

    prefill_w: float = 1.0
    decode_w: float = 1.0
    idle_w: float = 1.0
    prefill_fixed_j: float | None = None
    j_per_prompt_token: float | None = None
    decode_fixed_j: float | None = None
    j_per_decode_token: float | None = None

    def of(self, kind: PhaseKind) -> float:
        return self.prefill_w if kind == "prefill" else self.decode_w

    def power_w(self, span: PhaseSpan) -> float:
        """The modelled whole-device power while ``span`` runs alone. Units: W."""
        if span.kind == "prefill":
            fixed_j, per_token_j = self.prefill_fixed_j, self.j_per_prompt_token
        else:
            fixed_j, per_token_j = self.decode_fixed_j, self.j_per_decode_token
        if per_token_j is None or span.duration_s <= 0.0:
            return self.of(span.kind)
        modelled_w = ((fixed_j or 0.0) + per_token_j * span.work) / span.duration_s
        ceiling_w = 5.0 * max(self.prefill_w, self.decode_w, self.idle_w)
        return min(max(modelled_w, self.idle_w), ceiling_w)


@dataclass(frozen=True)
class MeterInfo:
    """What the attributor needs to know about the meter. Units: J, W."""

    name: str
    method: Method = "attributed"
    resolution_j: float = 0.0
    max_power_w: float | None = None
    min_power_w: float = 0.0
    relative_uncertainty: float = 0.0


@dataclass
class Attribution:
    """The result of one ``attribute`` call. Units: J, s.

    ``phases[i]`` belongs to ``spans[i]``; ``lower_j``/``upper_j`` are the bounds behind each uncertainty.
    Conservation: ``sum(p.energy_j for p in phases) + unattributed_j == window_j + extrapolated_j``.
    ``extrapolated_j`` is energy given to span parts outside the knots (no counter step after them yet):
    non-zero only when the caller could not wait for the counter.
    """

    phases: list[PhaseEnergy]
    lower_j: list[float]
    upper_j: list[float]
    unattributed_j: float
    window_j: float
    extrapolated_j: float
    window_start_s: float
    window_end_s: float
    extrapolated_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_j(self) -> float:
        return math.fsum(p.energy_j for p in self.phases)


def find_knots(
    samples: Sequence[CounterSample],
    *,
    update_period_s: float,
    timing_slack_s: float = 0.0,
    lag_s: float = 0.0,
) -> list[Knot]:
    """The times the counter's value is known, from the sampler's reads. See the module docstring.

    ``update_period_s`` 0: a continuous counter, every read is a knot. Otherwise a read is a knot where the
    value changed; the step happened in ``(previous read, this read]`` and, for counters that update much
    faster than the sampler reads (RAPL: 1 ms), within two update periods before the read.
    ``lag_s``: how long after the energy it covers the counter shows it (0 unless measured otherwise).
    """
    knots: list[Knot] = []
    for i, s in enumerate(samples):
        half_read = 0.5 * s.read_s
        if update_period_s <= 0.0:
            knots.append(Knot(s.t_s - lag_s, s.energy_j, half_read + timing_slack_s))
            continue
        if i == 0 or s.energy_j == samples[i - 1].energy_j:
            continue
        prev = samples[i - 1]
        lower = max(prev.t_s - 0.5 * prev.read_s, s.t_s - half_read - 2.0 * update_period_s)
        upper = s.t_s + half_read
        knots.append(Knot(0.5 * (lower + upper) - lag_s, s.energy_j, 0.5 * (upper - lower) + timing_slack_s))
    return knots


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _outside(x: float, y: float, a: float, b: float) -> float:
    """Length of ``[x, y]`` outside ``[a, b]``."""
    if y <= x:
        return 0.0
    return max(0.0, min(y, a) - x) + max(0.0, y - max(x, b))


def interval_bounds(
    energy_j: float,
    x0: float, dx: float, y0: float, dy: float,
    a: float, b: float,
    p_lo: float, p_hi: float,
) -> tuple[float, float]:
    """Bounds on the true energy of the time ``[a, b]`` within a counter interval. Units: J.

    The interval ``[x, y]`` (``x ∈ x0 ± dx``, ``y ∈ y0 ± dy``) holds ``energy_j``; power lies in
    ``[p_lo, p_hi]`` (widened here so that the interval's own mean power is inside it).
    """
    d_min = _overlap(x0 + dx, y0 - dy, a, b)
    d_max = _overlap(x0 - dx, y0 + dy, a, b)
    o_min = _outside(x0 + dx, y0 - dy, a, b)
    o_max = _outside(x0 - dx, y0 + dy, a, b)
    len_min = max(y0 - dy - (x0 + dx), 1e-9)
    len_max = max(y0 + dy - (x0 - dx), 1e-9)
    hi_w = max(p_hi, energy_j / len_min)
    lo_w = min(p_lo, energy_j / len_max)
    lo = max(lo_w * d_min, energy_j - hi_w * o_max, 0.0)
    hi = min(hi_w * d_max, energy_j - lo_w * o_min, energy_j)
    if hi < lo:  # only from rounding
        lo = hi = 0.5 * (lo + hi)
    return lo, hi


def _mean_power_w(k0: Knot, k1: Knot) -> float:
    span_s = k1.t_s - k0.t_s
    return (k1.energy_j - k0.energy_j) / span_s if span_s > 0 else 0.0


def _segment_power_w(active: Sequence[int], power_w: Sequence[float], idle_w: float) -> float:
    """The modelled device power of a segment: idle, plus each active span's excess over idle.

    One span: its own power. Without a calibration (all 1): 1 everywhere, a pure time split.
    """
    if not active:
        return idle_w
    if len(active) == 1:
        return power_w[active[0]]
    return idle_w + math.fsum(max(0.0, power_w[i] - idle_w) for i in active)


def _span_weight(span: PhaseSpan, weights: PhaseWeights, by_work: bool) -> float:
    w = weights.power_w(span)
    if by_work:
        rate = span.work / span.duration_s if span.duration_s > 0 else span.work
        w *= max(rate, 0.0)
    return w


def attribute(
    samples: Sequence[CounterSample],
    spans: Sequence[PhaseSpan],
    meter: MeterInfo,
    *,
    update_period_s: float,
    timing_slack_s: float = 0.0,
    lag_s: float = 0.0,
    weights: PhaseWeights | None = None,
    by_work: bool = False,
) -> Attribution:
    """Split the energy the counter recorded over ``spans`` (one ``PhaseEnergy`` each, same order).

    ``samples``: the sampler's reads, in time order, covering the spans (ideally one counter step before the
    first start and one after the last end; parts not covered are extrapolated and widen the uncertainty).
    """
    knots = find_knots(samples, update_period_s=update_period_s, timing_slack_s=timing_slack_s, lag_s=lag_s)
    return attribute_knots(knots, spans, meter, weights=weights, by_work=by_work)


@dataclass
class _Ledger:
    """Running sums while attributing: per span (same order as the spans) and the unattributed bucket. Units: J."""

    est: list[float]
    lower: list[float]
    upper: list[float]
    touched: list[int]
    unattributed_j: float = 0.0

    @classmethod
    def empty(cls, n: int) -> _Ledger:
        return cls([0.0] * n, [0.0] * n, [0.0] * n, [0] * n)


def attribute_knots(
    knots: Sequence[Knot],
    spans: Sequence[PhaseSpan],
    meter: MeterInfo,
    *,
    weights: PhaseWeights | None = None,
    by_work: bool = False,
) -> Attribution:
    """``attribute`` on knots already found (see ``find_knots``).

    Steps: keep the knots of the spans' window; split each interval's energy over its segments and bound each
    span's share; extrapolate span parts beyond the knots; turn the sums into figures with uncertainties.
    """
    weights = weights or PhaseWeights()
    if not spans:
        return Attribution([], [], [], 0.0, 0.0, 0.0, 0.0, 0.0)
    first_s = min(s.start_s for s in spans)
    last_s = max(s.end_s for s in spans)
    ks = _window_knots(knots, first_s, last_s)
    notes: list[str] = []
    ledger = _Ledger.empty(len(spans))
    intervals = [(ks[i - 1], ks[i]) for i in range(1, len(ks))]
    p_hi = _power_ceiling_w(meter, intervals, notes)
    split = _IntervalSplitter(spans, weights, by_work, meter.min_power_w, p_hi)
    for k0, k1 in intervals:
        split.interval(k0, k1, ledger)
    extrapolated_j, extrapolated_s = _extrapolate(ks, spans, first_s, last_s, meter.min_power_w, p_hi, ledger)
    if extrapolated_s > 0.0:
        notes.append(f"extrapolated {extrapolated_s * 1000:.0f} ms of phases past the counter's steps")
    window_j = ks[-1].energy_j - ks[0].energy_j if len(ks) >= 2 else 0.0
    return Attribution(
        _phase_figures(spans, meter, ledger), ledger.lower, ledger.upper, ledger.unattributed_j, window_j,
        extrapolated_j, ks[0].t_s if ks else first_s, ks[-1].t_s if ks else last_s, extrapolated_s, notes,
    )


def _window_knots(knots: Sequence[Knot], first_s: float, last_s: float) -> list[Knot]:
    """From the last knot surely before the first start to the first knot surely after the last end."""
    ks = list(knots)
    a = 0
    for i, k in enumerate(ks):
        if k.t_s + k.delta_s <= first_s:
            a = i
        else:
            break
    b = len(ks) - 1
    for i in range(a, len(ks)):
        if ks[i].t_s - ks[i].delta_s >= last_s:
            b = i
            break
    return ks[a : b + 1]


def _power_ceiling_w(meter: MeterInfo, intervals: Sequence[tuple[Knot, Knot]], notes: list[str]) -> float:
    """``p_hi`` of the bounds: the device's power limit, else twice the highest interval power seen. Units: W."""
    if meter.max_power_w is not None:
        return meter.max_power_w
    means = [(k1.energy_j - k0.energy_j) / (k1.t_s - k0.t_s) for k0, k1 in intervals if k1.t_s > k0.t_s]
    if not means:
        return math.inf
    notes.append("no power ceiling known: bounds use twice the highest interval power seen")
    return 2.0 * max(means)


class _IntervalSplitter:
    """Step 2 and 3 of the method for one interval between knots: split ΔC over segments, bound each span."""

    def __init__(
        self, spans: Sequence[PhaseSpan], weights: PhaseWeights, by_work: bool, p_lo: float, p_hi: float
    ) -> None:
        self.spans = spans
        self.idle_w = weights.idle_w
        self.ws = [_span_weight(s, weights, by_work) for s in spans]
        self.pw = [weights.power_w(s) for s in spans]
        self.p_lo, self.p_hi = p_lo, p_hi
        self.order = sorted(range(len(spans)), key=lambda i: spans[i].start_s)
        self.starts = [spans[i].start_s for i in self.order]

    def interval(self, k0: Knot, k1: Knot, ledger: _Ledger) -> None:
        x0, x1 = k0.t_s, k1.t_s
        delta_c = k1.energy_j - k0.energy_j
        if x1 <= x0:
            ledger.unattributed_j += delta_c
            return
        near, inside = self._touching(x0 - k0.delta_s, x1 + k1.delta_s, x0, x1)
        segs, total_w = self._segments(x0, x1, inside)
        if total_w <= 0.0:
            ledger.unattributed_j += delta_c
            return
        own, mine = self._split(delta_c, segs, total_w, near, ledger)
        for i in near:
            sp = self.spans[i]
            lo, hi = interval_bounds(
                delta_c, x0, k0.delta_s, x1, k1.delta_s, sp.start_s, sp.end_s, self.p_lo, self.p_hi
            )
            if hi <= 0.0 and mine[i] <= 0.0:
                continue
            # Under concurrency the span owns only its share of its time's energy.
            share = mine[i] / own[i] if own[i] > 0 else 1.0
            ledger.lower[i] += share * lo
            ledger.upper[i] += share * hi
            ledger.touched[i] += 1

    def _touching(self, reach0: float, reach1: float, x0: float, x1: float) -> tuple[list[int], list[int]]:
        """Spans within the interval's timing brackets (``near``), and those inside ``[x0, x1)`` itself."""
        spans = self.spans
        hi_idx = bisect.bisect_left(self.starts, reach1)
        near = [self.order[j] for j in range(hi_idx) if spans[self.order[j]].end_s > reach0]
        inside = [i for i in near if spans[i].end_s > x0 and spans[i].start_s < x1]
        return near, inside

    def _segments(
        self, x0: float, x1: float, inside: list[int]
    ) -> tuple[list[tuple[float, float, list[int]]], float]:
        """The interval cut at every span boundary: (start, end, active spans), and Σ power × duration."""
        spans = self.spans
        cuts = sorted({x0, x1, *(min(max(spans[i].start_s, x0), x1) for i in inside),
                       *(min(max(spans[i].end_s, x0), x1) for i in inside)})
        segs: list[tuple[float, float, list[int]]] = []
        total_w = 0.0
        for s0, s1 in itertools.pairwise(cuts):
            if s1 <= s0:
                continue
            mid = 0.5 * (s0 + s1)
            active = [i for i in inside if spans[i].start_s <= mid < spans[i].end_s]
            segs.append((s0, s1, active))
            total_w += _segment_power_w(active, self.pw, self.idle_w) * (s1 - s0)
        return segs, total_w

    def _split(
        self,
        delta_c: float,
        segs: list[tuple[float, float, list[int]]],
        total_w: float,
        near: list[int],
        ledger: _Ledger,
    ) -> tuple[dict[int, float], dict[int, float]]:
        """Give each segment's energy to its active spans; return per span the energy of the segments where it
        is active (``own``) and its share of it (``mine``)."""
        own = dict.fromkeys(near, 0.0)
        mine = dict.fromkeys(near, 0.0)
        for s0, s1, active in segs:
            seg_w = _segment_power_w(active, self.pw, self.idle_w)
            seg_e = delta_c * seg_w * (s1 - s0) / total_w
            share_w = math.fsum(self.ws[i] for i in active)
            if not active or share_w <= 0.0:
                ledger.unattributed_j += seg_e
                continue
            for i in active:
                part = seg_e * self.ws[i] / share_w
                ledger.est[i] += part
                mine[i] += part
                own[i] += seg_e
        return own, mine


def _extrapolate(
    ks: list[Knot],
    spans: Sequence[PhaseSpan],
    first_s: float,
    last_s: float,
    p_lo: float,
    p_hi: float,
    ledger: _Ledger,
) -> tuple[float, float]:
    """Span parts outside the knots' reach get the nearest interval's mean power; returns (J, longest part s)."""
    extrapolated_j = 0.0
    extrapolated_s = 0.0
    edges = _edge_knots(ks, first_s, last_s)
    for i, sp in enumerate(spans):
        for d, mean_w in _outside_parts(ks, sp):
            if d <= 0.0:
                continue
            e = _extrapolated_energy_j(d, mean_w, p_lo, p_hi)
            ledger.est[i] += e
            extrapolated_j += e
            extrapolated_s = max(extrapolated_s, d)
            ledger.lower[i] += p_lo * d
            ledger.upper[i] += max(p_hi * d, e)
        for k in edges:
            ledger.upper[i] += p_hi * _overlap(k.t_s - k.delta_s, k.t_s + k.delta_s, sp.start_s, sp.end_s)
    return extrapolated_j, extrapolated_s


def _edge_knots(ks: list[Knot], first_s: float, last_s: float) -> list[Knot]:
    """Knots whose bracket may still hold part of a span: the truth there is unbounded by ΔC."""
    edges = []
    if ks and ks[0].t_s + ks[0].delta_s > first_s:
        edges.append(ks[0])
    if ks and ks[-1].t_s - ks[-1].delta_s < last_s:
        edges.append(ks[-1])
    return edges


def _outside_parts(ks: list[Knot], sp: PhaseSpan) -> list[tuple[float, float | None]]:
    """(duration s, mean power W of the nearest interval or None) of the span's parts before/after the knots."""
    if len(ks) < 2:
        return [(sp.duration_s, None)]
    parts: list[tuple[float, float | None]] = []
    if sp.start_s < ks[0].t_s:
        parts.append((max(0.0, min(sp.end_s, ks[0].t_s) - sp.start_s), _mean_power_w(ks[0], ks[1])))
    if sp.end_s > ks[-1].t_s:
        parts.append((max(0.0, sp.end_s - max(sp.start_s, ks[-1].t_s)), _mean_power_w(ks[-2], ks[-1])))
    return parts


def _extrapolated_energy_j(duration_s: float, mean_w: float | None, p_lo: float, p_hi: float) -> float:
    if mean_w is not None:
        return mean_w * duration_s
    if math.isfinite(p_hi):
        return 0.5 * (p_lo + p_hi) * duration_s
    return 0.0


def _phase_figures(spans: Sequence[PhaseSpan], meter: MeterInfo, ledger: _Ledger) -> list[PhaseEnergy]:
    """One ``PhaseEnergy`` per span: the estimate and its uncertainty (bounds, resolution, meter error)."""
    phases: list[PhaseEnergy] = []
    for i, sp in enumerate(spans):
        est, lower, upper = ledger.est[i], ledger.lower[i], ledger.upper[i]
        uncertainty: float | None = None
        if math.isfinite(upper):
            u = max(est - lower, upper - est, 0.0)
            u += meter.resolution_j * (2 + ledger.touched[i]) + meter.relative_uncertainty * est
            uncertainty = u
        phases.append(PhaseEnergy(sp.request_id, sp.kind, est, meter.method, meter.name,
                                  uncertainty, meter.resolution_j))
    return phases
