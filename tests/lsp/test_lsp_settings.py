"""The client's settings on the real ``greentrack lsp`` (real model, real SQLite file): a country code for the carbon
intensity works as in ``GREENTRACK_CARBON_INTENSITY``; a setting of the wrong type or value is refused with one
message naming it and its accepted values, keeps its last good value, and never stops completions being logged.
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
    warnings,
)

from greentrack.carbon import intensity_for_country

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DB = Path(tempfile.mkdtemp(prefix="greentrack-lsp-settings-")) / "settings.db"
CODE = "def add(a: int, b: int) -> int:\n    return "


@pytest_lsp.fixture(config=make_config(DB), scope="module")
async def client(lsp_client: LanguageClient) -> Any:
    # What the extension forwards raw from settings.json: a country code, and a number typed as text.
    lsp_client.greentrack = await start_session(  # type: ignore[attr-defined]
        lsp_client, {"carbonIntensity": "FRA", "maxTokens": "abc", "contextTokens": 512}
    )
    yield
    await lsp_client.shutdown_session()


async def complete_and_log(client: LanguageClient, name: str) -> dict[str, Any]:
    """One completion; returns its ``greentrack/energy`` notification once its row is in the database."""
    uri = f"file:///work/{name}.py"
    open_document(client, uri, CODE)
    _, energy = await complete_one(client, uri, 1, len("    return "))
    assert stored_row(DB, energy["completion_id"])["total_j"] == energy["total_j"]
    return energy


async def test_country_code_for_carbon_intensity_is_resolved(client: LanguageClient) -> None:
    energy = await complete_and_log(client, "country")
    expected_g = energy["total_j"] / 3.6e6 * intensity_for_country("FRA")
    assert energy["co2e_g"] == pytest.approx(expected_g, rel=1e-9)
    assert stored_row(DB, energy["completion_id"])["co2e_g"] == pytest.approx(expected_g, rel=1e-9)
    assert not any("carbonIntensity" in m for m in warnings(client))


async def test_text_for_max_tokens_is_refused_with_a_message_and_completions_go_on(client: LanguageClient) -> None:
    (message,) = [m for m in warnings(client) if "greentrack.maxTokens" in m]
    assert "'abc'" in message and "an integer from 1 to 1024" in message and "Keeping 64" in message
    energy = await complete_and_log(client, "max_tokens")
    assert 0 < energy["completion_tokens"] <= 64
    assert energy["prompt_tokens"] <= 512  # the good setting sent beside the bad one was applied


async def test_text_for_debounce_keeps_the_last_good_value(client: LanguageClient) -> None:
    before = len(warnings(client))
    configure(client, {"carbonIntensity": "FRA", "debounceMs": "abc"})
    found = await wait_for_warnings(client, before + 1)
    (message,) = found[before:]
    assert "greentrack.debounceMs" in message and "an integer from 0 to 5000" in message and "Keeping 0" in message
    await complete_and_log(client, "debounce")


async def test_wrong_types_and_unknown_country_code_each_get_one_message(client: LanguageClient) -> None:
    before = len(warnings(client))
    configure(client, {"carbonIntensity": "XXX", "maxTokens": 3.5, "enabled": "maybe", "device": 7,
                       "backend": "llama", "debounceMs": True, "model": 42})
    found = await wait_for_warnings(client, before + 7)
    new = found[before:]
    assert len(new) == 7, new
    for key, accepted in (("carbonIntensity", "ISO 3166-1 alpha-3 country code"), ("maxTokens", "an integer"),
                          ("enabled", "true or false"), ("device", "one of auto, cpu, cuda or cuda:N"),
                          ("backend", "one of transformers, vllm"), ("debounceMs", "an integer"),
                          ("model", "a Hugging Face hub id")):
        (message,) = [m for m in new if f"greentrack.{key}:" in m]
        assert accepted in message, message
    energy = await complete_and_log(client, "after_bad_types")  # still enabled, still the French grid
    assert energy["co2e_g"] == pytest.approx(energy["total_j"] / 3.6e6 * intensity_for_country("FRA"), rel=1e-9)
