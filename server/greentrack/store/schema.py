"""The store's schema and its SQL, built apart from any connection so it can be read and tested alone.

Place in the flow: the pipeline hands a ``CompletionRecord`` to ``Store.record``; this module says which table and
columns keep it (``COMPLETION_COLUMNS``), which migrations bring an older file up to date (``MIGRATIONS``, one
small function per version, run by the store inside one transaction), and builds the ``(sql, params)`` pairs the
store executes. The report reads the same column names.

Versions (``PRAGMA user_version``):

* 1 — table ``completions``: every field of ``CompletionRecord``, ``completion_id`` the primary key.
* 2 — table ``calibrations`` (one JSON document per host, device and model, per run) and indexes on
  ``completions(ts)`` and ``completions(developer, ts)``.
* 3 — column ``completions.next_gap_ms``: how long after this request (start to start, start = ``ts`` minus
  ``latency_ms``) the same developer's next request in the same file started (NULL: none yet). Kept up to date
  by ``Store.record`` (two indexed updates per insert), backfilled here for older rows; the report's debounce
  tip reads it instead of sorting the whole week. Index on ``completions(developer, uri, ts)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from greentrack.errors import StoreError
from greentrack.record import CompletionRecord, is_stored

#: Column name → SQLite type, in ``CompletionRecord`` order. Units: ms, J, g (see ``CompletionRecord``).
COMPLETION_COLUMNS: dict[str, type] = {}
_PY_TYPES: dict[str, type] = {
    "int": int, "float": float, "str": str, "float | None": float, "str | None": str,
    "Method": str, "Outcome": str,
}
for _f in fields(CompletionRecord):
    if not is_stored(_f):
        continue
    _t = _f.type
    COMPLETION_COLUMNS[_f.name] = (
        _t if _t in (int, float, str) else _PY_TYPES.get(_t if isinstance(_t, str) else str(_t), str)
    )

#: Columns the report, the CSV export and ``Store.completions`` expose (everything but the opt-in ``text``),
#: and the one derived column the store maintains (schema version 3).
EXPORT_COLUMNS: tuple[str, ...] = (*(c for c in COMPLETION_COLUMNS if c != "text"), "next_gap_ms")

CALIBRATION_COLUMNS: dict[str, type] = {
    "id": int, "ts": str, "host": str, "device": str, "model": str, "data": str,
}

Migration = Callable[[sqlite_utils.Database], None]
#: version → the function that brings a file from ``version - 1`` to ``version``; registered by ``@migration``.
MIGRATIONS: dict[int, Migration] = {}


def migration(version: int) -> Callable[[Migration], Migration]:
    """Register ``fn`` as the step to schema ``version``."""

    def register(fn: Migration) -> Migration:
        MIGRATIONS[version] = fn
        return fn

    return register


@migration(1)
def _v1_completions(db: sqlite_utils.Database) -> None:
    db.table("completions").create(
        COMPLETION_COLUMNS,
        pk="completion_id",
        not_null={"completion_id", "ts", "developer", "accepted"},
        defaults={"accepted": 0, "developer": ""},
    )


@migration(2)
def _v2_calibrations_and_indexes(db: sqlite_utils.Database) -> None:
    db.table("calibrations").create(CALIBRATION_COLUMNS, pk="id", not_null={"ts", "host", "device", "model"})
    db.table("calibrations").create_index(["host", "device", "model", "ts"], if_not_exists=True)
    db.table("completions").create_index(["ts"], if_not_exists=True)
    db.table("completions").create_index(["developer", "ts"], if_not_exists=True)


#: start-to-start gap, ms, between a row ``p`` and a later row ``n`` of the same developer and file.
GAP_SQL = (
    "((julianday({n}.ts) - julianday({p}.ts)) * 86400000.0"
    " - COALESCE({n}.latency_ms, 0) + COALESCE({p}.latency_ms, 0))"
)


@migration(3)
def _v3_next_gap(db: sqlite_utils.Database) -> None:
    db.table("completions").add_column("next_gap_ms", float)
    db.table("completions").create_index(["developer", "uri", "ts"], if_not_exists=True)
    db.execute(
        "UPDATE completions SET next_gap_ms = g.gap FROM ("
        "  SELECT completion_id, (julianday(LEAD(ts) OVER w) - julianday(ts)) * 86400000.0"
        "    - COALESCE(LEAD(latency_ms) OVER w, 0) + COALESCE(latency_ms, 0) AS gap"
        "  FROM completions WINDOW w AS (PARTITION BY developer, uri ORDER BY ts)"
        ") AS g WHERE completions.completion_id = g.completion_id AND g.gap IS NOT NULL"
    )


SCHEMA_VERSION: int = max(MIGRATIONS)
#: Tables a file of each version must hold to be ours.
TABLES_BY_VERSION: dict[int, frozenset[str]] = {
    1: frozenset({"completions"}),
    2: frozenset({"completions", "calibrations"}),
    3: frozenset({"completions", "calibrations"}),
}

SQLITE_HEADER = b"SQLite format 3\x00"


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
    """The row kept for ``rec``: every column, ``ts``/``accepted_ts`` normalized to UTC."""
    raw = rec.row() if isinstance(rec, CompletionRecord) else dict(rec)
    row = {name: raw.get(name) for name in COMPLETION_COLUMNS}
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
        {"id": completion_id, "ts": normalize_ts(ts)},
    )


def update_outcome_sql(completion_id: str, outcome: str) -> tuple[str, dict[str, Any]]:
    return ("UPDATE completions SET outcome = :outcome WHERE completion_id = :id",
            {"id": completion_id, "outcome": outcome})


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


def latest_calibration_sql(*, host: str, device: str, model: str) -> tuple[str, dict[str, Any]]:
    return (
        "SELECT data FROM calibrations WHERE host = :host AND device = :device AND model = :model "
        "ORDER BY ts DESC, id DESC LIMIT 1",
        {"host": host, "device": device, "model": model},
    )
