"""One request's generation as both backends run it: healed text, stop and budget decisions, spans, the result.

Flow: a backend builds the prompt (``prompt.PromptBuilder``) and opens a ``GenerationState`` for the request.
While tokens come (the transformers backend's own decode loop, or the vLLM engine thread's step outputs) it
hands each cumulative raw text to ``update``, which drops the re-spelled heal text; ``stop_rule`` asks
``stops.check_stop`` whether the suggestion is complete (never while the heal text is still being re-spelled),
``budget_reason`` whether the token or time budget is spent. The backend records its phase spans
(``record``, ``record_step``) and ends with ``result``: the one place an ``EngineResult`` is assembled (the
heal-text rule, ``stops.clean_completion``, ``cancelled`` from the stop reason), or ``cancelled_before_start``
for a request cancelled before it reached the model. Backend-neutral: no torch, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from greentrack.energy.types import PhaseKind, PhaseSpan
from greentrack.engine.stops import BudgetReason, StopContext, StopDecision, budget_stop, check_stop, clean_completion
from greentrack.engine.types import CompletionRequest, EngineResult, Extras, StopReason

#: A token budget no request reaches: where the engine enforces ``max_tokens`` itself (vLLM's SamplingParams).
NO_TOKEN_BUDGET = 1 << 30


@dataclass
class GenerationState:
    """What one generation has produced so far. ``started_s`` is on ``time.monotonic()``'s clock.

    ``text`` is the suggestion so far, heal text removed (not yet cleaned); ``completion_tokens`` the tokens
    generated; ``spans`` the request's phase spans (prefill, decode) and ``step_spans`` its per-engine-step
    decode spans where the backend has them (vLLM batching).
    """

    request: CompletionRequest
    prompt_tokens: int
    stop_ctx: StopContext
    started_s: float
    heal_text: str = ""
    stop_rules: bool = True  # False: only the end token and the budgets end generation (benchmarks' baseline)
    text: str = ""
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0
    spans: list[PhaseSpan] = field(default_factory=list)
    step_spans: list[PhaseSpan] = field(default_factory=list)
    #: When the time budget (``max_time_s``) starts: ``started_s`` unless the engine takes the request later
    #: (``begin_budget``: vLLM's engine thread admits waiting requests between steps). Units: s, monotonic.
    budget_from_s: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    # -- while generating ------------------------------------------------------------------------------

    def update(self, raw: str, completion_tokens: int) -> str:
        """Everything generated so far (``raw``, detokenized) → ``text``, the heal text it re-spelled removed."""
        self.completion_tokens = completion_tokens
        heal = self.heal_text
        self.text = raw[len(heal) :] if raw.startswith(heal) else raw
        return self.text

    def stop_rule(self, *, healing: bool) -> StopDecision | None:
        """The stop rules' decision on ``text`` (which it then cuts to what is kept); none while ``healing``."""
        if healing or not self.stop_rules:
            return None
        decision = check_stop(self.text, self.stop_ctx)
        if decision is not None:
            self.text = decision.text
        return decision

    def budget_reason(self, now_s: float, *, max_tokens: int | None = None) -> BudgetReason | None:
        """``max_tokens`` / ``max_time`` when a budget is spent at ``now_s``, else None. ``max_tokens``
        overrides the request's (``NO_TOKEN_BUDGET`` where the engine counts tokens itself)."""
        limit = self.request.max_tokens if max_tokens is None else max_tokens
        since_s = self.started_s if self.budget_from_s is None else self.budget_from_s
        return budget_stop(self.completion_tokens, now_s - since_s, limit, self.request.max_time_s)

    def begin_budget(self, now_s: float) -> None:
        """The engine takes the request now: its generation time counts from here, as in the transformers backend,
        whose budget starts once it holds the model (a request that waited behind another's long step is not spent
        before any step served it)."""
        self.budget_from_s = now_s

    def record(self, kind: PhaseKind, start_s: float, end_s: float, work: float) -> None:
        """One phase span of this request (after a device synchronize, or from the engine's timestamps)."""
        self.spans.append(PhaseSpan(self.request_id, kind, start_s, end_s, work))

    def record_step(self, start_s: float, end_s: float, tokens: float) -> None:
        """One engine step's share of the decode: ``tokens`` produced for this request between the times."""
        self.step_spans.append(PhaseSpan(self.request_id, "decode", start_s, end_s, tokens))

    # -- the result ----------------------------------------------------------------------------------------

    def result(self, reason: StopReason, *, ended_s: float, extras: Extras) -> EngineResult:
        """The finished (or cancelled) generation. A suggestion that stopped before re-spelling the heal text
        is empty (what it has is already in the document); ``extras`` gains ``raw_text``."""
        text = self.text
        if self.heal_text and self.heal_text.startswith(text):
            text = ""
        extras["raw_text"] = text
        return EngineResult(
            request_id=self.request_id,
            text=clean_completion(text, self.stop_ctx),
            prompt_tokens=self.prompt_tokens,
            reused_prompt_tokens=self.reused_prompt_tokens,
            completion_tokens=self.completion_tokens,
            spans=list(self.spans),
            started_s=self.started_s,
            ended_s=ended_s,
            cancelled=reason == "cancelled",
            stop_reason=reason,
            extras=extras,
        )

    def cancelled_before_start(self, now_s: float, extras: Extras) -> EngineResult:
        """The result of a request cancelled before its prefill: nothing ran, nothing to attribute."""
        return EngineResult(self.request_id, "", self.prompt_tokens, 0, 0, [], self.started_s, now_s,
                            cancelled=True, stop_reason="cancelled", extras=extras)
