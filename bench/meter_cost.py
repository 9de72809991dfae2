"""What the energy meter itself costs: idle CPU per hour and CPU per completion, sampling always vs on demand.

    PYTHONPATH=server:. .venv/bin/python bench/meter_cost.py [--device cpu|cuda] [--idle-s 20] [--completions 20]

Opens the best meter for ``--device`` (NVML on the GPU machine; here the CPU-time estimate, RAPL where exposed),
once sampling always (the old behaviour) and once on demand (what the language server and the server use). For
each: the sampler thread's CPU seconds (its own CPU clock) over an idle window, scaled to an hour and to a share
of one core; then ``--completions`` simulated completions (a request arrives, 150 ms of debounce, 0.3 s of work
as prefill + decode spans, the figures attributed) and the sampler's CPU per completion, priced at the CPU-time
estimate's watts per thread against the completions' attributed energy. Writes ``meter_cost.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from greentrack.energy.estimate import CpuTimeEstimate
from greentrack.energy.monitor import EnergyMonitor, open_monitor
from greentrack.energy.types import PhaseSpan


def _cpu(monitor: EnergyMonitor) -> float:
    assert monitor.sampler is not None
    cpu = monitor.sampler.thread_cpu_s()
    assert cpu is not None, "no per-thread CPU clock here"
    return cpu


def measure(device: str, on_demand: bool, idle_s: float, completions: int) -> dict[str, Any]:
    w_per_thread = CpuTimeEstimate().w_per_thread
    with open_monitor(device, on_demand=on_demand) as monitor:
        assert monitor.sampler is not None
        time.sleep(monitor.sampler.initial_hold_s + 0.5)  # past the start-up hold
        cpu0, t0 = _cpu(monitor), time.monotonic()
        time.sleep(idle_s)
        idle_cpu_s, idle_wall_s = _cpu(monitor) - cpu0, time.monotonic() - t0
        cpu0 = _cpu(monitor)
        energy_j = 0.0
        for i in range(completions):
            monitor.expect_work()
            time.sleep(0.15)  # the debounce
            with monitor.work():
                start = time.monotonic()
                time.sleep(0.3)
                end = time.monotonic()
            spans = [PhaseSpan(f"c{i}", "prefill", start, start + 0.05),
                     PhaseSpan(f"c{i}", "decode", start + 0.05, end)]
            energy_j += sum(p.energy_j for p in monitor.phase_energy(spans, timeout_s=1.0))
            time.sleep(1.0)  # the user reads the suggestion
        active_cpu_s = _cpu(monitor) - cpu0
        return {
            "meter": monitor.meter_name, "on_demand": on_demand,
            "read_cost_ms": 1000 * monitor.sampler.counter.read_cost_s,
            "idle_core_pct": 100 * idle_cpu_s / idle_wall_s, "idle_cpu_s_per_hour": 3600 * idle_cpu_s / idle_wall_s,
            "cpu_ms_per_completion": 1000 * active_cpu_s / max(1, completions),
            "meter_j_per_completion": active_cpu_s * w_per_thread / max(1, completions),
            "completion_j": energy_j / max(1, completions),
            "meter_share_of_completion_energy_pct": 100 * active_cpu_s * w_per_thread / energy_j if energy_j else None,
            "w_per_thread": w_per_thread,
        }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--completions", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    runs = [measure(args.device, on_demand, args.idle_s, args.completions) for on_demand in (False, True)]
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": args.device,
                               "runs": runs}
    for r in results["runs"]:
        print(json.dumps(r), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "meter_cost.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
