"""Database files as earlier greentrack versions left them, written from frozen SQL (never from today's code).

Each version's SQL is what that version's ``Store`` created (sqlite-utils, WAL off in version 1 files made by
hand); rows are inserted by column name, so a field added to ``CompletionRecord`` later changes nothing here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

V1_SQL = """
CREATE TABLE [completions] (
   [completion_id] TEXT PRIMARY KEY NOT NULL, [uri] TEXT, [language_id] TEXT, [model] TEXT, [backend] TEXT,
   [device] TEXT, [prompt_tokens] INTEGER, [reused_prompt_tokens] INTEGER, [completion_tokens] INTEGER,
   [prefill_ms] FLOAT, [decode_ms] FLOAT, [latency_ms] FLOAT, [prefill_j] FLOAT, [decode_j] FLOAT,
   [total_j] FLOAT, [method] TEXT, [meter] TEXT, [uncertainty_j] FLOAT, [co2e_g] FLOAT, [outcome] TEXT,
   [ts] TEXT NOT NULL, [developer] TEXT NOT NULL DEFAULT '', [accepted] INTEGER NOT NULL DEFAULT 0,
   [accepted_ts] TEXT, [text] TEXT
);
PRAGMA user_version = 1;
"""

V2_SQL = """
CREATE TABLE [calibrations] ([id] INTEGER PRIMARY KEY, [ts] TEXT NOT NULL, [host] TEXT NOT NULL,
   [device] TEXT NOT NULL, [model] TEXT NOT NULL, [data] TEXT);
CREATE INDEX [idx_calibrations_host_device_model_ts] ON [calibrations] ([host], [device], [model], [ts]);
CREATE INDEX [idx_completions_ts] ON [completions] ([ts]);
CREATE INDEX [idx_completions_developer_ts] ON [completions] ([developer], [ts]);
PRAGMA user_version = 2;
"""

V3_SQL = """
ALTER TABLE [completions] ADD COLUMN [next_gap_ms] FLOAT;
CREATE INDEX [idx_completions_developer_uri_ts] ON [completions] ([developer], [uri], [ts]);
PRAGMA user_version = 3;
"""

V4_SQL = """
ALTER TABLE "completions" ADD COLUMN "served_by" TEXT;
CREATE TABLE "api_tokens" (
   "token_hash" TEXT PRIMARY KEY,
   "developer" TEXT NOT NULL,
   "admin" INTEGER NOT NULL DEFAULT 0,
   "created_ts" TEXT NOT NULL,
   "revoked_ts" TEXT
);
CREATE INDEX IF NOT EXISTS "idx_api_tokens_developer" ON "api_tokens" ("developer");
CREATE TABLE "idle_energy" (
   "id" INTEGER PRIMARY KEY,
   "started_ts" TEXT,
   "ended_ts" TEXT,
   "energy_j" REAL,
   "method" TEXT,
   "meter" TEXT,
   "uncertainty_j" REAL,
   "host" TEXT
);
CREATE INDEX IF NOT EXISTS "idx_idle_energy_started_ts" ON "idle_energy" ("started_ts");
PRAGMA user_version = 4;
"""

V5_SQL = """
ALTER TABLE "completions" ADD COLUMN "interval_low_j" REAL;
ALTER TABLE "completions" ADD COLUMN "interval_high_j" REAL;
ALTER TABLE "completions" ADD COLUMN "interval_coverage" REAL;
ALTER TABLE "completions" ADD COLUMN "interval_basis" TEXT;
PRAGMA user_version = 5;
"""

#: The scripts that build a file of each version, in order.
SCRIPTS: dict[int, tuple[str, ...]] = {1: (V1_SQL,), 2: (V1_SQL, V2_SQL), 3: (V1_SQL, V2_SQL, V3_SQL),
                                       4: (V1_SQL, V2_SQL, V3_SQL, V4_SQL),
                                       5: (V1_SQL, V2_SQL, V3_SQL, V4_SQL, V5_SQL)}


def old_row(i: int, **overrides: Any) -> dict[str, Any]:
    """A version-1 completion row (the columns of greentrack 0.1). Units: ms, J."""
    row: dict[str, Any] = dict(
        completion_id=f"c{i:06d}", uri="file:///w/a.py", language_id="python", model="m-small",
        backend="transformers", device="cpu", prompt_tokens=100 + i, reused_prompt_tokens=0,
        completion_tokens=8, prefill_ms=10.0, decode_ms=40.0, latency_ms=55.0, prefill_j=0.25, decode_j=1.0,
        total_j=1.25, method="estimated", meter="test", uncertainty_j=None, co2e_g=0.0, outcome="shown",
        ts=f"2026-11-18T10:{i // 60 % 60:02d}:{i % 60:02d}.000000+00:00", developer="dev@example.com",
        accepted=0, accepted_ts=None, text=None,
    )
    row.update(overrides)
    return row


def make_file(path: Path, version: int, rows: list[dict[str, Any]], *, extra_sql: str = "") -> None:
    """A database of schema ``version`` holding ``rows`` (inserted by column name)."""
    conn = sqlite3.connect(path)
    for script in SCRIPTS[version]:
        conn.executescript(script)
    if extra_sql:
        conn.executescript(extra_sql)
    for row in rows:
        cols = ", ".join(f"[{c}]" for c in row)
        conn.execute(f"INSERT INTO completions ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    conn.commit()
    conn.close()


def make_v1_file(path: Path, n: int) -> None:
    """A version-1 database written by hand, as greentrack 0.1 left it (rollback journal, no indexes)."""
    make_file(path, 1, [old_row(i) for i in range(n)])
