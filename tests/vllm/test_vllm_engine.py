"""The vLLM backend for real: the embedded model (converted to safetensors), vLLM's engine, real timestamps.

One engine for the whole module (start-up ~15–25 s on 2 CPU cores). Skipped when vllm is not importable;
the CI set-up installs it with scripts/install-vllm.sh, so these run there.
"""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from tests.vllm.support import Probe, StepCancel

from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed: `pip install 'greentrack[vllm]'` (or scripts/install-vllm.sh VENV)",
    ),
]

if importlib.util.find_spec("vllm") is not None:
    from greentrack.engine.vllm_backend import VllmBackend

#: Real code: a small module the cursor completes in, the typing case of successive keystrokes.
SOURCE = '''"""Geometry helpers."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    x: float
    y: float

    def distance_to(self, other: "Point") -> float:
        return math.hypot(self.x - other.x, self.y - other.y)


def centroid(points: list[Point]) -> Point:
    """The mean of ``points`` (which must not be empty)."""
    if not points:
        raise ValueError("no points")
    n = len(points)
    return Point(sum(p.x for p in points) / n, sum(p.y for p in points) / n)


def bounding_box(points: list[Point]) -> tuple[Point, Point]:
    """The lower-left and upper-right corners of the smallest box holding ``points``."""
    xs = [p.x for p in points]
    ys = [p.y for p in points]
    return Point(min(xs), min(ys)), Point(max(xs), max(ys))


def polygon_area(points: list[Point]) -> float:
    """The area of a simple polygon (shoelace formula), vertices in order."""
    total = 0.0
    for a, b in zip(points, points[1:] + points[:1]):
        total += a.x * b.y - b.x * a.y
    return abs(total) / 2


@dataclass(frozen=True)
class Circle:
    center: Point
    radius: float

    def area(self) -> float:
        return math.pi * self.radius ** 2

    def circumference(self) -> float:
        return 2 * math.pi * self.radius

    def contains(self, p: Point) -> bool:
        return self.center.distance_to(p) <= self.radius


@dataclass(frozen=True)
class Rectangle:
    corner: Point
    width: float
    height: float

    def area(self) -> float:
        return self.width * self.height

    def perimeter(self) -> float:
'''

#: The rest of ``perimeter`` and the start of the next method: the cursor then sits in a new method's body.
DIAGONAL = "        return 2 * (self.width + self.height)\n\n    def diagonal(self) -> float:\n"
EPS_S = 0.005  # the engine and this process read the same monotonic clock; allow scheduling jitter


def unique_source() -> str:
    """The source with a unique first line, so no earlier request in the prefix cache shares its prefix."""
    return f"# {uuid.uuid4().hex}\n" + SOURCE


def request(text: str, rid: str | None = None, *, max_tokens: int = 24, max_time_s: float = 60.0,
            offset: int | None = None) -> CompletionRequest:
    return CompletionRequest(rid or uuid.uuid4().hex[:12], "file:///geometry.py", text,
                             len(text) if offset is None else offset, max_tokens=max_tokens, max_time_s=max_time_s)


@pytest.fixture(scope="module")
def backend() -> Iterator[VllmBackend]:
    b = VllmBackend()
    try:
        yield b
    finally:
        b.close()


def check_spans(r: EngineResult) -> None:
    """Phase spans on this process's monotonic clock, ordered, contiguous, inside the call."""
    prefill = r.span("prefill")
    assert prefill is not None
    assert r.started_s - EPS_S <= prefill.start_s < prefill.end_s <= r.ended_s + EPS_S
    assert prefill.work == max(1, r.prompt_tokens - r.reused_prompt_tokens)
    decode = r.span("decode")
    if r.completion_tokens > 1:
        assert decode is not None
        assert decode.start_s == prefill.end_s
        assert decode.start_s < decode.end_s <= r.ended_s + EPS_S
        assert decode.work == r.completion_tokens - 1
    arrival = r.extras["arrival_s"]
    assert isinstance(arrival, float)
    # vLLM's wall-clock arrival, converted to monotonic: after the call began, before the prefill was scheduled
    assert r.started_s - 0.01 <= arrival <= prefill.start_s + 0.01


