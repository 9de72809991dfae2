"""open_backend: dispatch on settings.backend, clear errors for what is not installed or not found."""

from __future__ import annotations

import sys

import pytest

from greentrack.config import Settings
from greentrack.engine.factory import open_backend
from greentrack.errors import BackendUnavailable, ModelLoadError


def test_vllm_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "greentrack.engine.vllm_backend", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailable, match=r"pip install 'greentrack\[vllm\]'"):
        open_backend(Settings(backend="vllm"))


def test_unknown_backend() -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        open_backend(Settings(backend="llamacpp"))  # type: ignore[arg-type]


def test_transformers_with_missing_model_path() -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_backend(Settings(backend="transformers", model="/no/such/model.gguf"))
