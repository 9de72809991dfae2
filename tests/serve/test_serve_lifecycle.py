"""``greentrack serve`` start, stop and crash: the binding rule, the local user without tokens, SIGTERM with a
completion in flight, kill -9 and a restart on the same database, and the token commands."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.serve.support import Server, greentrack, native

from greentrack.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_non_loopback_without_tokens_is_refused_before_loading(tmp_path: Path) -> None:
    done = greentrack("serve", "--host", "0.0.0.0", "--port", "1", "--db", str(tmp_path / "g.db"), timeout_s=60)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without tokens" in done.stderr and "Traceback" not in done.stderr


def test_token_commands(tmp_path: Path) -> None:
    db = str(tmp_path / "g.db")
    added = greentrack("token", "add", "dana@example.com", "--admin", "--db", db)
    assert added.returncode == 0 and added.stdout.strip().startswith("gt_")
    listed = greentrack("token", "list", "--json", "--db", db)
    assert listed.returncode == 0 and added.stdout.strip() not in listed.stdout  # never the token itself
    assert '"developer": "dana@example.com"' in listed.stdout and '"admin": true' in listed.stdout
    assert greentrack("token", "revoke", "dana@example.com", "--db", db).returncode == 0
    again = greentrack("token", "revoke", "dana@example.com", "--db", db)
    assert again.returncode == 2 and "no live token" in again.stderr


def test_sigterm_finishes_in_flight_then_kill9_and_restart_keep_every_row(tmp_path: Path) -> None:
    db = tmp_path / "local.db"
    server = Server(db, developer="me@example.com").start()
    try:
        with server.client() as local:  # loopback, no tokens: the server's own user
            first = local.post("/v1/greentrack/complete", json=native("a = 1\nb = ")).json()
            local.get(f"/v1/greentrack/completions/{first['completion_id']}", params={"wait": 10})
        answer: dict[str, Any] = {}

        def in_flight() -> None:
            with server.client() as local:
                answer.update(local.post("/v1/greentrack/complete",
                                         json=native("xs = [1, 2, 3, 4, 5, 6, ", completion_id="in-flight-01")).json())

        worker = threading.Thread(target=in_flight)
        worker.start()
        time.sleep(0.6)  # it reached the engine (prefill takes longer on this machine)
        status = server.terminate()
        assert status in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises SIGTERM after its clean shutdown
        worker.join(timeout=30)
    finally:
        server.kill()
    with Store(db) as store:
        rows = {r["completion_id"]: r for r in store.completions()}
    assert rows[first["completion_id"]]["developer"] == "me@example.com"
    assert "in-flight-01" in rows  # finished (or cancelled) and stored before the process ended
    assert "shutting down" in server.log()

    restarted = Server(db, developer="me@example.com").start()
    try:
        with restarted.client() as local:
            second = local.post("/v1/greentrack/complete", json=native("c = 3\nd = ")).json()
            local.get(f"/v1/greentrack/completions/{second['completion_id']}", params={"wait": 10})
            old = local.get(f"/v1/greentrack/completions/{first['completion_id']}")
            assert old.status_code == 200 and old.json()["developer"] == "me@example.com"  # from the database
    finally:
        restarted.kill()  # kill -9: committed rows survive
    with Store(db) as store:
        ids = {r["completion_id"] for r in store.completions()}
    assert {first["completion_id"], "in-flight-01", second["completion_id"]} <= ids
