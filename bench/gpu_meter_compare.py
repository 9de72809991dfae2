"""Zeus 0.16 as the device layer vs raw NVML vs greentrack's own reader, on the GPU machine: what a read costs
and whether the energy agrees (issue 13, point 3; the decision is in docs/architecture.md "Meters").

Run on the device machine from the repo root, with zeus carried as wheels in ``.whl/`` (zeus 0.16.0 and amdsmi
7.0.2, ~360 KB; its other imports, numpy, pandas, scikit-learn, scipy, rich, httpx and nvidia-ml-py, are in the
image; pydantic and tyro are declared but not imported by ``zeus.device``/``zeus.monitor``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:server PYTHONUNBUFFERED=1 python3 bench/gpu_meter_compare.py --out "$OUT"

Measures, for GPU ``--gpu``:

1. **Import cost** of each layer in a fresh interpreter (``zeus.device``, ``zeus.monitor``, ``pynvml``,
   ``greentrack.energy.monitor``): wall time, peak RSS and which heavy packages it drags in.
2. **Read cost**, ``--reads`` (200) reads each after 5 warm-ups, idle and while the GPU runs matrix products in
   another process: wall and the calling thread's CPU time per read (median, p95, mean), of
   ``nvmlDeviceGetTotalEnergyConsumption``, ``nvmlDeviceGetPowerUsage``, ``nvmlDeviceGetFieldValues(POWER_INSTANT)``,
   zeus's ``get_total_energy_consumption`` / ``get_instant_power_usage`` / ``get_average_power_usage``, and
   greentrack's ``NvmlCounter.read_j``.
3. **Energy agreement** over ``--window-s`` (5 s) windows, idle and under load: the NVML counter's delta (reads
   back to back at both ends), zeus's counter delta, ``ZeusMonitor``'s window (synchronised with torch), and
   greentrack's attributed window (``EnergyMonitor.window_energy``), each against NVML's, in % and in counter steps.

Writes ``gpu_meter_compare.json`` to ``--out`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

IMPORTS = ("zeus.device", "zeus.monitor", "pynvml", "greentrack.energy.monitor")
HEAVY = ("torch", "numpy", "pandas", "sklearn", "scipy", "pydantic", "httpx", "amdsmi", "rich", "tyro", "jax")

LOAD = """
import sys, time, torch
end = time.monotonic() + float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("load started", flush=True)
while time.monotonic() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
"""


def import_cost(module: str) -> dict[str, Any]:
    """One fresh interpreter per module: import wall time, peak RSS, heavy packages pulled in (median of 3)."""
    code = (
        "import resource, sys, time\n"
        f"t = time.perf_counter(); import {module}; dt = time.perf_counter() - t\n"
        "import json\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))\n"
        "print(json.dumps({'import_s': dt, 'max_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'heavy': heavy}))\n"
    )
    runs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["import_s"])
    return dict(runs[1])


def read_cost(fn: Callable[[], object], reads: int) -> dict[str, float]:
    """Wall and thread-CPU time of one call of ``fn``, over ``reads`` calls after 5 warm-ups. Units: µs."""
    for _ in range(5):
        fn()
    wall_ns: list[int] = []
    cpu_ns: list[int] = []
    for _ in range(reads):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        fn()
        w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        wall_ns.append(w1 - w0)
        cpu_ns.append(c1 - c0)

    def stats(values: list[int], name: str) -> dict[str, float]:
        ordered = sorted(values)
        return {f"{name}_median_us": statistics.median(ordered) / 1e3,
                f"{name}_p95_us": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] / 1e3,
                f"{name}_mean_us": statistics.fmean(ordered) / 1e3}

    return {**stats(wall_ns, "wall"), **stats(cpu_ns, "cpu"), "reads": float(reads)}


@contextmanager
def gpu_load(seconds: float, gpu: int) -> Any:
    """Matrix products on the GPU in another process (so this one's reads are not slowed by its Python loop)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    proc = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()  # "load started"
    time.sleep(1.0)  # let the power settle
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def readers(gpu: int) -> tuple[dict[str, Callable[[], object]], dict[str, Any], Callable[[], None]]:
    """Every reader to time, facts about them, and a closer."""
    import pynvml

    from greentrack.energy.nvml import NvmlCounter

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
    fields = [(pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_GPU)]
    out: dict[str, Callable[[], object]] = {
        "nvml.total_energy": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "nvml.power_usage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "nvml.field_power_instant": lambda: pynvml.nvmlDeviceGetFieldValues(handle, fields),
    }
    facts: dict[str, Any] = {"gpu_name": str(pynvml.nvmlDeviceGetName(handle)),
                             "driver": str(pynvml.nvmlSystemGetDriverVersion())}
    counter = NvmlCounter([gpu])
    out["greentrack.NvmlCounter.read_j"] = counter.read_j
    try:
        import zeus  # type: ignore[import-not-found]
        from zeus.device import get_gpus  # type: ignore[import-not-found]

        gpus = get_gpus()  # NVML first, then amdsmi: zeus's order; indexed as CUDA does (no CUDA_VISIBLE_DEVICES here)
        out["zeus.total_energy"] = lambda: gpus.get_total_energy_consumption(gpu)
        out["zeus.instant_power"] = lambda: gpus.get_instant_power_usage(gpu)
        out["zeus.average_power"] = lambda: gpus.get_average_power_usage(gpu)
        facts["zeus_version"] = zeus.__version__
        facts["zeus_gpus"] = type(gpus).__name__
    except Exception as e:  # reported, not fatal: the NVML figures still come back
        facts["zeus_error"] = f"{type(e).__name__}: {e}"

    def close() -> None:
        counter.close()
        pynvml.nvmlShutdown()

    return out, facts, close


def energy_window(gpu: int, window_s: float, loaded: bool) -> dict[str, Any]:
    """One window: NVML's counter delta and each other layer's figure for the same span. Units: J."""
    import pynvml
    import torch

    from greentrack.energy.monitor import open_monitor

    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
    out: dict[str, Any] = {"loaded": loaded, "window_s": window_s}
    zeus_gpus: Any = None
    zeus_monitor: Any = None
    try:
        from zeus.device import get_gpus
        from zeus.monitor import ZeusMonitor  # type: ignore[import-not-found]

        zeus_gpus = get_gpus()
        zeus_monitor = ZeusMonitor(gpu_indices=[gpu], cpu_indices=[], sync_execution_with="torch")
    except Exception as e:
        out["zeus_error"] = f"{type(e).__name__}: {e}"
    device = torch.device(f"cuda:{gpu}")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    with open_monitor(f"cuda:{gpu}") as monitor:  # sampling always, as the bench of a window wants
        time.sleep(0.5)
        if zeus_monitor is not None:
            zeus_monitor.begin_window("w")
        z0 = zeus_gpus.get_total_energy_consumption(gpu) if zeus_gpus is not None else None
        n0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        t0 = time.monotonic()
        end = t0 + window_s
        while time.monotonic() < end:
            if loaded:
                for _ in range(20):
                    a @ a
                torch.cuda.synchronize(device)
            else:
                time.sleep(0.05)
        t1 = time.monotonic()
        n1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        z1 = zeus_gpus.get_total_energy_consumption(gpu) if zeus_gpus is not None else None
        measurement = zeus_monitor.end_window("w") if zeus_monitor is not None else None
        gt = monitor.window_energy(t0, t1, timeout_s=2.0)
    nvml_j = (n1 - n0) / 1000.0
    out.update(duration_s=t1 - t0, nvml_j=nvml_j, nvml_w=nvml_j / (t1 - t0))
    figures = {"greentrack_window_j": gt.energy_j}
    out["greentrack_uncertainty_j"] = gt.uncertainty_j
    out["greentrack_interval_j"] = [gt.interval_low_j, gt.interval_high_j, gt.interval_coverage]
    if z0 is not None and z1 is not None:
        figures["zeus_counter_j"] = (z1 - z0) / 1000.0
    if measurement is not None:
        figures["zeus_monitor_j"] = float(measurement.gpu_energy[gpu])
        out["zeus_monitor_time_s"] = measurement.time
    step_j = 71.0 if loaded else 12.0  # one counter step at full load / idle on an H100 (energy-facts.md)
    for name, value in figures.items():
        out[name] = value
        out[name.replace("_j", "_vs_nvml_pct")] = 100.0 * (value - nvml_j) / nvml_j if nvml_j else None
        out[name.replace("_j", "_vs_nvml_steps")] = (value - nvml_j) / step_j
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "gpu": args.gpu}

    result["imports"] = {m: import_cost(m) for m in IMPORTS}
    for m, r in result["imports"].items():
        print(f"import {m:28} {r}")

    fns, facts, close = readers(args.gpu)
    result.update(facts)
    print(facts)
    try:
        result["read_cost_idle"] = {name: read_cost(fn, args.reads) for name, fn in fns.items()}
        with gpu_load(args.reads * len(fns) * 0.02 + 30.0, args.gpu):
            result["read_cost_loaded"] = {name: read_cost(fn, args.reads) for name, fn in fns.items()}
        for state in ("idle", "loaded"):
            print(f"read cost, GPU {state} (µs: wall median / p95, thread CPU median / p95)")
            for name, r in result[f"read_cost_{state}"].items():
                print(f"  {name:32} {r['wall_median_us']:9.1f} / {r['wall_p95_us']:9.1f}   "
                      f"{r['cpu_median_us']:9.1f} / {r['cpu_p95_us']:9.1f}")
        result["windows"] = [energy_window(args.gpu, args.window_s, loaded) for loaded in (False, True, True)]
        for w in result["windows"]:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in w.items()}))
    finally:
        close()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_meter_compare.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
