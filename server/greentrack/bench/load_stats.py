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
* ``breakdown`` (docs/interfaces.md, "Benchmark"): where an answered request's ``server_ms`` goes
  (``BREAKDOWN_COMPONENTS``), from the answer's ``greentrack`` object and the request's record
  (``RequestLog.take_answer`` / ``attach_records``): p50, p95 and the mean over the slowest 5 % by ``server_ms``
  (at least one request). Per request ``server_ms`` =
  ``overhead_ms`` + ``queue_ms`` + ``prefill_ms`` + ``decode_ms`` + ``server_other_ms``; a value the server did not
  give is left out of its statistic (``n`` says how many had it), never counted as 0. ``answered_requests``: the
  same parts per answered request, with its developer, id and send time, to look at the slow ones one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The parts of ``server_other_ms`` the answer names (``server_timings_ms``, docs/interfaces.md).
SERVER_TIMINGS = ("before_engine", "to_scheduler", "to_prompt", "admit", "after_decode")


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
    # What the server said (None: it did not say): the answer's ``greentrack`` object (``take_answer``), then the
    # request's record (``attach_records``). Units: ms, tokens. ``server_latency_ms``: server received → engine ended.
    server_latency_ms: float | None = None
    queue_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    prompt_tokens: int | None = None
    reused_prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False
    #: The answer's ``server_timings_ms`` (``SERVER_TIMINGS``): parts of ``server_other_ms``.
    server_timings_ms: dict[str, float | None] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return (self.done_s - self.key_s) * 1000.0

    @property
    def server_ms(self) -> float:
        return (self.done_s - self.sent_s) * 1000.0

    def take_answer(self, green: Mapping[str, Any] | None) -> None:
        """Keep the times and tokens of the answer's ``greentrack`` object (docs/interfaces.md, "HTTP API")."""
        if not isinstance(green, Mapping):
            return
        self.server_latency_ms = _maybe_num(green, "latency_ms")
        self.queue_ms = _maybe_num(green, "queue_ms")
        timings = green.get("server_timings_ms")
        if isinstance(timings, Mapping):
            self.server_timings_ms = {k: _maybe_num(timings, k) for k in SERVER_TIMINGS}
        self._take_engine_figures(green)

    def take_record(self, row: Mapping[str, Any]) -> None:
        """Keep the engine's figures of the request's record (``GET /v1/greentrack/completions/{id}``); a figure
        the record lacks keeps what the answer said."""
        self._take_engine_figures(row)

    def _take_engine_figures(self, row: Mapping[str, Any]) -> None:
        for name in ("prefill_ms", "decode_ms", "prompt_tokens", "reused_prompt_tokens", "completion_tokens"):
            value = _maybe_num(row, name)
            if value is not None:
                setattr(self, name, round(value) if name.endswith("_tokens") else value)
        self.cached = self.cached or row.get("outcome") == "cached"

    def components(self) -> dict[str, float | None]:
        """This request's ``BREAKDOWN_COMPONENTS`` (None where a value it needs is missing)."""
        latency, queue, prefill, decode = self.server_latency_ms, self.queue_ms, self.prefill_ms, self.decode_ms
        tokens = self.completion_tokens
        # the decode span runs from the first token (the prefill's) to the last: completion_tokens − 1 tokens
        per_token = (decode / (tokens - 1) if decode is not None and tokens is not None and tokens >= 2
                     and not self.cached else None)
        other = (latency - queue - prefill - decode
                 if latency is not None and queue is not None and prefill is not None and decode is not None else None)
        return {
            "server_ms": self.server_ms,
            "server_latency_ms": latency,
            "overhead_ms": self.server_ms - latency if latency is not None else None,
            "queue_ms": queue,
            "prefill_ms": prefill,
            "decode_ms": decode,
            "server_other_ms": other,
            **{f"{k}_ms": self.server_timings_ms.get(k) for k in SERVER_TIMINGS},
            "completion_tokens": tokens,
            "decode_ms_per_token": per_token,
            "prompt_tokens": self.prompt_tokens,
            "reused_prompt_tokens": self.reused_prompt_tokens,
        }


