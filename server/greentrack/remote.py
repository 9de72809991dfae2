"""A client of ``greentrack serve``'s HTTP API, for the language server's remote mode (``greentrack lsp --server``).

Place in the flow: instead of running the in-process pipeline, the language server (``lsp/remote.py``) sends the
document and its cursor to ``POST /v1/greentrack/complete``, long-polls ``GET /v1/greentrack/completions/{id}``
for the final energy, and forwards acceptance and cancellation. Routes and fields: ``docs/interfaces.md``
("HTTP API"). Async (httpx), so the language server's event loop never waits on the network.

Failures come in two kinds: ``ServerUnreachable`` when the server cannot be reached or does not answer in time
(refused, reset, timed out, a 5xx or a 503 while it shuts down), and ``RemoteRefused`` when it answered but said
no (401 for a bad token, 4xx for a request it cannot serve). The token goes in the ``Authorization`` header and
nowhere else (never a log line).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from greentrack import __version__
from greentrack.errors import GreentrackError, UsageError
from greentrack.record import CompletionRecord, is_stored

log = logging.getLogger(__name__)

#: The environment variable holding the bearer token (``greentrack token add EMAIL`` prints one).
TOKEN_ENV = "GREENTRACK_TOKEN"
#: Connecting to the server (s): a server that does not accept a connection within this is unreachable.
CONNECT_TIMEOUT_S = 3.0
#: A completion's answer (s): the server's queue and generation time (its own budget is 1.5 s by default).
COMPLETE_TIMEOUT_S = 10.0
#: ``/health`` and the other short requests (s).
SHORT_TIMEOUT_S = 5.0
#: How long one long-poll for a completion's energy asks the server to wait (s); the server's limit is 30.
ENERGY_WAIT_S = 10.0


class ServerUnreachable(GreentrackError):
    """The server could not be reached, or did not answer in time, or is failing (5xx)."""


class RemoteRefused(GreentrackError):
    """The server answered with a refusal (4xx): ``status`` is the HTTP status, the message the server's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RemoteAnswer:
    """``POST /v1/greentrack/complete``'s answer. ``reached_model``: the server has (or will have) a record of it;
    False when it was cancelled while it waited (no record, as in-process)."""

    completion_id: str
    text: str
    cancelled: bool
    reached_model: bool


def server_url(url: str) -> str:
    """``url`` checked (``http``/``https`` with a host) and without a trailing slash; ``UsageError`` otherwise."""
    cleaned = url.strip().rstrip("/")
    parts = urlsplit(cleaned)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server must be an http:// or https:// URL with a host, not {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"--server takes the server's base URL, without a query or fragment: {url!r}")
    return cleaned


def read_token(token_file: Path | None) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``GREENTRACK_TOKEN``, else None (a loopback server
    without tokens). ``UsageError`` for a file that cannot be read or is empty."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as e:
            raise UsageError(f"--token-file {token_file}: {e.strerror or e}") from e
        if not token or not token[0].strip():
            raise UsageError(f"--token-file {token_file} is empty")
        return token[0].strip()
    return os.environ.get(TOKEN_ENV, "").strip() or None


