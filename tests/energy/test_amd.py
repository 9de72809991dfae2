"""AMD GPUs with amdsmi mocked at its module boundary (no AMD GPU here): the counter and its resolution, both APIs,
HIP ordinals, the counter check and the power fallback, errors, and ``open_monitor``'s order."""

from __future__ import annotations

import importlib.abc
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from greentrack.energy.amd import NOT_INSTALLED, AmdSmiCounter, probe_amd, visible_hip_ids
from greentrack.energy.monitor import open_monitor
from greentrack.errors import MeterUnavailable

RESOLUTION_UJ = 15.25  # a binary fraction: counts × resolution are exact


@dataclass
class FakeAmdGpu:
    hip_id: int
    power_w: int | str = 300  # "N/A" where unsupported
    current_w: int | str = 310
    count: int = 0
    counter_scale: float = 1.0  # > 1: the counter runs ahead of the power (ROCm/amdsmi#38)
    has_counter: bool = True
    old_api: bool = False
    cap_uw: int = 750_000_000
    reads: int = field(default=0)


class FakeAmdSmi:
    """The amdsmi functions AmdSmiCounter uses, over fake GPUs listed in amdsmi's own order."""

    def __init__(self, gpus: list[FakeAmdGpu], *, enumeration: bool = True, init_error: bool = False) -> None:
        self.gpus = gpus
        self.module = types.ModuleType("amdsmi")
        self.inits: list[Any] = []
        self.shutdowns = 0

        class AmdSmiException(Exception):
            pass

        class AmdSmiLibraryException(AmdSmiException):
            pass

        class AmdSmiInitFlags:
            INIT_AMD_GPUS = 2

        m: Any = self.module
        m.AmdSmiException, m.AmdSmiLibraryException, m.AmdSmiInitFlags = (AmdSmiException, AmdSmiLibraryException,
                                                                         AmdSmiInitFlags)
        self.error = AmdSmiLibraryException

        def amdsmi_init(flags: Any = None) -> None:
            if init_error:
                raise AmdSmiLibraryException("AMDSMI_STATUS_DRIVER_NOT_LOADED")
            self.inits.append(flags)

        def amdsmi_shut_down() -> None:
            self.shutdowns += 1

        def amdsmi_get_energy_count(h: FakeAmdGpu) -> dict[str, Any]:
            if not h.has_counter:
                raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")
            h.reads += 1
            return {"power" if h.old_api else "energy_accumulator": h.count, "counter_resolution": RESOLUTION_UJ,
                    "timestamp": 0}

        m.amdsmi_init, m.amdsmi_shut_down, m.amdsmi_get_energy_count = (amdsmi_init, amdsmi_shut_down,
                                                                          amdsmi_get_energy_count)
        m.amdsmi_get_processor_handles = lambda: list(self.gpus)
        m.amdsmi_get_power_info = lambda h: {"average_socket_power": h.power_w, "current_socket_power": h.current_w}
        m.amdsmi_get_power_cap_info = lambda h: {"power_cap": h.cap_uw}
        if enumeration:
            m.amdsmi_get_gpu_enumeration_info = lambda h: {"hip_id": h.hip_id}

    def sleep(self, seconds: float) -> None:
        """Time passes: every counter advances by its power × ``seconds`` (× its scale)."""
        for g in self.gpus:
            if isinstance(g.power_w, int):
                g.count += round(g.power_w * seconds * 1e6 / RESOLUTION_UJ * g.counter_scale)


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeAmdSmi) -> FakeAmdSmi:
    monkeypatch.setitem(sys.modules, "amdsmi", fake.module)
    return fake


def open_counter(fake: FakeAmdSmi, hip_ids: list[int] | None = None, **kw: Any) -> AmdSmiCounter:
    return AmdSmiCounter(hip_ids, sleep=fake.sleep, **kw)


def test_sums_the_gpus_counters_in_joules(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, count=1000), FakeAmdGpu(1, count=2000)]))
    counter = open_counter(fake)
    assert fake.inits == [2]  # INIT_AMD_GPUS
    assert counter.name == "amd:gpu0+gpu1" and counter.method == "attributed" and counter.caveats == []
    assert counter.resolution_j == pytest.approx(15.25e-6) and counter.max_power_w == 1500.0
    fake.gpus[0].count, fake.gpus[1].count = 2_000_000, 4_000_000
    assert counter.read_j() == 6_000_000 * RESOLUTION_UJ * 1e-6  # 91.5 J
    counter.close()
    counter.close()
    assert fake.shutdowns == 1
    with pytest.raises(MeterUnavailable, match="closed"):
        counter.read_j()


def test_the_api_before_6_2_1_names_the_count_power(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, old_api=True)]))
    counter = open_counter(fake)
    fake.gpus[0].count = 4096
    assert counter.read_j() == 4096 * RESOLUTION_UJ * 1e-6
    counter.close()


