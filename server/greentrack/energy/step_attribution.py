"""Per-request energy under continuous batching, by engine step (pure: no threads, no vLLM, no I/O).

Place in the flow: the vLLM engine thread records one ``StepRecord`` per engine step (when it ran, and for every
request in it how many prompt and decode tokens it computed: ``engine.vllm_steps``); the sampler records counter
samples; ``energy.step_ledger.StepLedger`` feeds both to a ``StepAccounts`` here as they come, and the pipeline
asks it for each finished request's figures. ``attribute_steps`` does the same over a whole recorded trace (tests,
benchmarks). Method and proof: ``docs/measurement.md``, "Batched requests: attribution by engine step".

1. *Knots* as ``attribution.find_knots`` finds them: times at which the counter's cumulative value is known.
2. *Static and dynamic.* With the engine's idle power ``idle_w`` known (the calibration's, else the running
   median of intervals with no step: ``StepAccounts(idle_w=None)``), the energy ΔC of each interval between two
   knots that holds a step splits into its *static* part, ``idle_w × the interval's length`` (clipped to
   [0, ΔC]; of it, ``idle_w × the steps' busy time`` is the idle draw *during* steps), which goes to the *idle*
   bucket (the engine's idle draw, including during busy steps), and its *dynamic* part, the rest (what the
   steps drew above idle, their power's tail after them included), which goes to the steps by their time in it.
   Batched figures are thus marginal: what a request added above the draw the GPU spends anyway. An interval
   with no step goes to the idle bucket whole. With no idle power known (``idle_w`` 0: a note says so), ΔC goes
   to the time segments of the steps in proportion to their length and the rest of the interval to idle, as
   before: each step then carries the idle draw during it (whole-device figures). Steps of one engine do not
   overlap; if some did, they share a segment equally.
3. *Requests by cost.* Inside a step, its (dynamic) energy goes to its requests in proportion to their modelled cost
   ``fixed_j / n_requests + prefill_tokens × c_prefill + decode_tokens × c_decode(context)`` (``StepCosts``: from a
   calibration, else by tokens). A request's share splits into its prefill and decode parts the same way.
4. *Bounds.* Each step's true energy in an interval lies within ``attribution.interval_bounds``; a request's bound
   is its share of its steps' bounds (less the idle draw during them), summed over the intervals (the idle
   bucket's: ΔC less the steps' bounds).

Each figure also counts the request's engine steps and how many of them it shared with another request (the
team report's share of batched steps, ``docs/interfaces.md`` "Report"); counts, not energy: a step before the
counter's window counts too.

Conservation is exact by construction: in every interval the idle part is ΔC less the steps' parts, and each
step's part is split among its requests by normalised shares, so Σ requests + idle = Σ ΔC = the counter's delta
over the processed window (``StepAccounts.conservation_error_j``; tests hold it to 1e-9 relative).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from greentrack.energy.attribution import Knot, MeterInfo, find_knots, interval_bounds
from greentrack.energy.types import CounterSample, PhaseEnergy


@dataclass(frozen=True)
class RequestWork:
    """What one request computed in one engine step. Units: tokens.

    ``prefill_tokens``: prompt tokens (or tokens recomputed after a preemption) whose KV the step computed;
    ``decode_tokens``: tokens the step computed to sample the request's next token(s) (1, more with speculative
    decoding); ``context_tokens``: tokens already in the request's KV before the step (what its tokens attend to).
    """

    prefill_tokens: int = 0
    decode_tokens: int = 0
    context_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass(frozen=True)
class StepRecord:
    """One engine step. Units: s on ``time.monotonic()``'s clock; ``requests`` by the engine's request id."""

    start_s: float
    end_s: float
    requests: Mapping[str, RequestWork]

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)


#: Said with figures split by token counts alone (no calibration).
TOKENS_NOTE = ("within a step, requests share its energy by tokens computed, a prefill token counting as much as "
               "a decode token (no calibration: run `greentrack calibrate`)")
#: Said with figures that carry the idle draw during their steps (no idle power known).
WHOLE_DEVICE_NOTE = ("no idle power known (no calibration, no interval without a step yet): each step's figure "
                     "includes the idle draw during it (whole-device, not marginal)")
#: Intervals with no step whose mean power the running idle median keeps, and how many it needs first.
IDLE_SAMPLES = 200
IDLE_MIN_SAMPLES = 5
#: Said with figures split by the per-phase (batch 1) calibration.
PER_PHASE_NOTE = ("within a step, requests share its energy by the per-phase calibration's J per prompt token and "
                  "per decoded token (measured at batch 1, where a decode token also carries the whole step's "
                  "fixed cost: in mixed steps decoding requests are charged more than a batched calibration "
                  "would)")


@dataclass(frozen=True)
class StepCosts:
    """The modelled cost of a request's part of a step: only the ratios inside one step matter. Units: J.

    ``fixed_j`` is the per-step cost shared evenly by the step's requests; ``c_decode(context) =
    decode_j_per_token + decode_j_per_token_per_context × context_tokens``. A batched calibration's costs are
    fitted above the idle draw (``energy.calibration.fit_step_costs``). ``idle_w``: the engine's idle power from
    the calibration (None: not known; the ledger measures it). Units: W.
    """

    prefill_j_per_token: float = 1.0
    decode_j_per_token: float = 1.0
    decode_j_per_token_per_context: float = 0.0
    fixed_j: float = 0.0
    note: str = TOKENS_NOTE
    idle_w: float | None = None

    @classmethod
    def from_calibration(cls, calibration: Any | None) -> StepCosts:
        """From a calibration: a batched one's per-step costs where it has them (``step_fixed_j``,
        ``step_j_per_prompt_token``, ``step_j_per_decode_token``, ``step_j_per_decode_token_per_context``), else
        the per-phase figures (``j_per_prompt_token``, ``j_per_decode_token``), else tokens alone."""
        if calibration is None:
            return cls()

        def num(name: str) -> float | None:
            value = getattr(calibration, name, None)
            if value is None and isinstance(calibration, Mapping):
                value = calibration.get(name)
            try:
                f = float(value) if value is not None else None
            except (TypeError, ValueError):
                return None
            return f if f is not None and math.isfinite(f) and f >= 0.0 else None

        idle_w = num("idle_w") or None
        pre, dec = num("step_j_per_prompt_token"), num("step_j_per_decode_token")
        if pre is not None and dec is not None and pre + dec > 0.0:
            return cls(pre, dec, num("step_j_per_decode_token_per_context") or 0.0, num("step_fixed_j") or 0.0,
                       "within a step, requests share its energy above idle by the batched calibration's per-token "
                       "costs and an even share of its fixed cost above idle", idle_w)
        pre, dec = num("j_per_prompt_token"), num("j_per_decode_token")
        if pre is not None and dec is not None and pre > 0.0 and dec > 0.0:
            return cls(pre, dec, note=PER_PHASE_NOTE, idle_w=idle_w)
        return cls(idle_w=idle_w)

    def request_parts(self, step: StepRecord) -> dict[str, tuple[float, float]]:
        """Each request's (prefill, decode) fraction of ``step``'s energy; all fractions sum to 1."""
        n = len(step.requests)
        if n == 0:
            return {}
        raw: dict[str, tuple[float, float]] = {}
        for rid, w in step.requests.items():
            pre = max(0, w.prefill_tokens) * self.prefill_j_per_token
            dec = max(0, w.decode_tokens) * (self.decode_j_per_token
                                             + self.decode_j_per_token_per_context * max(0, w.context_tokens))
            fixed = self.fixed_j / n
            tokens = max(0, w.prefill_tokens) + max(0, w.decode_tokens)
            if tokens > 0:
                pre += fixed * max(0, w.prefill_tokens) / tokens
                dec += fixed * max(0, w.decode_tokens) / tokens
            else:
                dec += fixed
            raw[rid] = (pre, dec)
        total = math.fsum(p + d for p, d in raw.values())
        if total <= 0.0:  # no cost known: an even split
            return {rid: (0.0, 1.0 / n) if w.prefill_tokens == 0 else (1.0 / n, 0.0)
                    for rid, w in step.requests.items()}
        return {rid: (p / total, d / total) for rid, (p, d) in raw.items()}


@dataclass(frozen=True)
class RequestEnergy:
    """A request's figures from the steps it was in. Units: J, s, tokens.

    ``lower_j``/``upper_j`` bound its true energy (its share of its steps' bounds); ``uncertainty_j`` adds the
    counter's resolution per interval touched and its relative error. ``extrapolated_j`` is part of ``energy_j``
    given to steps the counter did not cover yet (only when the caller could not wait: the meter stalled).
    ``steps``: the engine steps it was in; ``batched_steps``: those of them shared with at least one other
    request; ``batch_requests``: Σ over its steps of how many requests each held (``mean_batch_size``).
    """

    request_id: str
    prefill_j: float
    decode_j: float
    lower_j: float
    upper_j: float
    uncertainty_j: float | None
    steps: int
    prefill_tokens: int
    decode_tokens: int
    first_s: float
    last_s: float
    extrapolated_j: float = 0.0
    notes: tuple[str, ...] = ()
    batched_steps: int = 0
    batch_requests: int = 0

    @property
    def energy_j(self) -> float:
        return self.prefill_j + self.decode_j

    @property
    def mean_batch_size(self) -> float | None:
        """How many requests its steps held on average (itself included); None when it was in none."""
        return self.batch_requests / self.steps if self.steps > 0 else None

    def phases(self, meter: MeterInfo) -> list[PhaseEnergy]:
        """As the pipeline's ``PhaseEnergy`` list (prefill, decode); the uncertainty is split by energy."""
        total = self.energy_j
        out: list[PhaseEnergy] = []
        for kind, e in (("prefill", self.prefill_j), ("decode", self.decode_j)):
            if kind == "decode" and self.decode_tokens == 0 and e == 0.0:
                continue
            u = None if self.uncertainty_j is None else (
                self.uncertainty_j * (e / total if total > 0 else (1.0 if kind == "prefill" else 0.0)))
            out.append(PhaseEnergy(self.request_id, kind, e, meter.method, meter.name, u,  # type: ignore[arg-type]
                                   meter.resolution_j))
        return out


@dataclass(frozen=True)
class IdleWindow:
    """The engine's idle draw over ``[start_s, end_s]`` (knot times), including during busy steps. Units: J, s, W.

    ``energy_j``: the counter's energy in the window that no request was charged: all of it while no step ran,
    and, with an idle power known, the static draw (``idle_w`` × time) while steps ran, of which ``static_j``
    was during steps. ``idle_s``: how long no step ran in it. ``idle_w``: the idle power used last (0: none known,
    the old whole-device split). ``late_j``: energy of steps of requests already reported with an extrapolated
    figure (the meter had stalled); kept here so that the stored figures still add up.
    """

    start_s: float
    end_s: float
    energy_j: float
    lower_j: float
    upper_j: float
    uncertainty_j: float | None
    idle_s: float
    late_j: float = 0.0
    static_j: float = 0.0
    idle_w: float = 0.0


@dataclass
class _Acc:
    """Running sums of one request. Units: J, s, tokens."""

    prefill_j: float = 0.0
    decode_j: float = 0.0
    lower_j: float = 0.0
    upper_j: float = 0.0
    touched: int = 0
    steps: int = 0
    batched_steps: int = 0  # steps shared with another request
    batch_requests: int = 0  # Σ requests in its steps
    prefill_tokens: int = 0
    decode_tokens: int = 0
    first_s: float = math.inf
    last_s: float = -math.inf
    done: bool = False
    reported: bool = False
    whole_device: bool = False  # some of its steps were split with no idle power known


@dataclass
class _IdleAcc:
    start_s: float
    energy_j: float = 0.0
    lower_j: float = 0.0
    upper_j: float = 0.0
    idle_s: float = 0.0
    late_j: float = 0.0
    static_j: float = 0.0
    intervals: int = 0


class StepAccounts:
    """The step attribution as a state machine: steps and knots in, request and idle figures out. Not thread-safe.

    ``add_step`` a step once it has ended; ``request_done`` once no later step will hold the request; ``advance``
    with knots (in time order; those already processed are skipped) up to ``watermark_s``, the time before which
    every step has been added. A request's figure is final once the processed window has passed its last step.

    ``idle_w``: the engine's idle power (W) whose draw over intervals with steps stays in the idle bucket; 0 (the
    default): none, the whole-device time split; None: the running median of the mean power of the last
    ``IDLE_SAMPLES`` intervals with no step near (0 until ``IDLE_MIN_SAMPLES`` were seen).
    """

    def __init__(self, meter: MeterInfo, costs: StepCosts | None = None, *, p_lo_w: float = 0.0,
                 p_hi_w: float | None = None, idle_w: float | None = 0.0) -> None:
        self.meter = meter
        self.costs = costs or StepCosts()
        self.fixed_idle_w = idle_w
        self._idle_powers: deque[float] = deque(maxlen=IDLE_SAMPLES)
        self.measured_idle_w: float | None = None  # the running median (kept whatever ``idle_w`` says)
        self.static_j = 0.0  # Σ idle draw during steps, all processed intervals (part of ``idle_j``)
        self.whole_device_s = 0.0  # step time split with no idle power known
        self._static_owed_j = 0.0  # idle draw the last busy interval's ΔC could not hold
        self.p_lo_w = p_lo_w
        self.p_hi_w = p_hi_w if p_hi_w is not None else meter.max_power_w
        self.cursor: Knot | None = None
        self.origin: Knot | None = None
        self._steps: list[StepRecord] = []
        self._accs: dict[str, _Acc] = {}
        self._idle: _IdleAcc | None = None
        self.requests_j = 0.0  # Σ over every request's share, all processed intervals
        self.idle_j = 0.0  # Σ of the idle bucket (late_j included), all processed intervals
        self.unwindowed_s = 0.0  # step time before the first knot: not attributable
        self.highest_power_w = 0.0
        self.notes: list[str] = []

    @property
    def idle_w(self) -> float:
        """The idle power the next interval uses. Units: W."""
        if self.fixed_idle_w is not None:
            return max(0.0, self.fixed_idle_w)
        return self.measured_idle_w or 0.0

    # -- inputs -------------------------------------------------------------------------------------------
    def add_step(self, step: StepRecord) -> None:
        if not step.requests:
            return
        if self.cursor is not None and step.start_s < self.cursor.t_s:
            self.unwindowed_s += min(step.end_s, self.cursor.t_s) - step.start_s
        self._steps.append(step)
        batch = len(step.requests)
        for rid, w in step.requests.items():
            acc = self._accs.setdefault(rid, _Acc())
            acc.steps += 1
            acc.batched_steps += 1 if batch > 1 else 0
            acc.batch_requests += batch
            acc.prefill_tokens += w.prefill_tokens
            acc.decode_tokens += w.decode_tokens
            acc.first_s = min(acc.first_s, step.start_s)
            acc.last_s = max(acc.last_s, step.end_s)

    def request_done(self, request_id: str) -> None:
        self._accs.setdefault(request_id, _Acc()).done = True

    def start_at(self, knot: Knot) -> None:
        """Begin the processed window at ``knot`` (the first knot given to ``advance`` otherwise)."""
        if self.cursor is None:
            self.cursor = self.origin = knot
            self._idle = _IdleAcc(knot.t_s)

    def advance(self, knots: Iterable[Knot], watermark_s: float = math.inf) -> int:
        """Process the intervals up to the last knot whose bracket ends before ``watermark_s``; returns how many."""
        done = 0
        for k in knots:
            if self.cursor is None:
                self.start_at(k)
                continue
            if k.t_s <= self.cursor.t_s:
                continue
            if k.t_s + k.delta_s > watermark_s:
                break
            self._interval(self.cursor, k)
            self.cursor = k
            done += 1
        if done:
            self._forget_steps()
        return done

    # -- outputs ------------------------------------------------------------------------------------------
    def is_final(self, request_id: str) -> bool:
        """Whether the request is done and the processed window has passed its last step (bracket included)."""
        acc = self._accs.get(request_id)
        if acc is None or not acc.done or self.cursor is None:
            return False
        return acc.steps == 0 or self.cursor.t_s - self.cursor.delta_s >= acc.last_s

    def knows(self, request_id: str) -> bool:
        return request_id in self._accs

    def last_step_s(self, request_id: str) -> float | None:
        """When the request's last recorded step ended (None before its first)."""
        acc = self._accs.get(request_id)
        return acc.last_s if acc is not None and math.isfinite(acc.last_s) else None

    @property
    def idle_since_s(self) -> float | None:
        """Where the idle bucket being filled starts (None before the window starts)."""
        return self._idle.start_s if self._idle is not None else None

    def figure(self, request_id: str, *, extrapolate_w: float | None = None) -> RequestEnergy | None:
        """The request's figures so far (final when ``is_final``). With ``extrapolate_w``, step time past the
        processed window is given that power, booked against the idle bucket's ``late_j``, where its later real shares
        go (so the stored figures still add up to the counter's delta)."""
        acc = self._accs.get(request_id)
        if acc is None:
            return None
        extra_j = extra_share_s = 0.0
        notes: list[str] = []
        if extrapolate_w is not None and not self.is_final(request_id):
            extra_j, extra_s, extra_share_s = self._uncovered(request_id, extrapolate_w)
            if extra_s > 0.0:
                notes.append(f"extrapolated {extra_s * 1000:.0f} ms of steps past the counter's last step")
            if not acc.reported and extra_j > 0.0 and self._idle is not None:
                # The figure already holds this estimate; the steps' real shares reach the idle bucket later
                # (late_j). Book the estimate against that bucket now, so stored requests + idle stay equal to
                # the counter's delta exactly: idle ends up holding (real shares - estimate).
                self._idle.late_j -= extra_j
                self._idle.energy_j -= extra_j
                self.idle_j -= extra_j
                self.requests_j += extra_j
            acc.reported = True
        pre, dec = acc.prefill_j, acc.decode_j
        if extra_j > 0.0:  # split like what was attributed (all decode when nothing was)
            share = pre / (pre + dec) if pre + dec > 0 else 0.0
            pre, dec = pre + extra_j * share, dec + extra_j * (1.0 - share)
        est = pre + dec
        lower = acc.lower_j + self.p_lo_w * extra_share_s
        upper = acc.upper_j + (max(self._p_hi(extrapolate_w) * extra_share_s, extra_j) if extra_share_s else 0.0)
        uncertainty: float | None = None
        if math.isfinite(upper):
            uncertainty = (max(est - lower, upper - est, 0.0) + self.meter.resolution_j * (2 + acc.touched)
                           + self.meter.relative_uncertainty * est)
        if self.unwindowed_s > 0.0 and acc.first_s < (self.origin.t_s if self.origin else math.inf):
            notes.append("steps before the counter's first reading are not attributed")
        if acc.whole_device:
            notes.append(WHOLE_DEVICE_NOTE)
        return RequestEnergy(request_id, pre, dec, lower, upper, uncertainty, acc.steps, acc.prefill_tokens,
                             acc.decode_tokens, acc.first_s, acc.last_s, extra_j, tuple(notes),
                             batched_steps=acc.batched_steps, batch_requests=acc.batch_requests)

    def pop(self, request_id: str) -> None:
        """Forget a request (its figure has been taken)."""
        acc = self._accs.get(request_id)
        if acc is not None:
            acc.reported = True
            if acc.done and (self.cursor is None or self.cursor.t_s - self.cursor.delta_s >= acc.last_s):
                del self._accs[request_id]

    def forget_older_than(self, t_s: float) -> int:
        """Drop final requests whose last step ended before ``t_s`` (figures nobody asked for). Returns how many."""
        old = [rid for rid, a in self._accs.items() if a.last_s < t_s and (a.done or a.steps == 0)
               and self.cursor is not None and self.cursor.t_s - self.cursor.delta_s >= a.last_s]
        for rid in old:
            del self._accs[rid]
        return len(old)

    def take_idle(self) -> IdleWindow | None:
        """The idle bucket since the last take (None when nothing was processed), and start a new one."""
        idle, cursor = self._idle, self.cursor
        if idle is None or cursor is None or idle.intervals == 0:
            return None
        self._idle = _IdleAcc(cursor.t_s)
        lower, upper = idle.lower_j, idle.upper_j
        u: float | None = None
        if math.isfinite(upper):
            u = (max(idle.energy_j - lower, upper - idle.energy_j, 0.0) + 2.0 * self.meter.resolution_j
                 + self.meter.relative_uncertainty * idle.energy_j)
        return IdleWindow(idle.start_s, cursor.t_s, idle.energy_j, lower, upper, u, idle.idle_s, idle.late_j,
                          idle.static_j, self.idle_w)

    @property
    def window_j(self) -> float:
        """The counter's delta over the processed window. Units: J."""
        if self.cursor is None or self.origin is None:
            return 0.0
        return self.cursor.energy_j - self.origin.energy_j

    @property
    def conservation_error_j(self) -> float:
        """|Σ requests + idle − counter delta| over the processed window: 0 up to rounding."""
        return abs(self.requests_j + self.idle_j - self.window_j)

    # -- the method ---------------------------------------------------------------------------------------
    def _p_hi(self, fallback_w: float | None = None) -> float:
        if self.p_hi_w is not None:
            return self.p_hi_w
        if self.highest_power_w > 0.0:
            return 2.0 * self.highest_power_w
        return 2.0 * fallback_w if fallback_w else math.inf

    def _interval(self, k0: Knot, k1: Knot) -> None:
        """Split one interval's ΔC over its steps' segments and their requests; the rest is idle.

        With an idle power known, the steps share the interval's energy above ``idle_w × length`` by time (the
        static rest stays idle); without one, ΔC is split by time between the steps and the time with none."""
        x0, x1 = k0.t_s, k1.t_s
        delta_c = k1.energy_j - k0.energy_j
        length = x1 - x0
        self.highest_power_w = max(self.highest_power_w, delta_c / length if length > 0 else 0.0)
        idle = self._idle
        assert idle is not None
        idle.intervals += 1
        reach0, reach1 = x0 - k0.delta_s, x1 + k1.delta_s
        near = [s for s in self._steps if s.end_s > reach0 and s.start_s < reach1]
        busy_s = self._busy_time(x0, x1, near) if length > 0 else 0.0
        idle_w = self.idle_w
        if not near and length > 0:
            self._idle_powers.append(delta_c / length)
            if len(self._idle_powers) >= IDLE_MIN_SAMPLES:
                self.measured_idle_w = max(0.0, statistics.median(self._idle_powers))
        if busy_s > 0.0 and idle_w > 0.0:
            # the interval's idle draw, and what the last one could not hold (its ΔC was under it: a knot's time
            # error moves energy between neighbouring intervals; carried once, so that it does not bias upwards)
            want_j = idle_w * length + self._static_owed_j
            static_j = min(max(want_j, 0.0), max(delta_c, 0.0))
            self._static_owed_j = min(want_j - static_j, idle_w * length)
            idle.static_j += min(idle_w * busy_s, static_j)
            self.static_j += min(idle_w * busy_s, static_j)
            step_j = self._split_by_time(x0, x1, (delta_c - static_j) * length / busy_s, near)
        else:
            idle_w = self._static_owed_j = 0.0
            step_j = self._split_by_time(x0, x1, delta_c, near) if length > 0 else {}
            self.whole_device_s += busy_s
        p_hi = self._p_hi()
        steps_lo = steps_hi = 0.0
        step_total = 0.0
        for i, st in enumerate(near):
            e = step_j.get(i, 0.0)
            lo, hi = interval_bounds(delta_c, x0, k0.delta_s, x1, k1.delta_s, st.start_s, st.end_s,
                                     self.p_lo_w, p_hi)
            if hi <= 0.0 and e <= 0.0:
                continue
            if idle_w > 0.0:  # bounds on the step's draw above idle (the tail after it, given to it, included)
                own_idle_j = idle_w * max(0.0, min(st.end_s, x1) - max(st.start_s, x0))
                lo, hi = max(0.0, lo - own_idle_j), max(e, hi - own_idle_j, 0.0)
            steps_lo += lo
            steps_hi += hi
            for rid, (f_pre, f_dec) in self.costs.request_parts(st).items():
                part = e * (f_pre + f_dec)
                acc = self._accs.setdefault(rid, _Acc())
                step_total += part
                if acc.reported:
                    idle.late_j += part
                    idle.energy_j += part
                    self.idle_j += part
                    continue
                acc.prefill_j += e * f_pre
                acc.decode_j += e * f_dec
                acc.lower_j += (f_pre + f_dec) * lo
                acc.upper_j += (f_pre + f_dec) * hi
                acc.touched += 1
                acc.whole_device = acc.whole_device or (idle_w == 0.0 and e > 0.0)
                self.requests_j += part
        idle_part = delta_c - step_total
        idle.energy_j += idle_part
        self.idle_j += idle_part
        idle.lower_j += max(0.0, delta_c - steps_hi) if math.isfinite(steps_hi) else 0.0
        idle.upper_j += max(0.0, delta_c - steps_lo)
        idle.idle_s += max(0.0, length - busy_s)

    @staticmethod
    def _split_by_time(x0: float, x1: float, delta_c: float, steps: Sequence[StepRecord]) -> dict[int, float]:
        """Each step's energy in ``[x0, x1]``: ΔC × its time there / the interval's length (shared equally where
        steps overlap). Keys: indices into ``steps``."""
        length = x1 - x0
        cuts = sorted({x0, x1, *(min(max(s.start_s, x0), x1) for s in steps),
                       *(min(max(s.end_s, x0), x1) for s in steps)})
        out: dict[int, float] = {}
        for s0, s1 in itertools.pairwise(cuts):
            if s1 <= s0:
                continue
            mid = 0.5 * (s0 + s1)
            active = [i for i, s in enumerate(steps) if s.start_s <= mid < s.end_s]
            if not active:
                continue
            seg_j = delta_c * (s1 - s0) / length / len(active)
            for i in active:
                out[i] = out.get(i, 0.0) + seg_j
        return out

    @staticmethod
    def _busy_time(x0: float, x1: float, steps: Sequence[StepRecord]) -> float:
        busy = 0.0
        cursor = x0
        for s in sorted(steps, key=lambda s: s.start_s):
            a, b = max(s.start_s, cursor), min(s.end_s, x1)
            if b > a:
                busy += b - a
                cursor = b
        return busy

    def _forget_steps(self) -> None:
        """Steps that no later interval can touch (they ended before the cursor's bracket)."""
        cursor = self.cursor
        if cursor is not None:
            edge = cursor.t_s - cursor.delta_s
            self._steps = [s for s in self._steps if s.end_s > edge]

    def _uncovered(self, request_id: str, power_w: float) -> tuple[float, float, float]:
        """(J, s, its share of those s) for the request's step time past the processed window, at ``power_w``
        (less the idle power, when one is known)."""
        edge = self.cursor.t_s if self.cursor is not None else -math.inf
        power_w = max(0.0, power_w - self.idle_w)
        extra_j = extra_s = share_s = 0.0
        for st in self._steps:
            if request_id not in st.requests or st.end_s <= edge:
                continue
            d = st.end_s - max(st.start_s, edge)
            f_pre, f_dec = self.costs.request_parts(st)[request_id]
            extra_j += power_w * d * (f_pre + f_dec)
            extra_s += d
            share_s += d * (f_pre + f_dec)
        return extra_j, extra_s, share_s


@dataclass
class StepAttribution:
    """``attribute_steps``' result. Units: J, s. ``requests`` by request id, in order of first step."""

    requests: dict[str, RequestEnergy]
    idle: IdleWindow | None
    window_j: float
    window_start_s: float
    window_end_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def requests_j(self) -> float:
        return math.fsum(r.energy_j for r in self.requests.values())

    @property
    def idle_j(self) -> float:
        return self.idle.energy_j if self.idle is not None else 0.0

    @property
    def conservation_error_j(self) -> float:
        return abs(self.requests_j + self.idle_j - self.window_j)


def attribute_steps(
    samples: Sequence[CounterSample],
    steps: Sequence[StepRecord],
    meter: MeterInfo,
    *,
    update_period_s: float,
    timing_slack_s: float = 0.0,
    lag_s: float = 0.0,
    costs: StepCosts | None = None,
    idle_w: float | None = None,
) -> StepAttribution:
    """Attribute a recorded trace: every interval between the samples' first and last knot, every step in it.

    The window is the knots' whole span, so ``Σ requests + idle = last knot − first knot`` exactly. Steps (or
    parts) outside it are not attributed (a note says how long). ``idle_w``: as ``StepAccounts`` takes it; by
    default the costs' (their calibration's), else 0 (no idle power: whole-device figures).
    """
    knots = find_knots(samples, update_period_s=update_period_s, timing_slack_s=timing_slack_s, lag_s=lag_s)
    if idle_w is None:
        idle_w = costs.idle_w if costs is not None and costs.idle_w is not None else 0.0
    accounts = StepAccounts(meter, costs, idle_w=idle_w)
    if knots:
        accounts.start_at(knots[0])
    for st in sorted(steps, key=lambda s: s.start_s):
        accounts.add_step(st)
        for rid in st.requests:
            accounts.request_done(rid)  # all steps are known up front
    accounts.advance(knots)
    order: OrderedDict[str, None] = OrderedDict()
    for st in sorted(steps, key=lambda s: s.start_s):
        for rid in st.requests:
            order.setdefault(rid, None)
    figures = {rid: f for rid in order if (f := accounts.figure(rid)) is not None}
    notes = [costs.note if costs is not None else TOKENS_NOTE]
    if accounts.whole_device_s > 0.0:
        notes.append(WHOLE_DEVICE_NOTE)
    end_s = knots[-1].t_s if knots else 0.0
    outside = math.fsum(max(0.0, s.end_s - max(s.start_s, end_s)) for s in steps) + accounts.unwindowed_s
    if outside > 0.0:
        notes.append(f"{outside * 1000:.0f} ms of steps outside the counter's window: not attributed")
    return StepAttribution(figures, accounts.take_idle(), accounts.window_j, knots[0].t_s if knots else 0.0,
                           end_s, notes)
