"""The store's schema and its SQL, built apart from any connection so it can be read and tested alone.

Place in the flow: the pipeline hands a ``CompletionRecord`` to ``Store.record``; this module says which columns
keep it (``COMPLETION_COLUMNS``), which migrations bring an older file up to date (``MIGRATIONS``: literal SQL per
version, run by the store inside one transaction), and builds the ``(sql, params)`` pairs the store executes.
The report reads the same column names. The tables of every version are described in docs/interfaces.md
("Database").

Migrations are frozen: each lists its statements as literal SQL, never derived from a live dataclass, so that a
file written by any earlier greentrack migrates the same way forever. A new stored field of ``CompletionRecord``
needs a new migration that adds its column, and its name in ``COMPLETION_COLUMNS``.

Versions (``PRAGMA user_version``):

* 1 — table ``completions``, ``completion_id`` the primary key.
* 2 — table ``calibrations`` (one JSON document per host, device and model, per run) and indexes on
  ``completions(ts)`` and ``completions(developer, ts)``.
* 3 — column ``completions.next_gap_ms``: how long after this request (start to start, start = ``ts`` minus
  ``latency_ms``) the same developer's next request in the same file started (NULL: none yet). Kept up to date
  by ``Store.record`` (two indexed updates per insert), backfilled here for older rows; the report's debounce
  tip reads it instead of sorting the whole week. Index on ``completions(developer, uri, ts)``.
* 4 — for ``greentrack serve``: column ``completions.served_by``, table ``api_tokens`` (SHA-256 of each token,
  never the token) and table ``idle_energy`` (the server's energy while no request runs).
* 5 — columns ``completions.interval_low_j``, ``interval_high_j``, ``interval_coverage``, ``interval_basis``: the
  total's interval with a stated coverage beside the worst-case ``uncertainty_j`` (``energy/interval.py``); NULL
  for older rows.
* 6 — columns ``completions.steps``, ``batched_steps``, ``mean_batch_size``: for a completion attributed by engine
  step, the steps it was in, those shared with another request, and its steps' mean batch size; NULL otherwise
  and for older rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

from greentrack.errors import StoreError
from greentrack.record import CompletionRecord

#: version → the statements that bring a file from ``version - 1`` to ``version``. Frozen: never edit one.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE "completions" (
   "completion_id" TEXT PRIMARY KEY NOT NULL,
   "uri" TEXT,
   "language_id" TEXT,
   "model" TEXT,
   "backend" TEXT,
   "device" TEXT,
   "prompt_tokens" INTEGER,
   "reused_prompt_tokens" INTEGER,
   "completion_tokens" INTEGER,
   "prefill_ms" REAL,
   "decode_ms" REAL,
   "latency_ms" REAL,
   "prefill_j" REAL,
   "decode_j" REAL,
   "total_j" REAL,
   "method" TEXT,
   "meter" TEXT,
   "uncertainty_j" REAL,
   "co2e_g" REAL,
   "outcome" TEXT,
   "ts" TEXT NOT NULL,
   "developer" TEXT NOT NULL DEFAULT '',
   "accepted" INTEGER NOT NULL DEFAULT 0,
   "accepted_ts" TEXT,
   "text" TEXT
)""",
    ),
    2: (
        """CREATE TABLE "calibrations" (
   "id" INTEGER PRIMARY KEY,
   "ts" TEXT NOT NULL,
   "host" TEXT NOT NULL,
   "device" TEXT NOT NULL,
   "model" TEXT NOT NULL,
   "data" TEXT
)""",
        'CREATE INDEX IF NOT EXISTS "idx_calibrations_host_device_model_ts" '
        'ON "calibrations" ("host", "device", "model", "ts")',
        'CREATE INDEX IF NOT EXISTS "idx_completions_ts" ON "completions" ("ts")',
        'CREATE INDEX IF NOT EXISTS "idx_completions_developer_ts" ON "completions" ("developer", "ts")',
    ),
    3: (
        'ALTER TABLE "completions" ADD COLUMN "next_gap_ms" REAL',
        'CREATE INDEX IF NOT EXISTS "idx_completions_developer_uri_ts" ON "completions" ("developer", "uri", "ts")',
        "UPDATE completions SET next_gap_ms = g.gap FROM ("
        "  SELECT completion_id, (julianday(LEAD(ts) OVER w) - julianday(ts)) * 86400000.0"
        "    - COALESCE(LEAD(latency_ms) OVER w, 0) + COALESCE(latency_ms, 0) AS gap"
        "  FROM completions WINDOW w AS (PARTITION BY developer, uri ORDER BY ts)"
        ") AS g WHERE completions.completion_id = g.completion_id AND g.gap IS NOT NULL",
    ),
    4: (
        'ALTER TABLE "completions" ADD COLUMN "served_by" TEXT',
        """CREATE TABLE "api_tokens" (
   "token_hash" TEXT PRIMARY KEY,
   "developer" TEXT NOT NULL,
   "admin" INTEGER NOT NULL DEFAULT 0,
   "created_ts" TEXT NOT NULL,
   "revoked_ts" TEXT
)""",
        'CREATE INDEX IF NOT EXISTS "idx_api_tokens_developer" ON "api_tokens" ("developer")',
        """CREATE TABLE "idle_energy" (
   "id" INTEGER PRIMARY KEY,
   "started_ts" TEXT,
   "ended_ts" TEXT,
   "energy_j" REAL,
   "method" TEXT,
   "meter" TEXT,
   "uncertainty_j" REAL,
   "host" TEXT
)""",
        'CREATE INDEX IF NOT EXISTS "idx_idle_energy_started_ts" ON "idle_energy" ("started_ts")',
    ),
    5: (
        'ALTER TABLE "completions" ADD COLUMN "interval_low_j" REAL',
        'ALTER TABLE "completions" ADD COLUMN "interval_high_j" REAL',
        'ALTER TABLE "completions" ADD COLUMN "interval_coverage" REAL',
        'ALTER TABLE "completions" ADD COLUMN "interval_basis" TEXT',
    ),
    6: (
        'ALTER TABLE "completions" ADD COLUMN "steps" INTEGER',
        'ALTER TABLE "completions" ADD COLUMN "batched_steps" INTEGER',
        'ALTER TABLE "completions" ADD COLUMN "mean_batch_size" REAL',
    ),
}

