"""The per-request generation state both backends share: heal text, stop rules, budgets, the result.

Pure: a request, a stop context from real text, raw texts as a backend would hand them over.
"""

from __future__ import annotations

from greentrack.engine.generation import NO_TOKEN_BUDGET, GenerationState
from greentrack.engine.stops import stop_context
from greentrack.engine.types import CompletionRequest

PREFIX = "def area(r):\n    retu"


def state(heal_text: str = "", *, stop_rules: bool = True, max_tokens: int = 8) -> GenerationState:
    request = CompletionRequest("r1", "file:///a.py", PREFIX, len(PREFIX), max_tokens=max_tokens, max_time_s=1.0)
    return GenerationState(request, 12, stop_context(PREFIX, ""), 100.0, heal_text, stop_rules)


def test_the_heal_text_is_removed_once_re_spelled() -> None:
    s = state(" retu")
    assert s.update(" re", 1) == " re"  # still re-spelling: nothing removed yet
    assert s.update(" return r", 2) == "rn r"
    assert s.completion_tokens == 2


def test_stop_rules_wait_for_the_heal_text_and_cut_the_text() -> None:
    s = state()
    s.update("rn 3.14 * r * r\n    x", 6)
    assert s.stop_rule(healing=True) is None
    decision = s.stop_rule(healing=False)
    assert decision is not None and decision.reason == "newline"
    assert s.text == "rn 3.14 * r * r"
    assert state(stop_rules=False).stop_rule(healing=False) is None


def test_budgets() -> None:
    s = state(max_tokens=3)
    s.update("abc", 3)
    assert s.budget_reason(100.1) == "max_tokens"
    assert s.budget_reason(100.1, max_tokens=NO_TOKEN_BUDGET) is None
    assert s.budget_reason(101.0, max_tokens=NO_TOKEN_BUDGET) == "max_time"


def test_result_assembles_spans_text_and_reason() -> None:
    s = state(" retu")
    s.reused_prompt_tokens = 4
    s.record("prefill", 100.0, 100.2, 8.0)
    s.record_step(100.2, 100.3, 1.0)
    s.update(" return 3.14 * r * r", 5)
    r = s.result("eos", ended_s=100.5, extras={"heal_text": " retu"})
    assert (r.text, r.stop_reason, r.cancelled) == ("rn 3.14 * r * r", "eos", False)
    assert (r.prompt_tokens, r.reused_prompt_tokens, r.completion_tokens) == (12, 4, 5)
    assert [sp.kind for sp in r.spans] == ["prefill"] and s.step_spans[0].work == 1.0
    assert (r.started_s, r.ended_s) == (100.0, 100.5)
    assert r.extras["raw_text"] == "rn 3.14 * r * r"


def test_stopped_before_the_heal_text_was_re_spelled_shows_nothing() -> None:
    s = state(" retu")
    s.update(" re", 1)
    r = s.result("max_tokens", ended_s=100.1, extras={})
    assert r.text == "" and r.stop_reason == "max_tokens"


def test_cancelled_results() -> None:
    s = state()
    s.update("rn", 1)
    assert s.result("cancelled", ended_s=100.1, extras={}).cancelled
    early = state().cancelled_before_start(100.05, {"backend": "vllm"})
    assert early.cancelled and early.stop_reason == "cancelled" and early.spans == [] and early.text == ""
    assert (early.prompt_tokens, early.completion_tokens, early.ended_s) == (12, 0, 100.05)
