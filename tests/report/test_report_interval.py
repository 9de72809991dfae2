"""The week's energy interval in the report: completions' intervals summed linearly, the coverage stated only
when every one states it, else the worst-case bound (labelled), else none; exact figures in every format."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import pytest
from tests.report.report_fixture import ALICE, build_db, rec

from greentrack.record import CompletionRecord
from greentrack.report.command import build_reports
from greentrack.report.figures import week_interval
from greentrack.report.query import Range, Source
from greentrack.report.render import render

W47: dict[str, Any] = {"week": "2026-W47", "tz": "Europe/Berlin", "carbon_intensity": 400.0}
GPU = {"method": "attributed", "meter": "nvml:gpu0"}


def stated(cid: str, ts: str, *, prefill_j: float, decode_j: float, uncertainty_j: float, low_j: float,
           high_j: float, coverage: float = 0.9) -> CompletionRecord:
    return rec(cid, ts, prefill_j=prefill_j, decode_j=decode_j, uncertainty_j=uncertainty_j, interval_low_j=low_j,
               interval_high_j=high_j, interval_coverage=coverage, interval_basis="errors of completions of 30–100 ms",
               uri=f"file:///w/{cid}.py", **GPU)


#: Two GPU completions with 90 % intervals (Monday, Thursday) and a cached suggestion (exactly 0 J, Saturday).
S1 = stated("s1", "2026-11-16T08:00:00Z", prefill_j=0.5, decode_j=1.5, uncertainty_j=2.5, low_j=1.75, high_j=2.5)
S2 = stated("s2", "2026-11-19T08:00:00Z", prefill_j=0.25, decode_j=0.75, uncertainty_j=1.0, low_j=0.75, high_j=1.25)
CACHED = rec("s3", "2026-11-21T08:00:00Z", prefill_j=0.0, decode_j=0.0, uncertainty_j=0.0, outcome="cached",
             method="measured", meter="cache", uri="file:///w/s3.py")
#: A CPU-time estimate: its interval is the model's ±50 % range, which states no coverage.
ESTIMATE = rec("s4", "2026-11-20T08:00:00Z", prefill_j=0.25, decode_j=0.25, uncertainty_j=0.25, interval_low_j=0.25,
               interval_high_j=0.75, interval_coverage=None, method="estimated", meter="estimate:cpu-time",
               interval_basis="worst-case bound (CPU-time estimate: ±50 % model range, not a measurement)",
               uri="file:///w/s4.py")
#: A row stored without an interval or a bound (an older version, a meter whose uncertainty was unknown).
UNKNOWN = rec("s5", "2026-11-17T08:00:00Z", prefill_j=0.5, decode_j=0.5, uri="file:///w/s5.py")


def interval_of(tmp_path: Path, rows: list[CompletionRecord], **kw: Any) -> dict[str, Any]:
    db = build_db(tmp_path / "i.db", [(r, False) for r in rows], calibrations=False)
    (report,) = build_reports([db], developer=ALICE, **{**W47, **kw})
    assert report["energy_j"]["total"] == sum(r.total_j for r in rows)
    return dict(report["energy_j"]["interval"])


def test_stated_intervals_add_linearly_with_their_coverage(tmp_path: Path) -> None:
    # 1.75 + 0.75 + 0 = 2.5 J; 2.5 + 1.25 + 0 = 3.75 J; the cached 0 J is exact and keeps the coverage
    assert interval_of(tmp_path, [S1, S2, CACHED]) == {
        "low": 2.5, "high": 3.75, "coverage": 0.9, "basis": "90 % intervals summed linearly (errors of one cause)"}


def test_the_smallest_coverage_is_stated(tmp_path: Path) -> None:
    s2 = stated("s2", "2026-11-19T08:00:00Z", prefill_j=0.25, decode_j=0.75, uncertainty_j=1.0, low_j=0.5,
                high_j=1.5, coverage=0.95)
    assert interval_of(tmp_path, [S1, s2]) == {
        "low": 2.25, "high": 4.0, "coverage": 0.9, "basis": "90 % intervals summed linearly (errors of one cause)"}


def test_one_without_a_coverage_makes_it_the_worst_case_bound(tmp_path: Path) -> None:
    # bounds: s1 [max(0, 2 − 2.5), 4.5] = [0, 4.5]; s2 [0, 2]; cached [0, 0]; estimate [0.25, 0.75]
    assert interval_of(tmp_path, [S1, S2, CACHED, ESTIMATE]) == {
        "low": 0.25, "high": 7.25, "coverage": None,
        "basis": "worst-case bound: 1 of 4 completions have no stated-coverage interval"}


def test_one_without_interval_or_bound_leaves_it_unknown(tmp_path: Path) -> None:
    assert interval_of(tmp_path, [S1, S2, CACHED, ESTIMATE, UNKNOWN]) == {
        "low": None, "high": None, "coverage": None,
        "basis": "unknown: 1 of 5 completions have neither an interval nor a bound"}


def test_a_week_without_completions_has_none(tmp_path: Path) -> None:
    db = build_db(tmp_path / "i.db", [(S1, False)], calibrations=False)
    (report,) = build_reports([db], developer=ALICE, **{**W47, "week": "2026-W30"})
    assert report["energy_j"]["interval"] is None


@pytest.mark.parametrize("threads", [1, 2])
def test_same_sums_read_by_one_or_two_threads(tmp_path: Path, threads: int) -> None:
    db = build_db(tmp_path / "i.db", [(r, False) for r in (S1, S2, CACHED, ESTIMATE)], calibrations=False)
    days = [f"2026-11-{d:02d}T23:00:00.000000+00:00" for d in range(15, 23)]
    source = Source([db])
    try:
        facts = source.facts(Range(days[0], days[-1]), Range("2026-11-08T23:00:00Z", days[0]), days,
                             with_bins=False, threads=threads)
    finally:
        source.close()
    assert week_interval(facts[ALICE].groups) == {
        "low": 0.25, "high": 7.25, "coverage": None,
        "basis": "worst-case bound: 1 of 4 completions have no stated-coverage interval"}


def test_merged_files_count_each_completion_once(tmp_path: Path) -> None:
    a = build_db(tmp_path / "a.db", [(S1, False), (S2, False)], calibrations=False)
    b = build_db(tmp_path / "b.db", [(S2, True), (CACHED, False)], calibrations=False)  # s2 in both copies
    (report,) = build_reports([a, b], developer=ALICE, **W47)
    assert report["completions"] == 3
    assert report["energy_j"]["interval"] == {
        "low": 2.5, "high": 3.75, "coverage": 0.9, "basis": "90 % intervals summed linearly (errors of one cause)"}


def test_every_format_shows_it(tmp_path: Path) -> None:
    db = build_db(tmp_path / "i.db", [(r, False) for r in (S1, S2, CACHED)], calibrations=False)
    reports = build_reports([db], developer=ALICE, **W47)
    line = "90 % interval 2.50 J – 3.75 J (completions' intervals summed linearly: errors of one cause)"
    assert f"| Interval | {line} |" in render(reports, "md").splitlines()
    assert escape(line) in render(reports, "html")
    assert "90 % interval 2.50 J – 3.75 J" in render(reports, "table", width=200)
    assert json.loads(render(reports, "json"))[0]["energy_j"]["interval"]["coverage"] == 0.9
    bound = build_reports([build_db(tmp_path / "j.db", [(r, False) for r in (S1, ESTIMATE)], calibrations=False)],
                          developer=ALICE, **W47)
    assert ("| Interval | 250 mJ – 5.25 J (worst-case bound: 1 of 2 completions have no stated-coverage interval) |"
            in render(bound, "md").splitlines())
    # CSV stays one row per completion, each with its own interval columns
    header, first, *_ = render([], "csv", rows=[{"interval_low_j": 1.75, "interval_coverage": 0.9}]).splitlines()
    cols = header.split(",")
    assert first.split(",")[cols.index("interval_low_j")] == "1.75"
    assert first.split(",")[cols.index("interval_coverage")] == "0.9"
