"""Value types and the backend protocol shared by the engines (transformers, vLLM) and the pipeline.

A backend turns a ``CompletionRequest`` (document text and cursor) into an ``EngineResult``: the suggestion,
token counts, and the exact phase spans (``PhaseSpan``) that the energy layer attributes energy to.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

from greentrack.energy.types import PhaseSpan
from greentrack.engine.stops import BudgetReason, Mode, StopRuleReason

#: Why a generation ended: the model's end token, a stop rule, a budget, the caller, or an engine failure
#: (set by the pipeline).
StopReason = Literal["eos", StopRuleReason, BudgetReason, "cancelled", "error"]


@dataclass(frozen=True)
class CompletionRequest:
    """What to complete. ``offset`` is a Python ``str`` index into ``text`` (the cursor)."""

    request_id: str
    document_key: str  # KV reuse is kept per document (the LSP uri, or the file path)
    text: str
    offset: int
    language_id: str = "python"
    max_tokens: int = 64
    max_time_s: float = 1.5
    context_tokens: int = 1024


class CancelToken:
    """Set by whoever wants the generation stopped; backends check it at every decode step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Extras(TypedDict, total=False):
    """What a result carries beside its figures: diagnostics (``doctor``, tests), and the vLLM backend's
    per-step decode spans (``step_spans``), which the batched attribution (``energy.batching``) uses."""

    # both backends
    fim: str | None  # the FIM family of the prompt (None: prefix-only)
    heal_text: str  # text backed off the prompt that the first tokens re-spelled
    raw_text: str  # the suggestion before ``stops.clean_completion``
    # transformers
    mode: Mode
    runner: str  # "dynamic" | "static" (``runners``) | "cpu-int4" (``cpu_decode``)
    cuda_graph: bool
    dtype: str
    prefill_ms: float
    decode_ms: float
    # vLLM: the engine's own request id and timestamps (``time.monotonic()`` seconds, None where not reached)
    backend: str
    vllm: str
    engine_request_id: str
    arrival_s: float | None
    queued_s: float | None
    scheduled_s: float | None
    first_token_s: float | None
    last_token_s: float | None
    step_spans: list[PhaseSpan]
    # the pipeline, for a generation that failed in the engine
    error: str
    # the pipeline, for a suggestion served from its suggestion cache: the completion it comes from
    cached_from: str


@dataclass
class EngineResult:
    """A finished (or cancelled) generation.

    ``text`` is the suggestion to insert at the cursor, after stop rules and suffix de-duplication.
    ``spans`` holds this request's prefill span and (when any token was decoded after the first) its decode
    span, on ``time.monotonic()``'s clock, each taken after a device synchronize.
    """

    request_id: str
    text: str
    prompt_tokens: int
    reused_prompt_tokens: int
    completion_tokens: int
    spans: list[PhaseSpan]
    started_s: float
    ended_s: float
    cancelled: bool = False
    stop_reason: StopReason | Literal[""] = ""  # "": not given (a result built by hand)
    extras: Extras = field(default_factory=Extras)

    def span(self, kind: str) -> PhaseSpan | None:
        return next((s for s in self.spans if s.kind == kind), None)

    @property
    def from_cache(self) -> bool:
        """Whether the suggestion cache served it (``extras["cached_from"]``): no model work was done."""
        return "cached_from" in self.extras

    @property
    def step_spans(self) -> list[PhaseSpan]:
        """The per-engine-step decode spans where the backend recorded them (vLLM), else none."""
        return self.extras.get("step_spans", [])


class CompletionBackend(Protocol):
    """An engine that runs one model. One generation at a time per backend instance (callers serialize)."""

    name: str  # "transformers" | "vllm"
    model_id: str  # what the user named (or "embedded")
    device: str  # "cpu", "cuda:0", ...

    def complete(self, request: CompletionRequest, cancel: CancelToken) -> EngineResult: ...

    def close(self) -> None: ...
