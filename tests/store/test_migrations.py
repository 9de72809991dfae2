"""Migrations are frozen: files of versions 1 to 5 written from frozen SQL migrate to today's schema; the
record's stored fields match the columns; a foreign file is refused before anything is written to it."""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from pathlib import Path

import pytest
from tests.store.frozen import SCRIPTS, V1_SQL, make_file, old_row
from tests.store.store_records import make_record

from greentrack.errors import StoreError
from greentrack.record import CompletionRecord, is_stored
from greentrack.store import SCHEMA_VERSION, Store, schema


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_record_fields_are_the_stored_columns() -> None:
    """A new stored field of ``CompletionRecord`` needs a migration: this fails until ``COMPLETION_COLUMNS`` (and a
    migration adding the column) follow."""
    stored = [f.name for f in fields(CompletionRecord) if is_stored(f)]
    assert stored == list(schema.COMPLETION_COLUMNS)
    assert set(make_record(1).row()) == set(schema.COMPLETION_COLUMNS)
    latest = schema.tables_at(SCHEMA_VERSION)["completions"]
    assert latest == frozenset(schema.COMPLETION_COLUMNS) | {"next_gap_ms"}


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_frozen_sql_of_each_version_matches_its_migrations(tmp_path: Path, version: int) -> None:
    """The migrations up to ``version`` still make exactly the tables that version's files hold."""
    path = tmp_path / f"v{version}.db"
    make_file(path, version, [])
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        found = {t: frozenset(_columns(conn, t)) for t in tables}
    assert found == schema.tables_at(version)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_old_files_migrate_to_the_latest_version(tmp_path: Path, version: int) -> None:
    path = tmp_path / f"v{version}.db"
    rows = [
        old_row(1, ts="2026-11-18T10:00:00.000000+00:00", latency_ms=100.0),
        old_row(2, ts="2026-11-18T10:00:00.400000+00:00", latency_ms=50.0, accepted=1,
                accepted_ts="2026-11-18T10:00:01.000000+00:00"),  # starts 450 ms after 1
        old_row(3, ts="2026-11-18T10:00:05.000000+00:00", latency_ms=50.0, uri="file:///w/other.py"),
        old_row(4, ts="2026-11-18T10:00:09.000000+00:00", latency_ms=0.0),  # 8.6 s after 2
    ]
    make_file(path, version, rows)
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        got = {r["completion_id"]: r for r in store.completions()}
        assert store.latest_calibration(host="h", device="cpu", model="m") is None
        store.record(make_record(99, served_by="http://gpu-box:8765"))
        store.save_calibration({"host": "h", "device": "cpu", "model": "m"})
        assert store.has_tokens() is False
        indexed = {tuple(ix.columns) for ix in store.db.table("completions").indexes}
        served = {r["completion_id"]: r["served_by"] for r in store.completions()}
    assert set(got) == {"c000001", "c000002", "c000003", "c000004"}
    assert got["c000002"]["accepted"] == 1 and got["c000002"]["accepted_ts"] == rows[1]["accepted_ts"]
    assert all(r["served_by"] is None for r in got.values())
    assert served["c000099"] == "http://gpu-box:8765"
    assert {("ts",), ("developer", "ts"), ("developer", "uri", "ts")} <= indexed
    if version < 3:  # backfilled by migration 3
        assert got["c000001"]["next_gap_ms"] == pytest.approx(450.0, abs=0.1)
        assert got["c000002"]["next_gap_ms"] == pytest.approx(8650.0, abs=0.1)
    assert got["c000003"]["next_gap_ms"] is None and got["c000004"]["next_gap_ms"] is None
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {t: frozenset(_columns(conn, t)) for t in tables} == schema.tables_at(SCHEMA_VERSION)
    with Store(path) as again:  # reopening a migrated file changes nothing
        assert again.schema_version == SCHEMA_VERSION and again.count() == 5


def test_v5_file_migrates_to_v6_with_null_step_counts(tmp_path: Path) -> None:
    """Version 6 adds the step counts: a version-5 file's rows (an interval each) keep their figures and read NULL
    steps; a step-attributed completion recorded after the migration keeps its counts."""
    path = tmp_path / "v5.db"
    make_file(path, 5, [old_row(1, interval_low_j=1.0, interval_high_j=1.5, interval_coverage=0.9,
                                interval_basis="calibrated")])
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 6
        store.record(make_record(2, meter="nvml:gpu0/steps", steps=17, batched_steps=12, mean_batch_size=2.5))
        got = {r["completion_id"]: r for r in store.completions()}
    old, new = got["c000001"], got["c000002"]
    assert (old["interval_low_j"], old["interval_coverage"], old["interval_basis"]) == (1.0, 0.9, "calibrated")
    assert (old["steps"], old["batched_steps"], old["mean_batch_size"]) == (None, None, None)
    assert (new["steps"], new["batched_steps"], new["mean_batch_size"]) == (17, 12, 2.5)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (6,)
        types = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(completions)")}
    assert (types["steps"], types["batched_steps"], types["mean_batch_size"]) == ("INTEGER", "INTEGER", "REAL")


def test_v1_file_with_the_briefly_stored_today_columns_migrates(tmp_path: Path) -> None:
    """Between e23d68a and 58894c2 version-1 files got two extra columns; they are kept, and ignored."""
    path = tmp_path / "v1-today.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SQL.replace("[text] TEXT", "[text] TEXT, [today_completions] INTEGER, [today_j] FLOAT"))
    conn.execute("INSERT INTO completions (completion_id, ts, today_j) VALUES ('c1', '2026-11-18T10:00:00Z', 4.5)")
    conn.commit()
    conn.close()
    with Store(path) as store:
        store.record(make_record(2))
        assert store.count() == 2 and store.schema_version == SCHEMA_VERSION


def _side_files(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


@pytest.mark.parametrize("wal", [False, True])
def test_foreign_file_claiming_version_1_is_refused_before_any_write(tmp_path: Path, wal: bool) -> None:
    """A ``completions`` table and ``user_version=1`` of another program: refused, not switched to WAL, not
    migrated, nothing left beside it (neither by the writer's open nor the report's read-only one)."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = wal")
    conn.executescript("CREATE TABLE completions (id INTEGER PRIMARY KEY, what TEXT);"
                       "INSERT INTO completions (what) VALUES ('theirs'); PRAGMA user_version = 1;")
    conn.commit()
    conn.close()
    before = path.read_bytes(), _side_files(path)
    for readonly in (False, True):
        with pytest.raises(StoreError, match="lacks column") as info:
            Store(path, readonly=readonly)
        assert str(path) in str(info.value)
    from greentrack.report.query import open_source

    with pytest.raises(StoreError, match="lacks column"), open_source([path]):
        pass
    assert (path.read_bytes(), _side_files(path)) == before


def test_foreign_wal_file_of_another_program_leaves_no_side_files(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = wal")
    conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY);")
    conn.close()
    assert _side_files(path) == {"app.db"}
    from greentrack.report.query import open_source

    with pytest.raises(StoreError, match="another program"), open_source([path]):
        pass
    assert _side_files(path) == {"app.db"}


def test_frozen_scripts_cover_every_version_but_the_latest() -> None:
    assert sorted(SCRIPTS) == list(range(1, SCHEMA_VERSION))
