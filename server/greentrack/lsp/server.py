"""The language server (pygls 2): inline completions with energy, acceptance and cancellation.

Thin handlers over ``greentrack.pipeline``. The model loads on a background thread after ``initialized``
(``greentrack/status``: starting → ready | error); the event loop never blocks: generation runs on one
worker thread (one generation at a time), energy attribution and storage on another, and the
``greentrack/energy`` notification follows each completion that reached the model.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lsprotocol import types
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from greentrack import __version__
from greentrack.config import Settings, read_client_settings
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.errors import BadInput, GreentrackError
from greentrack.logs import OneLineFormatter, configure_logging, log_package_info, tracebacks_enabled
from greentrack.lsp.jsonrpc import FrameReader, GreentrackProtocol, serve
from greentrack.lsp.protocol import (
    ACCEPT_COMMAND,
    ENERGY_NOTIFICATION,
    RELOAD_FIELDS,
    STATUS_NOTIFICATION,
    completion_position_error,
)
from greentrack.pipeline import Pipeline, RequestContext, open_pipeline
from greentrack.record import CompletionRecord

log = logging.getLogger("greentrack.lsp")


class GreentrackServer(LanguageServer):
    """pygls server holding the settings, the pipeline (once loaded) and the per-document cancel tokens."""

    protocol: GreentrackProtocol

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            "greentrack", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=GreentrackProtocol,
        )
        self.settings = settings
        self.pipeline: Pipeline | None = None
        self.state = "starting"
        self.state_message = "loading the model"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tokens: dict[str, CancelToken] = {}
        self._model_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greentrack-model")
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

    # -- model lifecycle -------------------------------------------------------------------------------
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
                old, self.pipeline = self.pipeline, pipeline
            if old is not None:
                self._model_worker.submit(old.close)
            self.set_status(
                "ready",
                f"{pipeline.backend.model_id} on {pipeline.backend.device}; energy: {pipeline.monitor.meter_name}",
            )

        threading.Thread(target=job, name="greentrack-load", daemon=True).start()

    def apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        if self.pipeline is not None:
            self.pipeline.settings = new
        if any(getattr(old, f) != getattr(new, f) for f in RELOAD_FIELDS):
            self.load_in_background()

    def close(self) -> None:
        """After the last message: finish the generation in flight, write pending records, close the model."""
        with self._load_lock:
            self._load_generation += 1  # a load still running closes what it loaded
            pipeline, self.pipeline = self.pipeline, None
        self._model_worker.shutdown(wait=True)
        if pipeline is not None:
            pipeline.close()

    # -- completion --------------------------------------------------------------------------------------
    def supersede(self, uri: str) -> CancelToken:
        """A new request for ``uri`` cancels the one before it."""
        previous = self._tokens.get(uri)
        if previous is not None:
            previous.cancel()
        token = CancelToken()
        self._tokens[uri] = token
        return token

    def notify_energy(self, record: CompletionRecord) -> None:
        self.send(ENERGY_NOTIFICATION, record.energy_fields())

    def finalize_in_background(self, pipeline: Pipeline, result: EngineResult, context: RequestContext) -> None:
        def done(future: Future[CompletionRecord]) -> None:
            if (error := future.exception()) is not None:
                log.error("could not log completion %s: %s", result.request_id, error)

        pipeline.finalize_later(result, context, on_done=self.notify_energy).add_done_callback(done)

    async def inline_completion(self, params: types.InlineCompletionParams) -> list[types.InlineCompletionItem]:
        received_s = time.monotonic()
        pipeline, settings = self.pipeline, self.settings
        if pipeline is None or not settings.enabled:
            return []
        uri = params.text_document.uri
        if uri not in self.workspace.text_documents:
            log.warning("inline completion for %s, which was never opened: ignored", uri)
            return []
        document = self.workspace.get_text_document(uri)
        if (problem := completion_position_error(document.lines, params.position)) is not None:
            log.warning("inline completion for %s: %s", uri, problem)
            return []
        text = document.source
        offset = document.offset_at_position(params.position)
        token = self.supersede(uri)
        pipeline.monitor.expect_work()  # the meter starts sampling during the debounce, before the prefill
        try:
            await asyncio.sleep(settings.debounce_ms / 1000.0)
        except asyncio.CancelledError:
            token.cancel()
            raise
        if token.cancelled:
            return []
        request = CompletionRequest(
            request_id=str(uuid.uuid4()),
            document_key=uri,
            text=text,
            offset=offset,
            language_id=document.language_id or "plaintext",
            max_tokens=settings.max_tokens,
            max_time_s=settings.max_time_ms / 1000.0,
            context_tokens=settings.context_tokens,
        )
        context = RequestContext(uri, request.language_id, received_s)

        def run() -> EngineResult | None:
            if token.cancelled:  # superseded while queued: it never reaches the model
                return None
            return pipeline.run(request, token)

        future = asyncio.get_running_loop().run_in_executor(self._model_worker, run)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:  # $/cancelRequest: stop within one decode step, still log the energy
            token.cancel()
            future.add_done_callback(lambda f: self._log_after_cancel(f, pipeline, context))
            raise
        except BadInput as e:
            log.warning("inline completion for %s: %s", uri, e)
            return []
        if result is None:
            return []
        self.finalize_in_background(pipeline, result, context)
        if self._tokens.get(uri) is token:
            del self._tokens[uri]
        if result.cancelled or not result.text:
            return []
        position = params.position
        return [
            types.InlineCompletionItem(
                insert_text=result.text,
                range=types.Range(start=position, end=position),
                command=types.Command(title="Accept", command=ACCEPT_COMMAND, arguments=[result.request_id]),
            )
        ]

    def _log_after_cancel(
        self, future: asyncio.Future[EngineResult | None], pipeline: Pipeline, context: RequestContext
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if result is not None:
            result.cancelled = True
            self.finalize_in_background(pipeline, result, context)


def apply_client_settings(ls: GreentrackServer, options: dict[str, Any]) -> Settings:
    """The client's settings on top of the current ones; each one the server cannot use is logged and shown."""
    settings, problems = read_client_settings(options, ls.settings)
    for problem in problems:
        log.warning("%s", problem)
        message = types.ShowMessageParams(type=types.MessageType.Warning, message=f"greentrack: {problem}")
        ls.window_show_message(message)
    return settings


