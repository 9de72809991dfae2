"""Issue 16.2 on the product path: the real embedded model serves whatever the database's state.

A database locked when the pipeline opens: the model loads, completions made meanwhile spool and all arrive once
the lock is released, and the stored calibration is read then. ``greentrack complete --db`` on a read-only
mount: one warning, the suggestion, no traceback.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.store.lock_holder import held_exclusive
from tests.store.test_resilience import tiny_filesystem

from greentrack import pipeline as pipeline_module
from greentrack.config import Settings
from greentrack.energy.calibration import Calibration
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.pipeline import RequestContext, host_name, open_pipeline
from greentrack.store import Store
from greentrack.store.spool import Spool

SHAPES = Path(__file__).resolve().parents[2] / "examples" / "shapes.py"


def _calibration(model: str) -> Calibration:
    return Calibration(source_meter="nvml", device="cpu", model=model, host=host_name(), j_per_prompt_token=0.002,
                       j_per_decode_token=0.2, prefill_w=100.0, decode_w=80.0, idle_w=10.0, fit_error=0.05,
                       n_points=1)


@pytest.mark.e2e
def test_database_locked_when_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "CALIBRATION_RETRY_S", 0.0)
    path = tmp_path / "g.db"
    with Store(path) as store:
        store.save_calibration(_calibration("embedded").to_dict())
        store.conn.execute("PRAGMA journal_mode = delete")  # readers are locked out too
    settings = Settings.from_env(db_path=path, model="embedded", device="cpu").updated(max_tokens=2)
    text = SHAPES.read_text()

    def complete(n: int) -> str:
        request = CompletionRequest(request_id=f"r{n}", document_key=str(SHAPES), text=text, offset=len(text) // 2,
                                    language_id="python", max_tokens=2, max_time_s=30.0, context_tokens=256)
        received_s = time.monotonic()
        result = pipeline.run(request, CancelToken())
        return pipeline.finalize(result, RequestContext(SHAPES.as_uri(), "python", received_s)).completion_id

    with held_exclusive(path):
        pipeline = open_pipeline(settings)
        try:
            assert pipeline.calibration_pending
            assert not pipeline.monitor.meter_name.startswith("calibrated:")
            made = [complete(n) for n in range(3)]
            assert len(Spool(path).entries()) == 3
        except BaseException:
            pipeline.close()
            raise
    try:
        made.append(complete(3))
        assert not pipeline.calibration_pending
        assert pipeline.monitor.meter_name.startswith("calibrated:")
    finally:
        pipeline.close()
    with Store(path) as store:
        assert sorted(r["completion_id"] for r in store.completions()) == sorted(made)
    assert not Spool(path).pending()


@pytest.mark.e2e
def test_complete_on_a_read_only_mount_has_no_traceback(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path) as mount:
        path = mount / "g.db"
        with Store(path) as store:
            store.save_calibration(_calibration("embedded").to_dict())
        made = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot remount read-only: {made.stderr.decode().strip()}")
        result = subprocess.run(
            [sys.executable, "-m", "greentrack", "complete", str(SHAPES), "--line", "16", "--col", "15", "--json",
             "--max-tokens", "2", "--db", str(path)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert len([line for line in result.stderr.splitlines() if "greentrack.store" in line]) <= 2, result.stderr
        fields = json.loads(result.stdout)
        assert fields["meter"].startswith("calibrated:")  # the calibration was read from the read-only file
        spooled = Spool(path).entries()
        assert [e["row"]["completion_id"] for e in spooled] == [fields["completion_id"]]
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            assert conn.execute("SELECT count(*) FROM completions").fetchone() == (0,)
        finally:
            conn.close()
