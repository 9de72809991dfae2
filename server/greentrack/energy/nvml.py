"""NVIDIA GPUs: the NVML energy counter (``nvmlDeviceGetTotalEnergyConsumption``), summed over a model's GPUs.

Flow: ``open_monitor("cuda:N")`` builds an ``NvmlCounter``; only the sampler thread reads it. Vendor errors
(``pynvml.NVMLError*``) are translated here, once, into ``MeterUnavailable`` raised ``from`` the original.

Caveats (measured on an H100, driver 580, 2026-11-22; see ``docs/measurement.md``):

* The counter (mJ since the driver loaded) moves only every ~100 ms (median 99.97 ms, min 72 ms), by
  ~71 J a step at full load: a 20 ms prefill is below its resolution in time. Per-phase figures are
  therefore *attributed* by ``attribution.attribute``, never read around a phase.
* One read costs ~3.9 ms of a CPU thread: never read it on a completion's critical path. The sampler polls
  every 20 ms (~20 % of one core) to time each step within ~12 ms.
* It is the whole device's energy, not this process's: other processes on the GPU are counted too.
* Under MIG the counter is the whole GPU's (all instances), and a warning says so.
* GPUs older than Volta have no energy counter (``NVMLError_NotSupported``): the counter then integrates
  ``nvmlDeviceGetPowerUsage`` (mW) over the sampler's reads (trapezoids), with a 100 ms timing slack because
  that reading is itself an average over a window (a 1 s average on Ampere and later, per NVML's docs;
  "Part-time Power Measurements", arXiv 2312.02741, shows it samples only ~25 % of the time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from greentrack.energy.counter import MeterStatus, measure_read_cost_s
from greentrack.energy.gpu_counter import GpuCounter
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)

#: What ``nvmlInit`` failing for lack of a driver says, verbatim in ``greentrack doctor``.
NO_DRIVER = "NVML library not found (no NVIDIA driver)"


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError as e:  # nvidia-ml-py is a dependency, but be clear if it was removed
        raise MeterUnavailable("NVML: the nvidia-ml-py package is not installed (pip install nvidia-ml-py)") from e
    return pynvml


def _translate(pynvml: Any, e: Exception, doing: str) -> MeterUnavailable:
    """One clear line for an NVML error."""
    if isinstance(e, pynvml.NVMLError_LibraryNotFound):
        return MeterUnavailable(NO_DRIVER)
    if isinstance(e, pynvml.NVMLError_DriverNotLoaded):
        return MeterUnavailable("NVML: the NVIDIA driver is not loaded")
    if isinstance(e, pynvml.NVMLError_NoPermission):
        return MeterUnavailable(f"NVML: no permission to {doing}")
    return MeterUnavailable(f"NVML: cannot {doing}: {e}")


def cuda_to_nvml_ids(cuda_indices: Sequence[int]) -> list[int | str]:
    """Map CUDA ordinals (``cuda:N`` as the model sees them) to NVML indices or UUIDs.

    NVML ignores ``CUDA_VISIBLE_DEVICES``; CUDA renumbers the visible GPUs from 0. Entries of the variable
    that are integers map to NVML indices; others (``GPU-…``/``MIG-…`` UUIDs) are looked up by UUID.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return list(cuda_indices)
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    out: list[int | str] = []
    for i in cuda_indices:
        if i < 0 or i >= len(entries):
            raise MeterUnavailable(f"NVML: cuda:{i} is not among CUDA_VISIBLE_DEVICES={visible}")
        entry = entries[i]
        out.append(int(entry) if entry.isdigit() else entry)
    return out


