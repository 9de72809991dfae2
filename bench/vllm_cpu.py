"""Figures behind docs/measurement.md's vLLM section: start-up, prefix caching, batching. Not a test (not collected).

    VENV/bin/python bench/vllm_cpu.py [--eager 0|1] [--repeats N]

Prints one JSON object: engine start-up, then for a ~1024-token prompt + 5 new tokens the latency and prefill
time cold (a prompt never seen) and warm (the same document with a few characters typed: prefix cache hit),
side by side in one run; then two requests run one after the other vs overlapping, with their spans.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid

from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.engine.vllm_backend import VllmBackend


def document(lines: int = 31) -> str:
    """A unique document of about ``lines`` × 25 tokens (the unique first line keeps the prefix cache cold)."""
    body = "".join(f"def scale_{i}(values: list[float]) -> list[float]:\n    return [v * {i} for v in values]\n\n"
                   for i in range(lines))
    return f"# {uuid.uuid4().hex}\n{body}def total(values: list[float]) -> float:\n    return sum("


def run(backend: VllmBackend, text: str, max_tokens: int = 5) -> EngineResult:
    req = CompletionRequest(uuid.uuid4().hex[:8], "bench", text, len(text), max_tokens=max_tokens, max_time_s=60,
                            context_tokens=4096)  # the whole document in the window
    return backend.complete(req, CancelToken())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eager", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="embedded", help="Model id or path (default: the embedded model).")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    args = ap.parse_args()
    t0 = time.monotonic()
    backend = VllmBackend(args.model, args.device, enforce_eager=bool(args.eager))
    startup_s = time.monotonic() - t0
    cold_ms: list[float] = []
    warm_ms: list[float] = []
    cold_prefill_ms: list[float] = []
    warm_prefill_ms: list[float] = []
    prompt_tokens = reused = 0
    for _ in range(args.repeats):
        doc = document()
        t = time.monotonic()
        first = run(backend, doc)
        cold_ms.append((time.monotonic() - t) * 1e3)
        p = first.span("prefill")
        cold_prefill_ms.append(p.duration_s * 1e3 if p else 0.0)
        t = time.monotonic()
        second = run(backend, doc + "v")  # one keystroke later
        warm_ms.append((time.monotonic() - t) * 1e3)
        p = second.span("prefill")
        warm_prefill_ms.append(p.duration_s * 1e3 if p else 0.0)
        prompt_tokens, reused = second.prompt_tokens, second.reused_prompt_tokens

    # batching: a then b sequentially, then the same two overlapping (b sent while a decodes)
    a_doc, b_doc = document(16), document(16)
    t = time.monotonic()
    run(backend, a_doc, 24)
    run(backend, b_doc, 24)
    sequential_ms = (time.monotonic() - t) * 1e3
    a_doc, b_doc = document(16), document(16)
    box: list[EngineResult] = []
    t = time.monotonic()
    th = threading.Thread(target=lambda: box.append(run(backend, a_doc, 24)))
    th.start()
    time.sleep(0.15)
    b = run(backend, b_doc, 24)
    th.join()
    overlapped_ms = (time.monotonic() - t) * 1e3
    backend.close()
    med = statistics.median
    print(json.dumps({
        "enforce_eager": bool(args.eager), "startup_s": round(startup_s, 1), "repeats": args.repeats,
        "prompt_tokens": prompt_tokens, "reused_prompt_tokens": reused,
        "cold_latency_ms_median": round(med(cold_ms), 1), "warm_latency_ms_median": round(med(warm_ms), 1),
        "cold_prefill_ms_median": round(med(cold_prefill_ms), 1),
        "warm_prefill_ms_median": round(med(warm_prefill_ms), 1),
        "two_requests_sequential_ms": round(sequential_ms, 1), "two_requests_overlapped_ms": round(overlapped_ms, 1),
        "overlap_tokens": [box[0].completion_tokens, b.completion_tokens],
    }))


if __name__ == "__main__":
    main()
