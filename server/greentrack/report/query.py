"""The report's reads: SQL built as plain strings (testable alone), run over one or several database files.

Place in the flow: ``command.build_reports`` opens the files with ``Store`` (which refuses corrupt or foreign
files and migrates older ones), attaches them read-only to one in-memory connection, merges several into one
temporary table (deduplicated on ``completion_id``; an acceptance seen in any copy counts), and runs the
aggregate queries below. Everything is summed in SQLite, so a million rows stay a matter of seconds; the
figures are then shaped in Python by ``figures.summarize`` from the ``Facts`` returned here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greentrack.errors import GreentrackError, StoreError, UsageError
from greentrack.store import Store
from greentrack.store.schema import EXPORT_COLUMNS
from greentrack.store.store import ro_uri

#: Debounce delays (ms) the report evaluates in its "longer debounce" tip.
DEBOUNCE_CANDIDATES_MS: tuple[int, ...] = (300, 500)
#: Prompt caps (tokens) the report evaluates in its "smaller context" tip.
CONTEXT_CAPS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
#: Power-of-two bins of input and output lengths (Fernandez et al., ACL 2025).
INPUT_BINS: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
OUTPUT_BINS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder stands for its ``*.db`` files. Raises ``UsageError`` when one is missing."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.glob("*.db") if p.is_file())
            if not found:
                raise UsageError(f"no *.db file in the folder {path}")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise UsageError(f"no database at {path} (nothing recorded yet, or a wrong --db?)")
    unique: list[Path] = []
    for p in out:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def prepare_file(path: Path) -> None:
    """Validate ``path`` as ours, migrating it and replaying its spool when it is writable.

    A file that cannot be written (read-only copy of a teammate's database) is only validated.
    """
    try:
        Store(path).close()
    except StoreError:
        Store(path, readonly=True).close()  # raises the clear error for corrupt or foreign files


@dataclass(frozen=True)
class Range:
    """What the queries select: ``[start_ts, end_ts)`` (UTC text) of some developers (None: everyone)."""

    start_ts: str
    end_ts: str
    developers: tuple[str, ...] | None = None

    def where(self, params: dict[str, Any], *, start_key: str = "start", end_key: str = "end") -> str:
        params[start_key] = self.start_ts
        params[end_key] = self.end_ts
        sql = f"ts >= :{start_key} AND ts < :{end_key}"
        if self.developers is not None:
            names = []
            for i, dev in enumerate(self.developers):
                params[f"dev{i}"] = dev
                names.append(f":dev{i}")
            sql += f" AND developer IN ({', '.join(names) or 'NULL'})"
        return sql


def day_index_sql(boundaries: Sequence[str], params: dict[str, Any]) -> str:
    """``CASE`` giving a row's day number from ``len(boundaries) - 1`` consecutive [start, end) days."""
    parts = []
    for i, b in enumerate(boundaries[1:-1], start=1):
        params[f"b{i}"] = b
        parts.append(f"WHEN ts < :b{i} THEN {i - 1}")
    return f"CASE {' '.join(parts)} ELSE {len(boundaries) - 2} END"


def aggregate_sql(src: str, rng: Range, boundaries: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Sums per developer, local day, model, language, method, acceptance and outcome."""
    params: dict[str, Any] = {}
    where = rng.where(params)
    day = day_index_sql(boundaries, params)
    sql = f"""
        SELECT developer, {day} AS day, COALESCE(model, ''), COALESCE(language_id, ''),
               COALESCE(method, 'estimated'), accepted, COALESCE(outcome, ''),
               COUNT(*), TOTAL(total_j), TOTAL(prefill_j), TOTAL(decode_j),
               TOTAL(prompt_tokens), TOTAL(reused_prompt_tokens), TOTAL(completion_tokens)
        FROM {src} WHERE {where}
        GROUP BY 1, 2, 3, 4, 5, 6, 7"""
    return sql, params


def timing_sql(src: str, rng: Range) -> tuple[str, dict[str, Any]]:
    """Per developer: what each candidate debounce would have skipped.

    A request ``i`` started at ``ts - latency_ms``. When the next request of the same developer in the same
    file started less than ``D`` ms later, a keystroke came within ``D`` of the one that triggered ``i`` (both
    are preceded by the same configured debounce), so a debounce of ``D`` would not have sent ``i`` at all.
    Sums: unaccepted requests skipped and their energy, and accepted ones that would have been lost too.
    """
    params: dict[str, Any] = {}
    where = rng.where(params)
    sums = []
    for d in DEBOUNCE_CANDIDATES_MS:
        params[f"d{d}"] = d
        sums.append(f"TOTAL(CASE WHEN accepted = 0 AND gap_ms < :d{d} THEN 1 END)")
        sums.append(f"TOTAL(CASE WHEN accepted = 0 AND gap_ms < :d{d} THEN total_j END)")
        sums.append(f"TOTAL(CASE WHEN accepted = 1 AND gap_ms < :d{d} THEN 1 END)")
    sql = f"""
        SELECT developer, {', '.join(sums)}
        FROM (
            SELECT developer, accepted, total_j,
                   (julianday(LEAD(ts) OVER w) - julianday(ts)) * 86400000.0
                   - COALESCE(LEAD(latency_ms) OVER w, 0) + COALESCE(latency_ms, 0) AS gap_ms
            FROM {src} WHERE {where}
            WINDOW w AS (PARTITION BY developer, uri ORDER BY ts)
        )
        GROUP BY developer"""
    return sql, params


def _bin_case(column: str, bins: Sequence[int]) -> str:
    parts = [f"WHEN {column} <= {b} THEN {b}" for b in bins[:-1]]
    return f"CASE {' '.join(parts)} ELSE {bins[-1]} END"


def bins_sql(src: str, rng: Range) -> tuple[str, dict[str, Any]]:
    """Per developer, model and device: completions and energy per power-of-two bin of input/output length,
    and the prompt tokens computed beyond each of ``CONTEXT_CAPS``."""
    params: dict[str, Any] = {}
    where = rng.where(params)
    computed = "MAX(0, COALESCE(prompt_tokens, 0) - COALESCE(reused_prompt_tokens, 0))"
    beyond = [f"TOTAL(MAX(0, {computed} - {cap}))" for cap in CONTEXT_CAPS]
    sql = f"""
        SELECT developer, COALESCE(model, ''), COALESCE(device, ''),
               {_bin_case('COALESCE(prompt_tokens, 0)', INPUT_BINS)} AS in_bin,
               {_bin_case('COALESCE(completion_tokens, 0)', OUTPUT_BINS)} AS out_bin,
               COUNT(*), TOTAL(total_j), TOTAL(prefill_j), TOTAL({computed}), {', '.join(beyond)}
        FROM {src} WHERE {where}
        GROUP BY 1, 2, 3, 4, 5"""
    return sql, params


def rows_sql(src: str, rng: Range) -> tuple[str, dict[str, Any]]:
    """Every stored column but ``text``, one row per completion, by developer then time."""
    params: dict[str, Any] = {}
    where = rng.where(params)
    cols = ", ".join(f"[{c}]" for c in EXPORT_COLUMNS)
    return f"SELECT {cols} FROM {src} WHERE {where} ORDER BY developer, ts, completion_id", params


def developers_sql(src: str, rng: Range) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    return f"SELECT DISTINCT developer FROM {src} WHERE {rng.where(params)} ORDER BY developer", params


@dataclass(frozen=True)
class Group:
    """One aggregate row of ``aggregate_sql``. Units: J, tokens."""

    developer: str
    day: int
    model: str
    language_id: str
    method: str
    accepted: int
    outcome: str
    completions: int
    total_j: float
    prefill_j: float
    decode_j: float
    prompt_tokens: float
    reused_prompt_tokens: float
    completion_tokens: float


@dataclass(frozen=True)
class Timing:
    """What a debounce of ``debounce_ms`` would have skipped (see ``timing_sql``)."""

    debounce_ms: int
    skipped_unaccepted: int
    skipped_unaccepted_j: float
    skipped_accepted: int


@dataclass(frozen=True)
class Bin:
    """Completions of one model and device in one input/output length bin. Units: tokens, J."""

    model: str
    device: str
    in_bin: int
    out_bin: int
    completions: int
    total_j: float
    prefill_j: float
    computed_prompt_tokens: float
    beyond_cap: dict[int, float]


@dataclass
class Facts:
    """Everything the figures of one developer's week are made from."""

    groups: list[Group] = field(default_factory=list)
    timing: list[Timing] = field(default_factory=list)
    bins: list[Bin] = field(default_factory=list)


class Source:
    """One or several database files, attached read-only; ``table`` names the (merged) completions."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.conn = sqlite3.connect(":memory:", uri=True, isolation_level=None)
        self.conn.execute("PRAGMA temp_store = MEMORY")
        self.table = "s0.completions"
        self.has_calibrations: list[bool] = []
        try:
            for i, path in enumerate(self.paths):
                self.conn.execute(f"ATTACH DATABASE ? AS s{i}", (ro_uri(path),))
                tables = {r[0] for r in self.conn.execute(f"SELECT name FROM s{i}.sqlite_master WHERE type='table'")}
                if "completions" not in tables:
                    raise StoreError(f"{path} holds no completions table (an empty greentrack database?)")
                self.has_calibrations.append("calibrations" in tables)
        except sqlite3.Error as e:
            self.conn.close()
            raise StoreError(f"cannot read {path}: {e}") from e

    def close(self) -> None:
        self.conn.close()

    def merge(self, rng: Range) -> None:
        """With several files: copy the rows in ``rng`` into one temporary table, deduplicated."""
        if len(self.paths) < 2:
            return
        cols = ", ".join(f"[{c}]" for c in EXPORT_COLUMNS)
        decl = ", ".join(f"[{c}]" + (" TEXT PRIMARY KEY" if c == "completion_id" else "") for c in EXPORT_COLUMNS)
        self.conn.execute(f"CREATE TEMP TABLE merged ({decl})")
        self.conn.execute("CREATE INDEX temp.merged_ts ON merged (developer, ts)")
        for i in range(len(self.paths)):
            params: dict[str, Any] = {}
            where = rng.where(params)
            self.conn.execute(
                f"INSERT INTO merged ({cols}) SELECT {cols} FROM s{i}.completions WHERE {where} "
                "ON CONFLICT(completion_id) DO UPDATE SET accepted = MAX(accepted, excluded.accepted), "
                "accepted_ts = COALESCE(accepted_ts, excluded.accepted_ts)",
                params,
            )
        self.table = "temp.merged"

    def run(self, built: tuple[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
        sql, params = built
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the completions: {e}") from e

    def iter_rows(self, rng: Range) -> Iterator[dict[str, Any]]:
        sql, params = rows_sql(self.table, rng)
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        for row in cur:
            yield dict(zip(names, row, strict=True))

    def developers(self, rng: Range) -> list[str]:
        return [str(r[0]) for r in self.run(developers_sql(self.table, rng))]

    def calibrations(self) -> list[dict[str, Any]]:
        """Every calibration in every file, newest first (JSON documents as saved)."""
        import json

        out: list[tuple[str, dict[str, Any]]] = []
        for i, has in enumerate(self.has_calibrations):
            if not has:
                continue
            for ts, data in self.conn.execute(f"SELECT ts, data FROM s{i}.calibrations"):
                try:
                    doc = json.loads(data)
                except (TypeError, ValueError):
                    continue
                if isinstance(doc, dict):
                    out.append((str(ts), doc))
        out.sort(key=lambda item: item[0], reverse=True)
        return [doc for _, doc in out]

    def facts(self, rng: Range, boundaries: Sequence[str], this_week: Range) -> dict[str, Facts]:
        """``Facts`` per developer: groups over ``rng`` (both weeks), timing and bins over ``this_week``."""
        by_dev: dict[str, Facts] = {}
        for r in self.run(aggregate_sql(self.table, rng, boundaries)):
            g = Group(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5] or 0), str(r[6]),
                      int(r[7]), float(r[8]), float(r[9]), float(r[10]), float(r[11]), float(r[12]), float(r[13]))
            by_dev.setdefault(g.developer, Facts()).groups.append(g)
        for r in self.run(timing_sql(self.table, this_week)):
            facts = by_dev.setdefault(str(r[0]), Facts())
            for k, d in enumerate(DEBOUNCE_CANDIDATES_MS):
                facts.timing.append(Timing(d, int(r[1 + 3 * k]), float(r[2 + 3 * k]), int(r[3 + 3 * k])))
        for r in self.run(bins_sql(self.table, this_week)):
            beyond = {cap: float(r[9 + k]) for k, cap in enumerate(CONTEXT_CAPS)}
            b = Bin(str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]), float(r[7]), float(r[8]),
                    beyond)
            by_dev.setdefault(str(r[0]), Facts()).bins.append(b)
        return by_dev


@contextmanager
def open_source(paths: Sequence[Path]) -> Iterator[Source]:
    """Validate (and migrate) every file, then attach them all read-only."""
    files = expand_paths(paths)
    if not files:
        raise UsageError("no database given")
    for path in files:
        prepare_file(path)
    try:
        source = Source(files)
    except GreentrackError:
        raise
    try:
        yield source
    finally:
        source.close()
