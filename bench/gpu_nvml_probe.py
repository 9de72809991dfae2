"""Probe every NVML path to a GPU's energy: what one read costs, how often its value moves, and what it says.

Place in the flow: a GPU-machine script (issue 13 point 2). The sampler reads ``nvmlDeviceGetTotalEnergyConsumption``
(~3 ms of CPU a read on the H100/H200), which makes the meter's own cost while work runs the largest left. This
script times the other ways NVML offers to the same or related figures, idle and under a matrix-product load in
another process, so the sampler can be built on the cheapest one that is as exact:

- ``total_energy``: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ), what greentrack reads today;
- ``field_total_energy`` / ``field_energy``: ``nvmlDeviceGetFieldValues`` with ``NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION``
  (83) and ``NVML_FI_DEV_ENERGY`` (191), each value with the driver's own timestamp (µs) and latency;
- ``power_usage``, ``field_power_instant`` / ``field_power_average``: power in mW;
- ``samples_total_power``: ``nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)``, the driver's buffer of timestamped
  power samples since a given time.

Per reader: wall and thread-CPU time per call (median, p95), and from a 20 ms poll, the median gap between value
changes. For the energy fields, whether their values and change times equal ``total_energy``'s.

    python3 bench/gpu_nvml_probe.py --out "$OUT/nvml_probe.json"
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

LOAD = """
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("load started", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
"""


@contextmanager
def gpu_load(seconds: float, gpu: int) -> Iterator[None]:
    """Matrix products on the GPU in another process (this one's reads are not slowed by its Python loop)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    proc = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(1.0)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def readers(handle: Any) -> dict[str, Callable[[], tuple[float, float | None]]]:
    """name → a call returning (value, the driver's timestamp in s or None)."""
    import pynvml

    def field(fid: int, scope: int | None = None) -> Callable[[], tuple[float, float | None]]:
        ids = [(fid, scope)] if scope is not None else [fid]

        def read() -> tuple[float, float | None]:
            v = pynvml.nvmlDeviceGetFieldValues(handle, ids)[0]
            if v.nvmlReturn != pynvml.NVML_SUCCESS:
                raise pynvml.NVMLError(v.nvmlReturn)
            kind = v.valueType
            value = {0: v.value.dVal, 1: v.value.uiVal, 2: v.value.ulVal, 3: v.value.ullVal, 4: v.value.sllVal,
                     5: v.value.siVal}.get(kind, v.value.ullVal)
            return float(value), v.timestamp * 1e-6

        return read

    last_ts = [0]

    def samples() -> tuple[float, float | None]:
        try:
            _, got = pynvml.nvmlDeviceGetSamples(handle, pynvml.NVML_TOTAL_POWER_SAMPLES, last_ts[0])
        except pynvml.NVMLError as e:
            if "Not Found" in str(e) or getattr(e, "value", None) == pynvml.NVML_ERROR_NOT_FOUND:
                return float("nan"), None
            raise
        if not got:
            return float("nan"), None
        last_ts[0] = got[-1].timeStamp
        return float(len(got)), got[-1].timeStamp * 1e-6

    return {
        "total_energy": lambda: (float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)), None),
        "field_total_energy": field(pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION),
        "field_energy": field(getattr(pynvml, "NVML_FI_DEV_ENERGY", 191)),
        "power_usage": lambda: (float(pynvml.nvmlDeviceGetPowerUsage(handle)), None),
        "field_power_instant": field(pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_GPU),
        "field_power_average": field(pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_POWER_SCOPE_GPU),
        "samples_total_power": samples,
    }


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def time_reader(read: Callable[[], tuple[float, float | None]], n: int, spacing_s: float) -> dict[str, Any]:
    """n reads ``spacing_s`` apart: cost per call, and the value's change times."""
    wall, cpu, trace = [], [], []
    error = None
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            value, stamp = read()
        except Exception as e:  # reported: a reader this GPU lacks
            error = f"{type(e).__name__}: {e}"
            break
        c1, t1 = time.thread_time(), time.perf_counter()
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
        trace.append((0.5 * (t0 + t1), value, stamp))
        time.sleep(max(0.0, spacing_s - (time.perf_counter() - t0)))
    out: dict[str, Any] = {"reads": len(wall), "error": error}
    if not wall:
        return out
    out |= {"wall_ms_median": 1e3 * statistics.median(wall), "wall_ms_p95": 1e3 * pct(wall, 0.95),
            "cpu_ms_median": 1e3 * statistics.median(cpu), "cpu_ms_p95": 1e3 * pct(cpu, 0.95)}
    changes = [t for (t, v, _), (_, pv, _) in zip(trace[1:], trace[:-1], strict=True) if v != pv]
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    out["changes"] = len(changes)
    out["change_gap_ms_median"] = 1e3 * statistics.median(gaps) if gaps else None
    stamps = [s for _, _, s in trace if s is not None]
    stamp_changes = sorted(set(stamps))
    sgaps = [b - a for a, b in itertools.pairwise(stamp_changes)]
    out["driver_stamp_gap_ms_median"] = 1e3 * statistics.median(sgaps) if sgaps else None
    out["trace_head"] = trace[:60]
    return out


def side_by_side(rs: dict[str, Callable[[], tuple[float, float | None]]], n: int, spacing_s: float) -> dict[str, Any]:
    """The energy readers read back to back: do they hold the same value and move together?"""
    names = ["total_energy", "field_total_energy", "field_energy"]
    rows = []
    for _ in range(n):
        row: dict[str, Any] = {"t": time.perf_counter()}
        for name in names:
            try:
                row[name] = rs[name]()
            except Exception as e:
                row[name] = (None, f"{type(e).__name__}")
        rows.append(row)
        time.sleep(spacing_s)
    return {"rows": rows}


