"""The real sampler thread and ``EnergyMonitor`` against a replayed NVML-like counter (real clock), and
``open_monitor``'s choice of meter on this machine."""

from __future__ import annotations

import logging
import time

import pytest
from tests.energy.fakes import ProfileBuilder, ReplayCounter

from greentrack.energy.calibration import Calibration
from greentrack.energy.monitor import EnergyMonitor, open_monitor, probe_meters
from greentrack.energy.sampler import Sampler
from greentrack.energy.types import PhaseSpan
from greentrack.errors import MeterUnavailable


def _session() -> tuple[ReplayCounter, list[PhaseSpan]]:
    """A counter replaying: 0.3 s idle, prefill 30 ms at 600 W, decode 0.4 s at 200 W, idle; spans on the
    monotonic clock, as the engine would record them."""
    b = ProfileBuilder(0.0, idle_w=120.0)
    b.idle(0.3)
    p0, p1 = b.hold(0.03, 600.0)
    d0, d1 = b.hold(0.4, 200.0)
    counter = ReplayCounter(b.build(tail_s=30.0), seed=5)
    o = counter.origin_s
    spans = [PhaseSpan("r", "prefill", o + p0, o + p1, 1024), PhaseSpan("r", "decode", o + d0, o + d1, 16)]
    return counter, spans


def test_phase_energy_waits_for_a_step_and_is_within_uncertainty() -> None:
    counter, spans = _session()
    with EnergyMonitor(counter) as monitor:
        assert monitor.meter_name == "replay:nvml-like" and monitor.method == "attributed"
        time.sleep(max(0.0, spans[-1].end_s - time.monotonic()))
        t_call = time.monotonic()
        energies = monitor.phase_energy(spans, timeout_s=2.0)
        waited_s = time.monotonic() - t_call
        assert monitor.last_attribution is not None and monitor.last_attribution.extrapolated_j == 0.0
        assert 0.0 < waited_s < 0.5  # one counter step (~100 ms) plus a read or two
        assert [e.kind for e in energies] == ["prefill", "decode"]
        for sp, e in zip(spans, energies, strict=True):
            truth = counter.profile.energy(sp.start_s - counter.origin_s, sp.end_s - counter.origin_s)
            assert e.uncertainty_j is not None
            assert abs(e.energy_j - truth) <= e.uncertainty_j, (e, truth)
            assert e.method == "attributed" and e.meter == "replay:nvml-like"
        res = monitor.last_attribution
        assert abs(res.total_j + res.unattributed_j - res.window_j) < 1e-9 * res.window_j
        info = monitor.describe()
        assert info["meter"] == "replay:nvml-like"
        assert isinstance(info["sampler"], dict) and info["sampler"]["running"] is True
    assert monitor.sampler is not None and not monitor.sampler.running


def test_timeout_extrapolates_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    counter, spans = _session()
    with EnergyMonitor(counter) as monitor:
        time.sleep(max(0.0, spans[0].end_s - time.monotonic()))
        counter.freeze()  # the counter stops moving during the decode
        time.sleep(max(0.0, spans[-1].end_s - time.monotonic()))
        t_call = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="greentrack.energy.monitor"):
            energies = monitor.phase_energy(spans, timeout_s=0.3)
        assert 0.29 <= time.monotonic() - t_call < 1.0
        assert "uncertainty widened" in caplog.text
        res = monitor.last_attribution
        assert res is not None and res.extrapolated_j > 0.0
        decode_truth = 200.0 * 0.4
        assert energies[1].uncertainty_j is not None
        assert abs(energies[1].energy_j - decode_truth) <= energies[1].uncertainty_j


def test_no_spans_no_wait() -> None:
    counter, _ = _session()
    with EnergyMonitor(counter) as monitor:
        t = time.monotonic()
        assert monitor.phase_energy([]) == []
        assert time.monotonic() - t < 0.05


def test_sampler_keeps_a_bounded_ring_and_reports_failure() -> None:
    counter, _ = _session()
    sampler = Sampler(counter, period_s=0.005, ring_s=0.1).start()
    try:
        time.sleep(0.3)
        assert len(sampler.samples()) <= 21
        assert sampler.reads > 21
    finally:
        sampler.close()

    class Broken(ReplayCounter):
        def read_j(self) -> float:
            if self.now() > 0.05:
                raise MeterUnavailable("NVML: cannot read the GPU energy: GPU is lost")
            return super().read_j()

    broken_counter = Broken(counter.profile, read_cost_s=0.0)
    broken = Sampler(broken_counter, period_s=0.01).start()
    try:
        assert broken.wait_for_step_after(time.monotonic() + 10, time.monotonic() + 1.0) is False
        assert broken.error is not None and "GPU is lost" in broken.error
    finally:
        broken.close()


def test_calibrated_model_without_counter() -> None:
    cal = Calibration("nvml:gpu0", "cuda:0", "m", "h", j_per_prompt_token=0.005, j_per_decode_token=4.0,
                      prefill_w=400.0, decode_w=150.0, idle_w=120.0, fit_error=0.02, n_points=6,
                      prefill_fixed_j=3.0)
    monitor = EnergyMonitor(None, calibration=cal)
    assert monitor.method == "estimated" and monitor.meter_name == "calibrated:nvml:gpu0@h"
    pre, dec = monitor.phase_energy([PhaseSpan("r", "prefill", 0, 0.03, 1000), PhaseSpan("r", "decode", 0.03, 0.5, 16)])
    assert pre.energy_j == pytest.approx(3.0 + 5.0) and dec.energy_j == pytest.approx(64.0)
    assert pre.method == "estimated" and pre.uncertainty_j == pytest.approx(0.1 * 8.0)
    with pytest.raises(MeterUnavailable):
        monitor.window_energy(0.0, 1.0)
    monitor.close()
    with pytest.raises(ValueError):
        EnergyMonitor(None)


def test_open_monitor_on_this_machine_falls_back(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """No NVIDIA driver and no RAPL here (nor in the prepared empty sysfs): the estimate, unless strict."""
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    empty = str(tmp_path)
    with open_monitor("cuda:0", sysfs_root=empty) as m:
        assert m.method == "estimated" and m.meter_name.startswith("estimate:cpu-time×")
    with open_monitor("cpu", sysfs_root=empty) as m:
        assert m.meter_name.startswith("estimate:")
    with pytest.raises(MeterUnavailable, match="NVML library not found"):
        open_monitor("cuda:0", strict=True, sysfs_root=empty)
    with pytest.raises(MeterUnavailable, match="RAPL is not exposed"):
        open_monitor("cpu", strict=True, sysfs_root=empty)
    cal = Calibration("rapl:package", "cpu", "m", "h", 0.001, 0.5, 60.0, 40.0, 20.0, 0.05, 4)
    with open_monitor("cpu", calibration=cal, sysfs_root=empty) as m:
        assert m.meter_name == "calibrated:rapl:package@h" and m.counter is None
    statuses = probe_meters(sysfs_root=empty)
    assert [s.available for s in statuses] == [False, False, False, False, True]  # NVML, AMD, Apple, RAPL, estimate
    assert statuses[0].reason == "NVML library not found (no NVIDIA driver)"
    assert "RAPL is not exposed" in statuses[3].reason
