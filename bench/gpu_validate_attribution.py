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
3. Ground truth: for each phase size, ≥ 2 s of identical phases back to back, and again with 40 ms of sleep
   after each (the pair gives the power of the gaps between requests, where the host builds the next one);
   power = (counter delta over the window − the gaps at their power) / the time the phases covered; truth for a
   phase = that power × the phase's duration. Decodes: per prefill size, ≥ 2 s of the workload's own (prefill +
   16-token decode) back to back, less the prefills at their steady power and the gaps at theirs
   (``decode/after/N``; the older ``decode/power`` of one 64-token decode is kept).
4. ``run_calibration`` on the same phases (its weights feed step 5).
5. A mixed "completion" workload (random idle gaps of 0–80 ms, prefill N ∈ {128, 1024, 4096}, decode of 16
   tokens, or of ``--long-output-tokens`` − 1 for a ``--long-share`` of requests: completions of ≥ 100 ms through
   vLLM, whose 16-token decodes take 35–55 ms; their decode truth from windows of their own shape,
   ``decode/after/N/outM``), attributed per phase from the real sampler, uncalibrated (time split) and calibrated;
   compared with the ground truth: mean relative error per (kind, size) and the share of phases whose error lies
   within their reported uncertainty. Then the prefill truth windows once more (``truth_repeat``: how much the
   truth itself moves between two windows of the same phases), and ``bench/replay_calibration.py`` on the recording
   (per-phase accuracy of other prefill models of the calibration, and under the other reading of the truth).
6. Intervals (issue 13): each completion's figure, its 90 % interval (the shipped error model, and one fitted on
   this run's even requests for its odd ones) and its truth, written to ``intervals.json``, with coverage and
   median half-width summaries for completions ≥ 100 ms and shorter. Refit the shipped model from the new
   ``h100_mixed.json`` with ``bench/fit_interval_model.py`` (``--timed-by vllm`` for a ``--backend vllm`` run: the
   recording says how its phases were timed, ``timed_by``).

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from bench.interval_data import (
    cases,
    completion_intervals,
    default_truth_reading,
    load_recording,
    phase_accuracy,
    summarize,
    truth_energy_j,
)

from greentrack.calibrate import gaps_s, run_calibration, run_window
from greentrack.energy.attribution import Attribution, Knot, MeterInfo, PhaseWeights, attribute, find_knots
from greentrack.energy.interval import TIMED_BY_ENGINE, fit_error_model, shipped_model
from greentrack.energy.monitor import EnergyMonitor, open_monitor
from greentrack.energy.types import CounterSample, PhaseSpan

PROMPT_SIZES = (128, 1024, 4096)
DECODE_TOKENS = 17  # 16 decode steps after the prefill's token
DEBOUNCE_S = 0.15  # step 7: the language server's default debounce, the sampler's head start


def log(msg: str) -> None:
    print(f"[{time.monotonic():10.3f}] {msg}", flush=True)


# -- 1. the raw counter ---------------------------------------------------------------------------------------

def counter_characterisation(torch: Any, device: Any, out: Path) -> dict[str, Any]:
    """Step 1: the read cost, a trace of known loads (``h100_trace.json``), the update period, step size, idle and
    busy power, and the lag that best explains the 1 s block's edges."""
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(h)
    driver = pynvml.nvmlSystemGetDriverVersion()
    costs = _read_costs_s(pynvml, h)
    trace = _LoadTrace(torch, pynvml, h, device)
    trace.record()
    samples, spans = trace.samples, trace.spans
    _write_trace(out, name, driver, samples, spans)

    cs = [CounterSample(t, e, r) for t, e, r in samples]
    changes = [cs[i].t_s for i in range(1, len(cs)) if cs[i].energy_j != cs[i - 1].energy_j]
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    steps = [cs[i].energy_j - cs[i - 1].energy_j for i in range(1, len(cs)) if cs[i].energy_j != cs[i - 1].energy_j]
    # Idle and busy power from whole intervals well inside the idle head and the 1 s block.
    knots = find_knots(cs, update_period_s=0.1)
    blk = spans[0]
    idle_w = _mean_power_w(knots, samples[0][0] + 0.05, blk["start_s"] - 0.05)
    busy_w = _mean_power_w(knots, blk["start_s"] + 0.25, blk["end_s"] - 0.05)
    best = _best_lag(knots, blk, idle_w, busy_w)
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


def _read_costs_s(pynvml: Any, h: Any) -> list[float]:
    """The durations of 200 counter reads, sorted. Units: s."""
    costs = []
    for _ in range(200):
        t0 = time.perf_counter()
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        costs.append(time.perf_counter() - t0)
    costs.sort()
    return costs


