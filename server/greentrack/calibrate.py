"""``greentrack calibrate``: measure this machine's per-phase energy model for the current model, store it.

``run_calibration`` runs the engine's prefill and decode phases at binned sizes (powers of two, after Fernandez
et al., ACL 2025) under the best meter available, in long windows; ``energy.calibration.fit_calibration`` fits
joules per prompt token, per decoded token and per second; ``run_calibrate`` stores the fit keyed by (host,
device, model). Later completions on a machine without a counter use it as their estimate; on a machine with
one, its per-phase powers weight attribution.

On a backend that batches (vLLM), ``run_batched_calibration`` also runs batched windows (``BATCH_SIZES`` ×
``BATCHED_PROMPT_BINS`` × ``BATCHED_OUTPUT_BINS``: every request of a round prefills P tokens and decodes O, B at
once), records every engine step's work through the backend's step hook (``attach_step_sink``) and fits the
per-step fixed cost, J per prefill token and J per decode token as a function of context over the windows'
counter energy less the idle draw (``idle_w`` × the window: ``energy.calibration.fit_step_costs``; costs above
idle, as step attribution splits only the energy above idle); the fit is stored in the same calibration document
(``step_*`` fields), where ``energy.step_attribution.StepCosts.from_calibration`` finds it.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console
from rich.table import Table

from greentrack.config import Settings
from greentrack.energy.calibration import Calibration, CalibrationPoint, StepWindow, fit_calibration, fit_step_costs
from greentrack.energy.gaps import idle_time_s
from greentrack.energy.monitor import EnergyMonitor, open_monitor
from greentrack.energy.step_attribution import StepRecord
from greentrack.energy.types import PhaseSpan
from greentrack.errors import GreentrackError, MeterUnavailable
from greentrack.pipeline import host_name, open_store

PROMPT_SIZES = (32, 64, 128, 256, 512)
OUTPUT_SIZES = (8, 16, 32)
#: The batched grid (Fernandez et al., ACL 2025, bin prompts in powers of two 32–8192 and outputs 8–512).
BATCH_SIZES = (1, 8, 64)
BATCHED_PROMPT_BINS = (32, 512, 2048)
BATCHED_OUTPUT_BINS = (8, 64)


def parse_sizes(text: str | None, default: Sequence[int]) -> tuple[int, ...]:
    """``"1,8,64"`` → (1, 8, 64); None or "" → ``default``. Raises ``ValueError`` on a size < 1."""
    if not text:
        return tuple(default)
    sizes = tuple(int(x) for x in text.split(",") if x.strip())
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive integers, not {text!r}")
    return sizes


#: Rounds of calibration windows (``run_calibration``) by backend when not asked: through vLLM a window of a few
#: seconds can be 10–15 % off the same window minutes later (its phases are mostly host time), and the median of
#: three brought every phase kind of two H200 runs within ±10 % of the truth but one (docs/benchmarks.md, 2026-11-27).
DEFAULT_ROUNDS = {"vllm": 3}


def calibration_rounds(backend: str | None, asked: int | None) -> int:
    """The rounds to measure: ``asked`` where given (≥ 1), else the backend's default (``DEFAULT_ROUNDS``, else 1)."""
    if asked is not None:
        if asked < 1:
            raise ValueError("a calibration needs at least one round")
        return asked
    return DEFAULT_ROUNDS.get(backend or "transformers", 1)


