"""The identifiers the VS Code extension (package.json, extension/src) and the Python side share agree.

package.json owns the settings and commands; ``greentrack.config.EXTENSION_SETTINGS`` and
``greentrack.lsp.protocol`` mirror them. These checks fail when one side is renamed without the other.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from greentrack import config
from greentrack.config import EXTENSION_SETTINGS, Settings, settings_from_client
from greentrack.lsp import protocol

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
PROPERTIES: dict[str, dict[str, Any]] = PACKAGE["contributes"]["configuration"]["properties"]
EXTENSION_SRC = ROOT / "extension" / "src"


def _ts_string_constants(path: Path) -> dict[str, str]:
    """``export const NAME = '...';`` in a TypeScript file."""
    text = path.read_text(encoding="utf-8")
    return dict(re.findall(r"export const (\w+) = '([^']*)';", text))


def test_every_setting_is_mirrored_both_ways() -> None:
    names = {key.removeprefix("greentrack.") for key in PROPERTIES}
    assert all(key.startswith("greentrack.") for key in PROPERTIES)
    assert names == set(EXTENSION_SETTINGS)


def test_mirrored_settings_name_real_fields() -> None:
    field_names = {f.name for f in fields(Settings)}
    for key, field_name in EXTENSION_SETTINGS.items():
        assert field_name == "" or field_name in field_names, key
    # pythonPath is the client's (which interpreter starts the server), not the server's.
    assert EXTENSION_SETTINGS["pythonPath"] == ""


@pytest.mark.parametrize(("key", "literal"), [("backend", config.Backend), ("device", config.DeviceChoice)])
def test_enums_match(key: str, literal: Any) -> None:
    assert PROPERTIES[f"greentrack.{key}"]["enum"] == list(typing.get_args(literal))


def test_defaults_match_the_servers() -> None:
    defaults = Settings()
    for key, field_name in EXTENSION_SETTINGS.items():
        default = PROPERTIES[f"greentrack.{key}"]["default"]
        if not field_name or default in (None, ""):  # empty: "the server's default" (environment, then built-in)
            continue
        assert default == getattr(defaults, field_name), key


def test_sending_the_extension_defaults_changes_nothing() -> None:
    sent = {key: PROPERTIES[f"greentrack.{key}"]["default"] for key in EXTENSION_SETTINGS if key != "pythonPath"}
    base = Settings.from_env()
    assert settings_from_client({"greentrack": sent}, base) == base


def test_notification_and_command_names_match_the_server() -> None:
    ts = _ts_string_constants(EXTENSION_SRC / "protocol.ts")
    assert ts["ENERGY_NOTIFICATION"] == protocol.ENERGY_NOTIFICATION
    assert ts["STATUS_NOTIFICATION"] == protocol.STATUS_NOTIFICATION
    assert ts["ACCEPT_COMMAND"] == protocol.ACCEPT_COMMAND
    assert ts["UNREACHABLE_PREFIX"] == protocol.UNREACHABLE_PREFIX
    # greentrack.accept is the server's command (executeCommandProvider): the client must not declare it.
    contributed = {c["command"] for c in PACKAGE["contributes"]["commands"]}
    assert protocol.ACCEPT_COMMAND not in contributed


def test_commands_and_languages_in_the_sources_match_package_json() -> None:
    text = (EXTENSION_SRC / "settings.ts").read_text(encoding="utf-8")
    block = text[text.index("export const Commands") :]
    block = block[: block.index("} as const")]
    in_source = set(re.findall(r"'(greentrack\.\w+)'", block))
    contributed = {c["command"] for c in PACKAGE["contributes"]["commands"]}
    assert in_source == contributed
    languages_block = text[text.index("export const LANGUAGES") :]
    languages_block = languages_block[: languages_block.index("];")]
    languages = set(re.findall(r"'([\w-]+)'", languages_block))
    activation = {e.removeprefix("onLanguage:") for e in PACKAGE["activationEvents"] if e.startswith("onLanguage:")}
    assert languages == activation


def test_manifest_basics() -> None:
    assert PACKAGE["engines"]["vscode"] == "^1.138.0"
    assert PACKAGE["devDependencies"]["@types/vscode"] == "1.138.0"
    # One esbuild bundle runs in VS Code (vscode-languageclient inside it: no runtime dependencies).
    assert PACKAGE["main"] == "./extension/dist/extension.js"
    assert not PACKAGE.get("dependencies")
    major = int(PACKAGE["devDependencies"]["vscode-languageclient"].lstrip("^~").split(".")[0])
    assert major >= 10  # inline completion is forwarded by default from 10.0.1 on
