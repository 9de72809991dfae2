"""AMD GPUs: the amdsmi energy accumulator (``amdsmi_get_energy_count``), summed over a model's GPUs.

Flow: ``open_monitor("cuda:N")`` (ROCm builds of PyTorch name AMD GPUs ``cuda`` too) tries NVML first, then builds
an ``AmdSmiCounter``; only the sampler thread reads it. Vendor errors (``amdsmi.AmdSmiException``) are translated
here, once, into ``MeterUnavailable`` raised ``from`` the original. No AMD GPU is at hand in this project: the
code is tested with amdsmi mocked at its module boundary (``tests/energy/test_amd.py``), as ``zeus`` 0.16 and
AMD's docs describe it, and its figures are labelled ``amd:``, which no interval model covers (worst-case bounds).

What it reads, per GPU:

* ``amdsmi_get_energy_count(h)`` → ``{"energy_accumulator" (amdsmi ≥ 6.2.1; before: "power"), "counter_resolution"
  (µJ per count), "timestamp"}``: energy = accumulator × resolution, µJ since the driver loaded (64 bits: no wrap).
* Some GPUs report a counter that does not match their power (ROCm/amdsmi#38); like Zeus, the counter is checked
  once against ``amdsmi_get_power_info(h)`` × a short wait when the GPU draws power, and where the two differ by
  more than 10× the counter is not used: the power reading (``average_socket_power``, else ``current_socket_power``,
  W; ``"N/A"`` where unsupported) is integrated over the sampler's reads instead (``amd-power:``).
* HIP ordinals (what the model's ``cuda:N`` means) differ from amdsmi's order on some nodes: they are mapped through
  ``amdsmi_get_gpu_enumeration_info(h)["hip_id"]`` where amdsmi has it, after ``HIP_VISIBLE_DEVICES`` /
  ``CUDA_VISIBLE_DEVICES`` renumbering.
* MI250/MI250X: the driver reports both dies' power on the even index only; the counter of an odd die reads 0.
* The power ceiling of the bounds: ``amdsmi_get_power_cap_info(h)["power_cap"]`` (µW).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from greentrack.energy.counter import MeterStatus, measure_read_cost_s
from greentrack.energy.gpu_counter import GpuCounter
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)

NOT_INSTALLED = "AMD: the amdsmi package is not installed (it ships with ROCm: pip install amdsmi of your ROCm version)"
#: The counter is checked against power × this wait, once, when the counter is opened. Units: s.
CHECK_WAIT_S = 0.25


def _amdsmi() -> Any:
    """The vendor module. Importing it prints to stdout and raises OSError/KeyError/AttributeError, not only
    ImportError, where ROCm's library is missing or of another version: every failure is one clear line."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import amdsmi  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise MeterUnavailable(NOT_INSTALLED) from e
    except Exception as e:  # amdsmi raises many kinds when libamd_smi.so is missing or mismatched
        raise MeterUnavailable(f"AMD: amdsmi cannot load ROCm's library ({type(e).__name__}: {e}); is ROCm "
                               "installed (ROCM_PATH)?") from e
    return amdsmi


def _watts(value: object) -> float | None:
    """A power field of ``amdsmi_get_power_info`` (W, or ``"N/A"`` where unsupported) as W, None when absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def visible_hip_ids(ordinals: Sequence[int]) -> list[int]:
    """HIP ordinals (``cuda:N`` as a ROCm build of PyTorch sees them) → physical HIP ids, after
    ``HIP_VISIBLE_DEVICES`` (else ``CUDA_VISIBLE_DEVICES``) renumbering. Only integer entries are understood."""
    visible = os.environ.get("HIP_VISIBLE_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return list(ordinals)
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    out: list[int] = []
    for i in ordinals:
        if i < 0 or i >= len(entries) or not entries[i].isdigit():
            raise MeterUnavailable(f"AMD: cuda:{i} cannot be mapped through the visible devices {visible}")
        out.append(int(entries[i]))
    return out


class AmdSmiCounter(GpuCounter):
    """The summed energy of some AMD GPUs. Units: J. See the module docstring for what it reads.

    ``hip_ids``: physical HIP ids (default all GPUs). ``sleep``/``clock``: injectable for tests. Raises
    ``MeterUnavailable`` with one clear line when amdsmi cannot be used (not installed, no ROCm, no GPU).
    """

    method = "attributed"
    resolution_j = 1e-6  # replaced by the counter's own resolution
    #: Not measured here (no AMD GPU at hand): taken as coarse as NVML's until a run on the hardware says otherwise,
    #: which can only widen the bounds, never make them false.
    update_period_s = 0.1
    sample_period_s = 0.02
    timing_slack_s = 0.01

    def __init__(
        self,
        hip_ids: Sequence[int] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        check_wait_s: float = CHECK_WAIT_S,
    ) -> None:
        self._init_gpu_state(clock)
        self._smi = smi = _amdsmi()
        try:
            flags = getattr(getattr(smi, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
            smi.amdsmi_init(flags) if flags is not None else smi.amdsmi_init()
        except smi.AmdSmiException as e:
            raise MeterUnavailable(f"AMD: amdsmi cannot initialise (is the amdgpu driver loaded?): {e}") from e
        try:
            self.gpu_ids, self._handles = _open_handles(smi, hip_ids)
            self._has_counter, self.caveats = _check_counters(smi, self.gpu_ids, self._handles, sleep, check_wait_s)
            for c in self.caveats:
                log.warning("%s", c)
            resolutions_uj = [_counter(smi, h)[1] for h, has in zip(self._handles, self._has_counter, strict=True)
                              if has]
            self.resolution_j = max(resolutions_uj) * 1e-6 if resolutions_uj else 0.001  # power: as read, mW-ish
            self.max_power_w = _power_cap_w(smi, self._handles)
            if not all(self._has_counter):
                self.timing_slack_s = 0.1  # a power reading is itself an average over a window
            kind = "amd" if all(self._has_counter) else "amd-power"
            self.name = f"{kind}:" + "+".join(f"gpu{g}" for g in self.gpu_ids)
            self._start_power_integration(len(self._handles))
            self.read_cost_s = measure_read_cost_s(self, reads=3)
        except MeterUnavailable:
            self._shutdown()
            raise
        except smi.AmdSmiException as e:
            self._shutdown()
            raise MeterUnavailable(f"AMD: cannot open the GPU: {e}") from e

    def read_j(self) -> float:
        total_j = 0.0
        with self._lock:
            if self._closed:
                raise MeterUnavailable("AMD: the counter was closed")
            try:
                for i, h in enumerate(self._handles):
                    if self._has_counter[i]:
                        total_j += _counter(self._smi, h)[0] * 1e-6
                    else:
                        total_j += self._integrate_power(i, _power_w(self._smi, h) or 0.0)
            except self._smi.AmdSmiException as e:
                raise MeterUnavailable(f"AMD: cannot read the GPU energy: {e}") from e
        return total_j

    def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._smi.amdsmi_shut_down()


def _counter(smi: Any, handle: Any) -> tuple[float, float]:
    """(energy µJ since the driver loaded, µJ per count)."""
    data = smi.amdsmi_get_energy_count(handle)
    resolution_uj = float(data["counter_resolution"])
    count = data["energy_accumulator"] if "energy_accumulator" in data else data["power"]  # renamed in 6.2.1
    return float(count) * resolution_uj, resolution_uj


def _power_w(smi: Any, handle: Any) -> float | None:
    """The GPU's power (the average where reported, else the current one), W; None where it reports neither."""
    try:
        info = smi.amdsmi_get_power_info(handle)
    except smi.AmdSmiException:
        return None
    average = _watts(info.get("average_socket_power"))
    return average if average is not None else _watts(info.get("current_socket_power"))


