"""The fair scheduler and the idle gaps, without a model: real threads, real futures, generations that only wait."""

from __future__ import annotations

import functools
import threading
import time

import pytest

from greentrack.energy.gaps import idle_gaps
from greentrack.engine.types import CancelToken, EngineResult
from greentrack.serve.scheduler import FairScheduler, QueueFull, SchedulerClosed


def _result(name: str) -> EngineResult:
    now = time.monotonic()
    return EngineResult(name, "", 0, 0, 0, [], now, now)


def test_a_burst_never_starves_another_developer() -> None:
    scheduler = FairScheduler()
    order: list[str] = []
    gate = threading.Event()

    def job(name: str) -> EngineResult:
        gate.wait(5)
        order.append(name)
        return _result(name)

    jobs = [scheduler.submit("alice", functools.partial(job, f"a{i}"), CancelToken()) for i in range(5)]
    jobs += [scheduler.submit("bob", lambda: job("b0"), CancelToken()),
             scheduler.submit("carol", lambda: job("c0"), CancelToken())]
    gate.set()
    for j in jobs:
        j.future.result(timeout=5)
    scheduler.close()
    # a0 was already running; then one each in turn: bob and carol wait one generation, not five
    assert order[:4] == ["a0", "a1", "b0", "c0"] or order[:4] == ["a0", "b0", "c0", "a1"]
    assert order.index("b0") <= 2 and order.index("c0") <= 3
    assert [o for o in order if o.startswith("a")] == ["a0", "a1", "a2", "a3", "a4"]


def test_cancelled_while_waiting_never_runs_and_queue_is_bounded() -> None:
    scheduler = FairScheduler(max_queued_per_developer=2)
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> EngineResult:
        gate.wait(5)
        ran.append(name)
        return _result(name)

    first = scheduler.submit("alice", lambda: job("first"), CancelToken())
    time.sleep(0.05)  # first holds the engine
    token = CancelToken()
    waiting = scheduler.submit("alice", lambda: job("waiting"), token)
    scheduler.submit("alice", lambda: job("third"), CancelToken())
    with pytest.raises(QueueFull):
        scheduler.submit("alice", lambda: job("fourth"), CancelToken())
    token.cancel()
    gate.set()
    assert first.future.result(timeout=5) is not None
    assert waiting.future.result(timeout=5) is None
    scheduler.close()
    assert ran == ["first", "third"]
    with pytest.raises(SchedulerClosed):
        scheduler.submit("bob", lambda: job("late"), CancelToken())


def test_idle_gaps_are_the_complement_of_the_phases() -> None:
    assert idle_gaps(0.0, 10.0, []) == [(0.0, 10.0)]
    assert idle_gaps(0.0, 10.0, [(2.0, 3.0), (2.5, 4.0), (8.0, 12.0)]) == [(0.0, 2.0), (4.0, 8.0)]
    assert idle_gaps(5.0, 10.0, [(1.0, 6.0)]) == [(6.0, 10.0)]
    assert idle_gaps(0.0, 1.0, [(0.0, 1.0)]) == []


def test_several_slots_run_at_once_and_a_burst_gets_only_its_share() -> None:
    """vLLM: 4 slots, alice bursts 6 first; once bob arrives, each may hold 4 // 2 = 2 slots."""
    scheduler = FairScheduler(slots=4)
    running: set[str] = set()
    peak: dict[str, int] = {}
    lock = threading.Lock()
    release = threading.Event()

    def job(name: str) -> EngineResult:
        with lock:
            running.add(name)
            for dev in ("a", "b"):
                peak[dev] = max(peak.get(dev, 0), sum(1 for n in running if n.startswith(dev)))
        release.wait(5)
        with lock:
            running.discard(name)
        return _result(name)

    alice = [scheduler.submit("alice", functools.partial(job, f"a{i}"), CancelToken()) for i in range(6)]
    deadline = time.monotonic() + 5
    while scheduler.running < 4 and time.monotonic() < deadline:  # alice alone: all four slots
        time.sleep(0.01)
    assert scheduler.running == 4 and peak["a"] == 4
    bob = [scheduler.submit("bob", functools.partial(job, f"b{i}"), CancelToken()) for i in range(3)]
    time.sleep(0.1)
    assert peak.get("b", 0) == 0  # every slot is taken: bob waits for one to free
    release.set()
    for j in alice + bob:
        assert j.future.result(timeout=5) is not None
    assert all(j.queue_s >= 0 for j in alice + bob)
    scheduler.close()


def test_a_developer_at_their_cap_lets_another_through() -> None:
    scheduler = FairScheduler(slots=2)
    started: list[str] = []
    gates = {name: threading.Event() for name in ("a0", "a1", "a2", "b0")}

    def job(name: str) -> EngineResult:
        started.append(name)
        gates[name].wait(5)
        return _result(name)

    jobs = {"a0": scheduler.submit("alice", lambda: job("a0"), CancelToken())}
    time.sleep(0.05)
    jobs["b0"] = scheduler.submit("bob", lambda: job("b0"), CancelToken())
    jobs["a1"] = scheduler.submit("alice", lambda: job("a1"), CancelToken())
    time.sleep(0.1)
    assert started == ["a0", "b0"]  # alice holds 1 = 2 slots // 2 developers: bob's comes first
    gates["b0"].set()
    jobs["b0"].future.result(timeout=5)
    time.sleep(0.1)
    assert started == ["a0", "b0", "a1"]  # bob gone: alice may hold both slots
    for gate in gates.values():
        gate.set()
    for j in jobs.values():
        j.future.result(timeout=5)
    scheduler.close()


def test_a_release_that_lifts_a_cap_starts_every_job_it_makes_runnable() -> None:
    """Each event wakes one idle worker, never all of them; a worker that took a job wakes the next. Bob leaving lifts
    Alice's cap from 4 to 8: her three capped jobs must all start then, while her first four still run."""
    scheduler = FairScheduler(slots=8)
    hold_alice, hold_bob = threading.Event(), threading.Event()
    started: list[str] = []
    lock = threading.Lock()

    def job(name: str, gate: threading.Event) -> EngineResult:
        with lock:
            started.append(name)
        gate.wait(10)
        return _result(name)

    alice = [scheduler.submit("alice", functools.partial(job, f"a{i}", hold_alice), CancelToken()) for i in range(7)]
    bob = scheduler.submit("bob", functools.partial(job, "b0", hold_bob), CancelToken())
    deadline = time.monotonic() + 5
    while len(started) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(started) == ["a0", "a1", "a2", "a3", "b0"], started  # Alice capped at 8 // 2 = 4
    assert scheduler.depth == 3
    hold_bob.set()
    bob.future.result(timeout=5)
    deadline = time.monotonic() + 5
    while len(started) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(started) == ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "b0"], started
    assert not any(j.future.done() for j in alice)  # the first four still ran: the three started on Bob's release
    hold_alice.set()
    for j in alice:
        j.future.result(timeout=5)
    scheduler.close()
