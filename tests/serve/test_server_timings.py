"""``server_timings_ms``: the parts of a served request's time outside queue, prefill and decode, from the engine's
stamps (docs/interfaces.md, "HTTP API"); what a backend does not stamp is null, never 0."""

from __future__ import annotations

import pytest

from greentrack.energy.types import PhaseSpan
from greentrack.engine.types import EngineResult, Extras
from greentrack.serve.service import server_timings_ms


def _result(extras: Extras) -> EngineResult:
    spans = [PhaseSpan("r", "prefill", 10.020, 10.040, 30.0), PhaseSpan("r", "decode", 10.040, 10.100, 7.0)]
    return EngineResult("r", "x", 40, 10, 8, spans, 10.005, 10.110, extras=extras)


def test_vllm_stamps_split_the_rest_of_the_servers_time() -> None:
    r = _result({"arrival_s": 10.012, "last_token_s": 10.100})
    t = server_timings_ms(r, received_s=10.000, slot_wait_s=0.002, queued_s=10.001)
    assert t["before_engine"] == pytest.approx(3.0)  # received 10.000, slot free at 10.003, request opened 10.005
    # in two parts: received → queued at 10.001; the worker took it at 10.003 (2 ms later) → opened at 10.005
    assert t["to_scheduler"] == pytest.approx(1.0) and t["to_prompt"] == pytest.approx(2.0)
    assert t["admit"] == pytest.approx(7.0)  # opened → vLLM's arrival at 10.012
    assert t["after_decode"] == pytest.approx(10.0)  # last token 10.100 → result 10.110


def test_missing_stamps_are_null() -> None:
    t = server_timings_ms(_result({}), received_s=10.0, slot_wait_s=0.0)
    assert t["before_engine"] == pytest.approx(5.0) and t["admit"] is None and t["after_decode"] is None
    assert t["to_scheduler"] is None and t["to_prompt"] is None  # when the scheduler took it: not given
