"""The step ledger on the product path for a request that ends before its first token (real CPU vLLM engine).

A prompt longer than vLLM's per-step token budget is prefilled in chunks, one engine step each; vLLM reports
nothing for a request until its prompt is done, so a request cancelled (or out of time) between two chunks has no
phase span of its own. The step ledger did record the chunks' steps: their energy must reach the request's stored
record (``Pipeline._phase_energy`` asks the ledger whenever it has steps of the request), else it is counted in
neither the completions nor the idle energy and Σ stored ≠ the meter. Real engine, real CPU-time estimate read by
the real sampler, real SQLite store.
"""

from __future__ import annotations

import importlib.util
import math
import uuid
from pathlib import Path

import pytest
from tests.vllm.support import StepCancel

from greentrack.config import Settings
from greentrack.engine.types import CompletionRequest
from greentrack.pipeline import STEPS_METER_SUFFIX, Pipeline, RequestContext

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

#: vLLM's per-step token budget here: a ~760-token prompt takes 6 chunked-prefill steps.
CHUNK_TOKENS = 128


def test_a_request_cancelled_during_its_chunked_prefill_is_stored_with_its_steps(tmp_path: Path) -> None:
    from greentrack.energy.monitor import open_monitor
    from greentrack.engine.vllm_backend import VllmBackend
    from greentrack.store import Store

    settings = Settings(backend="vllm", db_path=tmp_path / "g.db", max_tokens=4)
    backend = VllmBackend(engine_kwargs={"max_num_batched_tokens": CHUNK_TOKENS, "max_num_seqs": 4})
    monitor = open_monitor("cpu", on_demand=True)
    pipeline = Pipeline(settings, backend, monitor, Store(settings.db_path))
    ledger = pipeline.ledger
    assert ledger is not None
    pipeline.store_idle = True
    try:
        lines = "\n".join(f"X{i} = {i}" for i in range(120))
        text = f"# {uuid.uuid4().hex}\n{lines}\ndef total(self):\n    return"
        request = CompletionRequest("chunked", "file:///chunked.py", text, len(text), max_tokens=4, max_time_s=60.0)
        result = pipeline.run(request, StepCancel(4))  # two engine steps (prompt chunks) run
        engine_id = str(result.extras["engine_request_id"])
        # cancelled between two prompt chunks: no token, and vLLM gave it no timestamps, so no span of its own
        assert result.cancelled and result.completion_tokens == 0 and result.spans == []
        assert result.prompt_tokens > 3 * CHUNK_TOKENS
        assert ledger.has_steps(engine_id)
        record = pipeline.finalize(result, RequestContext("file:///chunked.py", "python", result.started_s))
    finally:
        pipeline.close()  # flushes the ledger, stores the last idle window, closes the backend

    assert record.outcome == "cancelled" and record.meter == monitor.meter_name + STEPS_METER_SUFFIX
    assert record.steps == 2 and record.batched_steps == 0
    assert record.prefill_j > 0 and record.decode_j == 0 and record.total_j == record.prefill_j
    assert not ledger.has_steps(engine_id)  # the figure was taken

    check = Store(settings.db_path)
    rows = [tuple(r) for r in check.conn.execute("SELECT total_j, meter, steps FROM completions")]
    idle_j = math.fsum(r[0] for r in check.conn.execute("SELECT energy_j FROM idle_energy"))
    check.close()
    assert rows == [(record.total_j, record.meter, 2)]
    totals = ledger.totals()
    assert abs(totals.requests_j + totals.idle_j - totals.window_j) <= 1e-9 * totals.window_j
    stored_j = record.total_j + idle_j
    assert abs(stored_j - totals.window_j) <= 1e-9 * totals.window_j, (stored_j, totals)
