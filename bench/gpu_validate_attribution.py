"""GPU check of the energy layer on real hardware: the NVML counter, the sampler, attribution, calibration.

Run on the GPU machine (``run`` tool) as a script::

    PYTHONPATH=server python bench/gpu_validate_attribution.py --out "$OUT"

or locally as a smoke test of the code path (tiny model on CPU, CPU-time estimate meter)::

    PYTHONPATH=server .venv/bin/python bench/gpu_validate_attribution.py --tiny --out /tmp/gt

What it does:

1. The counter itself: cost of one read, its update period, a recorded trace of known loads (idle, a 1 s
   matmul block, short bursts) written to ``h100_trace.json`` (replayed by ``tests/energy/test_trace_replay.py``),
   and the counter's lag (when a step shows the energy it covers).
2. The model: Qwen2.5-Coder-1.5B's shape (random weights, bf16; built from its hyperparameters, no hub),
   prefill of N tokens and decode of M tokens with a KV cache, each phase timed after a synchronize.
3. Ground truth: for each phase size, ≥ 2 s of identical phases back to back; power = counter delta over
   the whole window / its duration; truth for a phase = that power × the phase's duration.
4. ``run_calibration`` on the same phases (its weights feed step 5).
5. A mixed "completion" workload (random idle gaps of 0–80 ms, prefill N ∈ {128, 1024, 4096}, decode of 16
   tokens), attributed per phase from the real sampler, uncalibrated (time split) and calibrated; compared
   with the ground truth: mean relative error per (kind, size) and the share of phases whose error lies
   within their reported uncertainty.
6. Intervals (issue 13): each completion's figure, its 90 % interval (the shipped error model, and one fitted on
   this run's even requests for its odd ones) and its truth, written to ``intervals.json``, with coverage and
   median half-width summaries for completions ≥ 100 ms and shorter. Refit the shipped model from the new
   ``h100_mixed.json`` with ``bench/fit_interval_model.py``.

Run with ``PYTHONPATH=server:.`` (the script imports ``bench.interval_data``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from bench.interval_data import cases, interval_of, load_recording, phase_accuracy, summarize

from greentrack.calibrate import run_calibration
from greentrack.energy.attribution import MeterInfo, PhaseWeights, attribute, find_knots
from greentrack.energy.interval import fit_error_model, shipped_model
from greentrack.energy.monitor import EnergyMonitor, open_monitor
from greentrack.energy.types import CounterSample, PhaseSpan

PROMPT_SIZES = (128, 1024, 4096)
DECODE_TOKENS = 17  # 16 decode steps after the prefill's token


def log(msg: str) -> None:
    print(f"[{time.monotonic():10.3f}] {msg}", flush=True)


# -- 1. the raw counter ---------------------------------------------------------------------------------------

def counter_characterisation(torch: Any, device: Any, out: Path) -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(h)
    driver = pynvml.nvmlSystemGetDriverVersion()
    costs = []
    for _ in range(200):
        t0 = time.perf_counter()
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        costs.append(time.perf_counter() - t0)
    costs.sort()

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)

    samples: list[tuple[float, float, float]] = []
    spans: list[dict[str, Any]] = []

    def poll_until(t_end: float) -> None:
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            e = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
            t1 = time.monotonic()
            samples.append((0.5 * (t0 + t1), e, t1 - t0))

    def busy(duration_s: float, label: str) -> None:
        # Matmuls queued in small batches; polling in between keeps the trace dense.
        torch.cuda.synchronize()
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s:
            for _ in range(2):
                a @ b
            t1 = time.monotonic()
            samples.append((t1, pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0, time.monotonic() - t1))
        torch.cuda.synchronize()
        spans.append({"label": label, "start_s": t0, "end_s": time.monotonic()})

    torch.cuda.synchronize()
    poll_until(time.monotonic() + 1.0)
    busy(1.0, "block")
    poll_until(time.monotonic() + 0.6)
    for i in range(10):
        busy(0.03, f"burst30ms#{i}")
        poll_until(time.monotonic() + 0.07)
    poll_until(time.monotonic() + 0.3)
    for i in range(5):
        busy(0.15, f"burst150ms#{i}")
        poll_until(time.monotonic() + 0.15)
    poll_until(time.monotonic() + 0.6)

    t_ref, e_ref = samples[0][0], samples[0][1]
    trace = {
        "device": name, "driver": driver, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "what": "nvmlDeviceGetTotalEnergyConsumption polled back to back; t = middle of the read (s), "
                "energy_j relative to the first read, read_s = read duration; spans: matmul loads",
        "samples": [[round(t - t_ref, 6), round(e - e_ref, 3), round(r, 6)] for t, e, r in samples],
        "spans": [{"label": s["label"], "start_s": round(s["start_s"] - t_ref, 6),
                   "end_s": round(s["end_s"] - t_ref, 6)} for s in spans],
    }
    (out / "h100_trace.json").write_text(json.dumps(trace))

    cs = [CounterSample(t, e, r) for t, e, r in samples]
    changes = [cs[i].t_s for i in range(1, len(cs)) if cs[i].energy_j != cs[i - 1].energy_j]
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    steps = [cs[i].energy_j - cs[i - 1].energy_j for i in range(1, len(cs)) if cs[i].energy_j != cs[i - 1].energy_j]
    # Idle and busy power from whole intervals well inside the idle head and the 1 s block.
    knots = find_knots(cs, update_period_s=0.1)
    blk = spans[0]

    def mean_power(t0: float, t1: float) -> float:
        inside = [k for k in knots if t0 <= k.t_s <= t1]
        return (inside[-1].energy_j - inside[0].energy_j) / (inside[-1].t_s - inside[0].t_s)

    idle_w = mean_power(samples[0][0] + 0.05, blk["start_s"] - 0.05)
    busy_w = mean_power(blk["start_s"] + 0.25, blk["end_s"] - 0.05)
    # Lag: the shift of the knots that best explains the intervals around the block's edges.
    best = (math.inf, 0.0)
    for lag_ms in range(-60, 151, 2):
        lag = lag_ms / 1000.0
        err = 0.0
        for k0, k1 in itertools.pairwise(knots):
            x0, x1 = k0.t_s - lag, k1.t_s - lag
            if not (blk["start_s"] - 0.3 < x1 and x0 < blk["end_s"] + 0.3):
                continue
            on = max(0.0, min(x1, blk["end_s"]) - max(x0, blk["start_s"]))
            pred = idle_w * (x1 - x0 - on) + busy_w * on
            err += (pred - (k1.energy_j - k0.energy_j)) ** 2
        best = min(best, (err, lag))
    pynvml.nvmlShutdown()
    return {
        "device": name, "driver": driver,
        "read_cost_ms": {"median": 1000 * costs[len(costs) // 2], "p95": 1000 * costs[int(0.95 * len(costs))],
                         "min": 1000 * costs[0]},
        "update_period_ms": {"median": 1000 * statistics.median(gaps), "min": 1000 * min(gaps),
                             "max": 1000 * max(gaps), "n": len(gaps)},
        "step_j": {"median": statistics.median(steps), "max": max(steps)},
        "idle_w": idle_w, "busy_w": busy_w, "lag_ms_best_fit": 1000 * best[1],
        "trace_samples": len(samples),
    }


# -- 2. the model's phases ------------------------------------------------------------------------------------

def build_model(torch: Any, device: Any, tiny: bool) -> Any:
    from transformers import AutoModelForCausalLM, Qwen2Config

    if tiny:
        cfg = Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    else:  # Qwen2.5-Coder-1.5B's published hyperparameters
        cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                          num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                          tie_word_embeddings=True, rms_norm_eps=1e-6)
    dtype = torch.float32 if tiny else torch.bfloat16
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        except TypeError:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    return model.eval()


def make_run_phases(torch: Any, model: Any, device: Any) -> Callable[[int, int], list[PhaseSpan]]:
    vocab = model.config.vocab_size
    counter = [0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def run_phases(n: int, m: int) -> list[PhaseSpan]:
        counter[0] += 1
        rid = f"r{counter[0]}"
        ids = torch.randint(0, vocab, (1, n), device=device)
        sync()
        t0 = time.monotonic()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1:].argmax(-1)
        past = out.past_key_values
        sync()
        t1 = time.monotonic()
        spans = [PhaseSpan(rid, "prefill", t0, t1, float(n))]
        if m >= 2:
            for _ in range(m - 1):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            sync()
            spans.append(PhaseSpan(rid, "decode", t1, time.monotonic(), float(m - 1)))
        return spans

    return cast(Callable[[int, int], list[PhaseSpan]], run_phases)


# -- 3. ground truth ------------------------------------------------------------------------------------------

def steady_power_w(monitor: EnergyMonitor, run: Callable[[], list[PhaseSpan]], kind: str,
                   window_s: float) -> tuple[float, float, int]:
    """(power W over a ≥ window_s run of identical phases, mean duration s of `kind` spans, count)."""
    spans: list[PhaseSpan] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < window_s:
        spans.extend(run())
    start, end = spans[0].start_s, spans[-1].end_s
    energy_j = monitor.window_energy(start, end).energy_j
    mine = [s for s in spans if s.kind == kind]
    return energy_j / (end - start), statistics.fmean(s.duration_s for s in mine), len(mine)


def interval_check(out: Path) -> dict[str, Any]:
    """Step 6: per completion, the figure, the interval and the truth; coverage and half-width summaries."""
    rec = load_recording(json.loads((out / "h100_mixed.json").read_text()))
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for calibrated in (False, True):
        all_cases = cases(rec, calibrated=calibrated)
        roots = sorted({c.request.split("/")[0] for c in all_cases})
        train = set(roots[::2])
        held_out = fit_error_model(c.observation(calibrated) for c in all_cases if c.request.split("/")[0] in train)
        for name, model in (("shipped", shipped_model()), ("held_out", held_out)):
            chosen = [c for c in all_cases if c.kind == "completion" and not c.derived
                      and (name == "shipped" or c.request.split("/")[0] not in train)]
            pairs = [(c, interval_of(c, model, calibrated)) for c in chosen]
            key = f"{name}_{'calibrated' if calibrated else 'uncalibrated'}"
            summary[key] = {"completions_ge_100ms": summarize(pairs, min_s=0.1),
                            "completions_lt_100ms": summarize(pairs, max_s=0.1)}
            rows += [{"model": key, "request": c.request, "duration_ms": 1000 * c.duration_s, "figure_j": c.figure_j,
                      "low_j": iv.low_j, "high_j": iv.high_j, "coverage": iv.coverage, "basis": iv.basis,
                      "truth_j": c.truth_j, "bound_j": c.uncertainty_j} for c, iv in pairs]
        summary[f"phase_accuracy_{'calibrated' if calibrated else 'uncalibrated'}"] = phase_accuracy(all_cases)
    (out / "intervals.json").write_text(json.dumps({"summary": summary, "completions": rows}, indent=1))
    log("intervals: " + json.dumps(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, CPU-time estimate")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--window-s", type=float, default=2.5)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda:0")
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                               "host": platform.node(), "torch": torch.__version__, "tiny": tiny}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    if not tiny:
        log("counter characterisation")
        results["counter"] = counter_characterisation(torch, device, out)
        log(json.dumps(results["counter"]))
        save()

    log("building the model")
    model = build_model(torch, device, tiny)
    run_phases = make_run_phases(torch, model, device)
    for n in PROMPT_SIZES:
        run_phases(n, 4)

    monitor = open_monitor("cpu" if tiny else "cuda:0")
    results["meter"] = monitor.describe()
    log(f"meter {monitor.meter_name}")
    window_s = 0.5 if tiny else args.window_s

    # Ground truth per phase kind and size.
    truth: dict[str, dict[str, float]] = {}
    for n in PROMPT_SIZES:
        p, d, c = steady_power_w(monitor, functools.partial(run_phases, n, 1), "prefill", window_s)
        truth[f"prefill/{n}"] = {"power_w": p, "duration_ms": 1000 * d, "energy_j": p * d, "count": c}
        log(f"truth prefill {n}: {p:.1f} W × {1000 * d:.2f} ms = {p * d:.3f} J ({c} phases)")
    # Decode: one long decode run after a 128-token prefill; the decode spans only.
    p_dec, d_dec, _c_dec = steady_power_w(monitor, lambda: run_phases(128, 65), "decode", window_s)
    # The window includes the 128-token prefills: remove them at their own measured power.
    pre = truth["prefill/128"]
    cycle_s = d_dec + pre["duration_ms"] / 1000
    p_dec_only = (p_dec * cycle_s - pre["power_w"] * pre["duration_ms"] / 1000) / d_dec
    truth["decode/power"] = {"power_w": p_dec_only, "step_ms": 1000 * d_dec / 64,
                             "j_per_token": p_dec_only * d_dec / 64}
    log(f"truth decode: {p_dec_only:.1f} W, {1000 * d_dec / 64:.2f} ms/token, {p_dec_only * d_dec / 64:.3f} J/token")
    results["truth"] = truth
    save()

    log("run_calibration")
    cal = run_calibration(run_phases, monitor, PROMPT_SIZES, (1, DECODE_TOKENS), repeats=5,
                          host=platform.node(), device=str(device), model="qwen2.5-coder-1.5b-shape",
                          min_window_s=window_s, idle_s=1.0 if not tiny else 0.2)
    cal_d = cal.to_dict()
    results["calibration"] = {k: v for k, v in cal_d.items() if k not in ("points", "bins")}
    results["calibration_points"] = cal_d["points"]
    log(json.dumps(results["calibration"]))
    save()

    # Mixed workload.
    log("mixed workload")
    rng = random.Random(7)
    all_spans: list[PhaseSpan] = []
    for _ in range(args.requests if not tiny else 6):
        time.sleep(rng.uniform(0.0, 0.08))
        all_spans.extend(run_phases(rng.choice(PROMPT_SIZES), DECODE_TOKENS))
    # Short isolated prefills between idle gaps (phases shorter than a counter step).
    for _ in range(12 if not tiny else 3):
        time.sleep(rng.uniform(0.05, 0.15))
        all_spans.extend(run_phases(rng.choice(PROMPT_SIZES), 1))
    monitor.window_energy(all_spans[-1].end_s - 0.001, all_spans[-1].end_s)  # wait for the step after the end
    assert monitor.sampler is not None and monitor.counter is not None
    samples = monitor.sampler.samples_between(all_spans[0].start_s - 1.0, math.inf)
    ctr = monitor.counter
    meter = MeterInfo(ctr.name, ctr.method, ctr.resolution_j, ctr.max_power_w, 0.0, ctr.relative_uncertainty)

    def evaluate(weights: PhaseWeights | None) -> dict[str, Any]:
        # Attribute per request (as the pipeline does), then compare with the truth.
        rows: dict[str, list[tuple[float, float, float]]] = {}
        total_attr = total_window = 0.0
        by_request: dict[str, list[PhaseSpan]] = {}
        for s in all_spans:
            by_request.setdefault(s.request_id, []).append(s)
        for spans in by_request.values():
            res = attribute(samples, spans, meter, update_period_s=ctr.update_period_s,
                            timing_slack_s=ctr.timing_slack_s, lag_s=ctr.lag_s, weights=weights)
            for sp, pe in zip(spans, res.phases, strict=True):
                if sp.kind == "prefill":
                    key = f"prefill/{int(sp.work)}"
                    true_j = truth[key]["power_w"] * sp.duration_s
                else:
                    key = "decode"
                    true_j = truth["decode/power"]["power_w"] * sp.duration_s
                rows.setdefault(key, []).append((pe.energy_j, true_j, pe.uncertainty_j or math.inf))
        # Conservation over the whole run, all spans at once.
        whole = attribute(samples, all_spans, meter, update_period_s=ctr.update_period_s,
                          timing_slack_s=ctr.timing_slack_s, lag_s=ctr.lag_s, weights=weights)
        total_attr = whole.total_j + whole.unattributed_j
        total_window = whole.window_j + whole.extrapolated_j
        out: dict[str, Any] = {"conservation_error_j": total_attr - total_window}
        for key, vals in sorted(rows.items()):
            attr = statistics.fmean(v[0] for v in vals)
            true = statistics.fmean(v[1] for v in vals)
            covered = sum(1 for a, t, u in vals if abs(a - t) <= u) / len(vals)
            out[key] = {"n": len(vals), "attributed_j": attr, "truth_j": true,
                        "mean_error_pct": 100 * (attr / true - 1) if true else None,
                        "mean_uncertainty_j": statistics.fmean(v[2] for v in vals),
                        "within_uncertainty": covered,
                        "mean_abs_error_pct_single": 100 * statistics.fmean(abs(a - t) / t for a, t, _ in vals)}
        return out

    # The raw run, replayed on CPU by tests/energy/test_trace_replay.py (times relative to the first sample).
    t_ref = samples[0].t_s
    (out / "h100_mixed.json").write_text(json.dumps({
        "device": results.get("counter", {}).get("device", str(device)), "date": results["date"],
        "what": "sampler reads (t_s, energy_j, read_s) during the mixed workload, its phase spans, the "
                "ground-truth powers from steady windows, and the calibration run_calibration fitted",
        "counter": monitor.counter.describe(),
        "samples": [[round(x.t_s - t_ref, 6), round(x.energy_j - samples[0].energy_j, 3), round(x.read_s, 6)]
                    for x in samples],
        "spans": [[sp.request_id, sp.kind, round(sp.start_s - t_ref, 6), round(sp.end_s - t_ref, 6), sp.work]
                  for sp in all_spans],
        "truth": truth,
        "calibration": cal_d,
    }))
    results["mixed_uncalibrated"] = evaluate(None)
    results["mixed_calibrated"] = evaluate(cal.weights)
    results["sampler"] = monitor.sampler.describe()
    monitor.close()
    results["intervals"] = interval_check(out)
    save()
    for k in ("mixed_uncalibrated", "mixed_calibrated"):
        log(k)
        for key, v in results[k].items():
            log(f"  {key}: {json.dumps(v)}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
