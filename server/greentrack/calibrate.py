"""``greentrack calibrate``: measure this machine's per-phase energy model for the current model, store it.

Runs the engine's prefill and decode phases at binned sizes (powers of two, after Fernandez et al.,
ACL 2025) under the best meter available, fits joules per prompt token, per decoded token and per second
(``energy.calibration``), and stores the fit keyed by (host, device, model). Later completions on a machine
without a counter use it as their estimate; on a machine with one, its per-phase powers weight attribution.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from greentrack.config import Settings
from greentrack.errors import GreentrackError, MeterUnavailable
from greentrack.pipeline import host_name, open_store

PROMPT_SIZES = (32, 64, 128, 256, 512)
OUTPUT_SIZES = (8, 16, 32)


def run_calibrate(settings: Settings, *, repeats: int, allow_estimate: bool) -> None:
    from greentrack.energy.calibration import run_calibration
    from greentrack.energy.monitor import open_monitor
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
