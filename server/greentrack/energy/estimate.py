"""No counter: an estimate from this process's CPU time, as a cumulative "counter" the sampler can read.

Flow: ``open_monitor`` falls back to ``CpuTimeEstimate`` when neither NVML nor RAPL works (and no
calibration exists for this host, device and model: then ``monitor`` uses the calibrated per-phase model).

Model: energy = CPU seconds of this process (all its threads, ``time.process_time``) and of the processes it
started (vLLM's engine process: ``ChildCpuTime``) × watts per busy thread, where watts per thread = the CPU's
TDP × sockets / logical CPUs for models in ``TDP_TABLE``, else CodeCarbon's 4 W per thread for unknown CPUs.
The meter's name says which, e.g. ``"estimate:cpu-time×4.0W/thread"``.

Expected error: ±50 % (``relative_uncertainty``). TDP is a thermal design figure, not the draw: a busy
thread's share of a package runs from ~0.5× (AVX-light, SMT sibling busy) to ~1.5× TDP/threads (turbo, one
thread on an otherwise idle package); idle/uncore/DRAM power and other processes are not seen at all; and
on a GPU machine it misses the GPU entirely (then the figure is a floor, and a warning says so).
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from pathlib import Path

from greentrack.energy.counter import Counter, MeterStatus

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


class ChildCpuTime:
    """CPU seconds of this process's descendants, live or ended, from ``/proc`` (Linux; 0 elsewhere): a counter
    that never goes back (an ended child keeps the last figure read). ``/proc/PID/stat`` counts in clock ticks
    (10 ms), coarse beside ``time.process_time`` but enough for a ±50 % model."""

    #: How often the list of descendants is read again (a walk of every thread's ``children``: ~0.3 ms).
    RELIST_S = 1.0

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last_s: dict[int, float] = {}  # pid → CPU seconds last read
        self._pid = os.getpid()
        self._pids: list[int] = []
        self._listed_s = -math.inf

    def read_s(self) -> float:
        now = time.monotonic()
        if now - self._listed_s >= self.RELIST_S:
            self._pids = self._descendants(self._pid)
            self._listed_s = now
        for pid in self._pids:
            cpu_s = self._cpu_s(pid)
            if cpu_s is not None:
                self._last_s[pid] = max(cpu_s, self._last_s.get(pid, 0.0))
        return sum(self._last_s.values())

    def _descendants(self, pid: int) -> list[int]:
        found: list[int] = []
        todo = [pid]
        while todo:
            parent = todo.pop()
            try:
                tasks = list((self._proc / str(parent) / "task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    kids = [int(k) for k in (task / "children").read_text().split()]
                except (OSError, ValueError):
                    continue
                found.extend(kids)
                todo.extend(kids)
        return found

    def _cpu_s(self, pid: int) -> float | None:
        try:
            stat = (self._proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state is field 3, utime 14, stime 15
        try:
            return (int(fields[11]) + int(fields[12])) * _TICK_S
        except (IndexError, ValueError):
            return None

#: CodeCarbon's constant for CPUs it does not know. Units: W per logical CPU.
CODECARBON_W_PER_THREAD = 4.0

#: A small TDP table (W per package, from the vendors' spec sheets): (regex on the model name, TDP_W).
TDP_TABLE: tuple[tuple[str, float], ...] = (
    (r"Xeon.*Platinum 8480", 350.0),
    (r"Xeon.*Platinum 8380", 270.0),
    (r"Xeon.*Platinum 8358", 250.0),
    (r"Xeon.*Gold 6338", 205.0),
    (r"Xeon.*Gold 6248", 150.0),
    (r"Xeon.*Platinum 8275CL", 240.0),
    (r"EPYC 9654", 360.0),
    (r"EPYC 9554", 360.0),
    (r"EPYC 7763", 280.0),
    (r"EPYC 7742", 225.0),
    (r"EPYC 7R13", 280.0),
    (r"Core\(TM\) i9-14900K", 125.0),
    (r"Core\(TM\) i9-13900K", 125.0),
    (r"Core\(TM\) i7-13700K", 125.0),
    (r"Core\(TM\) i7-1165G7", 28.0),
    (r"Core\(TM\) i7-1260P", 28.0),
    (r"Ryzen 9 7950X", 170.0),
    (r"Ryzen 9 5950X", 105.0),
    (r"Ryzen 7 5800X", 105.0),
    (r"Ryzen 7 7840U", 28.0),
)


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), or ""."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def cpu_sockets(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Distinct ``physical id``s in ``/proc/cpuinfo`` (1 when unknown)."""
    try:
        ids = {
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text(errors="replace").splitlines()
            if line.startswith("physical id")
        }
    except OSError:
        return 1
    return max(1, len(ids))


def watts_per_thread(
    model_name: str, logical_cpus: int, sockets: int = 1
) -> tuple[float, str]:
    """(W per busy logical CPU, how it was found). Units: W."""
    for pattern, tdp_w in TDP_TABLE:
        if re.search(pattern, model_name):
            return tdp_w * sockets / max(1, logical_cpus), f"TDP {tdp_w:g} W×{sockets}/{logical_cpus} threads"
    return CODECARBON_W_PER_THREAD, "CodeCarbon's constant for unknown CPUs"


class CpuTimeEstimate(Counter):
    """A modelled counter: this process's CPU seconds × W per thread. Units: J. Method ``estimated``.

    Cheap to read (~1 µs) and computed at the read (``update_period_s`` 0). ``max_power_w`` is the model's
    ceiling: every logical CPU busy.
    """

    method = "estimated"
    resolution_j = 0.0
    update_period_s = 0.0
    sample_period_s = 0.01
    timing_slack_s = 0.0
    relative_uncertainty = 0.5

    def __init__(
        self,
        w_per_thread: float | None = None,
        *,
        model_name: str | None = None,
        logical_cpus: int | None = None,
        sockets: int | None = None,
    ) -> None:
        cpus = logical_cpus or os.cpu_count() or 1
        if w_per_thread is None:
            w_per_thread, how = watts_per_thread(
                model_name if model_name is not None else cpu_model_name(),
                cpus,
                sockets if sockets is not None else cpu_sockets(),
            )
        else:
            how = "given"
        self.w_per_thread = w_per_thread
        self.how = how
        self.name = f"estimate:cpu-time×{w_per_thread:.1f}W/thread"
        self.max_power_w = w_per_thread * cpus
        self.read_cost_s = 2e-6
        self._children = ChildCpuTime()

    def read_j(self) -> float:
        return (time.process_time() + self._children.read_s()) * self.w_per_thread

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["w_per_thread_source"] = self.how
        out["caveats"] = [
            "a model, not a measurement: ±50 %",
            "sees only the CPU time of this process and those it started: no GPU, idle, DRAM or other processes",
        ]
        return out


def probe_estimate() -> MeterStatus:
    counter = CpuTimeEstimate()
    return MeterStatus(counter.name, True, f"always available ({counter.how}); ±50 %")
