"""Per-request energy under continuous batching against marginal energy (issue 12, point 4), and the batched
calibration (point 3) on the same engine.

    PYTHONPATH=server python bench/gpu_validate_batching.py --model /tmp/qwen-shape --device cuda \
        --db "$OUT/validate.db" --out "$OUT/validate_batching.json" [--calibrate] [--window-s 30]

In-process, on the product's path: ``open_backend`` (vLLM), then (``--calibrate``) ``calibrate.run_calibration``
and ``calibrate.run_batched_calibration`` — what ``greentrack calibrate --backend vllm`` runs — stored with
``Store.save_calibration``; then a ``Pipeline`` over the same backend with a monitor opened with that calibration,
exactly as ``open_pipeline`` opens it, so its ``StepLedger`` splits steps by the batched per-step costs. Requests
are the backend's synthetic ones (exact prompt and output lengths: stop rules off, EOS ignored, no prefix-cache
reads) and go through ``Pipeline.finalize``, which asks the ledger and stores the row; the figures below are read
back from the stored rows. In-process rather than over HTTP: exact output lengths (the HTTP API applies stop rules,
and a random-weight model's lines end at random) and no HTTP noise; the ledger and the store are the server's.

Classes: A = 8 developers, short prompts (128 tokens), short outputs (8 tokens), seeded Poisson arrivals (the same
in every window); B1 = long prompts (2048 tokens, 8 out); B2 = long outputs (128 in, 256 out). Windows of
``--window-s`` arrivals plus a tail in which everything finishes: A alone, A + B1, A alone again (the noise of
the marginal), A + B2. E(window) is the counter's delta over the window (read directly at its ends); marginal
E(B) = E(A+B) − E(A alone); B's attributed total = Σ of its stored rows' ``total_j``. Goal: ratio within ±10 %.
Then an idle window and B1, B2 alone, for B's Shapley value (``shapley``: the marginal in both orders, averaged).
Both sides mean the same thing: energy above the engine's idle draw. The windows last equally long, so the idle
draw cancels in the marginal; the ledger keeps it out of every request's figure (the calibration's ``idle_w`` ×
time, steps' time included, stays in its idle bucket: ``ledger.static_j`` says how much of it was during steps).
Budget (H200, vLLM 0.26): startup ~75 s, calibration ~45 s with the default grids, each window ~33 s.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from greentrack.config import Settings
from greentrack.energy.step_ledger import LedgerTotals
from greentrack.pipeline import Pipeline, RequestContext, host_name, read_stored_calibration
from greentrack.store import Store


@dataclass(frozen=True)
class RequestClass:
    name: str
    developers: int
    mean_gap_s: float
    prompt_tokens: int
    output_tokens: int


CLASSES = {
    "A": RequestClass("A", 8, 0.5, 128, 8),
    "B1": RequestClass("B1", 2, 1.0, 2048, 8),
    "B2": RequestClass("B2", 2, 1.5, 128, 256),
}


def arrivals(cls: RequestClass, window_s: float, seed: int) -> list[float]:
    """Seeded Poisson arrivals (s from the window's start) of every developer of ``cls``, sorted."""
    out: list[float] = []
    for dev in range(cls.developers):
        rng = random.Random(f"{seed}/{cls.name}/{dev}")
        t = rng.uniform(0.0, cls.mean_gap_s)
        while t < window_s:
            out.append(t)
            t += rng.expovariate(1.0 / cls.mean_gap_s)
    return sorted(out)


def submit(backend: Any, prompt_tokens: int, output_tokens: int, request_id: str, salt: int) -> Any:
    """A synthetic request with exact lengths, not waited for: the backend's ``submit_synthetic`` where it has one,
    else the same construction as ``VllmBackend.run_synthetic`` (its private engine thread)."""
    own = getattr(backend, "submit_synthetic", None)
    if own is not None:
        return own(prompt_tokens, output_tokens - 1, request_id, salt=salt)
    from greentrack.engine.generation import GenerationState
    from greentrack.engine.stops import StopContext
    from greentrack.engine.types import CancelToken, CompletionRequest
    from greentrack.engine.vllm_engine import Job

    base = backend._tokenizer.encode("def compute(values):\n    total = 0\n    for v in values:\n        total += v\n")
    ids = [base[(i + salt) % len(base)] for i in range(prompt_tokens)]
    request = CompletionRequest(request_id, "greentrack://synthetic", "", 0, max_tokens=output_tokens, max_time_s=0.0)
    vl = backend._vllm
    params = vl.SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True,
                               skip_reading_prefix_cache=True, detokenize=False,
                               output_kind=vl.RequestOutputKind.CUMULATIVE)
    state = GenerationState(request, len(ids), StopContext("line", "", "", 0, False, ""), time.monotonic(),
                            stop_rules=False)
    job = Job(state, CancelToken(), backend._engine_id(request_id), ids, params)
    backend._thread.submit([job])
    return job


