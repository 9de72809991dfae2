"""``greentrack bench --budget line`` in-process: the replay gives every request the token budget of what the
developer types next (``script.line_budget_tokens``), and the product's own pipeline (embedded model, CPU, a real
SQLite file) generates within it. The ``--server`` side is in ``test_bench_server.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.bench_cmd.test_bench_replay import SOURCE

from greentrack.bench.command import open_pipeline_targets
from greentrack.bench.replay import Config, ConfigRun, PipelineTarget, Served, replay
from greentrack.bench.script import Segment, line_budget_tokens
from greentrack.config import Settings

CAP = 16


class Asked:
    """The real ``PipelineTarget``, with what each request asked for written down (text, budget, answer)."""

    def __init__(self, inner: PipelineTarget) -> None:
        self.inner = inner
        self.asked: dict[str, tuple[str, int | None, Served]] = {}

    def complete(self, completion_id: str, document_key: str, text: str, offset: int, cancel_after_s: float,
                 max_tokens: int | None = None) -> Served:
        served = self.inner.complete(completion_id, document_key, text, offset, cancel_after_s, max_tokens=max_tokens)
        self.asked[completion_id] = (text, max_tokens, served)
        return served

    def accept(self, completion_id: str) -> None:
        self.inner.accept(completion_id)

    def records(self) -> list[dict[str, Any]]:
        return self.inner.records()

    def close(self) -> None:
        self.inner.close()


def test_each_request_gets_its_next_lines_budget_and_the_pipeline_keeps_within_it(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    config = Config("line", 0, reuse=True, stop_rules=True, cache=False)
    settings = Settings.from_env(db_path=db).updated(max_tokens=CAP, context_tokens=192)
    [target] = open_pipeline_targets(settings, [config], db)
    asked = Asked(target)
    segment = Segment.from_text("module.py", SOURCE, 16, seed=3)
    upcoming = segment.typed + segment.after
    run = ConfigRun(config)
    try:
        for _ in replay(asked, run, [segment], seed=3, line_budget_cap=CAP):
            pass
        run.records = asked.records()
    finally:
        asked.close()
    assert asked.asked and len(run.records) == len(asked.asked)
    for text, budget, _ in asked.asked.values():
        position = len(text) - len(segment.before)
        assert budget == line_budget_tokens(upcoming[position:], CAP)
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT completion_id, completion_tokens FROM completions").fetchall()
    assert len(rows) == len(asked.asked)
    for completion_id, completion_tokens in rows:
        _, budget, _ = asked.asked[completion_id]
        assert budget is not None and completion_tokens <= budget
    # the budget reached the engine: short lines stop there, well below the settings' cap
    assert any(served.stop_reason == "max_tokens" and budget is not None and budget < CAP
               for _, budget, served in asked.asked.values())
