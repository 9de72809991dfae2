"""A machine's per-phase energy model, measured once (``greentrack calibrate``) and used ever after.

Flow: ``greentrack.calibrate.run_calibration`` runs the engine's synthetic phases (a prompt of N tokens, M tokens
decoded) at binned sizes, powers of two as in Fernandez et al. (ACL 2025, arXiv 2504.17674), each many times back
to back in a long window (≥ 2 s) read by the monitor's counter — never a single read around one phase;
``fit_calibration`` here fits joules per prompt token and per decoded token (weighted least squares on relative
error) and each phase kind's whole-device power. The store keeps ``Calibration.to_dict()`` keyed by (host,
device, model). Then:

* with a counter, ``monitor`` uses ``prefill_w``/``decode_w``/``idle_w`` as attribution weights;
* without one, ``calibrated_phase_energy`` estimates each phase from its token count (method ``estimated``).

A *batched* calibration (``greentrack calibrate`` on a backend that batches: vLLM) adds per-step costs fitted by
``fit_step_costs`` from ``StepWindow``s — windows of batched work (batch sizes 1–64, prompt and output bins as
Fernandez et al. bin them) with the counter's energy and what their engine steps computed — into the ``step_*``
fields that ``energy.step_attribution.StepCosts.from_calibration`` reads. Those costs are above the idle draw
(``idle_w`` × the window's whole duration is taken off first), as step attribution splits only the energy above
idle among a step's requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from greentrack.energy.attribution import PhaseWeights
from greentrack.energy.types import PhaseEnergy, PhaseSpan

#: A calibrated estimate is never claimed better than this (the machine's state drifts). Relative.
MIN_RELATIVE_UNCERTAINTY = 0.10


@dataclass(frozen=True)
class CalibrationPoint:
    """One bin's measured means. Units: tokens, s, J (per phase, whole device)."""

    prompt_tokens: float
    decode_tokens: float
    prefill_s: float
    decode_s: float
    prefill_j: float
    decode_j: float
    output_tokens: int = 0  # what was asked (decode_tokens + the first token, which prefill yields)


@dataclass(frozen=True)
class StepWindow:
    """One window of batched work. Units: s, J (whole device), tokens.

    ``energy_j``: the counter over the window; ``busy_s``: the time engine steps ran in it; ``steps``: how many;
    ``prefill_tokens``/``decode_tokens``: what they computed; ``decode_context_tokens``: Σ over decode tokens of
    the context each attended to.
    """

    duration_s: float
    energy_j: float
    steps: int
    busy_s: float
    prefill_tokens: float
    decode_tokens: float
    decode_context_tokens: float
    batch_size: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class StepFit:
    """``fit_step_costs``' result. Units: J, J per token, J per token per context token; ``fit_error`` is the RMS
    relative residual over the windows' energy above idle."""

    fixed_j: float
    j_per_prompt_token: float
    j_per_decode_token: float
    j_per_decode_token_per_context: float
    fit_error: float
    n_windows: int