def run_calibrate(settings: Settings, *, repeats: int, allow_estimate: bool, batched: bool | None = None,
                  batch_sizes: Sequence[int] = BATCH_SIZES, prompt_bins: Sequence[int] = BATCHED_PROMPT_BINS,
                  output_bins: Sequence[int] = BATCHED_OUTPUT_BINS, rounds: int | None = None) -> None:
    """``batched`` None: batched windows too when the backend batches. ``rounds`` None: ``DEFAULT_ROUNDS``."""
    from greentrack.engine.factory import open_backend

    console = Console(stderr=True)
    store = open_store(settings)
    kwargs: dict[str, Any] = {}
    if (settings.backend or "transformers") == "vllm" and batched is not False:
        needed = settings.context_tokens + settings.max_tokens + 64
        kwargs = {"max_num_seqs": max(batch_sizes),
                  "max_model_len": max(needed, max(prompt_bins) + max(output_bins) + 64, 4096)}
    backend = open_backend(settings, **kwargs)
    if batched is None:
        batched = bool(getattr(backend, "batches", False))
    run_synthetic = getattr(backend, "run_synthetic", None)
    if run_synthetic is None:
        raise GreentrackError(f"the {backend.name} backend cannot run calibration phases yet")
    try:
        with open_monitor(backend.device) as monitor:
            if monitor.method == "estimated" and not allow_estimate:
                raise MeterUnavailable(
                    f"no energy counter on this machine (best meter: {monitor.meter_name}); a calibration "
                    "fitted to an estimate is itself an estimate. Run on a machine with NVML or RAPL, or pass "
                    "--allow-estimate to fit the estimate anyway."
                )
            with console.status(f"calibrating {backend.model_id} on {backend.device} with {monitor.meter_name}…"):
                calibration = run_calibration(
                    run_synthetic, monitor, PROMPT_SIZES, OUTPUT_SIZES, repeats=repeats,
                    host=host_name(), device=backend.device, model=backend.model_id,
                    rounds=calibration_rounds(settings.backend, rounds),
                )
            if batched:
                with console.status(f"batched windows: batch sizes {', '.join(map(str, batch_sizes))}…"):
                    calibration = run_batched_calibration(backend, monitor, calibration, batch_sizes, prompt_bins,
                                                          output_bins, repeats=max(1, repeats // 5))
        data = calibration.to_dict()
        store.save_calibration(data)
    finally:
        backend.close()
        store.close()
    table = Table(title=f"Calibration stored in {settings.db_path}", title_justify="left")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if isinstance(value, list):
            value = f"{len(value)} measured"
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)


def run_window(
    run_phases: Callable[[int, int], Sequence[PhaseSpan]], n: int, m: int, repeats: int, min_window_s: float
) -> list[PhaseSpan]:
    """Run (n, m) back to back at least ``repeats`` times and for at least ``min_window_s``."""
    spans: list[PhaseSpan] = []
    count = 0
    t0 = time.monotonic()
    while count < repeats or time.monotonic() - t0 < min_window_s:
        spans.extend(run_phases(n, m))
        count += 1
    return spans


def run_calibration(
    run_phases: Callable[[int, int], Sequence[PhaseSpan]],
    monitor: EnergyMonitor,
    prompt_sizes: Sequence[int],
    output_sizes: Sequence[int],
    repeats: int = 20,
    *,
    host: str = "",
    device: str = "",
    model: str = "",
    min_window_s: float = 2.0,
    idle_s: float = 1.0,
    rounds: int = 1,
) -> Calibration:
    """Measure this machine's per-phase model with ``monitor``'s counter, over long windows.

    ``run_phases(n, m)`` runs a synthetic prompt of ``n`` tokens and decodes ``m`` tokens (the first comes
    from prefill), returning its ``PhaseSpan``s (prefill, then decode when ``m`` ≥ 2).

    Per prompt size N: a window of back-to-back ``run_phases(N, 1)``; its energy less the host gaps between the
    phases (building the next request: no span is active) at the idle power, over the prefills' time, is the
    prefill power; × the mean prefill duration, the prefill energy. Per (N, M): a window of ``run_phases(N, M)``;
    its energy less the prefills' and the gaps' (idle), over the decodes' time, is the decode power. Gaps are
    charged at ``idle_w`` because attribution weighs time with no span at ``idle_w``: the calibrated powers are the
    ones that split a counter interval right. (Charging the gaps at the phase's power, as before, diluted it:
    through vLLM, where building a 4096-token request takes ~40 ms between 56 ms prefills, by ~40 %.) A decode
    window's prefills are removed at the prefill window's energy per phase, the time they take beyond its mean at
    ``idle_w``: through vLLM a prefill's duration is mostly host time that moves between windows, its energy much
    less (the engine's synchronised prefills take as long in both windows, where this is their power × duration).
    A window lasts at least ``min_window_s`` (≥ 20 counter steps on NVML) and ``repeats`` runs, so the counter's
    step (~100 ms) is ≤ 5 % of it. ``rounds`` > 1 measures every window that many times, one round after another,
    and keeps each bin's median: one window of a few seconds through vLLM can be 10–15 % off the next.
    """
    if rounds < 1:
        raise ValueError("a calibration needs at least one round")
    t0 = time.monotonic()
    time.sleep(idle_s)
    idle = monitor.window_energy(t0, time.monotonic())
    idle_w = idle.energy_j / max(idle_s, 1e-9)

    run_phases(min(prompt_sizes), max(2, min(output_sizes)))  # warm-up (allocations, kernels)
    measured: dict[tuple[int, int], list[CalibrationPoint]] = {}
    for _ in range(rounds):
        for (n, m), point in _calibration_round(run_phases, monitor, prompt_sizes, output_sizes, repeats,
                                                min_window_s, idle_w):
            measured.setdefault((n, m), []).append(point)
    points = [_median_point(ps) for ps in measured.values()]
    return fit_calibration(points, idle_w=idle_w, source_meter=monitor.meter_name,
                           host=host, device=device, model=model)


def _calibration_round(
    run_phases: Callable[[int, int], Sequence[PhaseSpan]], monitor: EnergyMonitor, prompt_sizes: Sequence[int],
    output_sizes: Sequence[int], repeats: int, min_window_s: float, idle_w: float,
) -> list[tuple[tuple[int, int], CalibrationPoint]]:
    """One measurement of every bin (``run_calibration``): ((N, M), its point) in order."""
    prefill_j: dict[int, float] = {}
    prefill_s: dict[int, float] = {}
    prefill_work: dict[int, float] = {}
    for n in prompt_sizes:
        spans = run_window(run_phases, n, 1, repeats, min_window_s)
        pre = [s for s in spans if s.kind == "prefill"]
        start, end = spans[0].start_s, spans[-1].end_s
        energy_j = monitor.window_energy(start, end).energy_j
        pre_total_s = math.fsum(s.duration_s for s in pre)
        prefill_s[n] = pre_total_s / len(pre)
        prefill_j[n] = _phase_power_w(energy_j, pre_total_s, gaps_s(spans), idle_w) * prefill_s[n]
        prefill_work[n] = math.fsum(s.work for s in pre) / len(pre)

    out: list[tuple[tuple[int, int], CalibrationPoint]] = []
    for n in prompt_sizes:
        for m in output_sizes:
            if m < 2:
                out.append(((n, m), CalibrationPoint(prefill_work[n], 0.0, prefill_s[n], 0.0, prefill_j[n], 0.0, m)))
                continue
            spans = run_window(run_phases, n, m, repeats, min_window_s)
            pre = [s for s in spans if s.kind == "prefill"]
            dec = [s for s in spans if s.kind == "decode"]
            start, end = spans[0].start_s, spans[-1].end_s
            energy_j = monitor.window_energy(start, end).energy_j
            pre_mean_s = math.fsum(s.duration_s for s in pre) / len(pre)
            # this window's prefills: the prefill window's energy per phase, their extra (or missing) time at idle
            pre_j = prefill_j[n] + idle_w * (pre_mean_s - prefill_s[n])
            dec_total_s = math.fsum(s.duration_s for s in dec)
            decode_w = _phase_power_w(energy_j - pre_j * len(pre), dec_total_s, gaps_s(spans), idle_w)
            dec_s = dec_total_s / len(dec) if dec else 0.0
            dec_work = math.fsum(s.work for s in dec) / len(dec) if dec else 0.0
            out.append(((n, m), CalibrationPoint(
                prompt_tokens=math.fsum(s.work for s in pre) / len(pre),
                decode_tokens=dec_work,
                prefill_s=pre_mean_s,
                decode_s=dec_s,
                prefill_j=max(0.0, pre_j),
                decode_j=decode_w * dec_s,
                output_tokens=m,
            )))
    return out


def _median_point(points: Sequence[CalibrationPoint]) -> CalibrationPoint:
    """One bin's measurements over the rounds, each quantity's median (one round: itself)."""
    if len(points) == 1:
        return points[0]
    return CalibrationPoint(
        prompt_tokens=statistics.median(p.prompt_tokens for p in points),
        decode_tokens=statistics.median(p.decode_tokens for p in points),
        prefill_s=statistics.median(p.prefill_s for p in points),
        decode_s=statistics.median(p.decode_s for p in points),
        prefill_j=statistics.median(p.prefill_j for p in points),
        decode_j=statistics.median(p.decode_j for p in points),
        output_tokens=points[0].output_tokens,
    )


def gaps_s(spans: Sequence[PhaseSpan]) -> float:
    """The time from the first span's start to the last one's end during which no span was active. Units: s."""
    if not spans:
        return 0.0
    return idle_time_s(spans[0].start_s, max(s.end_s for s in spans), [(s.start_s, s.end_s) for s in spans])


def _phase_power_w(energy_j: float, phase_s: float, gap_s: float, idle_w: float) -> float:
    """The power of the phases that ran ``phase_s`` in a window of ``energy_j`` with ``gap_s`` of gaps drawing
    ``idle_w``. Units: J, s, W. 0 when no phase time was measured."""
    if phase_s <= 0:
        return 0.0
    return max(0.0, energy_j - idle_w * gap_s) / phase_s


class StepCollector:
    """A step sink (``engine.vllm_steps.StepSink``) that keeps every step record, for the batched calibration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps: list[StepRecord] = []

    def engine_busy(self, at_s: float | None = None) -> float:
        return time.monotonic() if at_s is None else at_s

    def add_step(self, step: StepRecord) -> None:
        with self._lock:
            self.steps.append(step)

    def request_done(self, request_id: str) -> None:
        pass

    def engine_idle(self, since_s: float) -> None:
        pass

    def window(self, start_s: float, end_s: float) -> list[StepRecord]:
        with self._lock:
            return [s for s in self.steps if s.start_s >= start_s - 1e-6 and s.end_s <= end_s + 1e-6]


def step_window(steps: Sequence[StepRecord], duration_s: float, energy_j: float, *, batch_size: int = 0,
                prompt_tokens: int = 0, output_tokens: int = 0) -> StepWindow:
    """What the window's steps computed, summed (``decode_context_tokens``: Σ decode tokens × their context)."""
    return StepWindow(
        duration_s=duration_s, energy_j=energy_j, steps=len(steps),
        busy_s=math.fsum(s.duration_s for s in steps),
        prefill_tokens=float(sum(w.prefill_tokens for s in steps for w in s.requests.values())),
        decode_tokens=float(sum(w.decode_tokens for s in steps for w in s.requests.values())),
        decode_context_tokens=float(sum(w.decode_tokens * w.context_tokens for s in steps
                                        for w in s.requests.values())),
        batch_size=batch_size, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
    )


def run_batched_calibration(
    backend: Any,
    monitor: EnergyMonitor,
    calibration: Calibration,
    batch_sizes: Sequence[int],
    prompt_bins: Sequence[int],
    output_bins: Sequence[int],
    *,
    repeats: int = 1,
    min_window_s: float = 2.0,
) -> Calibration:
    """Batched windows on ``backend`` (``run_synthetic`` from B threads at once: the engine batches them) with
    every step recorded, then ``fit_step_costs`` above the per-phase calibration's idle power. A window repeats its
    round (B requests of P prompt and O output tokens) for at least ``repeats`` rounds and ``min_window_s``."""
    attach = getattr(backend, "attach_step_sink", None)
    if attach is None:
        raise GreentrackError(f"the {backend.name} backend records no engine steps: no batched calibration")
    collector = StepCollector()
    why = attach(collector)
    if why is not None:
        raise GreentrackError(f"engine steps cannot be recorded ({why}): no batched calibration")
    windows: list[StepWindow] = []
    seq = 0
    try:
        with ThreadPoolExecutor(max_workers=max(batch_sizes), thread_name_prefix="calibrate") as pool:
            def one_round(b: int, p: int, o: int) -> None:
                nonlocal seq
                seq += 1
                futures = [pool.submit(backend.run_synthetic, p, o, f"calibrate-{seq}-{i}") for i in range(b)]
                for f in futures:
                    f.result()

            one_round(min(batch_sizes), min(prompt_bins), max(2, min(output_bins)))  # warm-up
            for b in batch_sizes:
                for p in prompt_bins:
                    for o in output_bins:
                        start = time.monotonic()
                        rounds = 0
                        while rounds < repeats or time.monotonic() - start < min_window_s:
                            one_round(b, p, o)
                            rounds += 1
                        end = time.monotonic()
                        energy_j = monitor.window_energy(start, end).energy_j
                        windows.append(step_window(collector.window(start, end), end - start, energy_j,
                                                   batch_size=b, prompt_tokens=p, output_tokens=o))
    finally:
        attach(None)
    fit = fit_step_costs(windows, calibration.idle_w)
    return calibration.with_step_fit(fit, windows)