def _open_handles(smi: Any, hip_ids: Sequence[int] | None) -> tuple[list[int], list[Any]]:
    """The GPUs asked for (all when None), by HIP id, and their amdsmi handles."""
    handles = list(smi.amdsmi_get_processor_handles())
    if not handles:
        raise MeterUnavailable("AMD: no AMD GPU found")
    by_hip: dict[int, Any] = {}
    try:
        for h in handles:
            by_hip[int(smi.amdsmi_get_gpu_enumeration_info(h)["hip_id"])] = h
    except (AttributeError, KeyError, TypeError, smi.AmdSmiException):
        by_hip = dict(enumerate(handles))  # amdsmi before 6.4: its own order, the same on most nodes
    ids = sorted(by_hip) if hip_ids is None else list(hip_ids)
    missing = [i for i in ids if i not in by_hip]
    if missing or not ids:
        raise MeterUnavailable(f"AMD: no GPU {missing[0] if missing else '(none asked)'} (this machine has "
                               f"{len(handles)})")
    return ids, [by_hip[i] for i in ids]


def _check_counters(
    smi: Any, ids: Sequence[int], handles: Sequence[Any], sleep: Callable[[float], None], wait_s: float
) -> tuple[list[bool], list[str]]:
    """Per GPU: is the counter usable? It is, unless it is unsupported or disagrees with power × ``wait_s`` by more
    than 10× while the GPU draws over 1 W (ROCm/amdsmi#38; Zeus's check). The caveats say which and why."""
    has_counter: list[bool] = []
    caveats: list[str] = []
    before: list[float | None] = []
    for h in handles:
        try:
            before.append(_counter(smi, h)[0])
        except smi.AmdSmiException:
            before.append(None)
    powers_w = [_power_w(smi, h) for h in handles]
    sleep(wait_s)
    for gid, h, e0, p in zip(ids, handles, before, powers_w, strict=True):
        if e0 is None:
            if p is None:
                raise MeterUnavailable(f"AMD: GPU {gid} reports neither an energy counter nor its power")
            has_counter.append(False)
            caveats.append(f"GPU {gid} has no energy counter: integrating its power reading instead")
            continue
        measured_j = (_counter(smi, h)[0] - e0) * 1e-6
        expected_j = (p or 0.0) * wait_s
        if expected_j > 1.0 * wait_s and not 0.1 < measured_j / expected_j < 10.0:
            has_counter.append(False)
            caveats.append(f"GPU {gid}'s energy counter disagrees with its power ({measured_j:.3f} J vs "
                           f"{expected_j:.3f} J over {wait_s:g} s; ROCm/amdsmi#38): integrating its power instead")
        else:
            has_counter.append(True)
    return has_counter, caveats


def _power_cap_w(smi: Any, handles: Sequence[Any]) -> float | None:
    """The GPUs' summed power cap (the bounds' power ceiling), None when any is unreadable. Units: W."""
    caps_w: list[float] = []
    for h in handles:
        try:
            caps_w.append(float(smi.amdsmi_get_power_cap_info(h)["power_cap"]) / 1e6)
        except (KeyError, TypeError, ValueError, smi.AmdSmiException):
            return None
    return sum(caps_w) or None


def probe_amd() -> MeterStatus:
    """Whether amdsmi works here, without keeping it open."""
    try:
        counter = AmdSmiCounter(check_wait_s=0.05)
    except MeterUnavailable as e:
        return MeterStatus("amd", False, str(e))
    try:
        return MeterStatus(counter.name, True, f"{len(counter.gpu_ids)} GPU(s), read cost "
                           f"{counter.read_cost_s * 1000:.2f} ms" + "".join("; " + c for c in counter.caveats))
    finally:
        counter.close()
