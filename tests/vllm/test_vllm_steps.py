"""Engine steps recorded from inside vLLM (``engine.vllm_steps``) and the step ledger on the product path.

The pure parts (the scheduler hook's token split, its fallback) run everywhere. The rest runs the real CPU vLLM
engine: three developers' requests from threads through the ``Pipeline`` at once (batched by vLLM), with the
CPU-time estimate as the meter (no RAPL here: a real counter, read by the real sampler), a real SQLite store.
Checks: the step records' token counts match what each result reports, every request's figure is stored with the
per-step meter, and Σ stored requests + stored idle = the meter's delta over the ledger's window.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from greentrack.config import Settings
from greentrack.energy.step_attribution import RequestWork, StepRecord
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.engine.vllm_steps import StepRecorder, request_work, scheduler_of
from greentrack.pipeline import STEPS_METER_SUFFIX, Pipeline, RequestContext

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed: scripts/install-vllm.sh VENV"),
]


# -- the hook's arithmetic, without vLLM ----------------------------------------------------------------------

def req(prompt: int, computed_after: int, outputs: int = 0, placeholders: int = 0) -> Any:
    """A scheduler ``Request`` as read right after ``schedule`` (which advanced ``num_computed_tokens``)."""
    return SimpleNamespace(num_prompt_tokens=prompt, num_computed_tokens=computed_after,
                           num_tokens=prompt + outputs, num_output_placeholders=placeholders)


def test_request_work_splits_prompt_and_decode_tokens() -> None:
    # a whole prompt of 300, 128 of them from the prefix cache
    assert request_work(req(300, 300), 172) == request_work(req(300, 300), 172)
    w = request_work(req(300, 300), 172)
    assert (w.prefill_tokens, w.decode_tokens, w.context_tokens) == (172, 0, 128)
    # a chunk of a long prompt
    w = request_work(req(5000, 2048), 2048)
    assert (w.prefill_tokens, w.decode_tokens, w.context_tokens) == (2048, 0, 0)
    # a decode step: 7 tokens out, the 7th's KV computed now
    w = request_work(req(300, 307, outputs=7), 1)
    assert (w.prefill_tokens, w.decode_tokens, w.context_tokens) == (0, 1, 306)
    # async scheduling: one output still a placeholder
    w = request_work(req(300, 308, outputs=7, placeholders=1), 1)
    assert (w.prefill_tokens, w.decode_tokens) == (0, 1)
    # vLLM's AsyncScheduler, as read after ``schedule``: the batch in flight's placeholder and this batch's own,
    # which ``schedule`` added (vLLM 0.26 on the GPU); only the one from before counts as a known token
    w = request_work(req(300, 308, outputs=7, placeholders=2), 1, placeholders_before=1)
    assert (w.prefill_tokens, w.decode_tokens, w.context_tokens) == (0, 1, 307)
    assert request_work(req(300, 308, outputs=7, placeholders=2), 1).prefill_tokens == 1  # what it recorded
    # the prompt's last chunk under the AsyncScheduler (its sampled token's placeholder added by ``schedule``)
    w = request_work(req(300, 300, placeholders=1), 300, placeholders_before=0)
    assert (w.prefill_tokens, w.decode_tokens) == (300, 0)
    # recomputed after a preemption: prompt and known outputs are prefill-like, the last one decodes
    w = request_work(req(300, 310, outputs=10), 310)
    assert (w.prefill_tokens, w.decode_tokens, w.context_tokens) == (309, 1, 0)


def test_the_hook_falls_back_with_a_reason() -> None:
    engine_in_another_process = SimpleNamespace(engine_core=SimpleNamespace())  # an MP client has no engine_core
    scheduler, why = scheduler_of(engine_in_another_process)
    assert scheduler is None and "VLLM_ENABLE_V1_MULTIPROCESSING=0" in why
    recorder = StepRecorder()
    assert not recorder.install(engine_in_another_process) and recorder.reason == why
    odd = SimpleNamespace(engine_core=SimpleNamespace(engine_core=SimpleNamespace(scheduler=SimpleNamespace())))
    assert "schedule" in scheduler_of(odd)[1]


def test_the_hook_records_decode_under_the_async_scheduler() -> None:
    """vLLM's AsyncScheduler adds the batch's output placeholder inside ``schedule``: still a decode token."""
    request = req(300, 307, outputs=7, placeholders=1)  # decoding, one batch in flight

    class AsyncScheduler:
        def __init__(self) -> None:
            self.requests = {"a": request}

        def schedule(self) -> Any:
            request.num_computed_tokens += 1
            request.num_output_placeholders += 1
            return SimpleNamespace(num_scheduled_tokens={"a": 1})

        def update_from_output(self, so: Any, mo: Any) -> None:
            return None

    sched = AsyncScheduler()
    steps: list[StepRecord] = []
    sink = SimpleNamespace(engine_busy=lambda: 0.0, add_step=steps.append, request_done=lambda rid: None,
                           engine_idle=lambda since_s: None)
    rec = StepRecorder()
    assert rec.install(SimpleNamespace(engine_core=SimpleNamespace(engine_core=SimpleNamespace(scheduler=sched))))
    rec.attach(sink)
    rec.expect("a")
    rec.begin_step()
    sched.update_from_output(sched.schedule(), None)
    rec.end_step()
    assert len(steps) == 1 and steps[0].requests["a"] == RequestWork(prefill_tokens=0, decode_tokens=1,
                                                                     context_tokens=307)


def test_the_recorder_times_steps_and_reports_finished_requests_after_their_last_step() -> None:
    """A fake scheduler (the real one's interface) driven as ``EngineCore.step`` drives it."""
    requests = {"a#1-1234abcd": req(10, 0), "b#2-5678abcd": req(20, 0)}

    class Scheduler:
        def __init__(self) -> None:
            self.requests = requests

        def schedule(self) -> Any:
            out = SimpleNamespace(num_scheduled_tokens={"a#1-1234abcd": 10, "b#2-5678abcd": 20})
            for rid, n in out.num_scheduled_tokens.items():
                self.requests[rid].num_computed_tokens += n
            return out

        def update_from_output(self, so: Any, mo: Any) -> str:
            return "outputs"

    sched = Scheduler()
    engine = SimpleNamespace(engine_core=SimpleNamespace(engine_core=SimpleNamespace(scheduler=sched)))
    events: list[tuple[str, Any]] = []

    class Sink:
        def engine_busy(self, at_s: float | None = None) -> float:
            events.append(("busy", None))
            return 100.0

        def add_step(self, step: StepRecord) -> None:
            events.append(("step", step))

        def request_done(self, request_id: str) -> None:
            events.append(("done", request_id))

        def engine_idle(self, since_s: float) -> None:
            events.append(("idle", since_s))

    rec = StepRecorder()
    assert rec.install(engine)
    rec.attach(Sink())
    rec.expect("a#1")
    rec.expect("b#2")
    rec.begin_step()
    so = sched.schedule()
    assert sched.update_from_output(so, None) == "outputs"
    rec.request_finished("a#1")  # a ended in this step (its result is handled before end_step)
    rec.end_step()
    rec.idle()
    kinds = [k for k, _ in events]
    assert kinds == ["busy", "step", "done", "idle"]
    step = events[1][1]
    assert step.start_s == 100.0 and step.end_s > 100.0
    assert {k: (w.prefill_tokens, w.decode_tokens) for k, w in step.requests.items()} == {
        "a#1": (10, 0), "b#2": (20, 0)}  # vLLM 0.32's random suffix mapped back to our ids
    assert events[2][1] == "a#1" and events[3][1] == step.end_s


# -- the real engine through the pipeline ---------------------------------------------------------------------

SOURCE = '''"""Inventory helpers."""

from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int

    def total(self) -> float:
'''


class Tee:
    """Forwards the engine's step reports to the pipeline's ledger and keeps a copy (the test's view)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.steps: list[StepRecord] = []
        self.done: list[str] = []

    def engine_busy(self, at_s: float | None = None) -> float:
        t: float = self.ledger.engine_busy(at_s)
        return t

    def add_step(self, step: StepRecord) -> None:
        self.steps.append(step)
        self.ledger.add_step(step)

    def request_done(self, request_id: str) -> None:
        self.done.append(request_id)
        self.ledger.request_done(request_id)

    def engine_idle(self, since_s: float) -> None:
        self.ledger.engine_idle(since_s)


@pytest.fixture(scope="module")
def backend() -> Iterator[Any]:
    if not HAVE_VLLM:
        pytest.skip("vllm is not installed")
    from greentrack.engine.vllm_backend import VllmBackend

    b = VllmBackend()
    yield b
    # closed by the pipeline of the test that uses it (Pipeline.close closes its backend)
    b.close()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed: scripts/install-vllm.sh VENV")
def test_three_concurrent_developers_stored_and_summing_with_idle_to_the_meter(backend: Any, tmp_path: Path) -> None:
    from greentrack.energy.monitor import open_monitor
    from greentrack.store import Store

    settings = Settings(backend="vllm", db_path=tmp_path / "g.db", max_tokens=16)
    store = Store(settings.db_path)
    # the CPU-time estimate (continuous), read as the product reads it: around work only, else a heartbeat
    monitor = open_monitor("cpu", on_demand=True)
    pipeline = Pipeline(settings, backend, monitor, store)
    assert pipeline.batches and pipeline.ledger is not None
    pipeline.store_idle = True
    tee = Tee(pipeline.ledger)
    assert backend.attach_step_sink(tee) is None
    time.sleep(0.3)  # some idle before the requests

    texts = {f"dev{i}": f"# {uuid.uuid4().hex}\n" + SOURCE + "        return" + " " * i for i in range(3)}
    texts["dev2"] = f"# {uuid.uuid4().hex}\n" + SOURCE * 3 + "        return"  # a longer prompt
    results: dict[str, EngineResult] = {}
    start = threading.Barrier(3)

    def developer(dev: str) -> None:
        request = CompletionRequest(f"{dev}-{uuid.uuid4().hex[:6]}", f"file:///{dev}.py", texts[dev],
                                    len(texts[dev]), max_tokens=16, max_time_s=120.0)
        start.wait()
        result = pipeline.run(request, CancelToken())
        results[dev] = result
        pipeline.finalize(result, RequestContext(f"file:///{dev}.py", "python", result.started_s, developer=dev))

    threads = [threading.Thread(target=developer, args=(dev,)) for dev in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == set(texts)
    ledger = pipeline.ledger
    pipeline.close()  # flushes the ledger and stores the last idle window

    # the requests really shared steps
    assert any(len(s.requests) >= 2 for s in tee.steps)
    for dev, r in results.items():
        eid = str(r.extras["engine_request_id"])
        mine = [s.requests[eid] for s in tee.steps if eid in s.requests]
        assert mine, dev
        assert sum(w.prefill_tokens for w in mine) == r.prompt_tokens - r.reused_prompt_tokens
        assert sum(w.decode_tokens for w in mine) == r.completion_tokens - 1
        assert eid in tee.done
    # contiguous while busy, never overlapping
    for s0, s1 in zip(tee.steps, tee.steps[1:], strict=False):
        assert s0.end_s <= s1.start_s + 1e-9

    check = Store(settings.db_path)
    cols = ("developer", "total_j", "prefill_j", "decode_j", "method", "meter", "uncertainty_j")
    rows = {row[0]: dict(zip(cols, row, strict=True)) for row in check.conn.execute(
        f"SELECT {', '.join(cols)} FROM completions")}
    idle = [tuple(r) for r in check.conn.execute("SELECT energy_j, meter FROM idle_energy")]
    check.close()
    assert set(rows) == set(texts)
    for row in rows.values():
        assert row["meter"] == monitor.meter_name + STEPS_METER_SUFFIX and row["method"] == "estimated"
        assert row["total_j"] > 0 and row["prefill_j"] > 0 and row["uncertainty_j"] is not None
    assert idle and all(meter == monitor.meter_name + STEPS_METER_SUFFIX for _, meter in idle)
    stored_j = math.fsum(row["total_j"] for row in rows.values()) + math.fsum(e for e, _ in idle)

    totals = ledger.totals()
    # the meter's own delta over the ledger's window (the estimate is continuous, no lag: knots are reads)
    assert monitor.sampler is not None
    by_t = {s.t_s: s.energy_j for s in monitor.sampler.samples()}
    assert totals.start_s in by_t and totals.end_s in by_t
    meter_delta_j = by_t[totals.end_s] - by_t[totals.start_s]
    assert totals.window_j == pytest.approx(meter_delta_j, rel=1e-12)
    assert abs(stored_j - meter_delta_j) <= 1e-9 * meter_delta_j
    assert math.fsum(e for e, _ in idle) > 0  # the idle before, between and after is kept apart
