"""The HTTP API (FastAPI): thin handlers over ``CompletionService``; every error one JSON shape and one log line.

Place in the flow: ``run`` wraps this app in ``limits.BodyLimit`` and serves it with uvicorn. Each handler
authenticates (``auth``), validates (``models``), calls the service and shapes the answer; nothing here knows
about engines or meters. Routes and fields: ``docs/interfaces.md`` ("HTTP API").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from greentrack import __version__
from greentrack.config import Settings
from greentrack.engine.prompt import validate
from greentrack.engine.types import CompletionRequest
from greentrack.errors import BadInput, GreentrackError, UsageError
from greentrack.serve.auth import Authenticator, Caller, Forbidden, Unauthorized
from greentrack.serve.metrics import CONTENT_TYPE
from greentrack.serve.models import (
    CompletionIdBody,
    NativeCompleteBody,
    OpenAICompletionBody,
    cut_at_stops,
    finish_reason,
    greentrack_object,
    openai_chunk,
    openai_completion,
)
from greentrack.serve.reports import weekly_report
from greentrack.serve.scheduler import QueueFull, SchedulerClosed
from greentrack.serve.service import ClientGone, CompletionService, Conflict, Generation, NotFound
from greentrack.serve.team import server_figures

log = logging.getLogger(__name__)

#: Longest long-poll a client may ask for (``?wait=``). Units: s.
MAX_WAIT_S = 30.0

_STATUS: tuple[tuple[type[GreentrackError], int], ...] = (
    (Unauthorized, 401), (Forbidden, 403), (NotFound, 404), (Conflict, 409), (QueueFull, 429),
    (SchedulerClosed, 503), (ClientGone, 499), (BadInput, 400), (UsageError, 400),
)


def _error(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"message": message, "type": kind, "code": status, **extra}}, status, headers)


def _validation_message(errors: list[Any]) -> tuple[int, str]:
    """(status, one line) for pydantic's errors: 400 for a body that is not JSON, else 422 naming the fields."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the body is not valid JSON"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def wait_disconnect(request: Request) -> None:
    """Resolves when the client closes the connection (the body was already read by ``BodyLimit``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _caller(request: Request) -> Caller:
    auth: Authenticator = request.app.state.auth
    return await asyncio.to_thread(auth.caller, request.headers.get("authorization"))


async def _admin(who: Annotated[Caller, Depends(_caller)]) -> Caller:
    if not who.admin:
        raise Forbidden("this needs an administrator's token")
    return who


#: Handler parameters: the authenticated caller (401 without a valid token), or an administrator (403 otherwise).
Who = Annotated[Caller, Depends(_caller)]
Admin = Annotated[Caller, Depends(_admin)]


def build_app(service: CompletionService, auth: Authenticator) -> FastAPI:
    """The app for one service; ``service.start`` runs in its lifespan (it needs the running loop)."""
    app = FastAPI(title="greentrack", version=__version__, lifespan=_lifespan(service), docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.auth = auth
    _add_error_handlers(app, service)
    _add_service_state_routes(app, service)
    _add_completion_routes(app, service)
    _add_after_suggestion_routes(app, service)
    return app


def _lifespan(service: CompletionService) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Starts the service on the server's loop, closes it once uvicorn has finished with the requests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start(asyncio.get_running_loop())
        yield
        # uvicorn has waited for (or cancelled) the in-flight requests; this must run before it re-raises SIGTERM
        await asyncio.to_thread(service.close)

    return lifespan


def _received_s(request: Request) -> float:
    """When ``BodyLimit`` saw the request arrive (monotonic s); now, where it did not say."""
    return float(request.scope.get("state", {}).get("received_s", time.monotonic()))


def _add_error_handlers(app: FastAPI, service: CompletionService) -> None:
    """Every error becomes one JSON shape (``_error``), one log line and one count in the metrics."""

    def failed(request: Request, status: int, message: str) -> JSONResponse:
        log.warning("%s %s → %d: %s", request.method, request.url.path, status, message)
        service.metrics.observe_error(status)
        return _error(status, message)

    @app.exception_handler(GreentrackError)
    async def on_domain_error(request: Request, exc: GreentrackError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        if status == 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return failed(request, status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and request.method == "POST":
            return failed(request, 415, f"send the body as JSON ('Content-Type: application/json', "
                                        f"not {content_type or 'none'!r})")
        status, message = _validation_message(list(exc.errors()))
        return failed(request, status, message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return failed(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected failure", request.method, request.url.path)
        return failed(request, 500, f"internal error: {type(exc).__name__}")


def _add_service_state_routes(app: FastAPI, service: CompletionService) -> None:
    """``/health``, ``/v1/models`` and ``/metrics``: what the server runs and how it is doing."""

    @app.get("/health")
    async def health() -> JSONResponse:
        monitor = service.pipeline.monitor
        replicas = service.replicas
        problem = None
        for pipeline in replicas.pipelines:
            sampler = pipeline.monitor.sampler
            if not problem and sampler is not None and (sampler.error or not sampler.running):
                problem = sampler.error or "the energy sampler stopped"
        body = {
            "status": "error" if problem else "ok", "reason": problem, "version": __version__,
            "model": service.model_id, "backend": service.pipeline.backend.name,
            "device": " + ".join(replicas.devices), "meter": " + ".join(p.monitor.meter_name for p in
                                                                        replicas.pipelines),
            "method": monitor.method,
            "queue_depth": service.scheduler.depth, "running": service.scheduler.running,
            "slots": service.scheduler.slots,
            # --suggestion-cache/--no-suggestion-cache as the pipeline runs it (Pipeline.use_suggestion_cache)
            "suggestion_cache": service.pipeline.suggestion_cache is not None,
            # greentrack serve --data-parallel-size: each replica's GPUs, meter, requests in flight and served
            "replicas": [{"device": p.backend.device, "meter": p.monitor.meter_name, "in_flight": in_flight,
                          "served": served}
                         for p, in_flight, served in zip(replicas.pipelines, replicas.in_flight(), replicas.served(),
                                                         strict=True)],
        }
        return JSONResponse(body, 503 if problem else 200)

    @app.get("/v1/models")
    async def models(who: Who) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "greentrack"}]}

    @app.get("/metrics")
    async def metrics(who: Admin) -> Response:
        service.metrics.queue_depth.set(service.scheduler.depth)
        service.metrics.running.set(service.scheduler.running)
        await asyncio.to_thread(service.energy_totals)  # the idle energy up to now, stored first
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)


def _request_limits(settings: Settings, max_tokens: int | None) -> dict[str, Any]:
    """The engine's budget for one request: the client's ``max_tokens`` or the server's, and its time limit."""
    return {"max_tokens": max_tokens or settings.max_tokens, "max_time_s": settings.max_time_ms / 1000.0,
            "context_tokens": settings.context_tokens}


