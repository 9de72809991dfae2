"""``greentrack calibrate``: measure this machine's per-phase energy model for the current model, store it.

``run_calibration`` runs the engine's prefill and decode phases at binned sizes (powers of two, after Fernandez
et al., ACL 2025) under the best meter available, in long windows; ``energy.calibration.fit_calibration`` fits
joules per prompt token, per decoded token and per second; ``run_calibrate`` stores the fit keyed by (host,
device, model). Later completions on a machine without a counter use it as their estimate; on a machine with
one, its per-phase powers weight attribution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from greentrack.config import Settings
from greentrack.energy.calibration import Calibration, CalibrationPoint, fit_calibration
from greentrack.energy.monitor import EnergyMonitor, open_monitor
from greentrack.energy.types import PhaseSpan
from greentrack.errors import GreentrackError, MeterUnavailable
from greentrack.pipeline import host_name, open_store

PROMPT_SIZES = (32, 64, 128, 256, 512)
OUTPUT_SIZES = (8, 16, 32)


def run_calibrate(settings: Settings, *, repeats: int, allow_estimate: bool) -> None:
    from greentrack.engine.factory import open_backend

    console = Console(stderr=True)
    store = open_store(settings)
    backend = open_backend(settings)
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
                )
        data = calibration.to_dict()
        store.save_calibration(data)
    finally:
        backend.close()
        store.close()
    table = Table(title=f"Calibration stored in {settings.db_path}", title_justify="left")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in data.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)


def _window(
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
) -> Calibration:
    """Measure this machine's per-phase model with ``monitor``'s counter, over long windows.

    ``run_phases(n, m)`` runs a synthetic prompt of ``n`` tokens and decodes ``m`` tokens (the first comes
    from prefill), returning its ``PhaseSpan``s (prefill, then decode when ``m`` ≥ 2).

    Per prompt size N: a window of back-to-back ``run_phases(N, 1)``; its power (counter energy over the
    window / its duration) × the mean prefill duration is the prefill energy. Per (N, M): a window of
    ``run_phases(N, M)``; its energy less the prefills' (at the power just measured) over the rest of the
    window is the decode power. A window lasts at least ``min_window_s`` (≥ 20 counter steps on NVML) and
    ``repeats`` runs, so the counter's step (~100 ms) is ≤ 5 % of it.
    """
    t0 = time.monotonic()
    time.sleep(idle_s)
    idle = monitor.window_energy(t0, time.monotonic())
    idle_w = idle.energy_j / max(idle_s, 1e-9)

    run_phases(min(prompt_sizes), max(2, min(output_sizes)))  # warm-up (allocations, kernels)
    prefill_power_w: dict[int, float] = {}
    prefill_dur_s: dict[int, float] = {}
    prefill_work: dict[int, float] = {}
    for n in prompt_sizes:
        spans = _window(run_phases, n, 1, repeats, min_window_s)
        pre = [s for s in spans if s.kind == "prefill"]
        start, end = spans[0].start_s, spans[-1].end_s
        energy_j = monitor.window_energy(start, end).energy_j
        prefill_power_w[n] = energy_j / (end - start)
        prefill_dur_s[n] = math.fsum(s.duration_s for s in pre) / len(pre)
        prefill_work[n] = math.fsum(s.work for s in pre) / len(pre)

    points: list[CalibrationPoint] = []
    for n in prompt_sizes:
        for m in output_sizes:
            prefill_j = prefill_power_w[n] * prefill_dur_s[n]
            if m < 2:
                points.append(CalibrationPoint(prefill_work[n], 0.0, prefill_dur_s[n], 0.0, prefill_j, 0.0, m))
                continue
            spans = _window(run_phases, n, m, repeats, min_window_s)
            pre = [s for s in spans if s.kind == "prefill"]
            dec = [s for s in spans if s.kind == "decode"]
            start, end = spans[0].start_s, spans[-1].end_s
            energy_j = monitor.window_energy(start, end).energy_j
            pre_total_s = math.fsum(s.duration_s for s in pre)
            rest_s = (end - start) - pre_total_s
            decode_w = max(0.0, energy_j - prefill_power_w[n] * pre_total_s) / rest_s if rest_s > 0 else 0.0
            dec_s = math.fsum(s.duration_s for s in dec) / len(dec) if dec else 0.0
            dec_work = math.fsum(s.work for s in dec) / len(dec) if dec else 0.0
            points.append(CalibrationPoint(
                prompt_tokens=math.fsum(s.work for s in pre) / len(pre),
                decode_tokens=dec_work,
                prefill_s=math.fsum(s.duration_s for s in pre) / len(pre),
                decode_s=dec_s,
                prefill_j=prefill_power_w[n] * pre_total_s / len(pre),
                decode_j=decode_w * dec_s,
                output_tokens=m,
            ))
    return fit_calibration(points, idle_w=idle_w, source_meter=monitor.meter_name,
                           host=host, device=device, model=model)
