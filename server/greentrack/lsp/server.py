"""The language server (pygls 2): inline completions with energy, acceptance and cancellation.

Thin handlers over a ``CompletionSource`` (``lsp/sources.py``): in-process, the pipeline, which loads on a
background thread after ``initialized`` (``greentrack/status``: starting → ready | error); in remote mode
(``greentrack lsp --server URL``), a ``greentrack serve`` server (``lsp/remote.py``; no model loads here). The
event loop never blocks; the ``greentrack/energy`` notification follows each completion that reached the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lsprotocol import types
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.workspace import TextDocument

from greentrack import __version__
from greentrack.config import Settings, read_client_settings
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.errors import BadInput, GreentrackError
from greentrack.logs import configure_logging, log_package_info
from greentrack.lsp.jsonrpc import FrameReader, GreentrackProtocol, serve
from greentrack.lsp.protocol import (
    ACCEPT_COMMAND,
    ENERGY_NOTIFICATION,
    RELOAD_FIELDS,
    STATUS_NOTIFICATION,
    completion_position_error,
)
from greentrack.lsp.sources import CompletionSource, LocalSource
from greentrack.pipeline import RequestContext, open_pipeline
from greentrack.record import CompletionRecord

log = logging.getLogger("greentrack.lsp")


@dataclass(frozen=True)
class RemoteOptions:
    """Remote mode: the server's base URL and the bearer token (None: a loopback server without tokens)."""

    url: str
    token: str | None = None


