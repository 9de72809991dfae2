"""Cancel tokens that count the engine thread's polls, for tests of the vLLM backend on the real CPU engine.

``VllmBackend.complete`` polls a request's token once before submitting it, and the engine thread polls it once
before every engine step (``vllm_engine.EngineThread._check_budgets``), so the n-th poll marks a step boundary.
"""

from __future__ import annotations

import threading
import time

from greentrack.engine.types import CancelToken


class StepCancel(CancelToken):
    """Cancels itself at the ``n``-th time the engine thread polls it (it polls once before every step), as
    a user's ``$/cancelRequest`` arriving during step ``n - 1`` would. Records when that happened."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.polls = 0
        self.cancelled_at_s: float | None = None
        self.reached = threading.Event()

    @property
    def cancelled(self) -> bool:
        self.polls += 1
        if self.polls >= self.n and self.cancelled_at_s is None:
            self.cancelled_at_s = time.monotonic()
            self.cancel()
        if self.polls >= self.n:
            self.reached.set()
        return super().cancelled


class Probe(CancelToken):
    """Never cancels; signals once the engine thread has polled it ``n`` times (the request is in its n-th step)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.polls = 0
        self.reached = threading.Event()

    @property
    def cancelled(self) -> bool:
        self.polls += 1
        if self.polls >= self.n:
            self.reached.set()
        return super().cancelled
