"""In vLLM's engine-core process: the scheduler that records every engine step and sends it to the server.

Place in the flow: with the engine core in its own process (``greentrack serve --engine-process``), the engine
thread builds vLLM's config, then names one of these classes as ``scheduler_config.scheduler_cls``
(``scheduler_name``: the one over vLLM's ``AsyncScheduler`` when vLLM settled on async scheduling, else over
``Scheduler``). vLLM builds it inside the engine process, where it connects to the server's
``vllm_step_channel.StepChannel`` (address and key from the environment) and sends, for every batch whose output
came back, which requests it served with how many prompt and decode tokens (``vllm_steps.scheduled_work``, the
same split as in process), timed there: a step runs from the end of the previous one (or, after idle, from the moment
its batch was scheduled) to the end of ``update_from_output``. It reports a request done once the scheduler has
freed it and no batch in flight holds it, and the engine idle once no request and no batch is left. Recording
never breaks the engine: a failure logs one warning and stops the records (the server's ledger then falls back).

vLLM is imported at the top: this module is imported only where vLLM is installed (by the engine thread, and by
vLLM in the engine process through the class's qualified name).
"""

from __future__ import annotations

import logging
import time
from multiprocessing.connection import Connection
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from greentrack.engine.vllm_step_channel import WireWork, connect_from_env
from greentrack.engine.vllm_steps import output_placeholders, scheduled_work

log = logging.getLogger(__name__)


class StepRecording:
    """What the recording schedulers add to vLLM's (``requests``: the scheduler's id → ``Request``)."""

    requests: dict[str, Any]

    # -- vLLM's scheduler methods, each calling the scheduler's own (the mixin comes first in the classes' bases) --
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_recording()

    def add_request(self, request: Any) -> None:
        super().add_request(request)  # type: ignore[misc]
        self._gt_live.add(str(request.request_id))

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        placeholders = output_placeholders(self.requests)
        scheduled_s = time.monotonic()
        out = super().schedule(*args, **kwargs)  # type: ignore[misc]
        self._record_schedule(out, placeholders, scheduled_s)
        return out

    def update_from_output(self, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().update_from_output(scheduler_output, *args, **kwargs)  # type: ignore[misc]
        self._record_output(scheduler_output)
        return result

    def finish_requests(self, *args: Any, **kwargs: Any) -> Any:
        result = super().finish_requests(*args, **kwargs)  # type: ignore[misc]
        self._settle(time.monotonic())
        return result

    # -- the records ---------------------------------------------------------------------------------------------
    def _start_recording(self) -> None:
        self._gt_conn: Connection | None = connect_from_env()
        self._gt_in_flight: dict[int, WireWork] = {}  # id(SchedulerOutput) → its work, until its output is back
        self._gt_live: set[str] = set()  # requests added and not yet reported done
        self._gt_end_s: float | None = None  # end of the last step while busy; None: idle

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._gt_conn is None:
            return
        try:
            self._gt_conn.send(message)
        except Exception as e:  # the server went away: stop recording, keep serving
            log.warning("greentrack: engine step records stopped (%s)", e)
            self._gt_conn = None

    def _record_schedule(self, out: Any, placeholders: dict[str, int], scheduled_s: float) -> None:
        try:
            work: WireWork = {sid: (w.prefill_tokens, w.decode_tokens, w.context_tokens)
                              for sid, w in scheduled_work(out, self.requests, placeholders).items()}
        except Exception as e:  # never break the engine for the energy figures
            log.warning("greentrack: engine step not recorded: %s", e)
            work = {}
        if work and self._gt_end_s is None:
            self._gt_end_s = scheduled_s
            self._send(("busy", scheduled_s))
        self._gt_in_flight[id(out)] = work

    def _record_output(self, scheduler_output: Any) -> None:
        end_s = time.monotonic()
        work = self._gt_in_flight.pop(id(scheduler_output), None)
        if work and self._gt_end_s is not None:
            self._send(("step", self._gt_end_s, end_s, work))
            self._gt_end_s = end_s
        self._settle(end_s)

    def _settle(self, now_s: float) -> None:
        """Report requests that will be in no later step, and the engine idle when nothing is left to run."""
        held = {rid for work in self._gt_in_flight.values() for rid in work}
        done = [rid for rid in self._gt_live if rid not in self.requests and rid not in held]
        if done:
            self._gt_live.difference_update(done)
            self._send(("done", done))
        if self._gt_end_s is not None and not self.requests and not any(self._gt_in_flight.values()):
            self._send(("idle", self._gt_end_s if self._gt_end_s <= now_s else now_s))
            self._gt_end_s = None


class RecordingScheduler(StepRecording, Scheduler):
    """vLLM's ``Scheduler``, recording each step for the server."""


class RecordingAsyncScheduler(StepRecording, AsyncScheduler):
    """vLLM's ``AsyncScheduler`` (a batch queue), recording each step for the server."""


def scheduler_name(async_scheduling: bool) -> str:
    """The qualified name vLLM resolves in the engine process (``SchedulerConfig.scheduler_cls``)."""
    cls = RecordingAsyncScheduler if async_scheduling else RecordingScheduler
    return f"{cls.__module__}.{cls.__qualname__}"
