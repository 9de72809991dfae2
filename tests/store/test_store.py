"""The store on real SQLite files: creation, API, concurrency, migrations, foreign files, spooling."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.store.frozen import V1_SQL, make_v1_file
from tests.store.store_records import make_record

from greentrack.errors import StoreError
from greentrack.store import SCHEMA_VERSION, Store, StoreUnwritable
from greentrack.store.spool import Spool


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_new_file_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = tmp_path / "nested" / "deeper" / "g.db"
        with Store(path) as store:
            store.record(make_record(1))
        assert _mode(path) == 0o600
        for side in ("g.db-wal", "g.db-shm"):
            if (path.parent / side).exists():
                assert _mode(path.parent / side) == 0o600
    finally:
        os.umask(old)


def test_wal_version_and_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 6
        assert store.db.journal_mode == "wal"
        assert store.path == path
        rec = make_record(1, ts="2026-11-18T11:00:00+01:00", text="secret")
        store.record(rec)
        rows = list(store.completions())
    assert len(rows) == 1
    row = rows[0]
    assert "text" not in row
    assert row["ts"] == "2026-11-18T10:00:00.000000+00:00"  # normalized to UTC
    expected = rec.row()
    for key in ("completion_id", "prompt_tokens", "prefill_j", "decode_j", "total_j", "method", "outcome"):
        assert row[key] == expected[key]
    assert row["accepted"] == 0 and row["accepted_ts"] is None
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT text FROM completions").fetchone() == ("secret",)


def test_accept_and_filters(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db") as store:
        store.record(make_record(1, developer="a"))
        store.record(make_record(2, developer="b"))
        store.record(make_record(3, developer="a"))
        assert store.mark_accepted("c000001", "2026-11-18T12:00:00Z") is True
        assert store.mark_accepted("c000001", "2026-11-18T13:00:00Z") is True  # first time is kept
        assert store.mark_accepted("nope") is False
        rows = {r["completion_id"]: r for r in store.completions()}
        assert rows["c000001"]["accepted"] == 1
        assert rows["c000001"]["accepted_ts"] == "2026-11-18T12:00:00.000000+00:00"
        assert [r["completion_id"] for r in store.completions(developer="a")] == ["c000001", "c000003"]
        assert [r["completion_id"] for r in store.completions(since_ts="2026-11-18T10:00:02Z")] == [
            "c000002", "c000003"]
        # until is exclusive; any offset works
        assert [r["completion_id"] for r in store.completions(until_ts="2026-11-18T11:00:03+01:00")] == [
            "c000001", "c000002"]
        with pytest.raises(StoreError, match="already recorded"):
            store.record(make_record(1))


def test_atomic_rolls_back_everything(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db") as store:
        with pytest.raises(RuntimeError), store.atomic():
            store.record(make_record(1))
            store.record(make_record(2))
            raise RuntimeError("boom")
        assert store.count() == 0
        with store.atomic():
            store.record(make_record(3))
        assert store.count() == 1


def test_calibrations(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db") as store:
        assert store.latest_calibration(host="h", device="cpu", model="m") is None
        store.save_calibration({"host": "h", "device": "cpu", "model": "m", "prefill_j_per_token": 1.0,
                                "ts": "2026-11-01T00:00:00Z"})
        store.save_calibration({"host": "h", "device": "cpu", "model": "m", "prefill_j_per_token": 2.0,
                                "ts": "2026-11-02T00:00:00Z"})
        store.save_calibration({"host": "h", "device": "cuda", "model": "m", "prefill_j_per_token": 3.0})
        latest = store.latest_calibration(host="h", device="cpu", model="m")
        assert latest is not None and latest["prefill_j_per_token"] == 2.0
        with pytest.raises(StoreError, match="needs model"):
            store.save_calibration({"host": "h", "device": "cpu"})


def _insert_many(path: str, worker: int, n: int) -> None:
    with Store(path) as store:
        for i in range(n):
            store.record(make_record(worker * 10_000 + i, developer=f"w{worker}"))


def test_eight_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    Store(path).close()
    ctx = mp.get_context("spawn")
    per_worker = 150
    procs = [ctx.Process(target=_insert_many, args=(str(path), w, per_worker)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(path) as store:
        assert store.count() == 8 * per_worker
        assert len({r["completion_id"] for r in store.completions()}) == 8 * per_worker
    assert not Spool(path).pending()  # everything went straight in, nothing was parked


def test_migration_from_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1_file(path, 5)
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.count() == 5
        assert {r["completion_id"] for r in store.completions()} == {f"c{i:06d}" for i in range(5)}
        assert "calibrations" in store.db.table_names()
        indexed = {tuple(ix.columns) for ix in store.db.table("completions").indexes}
        assert ("ts",) in indexed and ("developer", "ts") in indexed
        store.record(make_record(99))
        store.save_calibration({"host": "h", "device": "cpu", "model": "m"})
    with Store(path) as again:  # reopening a migrated file is a no-op
        assert again.schema_version == SCHEMA_VERSION and again.count() == 6


def test_gaps_are_kept_when_rows_arrive_out_of_order(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db") as store:
        store.record(make_record(1, ts="2026-11-18T10:00:00.000Z", latency_ms=0.0))
        store.record(make_record(3, ts="2026-11-18T10:00:01.000Z", latency_ms=0.0))
        store.record(make_record(2, ts="2026-11-18T10:00:00.300Z", latency_ms=0.0))  # another window, late
        store.record(make_record(4, ts="2026-11-18T10:00:00.500Z", latency_ms=0.0, developer="someone-else"))
        gaps = {r["completion_id"]: r["next_gap_ms"] for r in store.completions()}
    assert gaps["c000001"] == pytest.approx(300.0, abs=0.1)
    assert gaps["c000002"] == pytest.approx(700.0, abs=0.1)
    assert gaps["c000003"] is None and gaps["c000004"] is None


def test_failed_migration_leaves_the_old_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from greentrack.store import schema

    path = tmp_path / "old.db"
    make_v1_file(path, 2)
    monkeypatch.setitem(schema.MIGRATIONS, 3, ("SELECT no_such_column FROM completions",))
    with pytest.raises(StoreError, match="cannot migrate"):
        Store(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (1,)
        assert raw.execute("SELECT count(*) FROM completions").fetchone() == (2,)
        assert "calibrations" not in {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}  # v2 undone


def _snapshot(path: Path) -> tuple[bytes, int, set[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, {p.name for p in path.parent.iterdir()}


def _foreign_sqlite(path: Path, script: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("random", "not an SQLite database"),
        ("truncated", "damaged SQLite database"),
        ("foreign", "another program"),
        ("newer", "newer than this greentrack knows"),
        ("liar", "lacks table"),
    ],
)
def test_corrupt_and_foreign_files_are_refused_untouched(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "g.db"
    if kind == "random":
        path.write_bytes(os.urandom(8192))
    elif kind == "truncated":
        make_v1_file(path, 50)
        data = path.read_bytes()
        path.write_bytes(data[:100] + os.urandom(len(data) - 100))
    elif kind == "foreign":
        _foreign_sqlite(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n"
                              "INSERT INTO users VALUES (1, 'x');")
    elif kind == "newer":
        _foreign_sqlite(path, V1_SQL + "PRAGMA user_version = 7;")
    else:
        _foreign_sqlite(path, "CREATE TABLE other (x); PRAGMA user_version = 2;")
    before = _snapshot(path)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=message) as info:
            Store(path, readonly=readonly)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert _snapshot(path) == before


def test_locked_database_spools_and_replays(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "g.db"
    store = Store(path, busy_timeout_s=0.05, retries=1)
    store.record(make_record(1))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another window holds the write lock
    try:
        store.record(make_record(2))
        assert store.mark_accepted("c000001", "2026-11-18T12:00:00Z") is True
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert "spooled" in caplog.text
    spool = Spool(path)
    assert [e["op"] for e in spool.entries()] == ["record", "accept"]
    assert store.count() == 1
    store.record(make_record(3))  # the next successful write replays the spool first... then after
    rows = {r["completion_id"]: r for r in store.completions()}
    assert set(rows) == {"c000001", "c000002", "c000003"}
    assert rows["c000001"]["accepted"] == 1
    assert not spool.pending()
    store.close()


def test_spool_is_replayed_on_next_open(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    Store(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with Store(path, busy_timeout_s=0.05, retries=0) as store:
        store.record(make_record(1))
        assert store.mark_accepted("c000001") is True  # not in the DB, but in the spool
    blocker.execute("ROLLBACK")
    blocker.close()
    with Store(path) as store:
        rows = list(store.completions())
    assert len(rows) == 1 and rows[0]["accepted"] == 1
    assert not Spool(path).pending()


def test_disk_full_spools(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Store(path) as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        spooled_before = 0
        for i in range(200):
            store.record(make_record(i, uri="file:///" + "x" * 2000))
            if Spool(path).pending():
                spooled_before = i
                break
        assert Spool(path).pending(), "SQLITE_FULL never happened"
        store.conn.execute("PRAGMA max_page_count = 1073741823")
        store.record(make_record(500))
        assert store.count() == spooled_before + 2
        assert not Spool(path).pending()


def _readonly_child(path: str, state: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)  # root ignores file modes; a plain user does not
        os.environ["XDG_STATE_HOME"] = state
        with Store(path) as store:
            store.record(make_record(2))
            queue.put(("ok", store.count(), [e["op"] for e in store.spool.entries()]))
    except BaseException as e:
        queue.put(("error", repr(e), []))


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other users can traverse (pytest's own is 0o700)."""
    base = Path(tempfile.mkdtemp(prefix="greentrack-store-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_read_only_file_spools_to_state_dir_then_replays(open_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = open_tmp
    folder = tmp_path / "ro"
    folder.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    path = folder / "g.db"
    with Store(path) as store:
        store.record(make_record(1))
        store.conn.execute("PRAGMA journal_mode = DELETE")  # no -wal/-shm left behind for the reader
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    os.chown(state, 65534, 65534)
    try:
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_readonly_child, args=(str(path), str(state), queue))
        proc.start()
        result = queue.get(timeout=60)
        proc.join(60)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    assert result[0] == "ok", result
    assert result[1] == 1 and result[2] == ["record"]
    spool_files = list((state / "greentrack").glob("spool-*.jsonl"))
    assert len(spool_files) == 1 and _mode(spool_files[0]) == 0o600
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    with Store(path) as store:  # writable again: the spool is replayed
        assert {r["completion_id"] for r in store.completions()} == {"c000001", "c000002"}
    assert spool_files[0].stat().st_size == 0


def test_readonly_store_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Store(path) as store:
        store.record(make_record(1))
    before = _snapshot(path)
    with Store(path, readonly=True) as ro:
        assert [r["completion_id"] for r in ro.completions()] == ["c000001"]
        with pytest.raises(StoreUnwritable):
            ro._write("DELETE FROM completions", {})
    assert _snapshot(path)[0] == before[0]
    with pytest.raises(StoreError, match="no database"):
        Store(tmp_path / "missing.db", readonly=True)


def test_column_types_follow_the_record(tmp_path: Path) -> None:
    with Store(tmp_path / "g.db") as store:
        types = store.db.table("completions").columns_dict
    assert types["prompt_tokens"] is int and types["accepted"] is int
    assert types["total_j"] is float and types["uncertainty_j"] is float and types["next_gap_ms"] is float
    assert types["ts"] is str and types["method"] is str and types["text"] is str
