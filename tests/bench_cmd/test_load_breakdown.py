"""The load benchmark's breakdown (``load_stats``): where an answered request's server time goes, on hand-made logs
whose percentiles and slowest-5 % means are worked out by hand below."""

from __future__ import annotations

from typing import Any

import pytest

from greentrack.bench.load_stats import (
    BREAKDOWN_COMPONENTS,
    RequestLog,
    attach_records,
    breakdown,
    breakdown_line,
    markdown_table,
    slowest_count,
    summarize_level,
)


def _answered(key_s: float, server_ms: float, green: dict[str, Any] | None = None, *, answered: bool = True,
              cid: str | None = None) -> RequestLog:
    """An answered request sent 150 ms after its keystroke, ``server_ms`` on the client's clock, the answer's
    ``greentrack`` object ``green`` (None: an old server that sends none)."""
    log = RequestLog(0, cid or f"id{key_s:g}", key_s, sent=True, sent_s=key_s + 0.15,
                     done_s=key_s + 0.15 + server_ms / 1000.0, answered=answered, cancelled=not answered,
                     shown=answered)
    log.take_answer(green)
    return log


def _green(latency: float, queue: float, prefill: float, decode: float, tokens: int, *,
           outcome: str | None = None) -> dict[str, Any]:
    """The times and tokens of a ``greentrack`` answer object, as ``serve.models.greentrack_object`` spells them."""
    return {"completion_id": "x", "prompt_tokens": 100, "reused_prompt_tokens": 40, "completion_tokens": tokens,
            "queue_ms": queue, "prefill_ms": prefill, "decode_ms": decode, "latency_ms": latency,
            "stop_reason": "max_tokens", "outcome": outcome, "energy_final": False, "total_j": None}


def test_one_request_adds_up_to_its_server_time() -> None:
    log = _answered(1.0, 100.0, _green(90.0, 10.0, 30.0, 40.0, 5))
    parts = log.components()
    assert set(parts) == set(BREAKDOWN_COMPONENTS)
    assert parts["server_ms"] == pytest.approx(100.0)
    assert parts["server_latency_ms"] == 90.0 and parts["overhead_ms"] == pytest.approx(10.0)
    assert parts["server_other_ms"] == pytest.approx(90.0 - 10.0 - 30.0 - 40.0)
    assert parts["decode_ms_per_token"] == pytest.approx(40.0 / 4)  # the first of 5 tokens is the prefill's
    assert (parts["prompt_tokens"], parts["reused_prompt_tokens"], parts["completion_tokens"]) == (100, 40, 5)
    total = sum(parts[name] or 0.0 for name in ("overhead_ms", "queue_ms", "prefill_ms", "decode_ms",
                                                "server_other_ms"))
    assert total == pytest.approx(parts["server_ms"])


def test_missing_figures_are_none_never_zero() -> None:
    old_server = _answered(1.0, 400.0, None).components()
    assert old_server["server_ms"] == pytest.approx(400.0)
    assert all(old_server[name] is None for name in BREAKDOWN_COMPONENTS if name != "server_ms")
    one_token = _answered(2.0, 50.0, _green(40.0, 0.0, 30.0, 0.0, 1)).components()
    assert one_token["decode_ms_per_token"] is None and one_token["decode_ms"] == 0.0
    cached = _answered(3.0, 20.0, _green(10.0, 0.0, 0.0, 0.0, 6, outcome="cached")).components()
    assert cached["decode_ms_per_token"] is None and cached["completion_tokens"] == 6
    null_latency = _answered(4.0, 20.0, dict(_green(10.0, 1.0, 2.0, 3.0, 4), latency_ms=None)).components()
    assert null_latency["overhead_ms"] is None and null_latency["server_other_ms"] is None
    assert null_latency["queue_ms"] == 1.0


def test_the_record_adds_what_the_answer_lacked_and_is_joined_by_id() -> None:
    fetched = _answered(1.0, 100.0, {"queue_ms": 5.0, "latency_ms": 90.0}, cid="a")  # an answer without spans
    partial = _answered(2.0, 100.0, _green(90.0, 5.0, 30.0, 40.0, 5), cid="b")
    unfetched = _answered(3.0, 100.0, _green(90.0, 5.0, 30.0, 40.0, 5), cid="c")
    records = [
        {"completion_id": "a", "prompt_tokens": 120, "reused_prompt_tokens": 0, "completion_tokens": 8,
         "prefill_ms": 33.0, "decode_ms": 49.0, "latency_ms": 90.0, "outcome": "shown"},
        {"completion_id": "b", "prefill_ms": 31.0, "decode_ms": None},  # a figure the record lacks keeps the answer's
        {"completion_id": "zzz", "prefill_ms": 1.0},  # not one of these requests
    ]
    assert attach_records([fetched, partial, unfetched], records) == 2
    assert (fetched.queue_ms, fetched.server_latency_ms) == (5.0, 90.0)
    assert (fetched.prefill_ms, fetched.decode_ms, fetched.completion_tokens) == (33.0, 49.0, 8)
    assert fetched.components()["decode_ms_per_token"] == pytest.approx(7.0)
    assert (partial.prefill_ms, partial.decode_ms) == (31.0, 40.0)
    assert (unfetched.prefill_ms, unfetched.decode_ms) == (30.0, 40.0)