def _describe(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "no answer in time" if not isinstance(error, httpx.ConnectTimeout) else "connection timed out"
    if isinstance(error, httpx.ConnectError):  # "All connection attempts failed" says no more than this
        return "connection refused" if "refused" in str(error).lower() else "cannot connect"
    return str(error) or type(error).__name__


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return str(message or response.text[:200] or response.reason_phrase)


class RemoteClient:
    """One server, one token, one pool of keep-alive connections. Use from one event loop."""

    def __init__(self, url: str, token: str | None, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = server_url(url)
        headers = {"User-Agent": f"greentrack-lsp/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(SHORT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            # The server closes idle keep-alive connections after 5 s: keep ours shorter, so a request never
            # starts on a connection the server is closing.
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=4, keepalive_expiry=4.0),
        )

    async def _call(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
                    timeout_s: float | None = None, missing_ok: bool = False) -> dict[str, Any] | None:
        """One request; its JSON answer (None for a 404 when ``missing_ok``)."""
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S) if timeout_s is not None else None
        try:
            if timeout is not None:
                response = await self._http.request(method, path, json=body, timeout=timeout)
            else:
                response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ServerUnreachable(f"{self.url}: {_describe(e)}") from e
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 500:
            raise ServerUnreachable(f"{self.url}: {response.status_code} {_server_message(response)}")
        if response.status_code >= 400:
            raise RemoteRefused(f"{self.url}{path}: {response.status_code} {_server_message(response)}",
                                response.status_code)
        try:
            answer = response.json()
        except ValueError as e:
            raise ServerUnreachable(f"{self.url}{path}: the answer is not JSON (is this a greentrack server?)") from e
        if not isinstance(answer, dict):
            raise ServerUnreachable(f"{self.url}{path}: the answer is not a JSON object")
        return answer

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (no token needed): the server's model, backend, device and meter. A server whose energy
        sampler stopped answers 503 with its reason: that is reachable, and returned as it is."""
        try:
            response = await self._http.get("/health")
        except httpx.HTTPError as e:
            raise ServerUnreachable(f"{self.url}: {_describe(e)}") from e
        try:
            body = response.json()
        except ValueError as e:
            raise ServerUnreachable(f"{self.url}/health answered {response.status_code}, not JSON") from e
        if not isinstance(body, dict) or "status" not in body:
            raise ServerUnreachable(f"{self.url}/health: not a greentrack server's answer")
        return body

    async def check_token(self) -> None:
        """``GET /v1/models``: ``RemoteRefused`` (401) when the server refuses the token (or needs one)."""
        await self._call("GET", "/v1/models")

    async def complete(self, body: Mapping[str, Any]) -> RemoteAnswer:
        """``POST /v1/greentrack/complete`` with the document, cursor and a client-chosen ``completion_id``."""
        answer = await self._call("POST", "/v1/greentrack/complete", body=body, timeout_s=COMPLETE_TIMEOUT_S)
        assert answer is not None
        green = answer.get("greentrack") or {}
        return RemoteAnswer(
            completion_id=str(answer.get("completion_id") or body.get("completion_id") or ""),
            text=str(answer.get("text") or ""),
            cancelled=bool(answer.get("cancelled")),
            reached_model=isinstance(green, dict) and green.get("energy_url") is not None,
        )

    async def record(self, completion_id: str, wait_s: float = ENERGY_WAIT_S) -> dict[str, Any] | None:
        """The completion's record, waiting up to ``wait_s`` for its energy (``energy_final``); None when the
        server has none (cancelled before it reached the model)."""
        return await self._call("GET", f"/v1/greentrack/completions/{completion_id}?wait={wait_s:g}",
                                timeout_s=wait_s + SHORT_TIMEOUT_S, missing_ok=True)

    async def accept(self, completion_id: str) -> bool:
        answer = await self._call("POST", "/v1/greentrack/accept", body={"completion_id": completion_id},
                                  timeout_s=15.0, missing_ok=True)
        return bool(answer and answer.get("accepted"))

    async def cancel(self, completion_id: str) -> bool:
        answer = await self._call("POST", "/v1/greentrack/cancel", body={"completion_id": completion_id},
                                  missing_ok=True)
        return bool(answer and answer.get("cancelled"))

    async def aclose(self) -> None:
        await self._http.aclose()


#: What a mirrored row takes from the server's record: every stored field of ``CompletionRecord``.
_STORED_FIELDS = tuple(f.name for f in fields(CompletionRecord) if is_stored(f))


def record_from_view(view: Mapping[str, Any], *, served_by: str, text: str | None = None) -> CompletionRecord:
    """The server's record of a completion (``GET /v1/greentrack/completions/{id}``) as a row of the local database,
    marked ``served_by`` the server. Its figures and ``developer`` are the server's, the engine-step figures
    (``steps``, ``batched_steps``, ``mean_batch_size``) included, so a local report shows the batched-steps line of
    remote completions too. A field an older server's record lacks (those, the ``interval_*`` ones) stays None.
    ``GreentrackError`` when the server's record lacks a field the row needs."""
    values: dict[str, Any] = {name: view[name] for name in _STORED_FIELDS if name in view}
    values["accepted"] = int(bool(values.get("accepted", 0)))
    values["served_by"] = served_by
    values["text"] = text
    try:
        return CompletionRecord(**values)
    except TypeError as e:
        raise GreentrackError(f"{served_by}: the record of {view.get('completion_id')!r} is incomplete ({e})") from e
