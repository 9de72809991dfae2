"""The report's formats: ``table`` (rich), ``md``, ``json``, ``csv`` (one row per completion) and ``html``.

Place in the flow: ``command.run_report`` builds the reports (``build_reports``) and hands them here. Every
function is pure: reports (and, for CSV, rows) in, text out.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from greentrack.errors import UsageError
from greentrack.report.html import render_html
from greentrack.report.summary import summary_lines
from greentrack.store.schema import EXPORT_COLUMNS
from greentrack.units import fmt_energy

FORMATS: tuple[str, ...] = ("table", "md", "json", "csv", "html")


def render(reports: Sequence[dict[str, Any]], fmt: str, *, rows: Iterable[dict[str, Any]] | None = None,
           as_list: bool = True, width: int = 100) -> str:
    """``reports`` as ``fmt``. JSON is a list when ``as_list`` (``--all``), else the one object (or null).

    ``csv`` exports ``rows`` (one per completion, every stored column but ``text``).
    """
    if fmt == "json":
        return render_json(reports, as_list=as_list)
    if fmt == "md":
        return render_md(reports)
    if fmt == "csv":
        return render_csv(rows or [])
    if fmt == "html":
        return render_html(reports)
    if fmt == "table":
        console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                          legacy_windows=False, emoji=False)
        for item in table_renderables(reports):
            console.print(item)
        out = console.file.getvalue()  # type: ignore[attr-defined]
        return str(out)
    raise UsageError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")


def render_json(reports: Sequence[dict[str, Any]], *, as_list: bool = True) -> str:
    payload: Any = list(reports) if as_list else (reports[0] if reports else None)
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def render_csv(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in EXPORT_COLUMNS})
    return buf.getvalue()


# -- table (rich) ---------------------------------------------------------------------------------------------


def _bar(value: float, peak: float, width: int = 30) -> str:
    if peak <= 0 or value <= 0:
        return ""
    cells = value / peak * width
    full = int(cells)
    eighths = int((cells - full) * 8)
    return "█" * full + ("▏▎▍▌▋▊▉"[eighths - 1] if eighths else "")


def table_renderables(reports: Sequence[dict[str, Any]]) -> list[RenderableType]:
    if not reports:
        return [Text("No completions recorded for that week.")]
    out: list[RenderableType] = []
    for r in reports:
        out.append(_summary_panel(r))
        if r["completions"]:
            out.append(_day_chart(r))
            out.append(_breakdown_table("By model", "model", r["by_model"]))
            out.append(_breakdown_table("By language", "language", r["by_language"], key="language_id"))
        if r["tips"]:
            out.append(Panel(Group(*[Text("• " + t) for t in r["tips"]]), title="Tips", title_align="left"))
    return out


def _first_last(r: dict[str, Any]) -> str:
    days = r["by_day"]
    return f"{days[0]['date']} … {days[-1]['date']}" if days else f"{r['from']} … {r['to']}"


def _summary_panel(r: dict[str, Any]) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in summary_lines(r):
        grid.add_row(label, value)
    title = f"greentrack — {r['developer']} — {r['week']} ({_first_last(r)}, {r['tz']})"
    return Panel(grid, title=title, title_align="left")


def _day_chart(r: dict[str, Any]) -> Table:
    peak = max((d["energy_j"] for d in r["by_day"]), default=0.0)
    table = Table(title="Energy per day", title_justify="left", show_edge=False)
    table.add_column("day")
    table.add_column("completions", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("energy", justify="right")
    table.add_column("", min_width=30)
    for d in r["by_day"]:
        table.add_row(d["date"], str(d["completions"]), str(d["accepted"]), fmt_energy(d["energy_j"]),
                      Text(_bar(d["energy_j"], peak), style="green"))
    return table


def _breakdown_table(title: str, label: str, items: list[dict[str, Any]], key: str | None = None) -> Table:
    key = key or label
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(label)
    table.add_column("completions", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("energy", justify="right")
    for item in items:
        table.add_row(item[key] or "?", str(item["completions"]), str(item.get("accepted", "")),
                      fmt_energy(item["energy_j"]))
    return table


# -- markdown -------------------------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_md(reports: Sequence[dict[str, Any]]) -> str:
    if not reports:
        return "# greentrack report\n\nNo completions recorded for that week.\n"
    parts: list[str] = []
    for r in reports:
        parts.append(f"# greentrack report — {_md_escape(r['developer'])} — {r['week']}\n")
        parts.append(f"{r['from']} to {r['to']} ({r['tz']})\n")
        parts.append("| figure | value |\n| --- | --- |")
        for label, value in summary_lines(r):
            parts.append(f"| {label} | {_md_escape(value)} |")
        parts.append("")
        parts.append("## By day\n\n| date | completions | accepted | energy |\n| --- | ---: | ---: | ---: |")
        for d in r["by_day"]:
            parts.append(f"| {d['date']} | {d['completions']} | {d['accepted']} | {fmt_energy(d['energy_j'])} |")
        parts.append("")
        for title, label, key in (("By model", "model", "model"), ("By language", "language", "language_id")):
            items = r["by_model"] if key == "model" else r["by_language"]
            parts.append(f"## {title}\n\n| {label} | completions | accepted | energy |\n| --- | ---: | ---: | ---: |")
            for item in items:
                parts.append(f"| {_md_escape(item[key] or '?')} | {item['completions']} | {item['accepted']} | "
                             f"{fmt_energy(item['energy_j'])} |")
            parts.append("")
        parts.append("## Tips\n")
        if r["tips"]:
            parts.extend(f"- {_md_escape(t)}" for t in r["tips"])
        else:
            parts.append("No tips this week.")
        parts.append("")
    return "\n".join(parts)
