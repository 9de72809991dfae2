"""The language server's stdio transport: framing checks, and an answer to every request.

Place in the flow: the editor writes framed messages (``Content-Length: N`` CRLF CRLF, then N bytes of JSON) to
the server's stdin. ``FrameReader``, on a thread, cuts the stream into bodies; ``serve`` hands each body to
``GreentrackProtocol.receive``, which parses and checks it, then passes it to pygls's dispatch, or answers a
request that cannot be handled with a JSON-RPC error (docs/interfaces.md, "Language server protocol"):

- -32700 parse error: the body is not UTF-8 JSON (id null).
- -32600 invalid request: not a JSON object, an id that is neither an integer nor a string (id null), no
  ``"jsonrpc": "2.0"``, a method that is not a string, a notification's method sent with an id, a request after
  ``shutdown``.
- -32601 method not found; -32002 server not initialized (a request before ``initialize``).
- -32602 invalid params: params that do not fit the method (``null``, a negative or 2**40 position, ...).

Each is one warning line in the log (no traceback, no document text). This replaces pygls's ``io_.run_async``,
which drops such requests unanswered (the client waits for ever) and, after one bad header, never finds a message
again. A header that breaks the framing (no or a malformed ``Content-Length``, a body that runs into the next
message or never arrives) cannot be recovered from: ``serve`` returns the ``FramingError``, the server logs it
and exits 1, and the editor starts a fresh server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import attrs
import cattrs
from cattrs.v import format_exception
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
    RPCRequest,
)

log = logging.getLogger("greentrack.lsp")

MsgId: TypeAlias = int | str

#: A body larger than this is taken for a broken header (a 5 MB document is about 5 MB of JSON).
MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_HEADER_LINE_BYTES = 1024
MAX_HEADERS = 16
#: Editors write a header and its body together: a body still missing this long after its header means the
#: Content-Length was larger than what was sent.
BODY_TIMEOUT_S = 10.0
#: Longest detail (from a validation error) put into an error message or a log line.
MAX_DETAIL_CHARS = 300

_HEADER_NAME = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_DIGITS = re.compile(rb"[0-9]+")
#: Raw header bytes cannot occur in valid JSON (a string holds no raw line break): seen in a body that does not
#: parse, they show the body ran into the next message.
_HEADER_IN_BODY = re.compile(rb"content-length[ \t]*:[ \t]*[0-9]+\r?\n", re.IGNORECASE)


class FramingError(Exception):
    """The stream lost its framing: where the next message starts can no longer be known."""


@dataclass(frozen=True)
class BodyPending:
    """A message's headers were read; ``length_bytes`` of body are awaited (the event loop times the wait)."""

    length_bytes: int


#: What the reader thread hands to the event loop: a body, a pending body, a framing error, or None (end).
ReaderItem: TypeAlias = bytes | BodyPending | FramingError | None


def _content_length(line: bytes, length: int | None) -> int | None:
    """Check one header line; return the body length known after it (``length``, the line's Content-Length)."""
    name, colon, value = line.partition(b":")
    if not colon or not _HEADER_NAME.fullmatch(name):
        raise FramingError(f"a malformed header line ({len(line)} bytes, not 'Name: value')")
    if name.lower() != b"content-length":
        return length  # Content-Type and the like
    found = _byte_count(value.strip())
    if length is not None and found != length:
        raise FramingError(f"two different Content-Length headers ({length} and {found})")
    return found


def _byte_count(value: bytes) -> int:
    """A Content-Length value: digits only, at most ``MAX_BODY_BYTES``."""
    if not _DIGITS.fullmatch(value):
        shown = repr(value.decode("ascii", "replace")) if len(value) <= 20 else f"{len(value)} bytes"
        raise FramingError(f"Content-Length is not a byte count: {shown}")
    if (found := int(value)) > MAX_BODY_BYTES:
        raise FramingError(f"Content-Length {found} is over the limit of {MAX_BODY_BYTES} bytes")
    return found


