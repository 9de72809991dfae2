"""``Store``: the SQLite file every completion is logged to, and the report reads from.

Place in the flow: the pipeline calls ``record`` once per completion that reached the model, the language server
calls ``mark_accepted`` when the user takes a suggestion, ``greentrack calibrate`` calls ``save_calibration``,
``greentrack serve`` checks ``token_owner`` and logs ``record_idle``, and the report iterates ``completions``.
Several server processes (one per VS Code window) write one file at once: WAL, a busy timeout, and retries.

A completion is never lost to the database's state: whatever keeps a row out (locked past the retries,
read-only, disk full, a file that did not answer when the store opened, a value SQLite refuses), the row goes to
the spool (``spool.py``) and is replayed by the next write that goes through. A store whose file did not answer
at opening is still made: it tries the file again, briefly, at each write or read (``PROBE_TIMEOUT_S``).

Opening never modifies a file that is not ours: ``user_version``, tables and columns are checked on a read-only
connection that leaves nothing beside the file (random bytes, a foreign SQLite file, or a newer schema give
``StoreError``). Nothing here opens the database (or its ``-wal``/``-shm``) with a plain file descriptor: closing
one would drop the SQLite locks of every connection this process holds on it (``inspect_file``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import sqlite_utils

from greentrack.errors import StoreError
from greentrack.record import CompletionRecord, utc_now_iso
from greentrack.store import schema, tokens
from greentrack.store.spool import Spool
from greentrack.store.tokens import TokenInfo

log = logging.getLogger(__name__)

#: While the database does not answer, each write or read tries it once, waiting at most this long (s) for a
#: lock, before the write is spooled (the normal wait, ``busy_timeout_s``, applies again once it answers).
PROBE_TIMEOUT_S = 0.1


class StoreUnwritable(StoreError):
    """The database cannot be written (or read) now: locked past the retries, read-only, disk full, not answering.

    Not a sign of a foreign or damaged file; the writes meanwhile go to the spool.
    """


@dataclass(frozen=True)
class IdleTotals:
    """The server's idle energy within a time window. Units: J, s. ``uncertainty_j`` None: some unknown."""

    energy_j: float
    uncertainty_j: float | None
    intervals: int
    idle_s: float


def ro_uri(path: Path) -> str:
    """A ``file:`` URI that opens ``path`` read-only.

    A WAL database needs its ``-shm`` file even to be read; where that cannot be created (a read-only folder,
    a teammate's copy on a read-only share) the URI says ``immutable=1``: read as a plain file, no locks. A file
    locked by a writer now keeps the plain URI (its reads wait for the lock; immutable ones would not).
    """
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True, timeout=0)
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            probe.close()
    except sqlite3.OperationalError as e:
        return uri if _is_busy(e) else uri + "&immutable=1"
    except sqlite3.DatabaseError:
        pass  # not a database at all: the caller reports that
    return uri


def _code(e: sqlite3.Error) -> int:
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


def _is_unwritable(e: sqlite3.Error) -> bool:
    """Errors that mean "not now / not here", not a bug: locked, busy, read-only, full, I/O."""
    if getattr(e, "sqlite_errorcode", None) is not None:
        return _code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY,
                            sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN,
                            sqlite3.SQLITE_PERM)
    return isinstance(e, sqlite3.OperationalError)


def _is_busy(e: sqlite3.Error) -> bool:
    return _code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


#: What keeps a database from taking writes (``Store.unavailable_state``), by SQLite's primary result code.
_STATES = {sqlite3.SQLITE_BUSY: "locked", sqlite3.SQLITE_LOCKED: "locked", sqlite3.SQLITE_READONLY: "read-only",
           sqlite3.SQLITE_PERM: "read-only", sqlite3.SQLITE_FULL: "disk full", sqlite3.SQLITE_IOERR: "I/O error",
           sqlite3.SQLITE_CANTOPEN: "cannot be opened"}
