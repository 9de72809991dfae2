"""The fair scheduler: admits generations to the engine up to its concurrency, round-robin across developers.

Place in the flow: an HTTP handler ``submit``s a job for its caller's developer; ``slots`` worker threads take
jobs round-robin across developers (each developer's own jobs in arrival order), run them and resolve their
futures. One slot (the transformers backend, one generation at a time): a developer's burst waits behind
itself, never in front of another developer: with k developers waiting, each gets one generation in every k.
Several slots (vLLM: ``max_num_seqs``, requests batched by the engine): up to ``slots`` jobs run at once, and a
developer holds at most ``slots // active developers`` of them (at least one; ``per_developer_cap``), so one
burst cannot fill the batch while others wait. A job whose ``CancelToken`` is set while it waits never reaches
the model (its future resolves to None). ``Job.queue_s`` is the wait for a slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from greentrack.engine.types import CancelToken, EngineResult
from greentrack.errors import GreentrackError

log = logging.getLogger(__name__)

#: How many jobs one developer may have waiting; more are refused (HTTP 429) rather than queued without bound.
DEFAULT_MAX_QUEUED_PER_DEVELOPER = 16


class QueueFull(GreentrackError):
    """This developer already has the most jobs waiting that the scheduler accepts."""


class SchedulerClosed(GreentrackError):
    """The server is shutting down and takes no new work."""


@dataclass
class Job:
    """One generation waiting for, or holding, the engine. Times on ``time.monotonic()``'s clock (s)."""

    developer: str
    run: Callable[[], EngineResult]
    cancel: CancelToken
    queued_s: float
    future: Future[EngineResult | None] = field(default_factory=Future)
    started_s: float | None = None

    @property
    def queue_s(self) -> float:
        """Time spent waiting for the engine (until now if still waiting). Units: s."""
        return (self.started_s if self.started_s is not None else time.monotonic()) - self.queued_s


class FairScheduler:
    """``slots`` worker threads; per-developer FIFO queues served round-robin. Thread-safe.

    Each event (a job queued, a slot released) wakes one idle worker, which wakes the next when it took a job and
    others wait. Waking every worker (``notify_all``, until 2026-11-27) cost ``slots`` thread wake-ups per event on
    the scheduler's lock, which the event loop takes too (``submit``, ``depth``): side by side
    (``bench/scheduler_wakeups.py``, 128 developers) it spent 7–9× the CPU per job and ``submit`` took 5–8× longer at
    p95, for 128 and 256 slots; one worker woken waits for the GIL like any thread (p95 +5 ms beside a thread that
    runs Python all along)."""

    def __init__(
        self,
        *,
        max_queued_per_developer: int = DEFAULT_MAX_QUEUED_PER_DEVELOPER,
        slots: int = 1,
        per_developer_cap: int | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("the scheduler needs at least one slot")
        self.max_queued_per_developer = max_queued_per_developer
        self.slots = slots
        #: At most this many running jobs per developer (None: ``slots`` shared by the active developers).
        self.per_developer_cap = per_developer_cap
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()
        self._cond = threading.Condition()
        self._closing = False
        self._running: list[Job] = []
        self._threads = [threading.Thread(target=self._work, name=f"greentrack-scheduler-{i}", daemon=True)
                         for i in range(slots)]
        for thread in self._threads:
            thread.start()

    def submit(self, developer: str, run: Callable[[], EngineResult], cancel: CancelToken) -> Job:
        """Queue ``run`` for ``developer``. Raises ``QueueFull`` or ``SchedulerClosed``."""
        job = Job(developer, run, cancel, time.monotonic())
        with self._cond:
            if self._closing:
                raise SchedulerClosed("the server is shutting down")
            queue = self._queues.get(developer)
            if queue is not None and len(queue) >= self.max_queued_per_developer:
                raise QueueFull(f"{developer} already has {len(queue)} completions waiting "
                                f"(at most {self.max_queued_per_developer})")
            if queue is None:
                queue = self._queues[developer] = deque()  # a newcomer joins the end of the rotation
            queue.append(job)
            self._cond.notify()  # one idle worker looks; it wakes the next if more can run (``_take``)
        return job

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    @property
    def running(self) -> int:
        """Jobs holding a slot now."""
        with self._cond:
            return len(self._running)

    @property
    def running_since_s(self) -> float | None:
        """When the oldest job holding a slot started (monotonic s), None when the engine is free."""
        with self._cond:
            starts = [job.started_s for job in self._running if job.started_s is not None]
            return min(starts) if starts else None

    def cap(self) -> int:
        """How many slots one developer may hold now. Call with ``_cond`` held."""
        if self.per_developer_cap is not None:
            return max(1, self.per_developer_cap)
        active = set(self._queues) | {job.developer for job in self._running}
        return max(1, self.slots // max(1, len(active)))

    def _next(self) -> Job | None:
        """The head job of the first developer in the rotation under their cap (that developer moves to the
        rotation's end); a job cancelled while waiting comes first whatever the cap (it only resolves). None
        when every waiting developer is at their cap."""
        cap = self.cap()
        held: dict[str, int] = {}
        for job in self._running:
            held[job.developer] = held.get(job.developer, 0) + 1
        for developer, queue in self._queues.items():
            if not queue[0].cancel.cancelled and held.get(developer, 0) >= cap:
                continue
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(developer)
            else:
                del self._queues[developer]
            return job
        return None

    def _take(self) -> Job | None:
        """The next job this worker runs (a slot taken unless it was cancelled while waiting); None once closing with
        nothing left. Waits until there is one."""
        with self._cond:
            while True:
                job = self._next() if self._queues else None
                if job is not None or (self._closing and not self._queues):
                    break
                self._cond.wait()
            if job is None:
                return None
            if not job.cancel.cancelled:
                job.started_s = time.monotonic()
                self._running.append(job)
            if self._queues:
                self._cond.notify()  # another job may be runnable too (a cap that rose, a cancelled job)
            return job

    def _work(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():  # its waiter gave up on it
                self._release(job)
                continue
            if job.started_s is None:  # cancelled while waiting: never reaches the model
                job.future.set_result(None)
                continue
            try:
                result = job.run()
            except BaseException as e:  # the future carries it to the waiting handler
                self._release(job)
                job.future.set_exception(e)
            else:
                self._release(job)
                job.future.set_result(result)

    def _release(self, job: Job) -> None:
        with self._cond:
            if job in self._running:
                self._running.remove(job)
            if self._queues:
                self._cond.notify()  # a developer under their cap again, or a freed slot: one worker looks

    def close(self, timeout_s: float = 30.0) -> None:
        """Take no new jobs, cancel the waiting ones, let the running ones finish (their callbacks run)."""
        with self._cond:
            self._closing = True
            waiting = [job for queue in self._queues.values() for job in queue]
            self._cond.notify_all()
        for job in waiting:
            job.cancel.cancel()
        with self._cond:
            self._cond.notify_all()  # cancelled jobs pass any cap: the workers resolve them and leave
        if waiting:
            log.info("shutting down: %d waiting completion(s) cancelled before reaching the model", len(waiting))
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("shutting down: the running completions did not finish within %.0f s", timeout_s)