class _LoadTrace:
    """The counter polled back to back through known loads: idle, a 1 s matmul block, 30 ms and 150 ms bursts.

    ``samples``: (middle of the read s, energy J, read duration s); ``spans``: the loads, labelled.
    """

    def __init__(self, torch: Any, pynvml: Any, h: Any, device: Any) -> None:
        self.torch, self.pynvml, self.h = torch, pynvml, h
        self.a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        self.b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        self.samples: list[tuple[float, float, float]] = []
        self.spans: list[dict[str, Any]] = []

    def record(self) -> None:
        """The schedule of loads and idle gaps."""
        self.torch.cuda.synchronize()
        self.poll_until(time.monotonic() + 1.0)
        self.busy(1.0, "block")
        self.poll_until(time.monotonic() + 0.6)
        for i in range(10):
            self.busy(0.03, f"burst30ms#{i}")
            self.poll_until(time.monotonic() + 0.07)
        self.poll_until(time.monotonic() + 0.3)
        for i in range(5):
            self.busy(0.15, f"burst150ms#{i}")
            self.poll_until(time.monotonic() + 0.15)
        self.poll_until(time.monotonic() + 0.6)

    def poll_until(self, t_end: float) -> None:
        """Idle: read the counter back to back until ``t_end``."""
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            e = self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1000.0
            t1 = time.monotonic()
            self.samples.append((0.5 * (t0 + t1), e, t1 - t0))

    def busy(self, duration_s: float, label: str) -> None:
        """Matmuls for ``duration_s``, queued in small batches; polling in between keeps the trace dense."""
        torch = self.torch
        torch.cuda.synchronize()
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s:
            for _ in range(2):
                self.a @ self.b
            t1 = time.monotonic()
            self.samples.append(
                (t1, self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1000.0, time.monotonic() - t1)
            )
        torch.cuda.synchronize()
        self.spans.append({"label": label, "start_s": t0, "end_s": time.monotonic()})


def _write_trace(
    out: Path, name: str, driver: str, samples: list[tuple[float, float, float]], spans: list[dict[str, Any]]
) -> None:
    """``h100_trace.json``: the trace with times and energy relative to its first read."""
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


def _mean_power_w(knots: Sequence[Knot], t0: float, t1: float) -> float:
    """The mean power between the first and the last knot within ``[t0, t1]``."""
    inside = [k for k in knots if t0 <= k.t_s <= t1]
    return (inside[-1].energy_j - inside[0].energy_j) / (inside[-1].t_s - inside[0].t_s)


def _best_lag(knots: Sequence[Knot], blk: dict[str, Any], idle_w: float, busy_w: float) -> tuple[float, float]:
    """Lag: the shift of the knots that best explains the intervals around the block's edges; (squared error, s)."""
    best = (math.inf, 0.0)
    for lag_ms in range(-60, 151, 2):
        lag = lag_ms / 1000.0
        best = min(best, (_edge_error(knots, blk, idle_w, busy_w, lag), lag))
    return best


def _edge_error(knots: Sequence[Knot], blk: dict[str, Any], idle_w: float, busy_w: float, lag: float) -> float:
    """Σ (predicted − counted)² over the intervals within 0.3 s of the block, knots shifted by ``lag`` s."""
    err = 0.0
    for k0, k1 in itertools.pairwise(knots):
        x0, x1 = k0.t_s - lag, k1.t_s - lag
        if not (blk["start_s"] - 0.3 < x1 and x0 < blk["end_s"] + 0.3):
            continue
        on = max(0.0, min(x1, blk["end_s"]) - max(x0, blk["start_s"]))
        pred = idle_w * (x1 - x0 - on) + busy_w * on
        err += (pred - (k1.energy_j - k0.energy_j)) ** 2
    return err


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