class GreentrackServer(LanguageServer):
    """pygls server holding the settings, the completion source (once ready) and the per-document cancel tokens."""

    protocol: GreentrackProtocol

    def __init__(self, settings: Settings, remote: RemoteOptions | None = None) -> None:
        super().__init__(
            "greentrack", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=GreentrackProtocol,
        )
        self.settings = settings
        #: What a setting the client leaves unset (absent, null, "") means: the environment's and command line's.
        self.defaults = settings
        self.remote = remote
        self.source: CompletionSource | None = None
        self.state = "starting"
        self.state_message = "loading the model"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tokens: dict[str, CancelToken] = {}
        self._load_lock = threading.Lock()
        self._load_generation = 0

    # -- messages to the client (thread-safe) ---------------------------------------------------------
    def send(self, method: str, params: Any) -> None:
        """Send a notification from any thread."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if threading.current_thread() is threading.main_thread():
            self.protocol.notify(method, params)
        else:
            loop.call_soon_threadsafe(self.protocol.notify, method, params)

    def set_status(self, state: str, message: str) -> None:
        self.state, self.state_message = state, message
        self.send(STATUS_NOTIFICATION, {"state": state, "message": message})

    def notify_energy(self, record: CompletionRecord) -> None:
        self.send(ENERGY_NOTIFICATION, record.energy_fields())

    # -- source lifecycle ------------------------------------------------------------------------------
    def start_source(self) -> None:
        """After ``initialized``: connect to the server (remote mode), else load the model."""
        if self.remote is None:
            self.load_in_background()
            return
        from greentrack.lsp.remote import RemoteSource
        from greentrack.remote import RemoteClient

        source = RemoteSource(RemoteClient(self.remote.url, self.remote.token), self.settings, self.set_status,
                              self.notify_energy)
        self.source = source
        source.start()

    def load_in_background(self) -> None:
        """(Re)load the pipeline for the current settings on a thread; status tells the client."""
        with self._load_lock:
            self._load_generation += 1
            generation = self._load_generation
        settings = self.settings
        self.set_status("starting", f"loading {settings.model} ({settings.backend}, {settings.device})")

        def job() -> None:
            try:
                pipeline = open_pipeline(settings)
            except GreentrackError as e:
                log.error("cannot start: %s", e)
                self.set_status("error", str(e))
                return
            except Exception as e:  # never let a load failure take the editor session down
                log.exception("unexpected failure while loading the model")
                self.set_status("error", f"unexpected failure while loading the model: {e}")
                return
            with self._load_lock:
                if generation != self._load_generation:  # settings changed meanwhile: drop this one
                    pipeline.close()
                    return
                old, self.source = self.source, LocalSource(pipeline, self.notify_energy)
                self.source.apply_settings(self.settings)  # those that changed while it loaded
            if isinstance(old, LocalSource):
                old.retire()
            self.set_status(
                "ready",
                f"{pipeline.backend.model_id} on {pipeline.backend.device}; energy: {pipeline.monitor.meter_name}",
            )

        threading.Thread(target=job, name="greentrack-load", daemon=True).start()

    def apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        if self.source is not None:
            self.source.apply_settings(new)
        if self.remote is None and any(getattr(old, f) != getattr(new, f) for f in RELOAD_FIELDS):
            self.load_in_background()

    def _take_source(self) -> CompletionSource | None:
        with self._load_lock:
            self._load_generation += 1  # a load still running closes what it loaded
            source, self.source = self.source, None
        for token in self._tokens.values():
            token.cancel()
        return source

    async def shutdown_source(self) -> None:
        """On ``shutdown``: stop the completion in flight, store what is pending, release the model."""
        source = self._take_source()
        if source is not None:
            await source.aclose()

    def close(self) -> None:
        """After the last message: the same, for a client that left without ``shutdown``."""
        source = self._take_source()
        if source is not None:
            source.close()

    # -- completion --------------------------------------------------------------------------------------
    def supersede(self, uri: str) -> CancelToken:
        """A new request for ``uri`` cancels the one before it."""
        previous = self._tokens.get(uri)
        if previous is not None:
            previous.cancel()
        token = CancelToken()
        self._tokens[uri] = token
        return token

    async def inline_completion(self, params: types.InlineCompletionParams) -> list[types.InlineCompletionItem]:
        received_s = time.monotonic()
        source, settings = self.source, self.settings
        if source is None or not settings.enabled:
            return []
        uri = params.text_document.uri
        document = self._completable_document(uri, params.position)
        if document is None:
            return []
        text = document.source
        offset = document.offset_at_position(params.position)
        token = self.supersede(uri)
        source.expect_work()
        if not await _debounce(settings.debounce_ms / 1000.0, token):
            return []
        request = _engine_request(uri, text, offset, document.language_id, settings)
        context = RequestContext(uri, request.language_id, received_s)
        try:
            suggestion = await source.complete(request, token, context)
        except BadInput as e:
            log.warning("inline completion for %s: %s", uri, e)
            return []
        if self._tokens.get(uri) is token:
            del self._tokens[uri]
        if suggestion is None:
            return []
        return [_inline_item(suggestion.text, suggestion.completion_id, params.position)]

    def _completable_document(self, uri: str, position: types.Position) -> TextDocument | None:
        """The open document at ``uri`` when ``position`` lies in it; None (logged) otherwise."""
        if uri not in self.workspace.text_documents:
            log.warning("inline completion for %s, which was never opened: ignored", uri)
            return None
        document = self.workspace.get_text_document(uri)
        if (problem := completion_position_error(document.lines, position)) is not None:
            log.warning("inline completion for %s: %s", uri, problem)
            return None
        return document


async def _debounce(debounce_s: float, token: CancelToken) -> bool:
    """Waits ``debounce_s``; False when a newer request superseded this one meanwhile. Cancelled: cancels ``token``."""
    try:
        await asyncio.sleep(debounce_s)
    except asyncio.CancelledError:
        token.cancel()
        raise
    return not token.cancelled


def _engine_request(uri: str, text: str, offset: int, language_id: str | None, settings: Settings) -> CompletionRequest:
    """The engine's request for the cursor at ``offset`` of ``text``, within the settings' budget."""
    return CompletionRequest(
        request_id=str(uuid.uuid4()),
        document_key=uri,
        text=text,
        offset=offset,
        language_id=language_id or "plaintext",
        max_tokens=settings.max_tokens,
        max_time_s=settings.max_time_ms / 1000.0,
        context_tokens=settings.context_tokens,
    )


def _inline_item(text: str, completion_id: str, position: types.Position) -> types.InlineCompletionItem:
    """The suggestion inserted at the cursor, with the command that reports its acceptance."""
    return types.InlineCompletionItem(
        insert_text=text,
        range=types.Range(start=position, end=position),
        command=types.Command(title="Accept", command=ACCEPT_COMMAND, arguments=[completion_id]),
    )


def apply_client_settings(ls: GreentrackServer, options: dict[str, Any]) -> Settings:
    """The client's settings on top of the current ones (an unset one back to the server's default); each one the
    server cannot use is logged and shown."""
    settings, problems = read_client_settings(options, ls.settings, ls.defaults)
    for problem in problems:
        log.warning("%s", problem)
        message = types.ShowMessageParams(type=types.MessageType.Warning, message=f"greentrack: {problem}")
        ls.window_show_message(message)
    return settings


def build_server(settings: Settings, remote: RemoteOptions | None = None) -> GreentrackServer:
    """The server with its features registered (separate from I/O so tests can drive it)."""
    server = GreentrackServer(settings, remote)
    _add_session_features(server)
    _add_completion_features(server)
    _add_shutdown_feature(server)
    return server


def _add_session_features(server: GreentrackServer) -> None:
    """``initialize`` and configuration changes apply the client's settings; ``initialized`` starts the source."""

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: GreentrackServer, params: types.InitializeParams) -> None:
        options = params.initialization_options
        if isinstance(options, dict):
            ls.settings = apply_client_settings(ls, options)

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: GreentrackServer, params: types.InitializedParams) -> None:
        ls.loop = asyncio.get_running_loop()
        ls.start_source()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: GreentrackServer, params: types.DidChangeConfigurationParams) -> None:
        if isinstance(params.settings, dict):
            ls.apply_settings(apply_client_settings(ls, params.settings))


