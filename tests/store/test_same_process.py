"""Several stores (and inspections) of one file in one process keep SQLite's locks: no row is lost.

SQLite's POSIX locks belong to the process, and any ``close()`` of any descriptor of the file releases them all.
A plain ``open()``/``close()`` of the database while a ``Store`` holds it made the next process that closed the
file believe it was the last user: it checkpointed and deleted the ``-wal`` the server was still writing to.
Real SQLite files, real processes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.store.store_records import make_record

from greentrack.report.command import build_reports
from greentrack.report.query import prepare_file
from greentrack.store import Store, inspect_file

#: Another program (a ``sqlite3`` shell, a test) reads the file and closes it: the close that deletes the WAL
#: when it believes it is the last user.
READER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1])
    print(conn.execute("SELECT count(*) FROM completions").fetchone()[0])
    conn.close()
""")

#: Another server process records one completion and closes.
WRITER = textwrap.dedent("""
    import sys
    from tests.store.store_records import make_record
    from greentrack.store import Store
    with Store(sys.argv[1]) as store:
        store.record(make_record(int(sys.argv[2])))
""")


def _other_process_count(path: Path) -> int:
    done = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True,
                          timeout=60)
    return int(done.stdout)


def _other_process_records(path: Path, i: int) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(path), str(i)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])


def _second_store(path: Path) -> None:
    Store(path).close()


def _readonly_store(path: Path) -> None:
    Store(path, readonly=True).close()


def _inspect(path: Path) -> None:
    assert inspect_file(path) > 0


def _report(path: Path) -> None:  # what GET /v1/greentrack/report runs in the server's process
    assert len(build_reports([path], week="2026-W47", all_developers=True, tz="UTC")) == 1


INTRUDERS: dict[str, Callable[[Path], None]] = {
    "second store": _second_store,
    "read-only store": _readonly_store,
    "inspect_file": _inspect,
    "report's prepare_file": prepare_file,
    "the whole report": _report,
}


@pytest.mark.parametrize("intruder", sorted(INTRUDERS))
def test_a_second_open_in_the_same_process_keeps_the_first_stores_locks(tmp_path: Path, intruder: str) -> None:
    path = tmp_path / "g.db"
    first = Store(path)
    for i in range(5):
        first.record(make_record(i))
    INTRUDERS[intruder](path)  # opens and closes the same file in this process
    assert _other_process_count(path) == 5  # ...then another process reads it and closes
    assert path.with_name("g.db-wal").exists(), "the WAL of a store still open was deleted"
    for i in range(5, 10):
        first.record(make_record(i))
    _other_process_records(path, 100)  # another window's server, meanwhile
    for i in range(10, 12):
        first.record(make_record(i))
    first.record_idle(started_ts="2026-11-18T11:00:00Z", ended_ts="2026-11-18T11:01:00Z", energy_j=3.0,
                      method="estimated", meter="test", uncertainty_j=None, host="h")
    assert _other_process_count(path) == 13  # what the first store logged as stored, others see
    first.close()
    assert not first.spool.pending()
    with Store(path, readonly=True) as reopened:
        ids = {r["completion_id"] for r in reopened.completions()}
        idle_rows = reopened.idle_totals(since_ts="2026-11-18T00:00:00Z", until_ts="2026-11-19T00:00:00Z")
        integrity = reopened.conn.execute("PRAGMA integrity_check").fetchone()[0]
    assert ids == {make_record(i).completion_id for i in (*range(12), 100)}
    assert idle_rows.intervals == 1 and idle_rows.energy_j == pytest.approx(3.0)
    assert integrity == "ok"
