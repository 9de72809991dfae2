"""The server's one room where HTTP requests meet the pipeline: generate, cancel, accept, look records up.

Place in the flow: handlers (``app``) authenticate, build a ``CompletionRequest`` (``models``) and await
``CompletionService.generate``; it queues the generation on the ``FairScheduler``, which admits up to the
backend's concurrency (``backend_slots``: one for transformers, ``max_num_seqs`` for vLLM, whose engine batches
the admitted requests and shares its prefix cache among all developers; summed over the replicas of
``--data-parallel-size``, ``replicas``, which picks each admitted request's replica), fairly across developers; races it
against the client's disconnection, and, once the engine is done, hands the result to ``Pipeline.finalize_later``
with the caller's developer. The answer never waits for the energy: the record arrives later (``record_view``
long-polls for it) and is counted in the metrics. Idle energy (``idle``): from the pipeline's step ledger when
it has one (vLLM), else the idle meter learns which time and energy belonged to completions. A disconnected
client or ``cancel`` stops the engine within one step; what it spent is stored with outcome ``cancelled``. A
request cancelled while it waits never reaches the model and leaves no record (as in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from greentrack.energy.types import PhaseSpan
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.errors import BadInput, GreentrackError
from greentrack.pipeline import Pipeline, RequestContext, host_name, wall_clock_iso
from greentrack.record import CompletionRecord
from greentrack.serve.auth import Caller, LockedStore
from greentrack.serve.idle import EnergyTotals, IdleAccounts, IdleEnergy, IdleMeter, LedgerIdle, ReplicaIdle
from greentrack.serve.metrics import ServerMetrics
from greentrack.serve.models import record_view
from greentrack.serve.replicas import ReplicaSet
from greentrack.serve.scheduler import FairScheduler

log = logging.getLogger(__name__)

#: Completions kept in memory for long-polls and acceptance (older ones are read from the database).
MAX_ENTRIES = 4096


class NotFound(GreentrackError):
    """No such completion for this developer (HTTP 404; another developer's id looks the same)."""


class Conflict(GreentrackError):
    """A client-chosen completion id that is already in use (HTTP 409)."""


class ClientGone(GreentrackError):
    """The client disconnected before its completion was ready; the generation was cancelled."""


def engine_queue_s(result: EngineResult) -> float:
    """How long the request waited inside the engine before its first step (vLLM's queue), 0 where unknown.
    Units: s."""
    queued, scheduled = result.extras.get("queued_s"), result.extras.get("scheduled_s")
    if isinstance(queued, float) and isinstance(scheduled, float):
        return max(0.0, scheduled - queued)
    return 0.0


@dataclass
class _Entry:
    """A completion of this process: its owner, and its record once attributed and stored."""

    developer: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    record: CompletionRecord | None = None
    replica: int = 0  # which replica's engine ran it (``ReplicaSet``): its pipeline attributes and stores it
    dropped: bool = False  # cancelled before reaching the model: no record will come
    undelivered: bool = False  # the client left before the answer: logged as cancelled


@dataclass(frozen=True)
class Generation:
    """What a handler answers with: the engine's result (None: cancelled before reaching the model), the
    times the server adds, and the record when it was already attributed (rare: energy comes after)."""

    completion_id: str
    result: EngineResult | None
    queue_ms: float
    latency_ms: float
    record: CompletionRecord | None
    #: Where the server's time went besides queue, prefill and decode (``server_timings_ms``); empty when cancelled.
    timings_ms: dict[str, float | None] = field(default_factory=dict)


def _generation(cid: str, result: EngineResult | None, slot_wait_s: float, received_s: float,
                entry: _Entry, queued_s: float | None = None) -> Generation:
    """The handler's answer: the queue time (the slot's wait plus the engine's batch wait) and the latency."""
    queue_ms = slot_wait_s * 1000.0
    if result is None:
        return Generation(cid, None, queue_ms, (time.monotonic() - received_s) * 1000.0, None)
    queue_ms += engine_queue_s(result) * 1000.0  # a slot was free, but the engine's batch was not yet
    latency_ms = max(0.0, (result.ended_s - received_s) * 1000.0)
    return Generation(cid, result, queue_ms, latency_ms, entry.record,
                      server_timings_ms(result, received_s=received_s, slot_wait_s=slot_wait_s, queued_s=queued_s))


def server_timings_ms(result: EngineResult, *, received_s: float, slot_wait_s: float, queued_s: float | None = None
                      ) -> dict[str, float | None]:
    """The server's time outside queue, prefill and decode, from the engine's stamps (docs/interfaces.md, "HTTP
    API"): ``before_engine`` (received → the engine's request opened, the slot's wait left out: authentication,
    the scheduler's hand-over, the prompt built), in two parts when ``queued_s`` (when the scheduler took the job) is
    given: ``to_scheduler`` (received → queued: parsing, authentication, checks) and ``to_prompt`` (a slot's worker
    took it → the engine's request opened: the replica picked, the suggestion cache asked, the prompt built);
    ``admit`` (→ the engine thread gave it to vLLM), ``after_decode`` (the last token → the engine's result: the
    stop rules, the step that saw them). None where the backend has no such stamp. Units: ms."""
    extras = result.extras
    arrival, last = extras.get("arrival_s"), extras.get("last_token_s")

    def ms(a: float, b: float) -> float:
        return round(max(0.0, b - a) * 1000.0, 3)

    parts: dict[str, float | None] = {"to_scheduler": None, "to_prompt": None}
    if queued_s is not None:
        parts = {"to_scheduler": ms(received_s, queued_s), "to_prompt": ms(queued_s + slot_wait_s, result.started_s)}
    return {
        "before_engine": ms(received_s + slot_wait_s, result.started_s),
        **parts,
        "admit": ms(result.started_s, arrival) if isinstance(arrival, float) else None,
        "after_decode": ms(last, result.ended_s) if isinstance(last, float) else None,
    }


class CompletionService:
    """Holds the pipelines (one per replica: ``ReplicaSet``), the scheduler, the HTTP layer's store connection, the
    metrics and the idle accounts."""

    def __init__(
        self,
        pipelines: Pipeline | ReplicaSet,
        store: LockedStore,
        metrics: ServerMetrics,
        *,
        scheduler: FairScheduler | None = None,
        idle_period_s: float = 30.0,
    ) -> None:
        self.replicas = pipelines if isinstance(pipelines, ReplicaSet) else ReplicaSet([pipelines])
        #: The first replica's pipeline: settings, model and backend kind, the same for every replica.
        self.pipeline = self.replicas.primary
        self.store = store
        self.metrics = metrics
        self.scheduler = scheduler or FairScheduler(slots=self.replicas.slots)
        self.host = host_name()
        self.idle: IdleAccounts
        with_ledgers = [p for p in self.replicas.pipelines if p.ledger is not None]
        if len(self.replicas) > 1:
            if len(with_ledgers) != len(self.replicas):
                raise GreentrackError("every replica needs a step ledger (a counter on its GPUs)")
            self.idle = ReplicaIdle([LedgerIdle(p, self._observe_idle, period_s=idle_period_s)
                                     for p in self.replicas.pipelines], self._observe_idle, period_s=idle_period_s)
        elif with_ledgers:  # the ledger splits idle from the requests; the pipeline stores it
            self.idle = LedgerIdle(self.pipeline, self._observe_idle, period_s=idle_period_s)
        else:
            self.idle = IdleMeter(self.pipeline.monitor, self._store_idle, period_s=idle_period_s)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._live: dict[str, tuple[str, CancelToken]] = {}
        self._by_document: dict[tuple[str, str], CancelToken] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def model_id(self) -> str:
        return self.pipeline.backend.model_id

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle.start()

    def close(self) -> None:
        """Cancel what waits, let the running generation finish, account the last idle period, store all.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        log.info("shutting down: finishing in-flight completions and storing their records")
        self.scheduler.close()
        try:
            self.replicas.drain()  # every record stored: the idle meter knows every completion's energy
        except Exception as e:
            log.warning("shutting down: records still being stored: %s", e)
        self.idle.close()
        self.replicas.close()  # each stores its ledger's last idle window; then the store closes
        totals = self.idle.totals()
        log.info("energy over %.1f s: meter %.6f J = completions %.6f J + idle %.6f J", totals.window_s,
                 totals.meter_j, totals.completions_j, totals.idle_j)

    # -- generation -------------------------------------------------------------------------------------
    async def generate(
        self,
        caller: Caller,
        request: CompletionRequest,
        *,
        uri: str,
        received_s: float,
        disconnected: Callable[[], Awaitable[None]] | None = None,
        supersede: bool = False,
    ) -> Generation:
        """Run ``request`` for ``caller`` and wait for the suggestion (not for its energy).

        ``disconnected`` resolves when the client leaves; then, or when this task is cancelled, the generation
        is cancelled (``ClientGone`` / ``CancelledError``). ``supersede``: a newer request for the same
        document of the same developer cancels this one, as typing does in-process.
        """
        cid = request.request_id
        cancel = CancelToken()
        entry = _Entry(caller.developer)
        self._register(cid, entry, cancel, request.document_key if supersede else None)
        context = RequestContext(uri, request.language_id, received_s, developer=caller.developer)
        run = self._metered_run(cid, request, cancel, entry)
        try:
            job = self.scheduler.submit(caller.developer, run, cancel)
        except GreentrackError:
            self._forget(cid, cancel, drop=True)
            raise
        self.metrics.queue_depth.set(self.scheduler.depth)
        job.future.add_done_callback(lambda f: self._engine_done(f, cid, entry, context, cancel))
        result = await self._wait_for_engine(job.future, disconnected, cid, entry, cancel)
        return _generation(cid, result, job.queue_s, received_s, entry, job.queued_s)

    def _register(self, cid: str, entry: _Entry, cancel: CancelToken, superseding_document: str | None) -> None:
        """Books ``cid`` as live (``Conflict`` when the id is taken); with ``superseding_document``, cancels the
        developer's previous request for that document and takes its place."""
        with self._lock:
            if cid in self._entries or cid in self._live:
                raise Conflict(f"completion id {cid!r} is already in use")
            self._entries[cid] = entry
            self._live[cid] = (entry.developer, cancel)
            if superseding_document is not None:
                key = (entry.developer, superseding_document)
                previous = self._by_document.get(key)
                if previous is not None:
                    previous.cancel()
                self._by_document[key] = cancel
            self._evict()

    def _metered_run(self, cid: str, request: CompletionRequest, cancel: CancelToken, entry: _Entry
                     ) -> Callable[[], EngineResult]:
        """The scheduler's job: the run of the replica chosen when it is admitted (``ReplicaSet.acquire``), between
        the idle meter's ``begin`` and ``end`` for ``cid``."""

        def run() -> EngineResult:
            replica = self.replicas.acquire(entry.developer)
            entry.replica = replica
            self.idle.begin(cid)
            spans: list[PhaseSpan] = []
            try:
                result = self.replicas.pipelines[replica].run(request, cancel)
                spans = result.spans
                return result
            finally:
                self.replicas.release(replica)
                self.idle.end(cid, spans)

        return run

    async def _wait_for_engine(
        self, future: Future[EngineResult | None], disconnected: Callable[[], Awaitable[None]] | None, cid: str,
        entry: _Entry, cancel: CancelToken,
    ) -> EngineResult | None:
        """The engine's result; when the client leaves first (``ClientGone``) or this task is cancelled, the
        generation is cancelled and the error raised."""
        waiter = asyncio.ensure_future(asyncio.shield(asyncio.wrap_future(future)))
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            if watcher is not None:
                pending: set[asyncio.Future[Any]] = {waiter, watcher}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    raise ClientGone(f"the client left before completion {cid} was ready")
            return await waiter
        except (asyncio.CancelledError, ClientGone):
            entry.undelivered = True
            cancel.cancel()
            log.info("completion %s (%s): client gone, generation cancelled", cid, entry.developer)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            self.metrics.queue_depth.set(self.scheduler.depth)

    def _engine_done(
        self, future: Future[EngineResult | None], cid: str, entry: _Entry, context: RequestContext,
        cancel: CancelToken,
    ) -> None:
        """On the scheduler's thread: the engine finished (or skipped) ``cid``; attribute it off this path."""
        self._forget(cid, cancel, drop=False)
        error = None if future.cancelled() else future.exception()
        result = None if future.cancelled() or error is not None else future.result()
        if result is None:
            if isinstance(error, BadInput):
                log.warning("completion %s: %s", cid, error)
            elif error is not None:
                log.error("completion %s failed: %s", cid, error)
            entry.dropped = True
            self._signal(entry)
            return
        if entry.undelivered and not result.cancelled:
            result.cancelled = True  # finished, but nobody received it
        pipeline = self.replicas.pipelines[entry.replica]
        pipeline.finalize_later(result, context, on_done=lambda record: self._stored(entry, record)) \
            .add_done_callback(lambda f: self._finalize_failed(f, cid, entry))

    def _finalize_failed(self, future: Future[CompletionRecord], cid: str, entry: _Entry) -> None:
        if (error := future.exception()) is not None:
            log.error("could not log completion %s: %s", cid, error)
            self.idle.attributed(cid, 0.0, None)  # nothing stored: what it spent stays in the idle energy
            entry.dropped = True
            self._signal(entry)

    def _stored(self, entry: _Entry, record: CompletionRecord) -> None:
        self.idle.attributed(record.completion_id, record.total_j, record.uncertainty_j)
        entry.record = record
        self.metrics.observe_record(record)
        log.info("completion %s (%s): %s, %d+%d tokens, %.3f J %s", record.completion_id, record.developer,
                 record.outcome, record.prompt_tokens, record.completion_tokens, record.total_j, record.method)
        self._signal(entry)

    def _signal(self, entry: _Entry) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(entry.done.set)

    def _forget(self, cid: str, cancel: CancelToken, *, drop: bool) -> None:
        with self._lock:
            self._live.pop(cid, None)
            for key, token in list(self._by_document.items()):
                if token is cancel:
                    del self._by_document[key]
            if drop:
                self._entries.pop(cid, None)

    def _evict(self) -> None:
        while len(self._entries) > MAX_ENTRIES:
            oldest = next(iter(self._entries))
            self._entries.pop(oldest)

    # -- cancel, accept, look up ----------------------------------------------------------------------
    def cancel(self, caller: Caller, cid: str) -> bool:
        """Cancel ``cid`` if it is still waiting or generating: True; False when it already finished."""
        with self._lock:
            live = self._live.get(cid)
            entry = self._entries.get(cid)
        if live is not None and live[0] == caller.developer:
            if entry is not None:
                entry.undelivered = True  # unwanted now, even if the engine ends by itself meanwhile
            live[1].cancel()
            log.info("completion %s (%s): cancelled by request", cid, caller.developer)
            return True
        if entry is not None and entry.developer == caller.developer:
            return False
        if self._stored_row(caller, cid) is not None:
            return False
        raise NotFound(f"no completion {cid}")

    async def record(self, caller: Caller, cid: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The completion's record (``record_view``); with ``wait_s``, waits up to that long for its energy.
        A completion not attributed yet comes back with ``energy_final: false``."""
        with self._lock:
            entry = self._entries.get(cid)
        if entry is not None and entry.developer == caller.developer:
            if entry.record is None and not entry.dropped and wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(entry.done.wait(), timeout=wait_s)
            if entry.record is not None:
                view = record_view(entry.record.row())
                view["accepted"] = view["accepted"] or entry.record.accepted
                if entry.record.today_j is not None:
                    view.update(today_j=entry.record.today_j, today_completions=entry.record.today_completions)
                return view
            if entry.dropped:
                raise NotFound(f"completion {cid} never reached the model (cancelled while waiting)")
            return {"completion_id": cid, "developer": caller.developer, "energy_final": False}
        row = await asyncio.to_thread(self._stored_row, caller, cid)
        if row is None:
            raise NotFound(f"no completion {cid}")
        return record_view(row)

    async def accept(self, caller: Caller, cid: str) -> bool:
        """Mark ``cid`` accepted (waits for its record up to 10 s). ``NotFound`` for another's or an unknown id."""
        view = await self.record(caller, cid, wait_s=10.0)
        if not view.get("energy_final"):
            raise NotFound(f"completion {cid} is not stored yet")
        accepted: bool = await asyncio.to_thread(self.store.call, lambda s: bool(s.mark_accepted(cid)))
        if accepted:
            self.metrics.observe_accept(caller.developer, str(view.get("model") or self.model_id))
            with self._lock:
                entry = self._entries.get(cid)
            if entry is not None and entry.record is not None:
                entry.record.accepted = 1
        return accepted

    def _stored_row(self, caller: Caller, cid: str) -> dict[str, Any] | None:
        def find(store: Any) -> dict[str, Any] | None:
            row: dict[str, Any] | None = store.completion(cid, developer=caller.developer)
            return row

        return self.store.call(find)

    # -- idle energy ------------------------------------------------------------------------------------
    def energy_totals(self) -> EnergyTotals:
        """Account the idle energy up to now (stored), then the totals: the meter's delta over the accounted
        window, the completions' and the idle part of it. Blocking: call it off the event loop."""
        self.idle.account()
        totals = self.idle.totals()
        self.metrics.observe_totals(totals)
        return totals

    def _observe_idle(self, periods: list[IdleEnergy]) -> None:
        for period in periods:
            self.metrics.observe_idle(period)

    def _store_idle(self, periods: list[IdleEnergy]) -> None:
        self._observe_idle(periods)

        def write(store: Any) -> None:
            for p in periods:
                store.record_idle(
                    started_ts=wall_clock_iso(p.start_s), ended_ts=wall_clock_iso(p.end_s), energy_j=p.energy_j,
                    method=p.method, meter=p.meter, uncertainty_j=p.uncertainty_j, host=self.host,
                )

        if periods:
            self.store.call(write)