def test_hip_ordinals_map_to_their_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    # amdsmi lists the GPUs in bus order, which is not HIP's here
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(1), FakeAmdGpu(0)]))
    counter = open_counter(fake, [0])
    fake.gpus[0].count, fake.gpus[1].count = 100, 7
    assert counter.name == "amd:gpu0" and counter.read_j() == 7 * RESOLUTION_UJ * 1e-6
    counter.close()
    with pytest.raises(MeterUnavailable, match="no GPU 5"):
        open_counter(fake, [5])
    # without the enumeration call (amdsmi < 6.4): amdsmi's own order
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(1), FakeAmdGpu(0)], enumeration=False))
    counter = open_counter(fake, [0])
    fake.gpus[0].count, fake.gpus[1].count = 100, 7
    assert counter.read_j() == 100 * RESOLUTION_UJ * 1e-6
    counter.close()


def test_visible_devices_renumber_the_ordinals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    assert visible_hip_ids([0, 1]) == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert visible_hip_ids([0]) == [5]
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3,1")  # HIP's own variable wins
    assert visible_hip_ids([1, 0]) == [1, 3]
    with pytest.raises(MeterUnavailable, match="cuda:2"):
        visible_hip_ids([2])


def test_a_counter_that_disagrees_with_power_is_replaced_by_power(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, counter_scale=100.0), FakeAmdGpu(1)]))
    counter = open_counter(fake, clock=lambda: now[0])
    assert counter.name == "amd-power:gpu0+gpu1" and counter.timing_slack_s == 0.1
    assert len(counter.caveats) == 1 and "GPU 0's energy counter disagrees" in counter.caveats[0]
    # GPU 0: trapezoids of its average power (300 W, then 200 W); GPU 1: its counter
    base_j = counter.read_j() - fake.gpus[1].count * RESOLUTION_UJ * 1e-6
    now[0] += 2.0
    fake.gpus[0].power_w = 200
    fake.gpus[1].count += 65536
    assert counter.read_j() == pytest.approx(base_j + 0.5 * (300 + 200) * 2.0 + (fake.gpus[1].count * RESOLUTION_UJ
                                                                                  * 1e-6))
    counter.close()


def test_idle_gpus_keep_their_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    # no power drawn: nothing to check against, so the counter is trusted (it cannot be shown wrong)
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, power_w=0, current_w=0, counter_scale=100.0)]))
    counter = open_counter(fake)
    assert counter.name == "amd:gpu0"
    counter.close()


def test_no_counter_falls_back_to_the_current_power(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, has_counter=False, power_w="N/A", current_w=100)]))
    counter = open_counter(fake, clock=lambda: now[0])
    assert counter.name == "amd-power:gpu0" and "no energy counter" in counter.caveats[0]
    start_j = counter.read_j()
    now[0] += 0.5
    assert counter.read_j() - start_j == pytest.approx(50.0)
    counter.close()
    fake = install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, has_counter=False, power_w="N/A", current_w="N/A")]))
    with pytest.raises(MeterUnavailable, match="neither an energy counter nor its power"):
        open_counter(fake)
    assert fake.shutdowns == 1


def test_errors_say_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # not installed: import raises ImportError
    with pytest.raises(MeterUnavailable) as info:
        AmdSmiCounter()
    assert str(info.value) == NOT_INSTALLED
    status = probe_amd()
    assert (status.name, status.available, status.reason) == ("amd", False, NOT_INSTALLED)

    class BrokenRocm(importlib.abc.MetaPathFinder):
        """What amdsmi's import does where libamd_smi.so is missing."""

        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "amdsmi":
                raise OSError("libamd_smi.so: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "amdsmi")
    monkeypatch.setattr(sys, "meta_path", [BrokenRocm(), *sys.meta_path])
    with pytest.raises(MeterUnavailable, match=r"cannot load ROCm's library \(OSError: libamd_smi.so"):
        AmdSmiCounter()
    monkeypatch.undo()
    fake = install(monkeypatch, FakeAmdSmi([], init_error=True))
    with pytest.raises(MeterUnavailable, match=r"cannot initialise .*DRIVER_NOT_LOADED"):
        open_counter(fake)
    fake = install(monkeypatch, FakeAmdSmi([]))
    with pytest.raises(MeterUnavailable, match="no AMD GPU found"):
        open_counter(fake)
    assert fake.shutdowns == 1


def test_probe_names_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeAmdSmi([FakeAmdGpu(0, power_w=0)]))
    status = probe_amd()
    assert status.available and status.name == "amd:gpu0" and status.reason.startswith("1 GPU(s), read cost ")


def test_open_monitor_takes_amd_after_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    # no NVIDIA driver on this machine: NVML fails for real, then the (fake) AMD GPU is used
    install(monkeypatch, FakeAmdSmi([FakeAmdGpu(1, power_w=0), FakeAmdGpu(0, power_w=0)]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    with open_monitor("cuda:1", strict=True) as monitor:
        assert monitor.meter_name == "amd:gpu1" and monitor.method == "attributed"
    with open_monitor("auto") as monitor:
        assert monitor.meter_name == "amd:gpu0+gpu1"
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    with pytest.raises(MeterUnavailable) as info:
        open_monitor("cuda:0", strict=True)
    assert "NVML library not found" in str(info.value) and NOT_INSTALLED in str(info.value)
