"""The real ``greentrack lsp`` over stdio, fed what a well-behaved client never sends, and killed mid-session.

Every malformed request gets a JSON-RPC error (and one log line); a broken ``Content-Length`` ends the process
with one log line (the editor restarts it); INFO lines reach the log; the source text is stored and logged
nowhere; ``kill -9`` loses no committed row and the next start on the same database works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.lsp.support import StdioServer, frame
from tests.lsp.test_lsp_server import AREA, NUMBERS
from tests.store.store_records import make_record

from greentrack.store import Store
from greentrack.store.spool import Spool

pytestmark = [pytest.mark.e2e]

MISSING_MODEL = {"GREENTRACK_MODEL": "/nonexistent/model.gguf"}
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: \S")


def no_traceback(lines: list[str]) -> bool:
    """No traceback, nor any line that continues a record (the model loader's own progress lines may show)."""
    return not any(line.startswith(("Traceback", " ", "\t")) or "Traceback" in line for line in lines)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[StdioServer]]:
    """Started servers, killed at the end of the test whatever happened."""
    started: list[StdioServer] = []
    yield started
    for server in started:
        server.close()


def start(servers: list[StdioServer], db: Path, log: Path, **env: str) -> StdioServer:
    server = StdioServer(db, log, **env)
    servers.append(server)
    return server


