"""Grid carbon intensity: a number of gCO2e/kWh, or an ISO 3166-1 alpha-3 country code.

Place in the flow: at the bottom, beside ``record.co2e_grams``. ``config`` turns ``GREENTRACK_CARBON_INTENSITY``
and the client's ``greentrack.carbonIntensity`` into gCO2e/kWh here (both accept the same values); the pipeline
and the report multiply energy by it.

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
DEFAULT_CARBON_INTENSITY_G_PER_KWH = 475.0  # world average, as CodeCarbon's fallback
ENV_VAR = "GREENTRACK_CARBON_INTENSITY"
ACCEPTED = "a non-negative number of gCO2e/kWh or an ISO 3166-1 alpha-3 country code such as FRA, DEU, USA"


@cache
def country_table() -> dict[str, dict[str, Any]]:
    """ISO3 code → ``{country_name, carbon_intensity_g_per_kwh, year}``."""
    text = resources.files("greentrack").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    table: dict[str, dict[str, Any]] = json.loads(text)
    return table


def intensity_for_country(code: str, source: str = ENV_VAR) -> float:
    """gCO2e/kWh of a country's grid (ISO 3166-1 alpha-3, e.g. ``FRA``), per CodeCarbon's data.

    Raises ``GreentrackError`` for a code the data does not hold, naming ``source`` (where the code came from).
    """
    key = code.strip().upper()
    entry = country_table().get(key)
    if entry is None:
        raise GreentrackError(f"unknown country code {code!r} for {source}: give {ACCEPTED}")
    return float(entry["carbon_intensity_g_per_kwh"])


def describe_country(code: str) -> str:
    """``"France (FRA, 2023, CodeCarbon data)"`` for a known code."""
    key = code.strip().upper()
    entry = country_table()[key]
    return f"{entry['country_name']} ({key}, {entry['year']}, CodeCarbon data)"


def resolve_intensity(value: object, default: float, source: str = ENV_VAR) -> float:
    """A number (or numeric text) as gCO2e/kWh, a country code via ``intensity_for_country``, None or ``""`` →
    ``default``. Raises ``GreentrackError`` naming ``source`` for anything else (negative, infinite, NaN, a
    boolean, an unknown code, another type)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise GreentrackError(f"{source} must be {ACCEPTED}, not {value!r}")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return intensity_for_country(value, source)
    else:
        number = float(value)
    if not 0 <= number < float("inf"):
        raise GreentrackError(f"{source} must be {ACCEPTED}, not {value!r}")
    return number