#: The same, by ``errno`` of an ``OSError`` (the file could not be created).
_OS_STATES = {errno.EACCES: "read-only", errno.EPERM: "read-only", errno.EROFS: "read-only",
              errno.ENOSPC: "disk full", errno.EDQUOT: "disk full"}


def unavailable_state(e: BaseException) -> str:
    """One word for what an error (or the error behind it) says of the database: ``locked``, ``read-only``,
    ``disk full``, ``I/O error``, ``cannot be opened``, ``not ours`` (a ``StoreError`` of its own), or
    ``unavailable``."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, sqlite3.Error) and getattr(seen, "sqlite_errorcode", None) is not None:
            return _STATES.get(_code(seen), "unavailable")
        if isinstance(seen, sqlite3.OperationalError) and "locked" in str(seen):
            return "locked"
        if isinstance(seen, OSError) and seen.errno in _OS_STATES:
            return _OS_STATES[seen.errno]
        seen = seen.__cause__
    return "not ours" if isinstance(e, StoreError) and not isinstance(e, StoreUnwritable) else "unavailable"


def _translate(e: sqlite3.Error, what: str) -> StoreError:
    """``StoreUnwritable`` for a database that cannot be used now, ``StoreError`` for anything else."""
    if _is_unwritable(e):
        return StoreUnwritable(f"{what} now: {e}")
    return StoreError(f"{what}: {e}")


def _inspection_uris(path: Path) -> list[str]:
    """Read-only URIs to check ``path`` with, tried in order, that leave nothing beside the file.

    Without a ``-wal`` beside it, the file holds everything in itself and is read as immutable (no locks, no
    side files): a plain ``mode=ro`` open would create ``-wal`` and ``-shm`` next to a WAL-mode file that may not
    be ours. With a ``-wal`` (a live WAL database), ``mode=ro`` (it takes the locks a live WAL file needs), then
    immutable where that cannot open. The header is never read with a plain descriptor: see ``inspect_file``.
    """
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        return [uri + "&immutable=1"]
    return [uri, uri + "&immutable=1"]


def _read_schema(uri: str, timeout_s: float) -> tuple[int, dict[str, set[str]]]:
    """(``user_version``, table → columns) of the file behind ``uri``."""
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        names = [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {}
        for name in names:
            quoted = name.replace('"', '""')
            columns[name] = {str(r[1]) for r in conn.execute(f'PRAGMA table_info("{quoted}")')}
        return version, columns
    finally:
        conn.close()


def inspect_file(path: Path, *, timeout_s: float = 5.0) -> int:
    """The schema version of an existing file of ours (0 for an empty file), never writing to it.

    Raises ``StoreError`` naming the file for random bytes, a damaged or foreign SQLite database (tables or
    columns that a file of its ``user_version`` would not lack), or a newer schema; ``StoreUnwritable`` when the
    file cannot be read now (locked by another program, no permission): that says nothing about whose it is.

    Everything is read through SQLite, never with a plain descriptor: SQLite's POSIX locks belong to the process,
    and closing any descriptor of the file drops them all, those of this process's other connections included
    (another process then takes itself for the last user and deletes the ``-wal`` they still write to). SQLite
    keeps the descriptor of a file that others in the process hold locks on open until they are released.

    Steps: the size (an empty file is new); the schema through SQLite (``_read_schema_of``); its version and
    tables checked against ours (``_checked_version``).
    """
    try:
        size_bytes = path.stat().st_size
    except OSError as e:
        raise StoreUnwritable(f"cannot read the database {path}: {e.strerror or e}") from e
    if size_bytes == 0:
        return 0
    version, columns = _read_schema_of(path, timeout_s)
    return _checked_version(path, version, columns)


def _read_schema_of(path: Path, timeout_s: float) -> tuple[int, dict[str, set[str]]]:
    """``_read_schema`` through the first of ``_inspection_uris`` that opens; ``_unreadable`` when none reads."""
    failure: sqlite3.Error | None = None
    for uri in _inspection_uris(path):
        try:
            return _read_schema(uri, timeout_s)
        except sqlite3.Error as e:
            failure = e
            if _code(e) != sqlite3.SQLITE_CANTOPEN:
                break
    assert failure is not None
    raise _unreadable(path, failure) from failure


def _unreadable(path: Path, failure: sqlite3.Error) -> StoreError:
    """Why SQLite could not read ``path``: not a database, not now (``StoreUnwritable``), or damaged."""
    if _code(failure) == sqlite3.SQLITE_NOTADB:
        return StoreError(f"{path} is not an SQLite database (corrupt or another kind of file); left untouched")
    if _is_unwritable(failure):
        return StoreUnwritable(f"cannot read the database {path} now: {failure}")
    return StoreError(f"{path} is a damaged SQLite database ({failure}); left untouched")


def _checked_version(path: Path, version: int, columns: dict[str, set[str]]) -> int:
    """``version`` if the file's tables fit it: not newer than ours, no foreign tables at 0, none lacking."""
    if version > schema.SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this greentrack knows "
            f"({schema.SCHEMA_VERSION}): upgrade greentrack; left untouched"
        )
    if version == 0:
        if columns:
            raise StoreError(f"{path} is an SQLite database of another program (tables: "
                             f"{', '.join(sorted(columns))}); left untouched")
        return 0
    _check_tables(path, version, columns)
    return version


