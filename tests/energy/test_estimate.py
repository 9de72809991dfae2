"""The CPU-time estimate: W per thread from the TDP table or CodeCarbon's constant, and its figures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from greentrack.energy.estimate import (
    CODECARBON_W_PER_THREAD,
    CpuTimeEstimate,
    cpu_model_name,
    cpu_sockets,
    watts_per_thread,
)
from greentrack.energy.monitor import EnergyMonitor
from greentrack.energy.types import PhaseSpan

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 1
"""


def test_cpuinfo_parsing(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO)
    assert cpu_model_name(f) == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert cpu_sockets(f) == 2
    assert cpu_sockets(tmp_path / "missing") == 1


def test_tdp_table_and_codecarbon_fallback() -> None:
    w, how = watts_per_thread("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", 128, 2)
    assert w == pytest.approx(205.0 * 2 / 128) and "TDP 205" in how
    w, how = watts_per_thread("AMD EPYC 7763 64-Core Processor", 128, 1)
    assert w == pytest.approx(280.0 / 128)
    w, how = watts_per_thread("Intel(R) Xeon(R) Processor", 2, 1)  # this VM: unknown model
    assert w == CODECARBON_W_PER_THREAD == 4.0 and "CodeCarbon" in how


def test_meter_name_states_the_model() -> None:
    c = CpuTimeEstimate(model_name="Some Unknown CPU", logical_cpus=8, sockets=1)
    assert c.name == "estimate:cpu-time×4.0W/thread"
    assert c.method == "estimated" and c.relative_uncertainty == 0.5
    assert c.max_power_w == pytest.approx(32.0)
    c = CpuTimeEstimate(model_name="AMD Ryzen 9 7950X 16-Core Processor", logical_cpus=32, sockets=1)
    assert c.name == "estimate:cpu-time×5.3W/thread"


def test_counter_follows_cpu_time() -> None:
    c = CpuTimeEstimate(2.5)
    p0, e0 = time.process_time(), c.read_j()
    x = 0
    while time.process_time() - p0 < 0.05:
        x += 1
    p1, e1 = time.process_time(), c.read_j()
    assert e1 - e0 == pytest.approx(2.5 * (p1 - p0), rel=0.05, abs=1e-4)


def test_estimated_phase_figures() -> None:
    counter = CpuTimeEstimate(4.0, logical_cpus=2)
    with EnergyMonitor(counter) as m:
        assert m.method == "estimated"
        t0 = time.monotonic()
        x = 0
        while time.monotonic() - t0 < 0.1:  # one busy thread
            x += 1
        t1 = time.monotonic()
        time.sleep(0.05)  # idle: no CPU time, no energy in this model
        t2 = time.monotonic()
        busy, idle = m.phase_energy([PhaseSpan("r", "prefill", t0, t1, 10), PhaseSpan("r", "decode", t1, t2, 1)])
    assert busy.method == "estimated" and busy.meter == counter.name
    # Up to 4 W × 0.1 s (less when the machine is shared: CPU time, not wall time), never much more.
    assert 0.005 < busy.energy_j < 0.5
    assert idle.energy_j < busy.energy_j
    assert busy.uncertainty_j is not None and busy.uncertainty_j >= 0.5 * busy.energy_j


def test_the_estimate_counts_the_cpu_time_of_a_process_it_started() -> None:
    """vLLM's engine process (``serve --engine-process``) does the model's work: its CPU seconds count, and stay
    counted once it has ended (the counter never goes back)."""
    import subprocess
    import sys
    import time

    from greentrack.energy.estimate import ChildCpuTime

    children = ChildCpuTime()
    assert children.read_s() == 0.0
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.6: pass\n"])
    try:
        children._listed_s = float("-inf")  # list the new child now rather than within RELIST_S
        deadline = time.monotonic() + 30
        seen = 0.0
        while seen < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = children.read_s()
        assert seen >= 0.3
    finally:
        busy.wait(30)
    assert children.read_s() >= seen  # reaped: its last figure stays
    before_s = time.process_time()
    assert CpuTimeEstimate(w_per_thread=1.0).read_j() >= before_s
