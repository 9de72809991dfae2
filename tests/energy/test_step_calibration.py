"""The batched calibration's fit (``energy.calibration.fit_step_costs``) and where step attribution finds it."""

from __future__ import annotations

import random

import pytest

from greentrack.energy.calibration import Calibration, StepWindow, fit_step_costs, nonnegative_least_squares
from greentrack.energy.step_attribution import RequestWork, StepCosts, StepRecord

TRUE = (0.5, 2e-4, 1e-3, 1e-7)  # fixed J per step, J per prompt token, J per decode token, per context token
IDLE_W = 100.0


def _windows(noise: float, seed: int = 1) -> list[StepWindow]:
    rng = random.Random(seed)
    out = []
    for b in (1, 8, 64):
        for p in (32, 512, 2048):
            for o in (8, 64):
                rounds = 3
                steps, pre, dec = o * rounds, b * p * rounds, b * (o - 1) * rounds
                ctx = dec * (p + o / 2)
                busy = steps * 0.01
                # the costs above idle, and the idle draw over the whole window (steps' time included)
                energy = (steps * TRUE[0] + pre * TRUE[1] + dec * TRUE[2] + ctx * TRUE[3]) + IDLE_W * 1.2 * busy
                out.append(StepWindow(busy * 1.2, energy * (1 + rng.gauss(0, noise)), steps, busy, pre, dec, ctx,
                                      b, p, o))
    return out


def test_the_fit_recovers_known_costs() -> None:
    fit = fit_step_costs(_windows(0.0), IDLE_W)
    got = (fit.fixed_j, fit.j_per_prompt_token, fit.j_per_decode_token, fit.j_per_decode_token_per_context)
    assert got == pytest.approx(TRUE, rel=1e-6)
    assert fit.fit_error < 1e-9 and fit.n_windows == 18
    noisy = fit_step_costs(_windows(0.02), IDLE_W)
    # 2 % noise on the whole energy is more of the part above idle, which the fit's residuals are relative to
    assert noisy.fit_error < 0.10 and noisy.j_per_prompt_token == pytest.approx(TRUE[1], rel=0.2)


def test_costs_are_never_negative() -> None:
    rows = [[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]
    assert nonnegative_least_squares(rows, [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx([2.0, 0.0])
    with pytest.raises(ValueError):
        fit_step_costs([], IDLE_W)


def test_a_stored_batched_calibration_reaches_step_attribution() -> None:
    base = Calibration("nvml:gpu0", "cuda:0", "m", "h", 1e-3, 0.5, 300.0, 200.0, 120.0, 0.05, 3)
    windows = _windows(0.0)
    calibration = base.with_step_fit(fit_step_costs(windows, IDLE_W), windows)
    again = Calibration.from_dict(calibration.to_dict())
    assert again.step_fixed_j == pytest.approx(TRUE[0]) and again.step_windows == windows
    costs = StepCosts.from_calibration(again)
    assert (costs.fixed_j, costs.prefill_j_per_token, costs.decode_j_per_token) == pytest.approx(TRUE[:3])
    step = StepRecord(0.0, 0.01, {"long": RequestWork(prefill_tokens=2048), "short": RequestWork(decode_tokens=1,
                                                                                              context_tokens=100)})
    parts = costs.request_parts(step)
    assert sum(parts["long"]) > sum(parts["short"]) > 0
    old = Calibration.from_dict(base.to_dict())  # a calibration without batched figures still reads
    assert old.step_fixed_j is None and StepCosts.from_calibration(old).decode_j_per_token == pytest.approx(0.5)


def test_the_fixed_cost_is_above_idle_and_old_documents_are_refitted() -> None:
    """A window's energy less the idle draw over it: a step at idle power costs nothing above it."""
    at_idle = [StepWindow(2.0, IDLE_W * 2.0 + 0.5 * n, n, 1.9, 0.0, float(n), 100.0 * n) for n in (100, 200, 400)]
    fit = fit_step_costs(at_idle, IDLE_W)
    assert fit.fixed_j + fit.j_per_decode_token == pytest.approx(0.5, rel=1e-6)  # not 0.5 + IDLE_W × step time
    windows = _windows(0.0)
    base = Calibration("nvml:gpu0", "cuda:0", "m", "h", 1e-3, 0.5, 300.0, 200.0, IDLE_W, 0.05, 3)
    stale = base.with_step_fit(fit_step_costs(windows, 0.0), windows).to_dict()  # as fitted before: idle inside
    stale.pop("step_fit_above_idle")
    assert stale["step_fixed_j"] > TRUE[0] * 1.5
    again = Calibration.from_dict(stale)
    assert again.step_fit_above_idle and again.step_fixed_j == pytest.approx(TRUE[0], rel=1e-6)
    assert StepCosts.from_calibration(again).idle_w == IDLE_W
