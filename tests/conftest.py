"""Test-suite wide settings: layers run in order (unit → meters → end-to-end last); GPU tests skip without CUDA.

Every test gets its own XDG data/state folders and database so nothing touches the user's real files; the
model conversion cache (XDG_CACHE_HOME) is shared so the embedded model is converted once per machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

_LAST = ("e2e", "vllm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end tests run last (style guide: by layer)."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("e2e"):
            return 2
        if item.get_closest_marker("vllm"):
            return 1
        return 0

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("GREENTRACK_DB", str(home / "data" / "greentrack" / "greentrack.db"))
    monkeypatch.setenv("GREENTRACK_DEVELOPER", "test@example.com")
    monkeypatch.delenv("GREENTRACK_MODEL", raising=False)
    monkeypatch.delenv("GREENTRACK_CARBON_INTENSITY", raising=False)
    yield


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