def make_vllm_run_phases(model_path: str, device: str = "cuda", async_scheduling: str = "auto",
                         facts: dict[str, Any] | None = None) -> Callable[[int, int], list[PhaseSpan]]:
    """``run_phases`` through greentrack's vLLM backend (``--backend vllm``): the phases as the product times them
    (vLLM's per-request timestamps), each prompt of ~``n`` tokens of random words in a new document (no prefix
    cache), ``m - 1`` decode tokens at most (stop rules may end one sooner). A span's ``work`` is the nominal size
    ``n`` (the truth's key) for the prefill and the tokens decoded for the decode."""
    from greentrack.engine.types import CancelToken, CompletionRequest
    from greentrack.engine.vllm_backend import VllmBackend

    asked = None if async_scheduling == "auto" else async_scheduling == "on"
    backend = VllmBackend(model_path, device, healing=False, max_model_len=8192, async_scheduling=asked)
    if facts is not None:
        facts["async_scheduling"] = backend.async_scheduling
        log(f"vLLM async scheduling: {facts['async_scheduling']} (asked: {async_scheduling})")
    vocab = [w for w in backend.engine.get_tokenizer().get_vocab() if w.isalpha() and len(w) > 2][:4000]
    rng = random.Random(11)
    counter = [0]

    def run_phases(n: int, m: int) -> list[PhaseSpan]:
        counter[0] += 1
        rid = f"r{counter[0]}"
        text = "def f():\n    " + " ".join(rng.choice(vocab) for _ in range(n))
        request = CompletionRequest(rid, f"file:///validate/{rid}.py", text, len(text), "python",
                                    max_tokens=max(1, m - 1), context_tokens=n + 32, max_time_s=120.0)
        result = backend.complete(request, CancelToken())
        spans = []
        prefill, decode = result.span("prefill"), result.span("decode")
        if prefill is not None:
            spans.append(PhaseSpan(rid, "prefill", prefill.start_s, prefill.end_s, float(n)))
        if decode is not None and m >= 2:
            spans.append(PhaseSpan(rid, "decode", decode.start_s, decode.end_s, decode.work))
        return spans

    return run_phases


# -- 3. ground truth ------------------------------------------------------------------------------------------

PAD_S = 0.04  # the sleep after each run in the padded truth windows (measures the gaps' power)


@dataclass(frozen=True)
class SteadyWindow:
    """A run of identical requests back to back: its counter energy, the time its spans covered and the gaps
    between them (the host building the next request), and the mean duration of its ``kind`` spans. Units: J, s."""

    energy_j: float
    covered_s: float
    gap_s: float
    mean_s: float
    count: int

    def power_w(self, gap_w: float) -> float:
        """The spans' power with the gaps drawing ``gap_w``. Units: W."""
        return (self.energy_j - gap_w * self.gap_s) / self.covered_s


def steady_window(monitor: EnergyMonitor, run_phases: Callable[[int, int], list[PhaseSpan]], n: int, m: int,
                  kind: str, window_s: float, pad_s: float = 0.0) -> SteadyWindow:
    """≥ ``window_s`` and ≥ 2 runs (a gap between them) of ``run_phases(n, m)`` back to back, ``pad_s`` of sleep
    after each (``calibrate.run_window``, as the calibration runs its windows), measured by the counter."""
    def padded(n: int, m: int) -> list[PhaseSpan]:
        spans = run_phases(n, m)
        if pad_s:
            time.sleep(pad_s)
        return spans

    spans = run_window(padded, n, m, 2, window_s)
    start, end = spans[0].start_s, spans[-1].end_s
    gap_s = gaps_s(spans)
    mine = [s for s in spans if s.kind == kind]
    return SteadyWindow(monitor.window_energy(start, end).energy_j, (end - start) - gap_s, gap_s,
                        statistics.fmean(s.duration_s for s in mine), len(mine))


def gap_power_w(plain: SteadyWindow, padded: SteadyWindow) -> float:
    """The gaps' power from two windows of the same requests with different gaps (E = P·covered + P_gap·gaps,
    solved for P_gap). Units: W; NaN when the two windows' gaps do not differ enough to tell."""
    det = padded.gap_s * plain.covered_s - plain.gap_s * padded.covered_s
    if abs(det) < 1e-3 * padded.covered_s * plain.covered_s:
        return math.nan
    return (padded.energy_j * plain.covered_s - plain.energy_j * padded.covered_s) / det


