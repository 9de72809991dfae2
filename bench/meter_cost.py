"""What the energy meter itself costs: idle CPU per hour and CPU per completion, sampling always vs on demand.

    PYTHONPATH=server:. .venv/bin/python bench/meter_cost.py [--device cpu|cuda] [--idle-s 20] [--completions 20]
        [--simulate-nvml]

Opens the best meter for ``--device`` (NVML on the GPU machine; here the CPU-time estimate, RAPL where exposed),
three ways: sampling always (20 ms), on demand polling every 20 ms around work, and on demand reading by phase
around each predicted counter step (``energy/read_planner.py``; what the language server and the server use). For
each: the sampler thread's CPU seconds (its own CPU clock) over an idle window, scaled to an hour and to a share
of one core; then ``--completions`` simulated completions (a request arrives, 150 ms of debounce, 0.3 s of work
as prefill + decode spans, the figures attributed) and the sampler's reads and CPU per completion (split into the
debounce, the work, and the wait for the covering step after it), priced at the CPU-time estimate's watts per
thread against the completions' attributed energy. Writes ``meter_cost.json`` to ``--out``.

``--simulate-nvml``: where no NVIDIA GPU is, a counter that behaves like the H200's NVML counter as measured
(steps every 100 ms on a fixed grid, 124 W idle, a read burning ``--read-ms`` of CPU on the reading thread), so
the schedule's CPU cost can be reproduced on any CPU. Its energy is a model's: only the cost figures mean anything.
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

from greentrack.energy.counter import Counter
from greentrack.energy.estimate import CpuTimeEstimate
from greentrack.energy.monitor import EnergyMonitor, open_monitor
from greentrack.energy.nvml import NvmlCounter
from greentrack.energy.types import PhaseSpan

MODES = {"always": (False, False), "on_demand_poll": (True, False), "on_demand_phase": (True, True)}


class SimulatedNvml(Counter):
    """NVML's energy counter as measured on the H200 (bench/gpu_validate_attribution.py, bench/gpu_nvml_probe.py,
    2026-11-26): a value that steps every 100 ms on a fixed grid, idle power, a read that costs ``read_s`` of the
    reading thread's CPU, and the driver's busy time after each step: a read that starts between ``busy_from_s`` and
    ``busy_to_s`` after a step spins until ``busy_to_s`` after it (on an H200: ~3 and ~19 ms)."""

    name = "simulated:nvml"
    update_period_s = NvmlCounter.update_period_s
    sample_period_s = NvmlCounter.sample_period_s
    resolution_j = NvmlCounter.resolution_j
    lag_s = NvmlCounter.lag_s
    timing_slack_s = NvmlCounter.timing_slack_s
    max_power_w = 700.0

    def __init__(self, read_s: float, idle_w: float = 124.0, busy_from_s: float = 0.003,
                 busy_to_s: float = 0.019) -> None:
        self.read_cost_s = read_s
        self.idle_w = idle_w
        self.busy_from_s, self.busy_to_s = busy_from_s, busy_to_s
        self.origin_s = time.monotonic()

    def read_j(self) -> float:
        t0, start_s = time.thread_time(), time.monotonic()
        steps = int((start_s - self.origin_s) / self.update_period_s)
        since_step_s = start_s - self.origin_s - steps * self.update_period_s
        if self.busy_from_s <= since_step_s < self.busy_to_s:  # the driver is busy: wait, spinning
            while time.monotonic() < start_s + self.busy_to_s - since_step_s:
                pass
        while time.thread_time() - t0 < self.read_cost_s:
            pass
        return self.idle_w * steps * self.update_period_s


def _cpu(monitor: EnergyMonitor) -> float:
    assert monitor.sampler is not None
    cpu = monitor.sampler.thread_cpu_s()
    assert cpu is not None, "no per-thread CPU clock here"
    return cpu


def _open(device: str, mode: str, simulate_read_s: float | None) -> EnergyMonitor:
    on_demand, by_phase = MODES[mode]
    if simulate_read_s is not None:
        monitor = EnergyMonitor(SimulatedNvml(simulate_read_s), on_demand=on_demand)
    else:
        monitor = open_monitor(device, on_demand=on_demand)
    assert monitor.sampler is not None
    if not by_phase:
        monitor.sampler.planner = None  # poll at the fixed period around work (the schedule before the planner)
    return monitor


def measure(device: str, mode: str, idle_s: float, completions: int,
            simulate_read_s: float | None = None) -> dict[str, Any]:
    w_per_thread = CpuTimeEstimate().w_per_thread
    with _open(device, mode, simulate_read_s) as monitor:
        sampler = monitor.sampler
        assert sampler is not None
        time.sleep(sampler.initial_hold_s + 0.5)  # past the start-up hold
        cpu0, t0 = _cpu(monitor), time.monotonic()
        time.sleep(idle_s)
        idle_cpu_s, idle_wall_s = _cpu(monitor) - cpu0, time.monotonic() - t0
        cpu0, reads0 = _cpu(monitor), sampler.reads
        energy_j = 0.0
        stage_reads = {"debounce": 0, "work": 0, "cover": 0, "after": 0}
        windows: list[tuple[float, float, float, float]] = []  # (expect, begin, end, covered) per completion
        for i in range(completions):
            r0 = sampler.reads
            expect_s = time.monotonic()
            monitor.expect_work()
            time.sleep(0.15)  # the debounce
            r1 = sampler.reads
            with monitor.work():
                start = time.monotonic()
                time.sleep(0.3)
                end = time.monotonic()
            r2 = sampler.reads
            spans = [PhaseSpan(f"c{i}", "prefill", start, start + 0.05),
                     PhaseSpan(f"c{i}", "decode", start + 0.05, end)]
            energy_j += sum(p.energy_j for p in monitor.phase_energy(spans, timeout_s=1.0))
            r3 = sampler.reads
            windows.append((expect_s, start, end, time.monotonic()))
            time.sleep(1.0)  # the user reads the suggestion
            for stage, n in zip(stage_reads, (r1 - r0, r2 - r1, r3 - r2, sampler.reads - r3), strict=True):
                stage_reads[stage] += n
        active_cpu_s = _cpu(monitor) - cpu0
        active_reads = sampler.reads - reads0
        n = max(1, completions)
        return {
            "meter": monitor.meter_name, "mode": mode, "on_demand": sampler.on_demand,
            "reads_per_completion": active_reads / n,
            "reads_per_completion_by_stage": {k: v / n for k, v in stage_reads.items()},
            "cpu_ms_per_read": 1000 * active_cpu_s / active_reads if active_reads else None,
            "planner": sampler.planner.describe() if sampler.planner is not None else None,
            "read_cost_ms": 1000 * sampler.counter.read_cost_s,
            "idle_core_pct": 100 * idle_cpu_s / idle_wall_s, "idle_cpu_s_per_hour": 3600 * idle_cpu_s / idle_wall_s,
            "cpu_ms_per_completion": 1000 * active_cpu_s / max(1, completions),
            "meter_j_per_completion": active_cpu_s * w_per_thread / max(1, completions),
            "completion_j": energy_j / max(1, completions),
            "meter_share_of_completion_energy_pct": 100 * active_cpu_s * w_per_thread / energy_j if energy_j else None,
            "w_per_thread": w_per_thread,
            # For replaying the read schedule offline: every read of the active part, and the completions' times.
            "trace": {"windows": windows,
                      "reads": [(x.t_s, x.energy_j, x.read_s) for x in sampler.samples()
                                if windows and x.t_s >= windows[0][0] - 1.0]},
        }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--completions", type=int, default=20)
    ap.add_argument("--simulate-nvml", action="store_true",
                    help="read a simulated NVML counter (H200's steps, --read-ms of CPU a read) instead of a meter")
    ap.add_argument("--read-ms", type=float, default=3.4, help="the simulated read's CPU cost (H200: 3.4 ms)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"which of {', '.join(MODES)}")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    simulate_read_s = args.read_ms / 1000.0 if args.simulate_nvml else None
    runs = [measure(args.device, mode, args.idle_s, args.completions, simulate_read_s)
            for mode in args.modes.split(",")]
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": args.device,
                               "simulated_nvml_read_ms": args.read_ms if args.simulate_nvml else None, "runs": runs}
    for r in results["runs"]:
        print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "meter_cost.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
