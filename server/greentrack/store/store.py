"""``Store``: the SQLite file every completion is logged to, and the report reads from.

Place in the flow: the pipeline calls ``record`` once per completion that reached the model, the language server
calls ``mark_accepted`` when the user takes a suggestion, ``greentrack calibrate`` calls ``save_calibration``, and
the report iterates ``completions``. Several server processes (one per VS Code window) write one file at once:
WAL, a busy timeout, and retries; past them, the write goes to the spool (``spool.py``) and is replayed later.

Opening never modifies a file that is not ours: the header, ``user_version`` and tables are checked on a
read-only connection first (random bytes, a foreign SQLite file, or a newer schema give ``StoreError``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import sqlite_utils

from greentrack.errors import StoreError
from greentrack.record import CompletionRecord, utc_now_iso
from greentrack.store import schema
from greentrack.store.spool import Spool

log = logging.getLogger(__name__)


class StoreUnwritable(StoreError):
    """The database is fine but cannot be written now (read-only, locked past retries, disk full)."""


def ro_uri(path: Path) -> str:
    """A ``file:`` URI that opens ``path`` read-only.

    A WAL database needs its ``-shm`` file even to be read; where that cannot be created (a read-only folder,
    a teammate's copy on a read-only share) the URI says ``immutable=1``: read as a plain file, no locks.
    """
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True)
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            probe.close()
    except sqlite3.OperationalError:
        return uri + "&immutable=1"
    except sqlite3.DatabaseError:
        pass  # not a database at all: the caller reports that
    return uri


def inspect_file(path: Path) -> int:
    """The schema version of an existing file of ours (0 for an empty file), never writing to it.

    Raises ``StoreError`` naming the file for random bytes, a foreign SQLite database, or a newer schema.
    """
    try:
        with path.open("rb") as fh:
            header = fh.read(len(schema.SQLITE_HEADER))
    except OSError as e:
        raise StoreError(f"cannot read the database {path}: {e.strerror or e}") from e
    if not header:
        return 0
    if header != schema.SQLITE_HEADER:
        raise StoreError(f"{path} is not an SQLite database (corrupt or another kind of file); left untouched")
    try:
        conn = sqlite3.connect(ro_uri(path), uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the database {path}: {e}") from e
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is a damaged SQLite database ({e}); left untouched") from e
    finally:
        conn.close()
    if version > schema.SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this greentrack knows "
            f"({schema.SCHEMA_VERSION}): upgrade greentrack; left untouched"
        )
    if version == 0:
        if tables:
            raise StoreError(f"{path} is an SQLite database of another program (tables: "
                             f"{', '.join(sorted(tables))}); left untouched")
        return 0
    missing = schema.TABLES_BY_VERSION.get(version, frozenset()) - tables
    if missing:
        raise StoreError(f"{path} claims schema version {version} but lacks table(s) "
                         f"{', '.join(sorted(missing))}: not a greentrack database; left untouched")
    return version


def _is_unwritable(e: sqlite3.Error) -> bool:
    """Errors that mean "not now / not here", not a bug: locked, busy, read-only, full, I/O."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        return primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY,
                           sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN,
                           sqlite3.SQLITE_PERM)
    return isinstance(e, sqlite3.OperationalError)


