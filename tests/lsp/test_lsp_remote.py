"""End to end, remote mode: the real ``greentrack lsp --server URL`` over stdio, talking to a real ``greentrack serve``
subprocess on 127.0.0.1 (a free port, tokens, the embedded model), each with its own SQLite file.

Ghost text, the energy notification with the server's figures, the local mirror row (``served_by``, the server's
developer), acceptance reaching the server, cancellation, and a server that goes away (the status says "server
unreachable", completions answer [] at once) and comes back (the client reconnects by itself).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient
from tests.lsp.support import Collected, inline_params, open_document, server_env, start_session
from tests.lsp.test_lsp_server import AREA, NUMBERS
from tests.serve.support import Server

from greentrack.record import ENERGY_FIELDS
from greentrack.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

REMOTE_DEVELOPER = "remote@example.com"


class Session:
    """The serve subprocess, the language client and what it collected."""

    def __init__(self, server: Server, client: LanguageClient, collected: Collected, local_db: Path) -> None:
        self.server = server
        self.client = client
        self.collected = collected
        self.local_db = local_db


def rows(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["completion_id"]: dict(r) for r in conn.execute("select * from completions")}


async def wait_row(db: Path, completion_id: str, timeout_s: float = 20.0, **expected: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        row = rows(db).get(completion_id) if db.exists() else None
        if row is not None and all(row[k] == v for k, v in expected.items()):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{completion_id} in {db.name}: {row} (expected {expected})")
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Session]:
    folder = tmp_path_factory.mktemp("remote")
    server_db, local_db = folder / "server.db", folder / "local.db"
    with Store(server_db) as store:
        token = store.add_token(REMOTE_DEVELOPER)
    server = await asyncio.to_thread(Server(server_db).start)
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "greentrack", "lsp", "--server", server.url],
        server_env=server_env(local_db, GREENTRACK_TOKEN=token),
    )
    client = await config.start()
    assert isinstance(client, LanguageClient)
    try:
        collected = await start_session(client, {"maxTokens": 48})
        yield Session(server, client, collected, local_db)
        started_s = time.monotonic()
        await client.shutdown_session()
        exit_s = time.monotonic() - started_s
        assert exit_s < 3.0, f"shutdown and exit took {exit_s:.2f} s"
    finally:
        await client.stop()
        server.kill()


async def test_ready_names_the_server_and_loads_no_model(session: Session) -> None:
    ready = session.collected.status[-1]
    assert ready["state"] == "ready" and session.server.url in ready["message"], ready
    assert "embedded" in ready["message"]
    process = session.client._server  # the language server's process: no torch in it
    assert process is not None
    maps = Path(f"/proc/{process.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text(errors="replace")


async def test_ghost_text_energy_mirror_and_accept(session: Session) -> None:
    client, found = session.client, session.collected
    uri = "file:///work/remote_area.py"
    open_document(client, uri, AREA)
    items = await client.text_document_inline_completion_async(inline_params(uri, AREA.count("\n"), 11))
    assert isinstance(items, list) and len(items) == 1, items
    item = items[0]
    assert isinstance(item.insert_text, str) and item.insert_text.strip()
    assert item.command is not None and item.command.command == "greentrack.accept"
    (completion_id,) = item.command.arguments or []
    answered_s = time.monotonic()

    energy = await found.wait_for(lambda: next((e for e in found.energy if e["completion_id"] == completion_id), None))
    notified_s = time.monotonic() - answered_s
    assert notified_s < 5.0, f"the energy came {notified_s:.2f} s after the suggestion"
    assert set(ENERGY_FIELDS) <= set(energy)
    assert energy["outcome"] == "shown" and energy["uri"] == uri and energy["total_j"] > 0
    assert energy["today_completions"] >= 1 and energy["today_j"] >= energy["total_j"]

    # The server's row: its figures are the notification's; the local mirror carries the same, marked.
    server_row = await wait_row(session.server.db, completion_id)
    for name in ("total_j", "prefill_j", "decode_j", "method", "meter", "uncertainty_j", "prompt_tokens",
                 "completion_tokens", "model", "backend", "device", "outcome"):
        assert energy[name] == server_row[name], name
    assert server_row["developer"] == REMOTE_DEVELOPER and server_row["served_by"] is None
    local_row = await wait_row(session.local_db, completion_id)
    assert local_row["served_by"] == session.server.url
    assert local_row["developer"] == REMOTE_DEVELOPER  # as the server says, not this machine's GREENTRACK_DEVELOPER
    for name in ("total_j", "prefill_j", "decode_j", "method", "meter", "ts", "outcome", "prompt_tokens"):
        assert local_row[name] == server_row[name], name

    accepted = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="greentrack.accept", arguments=[completion_id])
    )
    assert accepted is True
    await wait_row(session.server.db, completion_id, accepted=1)
    await wait_row(session.local_db, completion_id, accepted=1)


async def test_cancel_reaches_the_server(session: Session) -> None:
    client, found = session.client, session.collected
    uri = "file:///work/remote_numbers.py"
    open_document(client, uri, NUMBERS)
    before = len(found.energy)
    task = asyncio.ensure_future(client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, len(NUMBERS.splitlines()[1])),
        msg_id="remote-cancel-1",
    ))
    await asyncio.sleep(0.5)
    assert not task.done(), "generation finished before it could be cancelled"
    cancelled_at = time.monotonic()
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="remote-cancel-1"))
    with pytest.raises(Exception, match=r"(?i)cancel"):
        await task
    assert time.monotonic() - cancelled_at < 0.5
    energy = await found.wait_for(lambda: [e for e in found.energy[before:] if e["uri"] == uri])
    assert energy[0]["outcome"] == "cancelled" and energy[0]["decode_ms"] < 1500
    cid = energy[0]["completion_id"]
    assert (await wait_row(session.server.db, cid))["outcome"] == "cancelled"
    assert (await wait_row(session.local_db, cid))["served_by"] == session.server.url


async def test_server_down_then_back(session: Session) -> None:
    client, found, server = session.client, session.collected, session.server
    uri = "file:///work/remote_down.py"
    open_document(client, uri, AREA)
    params = inline_params(uri, AREA.count("\n"), 11)
    server.kill()

    started_s = time.monotonic()
    assert await client.text_document_inline_completion_async(params) == []
    assert time.monotonic() - started_s < 2.0
    status = await found.wait_for(
        lambda: next((s for s in reversed(found.status) if s["state"] == "error"), None), timeout_s=15
    )
    assert status["message"].startswith("server unreachable:"), status
    # While it is down, completions answer at once, without waiting on the network.
    started_s = time.monotonic()
    assert await client.text_document_inline_completion_async(params) == []
    assert time.monotonic() - started_s < 0.5

    marker = len(found.status)
    await asyncio.to_thread(server.start)  # the same port, the same database
    ready = await found.wait_for(
        lambda: next((s for s in found.status[marker:] if s["state"] == "ready"), None), timeout_s=30
    )
    assert server.url in ready["message"]
    items = await client.text_document_inline_completion_async(params)
    assert isinstance(items, list) and len(items) == 1 and items[0].insert_text
