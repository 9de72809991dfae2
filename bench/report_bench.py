"""Benchmark: ``greentrack report`` over 1 million completions in the reported week (target: under 5 s).

Builds the file through ``Store`` (schema, WAL, indexes) and fills it with ``executemany``: seeded random rows
in time order, 1,000,000 in the reported week (2026-W47, Europe/Berlin) and 100,000 in the week before,
20 developers, 40 files each, 4 models, 5 languages, 3 methods, 4 outcomes. Then times the report for every
developer (``--all``) and for one, rendered in every format, and the report's queries one by one (the week's
sums on one connection and on two threads), side by side in one run.

Usage: ``.venv/bin/python bench/report_bench.py [--rows 1000000] [--keep PATH]``
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from greentrack.report.command import build_reports, select
from greentrack.report.query import bins_sql, open_source, previous_sql
from greentrack.report.render import render
from greentrack.store import Store
from greentrack.store.schema import COMPLETION_COLUMNS

WEEK = "2026-W47"
TZ = "Europe/Berlin"


def fill(path: Path, rows: int, previous: int, seed: int = 7) -> float:
    """``rows`` completions in W47 and ``previous`` in W46, in time order (as a store fills up), with
    ``next_gap_ms`` as ``Store.record`` keeps it."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 8, 23, 0, tzinfo=UTC)  # Monday of W46, Berlin midnight
    week_s = 7 * 86400
    offsets = sorted([rng.random() * week_s for _ in range(previous)]
                     + [week_s + rng.random() * week_s for _ in range(rows)])
    models = ["Qwen2.5-Coder-1.5B", "Qwen2.5-Coder-0.5B", "SmolLM2-135M", "StarCoder2-3B"]
    methods = ["measured", "attributed", "estimated"]
    outcomes = ["shown", "shown", "shown", "cancelled", "empty", "error"]
    langs = ["python", "typescript", "rust", "go", "markdown"]
    t0 = time.perf_counter()
    with Store(path) as store:
        batch: list[dict[str, object]] = []
        last: dict[tuple[str, str], dict[str, object]] = {}  # (developer, uri) → its latest row
        for i, offset_s in enumerate(offsets):
            prompt = rng.randint(16, 4096)
            out = rng.randint(1, 64)
            pre = prompt * 0.002
            dec = out * 0.9
            latency_ms = 20.0 + 25.0 * out
            ts = start + timedelta(seconds=offset_s)
            accepted = 1 if rng.random() < 0.3 else 0
            dev, uri = f"dev{rng.randrange(20):02d}@example.com", f"file:///w/{rng.randrange(40)}.py"
            row: dict[str, object] = {
                "completion_id": f"b{i:08d}", "uri": uri, "language_id": langs[i % 5],
                "model": models[i % 4], "backend": "transformers", "device": "cuda:0", "prompt_tokens": prompt,
                "reused_prompt_tokens": prompt // 2, "completion_tokens": out, "prefill_ms": 20.0,
                "decode_ms": 25.0 * out, "latency_ms": latency_ms, "prefill_j": pre, "decode_j": dec,
                "total_j": pre + dec, "method": methods[i % 3], "meter": "bench", "uncertainty_j": None,
                "co2e_g": 0.0, "outcome": outcomes[i % 6], "ts": ts.isoformat(timespec="microseconds"),
                "developer": dev, "accepted": accepted,
                "accepted_ts": ts.isoformat(timespec="microseconds") if accepted else None, "text": None,
                "next_gap_ms": None, "_start_s": offset_s - latency_ms / 1e3,
            }
            prev = last.get((dev, uri))
            if prev is not None:
                prev["next_gap_ms"] = (offset_s - latency_ms / 1e3 - float(prev["_start_s"])) * 1e3  # type: ignore[arg-type]
            last[(dev, uri)] = row
            batch.append(row)
        cols = [*COMPLETION_COLUMNS, "next_gap_ms"]
        sql = f"INSERT INTO completions ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"
        for k in range(0, len(batch), 50_000):
            with store.atomic():
                store.conn.executemany(sql, batch[k:k + 50_000])
        assert store.count() == rows + previous
    return time.perf_counter() - t0


def timed(label: str, fn: object, results: list[tuple[str, float, float]]) -> object:
    """Run ``fn``; record its wall time and this process's CPU time (all threads), in seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    value = fn()  # type: ignore[operator]
    results.append((label, time.perf_counter() - t0, time.process_time() - c0))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="completions in the reported week")
    parser.add_argument("--previous", type=int, default=100_000, help="completions in the week before")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated database here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="greentrack-bench-"))
    path = args.keep or folder / "bench.db"
    if not path.exists():
        print(f"filling {path} with {args.rows:,} completions…", flush=True)
        print(f"  fill: {fill(path, args.rows, args.previous):.1f} s")
    results: list[tuple[str, float, float]] = []
    reports = timed("report --all, build (20 developers)",
                    lambda: build_reports([path], week=WEEK, all_developers=True, tz=TZ), results)
    timed("  + render json", lambda: render(reports, "json"), results)  # type: ignore[arg-type]
    timed("  + render table", lambda: render(reports, "table"), results)  # type: ignore[arg-type]
    timed("  + render html", lambda: render(reports, "html"), results)  # type: ignore[arg-type]
    timed("report, one developer, build",
          lambda: build_reports([path], week=WEEK, developer="dev03@example.com", tz=TZ), results)
    sel = select(week=WEEK, developer=None, all_developers=True, tz=TZ)
    with open_source([path]) as source:
        for threads in (1, 2):
            timed(f"  query: week sums + week before, {threads} thread(s)",
                  lambda t=threads: source.facts(sel.this_week(), sel.previous_week(), sel.boundaries(),
                                                 with_bins=False, threads=t), results)
        timed("  query: the week before (totals)",
              lambda: source.sums(previous_sql(source.table, sel.previous_week())), results)
        timed("  query: length bins (only with calibrations of 2+ models)",
              lambda: source.sums(bins_sql(source.table, sel.this_week())), results)
    wall = sum(w for _, w, _ in results[:4])
    cpu = sum(c for _, _, c in results[:4])
    print(f"\n{args.rows:,} completions in {WEEK} ({TZ}) + {args.previous:,} the week before; "
          f"{len(reports)} reports; {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs usable, "  # type: ignore[arg-type]
          f"load average {os.getloadavg()[0]:.2f}")
    width = max(len(label) for label, _, _ in results)
    print(f"  {'step':<{width}}  {'wall':>7}  {'CPU':>7}")
    for label, w, c in results:
        print(f"  {label:<{width}}  {w:6.2f}s  {c:6.2f}s")
    print(f"\nreport --all, built and rendered as json, table and html: {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(target < 5 s): {'OK' if wall < 5 else 'over 5 s of wall time'}")


if __name__ == "__main__":
    main()
