"""Where the host time of a vLLM engine step goes: steps that admit a new request against decode steps.

Issue 12 point 5: under 64 developers a request's first engine step (its prefill, ~40 new tokens after a cached
prefix) takes ~20 ms on the H200 against ~2.2 ms for a decode step, with the GPU ~20 % busy. This runs greentrack's
vLLM backend (healing off) on the model folder given, times every ``engine.step()`` and its parts (scheduler,
executor, output processing) for single prefills and for decodes, then profiles the prefill steps with cProfile.

    PYTHONPATH=server python3 bench/gpu_step_profile.py --model /tmp/qwen-shape --out "$OUT/step_profile.txt"
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.engine.vllm_backend import VllmBackend

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - t0)
    return wrapper


def instrument(engine: Any) -> None:
    """Wrap the engine's step and its parts (attribute paths of vLLM 0.26/0.32, each where present)."""
    engine.step = timed("engine.step", engine.step)
    core = engine.engine_core.engine_core
    for owner, attr in ((core, "step_fn"), (core.scheduler, "schedule"), (core.scheduler, "update_from_output"),
                        (core.model_executor, "execute_model"), (core.model_executor, "sample_tokens"),
                        (engine.output_processor, "process_outputs")):
        if hasattr(owner, attr):
            setattr(owner, attr, timed(f"{type(owner).__name__}.{attr}", getattr(owner, attr)))


def summary(title: str) -> str:
    lines = [f"== {title}"]
    for name, vals in sorted(TIMES.items()):
        ms = sorted(1000 * v for v in vals)
        lines.append(f"  {name:45s} n={len(ms):5d} p50={statistics.median(ms):7.2f} ms  "
                     f"p90={ms[int(0.9 * (len(ms) - 1))]:7.2f} ms  sum={sum(ms):8.1f} ms")
    TIMES.clear()
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--compilation-config", help="JSON for vLLM's compilation_config (e.g. a larger "
                    "max_cudagraph_capture_size: the default captures batches up to 2 × max_num_seqs tokens)")
    args = ap.parse_args()
    extra = {"compilation_config": json.loads(args.compilation_config)} if args.compilation_config else {}
    backend = VllmBackend(args.model, args.device, healing=False, max_model_len=8192, engine_kwargs=extra)
    instrument(backend.engine)
    words = ["def", "compute", "total", "value", "items", "result", "index", "count", "name", "data"]
    report: list[str] = [f"async_scheduling={backend.async_scheduling} compilation_config={extra}"]

    def run(i: int, n_words: int, max_tokens: int) -> float:
        text = "def f():\n    " + " ".join(words[(i * 7 + k) % len(words)] + str(i) for k in range(n_words))
        req = CompletionRequest(f"p{i}", f"file:///p/{i}.py", text, len(text), "python", max_tokens=max_tokens,
                                context_tokens=4096, max_time_s=60.0)
        t0 = time.perf_counter()
        backend.complete(req, CancelToken())
        return time.perf_counter() - t0

    for i in range(5):
        run(1000 + i, 60, 4)
    TIMES.clear()
    walls = [run(i, 60, 1) for i in range(args.requests)]
    report.append(summary(f"{args.requests} prefill-only requests (~128 tokens, max_tokens 1); complete() p50 "
                          f"{1000 * statistics.median(walls):.1f} ms"))
    walls = [run(100 + i, 60, 17) for i in range(args.requests)]
    report.append(summary(f"{args.requests} requests of ~128 prompt tokens + 16 decode tokens; complete() p50 "
                          f"{1000 * statistics.median(walls):.1f} ms"))
    prof = cProfile.Profile()
    orig = backend.engine.step

    def profiled() -> Any:
        prof.enable()
        try:
            return orig()
        finally:
            prof.disable()

    backend.engine.step = profiled
    for i in range(args.requests):
        run(200 + i, 60, 1)
    for sort in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(sort).print_stats(45)
        report.append(f"== cProfile of the prefill-only steps, by {sort}\n{buf.getvalue()}")
    Path(args.out).write_text("\n".join(report))
    print("\n".join(report[:3]))
    backend.close()


if __name__ == "__main__":
    main()
