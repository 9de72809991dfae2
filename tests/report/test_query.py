"""The report's sums: one builder, one runner, rows decoded by column name (not position)."""

from __future__ import annotations

from pathlib import Path

from tests.store.store_records import make_record

from greentrack.report.query import (
    AGG_KEYS,
    AGG_VALUES,
    INTERVAL_VALUES,
    STEP_VALUES,
    Range,
    Source,
    aggregate_sql,
    bins_sql,
    previous_sql,
    upsert_sums_sql,
)
from greentrack.store import Store

DAYS = [f"2026-11-{d:02d}T00:00:00.000000+00:00" for d in range(16, 24)]
WEEK = Range(DAYS[0], DAYS[-1])
BEFORE = Range("2026-11-09T00:00:00.000000+00:00", DAYS[0])


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    with Store(path) as store:
        store.record(make_record(1, developer="a", ts="2026-11-18T10:00:00Z", prompt_tokens=600, total_j=2.0))
        store.record(make_record(2, developer="a", ts="2026-11-18T10:00:00.2Z", latency_ms=0.0, accepted=1,
                                 total_j=3.0, language_id="rust"))
        store.record(make_record(3, developer="b", ts="2026-11-20T09:00:00Z", total_j=5.0, model=None))
        store.record(make_record(4, developer="a", ts="2026-11-10T09:00:00Z", total_j=7.0))  # the week before
    return path


def test_the_statements_end_in_a_select_whose_columns_are_the_names() -> None:
    for statements, names in (
        (aggregate_sql("t", WEEK, DAYS), ["day", *(k for k, _ in AGG_KEYS), *(v for v, _ in AGG_VALUES),
                                          *(v for v, _ in INTERVAL_VALUES), *(v for v, _ in STEP_VALUES)]),
        (previous_sql("t", WEEK), ["developer", "accepted", "n", "total_j"]),
        (bins_sql("t", WEEK), ["developer", "model", "device", "in_bin", "out_bin", "n", "total_j"]),
    ):
        assert statements[0][0].startswith("DROP TABLE IF EXISTS temp.")
        assert statements[-1][0].startswith("SELECT " + ", ".join(names) + " FROM ")


def test_facts_decode_every_figure_by_name(tmp_path: Path) -> None:
    source = Source([_db(tmp_path)])
    try:
        facts = source.facts(WEEK, BEFORE, DAYS, threads=1)
        alice = sorted(facts["a"].groups, key=lambda g: g.total_j)
        assert [(g.day, g.language_id, g.accepted, g.completions, g.total_j) for g in alice] == [
            (2, "python", 0, 1, 2.0), (2, "rust", 1, 1, 3.0)]
        assert alice[0].computed_prompt_tokens == 600.0 and alice[0].beyond_cap[512] == 88.0
        assert alice[0].superseded_within[300] == (1, 2.0)  # the next request came 200 ms later
        assert alice[1].superseded_within[300] == (0, 0.0)
        (bob,) = facts["b"].groups
        assert (bob.day, bob.model, bob.method, bob.outcome) == (4, "", "estimated", "shown")
        assert facts["a"].previous == [(0, 1, 7.0)]
        assert {(b.model, b.in_bin, b.completions, b.total_j) for b in facts["a"].bins} == {
            ("m-small", 1024, 1, 2.0), ("m-small", 128, 1, 3.0)}
        # the runner returns rows by column name, whatever order the builder lists them in
        rows = source.sums(upsert_sums_sql(source.table, WEEK, table="t2", keys=[("who", "developer")],
                                           values=[("j", "COALESCE(total_j, 0)"), ("n", "1")]))
        assert sorted((r["who"], r["n"], r["j"]) for r in rows) == [("a", 2, 5.0), ("b", 1, 5.0)]
        # a value named in min_values keeps the smallest, the others still add up
        rows = source.sums(upsert_sums_sql(source.table, WEEK, table="t3", keys=[("who", "developer")],
                                           values=[("j", "COALESCE(total_j, 0)"), ("least", "COALESCE(total_j, 0)")],
                                           min_values=frozenset({"least"})))
        assert sorted((r["who"], r["j"], r["least"]) for r in rows) == [("a", 5.0, 2.0), ("b", 5.0, 5.0)]
    finally:
        source.close()
