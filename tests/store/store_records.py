"""A factory of completion records with known figures, for the store tests."""

from __future__ import annotations

from typing import Any

from greentrack.record import CompletionRecord


def make_record(i: int, **overrides: Any) -> CompletionRecord:
    """A completion with simple figures derived from ``i``. Units: ms, J."""
    fields: dict[str, Any] = dict(
        completion_id=f"c{i:06d}", uri="file:///w/a.py", language_id="python", model="m-small",
        backend="transformers", device="cpu", prompt_tokens=100 + i, reused_prompt_tokens=0,
        completion_tokens=8, prefill_ms=10.0, decode_ms=40.0, latency_ms=55.0, prefill_j=0.25, decode_j=1.0,
        total_j=1.25, method="estimated", meter="test", uncertainty_j=None, co2e_g=0.0, outcome="shown",
        ts=f"2026-11-18T10:{i // 60 % 60:02d}:{i % 60:02d}+00:00", developer="dev@example.com",
    )
    fields.update(overrides)
    return CompletionRecord(**fields)


