"""Grid carbon intensity for the report: a number, or an ISO 3166-1 alpha-3 country code.

Place in the flow: ``config.default_carbon_intensity`` and ``greentrack report`` turn
``GREENTRACK_CARBON_INTENSITY`` into gCO2e/kWh here; the report multiplies the week's energy by it.

Per-country figures are CodeCarbon's (MIT licence): ``data/carbon_intensity_by_country.json`` is taken unchanged
from CodeCarbon 3.3.2's ``global_energy_mix.json`` (see ``data/LICENSE-codecarbon.txt``). The world-average
fallback, 475 gCO2e/kWh, is CodeCarbon's too.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from greentrack.errors import GreentrackError

DATA_FILE = "carbon_intensity_by_country.json"
SOURCE = "CodeCarbon 3.3.2 global_energy_mix.json (MIT)"


@cache
def country_table() -> dict[str, dict[str, Any]]:
    """ISO3 code → ``{country_name, carbon_intensity_g_per_kwh, year}``."""
    text = resources.files("greentrack.report").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    table: dict[str, dict[str, Any]] = json.loads(text)
    return table


def intensity_for_country(code: str) -> float:
    """gCO2e/kWh of a country's grid (ISO 3166-1 alpha-3, e.g. ``FRA``), per CodeCarbon's data.

    Raises ``GreentrackError`` for a code the data does not hold.
    """
    key = code.strip().upper()
    entry = country_table().get(key)
    if entry is None:
        raise GreentrackError(
            f"unknown country code {code!r} for GREENTRACK_CARBON_INTENSITY: give gCO2e/kWh as a number "
            "or an ISO 3166-1 alpha-3 code such as FRA, DEU, USA"
        )
    return float(entry["carbon_intensity_g_per_kwh"])


def describe_country(code: str) -> str:
    """``"France (FRA, 2023, CodeCarbon data)"`` for a known code."""
    key = code.strip().upper()
    entry = country_table()[key]
    return f"{entry['country_name']} ({key}, {entry['year']}, CodeCarbon data)"


def resolve_intensity(value: str | float | None, default: float) -> float:
    """A number as gCO2e/kWh, a country code via ``intensity_for_country``, None → ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(value)
        except ValueError:
            return intensity_for_country(value)
    if not number >= 0 or number == float("inf"):
        raise GreentrackError(f"carbon intensity must be a non-negative number of gCO2e/kWh, not {value!r}")
    return number