def _add_completion_features(server: GreentrackServer) -> None:
    """Inline completions, and the command the client runs when one is accepted."""

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def on_inline_completion(
        ls: GreentrackServer, params: types.InlineCompletionParams
    ) -> list[types.InlineCompletionItem]:
        return await ls.inline_completion(params)

    @server.command(ACCEPT_COMMAND)
    async def on_accept(ls: GreentrackServer, completion_id: str) -> bool:
        return await _accept(ls, completion_id)


async def _accept(ls: GreentrackServer, completion_id: str) -> bool:
    """Marks ``completion_id`` accepted; False without a source, for an id that is not a string or not stored."""
    source = ls.source
    if source is None or not isinstance(completion_id, str):
        return False
    accepted = await source.accept(completion_id)
    if not accepted:
        log.warning("accept: no completion %s in the database", completion_id)
    return accepted


def _add_shutdown_feature(server: GreentrackServer) -> None:
    """``shutdown``: the completion in flight stopped, what is pending stored, the model released."""

    @server.feature(types.SHUTDOWN)
    async def on_shutdown(ls: GreentrackServer, params: None) -> None:
        await ls.shutdown_source()


def serve_stdio(settings: Settings, remote: RemoteOptions | None = None) -> int:
    """Serve over stdio until the client closes it or sends ``exit``; returns the exit status.

    0 at the end of the stream or on ``exit`` after ``shutdown``; 1 on ``exit`` without it, and when the stream
    lost its framing (a bad ``Content-Length``): logged on one line, then the editor restarts the server.
    Logs (greentrack's INFO and up, one line each) go to stderr only: the editor shows stderr (the extension in its
    output channel, each line at its level), so forwarding them as ``window/logMessage`` too would show each twice.
    """
    server = build_server(settings, remote)
    if not logging.getLogger().handlers:  # run outside the command line
        configure_logging()
    log_package_info()
    logging.getLogger("pygls").setLevel(logging.WARNING)
    if remote is not None:
        log.info("remote mode: completions from %s; no model loads here", remote.url)
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    status = 0
    try:
        lost = asyncio.run(serve(server.protocol, FrameReader(sys.stdin.fileno())))
        if lost is not None:
            log.error("stopping: the message stream from the client is broken (%s); the editor restarts the server",
                      lost)
            status = 1
    except SystemExit as e:  # the exit notification: 0 after shutdown, else 1 (pygls decides)
        status = e.code if isinstance(e.code, int) else 1
    except BrokenPipeError:
        log.error("the client closed the connection; stopping")
        status = 1
    finally:
        server.close()
    return status


def exit_now(status: int) -> None:
    """End the process at once with ``status``, once ``serve_stdio`` has returned (every record is stored and the
    database closed by then). The interpreter's own teardown (collecting the model's objects, joining library
    threads) took seconds, longer than editors wait after ``exit`` before they kill the server."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed by the client
            stream.flush()
    os._exit(status)
