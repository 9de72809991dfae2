"""Each developer's share of batched engine steps in the report (schema v6): summed over their step-attributed
completions on a real SQLite file, null without any, the same through a merge of several files and an older file
read as NULL, and as a ``Batched steps`` line in the text formats (only where there is a figure)."""

from __future__ import annotations

import sqlite3
from html import escape
from pathlib import Path
from typing import Any

import pytest
from tests.report.report_fixture import ALICE, BOB, build_db, rec

from greentrack.record import CompletionRecord
from greentrack.report.command import build_reports
from greentrack.report.render import render

W47: dict[str, Any] = {"week": "2026-W47", "tz": "Europe/Berlin", "carbon_intensity": 400.0}
NONE = {"completions": 0, "steps": 0, "batched": 0, "share": None, "mean_batch_size": None}


def stepped(cid: str, ts: str, steps: int, batched: int, mean_batch_size: float, **kw: Any) -> CompletionRecord:
    """A completion of the vLLM server, attributed by engine step."""
    return rec(cid, ts, prefill_j=0.5, decode_j=0.5, backend="vllm", device="cuda", method="attributed",
               meter="nvml:gpu0/steps", steps=steps, batched_steps=batched, mean_batch_size=mean_batch_size,
               uri=f"file:///w/{cid}.py", **kw)


#: Alice: 5 steps, 3 shared (1, 2, 2, 2, 1 requests) and 3 steps all shared (2 each), and one transformers row.
A1 = stepped("a1", "2026-11-16T08:00:00Z", 5, 3, 1.6)
A2 = stepped("a2", "2026-11-17T08:00:00Z", 3, 3, 2.0)
A3 = rec("a3", "2026-11-18T08:00:00Z", prefill_j=0.25, decode_j=0.25, uri="file:///w/a3.py")
#: Bob: a completion alone in all of its 4 steps, the week before one shared in every step.
B1 = stepped("b1", "2026-11-19T08:00:00Z", 4, 0, 1.0, developer=BOB)
B0 = stepped("b0", "2026-11-10T08:00:00Z", 6, 6, 3.0, developer=BOB)
#: Carol: the local transformers backend only.
C1 = rec("c1", "2026-11-20T08:00:00Z", prefill_j=0.25, decode_j=0.25, developer="carol@example.com")

ALICE_STEPS = {"completions": 2, "steps": 8, "batched": 6, "share": 0.75, "mean_batch_size": 1.75}
BOB_STEPS = {"completions": 1, "steps": 4, "batched": 0, "share": 0.0, "mean_batch_size": 1.0}


def team_db(path: Path, rows: list[CompletionRecord]) -> Path:
    return build_db(path, [(r, False) for r in rows], calibrations=False)


def by_developer(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["developer"]: r["batched_steps"] for r in reports}


def test_each_developers_share_of_batched_steps_on_a_real_file(tmp_path: Path) -> None:
    db = team_db(tmp_path / "team.db", [A1, A2, A3, B1, B0, C1])
    reports = build_reports([db], all_developers=True, **W47)  # what GET /v1/greentrack/report?all=true returns
    assert by_developer(reports) == {ALICE: ALICE_STEPS, BOB: BOB_STEPS, "carol@example.com": NONE}
    (alice,) = build_reports([db], developer=ALICE, **W47)
    assert alice["batched_steps"] == ALICE_STEPS and alice["completions"] == 3
    # the week before (bob's shared completion) is not in this week's figure; its own week has it
    (bob_before,) = build_reports([db], developer=BOB, **{**W47, "week": "2026-W46"})
    assert bob_before["batched_steps"] == {"completions": 1, "steps": 6, "batched": 6, "share": 1.0,
                                           "mean_batch_size": 3.0}


def test_the_text_formats_show_a_batched_steps_line_only_with_a_figure(tmp_path: Path) -> None:
    db = team_db(tmp_path / "team.db", [A1, A2, A3, C1])
    reports = build_reports([db], all_developers=True, **W47)
    line = "75.0% of 8 engine steps shared with other requests (mean batch 1.8, 2 completions)"
    md = render(reports, "md")
    assert f"| Batched steps | {line} |" in md.splitlines()
    assert md.count("| Batched steps |") == 1  # carol: no step-attributed completion, no line
    table = render(reports, "table", width=140)
    assert line in table and table.count("Batched steps") == 1
    html = render(reports, "html")
    assert escape(line) in html and html.count("Batched steps") == 1


def test_merged_files_and_an_older_file_read_as_not_step_attributed(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    team_db(team / "server.db", [A1, A2])
    team_db(team / "copy.db", [A2, A3])  # a2 twice: counted once
    old = team_db(team / "old.db", [rec("o1", "2026-11-21T08:00:00Z", prefill_j=0.5, decode_j=0.5)])
    with sqlite3.connect(old) as conn:  # as a v5 file left it: no step columns (read-only: not migrated)
        for column in ("steps", "batched_steps", "mean_batch_size"):
            conn.execute(f"ALTER TABLE completions DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 5")
    conn.close()
    old.chmod(0o444)
    try:
        (alice,) = build_reports([team], developer=ALICE, **W47)
    finally:
        old.chmod(0o644)
    assert alice["completions"] == 4 and alice["batched_steps"] == ALICE_STEPS


@pytest.mark.parametrize("steps, batched", [(1, 1), (7, 0)])
def test_one_completion_gives_its_own_share(tmp_path: Path, steps: int, batched: int) -> None:
    db = team_db(tmp_path / "one.db", [stepped("x", "2026-11-18T08:00:00Z", steps, batched, 1.0 + batched / steps)])
    (report,) = build_reports([db], developer=ALICE, **W47)
    assert report["batched_steps"] == {"completions": 1, "steps": steps, "batched": batched,
                                       "share": batched / steps, "mean_batch_size": 1.0 + batched / steps}