def run_window(pipeline: Pipeline, classes: list[RequestClass], window_s: float, tail_s: float, seed: int,
               label: str) -> dict[str, Any]:
    """Run the classes' arrivals for ``window_s`` (+ ``tail_s``), finalize every request, read the stored rows."""
    counter = pipeline.monitor.counter
    assert counter is not None
    schedule = sorted((t, cls) for cls in classes for t in arrivals(cls, window_s, seed))
    finalize = ThreadPoolExecutor(max_workers=8, thread_name_prefix="finalize")
    totals0 = pipeline.ledger.totals() if pipeline.ledger is not None else None
    e0 = counter.read_j()
    t0 = time.monotonic()
    jobs, futures = submit_schedule(pipeline, schedule, t0, label, finalize)
    sleep_until(t0 + window_s + tail_s)
    planned_end_s = time.monotonic()
    for job in jobs:  # an engine that fell behind: the window runs until its work is done (``overran_s``)
        job.done.wait(timeout=300)
    e1 = counter.read_j()
    t1 = time.monotonic()
    records = [(name, f.result(timeout=120)) for name, f in futures]
    finalize.shutdown()
    if pipeline.ledger is not None:
        pipeline.ledger.flush()
    totals1 = pipeline.ledger.totals() if pipeline.ledger is not None else None
    store = pipeline.store
    assert store is not None
    by_class = stored_rows_by_class(store, records)
    out: dict[str, Any] = {
        "label": label, "classes": [c.name for c in classes], "window_s": round(t1 - t0, 3),
        "overran_s": round(t1 - planned_end_s, 3),
        "arrival_window_s": window_s, "energy_j": e1 - e0, "mean_power_w": (e1 - e0) / (t1 - t0),
        "requests": {name: len(rows) for name, rows in by_class.items()},
        "attributed_j": {name: math.fsum(float(r["total_j"] or 0.0) for r in rows) for name, rows in by_class.items()},
        "spread": {name: spread(rows) for name, rows in by_class.items()},
        "methods": sorted({str(r.get("method")) for rows in by_class.values() for r in rows}),
        "meters": sorted({str(r.get("meter")) for rows in by_class.values() for r in rows}),
    }
    if totals0 is not None and totals1 is not None:
        out["ledger"] = ledger_delta(totals0, totals1)
    return out


def sleep_until(deadline_s: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline_s`` (at once when it has)."""
    delay = deadline_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def submit_schedule(
    pipeline: Pipeline, schedule: list[tuple[float, RequestClass]], t0: float, label: str,
    finalize: ThreadPoolExecutor,
) -> tuple[list[Any], list[tuple[str, Future[Any]]]]:
    """Each scheduled request submitted at its arrival time (seconds after ``t0``), its finalizing handed to
    ``finalize``: (the engine jobs, (class name, finalize future) per request)."""
    futures: list[tuple[str, Future[Any]]] = []
    jobs: list[Any] = []
    lock = threading.Lock()
    for i, (t, cls) in enumerate(schedule):
        sleep_until(t0 + t)
        pipeline.monitor.begin_work()
        received_s = time.monotonic()
        job = submit(pipeline.backend, cls.prompt_tokens, cls.output_tokens, f"{label}-{cls.name}-{i}", i)
        jobs.append(job)
        with lock:
            futures.append((cls.name, finalize.submit(finish_request, pipeline, label, job, cls, received_s)))
    return jobs, futures


def finish_request(pipeline: Pipeline, label: str, job: Any, cls: RequestClass, received_s: float) -> Any:
    """Wait for the job, end its work on the monitor and finalize it through the pipeline (which stores its row)."""
    job.done.wait()
    pipeline.monitor.end_work()
    if job.error is not None:
        raise job.error
    return pipeline.finalize(job.result, RequestContext(f"bench://{label}/{cls.name}", "python", received_s,
                                                        developer=f"class-{cls.name}"))


def stored_rows_by_class(store: Store, records: list[tuple[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The stored completion rows of the finalized requests, grouped by class name."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for name, record in records:
        row = store.completion(record.completion_id)
        if row is not None:
            by_class.setdefault(name, []).append(row)
    return by_class


def ledger_delta(totals0: LedgerTotals, totals1: LedgerTotals) -> dict[str, Any]:
    """What the step ledger booked between two of its ``totals()`` (and its idle power at the end)."""
    return {"requests_j": totals1.requests_j - totals0.requests_j,
            "idle_j": totals1.idle_j - totals0.idle_j, "window_j": totals1.window_j - totals0.window_j,
            "static_j": totals1.static_j - totals0.static_j, "idle_w": totals1.idle_w,
            "measured_idle_w": totals1.measured_idle_w}


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-request figures within one class: mean, coefficient of variation, 5th/50th/95th percentiles (J)."""
    xs = sorted(float(r["total_j"] or 0.0) for r in rows)
    if not xs:
        return {}
    mean = math.fsum(xs) / len(xs)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))

    def pct(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]

    return {"n": len(xs), "mean_j": mean, "cv": sd / mean if mean > 0 else None, "p5_j": pct(5), "p50_j": pct(50),
            "p95_j": pct(95)}