class FrameReader:
    """Cuts a byte stream (a file descriptor) into message bodies by their headers (the LSP base protocol).

    Header names are matched without regard to case and line ends may be CRLF or LF; anything else that is not
    ``name: value`` before the blank line, a missing or non-numeric ``Content-Length``, or one over
    ``MAX_BODY_BYTES`` raises ``FramingError``. Reads with ``os.read`` into its own buffer: no lock of Python's
    buffered files is held while it waits, so a reader blocked on a silent client never keeps the process alive.
    """

    def __init__(self, fd: int, chunk_bytes: int = 1 << 16) -> None:
        self.fd = fd
        self.chunk_bytes = chunk_bytes
        self._buffer = bytearray()

    def _fill(self, want_bytes: int = 0) -> bool:
        # os.read allocates what it is asked for: a large body is read in pieces of at most 1 MiB
        data = os.read(self.fd, max(self.chunk_bytes, min(want_bytes, 1 << 20)))
        self._buffer += data
        return bool(data)

    def _line(self) -> bytes | None:
        """The next line without its line end; None at the end of the stream."""
        while (end := self._buffer.find(b"\n", 0, MAX_HEADER_LINE_BYTES + 1)) < 0:
            if len(self._buffer) > MAX_HEADER_LINE_BYTES:
                raise FramingError(f"a header line longer than {MAX_HEADER_LINE_BYTES} bytes (not a header)")
            name, colon, _ = bytes(self._buffer).partition(b":")
            if (colon or name.rstrip(b"\r")) and not _HEADER_NAME.fullmatch(name.rstrip(b"\r")):
                # the rest of a body where a header should start: no need to wait for its line to end
                raise FramingError("bytes that cannot start a header line (the Content-Length before was too small?)")
            if not self._fill():
                if self._buffer.strip():
                    raise FramingError(f"the stream ended inside a header line ({len(self._buffer)} bytes)")
                return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.removesuffix(b"\r")

    def headers(self) -> int | None:
        """Read one message's headers: the body's length in bytes, or None at the end of the stream.

        Steps: stray blank lines before the first header are skipped; each header line is checked and a
        Content-Length read (``_content_length``); the blank line after them ends the headers.
        """
        length: int | None = None
        count = 0
        while True:
            line = self._line()
            if line is None:
                if count:
                    raise FramingError("the stream ended inside a message's headers")
                return None
            if not line.strip():
                if count == 0:
                    continue  # a stray blank line between messages
                if length is None:
                    raise FramingError("a message without a Content-Length header")
                return length
            count += 1
            if count > MAX_HEADERS:
                raise FramingError(f"more than {MAX_HEADERS} header lines")
            length = _content_length(line, length)

    def body(self, length_bytes: int) -> bytes:
        """Exactly ``length_bytes`` of body; ``FramingError`` when the stream ends before them."""
        while len(self._buffer) < length_bytes:
            if not self._fill(length_bytes - len(self._buffer)):
                raise FramingError(
                    f"the stream ended {len(self._buffer)} bytes into a body of {length_bytes} (Content-Length)"
                )
        body = bytes(self._buffer[:length_bytes])
        del self._buffer[:length_bytes]
        return body

    def pump(self, deliver: Callable[[ReaderItem], bool]) -> None:
        """Read until the end of the stream or a framing error, handing every item to ``deliver``; the last
        is None (the end) or the ``FramingError``. Stops early when ``deliver`` returns False."""
        try:
            while (length := self.headers()) is not None:
                if not deliver(BodyPending(length)) or not deliver(self.body(length)):
                    return
        except FramingError as e:
            deliver(e)
            return
        except OSError as e:
            deliver(FramingError(f"cannot read the client's messages: {e.strerror or e}"))
            return
        deliver(None)


@dataclass(frozen=True)
class Rejection:
    """A message that cannot be handled: the error to answer with (``answer``: only where one may be sent)."""

    msg_id: MsgId | None
    code: int
    message: str
    answer: bool = True