#: The figures of a level's ``breakdown``. Units: ms unless named tokens. ``server_ms``: request sent → answer
#: (the client's clock); ``server_latency_ms``: server received → engine ended (the answer's ``latency_ms``);
#: ``overhead_ms``: their difference (the connection; the server's HTTP layer before the app stamps the request's
#: arrival and after the engine ends — event-loop waits included; the client's threads); ``server_other_ms``:
#: ``server_latency_ms`` − queue − prefill − decode (the server's time outside the engine's phases);
#: ``before_engine_ms`` (= ``to_scheduler_ms`` + ``to_prompt_ms``), ``admit_ms``, ``after_decode_ms``: the parts of
#: it the server stamps (its answer's ``server_timings_ms``); ``decode_ms_per_token``: decode / (completion_tokens −
#: 1), cache hits and one-token answers left out.
BREAKDOWN_COMPONENTS: tuple[str, ...] = (
    "server_ms", "server_latency_ms", "overhead_ms", "queue_ms", "prefill_ms", "decode_ms", "server_other_ms",
    "before_engine_ms", "to_scheduler_ms", "to_prompt_ms", "admit_ms", "after_decode_ms",
    "completion_tokens", "decode_ms_per_token", "prompt_tokens", "reused_prompt_tokens",
)

#: The share of answered requests, by ``server_ms``, whose components the breakdown averages (at least one).
SLOWEST_PCT = 5


def attach_records(logs: Sequence[RequestLog], records: Sequence[Mapping[str, Any]]) -> int:
    """Give each log its record's figures (joined on ``completion_id``); how many logs got one."""
    by_id = {str(row["completion_id"]): row for row in records if row.get("completion_id")}
    joined = 0
    for log in logs:
        row = by_id.get(log.completion_id)
        if row is not None:
            log.take_record(row)
            joined += 1
    return joined