def _check_tables(path: Path, version: int, columns: dict[str, set[str]]) -> None:
    """``StoreError`` when a table or column that schema ``version`` has is missing from ``columns``."""
    expected = schema.tables_at(version)
    missing = sorted(set(expected) - set(columns))
    if missing:
        raise StoreError(f"{path} claims schema version {version} but lacks table(s) "
                         f"{', '.join(missing)}: not a greentrack database; left untouched")
    for table, wanted in sorted(expected.items()):
        lacking = sorted(wanted - columns[table])
        if lacking:
            raise StoreError(f"{path} claims schema version {version} but its table {table} lacks column(s) "
                             f"{', '.join(lacking)}: not a greentrack database; left untouched")


def _jsonable(rec: CompletionRecord | Mapping[str, Any]) -> dict[str, Any]:
    """A record's stored values as they are, for the spool when even ``completion_row`` refuses them."""
    raw = rec.row() if isinstance(rec, CompletionRecord) else dict(rec)
    return {k: schema.clean_text(v) for k, v in raw.items()}


class Store:
    """The completions database. Use as a context manager, or call ``close()``. Thread-safe.

    ``busy_timeout_s`` is SQLite's wait for another writer's lock; ``retries`` more attempts follow it, with a
    short backoff, before a write is spooled. ``readonly=True`` opens the file without ever writing to it (no
    migration, no spool replay; writes raise ``StoreUnwritable``).

    A writable store opens whatever the file's state, unless the file is not ours (``StoreError``): when it is
    locked, read-only, on a full disk or cannot be created, ``unavailable`` says why, writes are spooled, and
    each later write or read tries the file again (``PROBE_TIMEOUT_S``); the first that gets through migrates
    it and replays the spool.
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
        #: Why the database cannot be written now; None while it can.
        self.unavailable: str | None = None
        #: The same in one word (``unavailable_state``: "locked", "read-only", "disk full", ...); None while it can.
        self.unavailable_state: str | None = None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._db: sqlite_utils.Database | None = None
        self._prepared = False  # connected writably, in WAL, migrated to SCHEMA_VERSION
        self._answering = True  # the last write went through: wait ``busy_timeout_s`` and retry before spooling
        if readonly:
            if not self.path.exists():
                raise StoreError(f"no database at {self.path}")
            inspect_file(self.path, timeout_s=busy_timeout_s)
            self._use(self._connect(ro_uri(self.path), uri=True))
            return
        try:
            self._open(timeout_s=busy_timeout_s)
        except StoreUnwritable as e:
            self._set_unavailable(e)
            log.warning("greentrack: %s; completions will be spooled until it answers", e)

    # -- opening ---------------------------------------------------------------------------------------------

    def _open(self, *, timeout_s: float) -> None:
        """Check (or create) the file, connect, WAL, migrate, replay the spool: the store is then ready to write.

        Raises ``StoreError`` for a file that is not ours; ``StoreUnwritable`` when it cannot be prepared now
        (a read-only connection is then kept where a file of ours can be read).
        """
        exists = self.path.exists()
        found = inspect_file(self.path, timeout_s=timeout_s) if exists else 0
        if not exists:
            self._create_file()
        conn = self._connect(str(self.path), uri=False)
        try:
            self._prepare(conn, found, timeout_s)
        except BaseException as e:
            conn.close()
            if found > 0 and isinstance(e, StoreUnwritable) and self._conn is None:
                self._open_reader()
            raise
        self._use(conn)
        self._prepared = True
        self._answering = True
        self._set_unavailable(None)
        self._replay_spool()

    def _open_reader(self) -> None:
        """A read-only connection, so a file that cannot be written now still gives its calibrations and totals."""
        try:
            self._use(self._connect(ro_uri(self.path), uri=True))
        except StoreError as e:
            log.debug("no read-only connection to %s either: %s", self.path, e)

    def _create_file(self) -> None:
        """A new empty file, mode 0o600. One that appeared meanwhile (another store) is left to SQLite: it is
        never opened here, as closing that descriptor would drop this process's SQLite locks on it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        except OSError as e:
            raise StoreUnwritable(f"cannot create the database {self.path}: {e.strerror or e}") from e
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
        finally:
            os.close(fd)

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, uri=uri, timeout=self.busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error as e:
            raise StoreUnwritable(f"cannot open the database {self.path} now: {e}") from e
        return conn

    def _use(self, conn: sqlite3.Connection) -> None:
        old, self._conn, self._db = self._conn, conn, sqlite_utils.Database(conn)
        if old is not None and old is not conn:
            old.close()

    def _prepare(self, conn: sqlite3.Connection, found: int, timeout_s: float) -> None:
        """WAL, then the migrations from ``found`` to ``SCHEMA_VERSION`` in one transaction."""
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                mode = str(conn.execute("PRAGMA journal_mode = wal").fetchone()[0]).lower()
                if mode != "wal":
                    raise StoreUnwritable(f"cannot switch the database {self.path} to WAL now (journal: {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise _translate(e, f"cannot prepare the database {self.path}") from e
        if found < schema.SCHEMA_VERSION:
            try:
                self._migrate(conn)
            except sqlite3.Error as e:
                raise _translate(e, f"cannot migrate the database {self.path} to schema version "
                                    f"{schema.SCHEMA_VERSION}") from e
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """The migrations the file still lacks, all in one ``BEGIN IMMEDIATE`` transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])  # another process may have migrated
            for _, sql in schema.migration_statements(current):
                conn.execute(sql)
            if current < schema.SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _set_unavailable(self, e: BaseException | None) -> None:
        """Keep why the database cannot be written now (``e``), or that it can (None)."""
        self.unavailable = None if e is None else str(e)
        self.unavailable_state = None if e is None else unavailable_state(e)

    def check_writable(self, *, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """Whether the database takes a write now, waiting at most ``timeout_s`` for a lock (``greentrack
        doctor``). Takes the write lock and changes the header in a transaction rolled back: nothing is written.
        When it cannot, ``unavailable`` and ``unavailable_state`` say why (a file opened as writable at first,
        then made read-only or locked, included)."""
        with self._lock:
            if self.readonly:
                self.unavailable, self.unavailable_state = f"the database {self.path} was opened read-only", "read-only"
                return False
            if not self._ready_to_write():
                return False
            conn = self.conn
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                conn.execute(f"PRAGMA user_version = {version}")  # a page written (a read-only file refuses it)
                conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._set_unavailable(_translate(e, f"cannot write the database {self.path}"))
                self.unavailable_state = unavailable_state(e)
                return False
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._set_unavailable(None)
            return True

    def _ready_to_write(self) -> bool:
        """Under the lock: whether the database may take a write now, opening it first if it never answered."""
        if self._prepared:
            return True
        try:
            self._open(timeout_s=min(self.busy_timeout_s, PROBE_TIMEOUT_S))
        except StoreError as e:  # not answering yet, or (rarely) found not to be ours once it answered
            if not isinstance(e, StoreUnwritable) and str(e) != self.unavailable:
                log.error("greentrack: %s; completions will be spooled", e)
            self._set_unavailable(e)
            return False
        log.info("greentrack: the database %s answers; spooled writes replayed", self.path)
        return True

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """The underlying connection (autocommit; use ``atomic()`` for transactions)."""
        if self._conn is None:
            raise StoreUnwritable(f"the database {self.path} cannot be used now: {self.unavailable}")
        return self._conn

    @property
    def db(self) -> sqlite_utils.Database:
        """The sqlite-utils view of ``conn``."""
        if self._db is None:
            raise StoreUnwritable(f"the database {self.path} cannot be used now: {self.unavailable}")
        return self._db

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._db, self._prepared = None, None, False

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[Store]:
        """One transaction (a savepoint when nested): all the writes inside, or none."""
        with self._lock, self.db.atomic():
            yield self

    # -- writing ---------------------------------------------------------------------------------------------

    def _write(self, sql: str, params: Mapping[str, Any], *then: tuple[str, Mapping[str, Any]]) -> int:
        """Execute one write (and ``then`` statements, in the same transaction) with retries, under the lock.

        Returns the first statement's row count. Raises ``StoreUnwritable`` past the retries (at once, after one
        short try, while the database has not been answering).

        Steps: refuse a store that cannot write (``_check_writable``); while the database has not been answering,
        one try with the probe's short busy timeout; each try is ``_execute_write``; a busy database is tried
        again after a backoff; a read-only or full one, or the last try, marks the store unavailable.
        """
        self._check_writable()
        conn, db = self.conn, self.db
        answering = self._answering
        if not answering:
            conn.execute(f"PRAGMA busy_timeout = {int(min(self.busy_timeout_s, PROBE_TIMEOUT_S) * 1000)}")
        last: sqlite3.Error | None = None
        try:
            for attempt in range((self.retries if answering else 0) + 1):
                try:
                    count = self._execute_write(conn, db, sql, params, then)
                    self._answering = True
                    self._set_unavailable(None)
                    return count
                except sqlite3.IntegrityError:
                    raise
                except sqlite3.Error as e:
                    last = self._unwritable_or_raise(e)
                    if not _is_busy(e):
                        break  # read-only or full: waiting will not help
                    time.sleep(min(0.05 * 2**attempt, 0.5))
        finally:
            if not answering:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        self._answering = False
        self._set_unavailable(last)
        raise StoreUnwritable(f"cannot write the database {self.path}: {last}") from last

    def _check_writable(self) -> None:
        """``StoreUnwritable`` for a read-only store, or one whose database cannot be opened for writing now."""
        if self.readonly:
            raise StoreUnwritable(f"the database {self.path} was opened read-only")
        if not self._ready_to_write():
            raise StoreUnwritable(f"the database {self.path} cannot be written now ({self.unavailable})")

    @staticmethod
    def _execute_write(
        conn: sqlite3.Connection, db: sqlite_utils.Database, sql: str, params: Mapping[str, Any],
        then: tuple[tuple[str, Mapping[str, Any]], ...],
    ) -> int:
        """One try of a write: ``sql`` alone, or with ``then`` in one transaction. Returns ``sql``'s row count."""
        if not then:
            return int(conn.execute(sql, params).rowcount)
        with db.atomic():
            count = int(conn.execute(sql, params).rowcount)
            for extra_sql, extra_params in then:
                conn.execute(extra_sql, extra_params)
        return count

    def _unwritable_or_raise(self, e: sqlite3.Error) -> sqlite3.Error:
        """``e`` when it says the database cannot be written now (locked, read-only, full); else ``StoreError``."""
        if not _is_unwritable(e):
            raise StoreError(f"database {self.path}: {e}") from e
        return e

    def _spool(self, entry: dict[str, Any], why: str) -> None:
        """Keep a write the database did not take. Raises ``StoreError`` only if the spool cannot be written."""
        first = not self.spool.pending()
        where = self.spool.append(entry)
        (log.warning if first else log.debug)("greentrack: %s; spooled to %s", why, where)

    def record(self, rec: CompletionRecord) -> None:
        """Insert one completion. Whatever keeps it out of the database (locked, read-only, full, not answering,
        a value SQLite refuses), the row is spooled, never lost. Raises ``StoreError`` only for a completion id
        already recorded, or when the spool cannot be written either."""
        try:
            row = schema.completion_row(rec)
        except Exception as e:  # kept as it came; the replay moves it aside if the database refuses it for good
            self._spool({"op": "record", "row": _jsonable(rec)}, f"completion {rec.completion_id!r}: {e}")
            return
        with self._lock:
            try:
                self._write(schema.insert_sql(), row, *schema.gap_update_sql(row))
            except sqlite3.IntegrityError as e:
                if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
                    raise StoreError(f"completion {row['completion_id']} is already recorded") from e
                self._spool({"op": "record", "row": row}, f"{e}; completion {row['completion_id']}")
                return
            except Exception as e:  # any failure: the row is kept
                self._spool({"op": "record", "row": row}, f"{e}; completion {row['completion_id']}")
                return
            if self.spool.pending():
                self._replay_spool()

    def mark_accepted(self, completion_id: str, ts: str | None = None) -> bool:
        """Mark a completion accepted at ``ts`` (now by default). False if no such completion is known."""
        sql, params = schema.mark_accepted_sql(completion_id, ts or utc_now_iso())
        entry = {"op": "accept", "completion_id": params["id"], "ts": params["ts"]}
        with self._lock:
            try:
                if self._write(sql, params) > 0:
                    return True
            except Exception as e:
                self._spool(entry, f"{e}; acceptance of {params['id']}")
                return True
            if self._in_spool(str(params["id"])):
                self.spool.append(entry)
                return True
            return False

    def record_idle(
        self, *, started_ts: str, ended_ts: str, energy_j: float, method: str, meter: str,
        uncertainty_j: float | None, host: str,
    ) -> None:
        """Log the server's energy over ``[started_ts, ended_ts]`` while no request ran (``greentrack serve``).
        Units: J. Spooled like a completion when the database does not take it."""
        row = schema.idle_row(started_ts=started_ts, ended_ts=ended_ts, energy_j=energy_j, method=method,
                              meter=meter, uncertainty_j=uncertainty_j, host=host)
        with self._lock:
            try:
                self._write(*schema.insert_idle_sql(row))
            except Exception as e:
                self._spool({"op": "idle", "row": row}, f"{e}; idle interval from {row['started_ts']}")
                return
            if self.spool.pending():
                self._replay_spool()

    def _in_spool(self, completion_id: str) -> bool:
        if not self.spool.pending():
            return False
        return any(e.get("op") == "record" and e.get("row", {}).get("completion_id") == completion_id
                   for e in self.spool.entries())

    def _apply_one(self, conn: sqlite3.Connection, entry: Mapping[str, Any]) -> None:
        op = entry.get("op")
        if op == "record":
            row = schema.completion_row(entry["row"])
            if conn.execute(schema.insert_sql(or_ignore=True), row).rowcount:
                for sql, params in schema.gap_update_sql(row):
                    conn.execute(sql, params)
        elif op == "accept":
            conn.execute(*schema.mark_accepted_sql(str(entry["completion_id"]), str(entry["ts"])))
        elif op == "idle":
            conn.execute(*schema.insert_idle_sql(entry["row"]))
        else:
            raise StoreError(f"unknown spooled operation {op!r}")

    def _apply_spooled(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write spooled entries in one transaction; returns those the database refuses for good (each in its
        own savepoint). A lock, a read-only file or a full disk aborts the whole replay instead."""
        conn, db = self.conn, self.db
        rejected: list[dict[str, Any]] = []
        with db.atomic():
            for entry in entries:
                try:
                    with db.atomic():
                        self._apply_one(conn, entry)
                except sqlite3.Error as e:
                    if _is_unwritable(e):
                        raise
                    rejected.append({**entry, "error": str(e)})
                except Exception as e:  # malformed entry, a value no row can hold
                    rejected.append({**entry, "error": str(e)})
        for entry in rejected:
            log.error("greentrack: %s refused a spooled write for good (%s); kept in the spool's .rejected.jsonl",
                      self.path, entry["error"])
        return rejected

    def _replay_spool(self) -> int:
        """Replay spooled writes into the database; a failure leaves them spooled (and is only logged)."""
        if self.readonly or not self._prepared or not self.spool.pending():
            return 0
        try:
            count = self.spool.replay(self._apply_spooled)
        except (sqlite3.Error, OSError, StoreError) as e:
            log.warning("greentrack: spooled completions not replayed yet into %s: %s", self.path, e)
            return 0
        if count:
            log.info("greentrack: replayed %d spooled write(s) into %s", count, self.path)
        return count

    def replay_spool(self) -> int:
        """Replay the spool now (opening the database if it had not answered); returns the entries replayed."""
        with self._lock:
            if self.readonly or not self._ready_to_write():
                return 0
            return self._replay_spool()

    def save_calibration(self, data: dict[str, Any]) -> None:
        """Store one calibration run. ``data`` needs ``host``, ``device``, ``model``; the rest is kept as JSON.

        Keys the report's model comparison reads, where present: ``prefill_j_per_token``,
        ``decode_j_per_token`` (J), and ``bins``: ``[{"input_tokens", "output_tokens", "energy_j"}]`` — the
        energy of one request per bin of input and output length (Fernandez et al., ACL 2025).
        """
        row = schema.calibration_row(data)
        with self._lock:
            try:
                self._write(*schema.insert_calibration_sql(row))
            except (sqlite3.Error, StoreError) as e:
                raise StoreError(f"cannot save the calibration into {self.path}: {e}") from e

    # -- API tokens (greentrack serve) -----------------------------------------------------------------------

    def add_token(self, developer: str, admin: bool = False) -> str:
        """Issue a token for ``developer``; returns it in clear, the only time it is seen (only its SHA-256 is
        kept). Raises ``StoreError`` when the database cannot take it now (a token is never spooled)."""
        if not developer.strip():
            raise StoreError("a token needs a developer")
        token = tokens.new_token()
        sql, params = tokens.insert_token_sql(token_hash_hex=tokens.token_hash(token), developer=developer,
                                              admin=admin, created_ts=utc_now_iso())
        with self._lock:
            try:
                self._write(sql, params)
            except (sqlite3.Error, StoreError) as e:
                raise StoreError(f"cannot store the token in {self.path}: {e}") from e
        return token

    def token_owner(self, token: str) -> TokenInfo | None:
        """Who ``token`` belongs to; None when it is unknown or revoked."""
        rows = self._read(*tokens.owner_sql(tokens.token_hash(token)))
        return tokens.token_info(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenInfo]:
        """Every token ever issued, revoked ones included, oldest first."""
        return [tokens.token_info(r) for r in self._read(*tokens.list_sql())]

    def revoke_tokens(self, developer: str) -> int:
        """Revoke every live token of ``developer``; returns how many."""
        sql, params = tokens.revoke_sql(developer, utc_now_iso())
        with self._lock:
            try:
                return self._write(sql, params)
            except (sqlite3.Error, StoreError) as e:
                raise StoreError(f"cannot revoke tokens in {self.path}: {e}") from e

    def has_tokens(self) -> bool:
        """Whether any token was ever issued (revoked ones count: revoking every token must not open a server)."""
        return bool(self._read("SELECT EXISTS (SELECT 1 FROM api_tokens) AS found")[0]["found"])

    # -- reading ---------------------------------------------------------------------------------------------

    def _read(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one query, by column name. Raises ``StoreUnwritable`` while the file cannot be read."""
        with self._lock:
            if not self.readonly and not self._prepared:
                self._ready_to_write()  # it may answer now: open, migrate and replay first
            conn = self.conn
            try:
                cur = conn.execute(sql, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur]
            except sqlite3.Error as e:
                raise _translate(e, f"cannot read the database {self.path}") from e

    def _has_table(self, name: str) -> bool:
        return bool(self._read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def latest_calibration(self, *, host: str, device: str, model: str) -> dict[str, Any] | None:
        """The newest calibration of that host, device and model, as saved; None if there is none."""
        if not self._has_table("calibrations"):
            return None
        rows = self._read(*schema.latest_calibration_sql(host=host, device=device, model=model))
        if not rows:
            return None
        data: dict[str, Any] = json.loads(rows[0]["data"])
        return data

    def calibrations(self) -> list[dict[str, Any]]:
        """Every calibration, newest first."""
        if not self._has_table("calibrations"):
            return []
        return [json.loads(r["data"]) for r in self._read("SELECT data FROM calibrations ORDER BY ts DESC, id DESC")]

    def completions(
        self, *, developer: str | None = None, since_ts: str | None = None, until_ts: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Completions (every column but ``text``) in ``[since_ts, until_ts)``, oldest first."""
        yield from self._read(*schema.select_completions_sql(developer=developer, since_ts=since_ts,
                                                             until_ts=until_ts))

    def completion(self, completion_id: str, developer: str | None = None) -> dict[str, Any] | None:
        """One completion by id (the columns ``completions`` gives), of ``developer`` only when given; None when
        there is no such row (another developer's looks the same). A row still in the spool is not found."""
        rows = self._read(*schema.select_completion_sql(completion_id, developer=developer))
        return rows[0] if rows else None

    def totals_since(self, *, developer: str, since_ts: str) -> tuple[int, float]:
        """(completions, total energy in J) of ``developer`` since ``since_ts`` (UTC ISO 8601): today's total
        for the status bar. Rows still in the spool are not counted."""
        (row,) = self._read(
            "SELECT count(*) AS n, coalesce(sum(total_j), 0.0) AS total_j FROM completions "
            "WHERE developer = ? AND ts >= ?",
            (developer, since_ts),
        )
        return int(row["n"]), float(row["total_j"])

    def idle_totals(self, *, since_ts: str, until_ts: str, host: str | None = None) -> IdleTotals:
        """The server's idle energy within ``[since_ts, until_ts)`` (of one host, or all): intervals that overlap
        the window count pro rata of their overlap. Units: J, s. Rows still in the spool are not counted."""
        (row,) = self._read(*schema.idle_totals_sql(since_ts=since_ts, until_ts=until_ts, host=host))
        uncertainty = row["uncertainty_j"]
        return IdleTotals(float(row["energy_j"]), None if uncertainty is None else float(uncertainty),
                          int(row["intervals"]), float(row["idle_s"]))

    def count(self) -> int:
        return int(self._read("SELECT count(*) AS n FROM completions")[0]["n"])
