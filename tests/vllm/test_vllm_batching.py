"""Batch attribution and span building of the vLLM backend, on synthetic traces (no vllm needed).

A continuous counter at a known power and hand-made engine steps: the expected shares are computed by hand.
"""

from __future__ import annotations

import math

import pytest

from greentrack.energy.attribution import MeterInfo
from greentrack.energy.batching import BATCH_NOTE, attribute_batch, attribution_spans
from greentrack.energy.types import CounterSample, PhaseSpan
from greentrack.engine.types import EngineResult
from greentrack.engine.vllm_metrics import RequestStats, phase_spans, wall_to_monotonic
from greentrack.engine.vllm_setup import cpu_list, default_vllm_env

POWER_W = 20.0
METER = MeterInfo(name="test:constant", method="attributed", max_power_w=100.0)


def trace(t0: float, t1: float, period_s: float = 0.01) -> list[CounterSample]:
    n = round((t1 - t0) / period_s)
    return [CounterSample(t0 + i * period_s, POWER_W * i * period_s) for i in range(n + 1)]


def result(rid: str, prefill: tuple[float, float, float], steps: list[tuple[float, float]]) -> EngineResult:
    """A request: prefill (start, end, tokens), then one decode step span per (start, end), 1 token each."""
    spans = [PhaseSpan(rid, "prefill", prefill[0], prefill[1], prefill[2])]
    step_spans = [PhaseSpan(rid, "decode", a, b, 1.0) for a, b in steps]
    if steps:
        spans.append(PhaseSpan(rid, "decode", prefill[1], steps[-1][1], float(len(steps))))
    return EngineResult(rid, "x", int(prefill[2]), 0, len(steps) + 1, spans, prefill[0], spans[-1].end_s,
                        extras={"step_spans": step_spans})


def test_one_request_gets_its_time_share_and_energy_is_conserved() -> None:
    a = result("a", (1.0, 1.2, 100), [(1.2, 1.3), (1.3, 1.4)])
    out = attribute_batch([a], trace(0.9, 1.6), METER, update_period_s=0.0)
    assert BATCH_NOTE not in out.notes
    assert out.phase("a", "prefill").energy_j == pytest.approx(POWER_W * 0.2, rel=1e-6)  # type: ignore[union-attr]
    assert out.phase("a", "decode").energy_j == pytest.approx(POWER_W * 0.2, rel=1e-6)  # type: ignore[union-attr]
    assert out.conservation_error_j < 1e-9
    assert out.window_j == pytest.approx(POWER_W * 0.4, rel=1e-6)  # the window ends at the knots around it
    assert out.unattributed_j == pytest.approx(0.0, abs=1e-9)


def test_batched_step_is_shared_by_tokens() -> None:
    # a decodes steps of 0.1 s; b's 300-token prefill is batched with a's step 1.3–1.4.
    a = result("a", (1.0, 1.2, 100), [(1.2, 1.3), (1.3, 1.4), (1.4, 1.5)])
    b = result("b", (1.3, 1.4, 300), [(1.4, 1.5)])
    out = attribute_batch([a, b], trace(0.9, 1.6), METER, update_period_s=0.0)
    step_j = POWER_W * 0.1
    # The 1.3–1.4 step: a made 1 token, b 300 → b gets 300/301 of it; 1.4–1.5: one token each.
    assert out.phase("b", "prefill").energy_j == pytest.approx(step_j * 300 / 301, rel=1e-6)  # type: ignore[union-attr]
    assert out.phase("b", "decode").energy_j == pytest.approx(step_j / 2, rel=1e-6)  # type: ignore[union-attr]
    a_decode = step_j + step_j / 301 + step_j / 2
    assert out.phase("a", "decode").energy_j == pytest.approx(a_decode, rel=1e-6)  # type: ignore[union-attr]
    assert out.total_j + out.unattributed_j == pytest.approx(out.window_j + out.extrapolated_j, abs=1e-9)
    assert out.request_j("a") + out.request_j("b") == pytest.approx(POWER_W * 0.5, rel=1e-6)
    assert BATCH_NOTE in out.notes  # batched figures say how they were split
    for phases in out.energy.values():
        for p in phases:
            assert p.method == "attributed" and p.meter == "test:constant"
            assert p.uncertainty_j is not None and p.uncertainty_j >= 0


def test_without_step_spans_the_whole_decode_span_is_used() -> None:
    a = result("a", (1.0, 1.2, 100), [(1.2, 1.3), (1.3, 1.4)])
    del a.extras["step_spans"]
    spans = attribution_spans(a)
    assert [(s.kind, s.start_s, s.end_s) for s in spans] == [("prefill", 1.0, 1.2), ("decode", 1.2, 1.4)]
    out = attribute_batch([a], trace(0.9, 1.6), METER, update_period_s=0.0)
    assert out.conservation_error_j < 1e-9


def test_duplicate_ids_are_refused() -> None:
    a = result("a", (1.0, 1.2, 100), [])
    with pytest.raises(ValueError):
        attribute_batch([a, a], trace(0.9, 1.6), METER, update_period_s=0.0)


def test_phase_spans_from_request_metrics() -> None:
    st = RequestStats(arrival_wall_s=0.0, queued_s=9.9, scheduled_s=10.0, first_token_s=10.5, last_token_s=11.0)
    spans = phase_spans("r", st, prompt_tokens=1000, cached_tokens=896, completion_tokens=6)
    assert [(s.kind, s.start_s, s.end_s, s.work) for s in spans] == [
        ("prefill", 10.0, 10.5, 104.0), ("decode", 10.5, 11.0, 5.0)]
    # one token only: no decode span
    one = RequestStats(0.0, 9.9, 10.0, 10.5, 10.5)
    assert [s.kind for s in phase_spans("r", one, 10, 0, 1)] == ["prefill"]
    # aborted in the middle of a (chunked) prefill: the prefill runs to the abort
    mid = RequestStats(0.0, 9.9, 10.0, 0.0, 0.0)
    assert [(s.kind, s.end_s) for s in phase_spans("r", mid, 10, 0, 0, aborted_s=10.2)] == [("prefill", 10.2)]
    # never scheduled: nothing ran
    assert phase_spans("r", RequestStats(), 10, 0, 0, aborted_s=10.2) == []
    # a fully cached prompt still computes one token
    assert phase_spans("r", st, 64, 64, 1)[0].work == 1.0


def test_thread_defaults_leave_a_core_free(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("GREENTRACK_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    env = default_vllm_env()
    assert (env["OMP_NUM_THREADS"], env["VLLM_CPU_OMP_THREADS_BIND"]) == ("1", "0")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 4, 5, 8})
    env = default_vllm_env()
    assert (env["OMP_NUM_THREADS"], env["VLLM_CPU_OMP_THREADS_BIND"]) == ("4", "2-5")
    monkeypatch.setenv("GREENTRACK_THREADS", "3")
    assert default_vllm_env()["VLLM_CPU_OMP_THREADS_BIND"] == "2-4"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what OpenMP will use anyway: the bind list follows it
    assert default_vllm_env()["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"


def test_clock_conversion_and_environment() -> None:
    import time

    assert wall_to_monotonic(time.time()) == pytest.approx(time.monotonic(), abs=0.01)
    assert cpu_list([0, 1]) == "0-1"
    assert cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    env = default_vllm_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # stdout is the language server's channel
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert not math.isnan(float(env["OMP_NUM_THREADS"]))