def test_completes_real_code(backend: VllmBackend) -> None:
    assert backend.name == "vllm" and backend.device == "cpu" and backend.model_id == "embedded"
    text = unique_source()
    r = backend.complete(request(text + "        return"), CancelToken())
    assert not r.cancelled
    assert r.prompt_tokens > 400
    assert r.reused_prompt_tokens == 0
    assert 1 <= r.completion_tokens <= 24
    assert r.stop_reason in {"newline", "eos", "stop_token", "max_tokens", "max_time"}
    # line mode (text before the cursor on its line): one line at most, cleaned by the shared stop rules
    assert "\n" not in r.text
    assert r.text.strip(), f"empty suggestion (raw {r.extras['raw_text']!r})"
    check_spans(r)


def test_block_completion_after_a_def_with_token_healing(backend: VllmBackend) -> None:
    """The cursor after the new line's indentation: healing keeps the model from doubling the spaces."""
    text = unique_source() + DIAGONAL + "        "
    r = backend.complete(request(text, max_tokens=40), CancelToken())
    check_spans(r)
    assert r.extras["heal_text"], "the trailing spaces were not backed off the prompt"
    assert r.text.strip(), f"empty suggestion ({r.stop_reason})"
    lines = r.text.split("\n")
    assert not lines[0][:1].isspace(), r.text  # re-spelled indentation is not repeated
    # block mode: the lines after the first stay inside the method body (indented past the def)
    assert all(not ln.strip() or len(ln) - len(ln.lstrip()) > 4 for ln in lines[1:]), r.text


def test_healing_inside_a_word(backend: VllmBackend) -> None:
    text = unique_source() + DIAGONAL + "        ret"
    r = backend.complete(request(text, max_tokens=24), CancelToken())
    heal = r.extras["heal_text"]
    assert isinstance(heal, str) and heal.endswith("ret")
    assert r.completion_tokens >= 1
    # what is shown continues the word at the cursor: the re-spelled part is not in the suggestion
    assert not r.text.startswith(("ret", " ")), r.text


def test_prefix_reuse_on_an_extended_request(backend: VllmBackend) -> None:
    text = unique_source() + "        return 2 * (self."
    first = backend.complete(request(text), CancelToken())
    assert first.reused_prompt_tokens == 0
    typed = text + "width + self.height)\n\n    def diagonal(self) -> float:\n        return math."
    second = backend.complete(request(typed), CancelToken())
    check_spans(second)
    # the shared prefix is reused in whole KV blocks: all of the first prompt but its last, partial block
    block = backend.engine.vllm_config.cache_config.block_size
    assert second.reused_prompt_tokens >= first.prompt_tokens - block, (first.prompt_tokens, block, second)
    assert second.reused_prompt_tokens < second.prompt_tokens
    p1, p2 = first.span("prefill"), second.span("prefill")
    assert p1 is not None and p2 is not None
    assert p2.work < 0.5 * p1.work  # only the new part is computed


def test_cancel_aborts_within_a_step(backend: VllmBackend) -> None:
    text = unique_source() + "        return 2 * (self.width + self.height)\n\n\nclass Square(Rectangle):\n"
    token = StepCancel(5)  # polled by complete(), then before steps 1 (prefill), 2, 3 → cancelled before step 4
    r = backend.complete(request(text, max_tokens=64), token)
    assert token.cancelled_at_s is not None
    assert r.cancelled and r.stop_reason == "cancelled"
    assert r.completion_tokens == 3  # the prefill's token and two decode steps, then nothing
    assert r.ended_s - token.cancelled_at_s < 0.5  # aborted at once (no further step produced a token)
    check_spans(r)
    assert backend.engine.has_unfinished_requests() is False  # the engine let go of it
    # the engine serves the next request normally
    again = backend.complete(request(unique_source() + "        return"), CancelToken())
    assert not again.cancelled and again.completion_tokens >= 1


def cancel_mid_decode(backend: VllmBackend) -> tuple[EngineResult, float]:
    """A 64-token request cancelled from another thread (the language server's) in its third engine step: its
    result and when ``cancel()`` was called."""
    text = unique_source() + "        return 2 * (self.width + self.height)\n\n\nclass Square(Rectangle):\n"
    token = Probe(3)
    box: list[EngineResult] = []
    worker = threading.Thread(target=lambda: box.append(backend.complete(request(text, max_tokens=64), token)))
    worker.start()
    assert token.reached.wait(60)
    cancelled_at = time.monotonic()
    token.cancel()
    worker.join(60)
    return box[0], cancelled_at