def _kind(value: Any) -> str:
    """The JSON type of ``value``, for messages ("a string", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _is_msg_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def check_envelope(data: Any) -> Rejection | None:
    """What is wrong with a parsed message's JSON-RPC envelope (None: nothing); params are checked later.

    A request (``method`` and ``id``) is answered with its id; a message whose id cannot be known (not an
    object, an id of the wrong type) with id null; a notification never (it is only logged).
    """
    invalid = types.ErrorCodes.InvalidRequest
    if isinstance(data, list):
        return Rejection(None, invalid, "batches (JSON arrays) are not supported: one message per frame")
    if not isinstance(data, dict):
        return Rejection(None, invalid, f"a message must be a JSON object, not {_kind(data)}")
    if "id" in data and not _is_msg_id(data["id"]):
        return Rejection(None, invalid, f"id must be an integer or a string, not {_kind(data['id'])}")
    msg_id = data.get("id")
    is_notification = msg_id is None and isinstance(data.get("method"), str)
    if data.get("jsonrpc") != "2.0":
        return Rejection(msg_id, invalid, 'jsonrpc must be "2.0"', answer=not is_notification)
    if "method" in data and not isinstance(data["method"], str):
        return Rejection(msg_id, invalid, f"method must be a string, not {_kind(data['method'])}")
    if "method" not in data and ("id" not in data or not ("result" in data or "error" in data)):
        return Rejection(msg_id, invalid, "no method (a request) nor result or error (a response)")
    params = data.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        return Rejection(
            msg_id, types.ErrorCodes.InvalidParams, f"params must be an object or an array, not {_kind(params)}",
            answer=not is_notification,
        )
    return None


def _leaf_message(error: BaseException, type_: type | None) -> str:
    if isinstance(error, ValueError):  # lsprotocol's validators say what was wrong, e.g. a position's range
        return str(error).rstrip(".")
    return format_exception(error, type_)


def describe_structure_error(error: Exception) -> str:
    """One line saying which fields did not fit (cattrs paths such as ``$.params.position``)."""
    if isinstance(error, cattrs.ClassValidationError):
        text = "; ".join(cattrs.transform_error(error, format_exception=_leaf_message))
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def _parse_problem(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"the body is not UTF-8 ({error.reason} at byte {error.start})"
    if isinstance(error, json.JSONDecodeError):
        return f"the body is not JSON ({error.msg} at byte {error.pos})"
    return "the body is nested too deeply"


class GreentrackProtocol(LanguageServerProtocol):
    """pygls's LSP protocol that answers every request it cannot handle with a JSON-RPC error (one log line)."""

    initialize_received = False

    def receive(self, body: bytes) -> FramingError | None:
        """Handle one message body. Returns a ``FramingError`` when the body shows the framing was lost."""
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if _HEADER_IN_BODY.search(body):
                return FramingError(
                    f"a body of {len(body)} bytes (Content-Length) ran into the next message's header"
                )
            self.reject(Rejection(None, types.ErrorCodes.ParseError, _parse_problem(e)))
            return None
        self.dispatch(data)
        return None

    def dispatch(self, data: Any) -> None:
        """Check a parsed message, then hand it to pygls's handlers, or answer (or log) why it cannot be."""
        if (rejection := check_envelope(data)) is not None:
            self.reject(rejection)
            return
        method: str | None = data.get("method")
        if method is None:  # a response to one of our requests
            self._dispatch_typed(data, None)
            return
        is_request = "id" in data
        if not is_request:
            if self._drops_notification(method):
                return
        elif (rejection := self._request_rejection(data["id"], method)) is not None:
            self.reject(rejection)
            return
        self._dispatch_typed({"params": None, **data}, method)

    def _drops_notification(self, method: str) -> bool:
        if method == types.EXIT:
            return False
        if self._shutdown or not self.initialize_received:
            log.debug("notification %s dropped: the server is %s", method,
                      "shutting down" if self._shutdown else "not initialized yet")
            return True
        kind = self.get_message_type(method)
        if kind is not None and "id" in attrs.fields_dict(kind):
            log.warning("ignored %s: a request sent without an id", method)
            return True
        return False

    def _request_rejection(self, msg_id: MsgId, method: str) -> Rejection | None:
        if self._shutdown:
            return Rejection(msg_id, types.ErrorCodes.InvalidRequest, f"{method}: the server is shutting down")
        if method != types.INITIALIZE and not self.initialize_received:
            return Rejection(msg_id, types.ErrorCodes.ServerNotInitialized, f"{method} before initialize")
        if method not in self.fm.builtin_features and method not in self.fm.features:
            return Rejection(msg_id, types.ErrorCodes.MethodNotFound, f"method not found: {method}")
        return None

    def _dispatch_typed(self, data: dict[str, Any], method: str | None) -> None:
        msg_id = data.get("id")
        try:
            message = self.structure_message(data)
        except Exception as e:  # params (or a response's result) that do not fit the method's types
            detail = describe_structure_error(e)
            if method is None:
                log.warning("ignored a response to %r: %s", msg_id, detail)
            elif msg_id is None:
                log.warning("ignored %s notification: invalid params: %s", method, detail)
            else:
                self.reject(Rejection(msg_id, types.ErrorCodes.InvalidParams, f"invalid params for {method}: {detail}"))
            return
        if method is not None and msg_id is not None and not isinstance(message, RPCRequest):
            self.reject(Rejection(msg_id, types.ErrorCodes.InvalidRequest, f"{method} is a notification: no id"))
            return
        if method == types.INITIALIZE:
            self.initialize_received = True
        try:
            self.handle_message(message)
        except Exception as e:  # pygls answers a failing handler itself; this is a failure before it ran
            detail = describe_structure_error(e)
            if method is not None and msg_id is not None:
                self.reject(Rejection(msg_id, types.ErrorCodes.InternalError, f"{method} failed: {detail}"))
            else:
                log.warning("ignored %s: %s", method or f"a response to {msg_id!r}", detail)

    def structure_message(self, data: dict[str, Any]) -> Any:
        """The typed message for ``data`` (an envelope ``check_envelope`` passed). Raises when the params do not
        fit; logs nothing (pygls's version logs a traceback and is built for ``json.loads``'s object hook)."""
        if "jsonrpc" not in data:  # a nested object, when used as an object hook
            return data
        if "method" not in data:
            if "error" in data:
                return self._converter.structure(data, types.ResponseErrorMessage)
            response_type = self._result_types.pop(data["id"], None) or JsonRPCResponseMessage
            return self._converter.structure(data, response_type)
        fallback = JsonRPCRequestMessage if "id" in data else JsonRPCNotification
        return self._converter.structure(data, self.get_message_type(data["method"]) or fallback)

    def reject(self, rejection: Rejection) -> None:
        """Answer (where one may) with the JSON-RPC error; one warning line either way."""
        code = int(rejection.code)
        if not rejection.answer:
            log.warning("ignored a message: %s", rejection.message)
            return
        who = "a message with no usable id" if rejection.msg_id is None else f"request {rejection.msg_id!r}"
        log.warning("answered %s with error %d: %s", who, code, rejection.message)
        # pygls has no public call for a raw response; _send_data frames and writes it like any other message.
        self._send_data(
            {"jsonrpc": "2.0", "id": rejection.msg_id, "error": {"code": code, "message": rejection.message}}
        )


async def serve(protocol: GreentrackProtocol, reader: FrameReader) -> FramingError | None:
    """Read and handle messages until the end of the stream (None) or a framing error (returned).

    ``exit`` ends it too: pygls raises ``SystemExit`` from its handler, which propagates from here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ReaderItem] = asyncio.Queue()
    closed = threading.Event()

    def deliver(item: ReaderItem) -> bool:
        if closed.is_set():
            return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            return False
        return True

    threading.Thread(target=reader.pump, args=(deliver,), name="greentrack-stdin", daemon=True).start()
    body_timer: asyncio.TimerHandle | None = None
    try:
        while True:
            item = await queue.get()
            if body_timer is not None:
                body_timer.cancel()
                body_timer = None
            if isinstance(item, BodyPending):
                late = FramingError(
                    f"no body of {item.length_bytes} bytes (Content-Length) within {BODY_TIMEOUT_S:g} s of its header"
                )
                body_timer = loop.call_later(BODY_TIMEOUT_S, queue.put_nowait, late)
            elif isinstance(item, bytes):
                if (lost := protocol.receive(item)) is not None:
                    return lost
            else:
                return item
    finally:
        closed.set()
        if body_timer is not None:
            body_timer.cancel()