SCHEMA_VERSION: int = max(MIGRATIONS)

#: The columns ``Store.record`` writes, in table order: every stored field of ``CompletionRecord`` (a test checks
#: they match). Units: ms, J, g (see ``CompletionRecord``).
COMPLETION_COLUMNS: tuple[str, ...] = (
    "completion_id", "uri", "language_id", "model", "backend", "device",
    "prompt_tokens", "reused_prompt_tokens", "completion_tokens",
    "prefill_ms", "decode_ms", "latency_ms", "prefill_j", "decode_j", "total_j",
    "method", "meter", "uncertainty_j", "co2e_g", "outcome",
    "ts", "developer", "accepted", "accepted_ts", "text", "served_by",
    "interval_low_j", "interval_high_j", "interval_coverage", "interval_basis",
    "steps", "batched_steps", "mean_batch_size",
)

#: Columns the report, the CSV export and ``Store.completions`` expose: everything but the opt-in ``text``,
#: and the one derived column the store maintains (schema version 3).
EXPORT_COLUMNS: tuple[str, ...] = (*(c for c in COMPLETION_COLUMNS if c != "text"), "next_gap_ms")

IDLE_COLUMNS: tuple[str, ...] = ("started_ts", "ended_ts", "energy_j", "method", "meter", "uncertainty_j", "host")

SQLITE_HEADER = b"SQLite format 3\x00"


def migration_statements(from_version: int, to_version: int = SCHEMA_VERSION) -> list[tuple[int, str]]:
    """(version, statement) pairs that bring a file from ``from_version`` to ``to_version``, in order."""
    return [(v, sql) for v in range(from_version + 1, to_version + 1) for sql in MIGRATIONS[v]]


