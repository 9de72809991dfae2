"""The report's reads: SQL built as plain strings (testable alone), run over one or several database files.

Place in the flow: ``command.build_reports`` opens the files with ``Store`` (which refuses corrupt or foreign
files and migrates older ones), attaches them read-only to one in-memory connection, merges several into one
temporary table (deduplicated on ``completion_id``; an acceptance seen in any copy counts), and runs the
aggregate queries below. Everything is summed in SQLite, so a million rows stay a matter of seconds; the
figures are then shaped in Python by ``figures.summarize`` from the ``Facts`` returned here.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greentrack.errors import StoreError, UsageError
from greentrack.store import Store, inspect_file
from greentrack.store.schema import EXPORT_COLUMNS
from greentrack.store.store import ro_uri

#: Debounce delays (ms) the report evaluates in its "longer debounce" tip.
DEBOUNCE_CANDIDATES_MS: tuple[int, ...] = (300, 500)
#: Prompt caps (tokens) the report evaluates in its "smaller context" tip.
CONTEXT_CAPS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
#: Memory-map the attached files (read-only) up to this size: fewer copies on a full scan.
MMAP_BYTES = 1 << 30
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
    """Validate ``path`` as ours (nothing is written to a file that is not), then migrate it and replay its spool
    when it is writable. A file that cannot be written (a teammate's copy on a read-only share) is only validated.
    """
    inspect_file(path)  # the clear error for corrupt, foreign, newer or locked files
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        Store(path).close()


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


def day_index_sql(boundaries: Sequence[str], params: dict[str, Any], lo: int = 0, hi: int | None = None) -> str:
    """A row's day number among the ``len(boundaries) - 1`` consecutive [start, end) days: a nested ``CASE``
    (binary search, ~4 comparisons of ``ts`` text for 14 days)."""
    if hi is None:
        hi = len(boundaries) - 2
        for i, b in enumerate(boundaries):
            params[f"b{i}"] = b
    if lo == hi:
        return str(lo)
    mid = (lo + hi + 1) // 2
    return (f"CASE WHEN ts < :b{mid} THEN {day_index_sql(boundaries, params, lo, mid - 1)} "
            f"ELSE {day_index_sql(boundaries, params, mid, hi)} END")


_COMPUTED = "MAX(0, COALESCE(prompt_tokens, 0) - COALESCE(reused_prompt_tokens, 0))"
#: (name, per-row expression) summed per group by ``aggregate_sql``.
AGG_VALUES: tuple[tuple[str, str], ...] = (
    ("n", "1"),
    ("total_j", "COALESCE(total_j, 0)"),
    ("prefill_j", "COALESCE(prefill_j, 0)"),
    ("decode_j", "COALESCE(decode_j, 0)"),
    ("computed_tokens", _COMPUTED),
    *((f"beyond_{cap}", f"MAX(0, {_COMPUTED} - {cap})") for cap in CONTEXT_CAPS),
    *((f"gap{d}_n", f"(COALESCE(next_gap_ms < {d}, 0))") for d in DEBOUNCE_CANDIDATES_MS),
    *((f"gap{d}_j", f"(CASE WHEN next_gap_ms < {d} THEN COALESCE(total_j, 0) ELSE 0 END)")
      for d in DEBOUNCE_CANDIDATES_MS),
)

# -- the energy interval (docs/interfaces.md "Report"; energy/interval.py) ------------------------------------
#: A row whose total has an interval with a stated coverage (schema v5).
_STATED = "(interval_coverage IS NOT NULL AND interval_low_j IS NOT NULL AND interval_high_j IS NOT NULL)"
#: A row whose worst-case bound is zero wide (a cached suggestion: exactly 0 J): its figure holds at any coverage.
_EXACT = "(uncertainty_j = 0)"
#: Per group: rows whose interval states a coverage (or is exact), the sums of their ends, the smallest coverage
#: (1 where none is stated, so that MIN ignores those rows); rows with a worst-case bound and its summed ends.
#: Summed linearly (errors of one cause), as ``energy.interval.sum_intervals`` does.
INTERVAL_VALUES: tuple[tuple[str, str], ...] = (
    ("iv_n", f"(CASE WHEN {_STATED} OR {_EXACT} THEN 1 ELSE 0 END)"),
    ("iv_low_j", f"(CASE WHEN {_STATED} THEN interval_low_j WHEN {_EXACT} THEN COALESCE(total_j, 0) ELSE 0 END)"),
    ("iv_high_j", f"(CASE WHEN {_STATED} THEN interval_high_j WHEN {_EXACT} THEN COALESCE(total_j, 0) ELSE 0 END)"),
    ("iv_coverage", f"(CASE WHEN {_STATED} THEN interval_coverage ELSE 1.0 END)"),
    ("bound_n", "(CASE WHEN uncertainty_j IS NOT NULL THEN 1 ELSE 0 END)"),
    ("bound_low_j",
     "(CASE WHEN uncertainty_j IS NOT NULL THEN MAX(0, COALESCE(total_j, 0) - uncertainty_j) ELSE 0 END)"),
    ("bound_high_j", "(CASE WHEN uncertainty_j IS NOT NULL THEN COALESCE(total_j, 0) + uncertainty_j ELSE 0 END)"),
)
# -- engine steps (docs/interfaces.md "Report": batched_steps; schema v6) ------------------------------------
#: Per group: completions attributed by engine step (their ``steps`` known), the steps they were in, those shared
#: with another request, and Σ requests over those steps (mean batch size × steps). Older rows are NULL: none.
STEP_VALUES: tuple[tuple[str, str], ...] = (
    ("step_rows", "(CASE WHEN steps IS NOT NULL THEN 1 ELSE 0 END)"),
    ("step_n", "COALESCE(steps, 0)"),
    ("step_batched", "COALESCE(batched_steps, 0)"),
    ("step_requests", "COALESCE(mean_batch_size * steps, 0)"),
)
#: Values combined by MIN rather than summed.
MIN_VALUES: frozenset[str] = frozenset({"iv_coverage"})
AGG_KEYS: tuple[tuple[str, str], ...] = (
    ("developer", "developer"),
    ("model", "COALESCE(model, '')"),
    ("language_id", "COALESCE(language_id, '')"),
    ("method", "COALESCE(method, 'estimated')"),
    ("accepted", "COALESCE(accepted, 0)"),
    ("outcome", "COALESCE(outcome, '')"),
)


def upsert_sums_sql(
    src: str, rng: Range, *, table: str, keys: Sequence[tuple[str, str]], values: Sequence[tuple[str, str]],
    params: dict[str, Any] | None = None, min_values: frozenset[str] = frozenset(),
) -> list[tuple[str, dict[str, Any]]]:
    """Sums of ``values`` per group of ``keys`` (each a ``(name, per-row expression)``) over the rows of ``src`` in
    ``rng``, as statements: (re)create a temporary table keyed by the group, fill it with one ``INSERT … ON
    CONFLICT DO UPDATE`` pass over the rows (a tree lookup per row into the small table, no sort of the whole
    range), read it. ``params``: those the expressions already use; ``min_values``: values kept as the smallest
    rather than summed. The last statement's columns are the names.
    """
    params = dict(params or {})
    where = rng.where(params)
    key_names = ", ".join(k for k, _ in keys)
    value_names = [v for v, _ in values]
    columns = f"{key_names}, {', '.join(value_names)}"
    create = f"CREATE TEMP TABLE {table} ({columns}, PRIMARY KEY ({key_names})) WITHOUT ROWID"
    insert = (
        f"INSERT INTO {table} ({columns}) "
        f"SELECT {', '.join(e for _, e in keys)}, {', '.join(e for _, e in values)} "
        f"FROM {src} WHERE {where} "
        "ON CONFLICT DO UPDATE SET "
        + ", ".join(f"{v} = MIN({v}, excluded.{v})" if v in min_values else f"{v} = {v} + excluded.{v}"
                    for v in value_names)
    )
    return [(f"DROP TABLE IF EXISTS temp.{table}", {}), (create, {}), (insert, params),
            (f"SELECT {columns} FROM {table}", {})]


def aggregate_sql(
    src: str, rng: Range, boundaries: Sequence[str], *, table: str = "agg"
) -> list[tuple[str, dict[str, Any]]]:
    """Sums per developer, local day, model, language, method, acceptance and outcome (``upsert_sums_sql``).

    Also summed: computed prompt tokens (and those beyond each of ``CONTEXT_CAPS``) and, for the debounce tip,
    the rows whose ``next_gap_ms`` is under each of ``DEBOUNCE_CANDIDATES_MS`` and their energy, and the
    interval sums of ``INTERVAL_VALUES`` and the engine-step counts of ``STEP_VALUES``.
    """
    params: dict[str, Any] = {}
    day = day_index_sql(boundaries, params)
    return upsert_sums_sql(src, rng, table=table, keys=[("day", day), *AGG_KEYS],
                           values=[*AGG_VALUES, *INTERVAL_VALUES, *STEP_VALUES], params=params,
                           min_values=MIN_VALUES)


#: The week before: completions and energy per developer and acceptance.
PREVIOUS_KEYS: tuple[tuple[str, str], ...] = (("developer", "developer"), ("accepted", "COALESCE(accepted, 0)"))
COUNT_AND_ENERGY: tuple[tuple[str, str], ...] = (("n", "1"), ("total_j", "COALESCE(total_j, 0)"))


def previous_sql(src: str, rng: Range, *, table: str = "prev") -> list[tuple[str, dict[str, Any]]]:
    """The week before: completions and energy per developer and acceptance (``upsert_sums_sql``)."""
    return upsert_sums_sql(src, rng, table=table, keys=PREVIOUS_KEYS, values=COUNT_AND_ENERGY)


def _bin_case(column: str, bins: Sequence[int]) -> str:
    parts = [f"WHEN {column} <= {b} THEN {b}" for b in bins[:-1]]
    return f"CASE {' '.join(parts)} ELSE {bins[-1]} END"


BIN_KEYS: tuple[tuple[str, str], ...] = (
    ("developer", "developer"),
    ("model", "COALESCE(model, '')"),
    ("device", "COALESCE(device, '')"),
    ("in_bin", _bin_case("COALESCE(prompt_tokens, 0)", INPUT_BINS)),
    ("out_bin", _bin_case("COALESCE(completion_tokens, 0)", OUTPUT_BINS)),
)


def bins_sql(src: str, rng: Range, *, table: str = "bins") -> list[tuple[str, dict[str, Any]]]:
    """Per developer, model and device: completions and energy per power-of-two bin of input/output length
    (``upsert_sums_sql``)."""
    return upsert_sums_sql(src, rng, table=table, keys=BIN_KEYS, values=COUNT_AND_ENERGY)


def rows_sql(src: str, rng: Range) -> tuple[str, dict[str, Any]]:
    """Every stored column but ``text``, one row per completion, by developer then time."""
    params: dict[str, Any] = {}
    where = rng.where(params)
    cols = ", ".join(f"[{c}]" for c in EXPORT_COLUMNS)
    return f"SELECT {cols} FROM {src} WHERE {where} ORDER BY developer, ts, completion_id", params


@dataclass(frozen=True)
class IntervalSums:
    """The interval parts of a group's completions (``INTERVAL_VALUES``). Units: J.

    ``stated``: completions whose total has an interval with a stated coverage (or is exact), ``low_j``/``high_j``
    the sums of those intervals' ends, ``coverage`` the smallest stated (1.0 when none); ``bounded``: completions
    with a worst-case bound, ``bound_low_j``/``bound_high_j`` the sums of its ends.
    """

    stated: int = 0
    low_j: float = 0.0
    high_j: float = 0.0
    coverage: float = 1.0
    bounded: int = 0
    bound_low_j: float = 0.0
    bound_high_j: float = 0.0


@dataclass(frozen=True)
class StepSums:
    """The engine-step counts of a group's completions (``STEP_VALUES``). Units: completions, steps, requests.

    ``completions``: those attributed by engine step; ``steps``: Σ the steps each was in; ``batched``: Σ those
    shared with at least one other request; ``requests``: Σ over those steps of the requests each held.
    """

    completions: int = 0
    steps: int = 0
    batched: int = 0
    requests: float = 0.0


@dataclass(frozen=True)
class Group:
    """One aggregate row of ``aggregate_sql``. Units: J, tokens (prompt tokens computed: prompt − reused)."""

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
    computed_prompt_tokens: float = 0.0
    beyond_cap: dict[int, float] = field(default_factory=dict)
    #: debounce ms → (rows whose next request came sooner, their energy J)
    superseded_within: dict[int, tuple[int, float]] = field(default_factory=dict)
    interval: IntervalSums = field(default_factory=IntervalSums)
    steps: StepSums = field(default_factory=StepSums)


@dataclass(frozen=True)
class Timing:
    """What a debounce of ``debounce_ms`` would have skipped this week (see ``schema``: ``next_gap_ms``)."""

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


@dataclass
class Facts:
    """Everything the figures of one developer's week are made from: ``groups`` of the week (days 0–6),
    ``previous`` week's ``(accepted, completions, energy J)``, and length ``bins`` (only with calibrations)."""

    groups: list[Group] = field(default_factory=list)
    bins: list[Bin] = field(default_factory=list)
    previous: list[tuple[int, int, float]] = field(default_factory=list)

    def this_week(self) -> list[Group]:
        return self.groups

    @property
    def timing(self) -> list[Timing]:
        out = []
        this = self.this_week()
        for d in DEBOUNCE_CANDIDATES_MS:
            un = [g.superseded_within.get(d, (0, 0.0)) for g in this if not g.accepted]
            acc = [g.superseded_within.get(d, (0, 0.0)) for g in this if g.accepted]
            out.append(Timing(d, sum(n for n, _ in un), sum(j for _, j in un), sum(n for n, _ in acc)))
        return out


def group_of(row: dict[str, Any]) -> Group:
    """A ``Group`` from one row of ``aggregate_sql``, by column name."""
    return Group(
        developer=str(row["developer"]), day=int(row["day"]), model=str(row["model"]),
        language_id=str(row["language_id"]), method=str(row["method"]), accepted=int(row["accepted"] or 0),
        outcome=str(row["outcome"]), completions=int(row["n"]), total_j=float(row["total_j"]),
        prefill_j=float(row["prefill_j"]), decode_j=float(row["decode_j"]),
        computed_prompt_tokens=float(row["computed_tokens"]),
        beyond_cap={cap: float(row[f"beyond_{cap}"]) for cap in CONTEXT_CAPS},
        superseded_within={d: (int(row[f"gap{d}_n"]), float(row[f"gap{d}_j"])) for d in DEBOUNCE_CANDIDATES_MS},
        interval=IntervalSums(
            stated=int(row["iv_n"]), low_j=float(row["iv_low_j"]), high_j=float(row["iv_high_j"]),
            coverage=float(row["iv_coverage"]), bounded=int(row["bound_n"]), bound_low_j=float(row["bound_low_j"]),
            bound_high_j=float(row["bound_high_j"]),
        ),
        steps=StepSums(completions=int(row["step_rows"]), steps=int(row["step_n"]),
                       batched=int(row["step_batched"]), requests=float(row["step_requests"])),
    )


def needs_bins(calibrations: Sequence[dict[str, Any]]) -> bool:
    """Whether a device has calibrations of two models or more (else no binned comparison can be made)."""
    models: dict[str, set[str]] = {}
    for cal in calibrations:
        models.setdefault(str(cal.get("device", "")), set()).add(str(cal.get("model", "")))
    return any(len(m) > 1 for m in models.values())


class Source:
    """One or several database files, read-only; ``table`` names the completions the queries read.

    One file stays attached as ``s0`` (worker threads attach it again). Several are attached one at a time by
    ``merge`` (SQLite attaches at most 10 at once) and copied into one temporary table.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.conn = sqlite3.connect(":memory:", uri=True, isolation_level=None)
        self.conn.execute("PRAGMA temp_store = MEMORY")
        self.table = "s0.completions"
        self.columns: list[set[str]] = []
        self._calibrations: list[tuple[str, dict[str, Any]]] = []
        try:
            for path in self.paths:
                self._attach(path, "s0")
                try:
                    self._inspect(path, "s0")
                finally:
                    if len(self.paths) > 1:
                        self.conn.execute("DETACH DATABASE s0")
        except BaseException:
            self.conn.close()
            raise

    def _attach(self, path: Path, alias: str) -> None:
        try:
            self.conn.execute(f"ATTACH DATABASE ? AS {alias}", (ro_uri(path),))
            self.conn.execute(f"PRAGMA {alias}.mmap_size = {MMAP_BYTES}")
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {path}: {e}") from e

    def _inspect(self, path: Path, alias: str) -> None:
        """Check the attached file holds completions; note its columns; collect its calibrations."""
        import json

        try:
            tables = {r[0] for r in self.conn.execute(f"SELECT name FROM {alias}.sqlite_master WHERE type='table'")}
            if "completions" not in tables:
                raise StoreError(f"{path} holds no completions table (an empty greentrack database?)")
            self.columns.append({r[1] for r in self.conn.execute(f"PRAGMA {alias}.table_info(completions)")})
            if "calibrations" in tables:
                for ts, data in self.conn.execute(f"SELECT ts, data FROM {alias}.calibrations"):
                    try:
                        doc = json.loads(data)
                    except (TypeError, ValueError):
                        continue
                    if isinstance(doc, dict):
                        self._calibrations.append((str(ts), doc))
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {path}: {e}") from e

    def close(self) -> None:
        self.conn.close()

    def merge(self, rng: Range) -> None:
        """With several files (or an old one read-only): copy the rows in ``rng`` into one temporary table,
        deduplicated on ``completion_id`` (an acceptance in any copy counts); a column an older file lacks
        reads as NULL."""
        single = len(self.paths) == 1
        if single and set(EXPORT_COLUMNS) <= self.columns[0]:
            return
        cols = ", ".join(f"[{c}]" for c in EXPORT_COLUMNS)
        decl = ", ".join(f"[{c}]" + (" TEXT PRIMARY KEY" if c == "completion_id" else "") for c in EXPORT_COLUMNS)
        self.conn.execute("DROP TABLE IF EXISTS temp.merged")
        self.conn.execute(f"CREATE TEMP TABLE merged ({decl})")
        self.conn.execute("CREATE INDEX temp.merged_ts ON merged (developer, ts)")
        for i, path in enumerate(self.paths):
            if not single:
                self._attach(path, "s0")
            try:
                params: dict[str, Any] = {}
                where = rng.where(params)
                exprs = ", ".join(f"[{c}]" if c in self.columns[i] else "NULL" for c in EXPORT_COLUMNS)
                self.conn.execute(
                    f"INSERT INTO merged ({cols}) SELECT {exprs} FROM s0.completions WHERE {where} "
                    "ON CONFLICT(completion_id) DO UPDATE SET accepted = MAX(accepted, excluded.accepted), "
                    "accepted_ts = COALESCE(accepted_ts, excluded.accepted_ts)",
                    params,
                )
            except sqlite3.Error as e:
                raise StoreError(f"cannot read {path}: {e}") from e
            finally:
                if not single:
                    self.conn.execute("DETACH DATABASE s0")
        self.table = "temp.merged"

    def iter_rows(self, rng: Range) -> Iterator[dict[str, Any]]:
        sql, params = rows_sql(self.table, rng)
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        for row in cur:
            yield dict(zip(names, row, strict=True))

    def calibrations(self) -> list[dict[str, Any]]:
        """Every calibration in every file, newest first (JSON documents as saved)."""
        return [doc for _, doc in sorted(self._calibrations, key=lambda item: item[0], reverse=True)]

    def _attach_copy(self) -> sqlite3.Connection:
        """Another connection to the same single file (for a worker thread)."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("ATTACH DATABASE ? AS s0", (ro_uri(self.paths[0]),))
        conn.execute(f"PRAGMA s0.mmap_size = {MMAP_BYTES}")
        return conn

    def sums(self, statements: Sequence[tuple[str, dict[str, Any]]], conn: sqlite3.Connection | None = None
             ) -> list[dict[str, Any]]:
        """Run the statements of ``upsert_sums_sql`` (on ``conn``, default the source's own); the last one's rows,
        by column name."""
        conn = conn or self.conn
        try:
            for sql, params in statements[:-1]:
                conn.execute(sql, params)
            cur = conn.execute(*statements[-1])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur]
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the completions: {e}") from e

    def facts(
        self, this_week: Range, previous_week: Range, boundaries: Sequence[str], *, with_bins: bool = True,
        threads: int | None = None,
    ) -> dict[str, Facts]:
        """``Facts`` per developer. ``boundaries``: the 8 UTC starts of the week's local days.

        A single file is read by ``threads`` connections at once (default: 2 where two CPUs are idle, else 1),
        each summing a part of the week's days; merged files are read through the one connection that holds the
        merged table.
        """
        workers = max(1, min(threads or _idle_cpus(), 2, len(boundaries) - 1))
        if self.table != "s0.completions":
            workers = 1
        raw: list[dict[str, Any]] = []
        if workers == 1:
            raw = self.sums(aggregate_sql(self.table, this_week, boundaries, table="agg"))
        else:
            cut = [round(i * (len(boundaries) - 1) / workers) for i in range(workers + 1)]
            parts = [Range(boundaries[cut[i]], boundaries[cut[i + 1]], this_week.developers) for i in range(workers)]

            def work(k: int) -> list[dict[str, Any]]:
                conn = self._attach_copy()
                try:
                    return self.sums(aggregate_sql(self.table, parts[k], boundaries, table=f"agg{k}"), conn)
                finally:
                    conn.close()

            with ThreadPoolExecutor(workers) as pool:
                for rows in pool.map(work, range(workers)):
                    raw.extend(rows)
        by_dev: dict[str, Facts] = {}
        for r in raw:
            g = group_of(r)
            by_dev.setdefault(g.developer, Facts()).groups.append(g)
        for r in self.sums(previous_sql(self.table, previous_week)):
            by_dev.setdefault(str(r["developer"]), Facts()).previous.append(
                (int(r["accepted"] or 0), int(r["n"]), float(r["total_j"])))
        if with_bins:
            for r in self.sums(bins_sql(self.table, this_week)):
                b = Bin(model=str(r["model"]), device=str(r["device"]), in_bin=int(r["in_bin"]),
                        out_bin=int(r["out_bin"]), completions=int(r["n"]), total_j=float(r["total_j"]))
                by_dev.setdefault(str(r["developer"]), Facts()).bins.append(b)
        return by_dev


def _idle_cpus() -> int:
    """CPUs not already busy (1-minute load average): a second reader only helps where a core is free."""
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may run on (taskset, cgroups cpusets)
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cpus
    return max(1, int(cpus - load + 0.5))


@contextmanager
def open_source(paths: Sequence[Path]) -> Iterator[Source]:
    """Validate (and migrate) every file, then attach them all read-only."""
    files = expand_paths(paths)
    if not files:
        raise UsageError("no database given")
    for path in files:
        prepare_file(path)
    source = Source(files)
    try:
        yield source
    finally:
        source.close()
