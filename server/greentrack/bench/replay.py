"""The replay: each configuration types the same script as the editor would drive the product, interleaved.

Place in the flow: after ``script`` (what is typed and when), before ``results`` (the figures). A ``Target`` is what
answers completion requests: ``PipelineTarget`` runs the real ``Pipeline`` in this process (the language server's
own path: ``Pipeline.run`` with its suggestion cache, then ``Pipeline.finalize_later``, ``Pipeline.accept``);
``HttpTarget`` asks a running ``greentrack serve`` (``POST /v1/greentrack/complete``, ``…/cancel``, ``…/accept``,
the record's long-poll).

Token budget (``greentrack bench --budget``): ``fixed``, every request gets the target's own budget (the settings'
``max_tokens``; for ``HttpTarget`` the server's); ``line``, each request asks for the tokens of what the developer
types next from its position (``script.line_budget_tokens``, capped by the settings' ``max_tokens``), for
random-weight models that never stop at a line end.

Timing, as the language server does it (``lsp/server.py``): every keystroke sends a request; the server waits the
debounce; a newer keystroke cancels the request before it (superseded while waiting or queued: it never reaches the
model; generating: stopped within one decode step, its energy still logged as ``cancelled``); one generation at a
time. The developer's clock is virtual: the gaps where nothing runs are skipped rather than slept, while every
generation runs in real time and is cancelled after exactly the real time left until the next keystroke. So the
debounce, the queueing and the cancellations are those of real typing, and the replay takes little longer than the
model's own work.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from greentrack.bench.script import Segment, accepted_length, keystroke_delay_s, keystroke_length, line_budget_tokens
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.errors import GreentrackError

if TYPE_CHECKING:
    from greentrack.pipeline import Pipeline
    from greentrack.record import CompletionRecord

#: After the last keystroke of a file, the developer waits this long (s) before the next file.
END_WAIT_S = 2.0


@dataclass(frozen=True)
class Config:
    """One configuration: which of the product's optimizations are on (``debounce_ms`` 0: off)."""

    name: str
    debounce_ms: int
    reuse: bool
    stop_rules: bool
    cache: bool
    model: str | None = None  # None: the settings' model

    def describe(self) -> str:
        on = [n for n, v in (("debounce", self.debounce_ms > 0), ("KV reuse", self.reuse),
                             ("stop rules", self.stop_rules), ("cache", self.cache)) if v]
        text = " + ".join(on) if on else "nothing"
        return f"{text} ({self.model})" if self.model else text


def standard_configs(debounce_ms: int) -> list[Config]:
    """The naive baseline, each optimization alone, all together."""
    return [
        Config("naive", 0, reuse=False, stop_rules=False, cache=False),
        Config("debounce", debounce_ms, reuse=False, stop_rules=False, cache=False),
        Config("kv-reuse", 0, reuse=True, stop_rules=False, cache=False),
        Config("stop-rules", 0, reuse=False, stop_rules=True, cache=False),
        Config("cache", 0, reuse=False, stop_rules=False, cache=True),
        Config("all", debounce_ms, reuse=True, stop_rules=True, cache=True),
    ]


@dataclass
class Served:
    """One request's answer. ``reached``: it has a record (it reached the pipeline); ``duration_s``: real time."""

    completion_id: str
    text: str
    cancelled: bool
    reached: bool
    duration_s: float
    stop_reason: str = ""
    cached: bool = False


class Target(Protocol):
    """What answers the replay's requests for one configuration."""

    def complete(self, completion_id: str, document_key: str, text: str, offset: int,
                 cancel_after_s: float, max_tokens: int | None = None) -> Served:
        """One request; ``max_tokens`` None: the target's own budget."""
        ...

    def accept(self, completion_id: str) -> None: ...

    def records(self) -> list[dict[str, Any]]:
        """Every record of this configuration, with the fields of ``greentrack/energy`` (after the replay)."""
        ...

    def close(self) -> None: ...


