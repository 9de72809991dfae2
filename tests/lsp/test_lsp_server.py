"""End-to-end: the real ``greentrack lsp`` over stdio with the real embedded model and a real SQLite file.

Capabilities, a completion with its energy notification and database row, acceptance, cancellation,
superseding, and the bad inputs that must never take the server down.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient
from tests.lsp.support import collected, inline_params, make_config, open_document, start_session

from greentrack.record import ENERGY_FIELDS

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DB = Path(tempfile.mkdtemp(prefix="greentrack-lsp-")) / "lsp.db"

AREA = '''import math


def area_of_circle(radius: float) -> float:
    """Return the area of a circle with the given radius."""
    return '''

# A line the model continues for many tokens: long enough to cancel mid-generation.
NUMBERS = "# the first two hundred integers\nnumbers = [" + ", ".join(str(i) for i in range(1, 40)) + ", "


def rows(db: Path = DB) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["completion_id"]: dict(r) for r in conn.execute("select * from completions")}


@pytest_lsp.fixture(config=make_config(DB), scope="module")
async def client(lsp_client: LanguageClient) -> Any:
    lsp_client.greentrack = await start_session(lsp_client, {"maxTokens": 48})  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


async def test_capabilities_advertised(client: LanguageClient) -> None:
    caps = collected(client).capabilities
    assert caps is not None
    assert caps.inline_completion_provider
    assert caps.execute_command_provider is not None
    assert "greentrack.accept" in caps.execute_command_provider.commands
    sync = caps.text_document_sync
    assert isinstance(sync, types.TextDocumentSyncOptions)
    assert sync.change == types.TextDocumentSyncKind.Incremental
    states = [s["state"] for s in collected(client).status]
    assert states[0] == "starting" and states[-1] == "ready"


async def test_completion_energy_row_and_accept(client: LanguageClient) -> None:
    uri = "file:///work/area.py"
    open_document(client, uri, AREA)
    last_line = AREA.count("\n")
    items = await client.text_document_inline_completion_async(inline_params(uri, last_line, len("    return ")))
    assert isinstance(items, list) and len(items) == 1
    item = items[0]
    assert isinstance(item.insert_text, str) and item.insert_text.strip()
    assert "\n" not in item.insert_text.strip("\n"), "the cursor is inside a line: a single-line suggestion"
    assert item.command is not None and item.command.command == "greentrack.accept"
    (completion_id,) = item.command.arguments or []
    found = collected(client)
    energy = await found.wait_for(lambda: next((e for e in found.energy if e["completion_id"] == completion_id), None))
    assert set(ENERGY_FIELDS) <= set(energy)
    assert energy["total_j"] == pytest.approx(energy["prefill_j"] + energy["decode_j"], rel=1e-12, abs=1e-12)
    assert energy["total_j"] > 0 and energy["prefill_j"] > 0
    assert energy["method"] in ("measured", "attributed", "estimated") and energy["meter"]
    assert energy["outcome"] == "shown" and energy["uri"] == uri and energy["language_id"] == "python"
    assert energy["prompt_tokens"] > 0 and energy["completion_tokens"] > 0
    assert energy["co2e_g"] > 0 and energy["latency_ms"] >= energy["prefill_ms"]
    assert energy["today_j"] >= energy["total_j"] and energy["today_completions"] >= 1
    row = rows()[completion_id]
    assert row["total_j"] == energy["total_j"] and row["accepted"] == 0
    assert row["developer"] == "lsp-test@example.com"

    accepted = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="greentrack.accept", arguments=[completion_id])
    )
    assert accepted is True
    row = rows()[completion_id]
    assert row["accepted"] == 1 and row["accepted_ts"]


async def test_kv_reuse_while_typing(client: LanguageClient) -> None:
    uri = "file:///work/typing.py"
    text = AREA.replace("area_of_circle", "circle_area")
    open_document(client, uri, text)
    line = text.count("\n")
    await client.text_document_inline_completion_async(inline_params(uri, line, len("    return ")))
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(
                        start=types.Position(line=line, character=11), end=types.Position(line=line, character=11)
                    ),
                    text="m",
                )
            ],
        )
    )
    await client.text_document_inline_completion_async(inline_params(uri, line, len("    return m")))
    found = collected(client)
    second = await found.wait_for(lambda: [e for e in found.energy if e["uri"] == uri][1:])
    assert second[0]["reused_prompt_tokens"] > 0
    assert second[0]["reused_prompt_tokens"] < second[0]["prompt_tokens"]


async def test_cancel_request_stops_generation_and_logs_energy(client: LanguageClient) -> None:
    uri = "file:///work/numbers.py"
    open_document(client, uri, NUMBERS)
    found = collected(client)
    before = len(found.energy)
    msg_id = "cancel-me-1"
    params = inline_params(uri, 1, len(NUMBERS.splitlines()[1]))
    task = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
    )
    await asyncio.sleep(0.4)
    assert not task.done(), "generation finished before it could be cancelled"
    cancelled_at = time.monotonic()
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(Exception, match=r"(?i)cancel"):
        await task
    answered_s = time.monotonic() - cancelled_at
    assert answered_s < 0.5, f"the cancelled request took {answered_s:.2f} s to answer"
    energy = await found.wait_for(lambda: [e for e in found.energy[before:] if e["uri"] == uri])
    assert energy[0]["outcome"] == "cancelled"
    assert energy[0]["total_j"] > 0
    assert energy[0]["decode_ms"] < 1500
    assert rows()[energy[0]["completion_id"]]["outcome"] == "cancelled"


async def test_newer_request_supersedes_older(client: LanguageClient) -> None:
    uri = "file:///work/numbers2.py"
    open_document(client, uri, NUMBERS)
    found = collected(client)
    before = len(found.energy)
    params = inline_params(uri, 1, len(NUMBERS.splitlines()[1]))
    first = asyncio.ensure_future(client.text_document_inline_completion_async(params))
    await asyncio.sleep(0.4)
    second = asyncio.ensure_future(client.text_document_inline_completion_async(params))
    assert await first == []
    await second

    def both_logged() -> list[str] | None:
        outcomes = [e["outcome"] for e in found.energy[before:] if e["uri"] == uri]
        return outcomes if len(outcomes) >= 2 else None

    outcomes = await found.wait_for(both_logged)
    assert outcomes[0] == "cancelled" and outcomes[1] in ("shown", "empty")


@pytest.mark.parametrize(
    ("name", "text", "line", "character"),
    [
        ("past-the-end", "x = 1\n", 40, 0),
        ("past-the-line", "x = 1\n", 0, 99),
        ("binary", "abc\x00\x01\x02def" * 100, 0, 5),
    ],
)
async def test_bad_positions_and_documents_get_empty_answers(
    client: LanguageClient, name: str, text: str, line: int, character: int
) -> None:
    uri = f"file:///work/bad-{name}.py"
    open_document(client, uri, text)
    assert await client.text_document_inline_completion_async(inline_params(uri, line, character)) == []


async def test_document_never_opened(client: LanguageClient) -> None:
    result = await client.text_document_inline_completion_async(inline_params("file:///never/opened.py", 0, 0))
    assert result == []


async def test_huge_document_is_served(client: LanguageClient) -> None:
    uri = "file:///work/huge.py"
    body = "".join(f"value_{i} = {i}\n" for i in range(330_000))  # ~5 MB
    assert len(body) > 5_000_000
    open_document(client, uri, body + "def main():\n    return ")
    started = time.monotonic()
    result = await client.text_document_inline_completion_async(inline_params(uri, 330_001, 11))
    assert isinstance(result, list)
    assert time.monotonic() - started < 30
    # and the server still answers
    assert await client.text_document_inline_completion_async(inline_params("file:///never/opened.py", 0, 0)) == []