class NvmlCounter(GpuCounter):
    """The summed energy of some GPUs. Units: J. See the module docstring for the caveats.

    ``gpu_ids``: NVML indices (or UUIDs), default all GPUs. Raises ``MeterUnavailable`` with one clear line
    when NVML cannot be used (no driver, no such GPU).
    """

    method = "attributed"
    resolution_j = 0.001  # the counter is in mJ
    update_period_s = 0.1  # H100 measured: median 99.8 ms between steps (60-145 ms)
    sample_period_s = 0.02
    #: A step shows the energy up to ~25 ms before it (H100, best fit to a 1 s load's edges, 2026-11-22);
    #: ±10 ms of slack covers that fit's spread and other GPUs' differences.
    lag_s = 0.025
    timing_slack_s = 0.01

    def __init__(
        self, gpu_ids: Sequence[int | str] | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._init_gpu_state(clock)
        self._nvml = pynvml = _pynvml()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise _translate(pynvml, e, "initialise") from e
        try:
            ids, self._handles = _open_handles(pynvml, gpu_ids)
            self.gpu_ids = ids
            self._has_counter, self.caveats = _probe_devices(pynvml, ids, self._handles)
            for c in self.caveats:
                log.warning("%s", c)
            self.max_power_w = _power_limit_w(pynvml, self._handles)
            if not all(self._has_counter):
                self.timing_slack_s = 0.1
                self.lag_s = 0.0
            kind = "nvml" if all(self._has_counter) else "nvml-power"
            self.name = f"{kind}:" + "+".join(f"gpu{g}" for g in ids)
            self._start_power_integration(len(ids))
            self.read_cost_s = measure_read_cost_s(self, reads=3)
        except MeterUnavailable:
            self._shutdown()
            raise
        except pynvml.NVMLError as e:
            self._shutdown()
            raise _translate(pynvml, e, "open the GPU") from e

    def read_j(self) -> float:
        pynvml = self._nvml
        total_j = 0.0
        with self._lock:
            if self._closed:
                raise MeterUnavailable("NVML: the counter was closed")
            try:
                for i, h in enumerate(self._handles):
                    if self._has_counter[i]:
                        total_j += float(pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) / 1000.0
                    else:
                        # No counter (pre-Volta): integrate nvmlDeviceGetPowerUsage (mW).
                        total_j += self._integrate_power(i, float(pynvml.nvmlDeviceGetPowerUsage(h)) / 1000.0)
            except pynvml.NVMLError as e:
                raise _translate(pynvml, e, "read the GPU energy") from e
        return total_j

    def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def probe_nvml() -> MeterStatus:
    """Whether NVML works here, without keeping it open."""
    try:
        counter = NvmlCounter()
    except MeterUnavailable as e:
        return MeterStatus("nvml", False, str(e))
    try:
        return MeterStatus(
            counter.name, True,
            f"{len(counter.gpu_ids)} GPU(s), read cost {counter.read_cost_s * 1000:.1f} ms"
            + ("; " + "; ".join(counter.caveats) if counter.caveats else ""),
        )
    finally:
        counter.close()


def gpu_names(cuda_indices: Sequence[int]) -> list[str] | None:
    """The product names of these CUDA ordinals' GPUs (``NVIDIA H200``), through ``CUDA_VISIBLE_DEVICES``; None where
    NVML cannot say."""
    try:
        pynvml = _pynvml()
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        _, handles = _open_handles(pynvml, cuda_to_nvml_ids(cuda_indices))
        names = [pynvml.nvmlDeviceGetName(h) for h in handles]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):  # best effort
            pynvml.nvmlShutdown()


def _open_handles(pynvml: Any, gpu_ids: Sequence[int | str] | None) -> tuple[list[int | str], list[Any]]:
    """The GPUs asked for (all when None), by index or UUID, and their NVML handles."""
    count = int(pynvml.nvmlDeviceGetCount())
    if count == 0:
        raise MeterUnavailable("NVML: no NVIDIA GPU found")
    ids: list[int | str] = list(range(count)) if gpu_ids is None else list(gpu_ids)
    if not ids:
        raise MeterUnavailable("NVML: no GPU index given")
    handles: list[Any] = []
    for gid in ids:
        if isinstance(gid, int):
            if not 0 <= gid < count:
                raise MeterUnavailable(f"NVML: no GPU {gid} (this machine has {count})")
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(gid))
        else:
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(gid))
    return ids, handles


def _probe_devices(pynvml: Any, ids: Sequence[int | str], handles: Sequence[Any]) -> tuple[list[bool], list[str]]:
    """Per GPU: does it have the energy counter (else its power is integrated)? And the caveats (MIG, no counter)."""
    has_counter: list[bool] = []
    caveats: list[str] = []
    for gid, h in zip(ids, handles, strict=True):
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            has_counter.append(True)
        except pynvml.NVMLError_NotSupported:
            has_counter.append(False)
            caveats.append(f"GPU {gid} has no energy counter (pre-Volta): integrating its power reading instead")
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(h)
            if current == pynvml.NVML_DEVICE_MIG_ENABLE:
                caveats.append(f"GPU {gid} is in MIG mode: its counter is the whole GPU's energy, all instances")
        except pynvml.NVMLError:
            pass  # MIG unsupported: nothing to say
    return has_counter, caveats


def _power_limit_w(pynvml: Any, handles: Sequence[Any]) -> float | None:
    """The GPUs' summed enforced power limit (the bounds' power ceiling), None when any is unreadable. Units: W."""
    limits_w: list[float] = []
    for h in handles:
        try:
            limits_w.append(float(pynvml.nvmlDeviceGetEnforcedPowerLimit(h)) / 1000.0)
        except pynvml.NVMLError:
            return None
    return sum(limits_w) if limits_w else None
