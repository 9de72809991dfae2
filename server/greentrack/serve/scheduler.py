"""The fair scheduler for a backend that generates one completion at a time (transformers).

Place in the flow: an HTTP handler ``submit``s a job for its caller's developer; one worker thread takes jobs
round-robin across developers (each developer's own jobs in arrival order), runs them and resolves their
futures. A developer's burst waits behind itself, never in front of another developer: with k developers
waiting, each gets one generation in every k. A job whose ``CancelToken`` is set while it waits never reaches
the model (its future resolves to None).
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
    """One worker thread; per-developer FIFO queues served round-robin. Thread-safe."""

    def __init__(self, *, max_queued_per_developer: int = DEFAULT_MAX_QUEUED_PER_DEVELOPER) -> None:
        self.max_queued_per_developer = max_queued_per_developer
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()
        self._cond = threading.Condition()
        self._closing = False
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._work, name="greentrack-scheduler", daemon=True)
        self._thread.start()

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
            self._cond.notify_all()
        return job

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    @property
    def running_since_s(self) -> float | None:
        """When the job holding the engine started (monotonic s), None when the engine is free."""
        with self._cond:
            return self._running.started_s if self._running is not None else None

    def _next(self) -> Job:
        """The head job of the first developer in the rotation; that developer moves to the rotation's end."""
        developer, queue = next(iter(self._queues.items()))
        job = queue.popleft()
        if queue:
            self._queues.move_to_end(developer)
        else:
            del self._queues[developer]
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queues and not self._closing:
                    self._cond.wait()
                if not self._queues:
                    return
                job = self._next()
                if not job.cancel.cancelled:
                    job.started_s = time.monotonic()
                    self._running = job
            if not job.future.set_running_or_notify_cancel():  # its waiter gave up on it
                with self._cond:
                    self._running = None
                continue
            if job.started_s is None:  # cancelled while waiting: never reaches the model
                job.future.set_result(None)
                continue
            try:
                result = job.run()
            except BaseException as e:  # the future carries it to the waiting handler
                with self._cond:
                    self._running = None
                job.future.set_exception(e)
            else:
                with self._cond:
                    self._running = None
                job.future.set_result(result)

    def close(self, timeout_s: float = 30.0) -> None:
        """Take no new jobs, cancel the waiting ones, let the running one finish (its callbacks run)."""
        with self._cond:
            self._closing = True
            waiting = [job for queue in self._queues.values() for job in queue]
            self._cond.notify_all()
        for job in waiting:
            job.cancel.cancel()
        if waiting:
            log.info("shutting down: %d waiting completion(s) cancelled before reaching the model", len(waiting))
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            log.warning("shutting down: the running completion did not finish within %.0f s", timeout_s)
