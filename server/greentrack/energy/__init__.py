"""Energy meters (NVML, RAPL, estimates), the background sampler and per-phase attribution.

Nothing here knows about models: the engine hands in ``PhaseSpan``s, this package hands back ``PhaseEnergy``.

Modules, in the order of the flow (method and proofs: ``docs/measurement.md``):

* ``types`` — ``PhaseSpan``, ``PhaseEnergy``, ``CounterSample``.
* ``counter`` — the ``Counter`` interface (``read_j``, ``name``, ``resolution_j``, ``update_period_s``,
  ``read_cost_s``, …) and ``MeterStatus``; ``nvml``, ``rapl``, ``estimate`` — the three kinds.
* ``sampler`` — the daemon thread that reads a counter into a bounded ring.
* ``attribution`` — pure functions: knots from reads, split over spans, conservation, uncertainty bounds.
* ``calibration`` — ``Calibration``, ``fit_calibration``, the calibrated estimate (``greentrack.calibrate``
  measures it).
* ``monitor`` — ``EnergyMonitor``, ``open_monitor`` and ``probe_meters``: what the pipeline and doctor use.
* ``step_attribution`` — pure functions: per-request energy of batched requests by engine step (vLLM), idle apart.
* ``step_ledger`` — ``StepLedger``: the same live, fed by the engine thread's step records and the sampler.
"""
