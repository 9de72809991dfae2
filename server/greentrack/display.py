"""Rich renderings of one completion and its energy, for ``greentrack complete``.

Every energy figure is shown with how it was obtained (method, meter), its interval with a stated coverage where
one is known (``energy/interval.py``) and its worst-case bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from greentrack.units import fmt_co2e, fmt_duration_ms, fmt_energy

_METHOD_WORDS = {
    "measured": "measured: a counter read spanning exactly each phase",
    "attributed": "attributed: counter energy split over the phases by their timestamps",
    "estimated": "estimated: no energy counter here, a model of the machine",
}


def interval_words(fields: dict[str, Any]) -> str:
    """The total's interval in words: "90 % interval 41.2 J – 52.0 J (basis); worst-case ± 46.5 J"."""
    low, high = fields.get("interval_low_j"), fields.get("interval_high_j")
    uncertainty = fields.get("uncertainty_j")
    worst = f"worst-case bound ± {fmt_energy(uncertainty)}" if uncertainty is not None else ""
    if low is None or high is None:
        return worst
    coverage = fields.get("interval_coverage")
    basis = fields.get("interval_basis") or ""
    if coverage is None:  # the interval is the bound or a model's range: say which, claim no coverage
        return f"{fmt_energy(low)} – {fmt_energy(high)} ({basis})"
    return f"{round(100 * coverage)} % interval {fmt_energy(low)} – {fmt_energy(high)} ({basis}); {worst}"


def completion_table(fields: dict[str, Any], db_path: Path) -> Group:
    """The suggestion, then a table of its phases with energy, time and tokens."""
    suggestion = fields.get("text") or ""
    body = Syntax(suggestion, fields.get("language_id") or "text", theme="ansi_dark") if suggestion else Text(
        "(no suggestion)", style="dim"
    )
    uncertainty = fields.get("uncertainty_j")
    plus_minus = f" ± {fmt_energy(uncertainty)}" if uncertainty is not None else " (uncertainty unknown)"
    interval = interval_words(fields)
    table = Table(title="Energy of this completion", title_justify="left")
    table.add_column("phase")
    table.add_column("energy", justify="right")
    table.add_column("time", justify="right")
    table.add_column("tokens", justify="right")
    table.add_row(
        "prefill", fmt_energy(fields["prefill_j"]), fmt_duration_ms(fields["prefill_ms"]),
        f"{fields['prompt_tokens']} ({fields['reused_prompt_tokens']} reused)",
    )
    table.add_row(
        "decode", fmt_energy(fields["decode_j"]), fmt_duration_ms(fields["decode_ms"]), str(fields["completion_tokens"])
    )
    table.add_row(
        "total", fmt_energy(fields["total_j"]) + plus_minus, fmt_duration_ms(fields["latency_ms"]) + " latency", "",
        style="bold",
    )
    notes = Text.assemble(
        ("method  ", "bold"), _METHOD_WORDS.get(fields["method"], fields["method"]), "\n",
        ("interval", "bold"), f" {interval}\n" if interval else " none\n",
        ("meter   ", "bold"), str(fields["meter"]), "\n",
        ("CO2e    ", "bold"), fmt_co2e(fields["co2e_g"]), "\n",
        ("model   ", "bold"), f"{fields['model']} via {fields['backend']} on {fields['device']}", "\n",
        ("outcome ", "bold"), f"{fields['outcome']} (logged to {db_path}, id {fields['completion_id']})",
    )
    return Group(Panel(body, title="suggestion", title_align="left"), table, notes)