def test_cancel_from_another_thread(backend: VllmBackend) -> None:
    """The real path: ``cancel()`` from another thread (the language server's), while the engine decodes."""
    r, cancelled_at = cancel_mid_decode(backend)
    if not r.cancelled:  # it finished on its own before the cancel landed: a valid outcome, but say which
        assert r.ended_s <= cancelled_at + 0.2, r.stop_reason
        return
    assert r.stop_reason == "cancelled"
    decode = r.span("decode")
    step_s = decode.duration_s / max(decode.work, 1) if decode is not None else 1.0
    assert r.ended_s - cancelled_at < 3 * step_s + 0.1  # within the step in flight (plus scheduling noise)


def test_two_overlapping_requests_are_attributed_by_step_with_conservation(backend: VllmBackend) -> None:
    from greentrack.energy.monitor import open_monitor
    from greentrack.energy.step_ledger import StepLedger

    monitor = open_monitor("cpu")  # no RAPL here: the CPU-time estimate (a real counter, read in background)
    ledger = StepLedger(monitor)
    assert backend.attach_step_sink(ledger) is None
    try:
        a_text = unique_source() + "        return 2 * (self.width + self.height)\n\n\nclass Square(Rectangle):\n"
        b_text = unique_source() + "        return"
        probe = Probe(4)  # polled by complete(), then before a's steps 1, 2, 3: a is decoding when b arrives
        box: dict[str, EngineResult] = {}
        ta = threading.Thread(target=lambda: box.setdefault(
            "a", backend.complete(request(a_text, "req-a", max_tokens=48), probe)))
        ta.start()
        assert probe.reached.wait(60)
        b = backend.complete(request(b_text, "req-b", max_tokens=8), CancelToken())
        ta.join(120)
        a = box["a"]
        check_spans(a)
        check_spans(b)
        a_decode, b_prefill = a.span("decode"), b.span("prefill")
        assert a_decode is not None and b_prefill is not None
        # they really ran together: b's prefill inside a's decode
        assert a_decode.start_s < b_prefill.start_s and b_prefill.end_s <= a_decode.end_s + EPS_S

        fa = ledger.request_energy(str(a.extras["engine_request_id"]), timeout_s=5.0)
        fb = ledger.request_energy(str(b.extras["engine_request_id"]), timeout_s=5.0)
        assert fa is not None and fb is not None
        assert fa.extrapolated_j == 0.0 and fb.extrapolated_j == 0.0
        assert fa.prefill_tokens == a.prompt_tokens - a.reused_prompt_tokens
        assert fb.prefill_tokens == b.prompt_tokens - b.reused_prompt_tokens
        # an engine core in its own process runs on while the server applies the stop rules: its request may be in
        # one more step, which did run (and is its own); in process the engine waits for the server
        ahead = 1 if backend.engine_process else 0
        assert 0 <= fa.decode_tokens - (a.completion_tokens - 1) <= ahead
        assert 0 <= fb.decode_tokens - (b.completion_tokens - 1) <= ahead
        assert fa.energy_j > 0 and fb.energy_j > 0
        # b's prefill ran in one of a's decode steps: both counted it as batched (a pair at least)
        assert 1 <= fa.batched_steps <= fa.steps and 1 <= fb.batched_steps <= fb.steps
        assert fb.mean_batch_size is not None and fb.mean_batch_size > 1.0
        ledger.flush()
        totals = ledger.totals()
        assert totals.window_j > 0
        assert abs(totals.requests_j + totals.idle_j - totals.window_j) <= 1e-9 * max(1.0, totals.window_j)
        # shared by tokens: b's ~400-token prefill step also held one of a's decode tokens, so b took almost all
        # of that step; a pure time split of the overlapping spans would have given them about the same
        assert fb.prefill_j > 5 * (fa.decode_j / max(1, fa.decode_tokens))
    finally:
        backend.attach_step_sink(None)
        monitor.close()


def test_synthetic_phases_for_calibration(backend: VllmBackend) -> None:
    """``greentrack calibrate --backend vllm``: exact token counts, no prefix-cache reads, no stop rules."""
    for _ in range(2):  # the second time the same prompt is in the cache: it must not be read
        spans = backend.run_synthetic(200, 5)
        assert [(s.kind, s.work) for s in spans] == [("prefill", 200.0), ("decode", 5.0)]
        assert spans[0].start_s < spans[0].end_s == spans[1].start_s < spans[1].end_s
    assert [s.kind for s in backend.run_synthetic(16, 0)] == ["prefill"]


def test_a_prompt_longer_than_the_engine_allows_is_bad_input(backend: VllmBackend) -> None:
    from greentrack.errors import BadInput

    text = unique_source() * 12  # ~6000 tokens, all in the window: over max_model_len (4096)
    req = CompletionRequest("too-long", "file:///big.py", text, len(text), max_tokens=4, context_tokens=8000)
    with pytest.raises(BadInput, match="refused the prompt"):
        backend.complete(req, CancelToken())
    assert backend.complete(request(unique_source() + "        return"), CancelToken()).completion_tokens >= 1