def compare(alone: dict[str, Any], mixed: dict[str, Any], b: str) -> dict[str, Any]:
    """B's attributed total (above idle) against E(A+B) − E(A alone) (the idle draw cancels: equal windows)."""
    marginal = mixed["energy_j"] - alone["energy_j"]
    attributed = mixed["attributed_j"].get(b, 0.0)
    ledger_a, ledger_m = alone.get("ledger", {}), mixed.get("ledger", {})
    return {
        "class": b, "alone": alone["label"], "marginal_j": marginal, "attributed_j": attributed,
        "ratio": attributed / marginal if marginal > 0 else None,
        "window_s": (alone["window_s"], mixed["window_s"]),  # unequal when one overran: compare with care
        "delta_a_attributed_j": mixed["attributed_j"].get("A", 0.0) - alone["attributed_j"].get("A", 0.0),
        "delta_idle_j": ledger_m.get("idle_j", 0.0) - ledger_a.get("idle_j", 0.0),
        "delta_static_j": ledger_m.get("static_j", 0.0) - ledger_a.get("static_j", 0.0),
        "idle_w": ledger_m.get("idle_w"),
    }


def comparisons(windows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """B1 against A; B2 against A2 (the A window next to it) where it ran, else A; each with B's Shapley value
    where the B-alone and idle windows ran (``shapley``)."""
    out = []
    if "A" in windows and "AB1" in windows:
        out.append(compare(windows["A"], windows["AB1"], "B1") | shapley(windows, "A", "AB1", "B1"))
    alone_label = "A2" if "A2" in windows else "A"
    if "AB2" in windows and alone_label in windows:
        out.append(compare(windows[alone_label], windows["AB2"], "B2") | shapley(windows, alone_label, "AB2", "B2"))
    return out


def shapley(windows: dict[str, dict[str, Any]], a: str, ab: str, b: str) -> dict[str, Any]:
    """B's Shapley value over the two players A and B: the mean of its marginal in both orders,
    ½ [(E(A+B) − E(A)) + (E(B) − E(∅))], each window's energy taken above the idle window's power × its length
    (windows that overran are longer). The marginal E(A+B) − E(A) gives B all the saving of sharing steps with A;
    the Shapley value splits it evenly, as a per-step split that shares each step's cost does. {} without the
    B-alone window ``b`` and the idle window ``I``."""
    if b not in windows or "I" not in windows:
        return {}
    idle_w = windows["I"]["energy_j"] / windows["I"]["window_s"]

    def above(label: str) -> float:
        w = windows[label]
        return float(w["energy_j"] - idle_w * w["window_s"])

    alone_b = above(b)
    value = 0.5 * ((above(ab) - above(a)) + alone_b)
    attributed = windows[ab]["attributed_j"].get(b, 0.0)
    return {"idle_window_w": idle_w, "b_alone_above_idle_j": alone_b,
            "b_alone_attributed_j": windows[b]["attributed_j"].get(b, 0.0),
            "shapley_j": value, "ratio_to_shapley": attributed / value if value > 0 else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--tail-s", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", action="store_true", help="run the per-phase and batched calibration first")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--prompt-bins", default="128,2048")
    parser.add_argument("--output-bins", default="8,128")
    parser.add_argument("--idle-s", type=float, default=3.0, help="the calibration's idle measurement (its idle_w)")
    parser.add_argument("--phase-prompt-sizes", default="32,512", help="per-phase calibration's prompt sizes")
    parser.add_argument("--phase-output-sizes", default="8,32", help="per-phase calibration's output sizes")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the classes' token counts (CPU smoke: 0.1)")
    parser.add_argument("--skip", default="", help="comma-separated windows to skip: A2, AB2 …")
    args = parser.parse_args()

    from greentrack import calibrate as cal
    from greentrack.energy.monitor import open_monitor
    from greentrack.engine.factory import open_backend

    settings = Settings.from_env(model=args.model, backend=args.backend, device=args.device, db_path=args.db)
    batch_sizes = cal.parse_sizes(args.batch_sizes, cal.BATCH_SIZES)
    prompt_bins = cal.parse_sizes(args.prompt_bins, cal.BATCHED_PROMPT_BINS)
    output_bins = cal.parse_sizes(args.output_bins, cal.BATCHED_OUTPUT_BINS)
    if args.scale != 1.0:
        for key, c in list(CLASSES.items()):
            CLASSES[key] = RequestClass(c.name, c.developers, c.mean_gap_s, max(4, round(c.prompt_tokens * args.scale)),
                                        max(2, round(c.output_tokens * args.scale)))
    result: dict[str, Any] = {"classes": {k: vars(c) for k, c in CLASSES.items()}, "settings": vars(args) | {
        "db": str(args.db), "out": str(args.out)}, "host": host_name()}

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")

    t_start = time.monotonic()
    backend = open_backend(settings, max_num_seqs=max(64, *batch_sizes),
                           max_model_len=max(4096 + 512, max(prompt_bins) + max(output_bins) + 64))
    result["startup_s"] = round(time.monotonic() - t_start, 1)
    store = Store(args.db)
    try:
        if args.calibrate:
            t = time.monotonic()
            with open_monitor(backend.device) as monitor:
                run_synthetic: Any = getattr(backend, "run_synthetic")  # noqa: B009 - not on the protocol
                measured = cal.run_calibration(run_synthetic, monitor,
                                                  cal.parse_sizes(args.phase_prompt_sizes, cal.PROMPT_SIZES),
                                                  cal.parse_sizes(args.phase_output_sizes, cal.OUTPUT_SIZES),
                                                  repeats=1, host=host_name(), device=backend.device,
                                                  model=backend.model_id, idle_s=args.idle_s)
                measured = cal.run_batched_calibration(backend, monitor, measured, batch_sizes, prompt_bins,
                                                       output_bins)
            store.save_calibration(measured.to_dict())
            result["calibration"] = measured.to_dict() | {"duration_s": round(time.monotonic() - t, 1)}
            save()
        calibration, _ = read_stored_calibration(store, backend)
        monitor = open_monitor(backend.device, calibration=calibration, on_demand=True)
        pipeline = Pipeline(settings, backend, monitor, store)
        result["ledger"] = pipeline.ledger is not None
        result["step_costs"] = vars(pipeline.ledger.costs) if pipeline.ledger is not None else None
        plan = [("A", ["A"]), ("AB1", ["A", "B1"]), ("A2", ["A"]), ("AB2", ["A", "B2"]), ("I", []),
                ("B1", ["B1"]), ("B2", ["B2"])]
        windows: dict[str, dict[str, Any]] = {}
        run_window(pipeline, [CLASSES["A"]], 3.0, 1.0, args.seed + 99, "warmup")
        for label, names in plan:
            if label in args.skip.split(","):
                continue
            windows[label] = run_window(pipeline, [CLASSES[n] for n in names], args.window_s, args.tail_s,
                                        args.seed, label)
            result["windows"] = windows
            result["comparisons"] = comparisons(windows)  # saved as it goes: a run cut short keeps its figures
            if "A" in windows and "A2" in windows:  # the marginal's noise: the same A, twice
                result["a_alone_repeat_j"] = windows["A2"]["energy_j"] - windows["A"]["energy_j"]
            save()
            print(json.dumps({k: windows[label][k] for k in ("label", "energy_j", "attributed_j", "requests")}),
                  file=sys.stderr, flush=True)
        print(json.dumps(result.get("comparisons", []), indent=2))
        pipeline.close()  # the backend, the monitor and the store too
    finally:
        backend.close()  # again when the pipeline closed it: a no-op
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
