"""The report's headline figures as (label, text) lines, shared by the text formats (table, md) and HTML.

Place in the flow: ``render`` and ``html`` both call ``summary_lines``; numbers are written by ``greentrack.units``.
"""

from __future__ import annotations

from typing import Any

from greentrack.units import fmt_co2e, fmt_energy, fmt_pct


def fmt_opt_energy(value: float | None) -> str:
    return "—" if value is None else fmt_energy(value)


def fmt_opt_pct(value: float | None) -> str:
    return "—" if value is None else fmt_pct(value)


def interval_text(interval: dict[str, Any] | None) -> str:
    """The week's energy interval in words: "90 % interval 6.50 J – 9.25 J (basis)", the worst-case bound
    without a coverage, or why there is none (``figures.week_interval``)."""
    if interval is None:
        return "—"
    low, high, coverage, basis = interval["low"], interval["high"], interval["coverage"], interval["basis"]
    if low is None or high is None:
        return str(basis)
    if coverage is None:
        return f"{fmt_energy(low)} – {fmt_energy(high)} ({basis})"
    return (f"{round(100 * coverage)} % interval {fmt_energy(low)} – {fmt_energy(high)} "
            "(completions' intervals summed linearly: errors of one cause)")


def batched_text(steps: dict[str, Any] | None) -> str | None:
    """The developer's share of batched engine steps in words (``figures.batched_steps``); None when none of their
    completions was attributed by engine step (no line then)."""
    if not steps or steps.get("share") is None:
        return None
    return (f"{fmt_pct(steps['share'])} of {steps['steps']} engine steps shared with other requests "
            f"(mean batch {steps['mean_batch_size']:.1f}, {steps['completions']} completions)")


def summary_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) for each headline figure of one report (``figures.summarize``'s object)."""
    e = r["energy_j"]
    ms = r["method_share"]
    prev = r["previous_week"]
    lines = [
        ("Completions", f"{r['completions']} ({r['accepted']} accepted, {fmt_opt_pct(r['acceptance_rate'])})"),
        ("Energy", f"{fmt_energy(e['total'])} (prefill {fmt_energy(e['prefill'])}, decode {fmt_energy(e['decode'])})"),
        ("Interval", interval_text(e.get("interval"))),
        ("Wasted", f"{fmt_energy(e['wasted'])} on suggestions never accepted"),
        ("Per completion", fmt_opt_energy(r["j_per_completion"])),
        ("Per accepted", fmt_opt_energy(r["j_per_accepted"])),
    ]
    batched = batched_text(r.get("batched_steps"))
    if batched is not None:
        lines.append(("Batched steps", batched))
    lines += [
        ("CO2e", f"{fmt_co2e(r['co2e_g'])} at {r['carbon_intensity_g_per_kwh']:g} gCO2e/kWh"),
        ("Method", ", ".join(f"{m} {fmt_pct(ms[m])}" for m in ("measured", "attributed", "estimated"))),
    ]
    if prev:
        lines.append(("Previous week", f"{prev['week']}: {prev['completions']} completions, "
                                       f"{prev['accepted']} accepted, {fmt_energy(prev['energy_j_total'])}"))
    else:
        lines.append(("Previous week", "no completions"))
    return lines
