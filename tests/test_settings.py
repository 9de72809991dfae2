"""``config.read_client_settings``: every client setting converted and checked once; a bad one keeps its last good
value with one message naming it and its accepted values; the carbon intensity accepts what
``GREENTRACK_CARBON_INTENSITY`` accepts. (The same on the real server: ``tests/lsp/test_lsp_settings.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from greentrack.carbon import intensity_for_country
from greentrack.config import (
    CLIENT_SETTING_RULES,
    EXTENSION_SETTINGS,
    Settings,
    default_carbon_intensity,
    read_client_settings,
)

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES: dict[str, dict[str, Any]] = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))[
    "contributes"]["configuration"]["properties"]
BASE = Settings(max_tokens=48, debounce_ms=100, carbon_intensity=300.0)


def read(**sent: Any) -> tuple[Settings, list[str]]:
    return read_client_settings({"greentrack": sent}, BASE)


def test_every_mirrored_setting_has_a_rule() -> None:
    assert {k for k, field in EXTENSION_SETTINGS.items() if field} == set(CLIENT_SETTING_RULES)


@pytest.mark.parametrize("key", ["maxTokens", "contextTokens", "debounceMs"])
def test_integer_ranges_are_package_jsons(key: str) -> None:
    prop = PROPERTIES[f"greentrack.{key}"]
    _, accepted = CLIENT_SETTING_RULES[key]
    assert accepted == f"an integer from {prop['minimum']} to {prop['maximum']}"


def test_good_values_are_converted() -> None:
    settings, problems = read(maxTokens="32", contextTokens=256.0, debounceMs=0, carbonIntensity="FRA",
                              enabled="false", device="cuda:1", backend="vllm", model=" org/model ",
                              suggestionCache=False)
    assert problems == []
    assert (settings.max_tokens, settings.context_tokens, settings.debounce_ms) == (32, 256, 0)
    assert settings.carbon_intensity == intensity_for_country("FRA")
    assert (settings.enabled, settings.device, settings.suggestion_cache) == (False, "cuda:1", False)
    assert (settings.backend, settings.model) == ("vllm", "org/model")
    assert all(isinstance(v, int) and not isinstance(v, bool)
               for v in (settings.max_tokens, settings.context_tokens, settings.debounce_ms))


@pytest.mark.parametrize("value", ["FRA", " deu ", "120.5", 120.5, 0, "0"])
def test_carbon_intensity_accepts_what_the_environment_variable_accepts(
    value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENTRACK_CARBON_INTENSITY", str(value))
    settings, problems = read(carbonIntensity=value)
    assert problems == [] and settings.carbon_intensity == default_carbon_intensity()


@pytest.mark.parametrize(
    ("key", "value", "field", "accepted"),
    [
        ("maxTokens", "abc", "max_tokens", "an integer from 1 to 1024"),
        ("maxTokens", 0, "max_tokens", "an integer from 1 to 1024"),
        ("maxTokens", 2.5, "max_tokens", "an integer from 1 to 1024"),
        ("maxTokens", True, "max_tokens", "an integer from 1 to 1024"),
        ("debounceMs", "abc", "debounce_ms", "an integer from 0 to 5000"),
        ("debounceMs", -1, "debounce_ms", "an integer from 0 to 5000"),
        ("contextTokens", [1024], "context_tokens", "an integer from 64 to 32768"),
        ("carbonIntensity", "XXX", "carbon_intensity", "ISO 3166-1 alpha-3 country code such as FRA"),
        ("carbonIntensity", -5, "carbon_intensity", "a non-negative number of gCO2e/kWh"),
        ("carbonIntensity", False, "carbon_intensity", "a non-negative number of gCO2e/kWh"),
        ("carbonIntensity", {"g": 1}, "carbon_intensity", "a non-negative number of gCO2e/kWh"),
        ("enabled", "maybe", "enabled", "true or false"),
        ("suggestionCache", "maybe", "suggestion_cache", "true or false"),
        ("suggestionCache", 0, "suggestion_cache", "true or false"),
        ("device", "gpu", "device", "one of auto, cpu, cuda or cuda:N"),
        ("backend", 3, "backend", "one of transformers, vllm"),
        ("model", "   ", "model", "a Hugging Face hub id"),
    ],
)
def test_a_bad_value_keeps_the_last_good_one_with_one_message(key: str, value: Any, field: str, accepted: str) -> None:
    settings, problems = read(**{key: value, "maxTokens" if key != "maxTokens" else "debounceMs": 20})
    assert getattr(settings, field) == getattr(BASE, field)
    assert len(problems) == 1
    (message,) = problems
    assert message.startswith(f"setting greentrack.{key}: {value!r} is not accepted; accepted: ")
    assert accepted in message and f"Keeping {getattr(BASE, field)!r}." in message
    other = "max_tokens" if key != "maxTokens" else "debounce_ms"
    assert getattr(settings, other) == 20  # the good setting beside it is applied


def test_absent_null_and_empty_keep_the_current_values() -> None:
    assert read_client_settings(None, BASE) == (BASE, [])
    assert read(maxTokens=None, model="", carbonIntensity=None) == (BASE, [])
    settings, problems = read_client_settings({"greentrack": "oops"}, BASE)
    assert settings == BASE and len(problems) == 1 and "must be an object" in problems[0]


@pytest.mark.parametrize(("text", "expected"), [("0", False), (" no ", False), ("FALSE", False), ("1", True),
                                                 ("yes", True), ("", True)])
def test_the_suggestion_cache_environment_variable(text: str, expected: bool, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GREENTRACK_SUGGESTION_CACHE", text)
    assert Settings.from_env().suggestion_cache is expected
    assert Settings.from_env(suggestion_cache=True).suggestion_cache is True  # a command-line option wins
    assert Settings.from_env(suggestion_cache=None).suggestion_cache is expected  # an option not given: the variable
    assert caplog.records == []


def test_a_bad_suggestion_cache_environment_variable_keeps_it_on_with_one_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GREENTRACK_SUGGESTION_CACHE", "maybe")
    assert Settings.from_env().suggestion_cache is True
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == ("GREENTRACK_SUGGESTION_CACHE='maybe' is not accepted; accepted: 1 or 0 "
                                   "(also true/false, yes/no). Keeping 1 (on).")