class PipelineTarget:
    """The product's pipeline in this process, configured as ``config`` says (``open_pipelines``)."""

    def __init__(self, pipeline: Pipeline, developer: str, max_tokens: int, max_time_s: float,
                 context_tokens: int) -> None:
        self.pipeline = pipeline
        self.developer = developer
        self.max_tokens, self.max_time_s, self.context_tokens = max_tokens, max_time_s, context_tokens
        self._futures: list[Future[CompletionRecord]] = []

    def complete(self, completion_id: str, document_key: str, text: str, offset: int,
                 cancel_after_s: float, max_tokens: int | None = None) -> Served:
        from greentrack.pipeline import RequestContext

        token = CancelToken()
        timer = threading.Timer(max(0.0, cancel_after_s), token.cancel)  # the next keystroke supersedes it
        budget = self.max_tokens if max_tokens is None else max_tokens
        request = CompletionRequest(completion_id, document_key, text, offset, "python", budget,
                                    self.max_time_s, self.context_tokens)
        self.pipeline.monitor.expect_work()
        received_s = time.monotonic()
        timer.start()
        try:
            result = self.pipeline.run(request, token)
        finally:
            timer.cancel()
        duration_s = time.monotonic() - received_s
        if token.cancelled:  # superseded mid-way: the editor cancels it ($/cancelRequest), nothing is shown
            result.cancelled = True
        context = RequestContext(document_key, "python", received_s, developer=self.developer)
        self._futures.append(self.pipeline.finalize_later(result, context))
        return Served(completion_id, "" if result.cancelled else result.text, result.cancelled, True, duration_s,
                      result.stop_reason, result.from_cache)

    def accept(self, completion_id: str) -> None:
        if not self.pipeline.accept(completion_id):
            raise GreentrackError(f"bench: completion {completion_id} was not stored, so it cannot be accepted")

    def records(self) -> list[dict[str, Any]]:
        rows = []
        for future in self._futures:
            record = future.result(timeout=60)
            row = record.energy_fields()
            rows.append(row)
        return rows

    def close(self) -> None:
        self.pipeline.close()


class HttpTarget:
    """A running ``greentrack serve``: the native endpoint, cancel, accept, and each record's long-poll."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._ids: list[str] = []

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """JSON in and out; None for a 404 (a completion cancelled before it reached the model has no record)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise GreentrackError(f"bench: {method} {self.url}{path} answered {e.code}: {e.read()[:200]!r}") from e
        except (urllib.error.URLError, OSError) as e:
            raise GreentrackError(f"bench: cannot reach {self.url} ({e})") from e

    def complete(self, completion_id: str, document_key: str, text: str, offset: int,
                 cancel_after_s: float, max_tokens: int | None = None) -> Served:
        """``max_tokens`` None: the server's own budget (the body has no ``max_tokens``)."""
        def cancel() -> None:
            with contextlib.suppress(GreentrackError):  # it finished meanwhile: the answer says so
                self._call("POST", "/v1/greentrack/cancel", {"completion_id": completion_id})

        body: dict[str, Any] = {"text": text, "offset": offset, "uri": document_key, "language_id": "python",
                                "completion_id": completion_id}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        timer = threading.Timer(max(0.0, cancel_after_s), cancel)
        started_s = time.monotonic()
        timer.start()
        try:
            answer = self._call("POST", "/v1/greentrack/complete", body) or {}
        finally:
            timer.cancel()
        duration_s = time.monotonic() - started_s
        self._ids.append(completion_id)
        green = answer.get("greentrack") or {}
        cancelled = bool(answer.get("cancelled"))
        return Served(completion_id, "" if cancelled else str(answer.get("text") or ""), cancelled, True, duration_s,
                      str(green.get("stop_reason") or ""), green.get("outcome") == "cached")

    def suggestion_cache(self) -> bool | None:
        """Whether the server runs its suggestion cache (``GET /health``); None when it does not say (older)."""
        health = self._call("GET", "/health") or {}
        on = health.get("suggestion_cache")
        return on if isinstance(on, bool) else None

    def accept(self, completion_id: str) -> None:
        self._call("POST", "/v1/greentrack/accept", {"completion_id": completion_id})

    def records(self) -> list[dict[str, Any]]:
        rows = []
        for cid in self._ids:
            row = self._call("GET", f"/v1/greentrack/completions/{cid}?wait=30")
            if row is not None and row.get("energy_final", True) is not False:
                rows.append(row)
        return rows

    def close(self) -> None:
        pass


