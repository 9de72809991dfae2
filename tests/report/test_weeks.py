"""Week boundaries in the developer's zone: ISO weeks, daylight-saving changes, zones west of UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.report.report_fixture import ALICE, rec

from greentrack.report.command import build_reports
from greentrack.report.weeks import local_zone, parse_week
from greentrack.store import Store


def _db(path: Path, stamps: dict[str, str]) -> Path:
    with Store(path) as store:
        for cid, ts in stamps.items():
            store.record(rec(cid, ts, prefill_j=0.5, decode_j=0.5, uri=f"file:///w/{cid}.py"))
    return path


def _ids(path: Path, week: str, tz: str) -> tuple[int, list[int]]:
    [report] = build_reports([path], developer=ALICE, week=week, tz=tz)
    return report["completions"], [d["completions"] for d in report["by_day"]]


def test_berlin_spring_forward(tmp_path: Path) -> None:
    """2026-W13 in Berlin: Monday 23 March 00:00 CET (UTC+1) to Monday 30 March 00:00 CEST (UTC+2)."""
    week = parse_week("2026-W13", local_zone("Europe/Berlin"))
    assert week.day_starts_utc()[0] == "2026-03-22T23:00:00.000000+00:00"
    assert week.day_starts_utc()[-1] == "2026-03-29T22:00:00.000000+00:00"  # Sunday had 23 hours
    db = _db(tmp_path / "g.db", {
        "w12-last": "2026-03-22T22:59:59Z",   # Sunday 22 March 23:59:59 CET
        "w13-first": "2026-03-22T23:00:00Z",  # Monday 00:00 CET
        "sun-early": "2026-03-28T23:30:00Z",  # Sunday 29 March 00:30 CET
        "sun-late": "2026-03-29T21:59:00Z",   # Sunday 23:59 CEST
        "w14-first": "2026-03-29T22:00:00Z",  # Monday 30 March 00:00 CEST
    })
    assert _ids(db, "2026-W13", "Europe/Berlin") == (3, [1, 0, 0, 0, 0, 0, 2])
    assert _ids(db, "2026-W12", "Europe/Berlin") == (1, [0, 0, 0, 0, 0, 0, 1])
    assert _ids(db, "2026-W14", "Europe/Berlin") == (1, [1, 0, 0, 0, 0, 0, 0])
    # the same rows read in UTC fall into other weeks and days
    assert _ids(db, "2026-W13", "UTC") == (3, [0, 0, 0, 0, 0, 1, 2])


def test_berlin_fall_back(tmp_path: Path) -> None:
    """2026-W43 ends Sunday 25 October, the 25-hour day (03:00 CEST → 02:00 CET)."""
    week = parse_week("2026-W43", local_zone("Europe/Berlin"))
    starts = week.day_starts_utc()
    assert starts[0] == "2026-10-18T22:00:00.000000+00:00"  # Monday 19 October 00:00 CEST
    assert starts[6] == "2026-10-24T22:00:00.000000+00:00"  # Sunday 00:00 CEST
    assert starts[7] == "2026-10-25T23:00:00.000000+00:00"  # Monday 26 October 00:00 CET
    db = _db(tmp_path / "g.db", {
        "sun-0030": "2026-10-24T22:30:00Z",   # Sunday 00:30 CEST
        "sun-0230a": "2026-10-25T00:30:00Z",  # Sunday 02:30 CEST (first pass)
        "sun-0230b": "2026-10-25T01:30:00Z",  # Sunday 02:30 CET (second pass)
        "sun-2330": "2026-10-25T22:30:00Z",   # Sunday 23:30 CET: would be Monday with the summer offset
        "mon": "2026-10-25T23:00:00Z",        # Monday 00:00 CET: W44
    })
    assert _ids(db, "2026-W43", "Europe/Berlin") == (4, [0, 0, 0, 0, 0, 0, 4])
    assert _ids(db, "2026-W44", "Europe/Berlin") == (1, [1, 0, 0, 0, 0, 0, 0])


def test_los_angeles_fall_back_and_week_start(tmp_path: Path) -> None:
    """Los Angeles leaves daylight time on Sunday 1 November 2026: W44 runs PDT→PST, W45 starts 08:00Z."""
    w44 = parse_week("2026-W44", local_zone("America/Los_Angeles"))
    assert w44.day_starts_utc()[0] == "2026-10-26T07:00:00.000000+00:00"
    assert w44.day_starts_utc()[-1] == "2026-11-02T08:00:00.000000+00:00"
    assert w44.end.isoformat() == "2026-11-02T00:00:00-08:00"
    db = _db(tmp_path / "g.db", {
        "w43": "2026-10-26T06:59:00Z",       # Sunday 25 October 23:59 PDT
        "w44-mon": "2026-10-26T07:00:00Z",   # Monday 00:00 PDT
        "w44-sun": "2026-11-02T07:59:00Z",   # Sunday 1 November 23:59 PST (Monday in UTC)
        "w45-mon": "2026-11-02T08:00:00Z",   # Monday 00:00 PST
    })
    assert _ids(db, "2026-W44", "America/Los_Angeles") == (2, [1, 0, 0, 0, 0, 0, 1])
    assert _ids(db, "2026-W45", "America/Los_Angeles") == (1, [1, 0, 0, 0, 0, 0, 0])
    assert _ids(db, "2026-W45", "UTC") == (2, [2, 0, 0, 0, 0, 0, 0])


def test_half_hour_zone_and_year_boundary(tmp_path: Path) -> None:
    """Kolkata (UTC+5:30); ISO week 2026-W53 runs from 28 December 2026 to 3 January 2027."""
    week = parse_week("2026-W53", local_zone("Asia/Kolkata"))
    assert [d.isoformat() for d in (week.days()[0], week.days()[-1])] == ["2026-12-28", "2027-01-03"]
    assert week.day_starts_utc()[0] == "2026-12-27T18:30:00.000000+00:00"
    db = _db(tmp_path / "g.db", {"a": "2026-12-27T18:29:00Z", "b": "2026-12-27T18:30:00Z",
                                 "c": "2027-01-03T18:29:00Z", "d": "2027-01-03T18:30:00Z"})
    assert _ids(db, "2026-W53", "Asia/Kolkata") == (2, [1, 0, 0, 0, 0, 0, 1])
    assert parse_week("2027-W01", local_zone("Asia/Kolkata")).previous().label == "2026-W53"


def test_default_week_is_now_in_the_zone() -> None:
    # Sunday 22 November 2026 23:30 UTC is already Monday 23 November (W48) in Berlin
    now = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    assert parse_week(None, local_zone("Europe/Berlin"), now=now).label == "2026-W48"
    assert parse_week(None, local_zone("America/Los_Angeles"), now=now).label == "2026-W47"
    assert parse_week(None, local_zone(None)).label  # the machine's zone works too


@pytest.mark.parametrize("bad", ["2026-W1", "W47", "2026W47", "2026-w47x", ""])
def test_malformed_weeks(bad: str) -> None:
    from greentrack.errors import UsageError

    with pytest.raises(UsageError, match="2026-W47"):
        parse_week(bad, local_zone("UTC"))
