"""The report as one self-contained HTML file: inline CSS and SVG charts, no script, no network.

Place in the flow: ``render.render(reports, "html")`` calls ``render_html``. Charts per developer: energy per
local day (prefill and decode stacked), energy by model, and the share of energy by measurement method.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from greentrack.report.summary import summary_lines
from greentrack.units import fmt_energy, fmt_pct

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem; color: #1b2a1f;
       background: #fbfdf9; max-width: 60rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
.sub { color: #5a6b5e; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #dde6dc; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
section.report { border-top: 3px solid #2f8f46; margin-top: 2rem; padding-top: .5rem; }
svg text { font-size: 11px; fill: #33443a; }
.bar-prefill { fill: #8cc79a; } .bar-decode { fill: #2f8f46; } .bar-model { fill: #4f7fb8; }
.m-measured { fill: #2f8f46; } .m-attributed { fill: #e0a030; } .m-estimated { fill: #b0b8b2; }
.legend span { display: inline-block; width: .8rem; height: .8rem; margin: 0 .3rem 0 1rem; vertical-align: middle; }
ul.tips li { margin: .4rem 0; }
"""


def _day_chart(r: dict[str, Any], idx: int) -> str:
    days = r["by_day"]
    width, height, left, bottom, top = 640, 220, 60, 30, 20
    plot_h = height - bottom - top
    slot = (width - left - 10) / max(1, len(days))
    peak = max((d["energy_j"] for d in days), default=0.0) or 1.0
    parts = [f'<svg id="chart-days-{idx}" class="chart chart-days" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Energy per day">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#889"/>',
             f'<text x="4" y="{top + 4}">{escape(fmt_energy(peak))}</text>',
             f'<text x="4" y="{top + plot_h}">0</text>']
    for i, d in enumerate(days):
        x = left + i * slot + slot * 0.15
        w = slot * 0.7
        pre_h = plot_h * d["prefill_j"] / peak
        dec_h = plot_h * d["decode_j"] / peak
        other_h = max(0.0, plot_h * d["energy_j"] / peak - pre_h - dec_h)
        y = top + plot_h
        for cls, h in (("bar-prefill", pre_h), ("bar-decode", dec_h + other_h)):
            if h > 0:
                y -= h
                parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}">'
                             f'<title>{escape(d["date"])}: {escape(fmt_energy(d["energy_j"]))}</title></rect>')
        parts.append(f'<text x="{x + w / 2:.1f}" y="{height - 10}" text-anchor="middle">{escape(d["date"][5:])}'
                     "</text>")
        if d["energy_j"] > 0:
            parts.append(f'<text x="{x + w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">'
                         f'{escape(fmt_energy(d["energy_j"]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _model_chart(r: dict[str, Any], idx: int) -> str:
    items = r["by_model"][:8]
    row_h, left, width = 26, 200, 640
    height = row_h * max(1, len(items)) + 10
    peak = max((m["energy_j"] for m in items), default=0.0) or 1.0
    parts = [f'<svg id="chart-models-{idx}" class="chart chart-models" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Energy by model">']
    for i, m in enumerate(items):
        y = 5 + i * row_h
        w = (width - left - 90) * m["energy_j"] / peak
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{escape(m["model"][:30] or "?")}</text>')
        parts.append(f'<rect class="bar-model" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{escape(fmt_energy(m["energy_j"]))} · '
                     f'{m["completions"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _method_chart(r: dict[str, Any], idx: int) -> str:
    width, height = 640, 34
    parts = [f'<svg id="chart-methods-{idx}" class="chart chart-methods" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Energy by measurement method">']
    x = 0.0
    for method in ("measured", "attributed", "estimated"):
        share = float(r["method_share"].get(method, 0.0))
        w = width * share
        if w > 0:
            parts.append(f'<rect class="m-{method}" x="{x:.1f}" y="2" width="{w:.1f}" height="30">'
                         f"<title>{method}: {fmt_pct(share)}</title></rect>")
            if w > 90:
                parts.append(f'<text x="{x + 6:.1f}" y="21">{method} {fmt_pct(share)}</text>')
        x += w
    parts.append("</svg>")
    return "".join(parts)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ' class="n"' if i >= numeric_from else ""
            out.append(f"<td{cls}>{escape(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(reports: Sequence[dict[str, Any]]) -> str:
    title = "greentrack report"
    if reports:
        weeks = sorted({r["week"] for r in reports})
        title += " — " + ", ".join(weeks)
    body: list[str] = [f"<h1>{escape(title)}</h1>"]
    if not reports:
        body.append("<p>No completions recorded for that week.</p>")
    for idx, r in enumerate(reports):
        body.append(f'<section class="report" id="report-{idx}">')
        body.append(f"<h2>{escape(r['developer'])} — {escape(r['week'])}</h2>")
        body.append(f'<p class="sub">{escape(r["from"])} to {escape(r["to"])} ({escape(r["tz"])})</p>')
        body.append(_table(["figure", "value"], summary_lines(r), numeric_from=2))
        body.append("<h2>Energy per day</h2>")
        body.append('<p class="legend"><span style="background:#8cc79a"></span>prefill'
                    '<span style="background:#2f8f46"></span>decode</p>')
        body.append(_day_chart(r, idx))
        body.append(_table(["date", "completions", "accepted", "energy"],
                           [[d["date"], str(d["completions"]), str(d["accepted"]), fmt_energy(d["energy_j"])]
                            for d in r["by_day"]]))
        body.append("<h2>Energy by model</h2>")
        body.append(_model_chart(r, idx))
        body.append("<h2>How the energy was obtained</h2>")
        body.append(_method_chart(r, idx))
        body.append("<h2>By language</h2>")
        body.append(_table(["language", "completions", "accepted", "energy"],
                           [[x["language_id"] or "?", str(x["completions"]), str(x["accepted"]),
                             fmt_energy(x["energy_j"])] for x in r["by_language"]]))
        body.append("<h2>Tips</h2>")
        if r["tips"]:
            body.append('<ul class="tips">' + "".join(f"<li>{escape(t)}</li>" for t in r["tips"]) + "</ul>")
        else:
            body.append("<p>No tips this week.</p>")
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
