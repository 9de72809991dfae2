"""The report's figures: one developer's week (and the week before) shaped from aggregate ``Facts``.

Place in the flow: ``query.Source.facts`` sums the rows in SQLite; ``summarize`` here turns those sums into the
object of ``docs/interfaces.md`` "Report" (plus a few additive keys: ``tz``, ``by_outcome``, per-day phases),
and ``tips.derive_tips`` adds tips, each with the figure behind it. Pure: no files, no clock.

Units: J for energy, g for CO2e, gCO2e/kWh for intensity; shares are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import date
from typing import Any

from greentrack.record import co2e_grams
from greentrack.report.query import Facts, Group
from greentrack.report.tips import derive_tips

METHODS: tuple[str, ...] = ("measured", "attributed", "estimated")
OUTCOMES: tuple[str, ...] = ("shown", "empty", "cancelled", "error", "cached")


def rj(value: float) -> float:
    """Energy rounded to the µJ (hides float summation noise; far below any meter's resolution)."""
    return round(value, 6) + 0.0


def rshare(value: float) -> float:
    return round(value, 4) + 0.0


def _sum(groups: Sequence[Group], attr: str) -> float:
    return float(sum(getattr(g, attr) for g in groups))


def week_interval(groups: Sequence[Group]) -> dict[str, Any] | None:
    """Where the week's true energy lies: ``{low, high, coverage, basis}`` (J), None without completions.

    Each completion's interval is summed linearly, as errors of one cause (``energy.interval.sum_intervals``):
    under that assumption the ends of quantile intervals add to the sum's quantiles, so the sum holds for at least
    the smallest stated coverage. That coverage is stated only when every completion has a stated-coverage
    interval (an exact figure, a cached suggestion's 0 J, counts as one); otherwise the week's interval is the sum
    of every completion's worst-case bound (``uncertainty_j``), labelled so with no coverage; where a completion
    has no bound either, the ends are null and ``basis`` says how many.
    """
    n = sum(g.completions for g in groups)
    if n == 0:
        return None
    parts = [g.interval for g in groups]
    stated = sum(p.stated for p in parts)
    bounded = sum(p.bounded for p in parts)
    if stated == n:
        coverage = min(p.coverage for p in parts)
        return {"low": rj(math.fsum(p.low_j for p in parts)), "high": rj(math.fsum(p.high_j for p in parts)),
                "coverage": coverage,
                "basis": f"{round(100 * coverage)} % intervals summed linearly (errors of one cause)"}
    missing = f"{n - stated} of {n} completions have no stated-coverage interval"
    if bounded == n:
        return {"low": rj(math.fsum(p.bound_low_j for p in parts)),
                "high": rj(math.fsum(p.bound_high_j for p in parts)), "coverage": None,
                "basis": f"worst-case bound: {missing}"}
    return {"low": None, "high": None, "coverage": None,
            "basis": f"unknown: {n - bounded} of {n} completions have neither an interval nor a bound"}


def batched_steps(groups: Sequence[Group]) -> dict[str, Any]:
    """The developer's share of batched engine steps: ``{completions, steps, batched, share, mean_batch_size}``.

    Over the completions attributed by engine step (``completions``): the steps they were in, those shared with at
    least one other request, ``share`` = batched / steps and the steps' mean batch size (requests per step, each
    completion's own steps); ``share`` and ``mean_batch_size`` null when there are none. A step that two of the
    developer's own completions shared counts once for each.
    """
    parts = [g.steps for g in groups]
    steps = sum(p.steps for p in parts)
    batched = sum(p.batched for p in parts)
    return {"completions": sum(p.completions for p in parts), "steps": steps, "batched": batched,
            "share": rshare(batched / steps) if steps else None,
            "mean_batch_size": round(math.fsum(p.requests for p in parts) / steps, 3) + 0.0 if steps else None}


def summarize(
    developer: str,
    *,
    week_label: str,
    days: Sequence[date],
    from_ts: str,
    to_ts: str,
    tz_name: str,
    previous_label: str,
    facts: Facts | None,
    carbon_intensity_g_per_kwh: float,
    calibrations: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The report of one developer and week, from the week's ``facts`` (days 0–6) and the previous week's."""
    facts = facts or Facts()
    this = facts.groups

    n = sum(g.completions for g in this)
    accepted = sum(g.completions for g in this if g.accepted)
    total_j = _sum(this, "total_j")
    prefill_j = _sum(this, "prefill_j")
    decode_j = _sum(this, "decode_j")
    wasted_j = float(sum(g.total_j for g in this if not g.accepted))

    by_method: dict[str, float] = dict.fromkeys(METHODS, 0.0)
    for g in this:
        by_method[g.method] = by_method.get(g.method, 0.0) + g.total_j
    method_share = {m: rshare(v / total_j) if total_j > 0 else 0.0 for m, v in by_method.items()}

    day_rows: list[dict[str, Any]] = []
    for i, day in enumerate(days):
        gs = [g for g in this if g.day == i]
        day_rows.append({
            "date": day.isoformat(),
            "completions": sum(g.completions for g in gs),
            "accepted": sum(g.completions for g in gs if g.accepted),
            "energy_j": rj(_sum(gs, "total_j")),
            "prefill_j": rj(_sum(gs, "prefill_j")),
            "decode_j": rj(_sum(gs, "decode_j")),
        })

    def breakdown(key: str, name: str) -> list[dict[str, Any]]:
        counts: dict[str, int] = defaultdict(int)
        acc: dict[str, int] = defaultdict(int)
        energy: dict[str, float] = defaultdict(float)
        for g in this:
            k = getattr(g, key)
            counts[k] += g.completions
            acc[k] += g.completions if g.accepted else 0
            energy[k] += g.total_j
        ordered = sorted(counts, key=lambda k: (-energy[k], k))
        return [{name: k, "completions": counts[k], "accepted": acc[k], "energy_j": rj(energy[k])} for k in ordered]

    outcome_rows = []
    for outcome in (*OUTCOMES, *sorted({g.outcome for g in this} - set(OUTCOMES))):
        gs = [g for g in this if g.outcome == outcome]
        outcome_rows.append({
            "outcome": outcome,
            "completions": sum(g.completions for g in gs),
            "accepted": sum(g.completions for g in gs if g.accepted),
            "energy_j": rj(_sum(gs, "total_j")),
        })

    prev_n = sum(n for _, n, _ in facts.previous)
    previous_week = None
    if prev_n:
        previous_week = {
            "week": previous_label,
            "completions": prev_n,
            "accepted": sum(n for accepted, n, _ in facts.previous if accepted),
            "energy_j_total": rj(sum(j for _, _, j in facts.previous)),
        }

    report: dict[str, Any] = {
        "developer": developer,
        "week": week_label,
        "from": from_ts,
        "to": to_ts,
        "tz": tz_name,
        "completions": n,
        "accepted": accepted,
        "acceptance_rate": rshare(accepted / n) if n else None,
        "energy_j": {"total": rj(total_j), "prefill": rj(prefill_j), "decode": rj(decode_j), "wasted": rj(wasted_j),
                     "interval": week_interval(this)},
        "j_per_completion": rj(total_j / n) if n else None,
        "j_per_accepted": rj(total_j / accepted) if accepted else None,
        "batched_steps": batched_steps(this),
        "co2e_g": float(f"{co2e_grams(total_j, carbon_intensity_g_per_kwh):.9g}"),
        "carbon_intensity_g_per_kwh": carbon_intensity_g_per_kwh,
        "method_share": method_share,
        "by_day": day_rows,
        "by_model": breakdown("model", "model"),
        "by_language": breakdown("language_id", "language_id"),
        "by_outcome": outcome_rows,
        "previous_week": previous_week,
    }
    report["tips"] = derive_tips(report, facts, calibrations)
    return report
