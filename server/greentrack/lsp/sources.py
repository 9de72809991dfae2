"""Where the language server's completions come from: the in-process pipeline, or a ``greentrack serve`` server.

Place in the flow: the handlers (``lsp/server.py``) build a ``CompletionRequest`` and ask a ``CompletionSource``
for a suggestion; the source runs it, and afterwards, off the critical path, stores the completion's record and
hands it to ``notify`` (the ``greentrack/energy`` notification). ``LocalSource`` wraps the ``Pipeline`` (generation
on one worker thread, attribution and storage on the pipeline's); ``lsp/remote.py``'s ``RemoteSource`` asks a
server and mirrors its records into the local database. Handlers do not know which one they talk to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol

from greentrack.config import Settings
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.pipeline import Pipeline, RequestContext
from greentrack.record import CompletionRecord

log = logging.getLogger("greentrack.lsp")

#: Called with each completion's record once its energy is final and it is stored (on any thread).
Notify = Callable[[CompletionRecord], None]


class Suggestion(NamedTuple):
    """What the editor shows: the text, and the id ``greentrack.accept`` is called with."""

    completion_id: str
    text: str


class CompletionSource(Protocol):
    """What the handlers use. ``complete`` runs on the event loop and never blocks it."""

    def expect_work(self) -> None:
        """A request is coming (during the debounce): let the meter start sampling."""

    async def complete(
        self, request: CompletionRequest, cancel: CancelToken, context: RequestContext
    ) -> Suggestion | None:
        """The suggestion, or None (nothing to show: cancelled, empty, or no answer). ``BadInput`` propagates.
        Cancelling the awaiting task (``$/cancelRequest``) stops the generation within one step; what it spent
        is still recorded and notified (outcome ``cancelled``)."""
        ...

    async def accept(self, completion_id: str) -> bool:
        """Mark the completion accepted; False when it is not known."""
        ...

    def apply_settings(self, settings: Settings) -> None:
        """Settings that apply to the next request (the handlers reload the source for the others)."""

    async def aclose(self) -> None:
        """On ``shutdown``: stop what runs, store what is pending, release resources. Bounded in time."""

    def close(self) -> None:
        """After the event loop ended (or from another thread): whatever ``aclose`` did not do. Idempotent."""


class LocalSource:
    """The in-process pipeline. One generation at a time on the ``greentrack-model`` thread."""

    def __init__(self, pipeline: Pipeline, notify: Notify) -> None:
        self.pipeline = pipeline
        self.notify = notify
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greentrack-model")
        self._live: set[CancelToken] = set()
        self._closed = False

    def expect_work(self) -> None:
        self.pipeline.monitor.expect_work()  # the meter starts sampling during the debounce, before the prefill

    async def complete(
        self, request: CompletionRequest, cancel: CancelToken, context: RequestContext
    ) -> Suggestion | None:
        pipeline = self.pipeline

        def run() -> EngineResult | None:
            if cancel.cancelled:  # superseded while queued: it never reaches the model
                return None
            return pipeline.run(request, cancel)

        self._live.add(cancel)
        future = asyncio.get_running_loop().run_in_executor(self._worker, run)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:  # $/cancelRequest: stop within one decode step, still log the energy
            cancel.cancel()
            future.add_done_callback(lambda f: self._log_after_cancel(f, context))
            raise
        finally:
            self._live.discard(cancel)
        if result is None:
            return None
        self._finalize_in_background(result, context)
        if result.cancelled or not result.text:
            return None
        return Suggestion(result.request_id, result.text)

    def _finalize_in_background(self, result: EngineResult, context: RequestContext) -> None:
        def done(future: Future[CompletionRecord]) -> None:
            if (error := future.exception()) is not None:
                log.error("could not log completion %s: %s", result.request_id, error)

        self.pipeline.finalize_later(result, context, on_done=self.notify).add_done_callback(done)

    def _log_after_cancel(self, future: asyncio.Future[EngineResult | None], context: RequestContext) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if result is not None:
            result.cancelled = True
            self._finalize_in_background(result, context)

    async def accept(self, completion_id: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.pipeline.accept, completion_id)

    def apply_settings(self, settings: Settings) -> None:
        self.pipeline.settings = settings
        self.pipeline.use_suggestion_cache(settings.suggestion_cache)

    def retire(self) -> None:
        """Replaced by a newly loaded source: close once the generation in flight is done, without waiting."""
        self._closed = True
        self._worker.submit(self.pipeline.close)
        self._worker.shutdown(wait=False)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop the generation in flight within one step (its record is still written), write every pending
        record, close the model and the store."""
        if self._closed:
            return
        self._closed = True
        for cancel in list(self._live):
            cancel.cancel()
        self._worker.shutdown(wait=True, cancel_futures=True)
        self.pipeline.close()