def _green(generation: Generation) -> dict[str, Any]:
    """The ``greentrack`` object of an answer, with the URL that long-polls for its energy."""
    cid = generation.completion_id
    return greentrack_object(
        cid, generation.result, queue_ms=generation.queue_ms, latency_ms=generation.latency_ms,
        record=generation.record,
        energy_url=f"/v1/greentrack/completions/{cid}?wait=2" if generation.result is not None else None,
        timings_ms=generation.timings_ms,
    )


def _add_completion_routes(app: FastAPI, service: CompletionService) -> None:
    """``/v1/completions`` (OpenAI's shape, streamed or not) and ``/v1/greentrack/complete`` (the native one)."""
    settings = service.pipeline.settings

    @app.post("/v1/completions", response_model=None)
    async def completions(body: OpenAICompletionBody, request: Request, who: Who) -> dict[str, Any] | Response:
        if body.model != service.model_id:
            raise NotFound(f"model {body.model!r} is not served here (GET /v1/models: {service.model_id!r})")
        prompt, suffix = body.prompt_text, body.suffix or ""
        engine_request = CompletionRequest(
            request_id=str(uuid.uuid4()), document_key=f"openai\x00{who.developer}", text=prompt + suffix,
            offset=len(prompt), language_id="plaintext", **_request_limits(settings, body.max_tokens),
        )
        validate(engine_request.text, engine_request.offset)
        arrived = _received_s(request)
        if body.stream:
            return StreamingResponse(
                _stream(service, who, engine_request, body, arrived, _green),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Greentrack-Completion-Id": engine_request.request_id},
            )
        generation = await service.generate(who, engine_request, uri="openai:completions", received_s=arrived,
                                            disconnected=lambda: wait_disconnect(request))
        result = generation.result
        text, stopped = cut_at_stops(result.text if result is not None else "", body.stop_strings)
        finish = "stop" if stopped else finish_reason(result)
        return openai_completion(generation.completion_id, service.model_id, text, finish, result, _green(generation))

    @app.post("/v1/greentrack/complete")
    async def complete(body: NativeCompleteBody, request: Request, who: Who) -> dict[str, Any]:
        offset = body.cursor_offset()
        validate(body.text, offset)
        document = body.document_key or body.uri or "untitled"
        engine_request = CompletionRequest(
            request_id=body.completion_id or str(uuid.uuid4()), document_key=f"{who.developer}\x00{document}",
            text=body.text, offset=offset, language_id=body.language_id,
            **_request_limits(settings, body.max_tokens),
        )
        generation = await service.generate(who, engine_request, uri=body.uri or document,
                                            received_s=_received_s(request),
                                            disconnected=lambda: wait_disconnect(request), supersede=True)
        result = generation.result
        return {
            "completion_id": generation.completion_id,
            "text": result.text if result is not None and not result.cancelled else "",
            "cancelled": result is None or result.cancelled,
            "greentrack": _green(generation),
        }


