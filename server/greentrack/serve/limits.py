"""An ASGI middleware that reads each request's body within a size and a time limit, before the app sees it.

Place in the flow: uvicorn → ``BodyLimit`` → the FastAPI app. A body over ``max_body_bytes`` is answered 413
(from its ``Content-Length`` before reading, or as soon as the bytes pass the limit), one that trickles slower
than ``read_timeout_s`` per chunk 408; the app then gets the whole body at once, and later ``receive`` calls
reach the client's connection again (so a handler can still wait for ``http.disconnect``). It also stamps the
request's arrival (``scope["state"]["received_s"]``, ``time.monotonic()``) for the latency figures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 10.0


async def send_error(send: Send, status: int, message: str) -> None:
    """A JSON error in the API's shape (``{"error": {"message", "type", "code"}}``), connection closed after."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        on_reject: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.on_reject = on_reject

    async def _reject(self, scope: Scope, send: Send, status: int, message: str) -> None:
        log.warning("%s %s → %d: %s", scope.get("method"), scope.get("path"), status, message)
        if self.on_reject is not None:
            self.on_reject(status)
        await send_error(send, status, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["received_s"] = time.monotonic()
        refusal = self._refuse_declared_length(scope)
        if refusal is not None:
            await self._reject(scope, send, *refusal)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        await self.app(scope, _replay_body(body, receive), send)

    def _refuse_declared_length(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the ``Content-Length`` header is not a number or over the limit, else None."""
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is None:
            return None
        try:
            length = int(declared)
        except ValueError:
            return 400, "Content-Length is not a number"
        if length > self.max_body_bytes:
            return 413, f"the body ({length} bytes) is over the limit of {self.max_body_bytes} bytes"
        return None

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, read within the limits; None once it has been refused or the client has left."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout_s)
            except TimeoutError:
                await self._reject(scope, send, 408, f"the body did not arrive within {self.read_timeout_s:g} s")
                return None
            if message["type"] == "http.disconnect":
                log.info("%s %s: the client left before sending its body", scope.get("method"), scope.get("path"))
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reject(scope, send, 413, f"the body is over the limit of {self.max_body_bytes} bytes")
                return None
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        return b"".join(chunks)


def _replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, once, then reaches the client's connection again."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
