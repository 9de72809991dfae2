"""Energy meters (NVML, RAPL, estimates), the background sampler and per-phase attribution.

Nothing here knows about models: the engine hands in ``PhaseSpan``s, this package hands back ``PhaseEnergy``.
"""
