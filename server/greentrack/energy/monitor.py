"""``EnergyMonitor``: what the pipeline uses. A counter, its background sampler, and the attributor.

Flow: ``open_monitor(device)`` picks the best meter (NVML, then AMD's amdsmi for ``cuda``; Apple Silicon's
IOReport for ``mps``; Apple Silicon, then RAPL for ``cpu``; all in that order for ``auto``; else the calibrated
model or the CPU-time estimate; Zeus's order) and starts its sampler. The engine records ``PhaseSpan``s
(timestamps only: no counter read on the critical path); after the completion, off the critical path, the
pipeline calls ``phase_energy(spans)``, which waits for the counter to step past the phases and attributes
the counter's energy to them (``attribution.attribute``). ``probe_meters`` tells ``greentrack doctor`` which
meters work here and why not.

On demand (``on_demand=True``: the language server, ``greentrack serve``, ``greentrack complete`` through
``pipeline.open_pipeline``), the sampler reads only around work: the language server calls ``expect_work`` when a
request arrives (before its debounce), the pipeline ``begin_work``/``end_work`` around the engine, and
``phase_energy`` asks the sampler to cover the phases; idle, one heartbeat read every 5 s. ``meter_cost`` says
what the meter itself costs (``greentrack doctor``, ``bench/meter_cost.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from greentrack.energy.amd import AmdSmiCounter, probe_amd, visible_hip_ids
from greentrack.energy.apple import AppleSiliconCounter, is_apple_silicon, probe_apple
from greentrack.energy.attribution import Attribution, MeterInfo, PhaseWeights, attribute
from greentrack.energy.calibration import Calibration, calibrated_phase_energy
from greentrack.energy.counter import Counter, MeterStatus
from greentrack.energy.estimate import CpuTimeEstimate, probe_estimate
from greentrack.energy.interval import TIMED_BY_ENGINE, with_intervals
from greentrack.energy.nvml import NvmlCounter, cuda_to_nvml_ids, probe_nvml
from greentrack.energy.rapl import DEFAULT_SYSFS_ROOT, RaplCounter, probe_rapl
from greentrack.energy.sampler import Sampler
from greentrack.energy.types import Method, PhaseEnergy, PhaseSpan
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)


class EnergyMonitor:
    """Per-phase energy from one meter. Thread-safe; one per process and device.

    With a ``counter``: a sampler reads it in the background and ``phase_energy`` attributes (method
    ``attributed``, or ``estimated`` for the CPU-time estimate), weighted by ``calibration``'s per-kind powers
    where one is given. Without a counter: ``calibration``'s model estimates each phase from its tokens.
    ``last_attribution`` keeps the whole result of the last attribution (unattributed energy, bounds, window).
    """

    def __init__(
        self,
        counter: Counter | None,
        *,
        calibration: Calibration | None = None,
        period_s: float | None = None,
        ring_s: float = 120.0,
        on_demand: bool = False,
        idle_period_s: float = 5.0,
    ) -> None:
        if counter is None and calibration is None:
            raise ValueError("an EnergyMonitor needs a counter or a calibration")
        self.counter = counter
        self.calibration = calibration
        self.last_attribution: Attribution | None = None
        self.sampler: Sampler | None = None
        if counter is not None:
            self.meter_name: str = counter.name
            self.method: Method = counter.method
            self.sampler = Sampler(counter, period_s=period_s, ring_s=ring_s, on_demand=on_demand,
                                   idle_period_s=idle_period_s).start()
        else:
            assert calibration is not None
            self.meter_name = calibration.meter_name
            self.method = "estimated"

    # -- the pipeline's API -------------------------------------------------------------------------------

    def expect_work(self, hold_s: float | None = None) -> None:
        """A request arrived (its debounce runs): start sampling now, so a counter step precedes the prefill."""
        if self.sampler is not None:
            self.sampler.expect_work(hold_s)

    def begin_work(self) -> None:
        """The engine starts a request: sample until ``end_work`` and the counter has covered it."""
        if self.sampler is not None:
            self.sampler.begin_work()

    def end_work(self, last_end_s: float | None = None) -> None:
        """The engine finished a request (its last phase ended at ``last_end_s``, default now)."""
        if self.sampler is not None:
            self.sampler.end_work(last_end_s)

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """``begin_work`` … ``end_work`` around a block."""
        self.begin_work()
        try:
            yield
        finally:
            self.end_work()

    def phase_energy(self, spans: Sequence[PhaseSpan], *, timeout_s: float = 0.5,
                     timed_by: str = TIMED_BY_ENGINE) -> list[PhaseEnergy]:
        """One ``PhaseEnergy`` per span, same order, with its interval (``energy.interval``; ``timed_by``: how the
        engine timed the spans, which decides whether the error model applies). Blocks until the counter has stepped
        after the last span's end (typically ≤ 120 ms on NVML), or ``timeout_s``; past it, the tail is extrapolated
        with a wider uncertainty and a warning is logged. Call it off the critical path.
        """
        if not spans:
            return []
        calibrated = self.calibration is not None
        if self.counter is None:
            assert self.calibration is not None
            return with_intervals(calibrated_phase_energy(spans, self.calibration), spans, calibrated=calibrated,
                                  timed_by=timed_by)
        weights = self.calibration.weights if self.calibration is not None else None
        result = self._attribute(spans, timeout_s=timeout_s, weights=weights)
        return with_intervals(result.phases, spans, calibrated=calibrated, timed_by=timed_by)

    def window_energy(self, start_s: float, end_s: float, *, timeout_s: float = 1.0) -> PhaseEnergy:
        """The energy of a whole time window (calibration, benchmarks). Units: J, monotonic s."""
        if self.counter is None:
            raise MeterUnavailable(f"no counter to measure a window with (meter: {self.meter_name})")
        span = PhaseSpan("window", "prefill", start_s, end_s, 1.0)
        return self._attribute([span], timeout_s=timeout_s, weights=None).phases[0]

    def _attribute(
        self, spans: Sequence[PhaseSpan], *, timeout_s: float, weights: PhaseWeights | None
    ) -> Attribution:
        counter, sampler = self.counter, self.sampler
        assert counter is not None and sampler is not None
        first_s = min(s.start_s for s in spans)
        last_s = max(s.end_s for s in spans)
        came = sampler.wait_for_step_after(last_s, time.monotonic() + timeout_s)
        samples = sampler.samples_between(first_s - self.lookback_s, math.inf)
        meter = self.meter_info()
        result = attribute(
            samples, spans, meter, update_period_s=counter.update_period_s,
            timing_slack_s=counter.timing_slack_s, lag_s=counter.lag_s, weights=weights,
        )
        if not came:
            why = sampler.error or f"no counter step within {timeout_s:.2f} s after the phases"
            log.warning("%s: %s; %s, uncertainty widened", counter.name, why,
                        result.notes[-1] if result.notes else "extrapolated")
        elif samples and samples[0].t_s > first_s:
            log.warning("%s: phases started before the sampler's oldest sample; extrapolated", counter.name)
        self.last_attribution = result
        return result

    # -- for the step ledger (``step_ledger``), which reads the same samples -------------------------------------

    def meter_info(self) -> MeterInfo:
        """The counter as the attributors see it (resolution, power ceiling, method). Needs a counter."""
        counter = self.counter
        if counter is None:
            raise MeterUnavailable(f"no counter (meter: {self.meter_name})")
        return MeterInfo(
            name=counter.name, method=counter.method, resolution_j=counter.resolution_j,
            max_power_w=counter.max_power_w, min_power_w=0.0,
            relative_uncertainty=counter.relative_uncertainty,
        )

    @property
    def lookback_s(self) -> float:
        """How far before a time the samples must reach for a knot surely before it. Units: s."""
        counter, sampler = self.counter, self.sampler
        if counter is None or sampler is None:
            return 0.0
        return 3.0 * max(counter.update_period_s, sampler.period_s) + counter.timing_slack_s + counter.lag_s

    def describe(self) -> dict[str, object]:
        """What ``greentrack doctor`` shows about the active meter."""
        out: dict[str, object] = {"meter": self.meter_name, "method": self.method}
        if self.counter is not None:
            out["counter"] = self.counter.describe()
        if self.sampler is not None:
            out["sampler"] = self.sampler.describe()
        if self.calibration is not None:
            cal = self.calibration.to_dict()
            cal.pop("points", None)
            out["calibration"] = cal
        out["cost"] = self.meter_cost()
        return out

    def meter_cost(self) -> dict[str, object]:
        """What the meter itself costs: the sampler thread's CPU time, its share of one core since it started,
        and how it samples (on demand or always). Units: s, %."""
        sampler = self.sampler
        if sampler is None:
            return {"sampling": "none (calibrated model: no counter reads)", "thread_cpu_s": 0.0, "core_pct": 0.0}
        cpu_s = sampler.thread_cpu_s()
        age_s = time.monotonic() - sampler.started_s if sampler.started_s else 0.0
        counter = sampler.counter
        around = ("reads around each predicted counter step" if sampler.planner is not None
                  else f"every {sampler.period_s * 1000:.0f} ms")
        mode = (f"on demand: {around} around work, one read every "
                f"{sampler.idle_period_s:g} s while idle") if sampler.on_demand else (
                f"always: every {sampler.period_s * 1000:.0f} ms")
        return {
            "sampling": mode,
            "read_cost_ms": round(counter.read_cost_s * 1000.0, 3),
            "reads": sampler.reads,
            "idle_reads": sampler.idle_reads,
            "thread_cpu_s": cpu_s,
            "age_s": age_s,
            "core_pct": 100.0 * cpu_s / age_s if cpu_s is not None and age_s > 0 else None,
            "always_on_core_pct": 100.0 * counter.read_cost_s / sampler.period_s if sampler.period_s > 0 else None,
        }

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        if self.counter is not None:
            self.counter.close()

    def __enter__(self) -> EnergyMonitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _cuda_ordinals(device: str) -> list[int] | None:
    _, _, rest = device.partition(":")
    ordinals = [int(i) for i in rest.split(",") if i.strip().isdigit()]
    return ordinals or None


def open_monitor(
    device: str = "auto",
    *,
    gpu_indices: Sequence[int] | None = None,
    calibration: Calibration | None = None,
    strict: bool = False,
    sysfs_root: Path | str = DEFAULT_SYSFS_ROOT,
    period_s: float | None = None,
    on_demand: bool = False,
) -> EnergyMonitor:
    """The best monitor for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    ``cuda*``: NVML over ``gpu_indices`` (CUDA ordinals; default the device's, or all GPUs), else amdsmi over the
    same ordinals (ROCm names AMD GPUs ``cuda`` too). ``mps``: Apple Silicon. ``cpu``: Apple Silicon (the whole
    SoC, on a Mac), else RAPL. ``auto``: NVML, AMD, Apple, RAPL. Without a counter: ``calibration``'s model when
    given, else the CPU-time estimate. Never fails for lack of a counter unless ``strict`` (the user named a device
    whose meter is missing): then ``MeterUnavailable`` says why. ``on_demand``: sample only around work (see the
    module doc).
    """
    dev = device.strip().lower()
    reasons: list[str] = []  # why each meter tried is missing, for the log line or MeterUnavailable
    counter = _gpu_counter(dev, device, gpu_indices, strict, reasons)
    if counter is None:
        counter = _apple_counter(dev, device, strict, reasons)
    if counter is None:
        counter = _rapl_counter(dev, device, sysfs_root, strict, reasons)
    if counter is None and calibration is not None:
        log.info("no energy counter (%s): using the calibrated model %s", "; ".join(reasons),
                 calibration.meter_name)
        return EnergyMonitor(None, calibration=calibration)
    if counter is None:
        counter = _cpu_time_estimate(dev, reasons)
    return EnergyMonitor(counter, calibration=calibration, period_s=period_s, on_demand=on_demand)


def _gpu_counter(
    dev: str, device: str, gpu_indices: Sequence[int] | None, strict: bool, reasons: list[str]
) -> Counter | None:
    """``cuda*`` or ``auto``: NVML over the CUDA ordinals, else amdsmi over the same; None (reasons noted) when
    neither works, ``MeterUnavailable`` instead when ``strict`` and the user named a ``cuda`` device."""
    if not (dev.startswith("cuda") or dev == "auto"):
        return None
    ordinals = list(gpu_indices) if gpu_indices is not None else _cuda_ordinals(dev)
    try:
        return NvmlCounter(cuda_to_nvml_ids(ordinals) if ordinals is not None else None)
    except MeterUnavailable as e:
        reasons.append(str(e))
    try:
        return AmdSmiCounter(visible_hip_ids(ordinals) if ordinals is not None else None)
    except MeterUnavailable as e:
        if strict and dev.startswith("cuda"):
            raise MeterUnavailable(f"no energy counter for {device}: {'; '.join([*reasons, str(e)])}") from e
        reasons.append(str(e))
    return None


def _apple_counter(dev: str, device: str, strict: bool, reasons: list[str]) -> Counter | None:
    """``mps``, or ``cpu``/``auto`` on Apple Silicon: the SoC's counter; None (reason noted) when it does not open,
    ``MeterUnavailable`` instead when ``strict`` and the user named ``mps``."""
    if not (dev in ("mps", "cpu", "auto") and (dev == "mps" or is_apple_silicon())):
        return None
    try:
        return AppleSiliconCounter()
    except MeterUnavailable as e:
        if strict and dev == "mps":
            raise MeterUnavailable(f"no energy counter for {device}: {e}") from e
        reasons.append(str(e))
    return None


def _rapl_counter(dev: str, device: str, sysfs_root: Path | str, strict: bool, reasons: list[str]) -> Counter | None:
    """``cpu`` or ``auto``: RAPL under ``sysfs_root``; None (reason noted) when it does not open,
    ``MeterUnavailable`` instead when ``strict`` and the user named ``cpu``."""
    if not (dev == "cpu" or dev == "auto"):
        return None
    try:
        return RaplCounter(sysfs_root)
    except MeterUnavailable as e:
        if strict and dev == "cpu":
            raise MeterUnavailable(f"no energy counter for {device}: {e}") from e
        reasons.append(str(e))
    return None


def _cpu_time_estimate(dev: str, reasons: list[str]) -> Counter:
    """The last resort, the CPU-time estimate; a warning when the user asked for a GPU it cannot see."""
    counter = CpuTimeEstimate()
    if dev.startswith("cuda"):
        log.warning("no GPU energy counter (%s): %s sees only CPU time, not the GPU; run "
                    "`greentrack calibrate` where NVML works", "; ".join(reasons), counter.name)
    else:
        log.info("no energy counter (%s): using %s", "; ".join(reasons), counter.name)
    return counter


def probe_meters(sysfs_root: Path | str = DEFAULT_SYSFS_ROOT) -> list[MeterStatus]:
    """NVML, AMD, Apple Silicon, RAPL and the estimate (``open_monitor``'s order): whether each works here, and
    why not. Opens and closes each."""
    return [probe_nvml(), probe_amd(), probe_apple(), probe_rapl(sysfs_root), probe_estimate()]
