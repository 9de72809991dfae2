"""Remote mode's local mirror of a server's completion record (``serve.models.record_view`` on the server,
``remote.record_from_view`` in the language server): the engine-step figures of schema v6 (``steps``,
``batched_steps``, ``mean_batch_size``) travel in ``GET /v1/greentrack/completions/{id}`` and are stored in the
editor's own database, so a local ``greentrack report`` of remote completions has its batched-steps figure; an
older server's record without them is mirrored with them None. Real SQLite files on both sides, the record passed
through JSON as the HTTP API sends it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.report.report_fixture import ALICE, rec

from greentrack.record import CompletionRecord
from greentrack.remote import record_from_view
from greentrack.report.command import build_reports
from greentrack.serve.models import STEP_FIELDS, record_view
from greentrack.store import Store

SERVER_URL = "http://127.0.0.1:8765"
W47: dict[str, Any] = {"week": "2026-W47", "tz": "Europe/Berlin", "carbon_intensity": 400.0}
#: A vLLM completion attributed by engine step: 5 steps, 3 shared with another request, 1.6 requests a step.
STEPPED = rec("s1", "2026-11-16T08:00:00Z", prefill_j=0.5, decode_j=0.5, backend="vllm", device="cuda:0",
              method="attributed", meter="nvml:gpu0/steps", steps=5, batched_steps=3, mean_batch_size=1.6)
#: The transformers backend: no step figures.
WHOLE_DEVICE = rec("t1", "2026-11-17T08:00:00Z", prefill_j=0.25, decode_j=0.25)


def over_http(view: dict[str, Any]) -> dict[str, Any]:
    """The record as the client reads it: through JSON (as the app serialises it)."""
    decoded: dict[str, Any] = json.loads(json.dumps(view))
    return decoded


def stored_view(db: Path, record: CompletionRecord) -> dict[str, Any]:
    """The server's view of a stored row (the path a completion no longer in memory takes)."""
    with Store(db) as store:
        store.record(record)
        row = store.completion(record.completion_id, developer=record.developer)
    assert row is not None
    return over_http(record_view(row))


def mirrored(db: Path, view: dict[str, Any]) -> dict[str, Any]:
    """``view`` mirrored into the local database as the language server does; the stored row."""
    with Store(db) as store:
        store.record(record_from_view(view, served_by=SERVER_URL))
        row = store.completion(str(view["completion_id"]))
    assert row is not None
    return row


def test_the_record_carries_the_step_figures_null_where_unknown(tmp_path: Path) -> None:
    live = over_http(record_view(STEPPED.row()))  # a completion the server still holds
    stored = stored_view(tmp_path / "server.db", STEPPED)
    for view in (live, stored):
        assert (view["steps"], view["batched_steps"], view["mean_batch_size"]) == (5, 3, 1.6), view
    plain = stored_view(tmp_path / "server.db", WHOLE_DEVICE)
    assert set(STEP_FIELDS) <= set(plain) and all(plain[name] is None for name in STEP_FIELDS), plain


def test_the_mirror_stores_them_and_the_local_report_shows_them(tmp_path: Path) -> None:
    local_db = tmp_path / "local.db"
    record = record_from_view(stored_view(tmp_path / "server.db", STEPPED), served_by=SERVER_URL)
    assert (record.steps, record.batched_steps, record.mean_batch_size) == (5, 3, 1.6)
    row = mirrored(local_db, stored_view(tmp_path / "server.db", WHOLE_DEVICE))
    assert row["served_by"] == SERVER_URL and all(row[name] is None for name in STEP_FIELDS), row
    row = mirrored(local_db, over_http(record_view(STEPPED.row())))
    assert (row["steps"], row["batched_steps"], row["mean_batch_size"]) == (5, 3, 1.6), row
    assert row["served_by"] == SERVER_URL and row["developer"] == ALICE
    (report,) = build_reports([local_db], developer=ALICE, **W47)
    assert report["batched_steps"] == {"completions": 1, "steps": 5, "batched": 3, "share": 0.6,
                                       "mean_batch_size": 1.6}


def test_an_older_servers_record_without_them_is_mirrored_with_none(tmp_path: Path) -> None:
    view = over_http(record_view(STEPPED.row()))
    for name in STEP_FIELDS:  # a server before this change: its record has no step figures
        del view[name]
    record = record_from_view(view, served_by=SERVER_URL)
    assert (record.steps, record.batched_steps, record.mean_batch_size) == (None, None, None)
    assert record.total_j == STEPPED.total_j and record.meter == STEPPED.meter
    local_db = tmp_path / "local.db"
    row = mirrored(local_db, view)
    assert all(row[name] is None for name in STEP_FIELDS), row
    (report,) = build_reports([local_db], developer=ALICE, **W47)
    assert report["batched_steps"] == {"completions": 0, "steps": 0, "batched": 0, "share": None,
                                       "mean_batch_size": None}
