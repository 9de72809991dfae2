"""The load benchmark's figures (pure: no I/O, no threads): percentiles, one level's summary, the sweep's table.

Place in the flow: ``bench.load`` runs N simulated developers against a server and hands what it saw here —
one ``RequestLog`` per request it would have sent, the server's records of those that reached the model, the
``/metrics`` deltas and the GPU probe's samples — and ``summarize_level`` turns them into the figures of
docs/benchmarks.md ("Team capacity"). Definitions (per level, over its window):

* latency: keystroke → suggestion shown (the debounce included, as the editor sees it), over requests answered
  before the next keystroke with text; ``server_ms``: request sent → answer, same requests.
* ``completions_per_s``: answered requests (not cancelled, reached the model) per second of window.
* ``j_per_completion``: Σ attributed energy of every record (cancelled ones included: superseded work is part of
  serving) / answered requests. ``j_per_token``: the same Σ / Σ generated tokens. ``j_per_accepted``: / accepted
  suggestions (the first-line oracle, ``bench.script.accepted_length``).
* ``gross_j_per_completion``: the GPU counter's delta over the window (idle included) / answered requests.
* ``idle_energy_share``: the server's idle energy / (idle + requests) from ``/metrics`` deltas;
  ``idle_time_share``: its idle seconds / the time between the two ``/metrics`` reads (the window, the
  records' long-polls and a settling pause: the server's idle meter stores a period after it ends).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class RequestLog:
    """One keystroke's request as the simulated editor saw it. Units: s (monotonic), characters.

    ``sent``: it passed the debounce and went to the server; ``answered``: the server answered (not cancelled);
    ``shown``: answered with text before the next keystroke; ``accepted``: the oracle took it.
    """

    developer: int
    completion_id: str
    key_s: float
    sent: bool = False
    sent_s: float = 0.0
    done_s: float = 0.0
    answered: bool = False
    cancelled: bool = False
    shown: bool = False
    accepted: bool = False
    text_chars: int = 0
    error: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.done_s - self.key_s) * 1000.0

    @property
    def server_ms(self) -> float:
        return (self.done_s - self.sent_s) * 1000.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) with linear interpolation between order statistics; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    rank = (len(xs) - 1) * min(100.0, max(0.0, q)) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(xs) - 1)
    return float(xs[low] + (xs[high] - xs[low]) * (rank - low))


def _num(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        f = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def metric_delta(before: Mapping[str, float] | None, after: Mapping[str, float] | None, name: str) -> float | None:
    """``after[name] − before[name]`` (Prometheus sums by metric name), None when either is missing."""
    if before is None or after is None or name not in after:
        return None
    return after[name] - before.get(name, 0.0)


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric name (labels dropped) from Prometheus' text format."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "}" in line:
            name, rest = line[:line.index("{")], line[line.rindex("}") + 1:]
        else:
            name, _, rest = line.partition(" ")
        value_text = rest.strip().split(" ")[0] if rest.strip() else ""
        name = name.strip()
        try:
            value = float(value_text)
        except ValueError:
            continue
        if name and math.isfinite(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


def summarize_level(
    developers: int,
    window_s: float,
    requests: Sequence[RequestLog],
    records: Sequence[Mapping[str, Any]],
    *,
    metrics_before: Mapping[str, float] | None = None,
    metrics_after: Mapping[str, float] | None = None,
    gpu: Mapping[str, Any] | None = None,
    metrics_span_s: float | None = None,
) -> dict[str, Any]:
    """One level's figures (see the module's docstring). ``records``: the server's rows of this level's requests."""
    keystrokes = len(requests)
    sent = [r for r in requests if r.sent]
    answered = [r for r in sent if r.answered]
    shown = [r for r in answered if r.shown]
    accepted = [r for r in shown if r.accepted]
    errors = [r for r in requests if r.error]
    latencies = [r.latency_ms for r in shown]
    server_ms = [r.server_ms for r in answered]
    energy_j = math.fsum(_num(row, "total_j") for row in records)
    tokens = math.fsum(_num(row, "completion_tokens") for row in records)
    cancelled_rows = [row for row in records if row.get("outcome") == "cancelled"]
    per_completion = [_num(row, "total_j") for row in records if row.get("outcome") != "cancelled"]
    methods = sorted({str(row.get("method")) for row in records if row.get("method")})
    idle_j = metric_delta(metrics_before, metrics_after, "greentrack_idle_energy_joules_total")
    idle_s = metric_delta(metrics_before, metrics_after, "greentrack_idle_seconds_total")
    gpu_j = _num(gpu, "energy_j") if gpu and gpu.get("energy_j") is not None else None
    return {
        "developers": developers,
        "window_s": round(window_s, 2),
        "keystrokes": keystrokes,
        "requests_sent": len(sent),
        "answered": len(answered),
        "shown": len(shown),
        "accepted": len(accepted),
        "cancelled_sent": len(sent) - len(answered) - len([r for r in sent if r.error]),
        "errors": len(errors),
        "error_examples": sorted({r.error for r in errors})[:3],
        "latency_p50_ms": _round(percentile(latencies, 50), 1),
        "latency_p95_ms": _round(percentile(latencies, 95), 1),
        "server_p50_ms": _round(percentile(server_ms, 50), 1),
        "server_p95_ms": _round(percentile(server_ms, 95), 1),
        "completions_per_s": _round(_ratio(len(answered), window_s), 3),
        "records": len(records),
        "records_cancelled": len(cancelled_rows),
        "methods": methods,
        "energy_j": round(energy_j, 3),
        "generated_tokens": int(tokens),
        "j_per_completion": _round(_ratio(energy_j, len(answered))),
        "j_per_completion_answered_only": _round(_ratio(math.fsum(per_completion), len(per_completion))),
        "j_per_token": _round(_ratio(energy_j, tokens)),
        "j_per_accepted": _round(_ratio(energy_j, len(accepted))),
        "idle_energy_j": _round(idle_j, 3),
        "idle_energy_share": _round(_ratio(idle_j, idle_j + energy_j) if idle_j is not None else None),
        "idle_time_share": _round(_ratio(idle_s, metrics_span_s or window_s) if idle_s is not None else None),
        "gpu_energy_j": _round(gpu_j, 3),
        "gross_j_per_completion": _round(_ratio(gpu_j, len(answered)) if gpu_j is not None else None),
        "gpu_utilization_mean_pct": _round(_num(gpu, "utilization_mean_pct") if gpu and gpu.get(
            "utilization_mean_pct") is not None else None, 1),
        "gpu_power_mean_w": _round(_num(gpu, "power_mean_w") if gpu and gpu.get("power_mean_w") is not None
                                   else None, 1),
    }


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("developers", "N"), ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"),
    ("server_p95_ms", "server p95 ms"), ("completions_per_s", "compl/s"), ("j_per_completion", "J/compl"),
    ("j_per_token", "J/token"), ("j_per_accepted", "J/accepted"), ("gross_j_per_completion", "GPU J/compl"),
    ("idle_energy_share", "idle E share"), ("gpu_utilization_mean_pct", "GPU util %"), ("errors", "errors"),
)


def markdown_table(levels: Sequence[Mapping[str, Any]]) -> str:
    """The sweep as a Markdown table (missing figures shown as —)."""
    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    head = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "| " + " | ".join("---:" for _ in TABLE_COLUMNS) + " |"
    rows = ["| " + " | ".join(cell(level.get(key)) for key, _ in TABLE_COLUMNS) + " |" for level in levels]
    return "\n".join([head, rule, *rows])
