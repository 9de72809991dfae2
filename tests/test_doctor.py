"""``greentrack doctor`` on the database: writable, readable but locked by another process, readable but read-only.

Real SQLite files, a real other process holding the write lock, a real other user for the read-only file.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from tests.store.lock_holder import held_lock
from tests.store.store_records import make_record

from greentrack.config import Settings
from greentrack.doctor import diagnose, render_diagnosis
from greentrack.store import SCHEMA_VERSION, Store


def _database(path: Path) -> dict[str, Any]:
    data = diagnose(Settings.from_env(db_path=path), load_model=False)
    console = Console(record=True, width=400)
    console.print(render_diagnosis(data))
    database: dict[str, Any] = data["database"]
    database["shown"] = console.export_text()
    return database


def _recorded(path: Path) -> Path:
    with Store(path) as store:
        store.record(make_record(1))
    return path


def test_a_writable_database_is_ok(tmp_path: Path) -> None:
    path = _recorded(tmp_path / "g.db")
    before = path.read_bytes()
    db = _database(path)
    assert db["ok"] and db["readable"] and db["writable"] and db["state"] == "ok"
    assert db["schema_version"] == SCHEMA_VERSION and "error" not in db
    assert f"(schema v{SCHEMA_VERSION})" in db["shown"] and "ERROR" not in db["shown"]
    with Store(path) as store:  # the write probe wrote nothing
        assert store.count() == 1
    assert path.read_bytes() == before


def test_readable_but_locked_by_another_writer(tmp_path: Path) -> None:
    path = _recorded(tmp_path / "g.db")
    with held_lock(path, "IMMEDIATE"):  # the write lock of a WAL file: readers go on, writers wait
        db = _database(path)
    assert not db["ok"] and db["readable"] and not db["writable"]
    assert db["state"] == "locked" and "locked" in db["error"] and db["schema_version"] == SCHEMA_VERSION
    assert "readable but locked" in db["shown"] and "spooled" in db["shown"]
    assert _database(path)["ok"]  # released: writable again


def _diagnose_as_nobody(path: str, queue: Any) -> None:
    try:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)  # root ignores file modes; a plain user does not
        queue.put(("ok", _database(Path(path))))
    except BaseException as e:
        queue.put(("error", repr(e)))


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other users can write to (pytest's own is 0o700)."""
    base = Path(tempfile.mkdtemp(prefix="greentrack-doctor-"))
    base.chmod(0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_readable_but_read_only(open_tmp: Path) -> None:
    """A WAL file another user made read-only, in a folder anyone may write: opening needs no write (WAL already,
    current schema), so only the write probe finds it read-only."""
    path = _recorded(open_tmp / "g.db")
    path.chmod(0o444)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_diagnose_as_nobody, args=(str(path), queue))
    proc.start()
    kind, db = queue.get(timeout=120)
    proc.join(60)
    assert kind == "ok", db
    assert not db["ok"] and db["readable"] and not db["writable"], db
    assert db["state"] == "read-only" and "readonly" in db["error"] and db["schema_version"] == SCHEMA_VERSION
    assert "readable but read-only" in db["shown"]