def build_server(settings: Settings) -> GreentrackServer:
    """The server with its features registered (separate from I/O so tests can drive it)."""
    server = GreentrackServer(settings)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: GreentrackServer, params: types.InitializeParams) -> None:
        options = params.initialization_options
        if isinstance(options, dict):
            ls.settings = apply_client_settings(ls, options)

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: GreentrackServer, params: types.InitializedParams) -> None:
        ls.loop = asyncio.get_running_loop()
        ls.load_in_background()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: GreentrackServer, params: types.DidChangeConfigurationParams) -> None:
        if isinstance(params.settings, dict):
            ls.apply_settings(apply_client_settings(ls, params.settings))

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def on_inline_completion(
        ls: GreentrackServer, params: types.InlineCompletionParams
    ) -> list[types.InlineCompletionItem]:
        return await ls.inline_completion(params)

    @server.command(ACCEPT_COMMAND)
    async def on_accept(ls: GreentrackServer, completion_id: str) -> bool:
        pipeline = ls.pipeline
        if pipeline is None or not isinstance(completion_id, str):
            return False
        accepted = await asyncio.get_running_loop().run_in_executor(None, pipeline.accept, completion_id)
        if not accepted:
            log.warning("accept: no completion %s in the database", completion_id)
        return accepted

    @server.feature(types.SHUTDOWN)
    def on_shutdown(ls: GreentrackServer, params: None) -> None:
        if ls.pipeline is not None:
            ls.pipeline.close()
            ls.pipeline = None

    return server


class _ClientLogHandler(logging.Handler):
    """Forwards warnings and errors to the client's output channel (``window/logMessage``)."""

    def __init__(self, server: GreentrackServer) -> None:
        super().__init__(level=logging.INFO)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        kind = types.MessageType.Error if record.levelno >= logging.ERROR else (
            types.MessageType.Warning if record.levelno >= logging.WARNING else types.MessageType.Info
        )
        try:
            self.server.send(
                types.WINDOW_LOG_MESSAGE, types.LogMessageParams(type=kind, message=self.format(record))
            )
        except Exception:  # logging must never fail the server
            self.handleError(record)


def serve_stdio(settings: Settings) -> int:
    """Serve over stdio until the client closes it or sends ``exit``; returns the exit status.

    0 at the end of the stream or on ``exit`` after ``shutdown``; 1 on ``exit`` without it, and when the stream
    lost its framing (a bad ``Content-Length``): logged on one line, then the editor restarts the server.
    Logs (greentrack's INFO and up, one line each) go to stderr and to the client.
    """
    server = build_server(settings)
    if not logging.getLogger().handlers:  # run outside the command line
        configure_logging()
    log_package_info()
    client_handler = _ClientLogHandler(server)
    client_handler.setFormatter(OneLineFormatter("%(name)s: %(message)s", tracebacks=tracebacks_enabled()))
    logging.getLogger("greentrack").addHandler(client_handler)
    logging.getLogger("pygls").setLevel(logging.WARNING)
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