def ground_truth(monitor: EnergyMonitor, run_phases: Callable[[int, int], list[PhaseSpan]],
                 window_s: float, output_sizes: Sequence[int] = (DECODE_TOKENS,)) -> dict[str, dict[str, float]]:
    """Step 3: the power of each prefill size, and of decode alone, from steady windows of identical phases; the
    decodes of the workload's shapes (each prefill size × ``output_sizes``) from windows of that shape.

    The time between requests (the host building the next one: ~40 ms for a 4096-token request through vLLM,
    against a 56 ms prefill) is no phase's: each size also runs with ``PAD_S`` of sleep after each request,
    the pair gives the gaps' power (median over the sizes), and each phase's power is its window's energy less
    the gaps' at that power over the time its spans covered. (The window's mean power, gaps included, was the
    truth before 2026-11-27: ~40 % low for vLLM's 4096-token prefills, ~1 % for the torch path's.)"""
    truth: dict[str, dict[str, float]] = {}
    plain: dict[int, SteadyWindow] = {}
    gap_by_size: dict[int, float] = {}
    for n in PROMPT_SIZES:
        plain[n] = steady_window(monitor, run_phases, n, 1, "prefill", window_s)
        padded = steady_window(monitor, run_phases, n, 1, "prefill", window_s, PAD_S)
        gap_by_size[n] = gap_power_w(plain[n], padded)
    measured = [w for w in gap_by_size.values() if not math.isnan(w)]
    gap_w = statistics.median(measured) if measured else 0.0
    truth["gap"] = {"power_w": gap_w, "pad_s": PAD_S,
                    **{f"power_w_after_prefill_{n}": w for n, w in gap_by_size.items()}}
    log(f"truth gaps between requests: {gap_w:.1f} W (by prefill size: "
        f"{', '.join(f'{n}: {w:.1f}' for n, w in gap_by_size.items())})")
    for n, w in plain.items():
        p = w.power_w(gap_w)
        truth[f"prefill/{n}"] = {"power_w": p, "duration_ms": 1000 * w.mean_s, "energy_j": p * w.mean_s,
                                 "count": w.count, "window_power_w": w.energy_j / (w.covered_s + w.gap_s),
                                 "gap_share": w.gap_s / (w.covered_s + w.gap_s)}
        log(f"truth prefill {n}: {p:.1f} W × {1000 * w.mean_s:.2f} ms = {p * w.mean_s:.3f} J ({w.count} phases; "
            f"gaps {100 * w.gap_s / (w.covered_s + w.gap_s):.0f} % of the window)")
    # Decode: one long decode run after a 128-token prefill; the decode spans only.
    dec = steady_window(monitor, run_phases, 128, 65, "decode", window_s)
    # The window includes the 128-token prefills: remove them at their own measured power, and the gaps.
    pre = truth["prefill/128"]
    pre_s = dec.count * pre["duration_ms"] / 1000
    dec_s = dec.count * dec.mean_s
    p_dec_only = (dec.energy_j - gap_w * dec.gap_s - pre["power_w"] * pre_s) / dec_s
    truth["decode/power"] = {"power_w": p_dec_only, "step_ms": 1000 * dec.mean_s / 64,
                             "j_per_token": p_dec_only * dec.mean_s / 64}
    log(f"truth decode: {p_dec_only:.1f} W, {1000 * dec.mean_s / 64:.2f} ms/token, "
        f"{p_dec_only * dec.mean_s / 64:.3f} J/token")
    for n in PROMPT_SIZES:
        for m in output_sizes:
            key = f"decode/after/{n}" if m == DECODE_TOKENS else f"decode/after/{n}/out{m}"
            truth[key] = shaped_decode_truth(monitor, run_phases, n, truth[f"prefill/{n}"], gap_w, window_s, m)
    return truth


