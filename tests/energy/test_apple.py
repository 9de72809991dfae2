"""Apple Silicon with ``zeus_apple_silicon`` mocked at its module boundary (no Mac here): the summed subsystems,
the platform check, errors, and ``open_monitor``'s order."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from greentrack.energy import apple, monitor
from greentrack.energy.apple import NOT_INSTALLED, AppleSiliconCounter, is_apple_silicon, probe_apple
from greentrack.energy.monitor import open_monitor
from greentrack.errors import MeterUnavailable

M2 = {"cpu_total_mj": 1000, "gpu_mj": 500, "ane_mj": 0, "dram_mj": 250, "gpu_sram_mj": 40,
      "efficiency_cores_mj": [1, 2], "performance_cores_mj": [3, 4]}


class FakeAppleSilicon:
    """``zeus_apple_silicon``: ``AppleEnergyMonitor().get_cumulative_energy()`` → metrics in mJ (None: absent)."""

    def __init__(self, metrics: dict[str, Any], *, init_error: str | None = None) -> None:
        self.metrics = dict(metrics)
        module: Any = types.ModuleType("zeus_apple_silicon")
        self.module = module
        self.reads = 0
        fake = self

        class AppleEnergyMonitor:
            def __init__(self) -> None:
                if init_error:
                    raise RuntimeError(init_error)

            def get_cumulative_energy(self) -> types.SimpleNamespace:
                fake.reads += 1
                return types.SimpleNamespace(**{f: fake.metrics.get(f) for f in (
                    "cpu_total_mj", "gpu_mj", "ane_mj", "dram_mj", "gpu_sram_mj", "efficiency_cores_mj",
                    "performance_cores_mj")})

        module.AppleEnergyMonitor = AppleEnergyMonitor


def on_a_mac(monkeypatch: pytest.MonkeyPatch, fake: FakeAppleSilicon | None) -> None:
    monkeypatch.setitem(sys.modules, "zeus_apple_silicon", None if fake is None else fake.module)
    monkeypatch.setattr(apple, "is_apple_silicon", lambda: True)
    monkeypatch.setattr(monitor, "is_apple_silicon", lambda: True)


def test_sums_cpu_gpu_ane_and_dram_in_joules(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAppleSilicon(M2)
    on_a_mac(monkeypatch, fake)
    counter = AppleSiliconCounter()
    assert counter.name == "apple:soc" and counter.fields == ("cpu_total_mj", "gpu_mj", "ane_mj", "dram_mj")
    assert counter.read_j() == 1.75  # gpu_sram_mj and the per-core lists are not added
    fake.metrics.update(cpu_total_mj=3000, gpu_mj=1500)
    assert counter.read_j() == 4.75
    assert "summed: cpu_total_mj, gpu_mj, ane_mj, dram_mj" in counter.describe()["caveats"]  # type: ignore[operator]
    counter.close()
    with pytest.raises(MeterUnavailable, match="closed"):
        counter.read_j()


def test_fields_a_chip_lacks_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_mac(monkeypatch, FakeAppleSilicon({"cpu_total_mj": 2000, "gpu_mj": 1000}))
    counter = AppleSiliconCounter()
    assert counter.fields == ("cpu_total_mj", "gpu_mj") and counter.read_j() == 3.0
    counter.close()
    on_a_mac(monkeypatch, FakeAppleSilicon({"gpu_sram_mj": 5}))
    with pytest.raises(MeterUnavailable, match="no CPU, GPU, ANE or DRAM energy"):
        AppleSiliconCounter()


def test_errors_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_mac(monkeypatch, None)  # not installed
    with pytest.raises(MeterUnavailable) as info:
        AppleSiliconCounter()
    assert str(info.value) == NOT_INSTALLED
    on_a_mac(monkeypatch, FakeAppleSilicon(M2, init_error="IOReport subscription failed"))
    with pytest.raises(MeterUnavailable, match="cannot open IOReport's energy channels: IOReport subscription"):
        AppleSiliconCounter()


def test_not_apple_silicon_here() -> None:
    assert not is_apple_silicon()  # this Linux machine
    assert is_apple_silicon(system=lambda: "Darwin", machine=lambda: "arm64")
    assert not is_apple_silicon(system=lambda: "Darwin", machine=lambda: "x86_64")  # an Intel Mac: no IOReport SoC
    status = probe_apple()
    assert (status.name, status.available) == ("apple", False) and status.reason.startswith("Apple: not Apple Silicon")
    with pytest.raises(MeterUnavailable, match="not Apple Silicon"):
        AppleSiliconCounter(check_platform=lambda: False)


def test_probe_and_open_monitor_on_a_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_mac(monkeypatch, FakeAppleSilicon(M2))
    status = probe_apple()
    assert status.available and status.name == "apple:soc" and status.reason.startswith("cpu_total_mj, gpu_mj")
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # no AMD GPU either
    for device in ("mps", "cpu", "auto"):
        with open_monitor(device, strict=True) as m:
            assert m.meter_name == "apple:soc" and m.method == "attributed"


def test_open_monitor_mps_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MeterUnavailable, match="no energy counter for mps: Apple: not Apple Silicon"):
        open_monitor("mps", strict=True)
    with open_monitor("mps") as m:  # not strict: the CPU-time estimate
        assert m.meter_name.startswith("estimate:")
