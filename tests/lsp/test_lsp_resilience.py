"""The language server under bad conditions: a model that cannot load, malformed messages, a locked
database, two servers (two VS Code windows) writing one database. It must keep serving and lose no row."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pytest_lsp import LanguageClient
from tests.lsp.support import SERVER_COMMAND, inline_params, make_config, open_document, server_env, start_session
from tests.lsp.test_lsp_server import AREA

pytestmark = [pytest.mark.e2e]


async def _client(config_db: Path, **env: str) -> LanguageClient:
    return await make_config(config_db, **env).start()  # type: ignore[return-value]


async def test_model_that_cannot_load_reports_error_and_keeps_serving(tmp_path: Path) -> None:
    client = await _client(tmp_path / "x.db", GREENTRACK_MODEL=str(tmp_path / "missing-model.gguf"))
    try:
        found = await start_session(client, wait_ready=False)
        await found.wait_for(lambda: any(s["state"] == "error" for s in found.status), timeout_s=120)
        error = next(s for s in found.status if s["state"] == "error")
        assert "missing-model.gguf" in error["message"]
        open_document(client, "file:///w/a.py", AREA)
        assert await client.text_document_inline_completion_async(inline_params("file:///w/a.py", 5, 11)) == []
        await client.shutdown_session()
    finally:
        await client.stop()


def _frame(payload: bytes) -> bytes:
    return b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload


def _read_message(stream: object, timeout_s: float = 30.0) -> dict[str, object]:
    """Read one framed JSON-RPC message from the server's stdout (blocking, with a deadline)."""
    result: dict[str, object] = {}

    def reader() -> None:
        length = 0
        while True:
            line = stream.readline()  # type: ignore[attr-defined]
            if not line:
                return
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        result.update(json.loads(stream.read(length)))  # type: ignore[attr-defined]

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result


def test_malformed_messages_do_not_kill_the_server(tmp_path: Path) -> None:
    process = subprocess.Popen(
        SERVER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=server_env(tmp_path / "m.db", GREENTRACK_MODEL=str(tmp_path / "none.gguf")),
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        garbage = [
            _frame(b"{this is not json"),
            _frame(b'{"jsonrpc": "2.0", "id": 7, "method": "textDocument/inlineCompletion", "params": {"x": 1}}'),
            _frame(json.dumps({"jsonrpc": "2.0", "id": 8, "method": "no/such/method"}).encode()),
            _frame(b"[1, 2, 3]"),
        ]
        for frame in garbage:
            process.stdin.write(frame)
        process.stdin.flush()
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"processId": None, "rootUri": None, "capabilities": {}}}
        process.stdin.write(_frame(json.dumps(initialize).encode()))
        process.stdin.flush()
        deadline = time.monotonic() + 60
        answer: dict[str, object] = {}
        while time.monotonic() < deadline:
            message = _read_message(process.stdout)
            if message.get("id") == 1:
                answer = message
                break
            assert message, "the server stopped answering"
        assert "result" in answer and "capabilities" in answer["result"]  # type: ignore[operator]
        assert process.poll() is None, "the server exited"
    finally:
        process.kill()
        process.wait()


async def test_locked_database_loses_no_completion(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    client = await _client(db)
    try:
        found = await start_session(client)
        uri = "file:///w/locked.py"
        open_document(client, uri, AREA)
        await client.text_document_inline_completion_async(inline_params(uri, 5, 11))
        await found.wait_for(lambda: found.energy)
        blocker = sqlite3.connect(db, timeout=1, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            uri2 = "file:///w/locked2.py"
            open_document(client, uri2, AREA.replace("radius", "r"))
            items = await client.text_document_inline_completion_async(inline_params(uri2, 5, 11))
            assert isinstance(items, list)
            await found.wait_for(lambda: len(found.energy) >= 2, timeout_s=60)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # a third completion after the lock is gone: the spooled row is replayed with it
        uri3 = "file:///w/locked3.py"
        open_document(client, uri3, AREA.replace("radius", "rad"))
        await client.text_document_inline_completion_async(inline_params(uri3, 5, 11))
        await found.wait_for(lambda: len(found.energy) >= 3, timeout_s=60)
        await asyncio.sleep(0.5)
        with sqlite3.connect(db) as conn:
            stored = {r[0] for r in conn.execute("select completion_id from completions")}
        assert {e["completion_id"] for e in found.energy} <= stored
        await client.shutdown_session()
    finally:
        await client.stop()


async def test_two_servers_share_one_database(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    clients = [await _client(db), await _client(db)]
    try:
        founds = [await start_session(c) for c in clients]
        for n, client in enumerate(clients):
            uri = f"file:///w/window{n}.py"
            open_document(client, uri, AREA)
        await asyncio.gather(*[
            c.text_document_inline_completion_async(inline_params(f"file:///w/window{n}.py", 5, 11))
            for n, c in enumerate(clients)
        ])
        for found in founds:
            await found.wait_for(lambda f=found: f.energy)  # type: ignore[misc]
        with sqlite3.connect(db) as conn:
            stored = {r[0] for r in conn.execute("select completion_id from completions")}
        assert {f.energy[0]["completion_id"] for f in founds} <= stored and len(stored) == 2
        for client in clients:
            await client.shutdown_session()
    finally:
        for client in clients:
            await client.stop()
