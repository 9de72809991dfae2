"""Engine test fixtures: the real embedded model on CPU, loaded once per session (float32 for exact greedy checks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from greentrack.engine.loading import LoadedModel, load_model, resolve_model
from greentrack.engine.transformers_backend import TransformersBackend


@pytest.fixture(scope="session")
def loaded() -> LoadedModel:
    return load_model(resolve_model("embedded"), "cpu", "float32")


@pytest.fixture(scope="session")
def backend(loaded: LoadedModel) -> Iterator[TransformersBackend]:
    b = TransformersBackend(loaded=loaded)
    yield b
    b.close()
