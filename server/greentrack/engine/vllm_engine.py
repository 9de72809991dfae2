"""The vLLM backend's engine thread: one thread owns vLLM's ``LLMEngine`` and runs every request through it.

Flow: ``VllmBackend`` prepares a ``Job`` per request in the caller's thread (its ``GenerationState``, prompt
ids and ``SamplingParams``) and ``submit``s it. The thread adds waiting jobs to the engine, checks every
active job's ``CancelToken`` and time budget before each step (``abort_request`` when spent: a cancelled
request stops within one step), calls ``step()``, and hands each request's cumulative output to its state:
heal text, stop rules (aborting the request when one fires), one decode span per engine step. A finished job
gets its ``EngineResult`` (phase spans from vLLM's metrics, ``vllm_metrics.phase_spans``) and wakes its caller.
Around every step the thread tells its ``vllm_steps.StepRecorder`` (hooked into vLLM's scheduler) when the step
ran and which requests ended, so that the energy ledger learns which requests each step served. Under async
scheduling (a batch queue) a batch is still in flight when the last request stops (its next decode step, queued
before the stop was seen): the thread steps on until it is collected and recorded as that request's, then reports
the engine idle (``_collecting``).

The engine is built on this thread too: vLLM-CPU binds the building thread's OpenMP threads
(``VLLM_CPU_OMP_THREADS_BIND``) and its attention kernels check that the stepping thread has the same OpenMP
thread count (built on one thread and stepped on another, it failed once another library had changed the
caller's torch threads: "Check failed: input->metadata->thread_num == thread_num").
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from greentrack.engine.generation import NO_TOKEN_BUDGET, GenerationState
from greentrack.engine.types import CancelToken, EngineResult, StopReason
from greentrack.engine.vllm_metrics import RequestStats, phase_spans, wall_to_monotonic
from greentrack.engine.vllm_setup import VllmModules, build_engine
from greentrack.engine.vllm_step_channel import RemoteStepRecorder, StepChannel
from greentrack.engine.vllm_steps import StepRecorder
from greentrack.errors import BadInput, GreentrackError

log = logging.getLogger(__name__)

#: The most engine steps run with no request left to collect batches in flight: a batch queue holds at most 2 on
#: one GPU (the last request's batch, then an empty one that tells the workers which requests finished).
COLLECT_STEPS = 4


@dataclass
class Job:
    """One request in the engine, from ``submit`` to its result. ``engine_id`` is unique per submission."""

    state: GenerationState
    cancel: CancelToken
    engine_id: str
    prompt_ids: list[int]
    params: Any  # vllm.SamplingParams
    fim: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    added: bool = False
    stats: RequestStats = field(default_factory=RequestStats)
    result: EngineResult | None = None
    error: BaseException | None = None


class EngineThread:
    """Builds the engine from ``engine_args`` on its own thread, then serves submitted jobs until ``close``.

    When building failed, ``build_error`` holds why (and the thread has ended); ``fatal`` holds the error that
    stopped a running engine. ``engine_process``: vLLM's engine core runs in a process of its own, which sends the
    step records over a ``StepChannel`` (``RemoteStepRecorder``); ``step()`` then waits for that process's outputs
    while it schedules and runs the model with a GIL of its own. ``process_env``: more environment for that process
    (a replica's ``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(self, vl: VllmModules, engine_args: Any, *, engine_process: bool = False,
                 process_env: Mapping[str, str] | None = None) -> None:
        self._vllm = vl
        self._submit: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self.closed = False
        self.fatal: BaseException | None = None
        self.build_error: BaseException | None = None
        self.engine: Any = None
        self._last_step_end_s: float | None = None
        #: Engine steps run with no request active, to collect batches still in flight (``_collecting``); always 0
        #: without async scheduling.
        self.collect_steps = 0
        self._collect_run = 0  # such steps since the last request left
        #: Which requests each engine step served (``vllm_steps``); ``steps.installed`` False where vLLM does not
        #: allow it (``steps.reason`` says why).
        if process_env and not engine_process:
            raise ValueError("an environment for the engine process needs engine_process")
        self._process_env = dict(process_env or {})
        self._channel = StepChannel() if engine_process else None
        self.steps: StepRecorder = RemoteStepRecorder(self._channel) if self._channel is not None else StepRecorder()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(engine_args, ready), name="greentrack-vllm",
                                        daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` for the next engine step (together: they are admitted to the same step)."""
        with self._wake:
            if self.closed:
                raise GreentrackError("the vllm backend is closed")
            for job in jobs:
                self._submit.put(job)
            self._wake.notify_all()

    def close(self) -> None:
        """Abort what runs, stop the thread, shut the engine down."""
        with self._wake:
            if self.closed:
                return
            self.closed = True
            self._wake.notify_all()
        self._thread.join(timeout=30)
        self.steps.close()  # before the engine process goes: its closing records are expected
        core = getattr(self.engine, "engine_core", None)
        if core is not None:
            try:
                core.shutdown()
            except Exception as e:  # pragma: no cover - best effort at exit
                log.debug("vLLM shutdown: %s", e)
        self.engine = None

    # -- the thread ---------------------------------------------------------------------------------------

    def _run(self, args: Any, ready: threading.Event) -> None:
        try:
            own_env = None if self._channel is None else {**self._channel.env, **self._process_env}
            self.engine = build_engine(self._vllm, args, own_env)
            if not self.steps.install(self.engine):
                log.warning("engine steps are not recorded (%s): batched requests cannot be attributed by step",
                            self.steps.reason)
        except BaseException as e:
            self.build_error = e
            self.steps.close()
            return
        finally:
            ready.set()
        self._loop()

    def _loop(self) -> None:
        active: dict[str, Job] = {}
        try:
            while True:
                with self._wake:
                    while not self.closed and not active and self._submit.empty() and not self.steps.in_flight():
                        self._wake.wait()
                    closed = self.closed
                if closed:
                    break
                self._admit(active)
                self._check_budgets(active)
                if not active and not self._collecting():
                    self._last_step_end_s = None
                    self.steps.idle()
                    continue
                self._step(active)
                if not active and not self._collecting():
                    self.steps.idle()
        except BaseException as e:
            self.fatal = e
            log.exception("vLLM engine thread failed")
            for job in active.values():
                job.error = e
                job.done.set()
            active.clear()
        finally:
            for job in active.values():
                self._abort(job, "cancelled")
            while not self._submit.empty():
                job = self._submit.get_nowait()
                job.error = GreentrackError("the vllm backend was closed")
                job.done.set()

    def _step(self, active: dict[str, Job]) -> None:
        """One ``engine.step()``, recorded, its outputs handed to ``active``'s jobs (none: collecting)."""
        if active:
            self._collect_run = 0
        else:
            self._collect_run += 1
            self.collect_steps += 1
        self.steps.begin_step()
        outputs = self.engine.step()
        self._handle(outputs, active)
        self.steps.end_step()

    def _collecting(self) -> bool:
        """No request is active: True while batches the engine scheduled earlier are still in flight (async
        scheduling: the last request's next decode step was queued before its stop was seen). Their GPU work is
        that request's, so the thread steps to collect and record them, ``COLLECT_STEPS`` at most, before ``idle``;
        without a batch queue nothing is ever in flight between steps."""
        in_flight = self.steps.in_flight()
        if in_flight and self._collect_run >= COLLECT_STEPS:
            log.warning("%d engine batches still in flight after %d steps with no request: their time is idle",
                        in_flight, self._collect_run)
            in_flight = 0
        if not in_flight:
            self._collect_run = 0
        return in_flight > 0

    def _admit(self, active: dict[str, Job]) -> None:
        while not self._submit.empty():
            job = self._submit.get_nowait()
            # expected before it is added: an engine process can send its first step's record before add_request
            # returns, and a record of an id not expected keeps vLLM's suffixed id (the request then has no steps:
            # 3 of 1 494 requests with two replicas on two H200s, docs/benchmarks.md 2026-11-27)
            self.steps.expect(job.engine_id)
            try:
                self.engine.add_request(job.engine_id, self._engine_input(job.prompt_ids), job.params)
            except Exception as e:
                self.steps.withdraw(job.engine_id)
                if type(e).__name__ == "EngineDeadError":  # the engine (its process, its GPU) is gone: not the prompt
                    job.error = GreentrackError(f"the vLLM engine stopped: {e}")
                    job.done.set()
                    raise
                job.error = BadInput(f"vLLM refused the prompt ({len(job.prompt_ids)} tokens): {e}")
                job.done.set()
                continue
            job.added = True
            job.state.begin_budget(time.monotonic())
            active[job.engine_id] = job

    def _engine_input(self, ids: list[int]) -> Any:
        """Token ids as vLLM 0.32 wants them (``Renderer.render_cmpl``; a raw ``TokensPrompt`` is deprecated)."""
        prompt = {"prompt_token_ids": ids}
        renderer = getattr(self.engine, "renderer", None)
        render = getattr(renderer, "render_cmpl", None)
        if render is None:  # pragma: no cover - older vLLM
            return prompt
        return render([prompt])[0]

    def _check_budgets(self, active: dict[str, Job]) -> None:
        now = time.monotonic()
        for job in list(active.values()):
            if job.cancel.cancelled:
                self._abort(job, "cancelled")
            else:
                # the token budget is the engine's (SamplingParams.max_tokens); time is checked here
                reason = job.state.budget_reason(now, max_tokens=NO_TOKEN_BUDGET)
                if reason is None:
                    continue
                self._abort(job, reason)
            del active[job.engine_id]

    def _abort(self, job: Job, reason: StopReason) -> None:
        if job.added:
            self.engine.abort_request([job.engine_id])
        self._finish(job, reason, ended_s=time.monotonic())

    def _handle(self, outputs: Sequence[Any], active: dict[str, Job]) -> None:
        now = time.monotonic()
        step_end: float | None = None
        for out in outputs:
            stats = RequestStats.of(getattr(out, "metrics", None))
            if stats.last_token_s:
                step_end = stats.last_token_s if step_end is None else max(step_end, stats.last_token_s)
        if step_end is None:
            step_end = now  # a step with no outputs (a chunk of a long prefill): same clock in process
        prev_end = self._last_step_end_s
        for out in outputs:
            job = active.get(str(out.request_id))
            if job is None:
                continue
            state = job.state
            completion = out.outputs[0] if out.outputs else None
            new_tokens = (len(completion.token_ids) if completion is not None else 0) - state.completion_tokens
            was_prefilling = state.completion_tokens == 0
            raw = completion.text if completion is not None else ""
            heal = state.heal_text
            healing = bool(heal) and heal.startswith(raw) and raw != heal
            state.update(raw, state.completion_tokens + max(new_tokens, 0))
            state.reused_prompt_tokens = int(getattr(out, "num_cached_tokens", 0) or 0)
            job.stats = RequestStats.of(getattr(out, "metrics", None))
            if not was_prefilling and new_tokens > 0 and prev_end is not None:
                state.record_step(prev_end, job.stats.last_token_s or step_end, float(new_tokens))
            decision = state.stop_rule(healing=healing)
            if decision is not None:
                if not out.finished:
                    self.engine.abort_request([job.engine_id])
                self._finish(job, decision.reason, ended_s=now)
                del active[job.engine_id]
            elif out.finished:
                reason: StopReason = "max_tokens" if getattr(completion, "finish_reason", "") == "length" else "eos"
                self._finish(job, reason, ended_s=now)
                del active[job.engine_id]
        self._last_step_end_s = step_end

    def _finish(self, job: Job, reason: StopReason, *, ended_s: float) -> None:
        if job.done.is_set():
            return
        if job.added:
            self.steps.request_finished(job.engine_id)
        state, st = job.state, job.stats
        state.spans = phase_spans(state.request_id, st, len(job.prompt_ids), state.reused_prompt_tokens,
                                  state.completion_tokens, None if st.first_token_s else ended_s)
        job.result = state.result(reason, ended_s=ended_s, extras={
            "backend": "vllm",
            "vllm": self._vllm.version,
            "engine_request_id": job.engine_id,
            "fim": job.fim,
            "heal_text": state.heal_text,
            "arrival_s": wall_to_monotonic(st.arrival_wall_s) if st.arrival_wall_s else None,
            "queued_s": st.queued_s or None,
            "scheduled_s": st.scheduled_s or None,
            "first_token_s": st.first_token_s or None,
            "last_token_s": st.last_token_s or None,
            "step_spans": list(state.step_spans),
        })
        job.done.set()
