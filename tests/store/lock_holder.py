"""Another process holding a SQLite lock, for the store and doctor tests (a real process, a real file)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

LOCKER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute(f"BEGIN {sys.argv[2]}")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
""")


@contextmanager
def held_lock(path: Path, begin: Literal["EXCLUSIVE", "IMMEDIATE"]) -> Iterator[None]:
    """Another process holds ``BEGIN <begin>`` on ``path`` until the block ends. ``IMMEDIATE``: the write lock
    (in WAL, readers go on, writers wait); ``EXCLUSIVE``: no one else reads or writes (outside WAL)."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), begin], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(30)


@contextmanager
def held_exclusive(path: Path) -> Iterator[None]:
    """Another process holds ``BEGIN EXCLUSIVE`` on ``path`` until the block ends."""
    with held_lock(path, "EXCLUSIVE"):
        yield
