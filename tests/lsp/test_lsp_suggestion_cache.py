"""The suggestion cache switched on and off on the real ``greentrack lsp`` (real embedded model, real SQLite file).

The server starts with ``GREENTRACK_SUGGESTION_CACHE=0``: the same request asked twice reaches the model twice.
``greentrack.suggestionCache`` (``workspace/didChangeConfiguration``) turns it on — the second is served from the
cache, 0 J — and off again; a bad value gets one message naming the setting and keeps the last good value.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from pytest_lsp import LanguageClient
from tests.lsp.support import (
    complete_one,
    configure,
    make_config,
    open_document,
    start_session,
    stored_row,
    wait_for_warnings,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DB = Path(tempfile.mkdtemp(prefix="greentrack-lsp-cache-")) / "cache.db"
CODE = "def add(a: int, b: int) -> int:\n    return "


@pytest_lsp.fixture(config=make_config(DB, GREENTRACK_SUGGESTION_CACHE="0"), scope="module")
async def client(lsp_client: LanguageClient) -> Any:
    lsp_client.greentrack = await start_session(lsp_client, {"maxTokens": 8})  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


async def ask(client: LanguageClient, uri: str) -> tuple[str, dict[str, Any]]:
    """One inline completion at the end of ``CODE``: (its text, its ``greentrack/energy`` notification)."""
    item, energy = await complete_one(client, uri, 1, len("    return "))
    assert stored_row(DB, energy["completion_id"])["outcome"] == energy["outcome"]
    text = item.insert_text
    assert isinstance(text, str) and text
    return text, energy


async def ask_twice(client: LanguageClient, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same request twice in a fresh document (nothing typed in between): both notifications."""
    uri = f"file:///work/{name}.py"
    open_document(client, uri, CODE)
    first_text, first = await ask(client, uri)
    second_text, second = await ask(client, uri)
    assert second_text == first_text  # the same suggestion, whether from the model or the cache
    assert (first["outcome"], first["meter"]) != ("cached", "cache") and first["completion_tokens"] > 0
    return first, second


def assert_from_the_model(energy: dict[str, Any]) -> None:
    assert energy["outcome"] == "shown" and energy["meter"] != "cache", energy
    assert energy["completion_tokens"] > 0 and energy["prompt_tokens"] > 0


def assert_from_the_cache(energy: dict[str, Any], source: dict[str, Any]) -> None:
    assert (energy["outcome"], energy["meter"], energy["method"]) == ("cached", "cache", "measured"), energy
    assert (energy["total_j"], energy["uncertainty_j"], energy["completion_tokens"]) == (0.0, 0.0, 0)
    assert energy["completion_id"] != source["completion_id"]  # a completion of its own


async def test_off_by_the_environment_variable_the_same_request_reaches_the_model_again(
    client: LanguageClient,
) -> None:
    _, second = await ask_twice(client, "env_off")
    assert_from_the_model(second)


async def test_the_setting_turns_it_on(client: LanguageClient) -> None:
    configure(client, {"suggestionCache": True})
    first, second = await ask_twice(client, "setting_on")
    assert_from_the_cache(second, first)


async def test_a_bad_value_gets_one_message_and_keeps_it_on(client: LanguageClient) -> None:
    configure(client, {"suggestionCache": "maybe"})
    (message,) = await wait_for_warnings(client, 1, "greentrack.suggestionCache")
    assert "'maybe' is not accepted" in message and "true or false" in message and "Keeping True" in message
    first, second = await ask_twice(client, "bad_value")
    assert_from_the_cache(second, first)


async def test_the_setting_turns_it_off_again(client: LanguageClient) -> None:
    configure(client, {"suggestionCache": False})
    _, second = await ask_twice(client, "setting_off")
    assert_from_the_model(second)