def sync_trace(handle: Any, seconds: float) -> dict[str, Any]:
    """Do the cheap power reads move when the energy counter steps? Power every ~1 ms, energy every ~10 ms."""
    import pynvml

    fields = [(pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_POWER_SCOPE_GPU)]
    power: list[tuple[float, float, float]] = []  # (t, power_usage, power_instant)
    energy: list[tuple[float, float, float]] = []  # (t0, t1, mJ)
    end = time.perf_counter() + seconds
    next_energy = 0.0
    while (t := time.perf_counter()) < end:
        pu = pynvml.nvmlDeviceGetPowerUsage(handle)
        pi = pynvml.nvmlDeviceGetFieldValues(handle, fields)[0].value.uiVal
        power.append((0.5 * (t + time.perf_counter()), float(pu), float(pi)))
        if t >= next_energy:
            t0 = time.perf_counter()
            e = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            energy.append((t0, time.perf_counter(), float(e)))
            next_energy = t0 + 0.01
        time.sleep(0.001)
    steps = []  # energy steps: (bracket lo, hi)
    for (_, a1, ea), (b0, _, eb) in itertools.pairwise(energy):
        if eb != ea:
            steps.append((a1, b0))
    def changes(i: int) -> list[float]:
        return [t for (t, *v), (_, *pv) in itertools.pairwise(power) if v[i] != pv[i]]
    out: dict[str, Any] = {"energy_steps": len(steps), "power_reads": len(power)}
    for i, name in enumerate(["power_usage", "power_instant"]):
        ch = changes(i)
        inside = sum(1 for lo, hi in steps if any(lo - 0.0015 <= c <= hi + 0.0015 for c in ch))
        offsets = []
        for lo, hi in steps:
            near = [c - 0.5 * (lo + hi) for c in ch if abs(c - 0.5 * (lo + hi)) < 0.05]
            if near:
                offsets.append(min(near, key=abs))
        out[name] = {"changes": len(ch), "steps_with_change_in_bracket": inside,
                     "offset_ms_median": 1e3 * statistics.median(offsets) if offsets else None,
                     "offsets_ms": [round(1e3 * o, 2) for o in offsets[:40]]}
    out["bracket_ms_median"] = 1e3 * statistics.median([hi - lo for lo, hi in steps]) if steps else None
    return out


def energy_reads(handle: Any, seconds: float, spacing_s: float) -> list[tuple[float, float, float]]:
    """``nvmlDeviceGetTotalEnergyConsumption`` read ``spacing_s`` apart (0: back to back) for ``seconds``:
    (start, end, mJ) per read, monotonic seconds."""
    import pynvml

    out: list[tuple[float, float, float]] = []
    end_s = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end_s:
        e = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        out.append((t0, time.perf_counter(), float(e)))
        if spacing_s > 0:
            time.sleep(max(0.0, t0 + spacing_s - time.perf_counter()))
    return out


def power_samples(handle: Any, seconds: float) -> list[tuple[int, float]]:
    """The driver's buffer of total-power samples over the last ``seconds``: (µs stamp, value)."""
    import pynvml

    time.sleep(seconds)
    _, got = pynvml.nvmlDeviceGetSamples(handle, pynvml.NVML_TOTAL_POWER_SAMPLES, 0)
    return [(int(s.timeStamp), float(s.sampleValue.uiVal)) for s in got]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--sync-only", action="store_true")
    ap.add_argument("--reads-only", action="store_true", help="energy reads back to back and 7/23 ms apart")
    args = ap.parse_args()
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
    rs = readers(handle)
    result: dict[str, Any] = {"gpu": str(pynvml.nvmlDeviceGetName(handle)),
                              "driver": str(pynvml.nvmlSystemGetDriverVersion()),
                              "pynvml": getattr(pynvml, "__version__", "?"), "idle": {}, "loaded": {}}
    if args.reads_only:
        for label in ("idle", "loaded"):
            ctx = gpu_load(30.0, args.gpu) if label == "loaded" else contextlib.nullcontext()
            with ctx:
                for spacing in (0.0, 0.007, 0.023):
                    result[f"reads_{label}_{int(spacing * 1000)}ms"] = energy_reads(handle, 4.0, spacing)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return
    if args.sync_only:
        result["sync_idle"] = sync_trace(handle, 5.0)
        result["samples_idle"] = power_samples(handle, 0.5)
        print("sync idle", {k: v for k, v in result["sync_idle"].items()}, flush=True)
        with gpu_load(20.0, args.gpu):
            result["sync_loaded"] = sync_trace(handle, 5.0)
            result["samples_loaded"] = power_samples(handle, 0.5)
        print("sync loaded", result["sync_loaded"], flush=True)
        print("samples loaded", result["samples_loaded"][-30:], flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        return
    for name, read in rs.items():
        result["idle"][name] = time_reader(read, args.reads, 0.02)
        print("idle", name, {k: v for k, v in result["idle"][name].items() if k != "trace_head"}, flush=True)
    result["idle_side_by_side"] = side_by_side(rs, 40, 0.02)
    with gpu_load(60.0, args.gpu):
        for name, read in rs.items():
            result["loaded"][name] = time_reader(read, args.reads, 0.02)
            print("loaded", name, {k: v for k, v in result["loaded"][name].items() if k != "trace_head"}, flush=True)
        result["loaded_side_by_side"] = side_by_side(rs, 40, 0.02)
    pynvml.nvmlShutdown()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
