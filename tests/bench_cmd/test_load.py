"""The load benchmark (``greentrack.bench.load``): its pure figures, and one short run against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.serve.support import Server

from greentrack.bench.load import parse_levels, read_tokens
from greentrack.bench.load_stats import (
    BREAKDOWN_COMPONENTS,
    RequestLog,
    markdown_table,
    parse_prometheus,
    percentile,
    slowest_count,
    summarize_level,
)

METRICS = """# HELP greentrack_idle_energy_joules_total Idle.
# TYPE greentrack_idle_energy_joules_total counter
greentrack_idle_energy_joules_total{method="attributed"} 10.5
greentrack_idle_energy_joules_total{method="estimated"} 1.5
greentrack_idle_seconds_total 20.0
greentrack_energy_joules_total{developer="a",model="m",method="attributed"} 3e1
"""


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([10.0, 0.0, 20.0], 100) == 20.0
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_prometheus_text_is_summed_by_metric_name() -> None:
    sums = parse_prometheus(METRICS)
    assert sums["greentrack_idle_energy_joules_total"] == pytest.approx(12.0)
    assert sums["greentrack_idle_seconds_total"] == pytest.approx(20.0)
    assert sums["greentrack_energy_joules_total"] == pytest.approx(30.0)


def test_levels_and_tokens_parse(tmp_path: Path) -> None:
    assert parse_levels("1:60, 4,16:60", 30.0) == [(1, 60.0), (4, 30.0), (16, 60.0)]
    with pytest.raises(ValueError):
        parse_levels("0", 30.0)
    path = tmp_path / "tokens.txt"
    path.write_text("# team\nalice@x\tgt_aaa\n\ngt_bbb\n", encoding="utf-8")
    assert read_tokens(path) == ["gt_aaa", "gt_bbb"]


def _log(key_s: float, *, sent: bool = True, server_s: float = 0.1, answered: bool = True, shown: bool = True,
         accepted: bool = False, error: str = "") -> RequestLog:
    log = RequestLog(0, f"id{key_s}", key_s, sent=sent, sent_s=key_s + 0.15, done_s=key_s + 0.15 + server_s,
                     answered=answered, cancelled=sent and not answered and not error, shown=shown, accepted=accepted,
                     error=error)
    return log


def test_a_level_summary_has_the_figures_of_the_issue() -> None:
    logs = [_log(0.0, server_s=0.1, accepted=True), _log(1.0, server_s=0.3),
            _log(2.0, sent=False, answered=False, shown=False), _log(3.0, answered=False, shown=False),
            _log(4.0, answered=False, shown=False, error="HTTP 429")]
    records = [{"total_j": 2.0, "completion_tokens": 4, "outcome": "shown", "method": "attributed"},
               {"total_j": 3.0, "completion_tokens": 6, "outcome": "shown", "method": "attributed"},
               {"total_j": 1.0, "completion_tokens": 1, "outcome": "cancelled", "method": "attributed"}]
    before = parse_prometheus(METRICS)
    after = dict(before, greentrack_idle_energy_joules_total=16.0, greentrack_idle_seconds_total=25.0)
    gpu = {"energy_j": 40.0, "utilization_mean_pct": 55.0, "power_mean_w": 200.0}
    s = summarize_level(3, 10.0, logs, records, metrics_before=before, metrics_after=after, gpu=gpu,
                        metrics_span_s=12.5)
    assert (s["keystrokes"], s["requests_sent"], s["answered"], s["shown"], s["accepted"]) == (5, 4, 2, 2, 1)
    assert (s["cancelled_sent"], s["errors"], s["error_examples"]) == (1, 1, ["HTTP 429"])
    assert s["latency_p50_ms"] == pytest.approx(350.0)  # debounce (150 ms) included
    assert s["server_p95_ms"] == pytest.approx(290.0)
    assert s["completions_per_s"] == pytest.approx(0.2)
    assert s["energy_j"] == pytest.approx(6.0)  # the cancelled request's energy is part of serving
    assert s["j_per_completion"] == pytest.approx(3.0) and s["j_per_completion_answered_only"] == pytest.approx(2.5)
    assert s["j_per_token"] == pytest.approx(6.0 / 11) and s["j_per_accepted"] == pytest.approx(6.0)
    assert s["idle_energy_j"] == pytest.approx(4.0) and s["idle_energy_share"] == pytest.approx(0.4)
    assert s["idle_time_share"] == pytest.approx(5.0 / 12.5)
    assert s["gross_j_per_completion"] == pytest.approx(20.0) and s["gpu_utilization_mean_pct"] == 55.0
    table = markdown_table([s])
    assert table.splitlines()[0].startswith("| N | p50 ms") and "| 3 | 350 |" in table


def test_a_level_without_answers_or_meters_has_no_figures() -> None:
    s = summarize_level(1, 30.0, [_log(0.0, sent=False, answered=False, shown=False)], [])
    assert s["latency_p50_ms"] is None and s["j_per_completion"] is None and s["idle_energy_share"] is None
    assert s["gpu_energy_j"] is None and "—" in markdown_table([s])


@pytest.mark.slow
def test_two_developers_type_against_a_real_server(tmp_path: Path) -> None:
    """bench/load.py end to end: tokens minted in the server's database, 2 developers for a few seconds."""
    server = Server(tmp_path / "serve.db").start()
    out = tmp_path / "load.json"
    try:
        run = subprocess.run(
            [sys.executable, "bench/load.py", "--server", server.url, "--mint-db", str(server.db), "--levels", "2:6",
             "--max-tokens", "4", "--budget", "line", "--record-wait", "5", "--out", str(out)],
            capture_output=True, text=True, timeout=240,
        )
    finally:
        server.terminate()
    assert run.returncode == 0, run.stderr[-3000:] + server.log()[-3000:]
    assert run.stdout.splitlines()[0].startswith("| N |")
    result = json.loads(out.read_text())
    assert result["settings"]["budget"] == "line" and result["settings"]["max_tokens"] == 4
    [level] = result["levels"]
    assert level["developers"] == 2 and level["keystrokes"] >= 20 and level["errors"] == 0
    assert level["requests_sent"] >= 1 and level["records"] >= 1 and level["energy_j"] > 0
    assert level["idle_energy_j"] is not None  # /metrics was read with the minted administrator token
    # where the answers' time went: the answer's greentrack times and the records' spans, per request and per level
    breakdown, rows = level["breakdown"], level["answered_requests"]
    assert breakdown["answered"] == level["answered"] == len(rows)
    assert breakdown["slowest_n"] == slowest_count(len(rows)) and (len(rows) == 0 or breakdown["slowest_n"] >= 1)
    assert set(breakdown["p95"]) == set(BREAKDOWN_COMPONENTS) == set(breakdown["slowest_mean"])
    assert breakdown["n"]["server_latency_ms"] == len(rows) and breakdown["n"]["prefill_ms"] == len(rows)
    for row in rows:
        assert row["server_latency_ms"] is not None and row["server_latency_ms"] <= row["server_ms"] + 1.0
        assert row["prefill_ms"] >= 0 and row["decode_ms"] >= 0 and row["queue_ms"] >= 0
        assert row["completion_tokens"] is not None and row["overhead_ms"] >= -1.0
    if rows:  # answered before the next keystroke (on a loaded machine every request may be superseded)
        assert breakdown["p95"]["server_ms"] == pytest.approx(level["server_p95_ms"], abs=0.1)
        assert breakdown["slowest_mean"]["server_ms"] >= breakdown["p50"]["server_ms"]
        assert isinstance(rows[0]["completion_tokens"], int) and rows[0]["completion_tokens"] >= 0
    assert "load: N=2: slowest 5 % (n=" in run.stderr and "| N | n | server ms | HTTP+client ms" in run.stdout
