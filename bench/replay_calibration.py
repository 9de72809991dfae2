"""Replay a recorded mixed workload under other prefill models of the calibration and other readings of the truth.

    PYTHONPATH=server:. .venv/bin/python bench/replay_calibration.py tests/energy/data/h200_mixed.json [more.json …]

Issue 13 (per-phase accuracy within ±10 %, the 1024-token prefills served by vLLM missing it): is the calibration's
line through the prefill sizes the cause, or the truth? Input: recordings in the ``h100_mixed.json`` format
(``bench/interval_data.py``); ``bench/gpu_validate_attribution.py`` calls ``replay`` at the end of each run.

Prefill models (the attribution weight of a prefill span is its modelled energy over its duration, as
``energy.attribution.PhaseWeights.power_w`` computes it; decode and idle as calibrated):

* ``line``: the calibration as stored (``fixed + J/token × n``, one line through all sizes);
* ``interpolated``: the calibrated sizes' measured energies, linear between them (exact at every calibrated size);
* ``base+per-token``: ``E = base_w × duration + J/token × n`` fitted on the calibrated sizes, so a prefill that takes
  longer (through vLLM: host time) costs ``base_w`` for the extra time, not its whole power.

Truth readings of a prefill of duration d (the steady window of its size measured power P, mean duration d̄ and
energy per phase E = P·d̄):

* ``power``: P × d (today's: the window's power holds however long the phase takes);
* ``energy``: E + P_gap × (d − d̄) (the extra or missing time is host time at the gaps' power).

The two agree where the workload's prefills take as long as the window's; through vLLM they do not (1024-token
prefills: 19.3 ms in the truth window, 26.5 ms in the workload, 2026-11-27 async off).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.interval_data import (
    TRUTH_READINGS,
    Recording,
    cases,
    load_recording,
    phase_accuracy,
)

from greentrack.energy.attribution import PhaseWeights
from greentrack.energy.calibration import Calibration
from greentrack.energy.types import PhaseSpan


@dataclass(frozen=True)
class PrefillModelWeights(PhaseWeights):
    """Calibrated weights whose prefill power comes from ``prefill_j(tokens, duration_s)`` (clamped as the
    calibrated model's is: between ``idle_w`` and five times the larger kind power)."""

    prefill_j: Callable[[float, float], float] | None = None

    def power_w(self, span: PhaseSpan) -> float:
        if span.kind != "prefill" or self.prefill_j is None or span.duration_s <= 0.0:
            return super().power_w(span)
        ceiling_w = 5.0 * max(self.prefill_w, self.decode_w, self.idle_w)
        return min(max(self.prefill_j(span.work, span.duration_s) / span.duration_s, self.idle_w), ceiling_w)


def _prefill_bins(cal: Calibration) -> list[tuple[float, float, float]]:
    """(tokens, mean duration s, mean energy J) per calibrated prefill size."""
    by_size: dict[float, list[tuple[float, float]]] = {}
    for p in cal.points:
        if p.prompt_tokens > 0 and p.prefill_j > 0 and p.prefill_s > 0:
            by_size.setdefault(p.prompt_tokens, []).append((p.prefill_s, p.prefill_j))
    return [(n, statistics.fmean(s for s, _ in v), statistics.fmean(e for _, e in v))
            for n, v in sorted(by_size.items())]


def interpolated(cal: Calibration) -> Callable[[float, float], float]:
    """Energy linear between the calibrated sizes' (constant below the smallest, the last segment's slope above)."""
    bins = _prefill_bins(cal)
    xs, ys = [b[0] for b in bins], [b[2] for b in bins]

    def energy_j(tokens: float, duration_s: float) -> float:
        if len(xs) == 1 or tokens <= xs[0]:
            return ys[0]
        i = next((i for i in range(1, len(xs)) if tokens <= xs[i]), len(xs) - 1)
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (tokens - xs[i - 1]) / (xs[i] - xs[i - 1])

    return energy_j


def base_per_token(cal: Calibration) -> tuple[float, float]:
    """(base W, J per token) of ``E = base × duration + per_token × n``, least squares on relative error over every
    calibration point with a prefill (both ≥ 0)."""
    rows = [(p.prefill_s / p.prefill_j, p.prompt_tokens / p.prefill_j) for p in cal.points
            if p.prompt_tokens > 0 and p.prefill_j > 0 and p.prefill_s > 0]
    saa = math.fsum(a * a for a, _ in rows)
    sbb = math.fsum(b * b for _, b in rows)
    sab = math.fsum(a * b for a, b in rows)
    sa, sb = math.fsum(a for a, _ in rows), math.fsum(b for _, b in rows)
    det = saa * sbb - sab * sab
    if det > 0:
        base, per = (sbb * sa - sab * sb) / det, (saa * sb - sab * sa) / det
        if base >= 0 and per >= 0:
            return base, per
    return (0.0, sb / sbb) if sbb > 0 else (0.0, 0.0)


def model_weights(cal: Calibration, name: str) -> PhaseWeights:
    """The calibrated weights with the prefill model ``name`` (``line``, ``interpolated``, ``base+per-token``)."""
    if name == "line":
        return cal.weights
    if name == "interpolated":
        fn = interpolated(cal)
    else:
        base_w, per_token_j = base_per_token(cal)

        def fn(tokens: float, duration_s: float) -> float:
            return base_w * duration_s + per_token_j * tokens
    w = cal.weights
    return PrefillModelWeights(w.prefill_w, w.decode_w, w.idle_w, w.prefill_fixed_j, w.j_per_prompt_token,
                               w.decode_fixed_j, w.j_per_decode_token, prefill_j=fn)


MODELS = ("line", "interpolated", "base+per-token")


def replay(rec: Recording, truth_repeat: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-phase accuracy (mean error %, calibrated, phases ≥ 10 ms) per prefill model and truth reading, the
    prefill durations of the truth windows, the calibration and the workload, and the truth's own movement between
    two windows where the run repeated them. ``lines``: the same, to print."""
    if rec.calibration is None:
        return {"lines": ["no calibration in the recording"]}
    accuracy: dict[str, dict[str, Any]] = {}
    lines = []
    for name in MODELS:
        cal_rec = replace(rec, calibration=_with_weights(rec.calibration, model_weights(rec.calibration, name)))
        for reading in TRUTH_READINGS:
            acc = phase_accuracy(cases(cal_rec, calibrated=True, derived=False, truth_reading=reading))
            accuracy[f"{name}/{reading}"] = acc
            lines.append(f"{name:15s} truth={reading:6s} " + "  ".join(
                f"{k}: {v['mean_error_pct']:+.1f} %" for k, v in acc.items()))
    durations: dict[str, dict[str, float]] = {}
    bins = {int(n): (s, e) for n, s, e in _prefill_bins(rec.calibration)}
    for key, t in sorted(rec.truth.items()):
        if key.startswith("prefill/") and "duration_ms" in t:
            n = int(key.split("/")[1])
            mixed = [1000 * s.duration_s for s in rec.spans if s.kind == "prefill" and int(s.work) == n]
            durations[key] = {"truth_ms": float(t["duration_ms"]),
                              "calibration_ms": 1000 * bins[n][0] if n in bins else math.nan,
                              "workload_median_ms": statistics.median(mixed) if mixed else math.nan}
            lines.append(f"{key} durations: truth window {durations[key]['truth_ms']:.1f} ms, calibration "
                         f"{durations[key]['calibration_ms']:.1f} ms, workload median "
                         f"{durations[key]['workload_median_ms']:.1f} ms")
    base_w, per_token_j = base_per_token(rec.calibration)
    lines.append(f"base+per-token fit: {base_w:.1f} W + {1000 * per_token_j:.3f} mJ/token")
    for key, v in sorted((truth_repeat or {}).items()):
        lines.append(f"truth repeat {key}: power {v['power_change_pct']:+.1f} %, energy/phase "
                     f"{v['energy_change_pct']:+.1f} %, {v['duration_ms']:.1f} ms")
    return {"accuracy": accuracy, "durations": durations, "base_w": base_w, "j_per_token": per_token_j,
            "lines": lines}


def _with_weights(cal: Calibration, weights: PhaseWeights) -> Calibration:
    """``cal`` whose ``weights`` are ``weights`` (the replayed attribution reads ``calibration.weights``)."""
    class _Replayed(Calibration):
        @property
        def weights(self) -> PhaseWeights:
            return weights

    return _Replayed(**{f: getattr(cal, f) for f in cal.__dataclass_fields__})


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recordings", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.recordings:
        print(f"== {path}")
        for line in replay(load_recording(json.loads(path.read_text())))["lines"]:
            print("  " + line)


if __name__ == "__main__":
    main(sys.argv[1:])
