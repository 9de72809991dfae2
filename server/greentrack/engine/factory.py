"""Backend factory: the user's ``Settings`` → a ready ``CompletionBackend`` (the pipeline's only entry to engines).

``transformers`` (default) runs in this process on CPU or CUDA; ``vllm`` is an optional extra, imported only
when asked for, so a missing install is one clear ``BackendUnavailable`` line.
"""

from __future__ import annotations

from typing import Any

from greentrack.config import Settings
from greentrack.engine.types import CompletionBackend
from greentrack.errors import BackendUnavailable

VLLM_INSTALL = "pip install 'greentrack[vllm]'"


def open_backend(settings: Settings, **kwargs: Any) -> CompletionBackend:
    """Load the model ``settings.model`` on the backend ``settings.backend`` (may take seconds: show a status)."""
    backend = (settings.backend or "transformers").lower()
    if backend == "transformers":
        from greentrack.engine.transformers_backend import TransformersBackend

        return TransformersBackend.from_settings(settings, **kwargs)
    if backend == "vllm":
        try:
            from greentrack.engine.vllm_backend import VllmBackend
        except ImportError as e:
            raise BackendUnavailable(f"the vllm backend is not installed ({e}); run `{VLLM_INSTALL}`") from e
        return _vllm(VllmBackend, settings, kwargs)
    raise BackendUnavailable(f"unknown backend {settings.backend!r} (use transformers or vllm)")


def _vllm(cls: Any, settings: Settings, kwargs: dict[str, Any]) -> CompletionBackend:
    if hasattr(cls, "from_settings"):
        backend: CompletionBackend = cls.from_settings(settings, **kwargs)
    else:
        backend = cls(settings.model, settings.device, **kwargs)
    return backend
