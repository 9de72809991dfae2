"""Tips derived from a developer's own week: every tip states the figure behind it and its assumption.

Place in the flow: ``figures.summarize`` calls ``derive_tips`` with the week's figures and the aggregate
``Facts`` (debounce timing, length bins, prompt tokens beyond context caps) and the calibrations found in the
database(s). No tip without a number; none when the data cannot support it.

Sources: Fernandez et al., "Energy Considerations of Large Language Model Inference and Efficiency
Optimizations", ACL 2025 (binning requests by input/output length, powers of two, to price a workload with a
per-bin energy); Solovyeva & Castor, arXiv 2602.05712 (prefill's share grows with prompt length).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from greentrack.energy.calibration import Calibration
from greentrack.units import fmt_energy, fmt_pct

if TYPE_CHECKING:
    from greentrack.report.query import Bin, Facts


def derive_tips(report: dict[str, Any], facts: Facts, calibrations: Sequence[Mapping[str, Any]]) -> list[str]:
    tips: list[str] = []
    total = float(report["energy_j"]["total"])
    if report["completions"] == 0 or total <= 0:
        return tips
    for tip in (_wasted_tip(report, facts), _context_tip(report, facts), _model_tip(report, facts, calibrations),
                _trend_tip(report)):
        if tip:
            tips.append(tip)
    return tips


def _wasted_tip(report: dict[str, Any], facts: Facts) -> str | None:
    total = float(report["energy_j"]["total"])
    wasted = float(report["energy_j"]["wasted"])
    if wasted <= 0:
        return None
    never = report["completions"] - report["accepted"]
    kinds = {row["outcome"]: row["completions"] - row["accepted"] for row in report["by_outcome"]}
    parts = [f"{kinds.get('cancelled', 0)} cancelled", f"{kinds.get('shown', 0)} shown but not taken",
             f"{kinds.get('empty', 0)} empty", f"{kinds.get('error', 0)} failed"]
    tip = (f"{fmt_pct(wasted / total)} of this week's energy ({fmt_energy(wasted)}) went to {never} suggestion(s) "
           f"never accepted ({', '.join(parts)}).")
    useful = [t for t in facts.timing if t.skipped_unaccepted > 0]
    if useful:
        best = max(useful, key=lambda t: t.skipped_unaccepted_j)
        tip += (f" A {best.debounce_ms} ms debounce would have skipped at least {best.skipped_unaccepted} of them, "
                f"saving ≈{fmt_energy(best.skipped_unaccepted_j)} ({fmt_pct(best.skipped_unaccepted_j / total)} of the "
                "week)")
        if best.skipped_accepted:
            tip += f", but also {best.skipped_accepted} suggestion(s) you accepted"
        tip += (" — assuming a request followed within that delay by another in the same file (start to start, "
                "start = ts − latency) was superseded by your typing.")
    return tip


def _context_tip(report: dict[str, Any], facts: Facts) -> str | None:
    total = float(report["energy_j"]["total"])
    this = facts.this_week()
    prefill_j = sum(g.prefill_j for g in this)
    tokens = sum(g.computed_prompt_tokens for g in this)
    n = sum(g.completions for g in this)
    if prefill_j <= 0 or tokens <= 0 or n == 0:
        return None
    per_token_j = prefill_j / tokens
    tip = (f"Prefill was {fmt_pct(prefill_j / total)} of the energy ({fmt_energy(prefill_j)}): "
           f"{fmt_energy(per_token_j)} per prompt token over {tokens:.0f} computed prompt tokens "
           f"(mean {tokens / n:.0f} per request).")
    beyond: dict[int, float] = defaultdict(float)
    for g in this:
        for cap, t in g.beyond_cap.items():
            beyond[cap] += t
    mean = tokens / n
    caps = [cap for cap in sorted(beyond) if cap < mean and beyond[cap] > 0]
    if caps:
        cap = caps[-1]
        saved_j = beyond[cap] * per_token_j
        tip += (f" Capping the prompt at {cap} tokens would have skipped {beyond[cap]:.0f} of them "
                f"({fmt_pct(beyond[cap] / tokens)}), ≈{fmt_energy(saved_j)} ({fmt_pct(saved_j / total)} of the week) — "
                "assuming prefill energy proportional to computed prompt tokens (attention grows faster than that), "
                "at the cost of the context the model no longer sees.")
    return tip


def calibrated_energy_j(cal: Calibration, in_tokens: int, out_tokens: int) -> float:
    """One request's energy by a calibration: its measured bin where it has one (same prompt and output length),
    else its linear fit (J per prompt and per decoded token, plus the fixed per-phase terms)."""
    for p in cal.points:
        if p.prompt_tokens == in_tokens and p.output_tokens == out_tokens:
            return p.prefill_j + p.decode_j
    return (cal.prefill_fixed_j + cal.j_per_prompt_token * in_tokens
            + cal.decode_fixed_j + cal.j_per_decode_token * out_tokens)


def readable_calibrations(documents: Sequence[Mapping[str, Any]]) -> list[Calibration]:
    """The stored documents ``Calibration.from_dict`` can read, in their order; malformed ones are left out."""
    out: list[Calibration] = []
    for doc in documents:
        try:
            out.append(Calibration.from_dict(doc))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _workload_j(cal: Calibration, bins: Sequence[Bin]) -> float:
    return sum(b.completions * calibrated_energy_j(cal, b.in_bin, b.out_bin) for b in bins)


def _model_tip(report: dict[str, Any], facts: Facts, calibrations: Sequence[Mapping[str, Any]]) -> str | None:
    newest: dict[tuple[str, str], Calibration] = {}
    for cal in readable_calibrations(calibrations):  # newest first
        newest.setdefault((cal.device, cal.model), cal)
    total = float(report["energy_j"]["total"])
    best: tuple[float, str] | None = None
    used: dict[tuple[str, str], list[Bin]] = defaultdict(list)
    for b in facts.bins:
        used[(b.device, b.model)].append(b)
    for (device, model), bins in used.items():
        own = newest.get((device, model))
        if own is None:
            continue
        own_j = _workload_j(own, bins)
        if not own_j or own_j <= 0:
            continue
        actual_j = sum(b.total_j for b in bins)
        count = sum(b.completions for b in bins)
        for (cal_device, other), cal in newest.items():
            if cal_device != device or other == model:
                continue
            other_j = _workload_j(cal, bins)
            if other_j >= own_j:
                continue
            share = 1 - other_j / own_j
            saved = share * actual_j
            text = (f"{other} would have used ≈{fmt_pct(share)} less energy than {model} on {device} for this "
                    f"week's {count} completion(s), ≈{fmt_energy(saved)} ({fmt_pct(saved / total)} of the week) — "
                    "pricing each power-of-two bin of prompt and output length with both models' stored "
                    "calibrations (the binning of Fernandez et al., ACL 2025); assumes its suggestions would be "
                    "accepted as often.")
            if best is None or saved > best[0]:
                best = (saved, text)
    return best[1] if best else None


def _trend_tip(report: dict[str, Any]) -> str | None:
    prev = report.get("previous_week")
    if not prev or not prev["completions"]:
        return None
    now_total = float(report["energy_j"]["total"])
    if report["accepted"] and prev["accepted"]:
        now = float(report["j_per_accepted"])
        before = prev["energy_j_total"] / prev["accepted"]
        if before <= 0:
            return None
        change = now / before - 1
        direction = "down" if change < 0 else "up"
        return (f"Energy per accepted suggestion: {fmt_energy(now)}, {direction} {fmt_pct(abs(change))} from "
                f"{prev['week']} ({fmt_energy(before)}); total {fmt_energy(now_total)} vs "
                f"{fmt_energy(prev['energy_j_total'])}.")
    before_total = float(prev["energy_j_total"])
    if before_total <= 0:
        return None
    change = now_total / before_total - 1
    direction = "down" if change < 0 else "up"
    return (f"Total energy {fmt_energy(now_total)}, {direction} {fmt_pct(abs(change))} from {prev['week']} "
            f"({fmt_energy(before_total)}).")
