"""The language server's remote mode (``greentrack lsp --server URL``): completions from a ``greentrack serve``.

Place in the flow: a ``CompletionSource`` (``lsp/sources.py``) over ``greentrack.remote.RemoteClient``. The
document and cursor go to the server (which builds the prompt, generates and meters); once the answer is out, the
completion's final energy is long-polled, the record is mirrored into the developer's local database (marked
``served_by`` the server's URL, ``developer`` as the server says) and handed to ``notify``, so the status bar and
``greentrack report`` stay as in-process. No model is loaded here.

Reachability: while the server cannot be reached, the status is ``error`` with "server unreachable: …" and
completions return nothing at once (typing never waits on the network); a probe of ``/health`` with backoff
reconnects by itself and says ``ready`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from greentrack.config import Settings
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.errors import GreentrackError
from greentrack.lsp.protocol import UNREACHABLE_PREFIX
from greentrack.lsp.sources import Notify, Suggestion
from greentrack.pipeline import RequestContext, local_midnight_utc_iso
from greentrack.record import CompletionRecord
from greentrack.remote import (
    ENERGY_WAIT_S,
    RemoteAnswer,
    RemoteClient,
    RemoteRefused,
    ServerUnreachable,
    record_from_view,
)
from greentrack.store import Store

log = logging.getLogger("greentrack.lsp")

#: Reconnection probes: the first at once, then doubling up to the last (s).
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 8.0
#: Long-polls for one completion's energy before giving up (each waits up to ``ENERGY_WAIT_S``).
ENERGY_POLLS = 3
#: On ``shutdown``, how long completions whose energy is still coming get to be mirrored (s).
SHUTDOWN_GRACE_S = 1.5

#: Called with (state, message) for ``greentrack/status``.
SetStatus = Callable[[str, str], None]


class RemoteSource:
    """One server (``client``), the local database (``settings.db_path``) for the mirror rows."""

    def __init__(self, client: RemoteClient, settings: Settings, set_status: SetStatus, notify: Notify) -> None:
        self.client = client
        self.settings = settings
        self.set_status = set_status
        self.notify = notify
        self.reachable = False
        self._refused: str | None = None
        self._store_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greentrack-store")
        self._store: Store | None = None
        self._store_failed = False
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnect: asyncio.Task[None] | None = None
        self._last_status = ""
        self._closed = False

    # -- reachability ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """On the event loop, after ``initialized``: connect (and keep trying) in the background."""
        self.set_status("starting", f"connecting to {self.client.url}")
        self._reconnect = self._spawn(self._reconnect_loop(first_delay_s=0.0))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self) -> None:
        health = await self.client.health()
        await self.client.check_token()
        self.reachable, self._refused, self._last_status = True, None, ""
        problem = f"; the server reports: {health['reason']}" if health.get("reason") else ""
        self.set_status(
            "ready",
            f"{health.get('model')} at {self.client.url} ({health.get('backend')}, {health.get('device')}); "
            f"energy: {health.get('meter')}{problem}",
        )
        log.info("connected to %s: %s on %s", self.client.url, health.get("model"), health.get("device"))

    async def _reconnect_loop(self, first_delay_s: float) -> None:
        delay_s = first_delay_s
        while not self._closed:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            try:
                await self._connect()
                return
            except ServerUnreachable as e:
                self._mark_unreachable(e)
            except RemoteRefused as e:
                self._mark_refused(e)
                return  # a new token needs a restart of the language server (the extension does it)
            delay_s = min(max(delay_s * 2, RECONNECT_FIRST_S), RECONNECT_MAX_S)

    def _mark_unreachable(self, error: GreentrackError) -> None:
        """Say so once (then again only when the reason changes), and make sure a probe is on its way."""
        was_reachable, self.reachable = self.reachable, False
        message = f"{UNREACHABLE_PREFIX}: {error}"
        if was_reachable or self._last_status != message:
            log.warning("%s; reconnecting", message)
            self.set_status("error", message)
            self._last_status = message
        if not self._closed and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = self._spawn(self._reconnect_loop(first_delay_s=RECONNECT_FIRST_S))

    def _mark_refused(self, error: RemoteRefused) -> None:
        self.reachable = False
        if error.status == 401:
            message = (f"the server at {self.client.url} refused the token ({error}); set it with "
                       f"\"greentrack: Set Server Token\" (or GREENTRACK_TOKEN)")
        else:
            message = f"the server at {self.client.url} refused the connection: {error}"
        if self._refused != message:
            log.error("%s", message)
            self.set_status("error", message)
        self._refused = message

    # -- completion --------------------------------------------------------------------------------------------
    def expect_work(self) -> None:
        """The server's meter is the server's business."""

    async def complete(
        self, request: CompletionRequest, cancel: CancelToken, context: RequestContext
    ) -> Suggestion | None:
        if not self.reachable or self._closed:
            return None  # the reconnection probe says when the server is back
        body = {
            "text": request.text, "offset": request.offset, "language_id": request.language_id,
            "uri": context.uri, "document_key": request.document_key, "max_tokens": request.max_tokens,
            "completion_id": request.request_id,
        }
        call = asyncio.ensure_future(self.client.complete(body))
        try:
            answer = await asyncio.shield(call)
        except asyncio.CancelledError:  # $/cancelRequest: the server stops within one step and logs the energy
            cancel.cancel()
            self._spawn(self._cancel_remote(request.request_id))
            call.add_done_callback(lambda f: self._after_cancel(f, context))
            raise
        except ServerUnreachable as e:
            self._mark_unreachable(e)
            return None
        except RemoteRefused as e:
            if e.status in (401, 403):
                self._mark_refused(e)
            else:
                log.warning("completion %s refused by the server: %s", request.request_id, e)
            return None
        self._follow(answer, context)
        if answer.cancelled or not answer.text:
            return None
        return Suggestion(answer.completion_id, answer.text)

    async def _cancel_remote(self, completion_id: str) -> None:
        with contextlib.suppress(GreentrackError):
            await self.client.cancel(completion_id)

    def _after_cancel(self, call: asyncio.Future[RemoteAnswer], context: RequestContext) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        self._follow(call.result(), context)

    def _follow(self, answer: RemoteAnswer, context: RequestContext) -> None:
        """Long-poll the completion's energy, mirror it, notify (in the background)."""
        if not answer.reached_model or self._closed:
            return  # cancelled while it waited: no record anywhere, as in-process
        text = answer.text if self.settings.store_text and answer.text else None
        task = self._spawn(self._energy(answer.completion_id, text))
        self._pending[answer.completion_id] = task
        task.add_done_callback(lambda _: self._pending.pop(answer.completion_id, None))

    async def _energy(self, completion_id: str, text: str | None) -> None:
        view: dict[str, Any] | None = None
        for attempt in range(ENERGY_POLLS):
            try:
                view = await self.client.record(completion_id, wait_s=ENERGY_WAIT_S)
            except (ServerUnreachable, RemoteRefused) as e:
                log.warning("energy of completion %s: %s", completion_id, e)
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if view is None or view.get("energy_final"):
                break
        if view is None or not view.get("energy_final"):
            log.warning("completion %s: the server gave no final energy; not mirrored locally", completion_id)
            return
        try:
            record = record_from_view(view, served_by=self.client.url, text=text)
        except GreentrackError as e:
            log.error("%s", e)
            return
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(self._store_worker, self._mirror, record, view)
        self.notify(record)

    # -- the local mirror (on the store thread) -----------------------------------------------------------------
    def _local_store(self) -> Store | None:
        if self._store is None and not self._store_failed:
            try:
                self._store = Store(self.settings.db_path)
            except (GreentrackError, OSError, sqlite3.Error) as e:
                self._store_failed = True
                log.error("the local database %s cannot be opened (%s): remote completions are not mirrored",
                          self.settings.db_path, e)
        return self._store

    def _mirror(self, record: CompletionRecord, view: dict[str, Any]) -> CompletionRecord:
        """Store the server's record locally; today's totals from the local database (all of this developer's
        completions, local and remote), else the server's."""
        store = self._local_store()
        if store is not None:
            try:
                store.record(record)
            except GreentrackError as e:  # e.g. the server writes this very database: the row is there already
                log.info("completion %s not mirrored: %s", record.completion_id, e)
            try:
                record.today_completions, record.today_j = store.totals_since(
                    developer=record.developer, since_ts=local_midnight_utc_iso()
                )
                return record
            except (GreentrackError, sqlite3.Error) as e:
                log.warning("cannot read today's total: %s", e)
        if view.get("today_j") is not None:
            record.today_j, record.today_completions = view.get("today_j"), view.get("today_completions")
        return record

    def _mark_local(self, completion_id: str) -> bool:
        store = self._local_store()
        if store is None:
            return False
        try:
            return store.mark_accepted(completion_id)
        except (GreentrackError, sqlite3.Error) as e:
            log.warning("accept %s in the local database: %s", completion_id, e)
            return False

    # -- acceptance, settings, shutdown --------------------------------------------------------------------------
    async def accept(self, completion_id: str) -> bool:
        """Accepted on the server (it waits for its record) and in the local mirror (once mirrored)."""
        try:
            accepted = await self.client.accept(completion_id)
        except (ServerUnreachable, RemoteRefused) as e:
            log.warning("accept %s: %s", completion_id, e)
            accepted = False
        pending = self._pending.get(completion_id)
        if pending is not None:
            await asyncio.wait({pending}, timeout=ENERGY_WAIT_S)
        loop = asyncio.get_running_loop()
        local = await loop.run_in_executor(self._store_worker, self._mark_local, completion_id)
        return accepted or local

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings

    async def aclose(self) -> None:
        """Give completions whose energy is on its way a moment to be mirrored, then stop everything."""
        pending = list(self._pending.values())
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        self._closed = True
        self._store_worker.shutdown(wait=True)
        store, self._store = self._store, None
        if store is not None:
            store.close()