@dataclass
class Calibration:
    """The fitted model. Units: J per token, W, s; ``fit_error`` is the RMS relative residual of the fits.

    Phase energy (whole device) ≈ ``prefill_fixed_j + j_per_prompt_token × prompt tokens`` for prefill and
    ``decode_fixed_j + j_per_decode_token × decoded tokens`` for decode.
    """

    source_meter: str
    device: str
    model: str
    host: str
    j_per_prompt_token: float
    j_per_decode_token: float
    prefill_w: float
    decode_w: float
    idle_w: float
    fit_error: float
    n_points: int
    created_ts: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    prefill_fixed_j: float = 0.0
    decode_fixed_j: float = 0.0
    points: list[CalibrationPoint] = field(default_factory=list)
    # A batched calibration's per-step costs (None: not measured); ``energy.step_attribution.StepCosts``.
    step_fixed_j: float | None = None
    step_j_per_prompt_token: float | None = None
    step_j_per_decode_token: float | None = None
    step_j_per_decode_token_per_context: float | None = None
    step_fit_error: float | None = None
    step_windows: list[StepWindow] = field(default_factory=list)
    # True: the step costs are above the idle draw (``fit_step_costs`` since the batched figures became marginal).
    step_fit_above_idle: bool = False

    def with_step_fit(self, fit: StepFit, windows: Sequence[StepWindow]) -> Calibration:
        """This calibration with a batched fit's per-step costs (``fit_step_costs``: above idle)."""
        return replace(self, step_fixed_j=fit.fixed_j, step_j_per_prompt_token=fit.j_per_prompt_token,
                       step_j_per_decode_token=fit.j_per_decode_token,
                       step_j_per_decode_token_per_context=fit.j_per_decode_token_per_context,
                       step_fit_error=fit.fit_error, step_windows=list(windows), step_fit_above_idle=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data for the store; whoever reads it back (the report's tips) uses ``from_dict``."""
        out = asdict(self)
        out["points"] = [asdict(p) for p in self.points]
        out["step_windows"] = [asdict(w) for w in self.step_windows]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of ``to_dict``. Raises ``KeyError``/``TypeError``/``ValueError`` on a malformed document.

        A document whose step costs were fitted with the idle draw during steps in them (before
        ``step_fit_above_idle``) is refitted from its stored windows, so that its costs are above idle too."""
        def num(key: str, default: float | None = None) -> float:
            if key in data:
                value = data[key]
            elif default is not None:
                value = default
            else:
                raise KeyError(f"calibration lacks {key!r}")
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(f"calibration {key!r} is not finite")
            return f

        points = [CalibrationPoint(**p) for p in data.get("points", [])]

        def optional(key: str) -> float | None:
            return num(key) if data.get(key) is not None else None

        calibration = cls(
            source_meter=str(data["source_meter"]),
            device=str(data["device"]),
            model=str(data["model"]),
            host=str(data["host"]),
            j_per_prompt_token=num("j_per_prompt_token"),
            j_per_decode_token=num("j_per_decode_token"),
            prefill_w=num("prefill_w"),
            decode_w=num("decode_w"),
            idle_w=num("idle_w"),
            fit_error=num("fit_error", default=0.0),
            n_points=int(data.get("n_points", len(points))),
            created_ts=str(data.get("created_ts", "")),
            prefill_fixed_j=num("prefill_fixed_j", default=0.0),
            decode_fixed_j=num("decode_fixed_j", default=0.0),
            points=points,
            step_fixed_j=optional("step_fixed_j"),
            step_j_per_prompt_token=optional("step_j_per_prompt_token"),
            step_j_per_decode_token=optional("step_j_per_decode_token"),
            step_j_per_decode_token_per_context=optional("step_j_per_decode_token_per_context"),
            step_fit_error=optional("step_fit_error"),
            step_windows=[StepWindow(**w) for w in data.get("step_windows") or []],
            step_fit_above_idle=bool(data.get("step_fit_above_idle", False)),
        )
        if (calibration.step_fixed_j is not None and not calibration.step_fit_above_idle
                and any(w.steps > 0 and w.energy_j > 0 for w in calibration.step_windows)):
            windows = calibration.step_windows
            calibration = calibration.with_step_fit(fit_step_costs(windows, calibration.idle_w), windows)
        return calibration

    @property
    def weights(self) -> PhaseWeights:
        """The per-kind powers (and per-token model) as attribution weights."""
        return PhaseWeights(
            prefill_w=self.prefill_w, decode_w=self.decode_w, idle_w=self.idle_w,
            prefill_fixed_j=self.prefill_fixed_j, j_per_prompt_token=self.j_per_prompt_token,
            decode_fixed_j=self.decode_fixed_j, j_per_decode_token=self.j_per_decode_token,
        )

    @property
    def meter_name(self) -> str:
        return f"calibrated:{self.source_meter}@{self.host}"

    @property
    def relative_uncertainty(self) -> float:
        """Twice the fit's RMS relative residual (≈ 95 % of bins), never under 10 %."""
        return max(MIN_RELATIVE_UNCERTAINTY, 2.0 * self.fit_error)

    def phase_j(self, span: PhaseSpan) -> float:
        """The model's energy for one phase. Units: J."""
        if span.kind == "prefill":
            return max(0.0, self.prefill_fixed_j + self.j_per_prompt_token * span.work)
        return max(0.0, self.decode_fixed_j + self.j_per_decode_token * span.work)


def calibrated_phase_energy(spans: Sequence[PhaseSpan], calibration: Calibration) -> list[PhaseEnergy]:
    """Estimate each phase from the calibrated model (no counter). Method ``estimated``."""
    rel = calibration.relative_uncertainty
    out: list[PhaseEnergy] = []
    for s in spans:
        e = calibration.phase_j(s)
        out.append(PhaseEnergy(s.request_id, s.kind, e, "estimated", calibration.meter_name, rel * e, None))
    return out


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) minimising the squared *relative* residuals; through the origin when the intercept
    would be negative or cannot be determined (one distinct x)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
    if not pts:
        return 0.0, 0.0
    ws = [1.0 / (y * y) for _, y in pts]
    if len({x for x, _ in pts}) >= 2:
        sw = math.fsum(ws)
        sx = math.fsum(w * x for w, (x, _) in zip(ws, pts, strict=True))
        sy = math.fsum(w * y for w, (_, y) in zip(ws, pts, strict=True))
        sxx = math.fsum(w * x * x for w, (x, _) in zip(ws, pts, strict=True))
        sxy = math.fsum(w * x * y for w, (x, y) in zip(ws, pts, strict=True))
        det = sw * sxx - sx * sx
        if det > 0:
            slope = (sw * sxy - sx * sy) / det
            intercept = (sy - slope * sx) / sw
            if intercept >= 0 and slope >= 0:
                return slope, intercept
    sxx = math.fsum(w * x * x for w, (x, _) in zip(ws, pts, strict=True))
    sxy = math.fsum(w * x * y for w, (x, y) in zip(ws, pts, strict=True))
    return (sxy / sxx if sxx > 0 else 0.0), 0.0


def fit_calibration(
    points: Sequence[CalibrationPoint],
    *,
    idle_w: float | None = None,
    source_meter: str = "",
    host: str = "",
    device: str = "",
    model: str = "",
) -> Calibration:
    """Least-squares fit of J per prompt token and per decoded token, and per-kind powers, from bin means."""
    if not points:
        raise ValueError("a calibration needs at least one measured point")
    pre = [p for p in points if p.prompt_tokens > 0 and p.prefill_j > 0]
    dec = [p for p in points if p.decode_tokens > 0 and p.decode_j > 0]
    a_pre, b_pre = _fit_line([p.prompt_tokens for p in pre], [p.prefill_j for p in pre])
    a_dec, b_dec = _fit_line([p.decode_tokens for p in dec], [p.decode_j for p in dec])
    residuals = [(b_pre + a_pre * p.prompt_tokens - p.prefill_j) / p.prefill_j for p in pre]
    residuals += [(b_dec + a_dec * p.decode_tokens - p.decode_j) / p.decode_j for p in dec]
    fit_error = math.sqrt(math.fsum(r * r for r in residuals) / len(residuals)) if residuals else 0.0
    pre_s = math.fsum(p.prefill_s for p in pre)
    dec_s = math.fsum(p.decode_s for p in dec)
    prefill_w = math.fsum(p.prefill_j for p in pre) / pre_s if pre_s > 0 else 0.0
    decode_w = math.fsum(p.decode_j for p in dec) / dec_s if dec_s > 0 else prefill_w
    if idle_w is None:
        idle_w = min(w for w in (prefill_w, decode_w) if w > 0) if (prefill_w > 0 or decode_w > 0) else 0.0
    return Calibration(
        source_meter=source_meter, device=device, model=model, host=host,
        j_per_prompt_token=a_pre, j_per_decode_token=a_dec,
        prefill_w=prefill_w, decode_w=decode_w, idle_w=idle_w,
        fit_error=fit_error, n_points=len(points),
        prefill_fixed_j=b_pre, decode_fixed_j=b_dec, points=list(points),
    )


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    n = len(rhs)
    a = [[*row, rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    return [a[i][n] / a[i][i] for i in range(n)]


def nonnegative_least_squares(rows: Sequence[Sequence[float]], ys: Sequence[float],
                              weights: Sequence[float]) -> list[float]:
    """Weighted least squares with every coefficient ≥ 0 (an active set: a negative coefficient is fixed at 0 and
    the rest refitted), for a handful of unknowns; coefficients no row exercises are 0."""
    k = len(rows[0]) if rows else 0
    scale = [max((abs(r[j]) for r in rows), default=0.0) or 1.0 for j in range(k)]  # columns of like size
    rows = [[r[j] / scale[j] for j in range(k)] for r in rows]
    free = [j for j in range(k) if any(abs(r[j]) > 0 for r in rows)]
    while free:
        ata = [[math.fsum(w * r[i] * r[j] for r, w in zip(rows, weights, strict=True)) for j in free] for i in free]
        aty = [math.fsum(w * r[i] * y for r, y, w in zip(rows, ys, weights, strict=True)) for i in free]
        solution = _solve(ata, aty)
        if solution is None:  # collinear columns: drop the last free one
            free = free[:-1]
            continue
        worst = min(range(len(free)), key=lambda i: solution[i])
        if solution[worst] < 0.0:
            free = [j for i, j in enumerate(free) if i != worst]
            continue
        out = [0.0] * k
        for i, j in enumerate(free):
            out[j] = solution[i] / scale[j]
        return out
    return [0.0] * k


#: A window's energy above idle is weighted as if it were at least this share of its whole energy (a window
#: barely above idle would otherwise dominate a fit on relative error).
MIN_ABOVE_IDLE_SHARE = 0.05


def fit_step_costs(windows: Sequence[StepWindow], idle_w: float) -> StepFit:
    """Fit ``energy − idle_w × duration ≈ steps × fixed + prefill × a + decode × b + decode_context × c`` over the
    windows (least squares on relative error, every cost ≥ 0): costs *above the idle draw*, which goes on whether
    steps run or not and which step attribution keeps in the idle bucket. The fixed cost carries what a step
    costs above idle whatever it computes (weights read once per step, launch overheads)."""
    usable = [w for w in windows if w.steps > 0 and w.energy_j > 0]
    if not usable:
        raise ValueError("a batched calibration needs at least one window with engine steps")
    rows = [[float(w.steps), w.prefill_tokens, w.decode_tokens, w.decode_context_tokens] for w in usable]
    ys = [max(1e-9, w.energy_j - idle_w * max(0.0, w.duration_s)) for w in usable]
    weights = [1.0 / max(y, MIN_ABOVE_IDLE_SHARE * w.energy_j) ** 2 for y, w in zip(ys, usable, strict=True)]
    fixed, pre, dec, ctx = nonnegative_least_squares(rows, ys, weights)
    residuals = [(fixed * r[0] + pre * r[1] + dec * r[2] + ctx * r[3] - y) * math.sqrt(wt)
                 for r, y, wt in zip(rows, ys, weights, strict=True)]
    fit_error = math.sqrt(math.fsum(e * e for e in residuals) / len(residuals))
    return StepFit(fixed, pre, dec, ctx, fit_error, len(usable))
