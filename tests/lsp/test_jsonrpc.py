"""The transport's checks without a server: framing over a real pipe, and the JSON-RPC envelope rules."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from greentrack.lsp.jsonrpc import (
    BodyPending,
    FrameReader,
    FramingError,
    ReaderItem,
    Rejection,
    check_envelope,
)


def read_all(data: bytes) -> list[ReaderItem]:
    """Everything a ``FrameReader`` delivers for ``data`` written to a pipe, then closed."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    items: list[ReaderItem] = []

    def deliver(item: ReaderItem) -> bool:
        items.append(item)
        return True

    try:
        FrameReader(read_fd, chunk_bytes=7).pump(deliver)  # small reads on purpose
    finally:
        writer.join()
        os.close(read_fd)
    return items


def bodies(items: list[ReaderItem]) -> Iterator[bytes]:
    return (item for item in items if isinstance(item, bytes))


def test_well_formed_frames_in_the_forms_clients_write() -> None:
    items = read_all(
        b"Content-Length: 2\r\n\r\n{}"
        b"Content-Length: 7\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n[1,2,3]"
        b"content-length:4\n\nnull"  # any case, no space, LF line ends: unambiguous, accepted
        b"\r\nContent-Length: 4\r\n\r\n\"\xc3\xa9\""  # a stray blank line between messages
    )
    assert list(bodies(items)) == [b"{}", b"[1,2,3]", b"null", b'"\xc3\xa9"']
    assert [i.length_bytes for i in items if isinstance(i, BodyPending)] == [2, 7, 4, 4]
    assert items[-1] is None


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"Content-Length: abc\r\n\r\n{}", "not a byte count"),
        (b"Content-Length: -5\r\n\r\n{}", "not a byte count"),
        (b"Content-Type: x\r\n\r\n{}", "without a Content-Length"),
        (b"Content-Length: 99999999999\r\n\r\n{}", "over the limit"),
        (b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "two different"),
        (b"hello\r\n\r\n{}", "malformed header line"),
        (b"Content-Length: 4\r\n\r\n{\"a\": 1}Content-Length: 2\r\n\r\n{}", "cannot start a header"),  # too small
        (b"Content-Length: 10\r\n\r\n{}", "ended 2 bytes into a body of 10"),
        (b"X" * 2000, "longer than"),
    ],
)
def test_broken_framing_is_detected(stream: bytes, reason: str) -> None:
    items = read_all(stream)
    error = items[-1]
    assert isinstance(error, FramingError) and reason in str(error), items
    assert '"a"' not in str(error)  # never the body's bytes (they may be the user's source text)


def test_end_of_stream_between_messages_is_not_an_error() -> None:
    assert read_all(b"") == [None]
    assert read_all(b"Content-Length: 2\r\n\r\n{}\r\n") == [BodyPending(2), b"{}", None]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("abc", Rejection(None, -32600, "a message must be a JSON object, not a string")),
        ([1, 2], Rejection(None, -32600, "batches (JSON arrays) are not supported: one message per frame")),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"},
         Rejection(None, -32600, "id must be an integer or a string, not an object")),
        ({"jsonrpc": "2.0", "id": True, "method": "x"},
         Rejection(None, -32600, "id must be an integer or a string, not a boolean")),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "x"},
         Rejection(None, -32600, "id must be an integer or a string, not a number")),
        ({"id": 3, "method": "x"}, Rejection(3, -32600, 'jsonrpc must be "2.0"')),
        ({"method": "x"}, Rejection(None, -32600, 'jsonrpc must be "2.0"', answer=False)),  # a notification
        ({"jsonrpc": "2.0", "id": 4, "method": 5}, Rejection(4, -32600, "method must be a string, not a number")),
        ({"jsonrpc": "2.0", "id": 5}, Rejection(5, -32600, "no method (a request) nor result or error (a response)")),
        ({"jsonrpc": "2.0", "id": "s", "method": "x", "params": "p"},
         Rejection("s", -32602, "params must be an object or an array, not a string")),
    ],
)
def test_envelope_rejections(data: object, expected: Rejection) -> None:
    assert check_envelope(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "shutdown"},
        {"jsonrpc": "2.0", "id": "a", "method": "x", "params": None},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "id": 9, "result": None},
        {"jsonrpc": "2.0", "id": 9, "error": {"code": 1, "message": "m"}},
    ],
)
def test_valid_envelopes_pass(data: object) -> None:
    assert check_envelope(data) is None