def _add_after_suggestion_routes(app: FastAPI, service: CompletionService) -> None:
    """What follows a suggestion: its energy record, accept, cancel, and the weekly report."""
    settings = service.pipeline.settings

    @app.get("/v1/greentrack/completions/{completion_id}")
    async def completion_record(
        completion_id: str, who: Who, wait: Annotated[float, Query(ge=0.0, le=MAX_WAIT_S)] = 0.0
    ) -> dict[str, Any]:
        return await service.record(who, completion_id, wait_s=wait)

    @app.post("/v1/greentrack/accept")
    async def accept(body: CompletionIdBody, who: Who) -> dict[str, Any]:
        return {"completion_id": body.completion_id, "accepted": await service.accept(who, body.completion_id)}

    @app.post("/v1/greentrack/cancel")
    async def cancel(body: CompletionIdBody, who: Who) -> dict[str, Any]:
        return {"completion_id": body.completion_id, "cancelled": service.cancel(who, body.completion_id)}

    @app.get("/v1/greentrack/report")
    async def report(
        who: Who,
        week: str | None = None,
        tz: str | None = None,
        team: Annotated[bool | None, Query(alias="all")] = None,
        server: bool = False,
    ) -> Response:
        everyone = who.admin if team is None else team
        if (everyone or server) and not who.admin:
            raise Forbidden("the team's report needs an administrator's token")
        payload = await weekly_report(settings.db_path, developer=None if everyone else who.developer, week=week,
                                      tz=tz, carbon_intensity=settings.carbon_intensity)
        if server:  # the team's list beside the server's own figures (idle energy, utilisation, J per dev-hour)
            developers = payload if isinstance(payload, list) else [payload]
            totals = await asyncio.to_thread(service.energy_totals)
            figures = await asyncio.to_thread(server_figures, service.store, developers, totals)
            return JSONResponse({"developers": developers, "server": figures})
        return JSONResponse(payload)


async def _stream(
    service: CompletionService,
    who: Caller,
    engine_request: CompletionRequest,
    body: OpenAICompletionBody,
    arrived: float,
    green: Callable[[Generation], dict[str, Any]],
) -> AsyncIterator[str]:
    """SSE in OpenAI's chunk format: an empty first chunk at once (it carries the id, so the client can cancel),
    the text once the engine's stop rules have settled it, a last chunk with ``finish_reason``, ``usage`` and the
    ``greentrack`` object, then ``data: [DONE]``. Starlette cancels this generator when the client leaves,
    which cancels the generation."""
    cid, model, created = engine_request.request_id, service.model_id, int(time.time())
    yield _sse(openai_chunk(cid, model, created, "", None))
    try:
        generation = await service.generate(who, engine_request, uri="openai:completions", received_s=arrived)
    except GreentrackError as e:
        log.warning("POST /v1/completions (stream) %s: %s", cid, e)
        yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "code": 400}})
        yield "data: [DONE]\n\n"
        return
    result = generation.result
    text, stopped = cut_at_stops(result.text if result is not None else "", body.stop_strings)
    if text:
        yield _sse(openai_chunk(cid, model, created, text, None))
    usage = {"prompt_tokens": result.prompt_tokens if result else 0,
             "completion_tokens": result.completion_tokens if result else 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    finish = "stop" if stopped else finish_reason(result)
    yield _sse(openai_chunk(cid, model, created, "", finish, {"usage": usage, "greentrack": green(generation)}))
    yield "data: [DONE]\n\n"