def median_truth(rounds: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The truth of several rounds of ``ground_truth``: each window's figures, the median over the rounds (one
    window through vLLM can be 10–15 % off the same window minutes later)."""
    if len(rounds) == 1:
        return rounds[0]
    out: dict[str, dict[str, float]] = {}
    for key, first in rounds[0].items():
        windows = [r[key] for r in rounds if key in r]
        out[key] = {field: (statistics.median(float(w[field]) for w in windows if field in w)
                            if isinstance(value, int | float) and not isinstance(value, bool) else value)
                    for field, value in first.items()}
    return out


def shaped_decode_truth(monitor: EnergyMonitor, run_phases: Callable[[int, int], list[PhaseSpan]], n: int,
                        prefill: dict[str, float], gap_w: float, window_s: float,
                        m: int = DECODE_TOKENS) -> dict[str, float]:
    """The decode power of the mixed workload's own shape: ≥ ``window_s`` of (prefill ``n`` + ``m − 1``-token decode)
    back to back, minus the prefills at their steady power and the gaps between requests at theirs. The 64-token
    decode window above runs each decode step at a new cache length once (its first-time kernel choices made it
    ~3× slower per token on the H200 of 2026-11-26, at a lower power), so it is not the decodes the workload
    runs; this one is, warmed up."""
    for _ in range(3):
        run_phases(n, m)
    w = steady_window(monitor, run_phases, n, m, "decode", window_s)
    dec_s = w.count * w.mean_s
    pre_s = w.covered_s - dec_s  # each request's prefill then its decode, one after the other
    # the window's prefills at the prefill window's energy per phase, the stable reading: through vLLM a prefill's
    # duration moves with the host between windows (its power the other way), so power × this window's prefill
    # time removed far too much once (18.6 W left for decodes after 4096-token prefills, below idle)
    power_w = (w.energy_j - prefill["energy_j"] * w.count - gap_w * w.gap_s) / dec_s
    step_ms = 1000 * w.mean_s / (m - 1)
    log(f"truth decode after prefill {n}, {m} output tokens: {power_w:.1f} W, {step_ms:.2f} ms/token ({w.count} "
        f"decodes, gaps {100 * w.gap_s / (w.covered_s + w.gap_s):.0f} % of the window)"
        + ("" if power_w >= gap_w else f"; below the gaps' {gap_w:.1f} W: not used"))
    return {"power_w": power_w, "step_ms": step_ms, "count": w.count, "output_tokens": m, "window_j": w.energy_j,
            "prefill_s": pre_s, "decode_s": dec_s, "gap_s": w.gap_s}


def prefill_truth_repeat(monitor: EnergyMonitor, run_phases: Callable[[int, int], list[PhaseSpan]],
                         truth: dict[str, dict[str, float]], window_s: float) -> dict[str, dict[str, float]]:
    """The plain prefill windows of step 3 once more (after the workload, minutes later), their gaps at the truth's
    gap power: how far the truth of a size moves between two windows of the same phases, in power and in energy
    per phase (through vLLM, the durations move with the host: 19–31 ms for 1024-token prefills on 2026-11-27).
    With ``--rounds`` above 1 the comparison is with step 3's medians over its rounds."""
    gap_w = truth["gap"]["power_w"] if "gap" in truth else 0.0
    out = {}
    for n in PROMPT_SIZES:
        w = steady_window(monitor, run_phases, n, 1, "prefill", window_s)
        p, step3 = w.power_w(gap_w), truth[f"prefill/{n}"]
        out[f"prefill/{n}"] = {"power_w": p, "duration_ms": 1000 * w.mean_s, "energy_j": p * w.mean_s,
                               "count": w.count, "power_change_pct": 100 * (p / step3["power_w"] - 1),
                               "energy_change_pct": 100 * (p * w.mean_s / step3["energy_j"] - 1)}
        log(f"truth repeat prefill {n}: {p:.1f} W × {1000 * w.mean_s:.2f} ms = {p * w.mean_s:.3f} J (step 3: "
            f"{step3['power_w']:.1f} W × {step3['duration_ms']:.2f} ms)")
    return out


# -- 5. the mixed workload ------------------------------------------------------------------------------------

def mixed_workload(run_phases: Callable[[int, int], list[PhaseSpan]], requests: int,
                   isolated: int, on_demand: EnergyMonitor | None = None, *, long_share: float = 0.0,
                   long_output_tokens: int = DECODE_TOKENS) -> list[PhaseSpan]:
    """``requests`` completions after random idle gaps (``DECODE_TOKENS`` output tokens, ``long_output_tokens`` for
    a ``long_share`` of them), then ``isolated`` lone prefills; their spans in order.
    With an ``on_demand`` monitor, each completion is metered as the language server meters it: ``expect_work``
    when the request comes, a 150 ms debounce, then the phases inside ``work()`` (the sampler reads by phase)."""
    rng = random.Random(7)

    def metered(n: int, m: int) -> list[PhaseSpan]:
        if on_demand is None:
            return run_phases(n, m)
        on_demand.expect_work()
        time.sleep(DEBOUNCE_S)
        with on_demand.work():
            return run_phases(n, m)

    all_spans: list[PhaseSpan] = []
    for _ in range(requests):
        time.sleep(rng.uniform(0.0, 0.08))
        n = rng.choice(PROMPT_SIZES)
        m = long_output_tokens if long_share > 0 and rng.random() < long_share else DECODE_TOKENS
        all_spans.extend(metered(n, m))
    # Short isolated prefills between idle gaps (phases shorter than a counter step).
    for _ in range(isolated):
        time.sleep(rng.uniform(0.05, 0.15))
        all_spans.extend(metered(rng.choice(PROMPT_SIZES), 1))
    return all_spans


