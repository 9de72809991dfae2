"""``greentrack report`` on a database with known rows: exact figures in every format, weeks, merges, bad files."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tests.report.report_fixture import ALICE, BOB, EXPECTED_ALICE, ROWS, build_db, calibration, rec

from greentrack.errors import GreentrackError, StoreError, UsageError
from greentrack.report.command import build_reports, export_rows, run_report
from greentrack.report.render import render
from greentrack.report.tips import calibrated_energy_j, readable_calibrations
from greentrack.store import SCHEMA_VERSION, Store
from greentrack.store.schema import EXPORT_COLUMNS, normalize_ts
from greentrack.units import fmt_energy

W47: dict[str, Any] = {"week": "2026-W47", "tz": "Europe/Berlin", "carbon_intensity": 400.0}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return build_db(tmp_path / "team.db")


def alice(db: Path, **kw: Any) -> dict[str, Any]:
    reports = build_reports([db], developer=ALICE, **{**W47, **kw})
    assert len(reports) == 1
    return reports[0]


def test_json_figures_are_exact(db: Path) -> None:
    report = alice(db)
    assert report == EXPECTED_ALICE
    # the contract's keys, all present
    for key in ("developer", "week", "from", "to", "completions", "accepted", "acceptance_rate", "energy_j",
                "j_per_completion", "j_per_accepted", "co2e_g", "carbon_intensity_g_per_kwh", "method_share",
                "by_day", "by_model", "by_language", "previous_week", "tips"):
        assert key in report
    assert set(report["energy_j"]) == {"total", "prefill", "decode", "wasted", "interval"}
    text = render([report], "json", as_list=False)
    assert json.loads(text) == EXPECTED_ALICE


def test_all_developers_and_one_with_nothing_accepted(db: Path) -> None:
    reports = build_reports([db], all_developers=True, **W47)
    assert [r["developer"] for r in reports] == [ALICE, BOB]
    assert reports[0] == EXPECTED_ALICE
    bob = reports[1]
    assert (bob["completions"], bob["accepted"], bob["acceptance_rate"]) == (1, 0, 0.0)
    assert bob["j_per_accepted"] is None and bob["j_per_completion"] == 1.0
    assert bob["energy_j"] == {"total": 1.0, "prefill": 0.25, "decode": 0.75, "wasted": 1.0, "interval": {
        "low": None, "high": None, "coverage": None,
        "basis": "unknown: 1 of 1 completions have neither an interval nor a bound"}}
    assert bob["previous_week"] is None
    assert bob["tips"][0].startswith("100.0% of this week's energy (1.00 J) went to 1 suggestion(s) never accepted")
    assert json.loads(render(reports, "json")) == reports


def test_empty_week(db: Path) -> None:
    report = alice(db, week="2026-W30")
    assert report["completions"] == 0 and report["accepted"] == 0
    assert report["acceptance_rate"] is None and report["j_per_completion"] is None
    assert report["j_per_accepted"] is None
    assert report["energy_j"] == {"total": 0.0, "prefill": 0.0, "decode": 0.0, "wasted": 0.0, "interval": None}
    assert [d["completions"] for d in report["by_day"]] == [0] * 7
    assert report["by_model"] == [] and report["tips"] == [] and report["previous_week"] is None
    assert build_reports([db], all_developers=True, week="2026-W30", tz="Europe/Berlin") == []
    for fmt in ("table", "md", "html", "json", "csv"):
        assert render([], fmt)
    assert "No completions" in render([], "table")
    assert render([], "json", as_list=False).strip() == "null"
    assert "No tips this week." in render([report], "md")


def test_markdown(db: Path) -> None:
    md = render([alice(db)], "md")
    for line in (
        "# greentrack report — alice@example.com — 2026-W47",
        "| Completions | 6 (2 accepted, 33.3%) |",
        "| Energy | 7.88 J (prefill 1.88 J, decode 6.00 J) |",
        "| Interval | unknown: 6 of 6 completions have neither an interval nor a bound |",
        "| Wasted | 2.88 J on suggestions never accepted |",
        "| Per completion | 1.31 J |",
        "| Per accepted | 3.94 J |",
        "| CO2e | 875 µg at 400 gCO2e/kWh |",
        "| Method | measured 38.1%, attributed 57.1%, estimated 4.8% |",
        "| Previous week | 2026-W46: 2 completions, 1 accepted, 4.50 J |",
        "| 2026-11-16 | 4 | 2 | 7.50 J |",
        "| 2026-11-18 | 1 | 0 | 125 mJ |",
        "| m-big | 4 | 2 | 7.50 J |",
        "| typescript | 1 | 0 | 125 mJ |",
        "- " + EXPECTED_ALICE["tips"][0],
    ):
        assert line in md.splitlines(), line


def test_table(db: Path) -> None:
    text = render([alice(db)], "table", width=120)
    assert "greentrack — alice@example.com — 2026-W47 (2026-11-16 … 2026-11-22, Europe/Berlin)" in text
    assert "6 (2 accepted, 33.3%)" in text and "7.88 J (prefill 1.88 J, decode 6.00 J)" in text
    day_lines = [line for line in text.splitlines() if line.strip().startswith("2026-11-")]
    assert len(day_lines) == 7
    monday = next(line for line in day_lines if "2026-11-16" in line)
    wednesday = next(line for line in day_lines if "2026-11-18" in line)
    assert monday.count("█") == 30 and "7.50 J" in monday  # the peak day fills the bar
    assert "125 mJ" in wednesday and wednesday.count("█") == 0  # 0.125 / 7.5 of 30 cells: an eighth-block only
    assert "Tips" in text and "m-small would have used" in text


def test_csv_exports_every_stored_column_but_text(db: Path) -> None:
    rows = export_rows([db], developer=ALICE, week="2026-W47", tz="Europe/Berlin")
    text = render([], "csv", rows=rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["completion_id"] for r in parsed] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert list(parsed[0]) == list(EXPORT_COLUMNS) and "text" not in parsed[0]
    r4 = parsed[3]
    assert (r4["total_j"], r4["prefill_j"], r4["method"], r4["accepted"]) == ("3.0", "0.5", "attributed", "1")
    assert r4["ts"] == "2026-11-16T10:00:00.650000+00:00"
    assert r4["accepted_ts"] == "2026-11-20T12:00:00.000000+00:00"
    assert float(parsed[1]["next_gap_ms"]) == pytest.approx(250.0, abs=0.1)
    assert parsed[0]["uncertainty_j"] == ""


def test_html_is_self_contained(db: Path) -> None:
    html = render([alice(db)], "html")
    assert html.startswith("<!DOCTYPE html>")
    for needle in ('<svg id="chart-days-0"', '<svg id="chart-models-0"', '<svg id="chart-methods-0"',
                   'class="bar-decode"', "7.88 J", "alice@example.com", "m-small would have used"):
        assert needle in html
    assert html.count('class="bar-prefill"') == 3  # three days with energy
    for forbidden in ("http://", "https://", "<script", "@import", "src="):
        assert forbidden not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_run_report_writes_every_format(db: Path, tmp_path: Path) -> None:
    for fmt in ("table", "md", "json", "csv", "html"):
        out = tmp_path / "out" / f"report.{fmt}"
        console = Console(file=io.StringIO(), width=100)
        code = run_report([db], week="2026-W47", developer=ALICE, all_developers=False, fmt=fmt, out=out,
                          tz="Europe/Berlin", carbon_intensity=400.0, console=console)
        assert code == 0 and out.stat().st_size > 200
        assert f"report written to {out}" in console.file.getvalue()  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == EXPECTED_ALICE
    assert (tmp_path / "out" / "report.csv").read_text().count("\n") == 7
    console = Console(file=io.StringIO(), width=100)
    assert run_report([db], week="2026-W47", developer=None, all_developers=True, fmt="json", out=None,
                      tz="Europe/Berlin", carbon_intensity=400.0, console=console) == 0
    assert [r["developer"] for r in json.loads(console.file.getvalue())] == [ALICE, BOB]  # type: ignore[attr-defined]


def test_default_developer_and_intensity_from_environment(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENTRACK_DEVELOPER", BOB)
    monkeypatch.setenv("GREENTRACK_CARBON_INTENSITY", "FRA")
    [report] = build_reports([db], week="2026-W47", tz="Europe/Berlin")
    assert report["developer"] == BOB
    assert report["carbon_intensity_g_per_kwh"] == 56.039  # CodeCarbon's figure for France
    assert report["co2e_g"] == pytest.approx(1.0 / 3.6e6 * 56.039, rel=1e-6)


def test_this_week_by_default(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    path = tmp_path / "now.db"
    with Store(path) as store:
        store.record(rec("now", datetime.now(UTC).isoformat(), prefill_j=0.5, decode_j=0.5, developer=BOB))
    [report] = build_reports([path], developer=BOB, tz="UTC")
    assert report["completions"] == 1
    assert report["week"] == "{}-W{:02d}".format(*datetime.now(UTC).isocalendar()[:2])


def test_usage_errors(db: Path) -> None:
    for week in ("2026-47", "2026-W7", "26-W47", "2026-W00", "2026-W54", "2025-W53"):
        with pytest.raises(UsageError):
            build_reports([db], week=week)
    assert build_reports([db], week="2026-W53", developer=ALICE)[0]["week"] == "2026-W53"  # 2026 has 53 weeks
    with pytest.raises(UsageError, match="time zone"):
        build_reports([db], week="2026-W47", tz="Mars/Olympus")
    with pytest.raises(UsageError, match="exclude"):
        build_reports([db], developer=ALICE, all_developers=True)
    with pytest.raises(UsageError, match="--format"):
        run_report([db], week=None, developer=None, all_developers=False, fmt="pdf", out=None)
    with pytest.raises(UsageError, match="no database"):
        build_reports([db.parent / "missing.db"])
    assert issubclass(UsageError, GreentrackError)


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_corrupt_and_foreign_files_fail_cleanly_untouched(tmp_path: Path, db: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    for bad, message in ((corrupt, "not an SQLite database"), (foreign, "another program")):
        before = _snapshot(bad)
        with pytest.raises(StoreError, match=message):
            build_reports([db, bad], all_developers=True, **W47)
        with pytest.raises(GreentrackError):
            run_report([bad], week="2026-W47", developer=None, all_developers=False, fmt="json", out=None)
        assert _snapshot(bad) == before


def test_older_schema_is_migrated_and_reported(tmp_path: Path) -> None:
    from tests.store.frozen import V1_SQL

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SQL)
    v1_columns = [r[1] for r in conn.execute("PRAGMA table_info(completions)")]
    for record, accepted in ROWS:
        row = record.row()
        row["ts"] = normalize_ts(row["ts"])
        row["accepted"] = int(accepted)
        row["accepted_ts"] = "2026-11-20T12:00:00.000000+00:00" if accepted else None
        conn.execute(f"INSERT INTO completions ({', '.join(v1_columns)}) VALUES ({', '.join('?' * len(v1_columns))})",
                     [row[c] for c in v1_columns])
    conn.commit()
    conn.close()
    report = alice(path)
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
    expected = {k: v for k, v in EXPECTED_ALICE.items() if k != "tips"}
    assert {k: v for k, v in report.items() if k != "tips"} == expected
    # no calibrations in a v1 file: every tip but the model comparison, the debounce one from backfilled gaps
    assert report["tips"] == [t for t in EXPECTED_ALICE["tips"] if "would have used" not in t]


def test_team_merge_of_two_files_dedupes(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    alice_rows = [r for r in ROWS if r[0].developer == ALICE]
    first = alice_rows[:3]  # r1–r3
    # the second file holds r3 again (a copy taken after acceptance elsewhere) and the rest
    second = [(alice_rows[2][0], True), *alice_rows[3:]]
    build_db(team / "a.db", first, calibrations=False)
    build_db(team / "b.db", second + [r for r in ROWS if r[0].developer == BOB])
    reports = build_reports([team / "a.db", team / "b.db"], all_developers=True, **W47)
    merged = reports[0]
    assert merged["developer"] == ALICE and merged["completions"] == 6  # r3 counted once
    assert merged["accepted"] == 3  # r3's acceptance from the second copy counts
    assert merged["energy_j"]["total"] == 7.875
    assert merged["energy_j"]["wasted"] == pytest.approx(2.875 - 1.5)
    assert build_reports([team], all_developers=True, **W47) == reports  # a folder of *.db
    assert [r["developer"] for r in reports] == [ALICE, BOB]


def test_calibrated_energy_by_bins() -> None:
    from greentrack.energy.calibration import Calibration, CalibrationPoint

    doc = calibration("m", 1.0, 1.0)
    doc["points"] = [asdict(CalibrationPoint(512, 15, 0.1, 0.2, 1.0, 1.5, output_tokens=16))]
    cal = Calibration.from_dict(doc)
    assert calibrated_energy_j(cal, 512, 16) == 2.5  # the measured bin
    assert calibrated_energy_j(cal, 1024, 16) == 1024 + 16  # no such bin: the linear fit
    fit = Calibration.from_dict({**calibration("m", 0.001, 0.5), "prefill_fixed_j": 0.25})
    assert calibrated_energy_j(fit, 1000, 4) == 3.25


def test_tips_read_calibrations_through_from_dict_and_skip_malformed_ones() -> None:
    good = calibration("m", 0.001, 0.1)
    missing = {k: v for k, v in good.items() if k != "j_per_decode_token"}
    old_alias_only = {**missing, "decode_j_per_token": 0.1}  # a key nothing writes: not read
    not_finite = {**good, "idle_w": "nan"}
    assert [c.model for c in readable_calibrations([missing, good, old_alias_only, not_finite, {}])] == ["m"]


def test_model_tip_from_real_calibration_documents(tmp_path: Path) -> None:
    """``Calibration.to_dict`` documents (as ``greentrack calibrate`` stores them) drive the model comparison."""
    from greentrack.energy.calibration import Calibration, CalibrationPoint

    path = build_db(tmp_path / "g.db", calibrations=False)
    with Store(path) as store:
        for model, scale in (("m-big", 1.0), ("m-small", 0.25)):
            cal = Calibration(
                source_meter="nvml", device="cpu", model=model, host="h1", j_per_prompt_token=0.002 * scale,
                j_per_decode_token=0.2 * scale, prefill_w=100.0, decode_w=80.0, idle_w=10.0, fit_error=0.05,
                n_points=1, prefill_fixed_j=0.5 * scale, decode_fixed_j=0.0,
                points=[CalibrationPoint(512, 7, 0.1, 0.2, 1.0 * scale, 1.5 * scale, output_tokens=8)],
            )
            store.save_calibration(cal.to_dict())
    tips = alice(path)["tips"]
    model_tips = [t for t in tips if "would have used" in t]
    assert len(model_tips) == 1
    assert model_tips[0].startswith("m-small would have used ≈75.0% less energy than m-big on cpu for this week's "
                                    "4 completion(s), ≈5.63 J (71.4% of the week)")


def test_energy_units() -> None:
    assert [fmt_energy(x) for x in (0, 0.000647, 0.125, 3.2109, 12500, 3.4e7)] == [
        "0 J", "647 µJ", "125 mJ", "3.21 J", "12.5 kJ", "34.0 MJ"]


def test_two_connections_sum_like_one(db: Path) -> None:
    from greentrack.report.command import select
    from greentrack.report.query import open_source

    sel = select(week="2026-W47", developer=None, all_developers=True, tz="Europe/Berlin")
    with open_source([db]) as source:
        runs = [source.facts(sel.this_week(), sel.previous_week(), sel.boundaries(), threads=t) for t in (1, 2)]
    one, two = ({dev: sorted(f.groups, key=repr) for dev, f in run.items()} for run in runs)
    assert one == two and sum(len(g) for g in one.values()) == 7
    assert runs[0][ALICE].previous == runs[1][ALICE].previous


def test_spooled_completions_are_reported(tmp_path: Path) -> None:
    """A row parked in the spool while the database was locked shows up in the next report."""
    path = build_db(tmp_path / "g.db")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with Store(path, busy_timeout_s=0.05, retries=0) as store:
        store.record(rec("late", "2026-11-19T12:00:00Z", prefill_j=1.0, decode_j=1.0))
    blocker.execute("ROLLBACK")
    blocker.close()
    report = alice(path)
    assert report["completions"] == 7 and report["energy_j"]["total"] == 9.875
    assert report["by_day"][3] == {"date": "2026-11-19", "completions": 1, "accepted": 0, "energy_j": 2.0,
                                   "prefill_j": 1.0, "decode_j": 1.0}


def _report_as_nobody(path: str, queue: Any) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)
        [report] = build_reports([Path(path)], developer=ALICE, **W47)
        queue.put(("ok", report["completions"], report["energy_j"]["total"]))
    except BaseException as e:
        queue.put(("error", repr(e), 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user (file modes bind root otherwise)")
def test_read_only_copy_in_a_read_only_folder(tmp_path: Path) -> None:
    """A teammate's database on a read-only share: no -shm can be created, the report still reads it."""
    import multiprocessing as mp
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="greentrack-ro-"))
    try:
        base.chmod(0o755)
        path = build_db(base / "copy.db")
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        raw.close()
        assert not (base / "copy.db-shm").exists()
        path.chmod(0o444)
        base.chmod(0o555)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_report_as_nobody, args=(str(path), queue))
        proc.start()
        result = queue.get(timeout=60)
        proc.join(60)
        assert result == ("ok", 6, 7.875), result
    finally:
        base.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_a_folder_of_more_files_than_sqlite_attaches_at_once(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    alice_rows = [r for r in ROWS if r[0].developer == ALICE]
    for i, row in enumerate(alice_rows + alice_rows[:3]):  # 12 files, three rows twice
        build_db(team / f"{i:02d}.db", [row], calibrations=(i == 0))
    [report] = build_reports([team], developer=ALICE, **W47)
    # one row per file: no file knows the next request in the same file, so no debounce estimate
    wasted_only = EXPECTED_ALICE["tips"][0].split(" A 500 ms")[0]
    assert report == {**EXPECTED_ALICE, "tips": [wasted_only, *EXPECTED_ALICE["tips"][1:]]}
