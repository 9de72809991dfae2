"""``greentrack bench --server URL``: the same replay against a real ``greentrack serve`` (embedded model)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.bench_cmd.test_bench_replay import SOURCE
from tests.serve.support import Server


def test_the_replay_runs_against_greentrack_serve(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(SOURCE, encoding="utf-8")
    server = Server(tmp_path / "serve.db").start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "greentrack", "bench", str(source), "--chars", "24", "--seed", "2",
             "--server", server.url, "--json"],
            capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:] + server.log()[-3000:]
        summary = json.loads(out.stdout)
        [config] = summary["configurations"]
        assert config["name"] == "server" and config["completions"] >= 1
        assert config["energy"]["method"] in ("measured", "attributed", "estimated")
        assert config["energy"]["value_j"] > 0 and config["tokens"]["prompt"] > 0
        with sqlite3.connect(server.db) as db:
            stored = db.execute("SELECT COUNT(*) FROM completions WHERE uri LIKE 'file:///bench/server/%'").fetchone()
        assert stored[0] == config["completions"]  # every record the bench counted is the server's own row
    finally:
        server.kill()