class _MixedRun:
    """The mixed workload's sampler reads and spans, attributed and compared with the ground truth."""

    def __init__(self, monitor: EnergyMonitor, all_spans: list[PhaseSpan], truth: dict[str, dict[str, float]],
                 timed_by: str = TIMED_BY_ENGINE) -> None:
        monitor.window_energy(all_spans[-1].end_s - 0.001, all_spans[-1].end_s)  # wait for the step after the end
        assert monitor.sampler is not None and monitor.counter is not None
        self.all_spans, self.truth, self.timed_by = all_spans, truth, timed_by
        self.samples = monitor.sampler.samples_between(all_spans[0].start_s - 1.0, math.inf)
        self.ctr = ctr = monitor.counter
        self.meter = MeterInfo(ctr.name, ctr.method, ctr.resolution_j, ctr.max_power_w, 0.0, ctr.relative_uncertainty)
        self._prefill_work = {sp.request_id: sp.work for sp in all_spans if sp.kind == "prefill"}

    def write_recording(self, out: Path, device: str, date: str, cal_d: dict[str, Any]) -> None:
        """The raw run, replayed on CPU by tests/energy/test_trace_replay.py (times relative to the first sample)."""
        samples = self.samples
        t_ref = samples[0].t_s
        (out / "h100_mixed.json").write_text(json.dumps({
            "device": device, "date": date, "timed_by": self.timed_by,
            "what": "sampler reads (t_s, energy_j, read_s) during the mixed workload, its phase spans, the "
                    "ground-truth powers from steady windows, and the calibration run_calibration fitted; timed_by: "
                    "how the phases were timed (engine: after a synchronise; vllm: its request timestamps)",
            "counter": self.ctr.describe(),
            "samples": [[round(x.t_s - t_ref, 6), round(x.energy_j - samples[0].energy_j, 3), round(x.read_s, 6)]
                        for x in samples],
            "spans": [[sp.request_id, sp.kind, round(sp.start_s - t_ref, 6), round(sp.end_s - t_ref, 6), sp.work]
                      for sp in self.all_spans],
            "truth": self.truth,
            "calibration": cal_d,
        }))

    def evaluate(self, weights: PhaseWeights | None) -> dict[str, Any]:
        """Attribute per request (as the pipeline does), then compare with the truth per (kind, size)."""
        rows = self._rows_by_key(weights)
        # Conservation over the whole run, all spans at once.
        whole = self._attribute(self.all_spans, weights)
        total_attr = whole.total_j + whole.unattributed_j
        total_window = whole.window_j + whole.extrapolated_j
        out: dict[str, Any] = {"conservation_error_j": total_attr - total_window}
        for key, vals in sorted(rows.items()):
            out[key] = _accuracy(vals)
        return out

    def _attribute(self, spans: list[PhaseSpan], weights: PhaseWeights | None) -> Attribution:
        ctr = self.ctr
        return attribute(self.samples, spans, self.meter, update_period_s=ctr.update_period_s,
                         timing_slack_s=ctr.timing_slack_s, lag_s=ctr.lag_s, weights=weights)

    def _rows_by_key(self, weights: PhaseWeights | None) -> dict[str, list[tuple[float, float, float]]]:
        """Per (kind, size): (attributed J, true J, uncertainty J) of each phase, attributed request by request."""
        rows: dict[str, list[tuple[float, float, float]]] = {}
        by_request: dict[str, list[PhaseSpan]] = {}
        for s in self.all_spans:
            by_request.setdefault(s.request_id, []).append(s)
        for spans in by_request.values():
            res = self._attribute(spans, weights)
            for sp, pe in zip(spans, res.phases, strict=True):
                key, true_j = self._truth_of(sp)
                rows.setdefault(key, []).append((pe.energy_j, true_j, pe.uncertainty_j or math.inf))
        return rows

    def _truth_of(self, sp: PhaseSpan) -> tuple[str, float]:
        """The span's (kind, size) key and its true energy (J): the steady power of its kind, size and request shape
        × its duration, a vLLM-timed prefill's read as energy per phase (``interval_data.truth_energy_j``)."""
        key = f"prefill/{int(sp.work)}" if sp.kind == "prefill" else "decode"
        return key, truth_energy_j(sp, self.truth, self._prefill_work.get(sp.request_id),
                                   default_truth_reading(self.timed_by))


def _accuracy(vals: list[tuple[float, float, float]]) -> dict[str, Any]:
    """Mean attributed and true J, mean error, mean uncertainty, and the share of phases within it."""
    attr = statistics.fmean(v[0] for v in vals)
    true = statistics.fmean(v[1] for v in vals)
    covered = sum(1 for a, t, u in vals if abs(a - t) <= u) / len(vals)
    return {"n": len(vals), "attributed_j": attr, "truth_j": true,
            "mean_error_pct": 100 * (attr / true - 1) if true else None,
            "mean_uncertainty_j": statistics.fmean(v[2] for v in vals),
            "within_uncertainty": covered,
            "mean_abs_error_pct_single": 100 * statistics.fmean(abs(a - t) / t for a, t, _ in vals)}


# -- 6. intervals ---------------------------------------------------------------------------------------------

