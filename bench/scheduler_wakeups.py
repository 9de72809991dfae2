"""The fair scheduler's wake-ups, side by side: one idle worker per event (greentrack's) vs every worker (before).

    PYTHONPATH=server .venv/bin/python bench/scheduler_wakeups.py [--developers 128] [--seconds 5]

N developers each submit a job, wait for it and submit the next (a closed loop, as bench/load.py's simulated
developers do through the server); a job holds its slot for a few milliseconds without the GIL (the engine's time),
while ``--busy-threads`` threads run Python all along (the server's engine threads, HTTP and energy threads, which
take the GIL from every woken worker for up to Python's 5 ms switch interval).
For 128 and 256 slots (one and two replicas of ``--max-num-seqs 128``), it prints the time ``submit`` takes (the
scheduler's lock: the request's way to the scheduler, ``to_scheduler`` in the server's timings) and the hand-over
from queued to started, p50 / p95, and the ratio of the old rule's to the new one's. Real threads and the real
``FairScheduler``; the old rule is the same class with ``notify_all`` on every event.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections.abc import Callable

from greentrack.engine.types import CancelToken, EngineResult
from greentrack.serve.scheduler import FairScheduler, Job


class WakeAll(FairScheduler):
    """The rule before 2026-11-27: every queued job and every released slot woke every idle worker."""

    def submit(self, developer: str, run: Callable[[], EngineResult], cancel: CancelToken) -> Job:
        job = super().submit(developer, run, cancel)
        with self._cond:
            self._cond.notify_all()
        return job

    def _release(self, job: Job) -> None:
        super()._release(job)
        with self._cond:
            self._cond.notify_all()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(kind: type[FairScheduler], slots: int, developers: int, seconds: float, job_s: float, busy_threads: int
        ) -> dict[str, float]:
    """Submit-time and hand-over percentiles (ms) for one scheduler under ``developers`` closed loops."""
    scheduler = kind(slots=slots, max_queued_per_developer=4)
    submit_ms: list[float] = []
    handover_ms: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def engine() -> EngineResult:
        time.sleep(job_s * random.uniform(0.5, 1.5))
        now = time.monotonic()
        return EngineResult("j", "", 0, 0, 0, [], now, now)

    def developer(name: str) -> None:
        while time.monotonic() < stop:
            t0 = time.monotonic()
            job = scheduler.submit(name, engine, CancelToken())
            t1 = time.monotonic()
            job.future.result(timeout=30)
            with lock:
                submit_ms.append((t1 - t0) * 1000.0)
                if job.started_s is not None:
                    handover_ms.append((job.started_s - job.queued_s) * 1000.0)
            time.sleep(random.uniform(0.05, 0.25))  # typing until the next request

    def busy() -> None:
        x = 0
        while time.monotonic() < stop:
            for i in range(1000):
                x += i

    threads = [threading.Thread(target=developer, args=(f"dev{i}",)) for i in range(developers)]
    threads += [threading.Thread(target=busy) for _ in range(busy_threads)]
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu_s = time.process_time() - cpu0
    scheduler.close()
    return {"jobs": float(len(submit_ms)), "submit_p50": _pct(submit_ms, 0.5), "submit_p95": _pct(submit_ms, 0.95),
            "handover_p50": _pct(handover_ms, 0.5), "handover_p95": _pct(handover_ms, 0.95),
            "handover_mean": statistics.fmean(handover_ms) if handover_ms else float("nan"),
            "cpu_s": cpu_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--developers", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--job-ms", type=float, default=30.0, help="mean time a job holds its slot")
    parser.add_argument("--busy-threads", type=int, default=0,
                        help="threads running Python all along (their CPU time is in the CPU column)")
    args = parser.parse_args()
    print(f"{args.developers} developers, {args.seconds:g} s per run, jobs of ~{args.job_ms:g} ms, "
          f"{args.busy_threads} busy thread(s)")
    print("| slots | wake-ups | jobs | submit p50 / p95 ms | queued → started p50 / p95 ms | CPU ms per job |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for slots in (128, 256):
        results = {}
        for name, kind in (("every worker (before)", WakeAll), ("one worker (now)", FairScheduler)):
            r = run(kind, slots, args.developers, args.seconds, args.job_ms / 1000.0, args.busy_threads)
            results[name] = r
            print(f"| {slots} | {name} | {r['jobs']:.0f} | {r['submit_p50']:.3f} / {r['submit_p95']:.3f} | "
                  f"{r['handover_p50']:.3f} / {r['handover_p95']:.3f} | {1000.0 * r['cpu_s'] / r['jobs']:.3f} |")
        old, new = results["every worker (before)"], results["one worker (now)"]
        cpu_ratio = (old["cpu_s"] / old["jobs"]) / max(new["cpu_s"] / new["jobs"], 1e-12)
        print(f"| {slots} | ratio before / now | | {old['submit_p95'] / max(new['submit_p95'], 1e-9):.1f}× (p95) | "
              f"{old['handover_p95'] / max(new['handover_p95'], 1e-9):.1f}× (p95) | {cpu_ratio:.1f}× |")


if __name__ == "__main__":
    main()
