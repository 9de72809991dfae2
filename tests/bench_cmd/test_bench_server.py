"""``greentrack bench --server URL``: the same replay against a real ``greentrack serve`` (embedded model): its
records are the server's rows, its configuration carries the server's suggestion cache as ``/health`` says, and
``--budget line`` asks the server for each request's next-line budget (seen on the wire by a relay in between)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.bench_cmd.test_bench_replay import SOURCE
from tests.serve.support import Server

from greentrack.bench.command import open_server_target
from greentrack.bench.script import Segment, line_budget_tokens


def run_bench(source: Path, server: Server, url: str, *options: str) -> dict[str, Any]:
    """``greentrack bench SOURCE --server URL --json OPTIONS`` (URL: ``server``'s, or a relay in front of it)."""
    out = subprocess.run(
        [sys.executable, "-m", "greentrack", "bench", str(source), "--seed", "2", "--server", url, "--json", *options],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:] + server.log()[-3000:]
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


@contextmanager
def relay(upstream: str, *, hide_health_field: str | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP relay on 127.0.0.1 in front of the server: (its URL, the body of every ``/v1/greentrack/complete``
    that went through it). ``hide_health_field``: drop that field from ``/health``'s answer (an older server)."""
    bodies: list[dict[str, Any]] = []

    class Relay(BaseHTTPRequestHandler):
        def relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            if self.path == "/v1/greentrack/complete" and data:
                bodies.append(json.loads(data))
            request = urllib.request.Request(upstream + self.path, data=data, method=self.command)
            for name in ("Content-Type", "Authorization"):
                if self.headers.get(name):
                    request.add_header(name, self.headers[name])
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as e:
                status, payload = e.code, e.read()
            if self.path == "/health" and hide_health_field:
                health = json.loads(payload)
                del health[hide_health_field]
                payload = json.dumps(health).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = relay

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", bodies
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_the_replay_runs_against_greentrack_serve(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(SOURCE, encoding="utf-8")
    server = Server(tmp_path / "serve.db").start()
    try:
        summary = run_bench(source, server, server.url, "--chars", "24")
        [config] = summary["configurations"]
        assert config["name"] == "server" and config["completions"] >= 1
        assert config["energy"]["method"] in ("measured", "attributed", "estimated")
        assert config["energy"]["value_j"] > 0 and config["tokens"]["prompt"] > 0
        with sqlite3.connect(server.db) as db:
            stored = db.execute("SELECT COUNT(*) FROM completions WHERE uri LIKE 'file:///bench/server/%'").fetchone()
        assert stored[0] == config["completions"]  # every record the bench counted is the server's own row
        assert config["settings"]["cache"] is True and summary["meta"]["server_suggestion_cache"] is True
        assert summary["meta"]["budget"] == "fixed"
    finally:
        server.kill()


def test_budget_line_asks_each_request_for_its_next_line_and_the_cache_is_the_servers(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(SOURCE, encoding="utf-8")
    chars, cap = 20, 16
    server = Server(tmp_path / "serve.db", extra=("--no-suggestion-cache",)).start()
    try:
        with relay(server.url) as (url, bodies):
            summary = run_bench(source, server, url, "--chars", str(chars), "--budget", "line",
                                "--max-tokens", str(cap))
        [config] = summary["configurations"]
        assert config["settings"]["cache"] is False and summary["meta"]["server_suggestion_cache"] is False
        assert (summary["meta"]["budget"], summary["meta"]["max_tokens"]) == ("line", cap)
        # Every request asked for the tokens of what the developer types next from where it was sent.
        segment = Segment.from_file(source, chars, seed=2)
        upcoming = segment.typed + segment.after
        budgets = {}
        for body in bodies:
            position = len(body["text"]) - len(segment.before)
            assert body["text"] == segment.before + upcoming[:position]
            budgets[body["completion_id"]] = body["max_tokens"]
            assert body["max_tokens"] == line_budget_tokens(upcoming[position:], cap)
        assert min(budgets.values()) < cap  # short lines: not the fixed budget
        # What the server stored: every record the bench counted, each within its request's budget.
        with sqlite3.connect(server.db) as db:
            rows = db.execute("SELECT completion_id, completion_tokens FROM completions").fetchall()
        assert len(rows) == config["completions"] >= 1, server.log()[-3000:]
        for completion_id, completion_tokens in rows:
            assert completion_tokens <= budgets[completion_id], (completion_id, completion_tokens)
        # A server whose /health does not say (older): counted as on, marked unknown.
        for hidden, cache, said in ((None, False, False), ("suggestion_cache", True, None)):
            with relay(server.url, hide_health_field=hidden) as (url, _):
                meta: dict[str, Any] = {}
                _, server_config = open_server_target(url, None, 150, meta)
            assert (server_config.cache, meta["server_suggestion_cache"]) == (cache, said)
    finally:
        server.kill()