def wait_ready(server: StdioServer, timeout_s: float = 120) -> None:
    """Skip messages until the model's status is final; it must be ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        message = server.next_message(max(0.01, deadline - time.monotonic()))
        if message.get("method") == "greentrack/status" and message["params"]["state"] in ("ready", "error"):
            assert message["params"]["state"] == "ready", message
            return


def did_open(server: StdioServer, uri: str, text: str) -> None:
    server.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
        "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}})


def inline(msg_id: int | str, uri: str, line: int, character: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion", "params": {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 2}}}


def complete(server: StdioServer, msg_id: int, uri: str, text: str) -> tuple[list[Any], dict[str, Any]]:
    """Open ``text`` and complete at its end: the items, and the energy notification that follows."""
    did_open(server, uri, text)
    last = text.split("\n")[-1]
    server.send(inline(msg_id, uri, text.count("\n"), len(last)))
    items: list[Any] | None = None
    energy: dict[str, Any] | None = None
    while items is None or energy is None:
        message = server.next_message(60)
        if message.get("id") == msg_id:
            items = message["result"]
        elif message.get("method") == "greentrack/energy" and message["params"]["uri"] == uri:
            energy = message["params"]
    return items, energy


def finish(server: StdioServer) -> int:
    """shutdown, then exit: the exit status."""
    server.send({"jsonrpc": "2.0", "id": "bye", "method": "shutdown"})
    while server.answer(60).get("id") != "bye":
        pass
    server.send({"jsonrpc": "2.0", "method": "exit"})
    return server.process.wait(30)


def rows(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["completion_id"]: dict(r) for r in conn.execute("select * from completions")}


POSITION = {"textDocument": {"uri": "file:///w/a.py"}, "context": {"triggerKind": 2}}

#: (what, body, expected code, expected id): each must be answered, in order.
MALFORMED: list[tuple[str, bytes, int, Any]] = [
    ("a line of a JSON string", b'"abc"', -32600, None),
    ("not JSON", b"{this is not json", -32700, None),
    ("invalid UTF-8", b'{"jsonrpc": "2.0", "id": 3, "method": "shutdown", "params": "\xff\xfe"}', -32700, None),
    ("params null", json.dumps({"jsonrpc": "2.0", "id": 4, "method": "textDocument/inlineCompletion",
                                "params": None}).encode(), -32602, 4),
    ("a negative position", json.dumps({"jsonrpc": "2.0", "id": 5, "method": "textDocument/inlineCompletion",
                                        "params": {**POSITION, "position": {"line": -1, "character": 0}}}).encode(),
     -32602, 5),
    ("a 2**40 position", json.dumps({"jsonrpc": "2.0", "id": 6, "method": "textDocument/inlineCompletion",
                                     "params": {**POSITION, "position": {"line": 2**40, "character": 0}}}).encode(),
     -32602, 6),
    ("an object as id", json.dumps({"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}).encode(), -32600, None),
    ("a batch", b"[1, 2, 3]", -32600, None),
    ("no jsonrpc", json.dumps({"id": 9, "method": "shutdown"}).encode(), -32600, 9),
    ("a number as method", json.dumps({"jsonrpc": "2.0", "id": 10, "method": 5}).encode(), -32600, 10),
    ("an unknown method", json.dumps({"jsonrpc": "2.0", "id": 11, "method": "no/such"}).encode(), -32601, 11),
    ("a notification with an id", json.dumps({"jsonrpc": "2.0", "id": 12, "method": "initialized",
                                              "params": {}}).encode(), -32600, 12),
    ("a command with two arguments", json.dumps({"jsonrpc": "2.0", "id": 13, "method": "workspace/executeCommand",
                                                 "params": {"command": "greentrack.accept",
                                                            "arguments": ["a", "b"]}}).encode(), -32602, 13),
    ("a string as params", json.dumps({"jsonrpc": "2.0", "id": 14, "method": "textDocument/inlineCompletion",
                                       "params": "x"}).encode(), -32602, 14),
]


def test_every_malformed_request_is_answered_with_an_error(tmp_path: Path, servers: list[StdioServer]) -> None:
    server = start(servers, tmp_path / "m.db", tmp_path / "m.log")
    server.initialize()
    for what, body, code, msg_id in MALFORMED:
        server.send(body)
        answer = server.answer()
        assert answer["id"] == msg_id and answer["error"]["code"] == code, (what, answer)
        assert answer["error"]["message"], what
    # still serving: a real completion with the embedded model
    wait_ready(server)
    items, energy = complete(server, 100, "file:///w/after.py", AREA)
    assert isinstance(items, list) and energy["total_j"] > 0
    assert finish(server) == 0
    lines = server.log_lines()
    assert no_traceback(lines), "\n".join(lines)
    answered = [line for line in lines if re.search(r"error -32\d\d\d|Exception occurred for message", line)]
    assert len(answered) == len(MALFORMED), "\n".join(lines)  # one line each
    assert all(LOG_LINE.match(line) for line in answered)


SHUTDOWN = b'{"jsonrpc": "2.0", "id": 2, "method": "shutdown"}'
BAD_HEADERS: dict[str, bytes] = {
    "not a number": b"Content-Length: abc\r\n\r\n" + SHUTDOWN,
    "negative": b"Content-Length: -5\r\n\r\n" + SHUTDOWN,
    "missing": b"Content-Type: application/vscode-jsonrpc\r\n\r\n" + SHUTDOWN,
    "too small": b"Content-Length: 10\r\n\r\n" + SHUTDOWN,
    "too large, more follows": b"Content-Length: 100\r\n\r\n" + SHUTDOWN + frame(SHUTDOWN),  # runs into the next
    "too large, nothing follows": b"Content-Length: 5000\r\n\r\n" + SHUTDOWN,
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_bad_content_length_ends_the_server_with_one_log_line(
    case: str, tmp_path: Path, servers: list[StdioServer]
) -> None:
    server = start(servers, tmp_path / "h.db", tmp_path / "h.log", **MISSING_MODEL)
    server.initialize()
    server.send_bytes(BAD_HEADERS[case])
    server.send(b'{"jsonrpc": "2.0", "id": 4, "method": "shutdown"}')  # a later request cannot be found
    assert server.process.wait(30) == 1  # the body timeout is 10 s
    lines = server.log_lines()
    broken = [line for line in lines if "message stream from the client is broken" in line]
    assert len(broken) == 1 and broken[0].startswith("ERROR "), "\n".join(lines)
    assert no_traceback(lines) and all(LOG_LINE.match(line) for line in lines), "\n".join(lines)


def test_info_lines_reach_the_log(tmp_path: Path, servers: list[StdioServer]) -> None:
    db = tmp_path / "spooled.db"
    store = Store(db, busy_timeout_s=0.05, retries=0)
    blocker = sqlite3.connect(db, timeout=1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        store.record(make_record(1))  # locked out: spooled
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.close()
    assert Spool(db).pending()
    server = start(servers, db, tmp_path / "i.log", **MISSING_MODEL)
    server.initialize()
    deadline = time.monotonic() + 60
    while not any("replayed 1 spooled write" in line for line in server.log_lines()):
        assert time.monotonic() < deadline, "\n".join(server.log_lines())
        time.sleep(0.2)
    line = next(line for line in server.log_lines() if "replayed 1 spooled write" in line)
    assert line.startswith("INFO greentrack.")
    assert "c000001" in rows(db)


MARKER = "privacy_marker_5b1f0c"
PRIVATE = AREA.replace("import math\n", f'import math\n\n# {MARKER}: the user\'s own words\nSECRET = "{MARKER}"\n')


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_source_text_is_stored_and_logged_nowhere(tmp_path: Path, servers: list[StdioServer]) -> None:
    data = tmp_path / "data"
    db = data / "private.db"
    server = start(servers, db, tmp_path / "p.log")
    server.initialize()
    wait_ready(server)
    _, energy = complete(server, 1, "file:///w/private.py", PRIVATE)
    server.send({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
                 "params": {"command": "greentrack.accept", "arguments": [energy["completion_id"]]}})
    assert server.answer()["result"] is True
    # a completion while the database is locked: its row goes to the spool, which must hold no text either
    blocker = sqlite3.connect(db, timeout=1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        complete(server, 3, "file:///w/private2.py", PRIVATE)
        spooled = Spool(db).entries()
        assert any(entry.get("op") == "record" for entry in spooled)
        assert _files_holding(data, MARKER.encode()) == []
        assert _files_holding(Path(os.environ["XDG_STATE_HOME"]).parent, MARKER.encode()) == []
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert finish(server) == 0
    stored = rows(db)
    assert energy["completion_id"] in stored and all(row["text"] is None for row in stored.values())
    assert _files_holding(data, MARKER.encode()) == []
    assert MARKER not in (tmp_path / "p.log").read_text(encoding="utf-8")


def test_store_text_opt_in_keeps_the_suggestion(tmp_path: Path, servers: list[StdioServer]) -> None:
    """The opt-in the privacy test relies on being off: with it, the suggestion's text is in the row."""
    db = tmp_path / "text.db"
    server = start(servers, db, tmp_path / "t.log", GREENTRACK_STORE_TEXT="1")
    server.initialize()
    wait_ready(server)
    items, energy = complete(server, 1, "file:///w/area.py", AREA)
    assert items and items[0]["insertText"]
    assert finish(server) == 0
    assert rows(db)[energy["completion_id"]]["text"] == items[0]["insertText"]


def test_kill_9_loses_no_committed_row_and_the_next_start_works(tmp_path: Path, servers: list[StdioServer]) -> None:
    db = tmp_path / "killed.db"
    first = start(servers, db, tmp_path / "k1.log")
    first.initialize()
    wait_ready(first)
    committed = [complete(first, n, f"file:///w/k{n}.py", AREA.replace("radius", f"r{n}"))[1]["completion_id"]
                 for n in (1, 2)]
    did_open(first, "file:///w/long.py", NUMBERS)
    first.send(inline(3, "file:///w/long.py", 1, len(NUMBERS.splitlines()[1])))
    time.sleep(0.3)  # mid-generation
    os.kill(first.process.pid, signal.SIGKILL)
    assert first.process.wait(10) == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(committed) <= set(rows(db))

    second = start(servers, db, tmp_path / "k2.log")
    second.initialize()
    wait_ready(second)
    _, energy = complete(second, 1, "file:///w/after.py", AREA)
    assert finish(second) == 0
    assert set(committed) | {energy["completion_id"]} <= set(rows(db))