def test_slowest_five_percent_is_at_least_one_request() -> None:
    assert [slowest_count(n) for n in (0, 1, 19, 20, 21, 40, 41, 60, 100)] == [0, 1, 1, 1, 2, 2, 3, 3, 5]


def test_percentiles_leave_missing_values_out() -> None:
    logs = [_answered(0.0, 100.0, _green(90.0, 10.0, 30.0, 40.0, 5)),      # overhead 10, other 10, 10 ms/token
            _answered(1.0, 200.0, _green(185.0, 50.0, 60.0, 60.0, 4)),     # overhead 15, other 15, 20 ms/token
            _answered(2.0, 300.0, _green(290.0, 100.0, 80.0, 100.0, 3)),   # overhead 10, other 10, 50 ms/token
            _answered(3.0, 400.0, None),                                   # an old server: only server_ms
            _answered(4.0, 50.0, _green(40.0, 0.0, 0.0, 0.0, 6, outcome="cached"))]  # overhead 10, other 40
    cancelled = _answered(5.0, 900.0, _green(880.0, 800.0, 1.0, 1.0, 2), answered=False)
    b = breakdown([log for log in [*logs, cancelled] if log.answered])
    assert (b["answered"], b["slowest_pct"], b["slowest_n"]) == (5, 5, 1)
    # server_ms 50, 100, 200, 300, 400: p95 at rank 4 × 0.95 = 3.8 → 300 + 0.8 × 100
    assert b["p50"]["server_ms"] == pytest.approx(200.0) and b["p95"]["server_ms"] == pytest.approx(380.0)
    # latency 40, 90, 185, 290 (the old server's left out, not 0): p50 (90 + 185) / 2, p95 rank 2.85
    assert b["n"]["server_latency_ms"] == 4
    assert b["p50"]["server_latency_ms"] == pytest.approx(137.5)
    assert b["p95"]["server_latency_ms"] == pytest.approx(185.0 + 0.85 * 105.0)
    assert b["p50"]["overhead_ms"] == pytest.approx(10.0) and b["p95"]["overhead_ms"] == pytest.approx(14.25)
    assert b["p50"]["queue_ms"] == pytest.approx(30.0)
    assert b["p50"]["server_other_ms"] == pytest.approx(12.5)
    assert b["p50"]["completion_tokens"] == pytest.approx(4.5)
    # ms per token 10, 20, 50 (the cache hit left out): p95 rank 1.9 → 20 + 0.9 × 30
    assert b["n"]["decode_ms_per_token"] == 3
    assert b["p50"]["decode_ms_per_token"] == pytest.approx(20.0)
    assert b["p95"]["decode_ms_per_token"] == pytest.approx(47.0)
    # the slowest one is the old server's 400 ms: nothing else to average, and nothing counted as 0
    assert b["slowest_min_server_ms"] == pytest.approx(400.0) and b["slowest_mean"]["server_ms"] == pytest.approx(400.0)
    assert all(b["slowest_mean"][name] is None for name in BREAKDOWN_COMPONENTS if name != "server_ms")


