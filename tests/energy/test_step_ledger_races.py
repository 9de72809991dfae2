"""The step ledger under the interleavings of the engine thread and the finaliser that could lose a request's figure.

``StepLedger`` is fed from the vLLM engine thread (``engine_busy``, ``add_step``, ``request_done``, ``engine_idle``:
``engine.vllm_steps.StepRecorder``) and asked from the pipeline's finaliser thread (``request_energy``) and the
server's idle accountant (``take_idle``). A request that was in recorded steps must never be answered None (the
pipeline would then store its own-phase estimate, not the step figure), whatever the order: asked before the step
that served it is handed over (its caller wakes inside the step, the record follows), asked long after the engine
went idle while others advanced and pruned the ledger, asked during a later busy period. Each test forces one order
with events on the real clock; the real ``Sampler`` reads a replayed counter (the only fake: the hardware counter).
Σ requests + idle must stay the counter's delta exactly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest
from tests.energy.fakes import ProfileBuilder, ReplayCounter

from greentrack.energy.monitor import EnergyMonitor
from greentrack.energy.step_attribution import RequestEnergy, RequestWork, StepCosts, StepRecord
from greentrack.energy.step_ledger import StepLedger

#: Whole-device split (no idle power): every step gets a share of the counter's energy, so figures are > 0.
WHOLE_DEVICE = StepCosts(idle_w=0.0)
PREFILL = RequestWork(prefill_tokens=40)
DECODE = RequestWork(decode_tokens=1, context_tokens=40)


@pytest.fixture
def ledger() -> Iterator[StepLedger]:
    counter = ReplayCounter(ProfileBuilder(idle_w=150.0).build(tail_s=120.0), seed=3)
    with EnergyMonitor(counter) as monitor:
        yield StepLedger(monitor, WHOLE_DEVICE)


class Finaliser:
    """``request_energy`` on its own thread, as ``Pipeline.finalize_later`` runs it; ``answered`` once it returns."""

    def __init__(self, ledger: StepLedger, request_id: str, timeout_s: float = 2.0) -> None:
        self.figure: RequestEnergy | None = None
        self.answered = threading.Event()
        self.asked_s = 0.0
        self.answered_s = 0.0

        def run() -> None:
            self.asked_s = time.monotonic()
            self.figure = ledger.request_energy(request_id, timeout_s=timeout_s)
            self.answered_s = time.monotonic()
            self.answered.set()

        self.thread = threading.Thread(target=run, name=f"finaliser[{request_id}]", daemon=True)
        self.thread.start()

    def result(self, timeout_s: float = 10.0) -> RequestEnergy | None:
        assert self.answered.wait(timeout_s), "request_energy never returned"
        return self.figure


def step(ledger: StepLedger, start_s: float, duration_s: float, requests: dict[str, RequestWork]) -> float:
    """One engine step of ``duration_s`` from ``start_s`` (slept through), handed to the ledger; returns its end."""
    time.sleep(max(0.0, start_s + duration_s - time.monotonic()))
    end_s = time.monotonic()
    ledger.add_step(StepRecord(start_s, end_s, requests))
    return end_s


def conserves(ledger: StepLedger) -> None:
    ledger.flush()
    t = ledger.totals()
    assert t.window_j > 0
    assert abs(t.requests_j + t.idle_j - t.window_j) <= 1e-9 * t.window_j, t


def test_asked_before_the_step_that_served_it_is_handed_over(ledger: StepLedger) -> None:
    # vLLM's engine thread wakes the caller inside ``engine.step()`` (``_handle``), then records the step
    # (``end_step``): a request that ended in its only step is unknown to the ledger when the finaliser asks.
    time.sleep(0.3)
    busy_s = ledger.engine_busy()
    finaliser = Finaliser(ledger, "only-step")
    time.sleep(1.3)  # the record comes late (a loaded engine thread): past the ledger's 1 s idle patience
    assert not finaliser.answered.is_set(), "answered before the step that served it was recorded"
    end_s = step(ledger, busy_s, 0.0, {"only-step": PREFILL, "other": PREFILL})
    ledger.request_done("only-step")
    time.sleep(0.1)
    end_s = step(ledger, end_s, 0.1, {"other": DECODE})
    ledger.request_done("other")
    ledger.engine_idle(end_s)
    figure = finaliser.result()
    assert figure is not None and figure.steps == 1 and figure.batched_steps == 1
    assert figure.energy_j > 0 and figure.extrapolated_j == 0.0
    other = ledger.request_energy("other")
    assert other is not None and other.steps == 2
    conserves(ledger)


def test_asked_long_after_the_engine_went_idle_while_others_pruned_the_ledger(ledger: StepLedger) -> None:
    # The finaliser is busy with earlier records; meanwhile the idle accountant takes windows (each advances the
    # ledger and forgets what it may) for longer than the ledger's 1 s of idle patience.
    time.sleep(0.3)
    busy_s = ledger.engine_busy()
    end_s = step(ledger, busy_s, 0.15, {"late": PREFILL, "early": PREFILL})
    ledger.request_done("early")
    end_s = step(ledger, end_s, 0.1, {"late": DECODE})
    ledger.request_done("late")
    ledger.engine_idle(end_s)
    early = ledger.request_energy("early")
    assert early is not None and early.steps == 1
    windows = []
    until_s = time.monotonic() + 1.5
    while time.monotonic() < until_s:
        windows.append(ledger.take_idle())
        time.sleep(0.05)
    assert any(w is not None for w in windows)
    figure = Finaliser(ledger, "late").result()
    assert figure is not None and figure.steps == 2 and figure.batched_steps == 1 and figure.energy_j > 0
    conserves(ledger)


def test_asked_during_a_later_busy_period(ledger: StepLedger) -> None:
    # Every step of the request was in a busy period that ended; the next one is running when it is asked.
    time.sleep(0.3)
    busy_s = ledger.engine_busy()
    end_s = step(ledger, busy_s, 0.1, {"first": PREFILL})
    end_s = step(ledger, end_s, 0.1, {"first": DECODE})
    ledger.request_done("first")
    ledger.engine_idle(end_s)
    time.sleep(1.2)
    busy_s = ledger.engine_busy()
    end_s = step(ledger, busy_s, 0.1, {"second": PREFILL})
    finaliser = Finaliser(ledger, "first")
    figure = finaliser.result(timeout_s=5.0)
    assert figure is not None and figure.steps == 2 and figure.batched_steps == 0 and figure.energy_j > 0
    assert figure.extrapolated_j == 0.0
    end_s = step(ledger, end_s, 0.1, {"second": DECODE})
    ledger.request_done("second")
    ledger.engine_idle(end_s)
    second = ledger.request_energy("second")
    assert second is not None and second.steps == 2
    conserves(ledger)


def test_a_request_in_no_recorded_step_is_answered_none(ledger: StepLedger) -> None:
    # What None means: the engine ended the request before any step served it (e.g. a time budget spent while it
    # waited behind another request's long step). Its caller then has no phase either: nothing to attribute.
    time.sleep(0.3)
    busy_s = ledger.engine_busy()
    end_s = step(ledger, busy_s, 0.1, {"running": PREFILL})
    ledger.request_done("never-ran")
    end_s = step(ledger, end_s, 0.1, {"running": DECODE})
    ledger.request_done("running")
    ledger.engine_idle(end_s)
    assert Finaliser(ledger, "never-ran").result() is None
    running = ledger.request_energy("running")
    assert running is not None and running.steps == 2
    conserves(ledger)
    assert math.isfinite(ledger.totals().idle_j)


def test_records_from_an_engine_process_that_arrive_after_the_result_are_waited_for(ledger: StepLedger) -> None:
    # With the engine core in its own process, the step records come over a socket of their own and can arrive after
    # vLLM's output for the request: after a quiet second, the ledger has heard nothing (not even "busy") when the
    # finaliser asks. Seen on two H200s (greentrack serve --data-parallel-size 2: 3 of 1 494 requests stored with
    # their own-phase estimate). Given when the request's first step started, it waits for the records.
    time.sleep(1.2)  # the engine idle and quiet for longer than the ledger's 1 s of patience
    first_s = time.monotonic()  # the request's prefill started here, in the engine process
    time.sleep(0.05)
    hurried = ledger.request_energy("unknown-yet", timeout_s=0.5)  # the old rule: taken for never recorded
    assert hurried is None
    figure: list[RequestEnergy | None] = []
    waiter = threading.Thread(target=lambda: figure.append(ledger.request_energy("late-records", first_step_s=first_s)))
    waiter.start()
    time.sleep(0.3)  # the channel delivers: busy (stamped in the engine process), the step, done, idle
    ledger.engine_busy(at_s=first_s)
    end_s = step(ledger, first_s, 0.0, {"late-records": PREFILL})
    ledger.request_done("late-records")
    ledger.engine_idle(end_s)
    waiter.join(timeout=10)
    assert figure and figure[0] is not None and figure[0].steps == 1 and figure[0].energy_j > 0
    # and a request that no step served is still answered None, once the records reach past its start
    assert ledger.request_energy("never-recorded", first_step_s=first_s) is None
    conserves(ledger)
