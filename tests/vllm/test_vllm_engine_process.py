"""The vLLM backend with its engine core in a process of its own (``greentrack serve --engine-process``).

The same real engine and model as ``test_vllm_engine.py``; the tests imported from there run again here against
this module's ``backend`` (pytest resolves fixtures where a test is collected). What differs: the steps are timed
and recorded in the engine process by ``vllm_step_scheduler`` and come back over ``vllm_step_channel``; the CPU-time
estimate counts that process's work. Skipped when vllm is not importable.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest
from tests.vllm.test_vllm_engine import (  # noqa: F401  (collected here again, against this module's backend)
    cancel_mid_decode,
    request,
    test_block_completion_after_a_def_with_token_healing,
    test_cancel_from_another_thread,
    test_completes_real_code,
    test_prefix_reuse_on_an_extended_request,
    test_two_overlapping_requests_are_attributed_by_step_with_conservation,
    unique_source,
)

from greentrack.engine.types import CancelToken

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")

if importlib.util.find_spec("vllm") is not None:
    from greentrack.engine.vllm_backend import VllmBackend


@pytest.fixture(scope="module")
def backend() -> Iterator[VllmBackend]:
    b = VllmBackend(engine_process=True)
    try:
        yield b
    finally:
        b.close()


def engine_processes() -> set[Any]:
    """vLLM's engine-core processes among this process's descendants (``psutil.Process``)."""
    import psutil

    return {c for c in psutil.Process(os.getpid()).children(recursive=True)
            if "EngineCore" in " ".join(c.cmdline()) or "EngineCore" in c.name()}


def test_the_engine_core_runs_in_another_process_and_sends_its_steps(backend: VllmBackend) -> None:
    assert backend.describe()["engine_process"] is True
    assert backend.describe()["step_records"] == "on"
    assert engine_processes()
    before = backend._thread.steps.steps
    r = backend.complete(request(unique_source() + "        return", max_tokens=8), CancelToken())
    assert r.completion_tokens >= 1
    # the records of the request's steps arrived from the engine process (prefill, then a decode step per token)
    assert backend._thread.steps.steps - before >= r.completion_tokens


def test_a_request_cancelled_mid_decode_is_charged_for_its_steps_and_conserved(backend: VllmBackend) -> None:
    """Cancelled by the server while the engine process runs ahead: every step it was in is its own, reported done
    by the engine process once no batch holds it, and requests + idle = the meter over the window."""

    from greentrack.energy.monitor import open_monitor
    from greentrack.energy.step_ledger import StepLedger

    monitor = open_monitor("cpu")
    ledger = StepLedger(monitor)
    assert backend.attach_step_sink(ledger) is None
    try:
        r, _ = cancel_mid_decode(backend)
        figure = ledger.request_energy(str(r.extras["engine_request_id"]), timeout_s=5.0)
        assert figure is not None and figure.extrapolated_j == 0.0
        assert figure.prefill_tokens == r.prompt_tokens - r.reused_prompt_tokens
        # the engine process may have run a step the server then cut short: charged, never fewer than shown
        assert figure.decode_tokens >= r.completion_tokens - 1
        assert figure.energy_j > 0
        ledger.flush()
        totals = ledger.totals()
        assert abs(totals.requests_j + totals.idle_j - totals.window_j) <= 1e-9 * max(1.0, totals.window_j)
    finally:
        backend.attach_step_sink(None)
        monitor.close()


def test_an_engine_process_that_dies_fails_requests_clearly_and_never_hangs() -> None:
    """The GPU or the engine process goes away (here: killed): the next request gets a clear error within seconds,
    later ones are refused at once, and closing the backend still returns."""
    import time

    import psutil

    from greentrack.errors import BadInput, GreentrackError

    others = engine_processes()  # the module's backend's: left alone, later tests use it
    own = VllmBackend(engine_process=True, warmup=False)
    try:
        engines = list(engine_processes() - others)
        assert engines
        for proc in engines:
            proc.kill()
        psutil.wait_procs(engines, timeout=30)
        t0 = time.monotonic()
        with pytest.raises(GreentrackError, match=r"vLLM engine stopped|vLLM failed") as failed:
            own.complete(request(unique_source() + "        return", max_tokens=8), CancelToken())
        assert not isinstance(failed.value, BadInput)  # the engine's fault, not the prompt's (HTTP 400)
        assert time.monotonic() - t0 < 30
        with pytest.raises(GreentrackError, match="stopped after an error"):
            own.complete(request(unique_source() + "        return", max_tokens=8), CancelToken())
    finally:
        t1 = time.monotonic()
        own.close()
        assert time.monotonic() - t1 < 60


def test_a_request_is_expected_before_the_engine_process_can_record_it(
    backend: VllmBackend, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM schedules a request as ``id-<8 random chars>``; the records of its steps come back over the step channel,
    which may deliver the first one before ``add_request`` returns in the server. The id must be expected by then
    (else its steps stay under vLLM's id and the request has none: seen on two H200s), so ``expect`` comes first."""
    calls: list[str] = []
    engine, steps = backend._thread.engine, backend._thread.steps
    add, expect = engine.add_request, steps.expect

    def adding(*args: Any, **kwargs: Any) -> Any:
        calls.append("add")
        return add(*args, **kwargs)

    def expecting(request_id: str) -> None:
        calls.append("expect")
        expect(request_id)

    monkeypatch.setattr(engine, "add_request", adding)
    monkeypatch.setattr(steps, "expect", expecting)
    r = backend.complete(request(unique_source() + "        return", max_tokens=4), CancelToken())
    assert r.completion_tokens >= 1
    assert calls[:2] == ["expect", "add"], calls