@cache
def tables_at(version: int) -> dict[str, frozenset[str]]:
    """Table → columns that a file of schema ``version`` holds (the migrations run on an empty in-memory file)."""
    conn = sqlite3.connect(":memory:")
    try:
        for _, sql in migration_statements(0, version):
            conn.execute(sql)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: frozenset(r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')) for name in names}
    finally:
        conn.close()


def clean_text(value: Any) -> Any:
    """``value`` with lone surrogates (which SQLite cannot encode as UTF-8) replaced by U+FFFD; others as is."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def normalize_ts(ts: str) -> str:
    """An ISO 8601 time as UTC with microseconds and ``+00:00``, so that text order is time order.

    A time without offset is taken as UTC. Raises ``StoreError`` for text that is not a time.
    """
    try:
        parsed = datetime.fromisoformat(ts)
    except (TypeError, ValueError) as e:
        raise StoreError(f"not an ISO 8601 time: {ts!r}") from e
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds")


def completion_row(rec: CompletionRecord | Mapping[str, Any]) -> dict[str, Any]:
    """The row kept for ``rec``: every column, ``ts``/``accepted_ts`` normalized to UTC, text made encodable."""
    raw = rec.row() if isinstance(rec, CompletionRecord) else dict(rec)
    row = {name: clean_text(raw.get(name)) for name in COMPLETION_COLUMNS}
    if not row["completion_id"]:
        raise StoreError("a completion needs a completion_id")
    row["ts"] = normalize_ts(str(row["ts"]))
    if row["accepted_ts"]:
        row["accepted_ts"] = normalize_ts(str(row["accepted_ts"]))
    row["accepted"] = 1 if row["accepted"] else 0
    row["developer"] = row["developer"] or ""
    return row


def insert_sql(*, or_ignore: bool = False) -> str:
    """``INSERT`` of one completion row with named parameters (``OR IGNORE`` for spool replays)."""
    cols = ", ".join(f"[{c}]" for c in COMPLETION_COLUMNS)
    params = ", ".join(f":{c}" for c in COMPLETION_COLUMNS)
    verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
    return f"{verb} INTO completions ({cols}) VALUES ({params})"


#: start-to-start gap, ms, between a row ``p`` and a later row ``n`` of the same developer and file.
GAP_SQL = (
    "((julianday({n}.ts) - julianday({p}.ts)) * 86400000.0"
    " - COALESCE({n}.latency_ms, 0) + COALESCE({p}.latency_ms, 0))"
)


def gap_update_sql(row: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """After inserting ``row``: set ``next_gap_ms`` of the request just before it (same developer and file) and
    of ``row`` itself when a later one is already there (rows from several processes may arrive out of order).
    A smaller gap never gets overwritten by a larger one."""
    params = {"id": row["completion_id"], "dev": row["developer"], "uri": row["uri"], "ts": row["ts"]}
    before = (
        "UPDATE completions AS p SET next_gap_ms = g.gap FROM ("
        f"  SELECT c.completion_id AS cid, {GAP_SQL.format(n='n', p='c')} AS gap"
        "  FROM completions AS c, completions AS n"
        "  WHERE n.completion_id = :id AND c.developer = :dev AND c.uri IS :uri AND c.ts < :ts"
        "  ORDER BY c.ts DESC LIMIT 1"
        ") AS g WHERE p.completion_id = g.cid AND (p.next_gap_ms IS NULL OR p.next_gap_ms > g.gap)"
    )
    after = (
        "UPDATE completions AS p SET next_gap_ms = ("
        f"  SELECT {GAP_SQL.format(n='n', p='p')} FROM completions AS n"
        "  WHERE n.developer = :dev AND n.uri IS :uri AND n.ts > :ts ORDER BY n.ts LIMIT 1"
        ") WHERE p.completion_id = :id AND EXISTS ("
        "  SELECT 1 FROM completions AS n WHERE n.developer = :dev AND n.uri IS :uri AND n.ts > :ts)"
    )
    return [(before, params), (after, params)]


def mark_accepted_sql(completion_id: str, ts: str) -> tuple[str, dict[str, Any]]:
    """Mark a completion accepted (the first acceptance's time is kept)."""
    return (
        "UPDATE completions SET accepted = 1, accepted_ts = COALESCE(accepted_ts, :ts) "
        "WHERE completion_id = :id",
        {"id": clean_text(completion_id), "ts": normalize_ts(ts)},
    )


def select_completions_sql(
    *, developer: str | None = None, since_ts: str | None = None, until_ts: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Completions in ``[since_ts, until_ts)`` (UTC or any offset), of one developer or all, oldest first."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if developer is not None:
        where.append("developer = :developer")
        params["developer"] = developer
    if since_ts is not None:
        where.append("ts >= :since")
        params["since"] = normalize_ts(since_ts)
    if until_ts is not None:
        where.append("ts < :until")
        params["until"] = normalize_ts(until_ts)
    cols = ", ".join(f"[{c}]" for c in EXPORT_COLUMNS)
    sql = f"SELECT {cols} FROM completions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY ts, completion_id", params


def select_completion_sql(completion_id: str, *, developer: str | None = None) -> tuple[str, dict[str, Any]]:
    """One completion by id (the columns of ``select_completions_sql``), only if it is ``developer``'s when given."""
    params: dict[str, Any] = {"id": clean_text(completion_id)}
    sql = f"SELECT {', '.join(f'[{c}]' for c in EXPORT_COLUMNS)} FROM completions WHERE completion_id = :id"
    if developer is not None:
        sql += " AND developer = :developer"
        params["developer"] = developer
    return sql, params


def calibration_row(data: Mapping[str, Any], *, ts: str | None = None) -> dict[str, Any]:
    """The row kept for one calibration: ``host``, ``device`` and ``model`` are required keys of ``data``."""
    import json

    missing = [k for k in ("host", "device", "model") if not data.get(k)]
    if missing:
        raise StoreError(f"a calibration needs {', '.join(missing)}")
    when = normalize_ts(str(data.get("ts") or ts or datetime.now(UTC).isoformat()))
    try:
        blob = json.dumps(dict(data), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"a calibration must be plain JSON data: {e}") from e
    return {"ts": when, "host": str(data["host"]), "device": str(data["device"]),
            "model": str(data["model"]), "data": blob}


def insert_calibration_sql(row: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("INSERT INTO calibrations (ts, host, device, model, data) VALUES (:ts, :host, :device, :model, :data)",
            dict(row))


def latest_calibration_sql(*, host: str, device: str, model: str) -> tuple[str, dict[str, Any]]:
    return (
        "SELECT data FROM calibrations WHERE host = :host AND device = :device AND model = :model "
        "ORDER BY ts DESC, id DESC LIMIT 1",
        {"host": host, "device": device, "model": model},
    )


def idle_row(
    *, started_ts: str, ended_ts: str, energy_j: float, method: str, meter: str, uncertainty_j: float | None,
    host: str,
) -> dict[str, Any]:
    """The row kept for one idle interval of the server. Units: J."""
    started, ended = normalize_ts(started_ts), normalize_ts(ended_ts)
    if ended < started:
        raise StoreError(f"an idle interval ends before it starts ({started} > {ended})")
    return {"started_ts": started, "ended_ts": ended, "energy_j": float(energy_j), "method": clean_text(method),
            "meter": clean_text(meter), "uncertainty_j": None if uncertainty_j is None else float(uncertainty_j),
            "host": clean_text(host)}


def insert_idle_sql(row: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    cols = ", ".join(IDLE_COLUMNS)
    return (f"INSERT INTO idle_energy ({cols}) VALUES ({', '.join(':' + c for c in IDLE_COLUMNS)})",
            {c: row.get(c) for c in IDLE_COLUMNS})


def idle_totals_sql(*, since_ts: str, until_ts: str, host: str | None = None) -> tuple[str, dict[str, Any]]:
    """Idle energy within ``[since_ts, until_ts)``: an interval that overlaps the window counts pro rata of its
    overlap (a zero-length one whole). Columns: ``energy_j``, ``uncertainty_j`` (NULL when any overlapping
    interval's is unknown), ``intervals``, ``idle_s`` (overlap seconds). Units: J, s."""
    params: dict[str, Any] = {"since": normalize_ts(since_ts), "until": normalize_ts(until_ts)}
    where = ("((started_ts < :until AND ended_ts > :since)"
             " OR (started_ts = ended_ts AND started_ts >= :since AND started_ts < :until))")
    if host is not None:
        where += " AND host = :host"
        params["host"] = host
    overlap = ("(MIN(julianday(ended_ts), julianday(:until)) - MAX(julianday(started_ts), julianday(:since)))"
               " * 86400.0")
    frac = (f"(CASE WHEN ended_ts > started_ts THEN {overlap} / ((julianday(ended_ts) - julianday(started_ts))"
            " * 86400.0) ELSE 1.0 END)")
    sql = (
        f"SELECT COALESCE(SUM(COALESCE(energy_j, 0) * f), 0.0) AS energy_j, "
        f"CASE WHEN COUNT(uncertainty_j) = COUNT(*) THEN COALESCE(SUM(uncertainty_j * f), 0.0) END AS uncertainty_j, "
        f"COUNT(*) AS intervals, COALESCE(SUM(o), 0.0) AS idle_s "
        f"FROM (SELECT energy_j, uncertainty_j, {frac} AS f, "
        f"CASE WHEN ended_ts > started_ts THEN {overlap} ELSE 0.0 END AS o FROM idle_energy WHERE {where})"
    )
    return sql, params
