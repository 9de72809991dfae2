"""NVML mocked at the pynvml boundary: summing GPUs, the power-integration fallback, errors, MIG, CUDA ordinals."""

from __future__ import annotations

from dataclasses import dataclass

import pynvml
import pytest

from greentrack.energy.nvml import NO_DRIVER, NvmlCounter, cuda_to_nvml_ids, gpu_names, probe_nvml
from greentrack.errors import MeterUnavailable


@dataclass
class FakeGpu:
    energy_mj: int = 0
    power_mw: int = 100_000
    has_energy: bool = True
    mig: bool = False
    limit_mw: int = 700_000
    uuid: str = ""
    name: str = "NVIDIA H200"


class FakeNvml:
    """The pynvml functions NvmlCounter uses, over a list of fake GPUs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.inits = 0
        self.shutdowns = 0
        self.energy_reads = 0
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                     "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage",
                     "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetMigMode", "nvmlDeviceGetName"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        for g in self.gpus:
            if g.uuid == uuid:
                return g
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        if not h.has_energy:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self.energy_reads += 1
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return h.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return h.limit_mw

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        if h.mig:
            return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_multi_gpu_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu(1_000_000), FakeGpu(2_000_000), FakeGpu(5_000_000)]
    nv = FakeNvml(monkeypatch, gpus)
    c = NvmlCounter([0, 2])
    assert c.name == "nvml:gpu0+gpu2" and c.method == "attributed"
    assert c.read_j() == pytest.approx(6000.0)
    gpus[0].energy_mj += 71_000
    gpus[1].energy_mj += 999_000  # not ours
    gpus[2].energy_mj += 1_500
    assert c.read_j() == pytest.approx(6072.5)
    assert c.max_power_w == pytest.approx(1400.0)
    assert c.resolution_j == 0.001 and c.update_period_s == 0.1 and c.sample_period_s == 0.02
    assert c.read_cost_s >= 0.0 and nv.energy_reads > 0
    c.close()
    c.close()
    assert nv.shutdowns == 1
    with pytest.raises(MeterUnavailable, match="closed"):
        c.read_j()


def test_all_gpus_by_default_and_bad_index(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch, [FakeGpu(1000), FakeGpu(2000)])
    c = NvmlCounter()
    assert c.gpu_ids == [0, 1] and c.read_j() == pytest.approx(3.0)
    c.close()
    with pytest.raises(MeterUnavailable, match="no GPU 5"):
        NvmlCounter([5])
    FakeNvml(monkeypatch, [])
    with pytest.raises(MeterUnavailable, match="no NVIDIA GPU"):
        NvmlCounter()


def test_not_supported_integrates_power(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(has_energy=False, power_mw=150_000)
    FakeNvml(monkeypatch, [gpu])
    now = [100.0]
    c = NvmlCounter([0], clock=lambda: now[0])
    assert c.name == "nvml-power:gpu0"
    assert c.timing_slack_s == pytest.approx(0.1) and c.lag_s == 0.0
    assert any("pre-Volta" in cav for cav in c.caveats)
    base = c.read_j()
    now[0] += 1.0
    assert c.read_j() - base == pytest.approx(150.0)
    gpu.power_mw = 250_000
    now[0] += 0.5
    assert c.read_j() - base == pytest.approx(150.0 + 0.5 * (150 + 250) * 0.5)  # trapezoid
    c.close()


def test_library_missing_gives_a_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    with pytest.raises(MeterUnavailable) as info:
        NvmlCounter()
    assert str(info.value) == NO_DRIVER == "NVML library not found (no NVIDIA driver)"
    assert isinstance(info.value.__cause__, pynvml.NVMLError)
    status = probe_nvml()
    assert status.available is False and status.reason == NO_DRIVER


def test_driver_not_loaded_and_read_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_loaded() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", not_loaded)
    with pytest.raises(MeterUnavailable, match="driver is not loaded"):
        NvmlCounter()
    gpu = FakeGpu(1000)
    nv = FakeNvml(monkeypatch, [gpu])
    c = NvmlCounter()

    def lost(h: FakeGpu) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lost)
    with pytest.raises(MeterUnavailable, match="cannot read the GPU energy") as info:
        c.read_j()
    assert isinstance(info.value.__cause__, pynvml.NVMLError)
    c.close()
    assert nv.shutdowns == 1


def test_mig_caveat(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    FakeNvml(monkeypatch, [FakeGpu(1000, mig=True)])
    c = NvmlCounter()
    assert any("MIG" in cav and "whole GPU" in cav for cav in c.caveats)
    assert "MIG" in caplog.text
    described = c.describe()
    assert isinstance(described["caveats"], list) and any("whole-device" in x for x in described["caveats"])
    assert probe_nvml().available
    c.close()


def test_cuda_ordinals_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cuda_to_nvml_ids([0, 1]) == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert cuda_to_nvml_ids([1]) == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc,GPU-def")
    assert cuda_to_nvml_ids([1]) == ["GPU-def"]
    with pytest.raises(MeterUnavailable, match="not among CUDA_VISIBLE_DEVICES"):
        cuda_to_nvml_ids([2])
    FakeNvml(monkeypatch, [FakeGpu(1000, uuid="GPU-abc"), FakeGpu(7000, uuid="GPU-def")])
    c = NvmlCounter(cuda_to_nvml_ids([1]))
    assert c.read_j() == pytest.approx(7.0)
    c.close()


def test_open_monitor_picks_nvml_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from greentrack.energy.monitor import open_monitor

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = FakeNvml(monkeypatch, [FakeGpu(1000), FakeGpu(2000)])
    with open_monitor("cuda:1") as m:
        assert m.meter_name == "nvml:gpu1" and m.method == "attributed"
        info = m.describe()
        assert isinstance(info["counter"], dict) and info["counter"]["update_period_s"] == 0.1
    assert nv.shutdowns == 1
    with open_monitor("cuda", gpu_indices=[0, 1]) as m:
        assert m.meter_name == "nvml:gpu0+gpu1"


def test_gpu_names_follow_cuda_visible_devices_and_say_none_when_nvml_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a replica compares before it takes the first replica's calibration (``serve.replicas``); checked on two
    real H200s too (docs/benchmarks.md, 2026-11-27)."""
    fake = FakeNvml(monkeypatch, [FakeGpu(name="NVIDIA H200"), FakeGpu(name="NVIDIA H100 80GB HBM3")])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_names([0, 1]) == ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu_names([0]) == ["NVIDIA H100 80GB HBM3"]
    assert gpu_names([1]) is None  # not visible
    assert fake.inits == fake.shutdowns == 3  # NVML released each time

    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    assert gpu_names([0]) is None
