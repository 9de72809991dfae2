"""Apple Silicon: the SoC's cumulative energy (CPU, GPU, Neural Engine, DRAM) from IOReport, through the
optional ``zeus-apple-silicon`` package.

Flow: ``open_monitor("mps")`` (and ``auto``/``cpu`` on a Mac, before RAPL) builds an ``AppleSiliconCounter``; only
the sampler thread reads it. macOS has no sysfs counter: ``powermetrics`` needs root, and the energy it prints
comes from IOReport, a private framework. ``zeus-apple-silicon`` (ml-energy, the package Zeus uses for macOS) is a
small compiled binding of a header-only C++ reader of IOReport that needs no root and depends on nothing else; it
is optional (``pip install zeus-apple-silicon`` on a Mac), imported by name behind a guard, so a Linux or Windows
install never sees it. No Mac is at hand in this project: the code is tested with the module mocked at its
boundary (``tests/energy/test_apple.py``) and its figures are labelled ``apple:``, which no interval model covers.

What it reads: ``AppleEnergyMonitor().get_cumulative_energy()`` → mJ since the monitor started, per subsystem;
fields a chip lacks are None. The counter is ``cpu_total_mj + gpu_mj + ane_mj + dram_mj`` (as the Zeus docs list the
subsystems; ``gpu_sram_mj`` is not added: where a chip reports it, it is not documented as outside ``gpu_mj``).
It is the whole SoC's energy (every process), like RAPL's package + DRAM.
"""

from __future__ import annotations

import importlib
import logging
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any

from greentrack.energy.counter import Counter, MeterStatus, measure_read_cost_s
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)

#: The subsystems summed (``AppleEnergyMetrics`` fields, mJ).
SUMMED_FIELDS: tuple[str, ...] = ("cpu_total_mj", "gpu_mj", "ane_mj", "dram_mj")
NOT_INSTALLED = ("Apple: the zeus-apple-silicon package is not installed (pip install zeus-apple-silicon; it reads "
                 "IOReport without root)")


def is_apple_silicon(system: Callable[[], str] = platform.system, machine: Callable[[], str] = platform.machine
                     ) -> bool:
    """Whether this is macOS on an Arm (M-series) processor."""
    return system() == "Darwin" and machine() == "arm64"


def _module() -> Any:
    """``zeus_apple_silicon``, imported by name (it exists only on macOS; mypy never sees it)."""
    try:
        return importlib.import_module("zeus_apple_silicon")
    except ImportError as e:
        raise MeterUnavailable(NOT_INSTALLED) from e


class AppleSiliconCounter(Counter):
    """The SoC's energy (CPU + GPU + ANE + DRAM). Units: J. Raises ``MeterUnavailable`` off Apple Silicon or
    without ``zeus-apple-silicon``, with the reason."""

    method = "attributed"
    resolution_j = 0.001  # the fields are whole mJ
    #: Not measured here (no Mac at hand): IOReport's energy channels are sampled at the read, but how often the
    #: SoC updates them is undocumented; taken as coarse as NVML's, which can only widen the bounds.
    update_period_s = 0.1
    sample_period_s = 0.02
    timing_slack_s = 0.01

    def __init__(self, *, check_platform: Callable[[], bool] | None = None) -> None:
        if not (check_platform or is_apple_silicon)():
            raise MeterUnavailable(f"Apple: not Apple Silicon ({sys.platform}, {platform.machine() or '?'})")
        module = _module()
        try:
            self._monitor = module.AppleEnergyMonitor()
        except RuntimeError as e:  # what its constructor raises when IOReport cannot be subscribed to
            raise MeterUnavailable(f"Apple: cannot open IOReport's energy channels: {e}") from e
        self._lock = threading.Lock()
        self._closed = False
        first = self._monitor.get_cumulative_energy()
        self.fields = tuple(f for f in SUMMED_FIELDS if getattr(first, f, None) is not None)
        if not self.fields:
            raise MeterUnavailable("Apple: IOReport reports no CPU, GPU, ANE or DRAM energy on this chip")
        self.name = "apple:soc"
        self.caveats = [f"summed: {', '.join(self.fields)}"]
        self.read_cost_s = measure_read_cost_s(self, reads=3)

    def read_j(self) -> float:
        with self._lock:
            if self._closed:
                raise MeterUnavailable("Apple: the counter was closed")
            try:
                metrics = self._monitor.get_cumulative_energy()
            except RuntimeError as e:
                raise MeterUnavailable(f"Apple: cannot read IOReport: {e}") from e
        return sum(float(getattr(metrics, f) or 0) for f in self.fields) / 1000.0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._monitor = None

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["caveats"] = [*self.caveats, "whole-SoC energy: other processes are counted too"]
        return out


def probe_apple(check_platform: Callable[[], bool] | None = None) -> MeterStatus:
    """Whether the Apple Silicon counter works here, without keeping it open."""
    try:
        counter = AppleSiliconCounter(check_platform=check_platform)
    except MeterUnavailable as e:
        return MeterStatus("apple", False, str(e))
    try:
        return MeterStatus(counter.name, True, f"{', '.join(counter.fields)}; read cost "
                           f"{counter.read_cost_s * 1000:.2f} ms")
    finally:
        counter.close()