def test_complete_many_batches_and_keeps_order(backend: VllmBackend) -> None:
    reqs = [request(unique_source() + "        return", f"many-{i}", max_tokens=6) for i in range(3)]
    results = backend.complete_many(reqs)
    assert [r.request_id for r in results] == ["many-0", "many-1", "many-2"]
    for r in results:
        check_spans(r)
    prefills = [r.span("prefill") for r in results]
    # submitted together: their prefills ran in the same engine step(s)
    assert max(p.start_s for p in prefills if p) < min(p.end_s for p in prefills if p)


def test_command_line_with_the_vllm_backend(tmp_path: object) -> None:
    """``greentrack complete --backend vllm --json``: the product path in a fresh process; vLLM's logs stay off
    stdout, which carries exactly one JSON object with the contract's fields."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    shapes = Path(__file__).resolve().parents[2] / "examples" / "shapes.py"
    line = next(i for i, text in enumerate(shapes.read_text().split("\n")) if text == "        return ")
    out = subprocess.run(
        [sys.executable, "-m", "greentrack", "complete", str(shapes), "--line", str(line), "--col", "15",
         "--backend", "vllm", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout)  # the whole of stdout: one object
    assert record["backend"] == "vllm" and record["device"] == "cpu" and record["outcome"] in ("shown", "empty")
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] >= 1
    assert record["prefill_ms"] > 0
    assert record["total_j"] == pytest.approx(record["prefill_j"] + record["decode_j"])
    assert record["method"] in ("measured", "attributed", "estimated")
    assert isinstance(record["text"], str)


def test_prefix_reuse_in_a_document_longer_than_the_window(backend: VllmBackend) -> None:
    """Past the context budget the window is cut; it must stay where it was while typing goes on (vLLM's prefix
    cache matches from the prompt's first token: a window that slid by a line would be computed again in whole)."""
    long_text = unique_source() + SOURCE + SOURCE + "\n\ndef area_of(shape):\n    return shape."

    def at_end(text: str) -> CompletionRequest:
        return CompletionRequest(uuid.uuid4().hex[:12], "file:///long.py", text, len(text), max_tokens=8,
                                 max_time_s=60.0, context_tokens=384)

    first = backend.complete(at_end(long_text), CancelToken())
    assert first.prompt_tokens <= 384 + 8 and first.reused_prompt_tokens == 0  # the window was cut
    typed = long_text + "area()\n\n\ndef perimeter_of(shape):\n    return shape.perim"
    second = backend.complete(at_end(typed), CancelToken())
    block = backend.engine.vllm_config.cache_config.block_size
    assert second.reused_prompt_tokens >= first.prompt_tokens - block, (first.prompt_tokens, second)


def test_time_budget_starts_when_the_engine_takes_the_request(backend: VllmBackend) -> None:
    """A request that waits behind another's long engine step is not spent before any step served it: its time
    budget starts at admission (as the transformers backend's starts once it holds the model). It was aborted with
    0 tokens and no phase, stored at 0 J (the flaky record of tests/serve/test_serve_vllm.py)."""
    lines = "\n".join(f"X{i} = {i}" for i in range(160))
    long_text = f"# {uuid.uuid4().hex}\n{lines}\ndef total(self):\n    return"
    short_text = f"# {uuid.uuid4().hex}\ndef add(a, b):\n    return"

    token = Probe(2)  # polled by complete(), then before the long request's first step
    box: dict[str, EngineResult] = {}
    long_request = CompletionRequest("long", "file:///a.py", long_text, len(long_text), max_tokens=2, max_time_s=60.0)
    t = threading.Thread(target=lambda: box.setdefault("long", backend.complete(long_request, token)))
    t.start()
    assert token.reached.wait(timeout=60)  # the long request is admitted; its prefill step runs
    budget_s = 0.2  # shorter than that step on this CPU
    short = backend.complete(CompletionRequest("short", "file:///b.py", short_text, len(short_text), max_tokens=8,
                                               max_time_s=budget_s), CancelToken())
    t.join()
    first = box["long"].span("prefill")
    assert first is not None and first.duration_s > budget_s, "the long step was too short to test anything"
    assert short.completion_tokens >= 1 and short.span("prefill") is not None, short
    check_spans(short)
