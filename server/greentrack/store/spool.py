"""The spool: where writes go while the database cannot take them, so a logged completion is never lost.

Place in the flow: ``Store.record`` (and ``mark_accepted``/``record_idle``) append one JSON line here whenever the
row does not reach the database, whatever the reason (locked past its retries, read-only, disk full, not
answering when the server started, a value SQLite refuses); the next ``Store`` that opens the database writably,
or the next successful write, replays the lines in order and empties the file. An entry the database refuses
for good (not for lack of room or a lock) is moved to ``<spool>.rejected.jsonl`` beside it, for a person to read,
so it never blocks the entries after it.

The spool lives next to the database (``<db>.spool.jsonl``) where that folder is writable, else in
``$XDG_STATE_HOME/greentrack/`` (``~/.local/state``) under a name derived from the database path. Several server
processes share one spool: every append and every replay holds an exclusive ``flock`` on it. Mode 0o600.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from greentrack.errors import StoreError


def state_dir() -> Path:
    """``$XDG_STATE_HOME/greentrack`` (``~/.local/state/greentrack``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "greentrack"


def spool_candidates(db_path: Path) -> list[Path]:
    """Where the spool of ``db_path`` may be, preferred first."""
    digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:16]
    return [
        db_path.with_name(db_path.name + ".spool.jsonl"),
        state_dir() / f"spool-{db_path.stem}-{digest}.jsonl",
    ]


@contextmanager
def _locked(path: Path, flags: int) -> Iterator[IO[str]]:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(fd, "r+" if flags & os.O_RDWR else "a", encoding="utf-8", closefd=False) as fh:
            yield fh
    finally:
        os.close(fd)


class Spool:
    """The JSON-lines spool of one database. Each line: ``{"op": "record"|"accept"|"idle", ...}``."""

    def __init__(self, db_path: Path) -> None:
        self.candidates = spool_candidates(db_path)

    def append(self, entry: dict[str, Any]) -> Path:
        """Append one entry to the first writable candidate; returns where. Raises ``StoreError`` if none is."""
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        errors: list[str] = []
        for path in self.candidates:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with _locked(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fh:
                    os.fchmod(fh.fileno(), 0o600)
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                return path
            except OSError as e:
                errors.append(f"{path}: {e.strerror or e}")
        raise StoreError("cannot write the database nor its spool (" + "; ".join(errors) + ")")

    def pending(self) -> bool:
        """Whether any spool file holds entries (cheap: a stat per candidate)."""
        return any(_size(p) > 0 for p in self.candidates)

    def entries(self) -> list[dict[str, Any]]:
        """All spooled entries, in order (for inspection and tests)."""
        out: list[dict[str, Any]] = []
        for path in self.candidates:
            if _size(path) > 0:
                out.extend(_parse(path.read_text(encoding="utf-8")))
        return out

    def replay(self, apply: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> int:
        """Hand every spooled entry to ``apply`` (which writes them in one transaction and returns those the
        database refused for good), keep the refused ones in ``rejected_path``, then empty the file.

        If ``apply`` raises, the file is left as it was and the error propagates. Returns the entry count.
        """
        done = 0
        for path in self.candidates:
            if _size(path) <= 0:
                continue
            try:
                with _locked(path, os.O_RDWR) as fh:
                    entries = _parse(fh.read())
                    if entries:
                        rejected = apply(entries)
                        if rejected:
                            _append_lines(rejected_path(path), rejected)
                    fh.seek(0)
                    fh.truncate()
                    done += len(entries)
            except FileNotFoundError:
                continue
        return done


def rejected_path(spool_path: Path) -> Path:
    """Where entries the database refused for good are kept (``<db>.spool.rejected.jsonl``)."""
    return spool_path.with_name(spool_path.name.removesuffix(".jsonl") + ".rejected.jsonl")


def _append_lines(path: Path, entries: list[dict[str, Any]]) -> None:
    with _locked(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write("".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in entries))
        fh.flush()
        os.fsync(fh.fileno())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _parse(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a crashed writer: nothing complete to replay
        if isinstance(entry, dict):
            out.append(entry)
    return out