@dataclass
class ConfigRun:
    """What one configuration's replay saw, beside its records. Times in ms of the developer's clock."""

    config: Config
    keystrokes: int = 0
    tabs: int = 0
    requests: int = 0
    superseded_before_model: int = 0
    shown: int = 0
    accepted_ids: list[str] = field(default_factory=list)
    latency_by_id: dict[str, float] = field(default_factory=dict)  # keystroke → suggestion (ms), per shown one
    stop_reasons: Counter[str] = field(default_factory=Counter)
    typed_chars: int = 0
    accepted_chars: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    virtual_s: float = 0.0
    #: Every suggestion shown: the file, the position in its typed text, the suggestion, what the developer types
    #: next (as long as the suggestion, at least to the line end), the characters taken with Tab (0: not taken).
    shown_log: list[dict[str, Any]] = field(default_factory=list)


def replay(target: Target, run: ConfigRun, segments: Sequence[Segment], seed: int,
           on_chars: Callable[[int], None] | None = None, *, line_budget_cap: int | None = None) -> Iterator[None]:
    """Type ``segments`` against ``target``; yields after every keystroke (the driver interleaves configurations).
    ``line_budget_cap`` None: every request gets the target's own budget (``--budget fixed``); else each asks for
    ``line_budget_tokens`` of what is typed next from its position, at most this many tokens (``--budget line``)."""
    debounce_s = run.config.debounce_ms / 1000.0
    for segment in segments:
        document_key = f"file:///bench/{run.config.name}/{segment.name}"
        typed = segment.typed
        upcoming = typed + segment.after  # what the developer types next, judged by the oracle past the segment too
        position, now_s, busy_until_s = 0, 0.0, 0.0
        shown: Served | None = None
        while position < len(typed):
            take = _judge(target, run, segment, position, shown, upcoming[position:])
            if not take:
                take = keystroke_length(upcoming, position)
                run.keystrokes += 1
                run.typed_chars += take
            position += take
            shown = None
            key_s = now_s
            next_s = key_s + (keystroke_delay_s(segment, position, seed) if position < len(typed) else END_WAIT_S)
            run.requests += 1
            start_s = max(key_s + debounce_s, busy_until_s)
            if start_s >= next_s:  # the next keystroke comes first: superseded while waiting, never reaches the model
                run.superseded_before_model += 1
            else:
                text = segment.before + upcoming[:position]
                budget = None if line_budget_cap is None else line_budget_tokens(upcoming[position:], line_budget_cap)
                served = target.complete(uuid.uuid4().hex, document_key, text, len(text), next_s - start_s,
                                         max_tokens=budget)
                end_s = start_s + served.duration_s
                busy_until_s = end_s
                run.stop_reasons["cached" if served.cached else (served.stop_reason or "none")] += 1
                if served.text and not served.cancelled and end_s <= next_s:
                    shown = served
                    run.shown += 1
                    run.latency_by_id[served.completion_id] = (end_s - key_s) * 1000.0
            if on_chars is not None:
                on_chars(take)
            yield
            now_s = next_s
        _judge(target, run, segment, position, shown, upcoming[position:])  # shown after the last keystroke
        run.virtual_s += now_s


def _judge(target: Target, run: ConfigRun, segment: Segment, position: int, shown: Served | None,
           upcoming: str) -> int:
    """The oracle on the suggestion shown now: Tab (accepted on ``target``) when the developer would take it.
    Returns the characters taken, 0 when none. Every suggestion judged is logged in ``run.shown_log``."""
    if shown is None:
        return 0
    take = accepted_length(shown.text, upcoming)
    line_end = upcoming.find("\n", 1)
    run.shown_log.append({
        "file": segment.name, "position": position, "suggestion": shown.text,
        "next": upcoming[:max(len(shown.text), line_end if line_end >= 0 else len(upcoming))],
        "taken": take, "cached": shown.cached, "latency_ms": run.latency_by_id.get(shown.completion_id),
    })
    if take:
        target.accept(shown.completion_id)
        run.accepted_ids.append(shown.completion_id)
        run.tabs += 1
        run.accepted_chars += take
    return take


def interleave(replays: Sequence[Iterator[None]]) -> None:
    """Step every replay one keystroke at a time, round-robin, the order rotating each round, so that the shared
    machine's load (other processes, thermal state) hits every configuration alike."""
    active = list(replays)
    round_index = 0
    while active:
        shift = round_index % len(active)
        for item in active[shift:] + active[:shift]:
            try:
                next(item)
            except StopIteration:
                active.remove(item)
        round_index += 1
