"""The store whatever the database's state (issue 16): locked, read-only or full when a server starts, odd text,
any failure; crashes (kill -9) and several writers lose nothing. Real SQLite files, real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.store.frozen import make_file, old_row
from tests.store.lock_holder import held_exclusive
from tests.store.store_records import make_record

from greentrack.errors import StoreError
from greentrack.store import SCHEMA_VERSION, Store, StoreUnwritable
from greentrack.store.spool import Spool, rejected_path


def _v3_file(path: Path, *, wal: bool) -> None:
    make_file(path, 3, [old_row(1)])
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = wal")
    conn.execute("INSERT INTO calibrations (ts, host, device, model, data) VALUES "
                 "('2026-11-01T00:00:00.000000+00:00', 'h', 'cpu', 'm', '{\"prefill_w\": 1.0}')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_locked_when_the_store_opens_then_released_loses_nothing(tmp_path: Path, journal: str) -> None:
    """A version-3 file held in ``BEGIN EXCLUSIVE`` by another process when the store opens: the store opens
    anyway, every row is spooled, and all arrive (migrated to the latest schema) once the lock is gone."""
    path = tmp_path / "g.db"
    _v3_file(path, wal=journal == "wal")
    with held_exclusive(path):
        started = time.monotonic()
        store = Store(path, busy_timeout_s=0.5)
        assert time.monotonic() - started < 5
        assert store.unavailable and "locked" in store.unavailable
        for i in range(2, 42):
            store.record(make_record(i))
        assert store.mark_accepted("c000002") is True
        assert len(Spool(path).entries()) == 41
        if journal == "delete":  # readers are locked out too
            with pytest.raises(StoreUnwritable):
                store.latest_calibration(host="h", device="cpu", model="m")
    store.record(make_record(99))
    assert store.unavailable is None and store.schema_version == SCHEMA_VERSION
    rows = {r["completion_id"]: r for r in store.completions()}
    assert len(rows) == 42 and rows["c000002"]["accepted"] == 1
    assert store.latest_calibration(host="h", device="cpu", model="m") == {"prefill_w": 1.0}
    assert not Spool(path).pending()
    store.close()


def test_lone_surrogates_are_stored_not_lost(tmp_path: Path) -> None:
    """A lone surrogate in a URI or languageId (a client's broken UTF-16) is stored as U+FFFD."""
    with Store(tmp_path / "g.db") as store:
        store.record(make_record(1, uri="file:///w/\udc80bad.py", language_id="py\ud800thon"))
        assert store.mark_accepted("c000001\udc80") is False
        (row,) = store.completions()
    assert row["uri"] == "file:///w/\ufffdbad.py" and row["language_id"] == "py\ufffdthon"
    assert not Spool(tmp_path / "g.db").pending()


def test_any_failure_spools_and_a_refused_entry_never_blocks_the_others(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Store(path) as store:
        store.record(make_record(1, ts="not a time"))  # refused before SQL
        store.record(make_record(2, prompt_tokens=[1, 2]))  # refused by the SQLite binding (ProgrammingError)
        assert [e["row"]["completion_id"] for e in Spool(path).entries()] == ["c000001", "c000002"]
        store.record(make_record(3))  # goes through, replays: the two are moved aside, not retried forever
        assert [r["completion_id"] for r in store.completions()] == ["c000003"]
    assert not Spool(path).pending()
    rejected = [json.loads(line) for line in rejected_path(Spool(path).candidates[0]).read_text().splitlines()]
    assert [e["row"]["completion_id"] for e in rejected] == ["c000001", "c000002"]
    assert all(e["error"] for e in rejected)


def test_spool_unwritable_too_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.db"
    Store(path).close()
    blocked = tmp_path / "state-is-a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    Spool(path).candidates[0].mkdir()  # the spool beside the database cannot be written
    with (held_exclusive(path), Store(path, busy_timeout_s=0.05, retries=0) as store,
          pytest.raises(StoreError, match="nor its spool")):
        store.record(make_record(1))


@contextmanager
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (skipped where the test cannot mount one)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # still busy: detach it anyway


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_when_the_store_opens(tmp_path: Path) -> None:
    """A version-3 file on a full 1 MB filesystem: the store opens, rows go to the spool in the state folder
    (the one beside the file cannot grow either), and arrive once there is room."""
    with tiny_filesystem(tmp_path) as mount:
        path = mount / "g.db"
        _v3_file(path, wal=True)
        filler = _fill(mount)
        with Store(path) as store:
            assert store.unavailable is not None
            for i in range(2, 22):
                store.record(make_record(i, uri="file:///" + "x" * 500))
            where = {str(p.parent) for p in Spool(path).candidates if p.exists() and p.stat().st_size > 0}
            assert where == {str(Spool(path).candidates[1].parent)}
            assert len(Spool(path).entries()) == 20
            filler.unlink()
            store.record(make_record(99))
            assert store.count() == 22 and store.schema_version == SCHEMA_VERSION
        assert not Spool(path).pending()


KILLED_WRITER = textwrap.dedent("""
    import sys
    from tests.store.store_records import make_record
    from greentrack.store import Store
    run = int(sys.argv[2])
    with Store(sys.argv[1], busy_timeout_s=0.2) as store:
        for i in range(100000):
            rec = make_record(i, completion_id=f"k{run:02d}-{i:05d}", developer=f"run{run}")
            store.record(rec)
            print(rec.completion_id, flush=True)
""")


def test_kill_9_while_writing_loses_no_logged_row(tmp_path: Path) -> None:
    """Writers killed with SIGKILL at random moments (one holding the database locked part of the time):
    every row ``record`` returned for is in the database or replayed from the spool."""
    path = tmp_path / "g.db"
    Store(path).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    logged: list[str] = []
    rng = random.Random(16)
    deadline = time.monotonic() + 40
    kills = 0
    while kills < 8 and time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(kills)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first, "the writer printed nothing"
        logged.append(first)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        logged.extend(line.strip() for line in proc.stdout if line.strip())
        kills += 1
    assert kills >= 4 and len(logged) > 20
    with Store(path) as store:
        stored = {r["completion_id"] for r in store.completions()}
    assert set(logged) <= stored, f"{len(set(logged) - stored)} of {len(logged)} logged rows lost"