def test_the_slowest_requests_means_add_up_to_their_server_time() -> None:
    fast = [_answered(float(i), 100.0, _green(90.0, 5.0, 20.0, 60.0, 7)) for i in range(38)]
    slow = [_answered(100.0, 500.0, _green(480.0, 300.0, 40.0, 120.0, 7)),  # overhead 20, other 20, 20 ms/token
            _answered(101.0, 400.0, _green(390.0, 200.0, 50.0, 110.0, 5)),  # overhead 10, other 30, 27.5 ms/token
            _answered(102.0, 450.0, None)]                                 # no figures: left out of the means
    b = breakdown([*fast, *slow])
    assert (b["answered"], b["slowest_n"]) == (41, 3) and b["slowest_min_server_ms"] == pytest.approx(400.0)
    mean = b["slowest_mean"]
    assert mean["server_ms"] == pytest.approx(450.0)  # all three
    assert mean["server_latency_ms"] == pytest.approx(435.0)  # two
    assert mean["overhead_ms"] == pytest.approx(15.0) and mean["queue_ms"] == pytest.approx(250.0)
    assert mean["prefill_ms"] == pytest.approx(45.0) and mean["decode_ms"] == pytest.approx(115.0)
    assert mean["server_other_ms"] == pytest.approx(25.0) and mean["completion_tokens"] == pytest.approx(6.0)
    assert mean["decode_ms_per_token"] == pytest.approx(23.75)
    assert mean["prompt_tokens"] == pytest.approx(100.0) and mean["reused_prompt_tokens"] == pytest.approx(40.0)
    # "server time = overhead + queue + prefill + decode + other" reads off the means (the third is the two's mean)
    parts = ("overhead_ms", "queue_ms", "prefill_ms", "decode_ms", "server_other_ms")
    assert sum(mean[name] for name in parts) == pytest.approx(mean["server_ms"])
    assert b["p50"]["queue_ms"] == pytest.approx(5.0) and b["n"]["queue_ms"] == 40


def test_a_level_carries_the_breakdown_its_requests_and_a_second_table() -> None:
    logs = [_answered(10.0, 100.0, _green(90.0, 10.0, 30.0, 40.0, 5), cid="a"),
            _answered(11.0, 300.0, _green(290.0, 100.0, 80.0, 100.0, 3), cid="b"),
            _answered(12.0, 900.0, _green(880.0, 800.0, 1.0, 1.0, 2), answered=False, cid="c")]
    s = summarize_level(4, 10.0, logs, [])
    assert s["breakdown"]["answered"] == 2 and s["breakdown"]["slowest_mean"]["queue_ms"] == pytest.approx(100.0)
    assert s["breakdown"]["p95"]["server_ms"] == pytest.approx(s["server_p95_ms"], abs=0.05)
    rows = s["answered_requests"]
    assert [row["completion_id"] for row in rows] == ["a", "b"]
    assert rows[1]["sent_at_s"] == pytest.approx(1.15) and rows[1]["overhead_ms"] == pytest.approx(10.0)
    assert rows[1]["cached"] is False and rows[1]["decode_ms_per_token"] == pytest.approx(50.0)
    table = markdown_table([s])
    assert table.splitlines()[0].startswith("| N | p50 ms")
    assert "| N | n | server ms | HTTP+client ms | queue ms | prefill ms | decode ms | other ms |" in table
    assert "| 4 | 1 | 300 | 10 | 100 | 80 | 100 | 10 | 3 | 50 |" in table
    line = breakdown_line(s)
    assert line.startswith("slowest 5 % (n=1): server 300 ms = HTTP+client 10 + queue 100 + prefill 80 + decode 100")
    assert "decode p50 30.00 ms/token" in line
    # this server stamped none
    assert "other 10 ms (to the engine —: scheduler — + prompt —; admit —, after decode —)" in line


def test_a_level_without_answers_has_an_empty_breakdown() -> None:
    s = summarize_level(1, 30.0, [RequestLog(0, "x", 0.0)], [])
    assert (s["breakdown"]["answered"], s["breakdown"]["slowest_n"], s["answered_requests"]) == (0, 0, [])
    assert all(value is None for value in s["breakdown"]["p95"].values())
    assert "slowest 5 % (n=0): server — ms" in breakdown_line(s) and "| 1 | 0 | — |" in markdown_table([s])


def test_the_servers_own_timings_split_its_other_time() -> None:
    log = RequestLog(0, "t", 0.0, sent=True, sent_s=0.15, done_s=0.30, answered=True)
    log.take_answer({"latency_ms": 140.0, "queue_ms": 1.0, "prefill_ms": 20.0, "decode_ms": 80.0,
                     "server_timings_ms": {"before_engine": 12.0, "admit": 4.0, "after_decode": None}})
    parts = log.components()
    assert parts["server_other_ms"] == pytest.approx(39.0)
    assert (parts["before_engine_ms"], parts["admit_ms"], parts["after_decode_ms"]) == (12.0, 4.0, None)
    old_server = RequestLog(0, "u", 0.0, sent=True, sent_s=0.15, done_s=0.30, answered=True)
    old_server.take_answer({"latency_ms": 140.0, "queue_ms": 1.0, "prefill_ms": 20.0, "decode_ms": 80.0})
    assert old_server.components()["admit_ms"] is None  # an older server: not counted as 0