def slowest_count(n: int) -> int:
    """How many of ``n`` answered requests are the slowest ``SLOWEST_PCT`` % (at least 1 when n ≥ 1)."""
    return max(1, -(-n * SLOWEST_PCT // 100)) if n > 0 else 0


def breakdown(answered: Sequence[RequestLog]) -> dict[str, Any]:
    """Where the answered requests' time goes (``BREAKDOWN_COMPONENTS``): per component ``p50``, ``p95``,
    ``slowest_mean`` (over the slowest ``SLOWEST_PCT`` % by ``server_ms``) and ``n`` (requests that had it)."""
    rows = [log.components() for log in answered]
    k = slowest_count(len(answered))
    slow_rows = sorted(rows, key=lambda row: row["server_ms"] or 0.0, reverse=True)[:k]

    def present(source: Sequence[Mapping[str, float | None]], name: str) -> list[float]:
        return [v for v in (row[name] for row in source) if v is not None]

    def mean(values: Sequence[float]) -> float | None:
        return math.fsum(values) / len(values) if values else None

    return {
        "answered": len(answered),
        "slowest_pct": SLOWEST_PCT,
        "slowest_n": k,
        "slowest_min_server_ms": _round(min(present(slow_rows, "server_ms"), default=None), 3),
        "p50": {name: _round(percentile(present(rows, name), 50), 3) for name in BREAKDOWN_COMPONENTS},
        "p95": {name: _round(percentile(present(rows, name), 95), 3) for name in BREAKDOWN_COMPONENTS},
        "slowest_mean": {name: _round(mean(present(slow_rows, name)), 3) for name in BREAKDOWN_COMPONENTS},
        "n": {name: len(present(rows, name)) for name in BREAKDOWN_COMPONENTS},
    }


def request_row(log: RequestLog, start_s: float) -> dict[str, Any]:
    """One answered request in a level's ``answered_requests``: who, when it was sent (s after ``start_s``, the
    level's first keystroke), whether the cache served it, and its ``BREAKDOWN_COMPONENTS``."""
    return {"developer": log.developer, "completion_id": log.completion_id,
            "sent_at_s": round(log.sent_s - start_s, 3), "cached": log.cached,
            **{name: value if isinstance(value, int) else _round(value, 3)
               for name, value in log.components().items()}}


def breakdown_line(level: Mapping[str, Any]) -> str:
    """One console line: the slowest requests' mean server time and its parts, and the decode rate."""
    b = level.get("breakdown") or {}
    slow, p50 = b.get("slowest_mean") or {}, b.get("p50") or {}

    def ms(value: Any) -> str:
        return "—" if value is None else f"{value:.0f}"

    def rate(value: Any) -> str:
        return "—" if value is None else f"{value:.2f}"

    return (f"slowest {b.get('slowest_pct', SLOWEST_PCT)} % (n={b.get('slowest_n', 0)}): server "
            f"{ms(slow.get('server_ms'))} ms = HTTP+client {ms(slow.get('overhead_ms'))} + queue "
            f"{ms(slow.get('queue_ms'))} + prefill {ms(slow.get('prefill_ms'))} + decode {ms(slow.get('decode_ms'))}"
            f" + other {ms(slow.get('server_other_ms'))} ms (to the engine {ms(slow.get('before_engine_ms'))}: "
            f"scheduler {ms(slow.get('to_scheduler_ms'))} + prompt {ms(slow.get('to_prompt_ms'))}; admit "
            f"{ms(slow.get('admit_ms'))}, after decode {ms(slow.get('after_decode_ms'))}), "
            f"{rate(slow.get('completion_tokens'))} tokens; decode p50 {rate(p50.get('decode_ms_per_token'))} ms/token")


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


def _maybe_num(row: Mapping[str, Any], key: str) -> float | None:
    """``row[key]`` as a finite number, None when missing, null or not a number."""
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


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
    start_s = min((r.key_s for r in requests), default=0.0)
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
        "breakdown": breakdown(answered),
        "answered_requests": [request_row(r, start_s) for r in answered],
    }


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("developers", "N"), ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"),
    ("server_p95_ms", "server p95 ms"), ("completions_per_s", "compl/s"), ("j_per_completion", "J/compl"),
    ("j_per_token", "J/token"), ("j_per_accepted", "J/accepted"), ("gross_j_per_completion", "GPU J/compl"),
    ("idle_energy_share", "idle E share"), ("gpu_utilization_mean_pct", "GPU util %"), ("errors", "errors"),
)


#: The second table: the slowest requests' mean parts (``breakdown.slowest_mean``).
SLOWEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("developers", "N"), ("slowest_n", "n"), ("server_ms", "server ms"), ("overhead_ms", "HTTP+client ms"),
    ("queue_ms", "queue ms"), ("prefill_ms", "prefill ms"), ("decode_ms", "decode ms"),
    ("server_other_ms", "other ms"), ("completion_tokens", "tokens"), ("decode_ms_per_token", "decode ms/token"),
)


def markdown_table(levels: Sequence[Mapping[str, Any]]) -> str:
    """The sweep as a Markdown table, then the slowest requests' breakdown as a second (missing figures: —)."""
    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    def table(columns: Sequence[tuple[str, str]], value: Callable[[Mapping[str, Any], str], Any]) -> list[str]:
        head = "| " + " | ".join(title for _, title in columns) + " |"
        rule = "| " + " | ".join("---:" for _ in columns) + " |"
        rows = ["| " + " | ".join(cell(value(level, key)) for key, _ in columns) + " |" for level in levels]
        return [head, rule, *rows]

    def slowest(level: Mapping[str, Any], key: str) -> Any:
        if key == "developers":
            return level.get(key)
        b = level.get("breakdown") or {}
        return b.get(key) if key == "slowest_n" else (b.get("slowest_mean") or {}).get(key)

    caption = f"Slowest {SLOWEST_PCT} % of answers by server ms (means): server ms = HTTP+client + queue + prefill " \
              "+ decode + other"
    return "\n".join([*table(TABLE_COLUMNS, lambda level, key: level.get(key)), "", caption, "",
                      *table(SLOWEST_COLUMNS, slowest)])