def interval_check(out: Path) -> dict[str, Any]:
    """Step 6: per completion, the figure, the interval and the truth; coverage and half-width summaries."""
    rec = load_recording(json.loads((out / "h100_mixed.json").read_text()))
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"timed_by": rec.timed_by}
    for calibrated in (False, True):
        all_cases = cases(rec, calibrated=calibrated)
        roots = sorted({c.request.split("/")[0] for c in all_cases})
        train = set(roots[::2])
        held_out = fit_error_model((c.observation(calibrated) for c in all_cases if c.request.split("/")[0] in train),
                                   timed_by=rec.timed_by)
        # shipped: what the product shows (the package's model for this timing, else the bound); engine_model (for
        # phases not timed by the engine): the engine-timed model applied anyway, as the run of 2026-11-27 did.
        models = [("shipped", shipped_model(rec.timed_by), rec.timed_by), ("held_out", held_out, rec.timed_by)]
        if rec.timed_by != TIMED_BY_ENGINE:
            models.append(("engine_model", shipped_model(), TIMED_BY_ENGINE))
        for name, model, timed_by in models:
            chosen = [c for c in all_cases if c.kind == "completion" and not c.derived
                      and (name != "held_out" or c.request.split("/")[0] not in train)]
            chosen_ids = {id(c) for c in chosen}  # as the product gives them: phases summed without a completion entry
            pairs = [(c, iv) for c, iv in completion_intervals(all_cases, model, calibrated, timed_by)
                     if id(c) in chosen_ids]
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


# -- the run --------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Steps 1–6 in order (see the module docstring); ``results.json`` is saved after each. Returns the results."""
    import torch

    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda:0")
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                               "host": platform.node(), "torch": torch.__version__, "tiny": tiny}
    save = functools.partial(_save, out, results)

    if not tiny and args.backend == "torch":
        log("counter characterisation")
        results["counter"] = counter_characterisation(torch, device, out)
        log(json.dumps(results["counter"]))
        save()

    if args.backend == "vllm":
        log(f"starting greentrack's vLLM backend on {args.model}")
        results["vllm"] = {"async_scheduling_asked": args.async_scheduling}
        run_phases = make_vllm_run_phases(args.model, "cpu" if tiny else "cuda", async_scheduling=args.async_scheduling,
                                          facts=results["vllm"])
    else:
        log("building the model")
        model = build_model(torch, device, tiny)
        run_phases = make_run_phases(torch, model, device)
    for n in PROMPT_SIZES:
        run_phases(n, 4)

    monitor = open_monitor("cpu" if tiny else "cuda:0")
    results["meter"] = monitor.describe()
    log(f"meter {monitor.meter_name}")
    window_s = 0.5 if tiny else args.window_s

    long_share = args.long_share if args.long_share is not None else (0.5 if args.backend == "vllm" else 0.0)
    long_tokens = args.long_output_tokens if not tiny else min(args.long_output_tokens, 9)
    requests = args.requests if not tiny else 6
    results["workload"] = {"long_share": long_share, "long_output_tokens": long_tokens, "requests": requests}
    shapes = (DECODE_TOKENS, long_tokens) if long_share > 0 and long_tokens != DECODE_TOKENS else (DECODE_TOKENS,)
    truth_rounds = [ground_truth(monitor, run_phases, window_s, shapes) for _ in range(args.rounds)]
    truth = median_truth(truth_rounds)
    results["truth"] = truth
    if args.rounds > 1:
        results["truth_rounds"] = truth_rounds
        log("truth, median of the rounds: " + json.dumps(
            {k: round(v.get("energy_j", v["power_w"]), 3) for k, v in truth.items() if "power_w" in v}))
    save()

    log("run_calibration")
    cal = run_calibration(run_phases, monitor, PROMPT_SIZES, (1, DECODE_TOKENS), repeats=5,
                          host=platform.node(), device=str(device), model="qwen2.5-coder-1.5b-shape",
                          min_window_s=window_s, idle_s=1.0 if not tiny else 0.2, rounds=args.rounds)
    cal_d = cal.to_dict()
    results["calibration"] = {k: v for k, v in cal_d.items() if k not in ("points", "bins")}
    results["calibration_points"] = cal_d["points"]
    log(json.dumps(results["calibration"]))
    save()

    log("mixed workload")
    all_spans = mixed_workload(run_phases, requests, 12 if not tiny else 3,
                               long_share=long_share, long_output_tokens=long_tokens)
    mixed = _MixedRun(monitor, all_spans, truth, "vllm" if args.backend == "vllm" else TIMED_BY_ENGINE)
    mixed.write_recording(out, results.get("counter", {}).get("device", str(device)), results["date"], cal_d)
    results["mixed_uncalibrated"] = mixed.evaluate(None)
    results["mixed_calibrated"] = mixed.evaluate(cal.weights)
    assert monitor.sampler is not None
    results["sampler"] = monitor.sampler.describe()
    results["poll_knot_widths_ms"] = _knot_widths_ms(mixed.samples, monitor)
    if args.truth_repeat:
        results["truth_repeat"] = prefill_truth_repeat(monitor, run_phases, truth, window_s)
    monitor.close()
    results["intervals"] = interval_check(out)
    save()
    results["calibration_replay"] = calibration_replay(out, results.get("truth_repeat"))
    save()
    if args.on_demand:
        results |= on_demand_check(run_phases, truth, cal, args.requests if not tiny else 6,
                                   "cpu" if tiny else "cuda:0")
        save()
    _log_mixed(results)
    return results


