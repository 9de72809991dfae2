"""A setting cleared in the editor goes back to the server's default on the real ``greentrack lsp`` (real embedded
model, real SQLite file). VS Code sends the whole ``greentrack`` section on every change, a cleared setting as its
package.json default (``null`` for ``carbonIntensity``, ``""`` for ``model``); a client may also leave it out.
Each form means "the default" (docs/interfaces.md, VS Code extension): here ``GREENTRACK_CARBON_INTENSITY`` (the
server's environment) and the embedded model, never the value the setting had before it was cleared.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from pytest_lsp import LanguageClient
from tests.lsp.support import (
    collected,
    complete_one,
    configure,
    make_config,
    open_document,
    start_session,
    stored_row,
)

from greentrack.carbon import intensity_for_country

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
DB = Path(tempfile.mkdtemp(prefix="greentrack-lsp-reset-")) / "reset.db"
CODE = "def add(a: int, b: int) -> int:\n    return "
#: The server's default carbon intensity: its environment's GREENTRACK_CARBON_INTENSITY (gCO2e/kWh).
DEFAULT_G_PER_KWH = 200.0
SET_G_PER_KWH = 100.0
MISSING_MODEL = "/nonexistent/greentrack-reset-test.gguf"
#: Settings the tests keep fixed: fast requests, and every one measured by the model (a cached one is 0 J, whose
#: CO2e is 0 whatever the intensity).
FIXED = {"debounceMs": 0, "maxTokens": 8, "suggestionCache": False}
CLEARED = object()  # the setting left out of the section
DOCUMENT_NUMBERS = itertools.count()


def vscode_section(**chosen: Any) -> dict[str, Any]:
    """The ``greentrack`` section as VS Code sends it: every setting, package.json's default where none is chosen;
    a setting given as ``CLEARED`` is left out."""
    properties = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))["contributes"]["configuration"][
        "properties"]
    section = {name.removeprefix("greentrack."): spec["default"] for name, spec in properties.items()}
    section.update(FIXED)
    section.update(chosen)
    return {key: value for key, value in section.items() if value is not CLEARED}


@pytest_lsp.fixture(config=make_config(DB, GREENTRACK_CARBON_INTENSITY=str(DEFAULT_G_PER_KWH)), scope="module")
async def client(lsp_client: LanguageClient) -> Any:
    lsp_client.greentrack = await start_session(  # type: ignore[attr-defined]
        lsp_client, vscode_section(carbonIntensity=SET_G_PER_KWH)
    )
    yield
    await lsp_client.shutdown_session()


async def intensity_of_one_completion(client: LanguageClient, name: str) -> float:
    """One completion, measured by the model: the carbon intensity (gCO2e/kWh) its stored CO2e was figured with."""
    uri = f"file:///work/{name}_{next(DOCUMENT_NUMBERS)}.py"  # a fresh document each time
    open_document(client, uri, CODE)
    _, energy = await complete_one(client, uri, 1, len("    return "))
    row = stored_row(DB, energy["completion_id"])
    assert row["total_j"] == energy["total_j"] > 0, energy
    assert row["co2e_g"] == energy["co2e_g"]
    return float(energy["co2e_g"] / (energy["total_j"] / 3.6e6))


async def test_the_intensity_set_at_start_applies(client: LanguageClient) -> None:
    assert await intensity_of_one_completion(client, "start") == pytest.approx(SET_G_PER_KWH, rel=1e-9)


@pytest.mark.parametrize(("chosen", "cleared"), [
    (SET_G_PER_KWH, None),  # the Settings UI's reset, or the entry removed from settings.json: package.json's null
    ("FRA", ""),
    ("FRA", CLEARED),
], ids=["null", "empty", "left-out"])
async def test_a_cleared_carbon_intensity_is_the_default_again(client: LanguageClient, chosen: Any,
                                                                cleared: Any) -> None:
    expected = intensity_for_country(chosen) if isinstance(chosen, str) else chosen
    assert expected != DEFAULT_G_PER_KWH
    configure(client, vscode_section(carbonIntensity=chosen))
    assert await intensity_of_one_completion(client, "chosen") == pytest.approx(expected, rel=1e-9)
    configure(client, vscode_section(carbonIntensity=cleared))
    assert await intensity_of_one_completion(client, "cleared") == pytest.approx(DEFAULT_G_PER_KWH, rel=1e-9)


@pytest.mark.parametrize("cleared", ["", None, CLEARED], ids=["empty", "null", "left-out"])
async def test_a_cleared_model_is_the_embedded_default_again(client: LanguageClient, cleared: Any) -> None:
    found = collected(client)
    marker = len(found.status)
    configure(client, vscode_section(model=MISSING_MODEL))
    failed = await found.wait_for(lambda: next((s for s in found.status[marker:] if s["state"] == "error"), None))
    assert MISSING_MODEL in failed["message"], failed
    marker = len(found.status)
    configure(client, vscode_section(model=cleared))
    loading = await found.wait_for(lambda: found.status[marker:], timeout_s=10)
    assert loading[0] == {"state": "starting", "message": "loading embedded (transformers, auto)"}, loading
    ready = await found.wait_for(
        lambda: next((s for s in found.status[marker:] if s["state"] in ("ready", "error")), None), timeout_s=180
    )
    assert ready["state"] == "ready", found.status[marker:]
    assert await intensity_of_one_completion(client, "after_model") == pytest.approx(DEFAULT_G_PER_KWH, rel=1e-9)
