"""vLLM's per-request timestamps → greentrack's phase spans (the vLLM backend's side of the energy hand-over).

Flow: after each engine step the backend copies a request's metrics (``RequestOutput.metrics``, a
``RequestStateStats``) into a ``RequestStats``; when the request ends, ``phase_spans`` turns them into its
prefill and decode ``PhaseSpan``s. The engine core stamps ``time.monotonic()`` (in this process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``; CLOCK_MONOTONIC is system-wide on Linux anyway); only ``arrival_time``
is wall-clock, converted by ``wall_to_monotonic``. Plain data: no vllm import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from greentrack.energy.types import PhaseSpan


def wall_to_monotonic(wall_s: float) -> float:
    """A ``time.time()`` reading (vLLM's ``arrival_time``) on ``time.monotonic()``'s clock. Units: s."""
    return wall_s - time.time() + time.monotonic()


@dataclass
class RequestStats:
    """A copy of vLLM's ``RequestStateStats`` (that object is mutated in place after every step). Units: s."""

    arrival_wall_s: float = 0.0
    queued_s: float = 0.0
    scheduled_s: float = 0.0
    first_token_s: float = 0.0
    last_token_s: float = 0.0

    @classmethod
    def of(cls, metrics: Any) -> RequestStats:
        if metrics is None:
            return cls()
        return cls(
            float(getattr(metrics, "arrival_time", 0.0) or 0.0),
            float(getattr(metrics, "queued_ts", 0.0) or 0.0),
            float(getattr(metrics, "scheduled_ts", 0.0) or 0.0),
            float(getattr(metrics, "first_token_ts", 0.0) or 0.0),
            float(getattr(metrics, "last_token_ts", 0.0) or 0.0),
        )


def phase_spans(
    request_id: str,
    stats: RequestStats,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    aborted_s: float | None = None,
) -> list[PhaseSpan]:
    """Prefill and decode spans from vLLM's request metrics (engine-core monotonic seconds).

    Prefill: ``scheduled_ts`` → ``first_token_ts``, work = prompt tokens actually computed (not reused).
    Decode: ``first_token_ts`` → ``last_token_ts``, work = tokens decoded after the first. A request aborted
    before its first token (mid-way through a chunked prefill) gets a prefill span up to ``aborted_s``.
    The engine runs in process, so an abort always falls between two steps: no step is left in flight.
    """
    spans: list[PhaseSpan] = []
    computed = float(max(1, prompt_tokens - cached_tokens))
    if not stats.scheduled_s:
        return spans
    if not stats.first_token_s:
        if aborted_s is not None and aborted_s > stats.scheduled_s:
            spans.append(PhaseSpan(request_id, "prefill", stats.scheduled_s, aborted_s, computed))
        return spans
    spans.append(PhaseSpan(request_id, "prefill", stats.scheduled_s, stats.first_token_s, computed))
    end = max(stats.last_token_s, stats.first_token_s)
    if completion_tokens > 1 and end > stats.first_token_s:
        spans.append(PhaseSpan(request_id, "decode", stats.first_token_s, end, float(completion_tokens - 1)))
    return spans
