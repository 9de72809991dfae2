"""The bench's figures shown: a rich table (with the findings and goals under it) and a self-contained HTML page.

Place in the flow: last stage of ``greentrack bench``; reads ``results.summarize``'s object only. Energy is
written with ``units.fmt_energy``, as in the report; every energy figure with its ± bound and method. The HTML
reuses the report's style sheet and draws its charts as inline SVG (no script, no network).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from rich.table import Table

from greentrack.report.html import CSS
from greentrack.units import fmt_duration_ms, fmt_energy, fmt_pct

COLUMNS = ("configuration", "energy", "J / accepted", "accepted", "wasted", "p50", "p95", "J / token",
           "prompt computed / reused", "generated", "energy vs naive")


def fmt_figure(figure: dict[str, Any] | None) -> str:
    """``12.3 J ±6.1 J`` (or ``—`` when undefined: nothing accepted)."""
    if figure is None:
        return "—"
    u = figure["uncertainty_j"]
    return fmt_energy(figure["value_j"]) + ("" if u is None else f" ±{fmt_energy(u)}")


def _share(value: float | None) -> str:
    return "—" if value is None else fmt_pct(value)


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in summary["configurations"]:
        tokens = c["tokens"]
        rows.append([
            c["name"],
            fmt_figure(c["energy"]),
            fmt_figure(c["j_per_accepted"]),
            f"{c['accepted']}/{c['shown']} ({_share(c['acceptance_rate'])})",
            _share(c["wasted"]["share"]),
            fmt_duration_ms(c["latency_ms"]["p50"]) if c["latency_ms"]["p50"] is not None else "—",
            fmt_duration_ms(c["latency_ms"]["p95"]) if c["latency_ms"]["p95"] is not None else "—",
            fmt_figure(c["j_per_generated_token"]),
            f"{tokens['prompt_computed']} / {tokens['prompt_reused']}",
            str(tokens["generated"]),
            _share(c["vs_naive"]["energy"]),
        ])
    return rows


def method_line(summary: dict[str, Any]) -> str:
    methods = sorted({(c["energy"]["method"], c["energy"]["meter"]) for c in summary["configurations"]})
    return "Energy: " + "; ".join(f"{m} by {meter}" for m, meter in methods) + \
        " (± worst-case bounds, summed linearly; cached suggestions: 0 J measured, meter 'cache')."


def finding_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for f in summary["findings"]:
        published = f["published_reduction"]
        span = (f"−{published['low'] * 100:.0f}–{published['high'] * 100:.0f} %" if published["low"] > 0
                else f"up to −{published['high'] * 100:.0f} %")
        measured = ("n/a" if f["energy_reduction"] is None
                    else f"{-f['energy_reduction'] * 100:+.0f} %".replace("-", "−"))
        verdict = {True: "reproduced", False: "not reproduced", None: "not measured"}[f["reproduced"]]
        lines.append(f"{f['name']}: {measured} energy on the same typing ({f['configuration']} vs naive); "
                     f"{f['source']}: {span} — {verdict}")
    return lines


def acceptance_lines(summary: dict[str, Any]) -> list[str]:
    """One plain line naming the configurations where no suggestion was accepted (their J per accepted: —)."""
    none = [f"{c['name']} ({c['shown']} shown)" for c in summary["configurations"] if c["accepted"] == 0]
    if not none:
        return []
    return ["nothing accepted in " + ", ".join(none) + ": J per accepted suggestion undefined (—)"]


def goal_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for g in summary["goals"]:
        value = g["value"]
        shown = "n/a" if value is None else (fmt_pct(value) if g["limit"] < 1 else fmt_duration_ms(value))
        verdict = {True: "met", False: "missed", None: "not measured"}[g["met"]]
        lines.append(f"goal — {g['goal']}: {shown}, {verdict}" + (f" ({g['note']})" if g.get("note") else ""))
    return lines


def budget_note(meta: dict[str, Any]) -> str:
    """``, token budget: the next line (≤ 64)`` under ``--budget line``; nothing for the fixed budget."""
    return f", token budget: the next line (≤ {meta.get('max_tokens')})" if meta.get("budget") == "line" else ""


def rich_table(summary: dict[str, Any]) -> Table:
    meta = summary["meta"]
    table = Table(title=f"greentrack bench — {meta.get('model', '')} on {meta.get('device', '')}{budget_note(meta)}",
                  caption="\n".join([method_line(summary), *acceptance_lines(summary), *finding_lines(summary),
                                      *goal_lines(summary)]),
                  caption_justify="left")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in table_rows(summary):
        table.add_row(*row)
    return table


def markdown_table(summary: dict[str, Any]) -> str:
    """The table as Markdown (docs/benchmarks.md, README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------------------

BENCH_CSS = """
.bar-jpa { fill: #2f8f46; } .bar-total { fill: #8cc79a; } .bar-p50 { fill: #4f7fb8; } .bar-p95 { fill: #a9c1e0; }
.whisker { stroke: #1b2a1f; stroke-width: 1.2; } .goal { stroke: #c0392b; stroke-dasharray: 4 3; }
"""


def _bar_chart(chart_id: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
               fmt: Any, errors: Sequence[float | None] | None = None, goal: float | None = None) -> str:
    """Horizontal bars, one group per label, one bar per series; ``errors`` draws ± whiskers on the first."""
    width, left, bar_h, gap = 640, 110, 14, 10
    group_h = bar_h * len(series) + gap
    height = group_h * len(labels) + 24
    values = [v for _, vs in series for v in vs if v is not None]
    spans = [(v or 0) + (e or 0) for v, e in zip(series[0][1], errors or [], strict=False)]
    top = max([*values, *spans, goal or 0.0, 1e-12])
    scale = (width - left - 90) / top
    out = [f'<svg id="{chart_id}" width="{width}" height="{height}" role="img">']
    for i, label in enumerate(labels):
        y0 = 8 + i * group_h
        out.append(f'<text x="{left - 6}" y="{y0 + bar_h}" text-anchor="end">{escape(label)}</text>')
        for k, (cls, vs) in enumerate(series):
            v = vs[i]
            y = y0 + k * bar_h
            if v is None:
                out.append(f'<text x="{left + 4}" y="{y + bar_h - 3}">—</text>')
                continue
            w = max(1.0, v * scale)
            out.append(f'<rect class="{cls}" x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}"/>')
            label_x = left + w + 4
            if k == 0 and errors is not None and errors[i] is not None:
                e = float(errors[i] or 0.0)
                x1, x2 = left + max(0.0, v - e) * scale, left + (v + e) * scale
                mid = y + (bar_h - 2) / 2
                out.append(f'<line class="whisker" x1="{x1:.1f}" y1="{mid:.1f}" x2="{x2:.1f}" y2="{mid:.1f}"/>')
                label_x = max(label_x, x2 + 4)
            out.append(f'<text x="{label_x:.1f}" y="{y + bar_h - 3}">{escape(fmt(v))}</text>')
    if goal is not None:
        gx = left + goal * scale
        out.append(f'<line class="goal" x1="{gx:.1f}" y1="0" x2="{gx:.1f}" y2="{height - 16}"/>')
        out.append(f'<text x="{gx + 3:.1f}" y="{height - 4}">goal {escape(fmt(goal))}</text>')
    out.append("</svg>")
    return "".join(out)


NUMERIC = ' class="n"'


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        cells = (f"<td{NUMERIC if i else ''}>{escape(cell)}</td>" for i, cell in enumerate(row))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _suggestion_table(configs: Sequence[dict[str, Any]], limit: int = 60) -> str:
    """What the model suggested and what the developer typed next, for the ``all`` configuration (else the last)."""
    chosen = next((c for c in configs if c["name"] == "all"), configs[-1] if configs else None)
    if chosen is None:
        return ""
    rows = [[f"{s['file']}:{s['position']}", repr(s["suggestion"][:120]), repr(s["next"][:120]),
             f"{s['taken']}" + (" (cache)" if s["cached"] else "")] for s in chosen["suggestions"][:limit]]
    more = f" (the first {limit} here)" if len(chosen["suggestions"]) > limit else ""
    return (f"<p>{escape(chosen['name'])}: {len(chosen['suggestions'])} shown{more}</p>"
            + _html_table(["where", "suggested", "typed next", "taken (chars)"], rows))


def render_html(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    configs = summary["configurations"]
    names = [c["name"] for c in configs]
    jpa = [c["j_per_accepted"]["value_j"] if c["j_per_accepted"] else None for c in configs]
    jpa_err = [c["j_per_accepted"]["uncertainty_j"] if c["j_per_accepted"] else None for c in configs]
    naive = next((c for c in configs if c["name"] == "naive"), None)
    goal = (naive["j_per_accepted"]["value_j"] * 0.10) if naive and naive["j_per_accepted"] else None
    title = "greentrack bench"
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="sub">{escape(str(meta.get("model", "")))} on {escape(str(meta.get("device", "")))}'
            f'{escape(budget_note(meta))}, '
            f'{escape(str(meta.get("date", "")))}; {escape(str(meta.get("command", "")))}</p>',
            _html_table(COLUMNS, table_rows(summary)),
            f"<p>{escape(method_line(summary))}</p>",
            *(f"<p><strong>{escape(line)}</strong></p>" for line in acceptance_lines(summary)),
            "<h2>Energy on the same typing</h2>",
            '<p class="legend"><span style="background:#8cc79a"></span>every completion of the replay (± bound)</p>',
            _bar_chart("chart-total", names, [("bar-total", [c["energy"]["value_j"] for c in configs])], fmt_energy,
                       errors=[c["energy"]["uncertainty_j"] for c in configs]),
            "<h2>Energy per accepted suggestion</h2>",
            '<p class="legend"><span style="background:#2f8f46"></span>J per accepted suggestion (± bound); '
            "dashed: the goal, 10 % of the naive baseline's</p>",
            _bar_chart("chart-energy", names, [("bar-jpa", jpa)], fmt_energy, errors=jpa_err, goal=goal),
            "<h2>Keystroke → suggestion</h2>",
            '<p class="legend"><span style="background:#4f7fb8"></span>p50'
            '<span style="background:#a9c1e0"></span>p95; dashed: the 500 ms goal</p>',
            _bar_chart("chart-latency", names,
                       [("bar-p50", [c["latency_ms"]["p50"] for c in configs]),
                        ("bar-p95", [c["latency_ms"]["p95"] for c in configs])], fmt_duration_ms, goal=500.0),
            "<h2>Findings reproduced</h2>",
            '<ul class="tips">' + "".join(f"<li>{escape(x)}</li>" for x in finding_lines(summary)) + "</ul>",
            "<h2>Goals</h2>",
            '<ul class="tips">' + "".join(f"<li>{escape(x)}</li>" for x in goal_lines(summary)) + "</ul>",
            "<h2>Suggestions shown with all optimizations</h2>",
            _suggestion_table(configs),
            "<h2>Machine</h2>",
            _html_table(["figure", "value"], [[k, str(v)] for k, v in meta.items()])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}{BENCH_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
