"""Carbon intensity: numbers as given, ISO3 country codes from CodeCarbon's shipped data, errors otherwise."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from greentrack.carbon import country_table, describe_country, intensity_for_country, resolve_intensity
from greentrack.config import default_carbon_intensity
from greentrack.errors import GreentrackError


def test_country_codes_use_codecarbons_figures() -> None:
    data = json.loads(resources.files("greentrack").joinpath("data/carbon_intensity_by_country.json")
                      .read_text(encoding="utf-8"))
    assert len(data) == len(country_table()) > 200
    assert intensity_for_country("FRA") == data["FRA"]["carbon_intensity_g_per_kwh"] == 56.039
    assert intensity_for_country(" deu ") == 380.95
    assert describe_country("FRA") == "France (FRA, 2023, CodeCarbon data)"
    licence = resources.files("greentrack").joinpath("data/LICENSE-codecarbon.txt").read_text(encoding="utf-8")
    assert "MIT License" in licence and "global_energy_mix.json" in licence


def test_unknown_code_is_a_clear_error() -> None:
    with pytest.raises(GreentrackError, match="unknown country code 'XXX'"):
        intensity_for_country("XXX")


def test_resolve_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_intensity(None, 475.0) == 475.0
    assert resolve_intensity("120.5", 475.0) == 120.5
    assert resolve_intensity("SWE", 475.0) == intensity_for_country("SWE")
    assert resolve_intensity(56, 475.0) == 56.0
    for bad in ("-3", -3, "nan", float("inf"), True, [1]):
        with pytest.raises(GreentrackError, match="GREENTRACK_CARBON_INTENSITY must be a non-negative number"):
            resolve_intensity(bad, 475.0)
    with pytest.raises(GreentrackError, match=r"unknown country code 'XX' for greentrack\.carbonIntensity"):
        resolve_intensity("XX", 475.0, source="greentrack.carbonIntensity")
    monkeypatch.setenv("GREENTRACK_CARBON_INTENSITY", "FRA")
    assert default_carbon_intensity() == 56.039
    monkeypatch.setenv("GREENTRACK_CARBON_INTENSITY", "300")
    assert default_carbon_intensity() == 300.0
    monkeypatch.delenv("GREENTRACK_CARBON_INTENSITY")
    assert default_carbon_intensity() == 475.0
