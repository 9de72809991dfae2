"""The vLLM backend without its extra: a clear ``BackendUnavailable`` that names the install command.

Runs everywhere (no vllm needed): the import is made to fail by putting ``None`` in ``sys.modules``.
"""

from __future__ import annotations

import sys

import pytest

from greentrack.errors import BackendUnavailable


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_import_names_the_extra(no_vllm: None) -> None:
    from greentrack.engine.vllm_setup import import_vllm

    with pytest.raises(BackendUnavailable) as info:
        import_vllm()
    message = str(info.value)
    assert "pip install 'greentrack[vllm]'" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, ImportError)


def test_backend_construction_fails_before_loading_anything(
    no_vllm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from greentrack.engine import loading, vllm_backend

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not be resolved when vllm is missing")

    monkeypatch.setattr(loading, "resolve_model", must_not_run)
    with pytest.raises(BackendUnavailable, match=r"pip install 'greentrack\[vllm\]'"):
        vllm_backend.VllmBackend()


def test_a_broken_install_is_reported_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm present but failing at import (e.g. a CUDA torchvision next to the CPU torch)."""
    import importlib.abc

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "vllm" or name.startswith("vllm."):
                raise RuntimeError("operator torchvision::nms does not exist")
            return None

    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    from greentrack.engine.vllm_setup import import_vllm

    with pytest.raises(BackendUnavailable, match=r"cannot be imported .*torchvision::nms"):
        import_vllm()