def _is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Store:
    """The completions database. Use as a context manager, or call ``close()``.

    ``busy_timeout_s`` is SQLite's wait for another writer's lock; ``retries`` more attempts follow it, with a
    short backoff, before a write is spooled. ``readonly=True`` opens the file without ever writing to it (no
    migration, no spool replay; writes raise ``StoreUnwritable``).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        readonly: bool = False,
        busy_timeout_s: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.path = Path(path).expanduser()
        self.readonly = readonly
        self.busy_timeout_s = busy_timeout_s
        self.retries = retries
        self.spool = Spool(self.path)
        exists = self.path.exists()
        if readonly and not exists:
            raise StoreError(f"no database at {self.path}")
        found = inspect_file(self.path) if exists else 0
        if not exists:
            self._create_file()
        self._conn = self._connect()
        self.db = sqlite_utils.Database(self._conn)
        self._writable = not readonly
        if not readonly:
            try:
                self._prepare(found)
            except BaseException:
                self._conn.close()
                raise
            self._replay_spool()

    # -- opening ---------------------------------------------------------------------------------------------

    def _create_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot create the database {self.path}: {e.strerror or e}") from e
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
        finally:
            os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        target = ro_uri(self.path) if self.readonly else str(self.path)
        try:
            conn = sqlite3.connect(target, uri=self.readonly, timeout=self.busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        return conn

    def _prepare(self, found: int) -> None:
        """WAL, then the migrations from ``found`` to ``SCHEMA_VERSION`` in one transaction."""
        try:
            if self.db.journal_mode != "wal":
                self.db.enable_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            if found == schema.SCHEMA_VERSION and _is_unwritable(e):
                self._writable = False
                log.warning("greentrack: database %s is not writable now (%s); completions will be spooled",
                            self.path, e)
                return
            raise StoreError(f"cannot prepare the database {self.path}: {e}") from e
        if found < schema.SCHEMA_VERSION:
            self.migrate()

    def migrate(self) -> int:
        """Run the registered migrations the file still lacks, all in one ``BEGIN IMMEDIATE`` transaction."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                current = self.schema_version  # re-read under the write lock: another process may have migrated
                for version in range(current + 1, schema.SCHEMA_VERSION + 1):
                    schema.MIGRATIONS[version](self.db)
                    self._conn.execute(f"PRAGMA user_version = {version}")
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot migrate the database {self.path} to schema version "
                             f"{schema.SCHEMA_VERSION}: {e}") from e
        return schema.SCHEMA_VERSION

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def conn(self) -> sqlite3.Connection:
        """The underlying connection (autocommit; use ``atomic()`` for transactions)."""
        return self._conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[Store]:
        """One transaction (a savepoint when nested): all the writes inside, or none."""
        with self.db.atomic():
            yield self

    # -- writing ---------------------------------------------------------------------------------------------

    def _write(self, sql: str, params: Mapping[str, Any], *then: tuple[str, Mapping[str, Any]]) -> int:
        """Execute one write (and ``then`` statements, in the same transaction) with retries.

        Returns the first statement's row count. Raises ``StoreUnwritable`` past the retries.
        """
        if self.readonly:
            raise StoreUnwritable(f"the database {self.path} was opened read-only")
        last: sqlite3.Error | None = None
        for attempt in range(self.retries + 1):
            try:
                if then:
                    with self.db.atomic():
                        count = int(self._conn.execute(sql, params).rowcount)
                        for extra_sql, extra_params in then:
                            self._conn.execute(extra_sql, extra_params)
                    return count
                return int(self._conn.execute(sql, params).rowcount)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as e:
                if not _is_unwritable(e):
                    raise StoreError(f"database {self.path}: {e}") from e
                last = e
                if not _is_busy(e):
                    break  # read-only or full: waiting will not help
                time.sleep(min(0.05 * 2**attempt, 0.5))
        raise StoreUnwritable(f"cannot write the database {self.path}: {last}") from last

    def record(self, rec: CompletionRecord) -> None:
        """Insert one completion. If the database stays unwritable, the row is spooled (never lost)."""
        row = schema.completion_row(rec)
        try:
            self._write(schema.insert_sql(), row, *schema.gap_update_sql(row))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"completion {row['completion_id']} is already recorded") from e
        except StoreUnwritable as e:
            where = self.spool.append({"op": "record", "row": row})
            log.warning("greentrack: %s; completion %s spooled to %s", e, row["completion_id"], where)
            return
        if self.spool.pending():
            self._replay_spool()

    def mark_accepted(self, completion_id: str, ts: str | None = None) -> bool:
        """Mark a completion accepted at ``ts`` (now by default). False if no such completion is known."""
        when = ts or utc_now_iso()
        sql, params = schema.mark_accepted_sql(completion_id, when)
        try:
            if self._write(sql, params) > 0:
                return True
        except StoreUnwritable as e:
            self.spool.append({"op": "accept", "completion_id": completion_id, "ts": params["ts"]})
            log.warning("greentrack: %s; acceptance of %s spooled", e, completion_id)
            return True
        if self._in_spool(completion_id):
            self.spool.append({"op": "accept", "completion_id": completion_id, "ts": params["ts"]})
            return True
        return False

    def update_outcome(self, completion_id: str, outcome: str) -> bool:
        """Change a completion's outcome (e.g. to ``cancelled``). False if no such completion is known."""
        sql, params = schema.update_outcome_sql(completion_id, outcome)
        try:
            if self._write(sql, params) > 0:
                return True
        except StoreUnwritable as e:
            self.spool.append({"op": "outcome", "completion_id": completion_id, "outcome": outcome})
            log.warning("greentrack: %s; outcome of %s spooled", e, completion_id)
            return True
        if self._in_spool(completion_id):
            self.spool.append({"op": "outcome", "completion_id": completion_id, "outcome": outcome})
            return True
        return False

    def _in_spool(self, completion_id: str) -> bool:
        if not self.spool.pending():
            return False
        return any(e.get("op") == "record" and e.get("row", {}).get("completion_id") == completion_id
                   for e in self.spool.entries())

    def _apply_spooled(self, entries: list[dict[str, Any]]) -> None:
        with self.db.atomic():
            for entry in entries:
                op = entry.get("op")
                if op == "record":
                    row = schema.completion_row(entry["row"])
                    if self._conn.execute(schema.insert_sql(or_ignore=True), row).rowcount:
                        for sql, params in schema.gap_update_sql(row):
                            self._conn.execute(sql, params)
                elif op == "accept":
                    self._conn.execute(*schema.mark_accepted_sql(str(entry["completion_id"]), str(entry["ts"])))
                elif op == "outcome":
                    self._conn.execute(*schema.update_outcome_sql(str(entry["completion_id"]),
                                                                  str(entry["outcome"])))

    def _replay_spool(self) -> int:
        """Replay spooled writes into the database; a failure leaves them spooled (and is only logged)."""
        if self.readonly or not self.spool.pending():
            return 0
        try:
            count = self.spool.replay(self._apply_spooled)
        except (sqlite3.Error, OSError, StoreError) as e:
            log.warning("greentrack: spooled completions not replayed yet into %s: %s", self.path, e)
            return 0
        if count:
            self._writable = True
            log.info("greentrack: replayed %d spooled write(s) into %s", count, self.path)
        return count

    def replay_spool(self) -> int:
        """Replay the spool now; returns how many entries went into the database."""
        return self._replay_spool()

    def save_calibration(self, data: dict[str, Any]) -> None:
        """Store one calibration run. ``data`` needs ``host``, ``device``, ``model``; the rest is kept as JSON.

        Keys the report's model comparison reads, where present: ``prefill_j_per_token``,
        ``decode_j_per_token`` (J), and ``bins``: ``[{"input_tokens", "output_tokens", "energy_j"}]`` — the
        energy of one request per bin of input and output length (Fernandez et al., ACL 2025).
        """
        row = schema.calibration_row(data)
        try:
            with self.db.atomic():
                self.db.table("calibrations").insert(row)
        except sqlite3.Error as e:
            raise StoreError(f"cannot save the calibration into {self.path}: {e}") from e

    # -- reading ---------------------------------------------------------------------------------------------

    def latest_calibration(self, *, host: str, device: str, model: str) -> dict[str, Any] | None:
        """The newest calibration of that host, device and model, as saved; None if there is none."""
        if "calibrations" not in self.db.table_names():
            return None
        sql, params = schema.latest_calibration_sql(host=host, device=device, model=model)
        row = self._conn.execute(sql, params).fetchone()
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row[0])
        return data

    def calibrations(self) -> list[dict[str, Any]]:
        """Every calibration, newest first."""
        if "calibrations" not in self.db.table_names():
            return []
        return [json.loads(r[0]) for r in self._conn.execute("SELECT data FROM calibrations ORDER BY ts DESC, id DESC")]

    def completions(
        self, *, developer: str | None = None, since_ts: str | None = None, until_ts: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Completions (every column but ``text``) in ``[since_ts, until_ts)``, oldest first."""
        sql, params = schema.select_completions_sql(developer=developer, since_ts=since_ts, until_ts=until_ts)
        cur = self._conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        for row in cur:
            yield dict(zip(names, row, strict=True))

    def totals_since(self, *, developer: str, since_ts: str) -> tuple[int, float]:
        """(completions, total energy in J) of ``developer`` since ``since_ts`` (UTC ISO 8601): today's total
        for the status bar. Rows still in the spool are not counted."""
        row = self._conn.execute(
            "SELECT count(*), coalesce(sum(total_j), 0.0) FROM completions WHERE developer = ? AND ts >= ?",
            (developer, since_ts),
        ).fetchone()
        return int(row[0]), float(row[1])

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM completions").fetchone()[0])