def calibration_replay(out: Path, truth_repeat: dict[str, Any] | None) -> dict[str, Any]:
    """``bench/replay_calibration.py`` on this run's recording (issue 13, the 1024-token prefill): per-phase accuracy
    of the calibration's prefill models under both readings of the truth, logged and returned."""
    from bench.replay_calibration import replay

    report = replay(load_recording(json.loads((out / "h100_mixed.json").read_text())), truth_repeat)
    for line in report["lines"]:
        log("replay " + line)
    return report


def on_demand_check(run_phases: Callable[[int, int], list[PhaseSpan]], truth: dict[str, dict[str, float]],
                    cal: Any, requests: int, device: str) -> dict[str, Any]:
    """7. The same workload metered as the product meters it (on demand, reads by phase: ``read_planner``), against
    the same truth: are its figures as accurate as the 20 ms poll's, and how many reads did it make?"""
    log("mixed workload, on demand")
    monitor = open_monitor(device, on_demand=True)
    assert monitor.sampler is not None
    reads0 = monitor.sampler.reads
    isolated = 12 if device != "cpu" else 3
    all_spans = mixed_workload(run_phases, requests, isolated, on_demand=monitor)
    mixed = _MixedRun(monitor, all_spans, truth)
    out = {"mixed_on_demand_uncalibrated": mixed.evaluate(None),
           "mixed_on_demand_calibrated": mixed.evaluate(cal.weights),
           "on_demand_reads": {"reads": monitor.sampler.reads - reads0, "completions": requests + isolated,
                               "knot_widths_ms": _knot_widths_ms(mixed.samples, monitor)},
           "on_demand_sampler": monitor.sampler.describe()}
    monitor.close()
    return out


def _knot_widths_ms(samples: list[CounterSample], monitor: EnergyMonitor) -> dict[str, float]:
    """Median and 90th percentile of the knots' bracket widths (ms)."""
    assert monitor.counter is not None
    widths = sorted(2000.0 * k.delta_s for k in find_knots(samples, update_period_s=monitor.counter.update_period_s))
    if not widths:
        return {}
    return {"median": statistics.median(widths), "p90": widths[int(0.9 * (len(widths) - 1))], "n": len(widths)}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, CPU-time estimate")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--window-s", type=float, default=2.5)
    ap.add_argument("--backend", choices=("torch", "vllm"), default="torch",
                    help="vllm: the phases through greentrack's vLLM backend (needs --model), timed as the product "
                    "times them")
    ap.add_argument("--model", help="a model folder for --backend vllm (bench/gpu_make_model.py makes one)")
    ap.add_argument("--async-scheduling", choices=("auto", "on", "off"), default="auto",
                    help="--backend vllm: vLLM's async scheduling (a batch queue: the next step is scheduled "
                    "before the last one's output is handled, which moves the phase timestamps); auto: vLLM's choice")
    ap.add_argument("--long-share", type=float, default=None,
                    help="the share of the mixed workload's completions that decode --long-output-tokens − 1 tokens "
                    "(default: 0.5 with --backend vllm, whose 16-token completions are mostly < 100 ms; else 0)")
    ap.add_argument("--long-output-tokens", type=int, default=65,
                    help="output tokens of the long completions (their decode truth: decode/after/N/outM)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure the truth's windows and the calibration's this many times each, keeping medians")
    ap.add_argument("--no-truth-repeat", dest="truth_repeat", action="store_false",
                    help="skip the second pass of the prefill truth windows after the workload")
    ap.add_argument("--on-demand", action="store_true",
                    help="7. also run the workload metered on demand (reads by phase) against the same truth")
    return ap.parse_args(argv)


def _save(out: Path, results: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))


def _log_mixed(results: dict[str, Any]) -> None:
    for k in ("mixed_uncalibrated", "mixed_calibrated", "mixed_on_demand_uncalibrated", "mixed_on_demand_calibrated"):
        if k not in results:
            continue
        log(k)
        for key, v in results[k].items():
            log(f"  {key}: {json.dumps(v)}")


if __name__ == "__main__":
    main(sys.argv[1:])
