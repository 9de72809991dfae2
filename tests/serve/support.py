"""A real ``greentrack serve`` subprocess on 127.0.0.1 (a free port), the embedded model, the transformers backend."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from greentrack.store import Store

START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def greentrack(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
               ) -> subprocess.CompletedProcess[str]:
    """The command line in a fresh process."""
    return subprocess.run([sys.executable, "-m", "greentrack", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env or dict(os.environ), check=False)


class Server:
    """``greentrack serve`` on a free loopback port; its stderr goes to ``log_path``."""

    def __init__(self, db: Path, *, extra: tuple[str, ...] = (), developer: str = "local@example.com") -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = db.with_suffix(f".{self.port}.log")
        self.env = dict(os.environ, GREENTRACK_DEVELOPER=developer)
        self.args = ("serve", "--port", str(self.port), "--db", str(db), "--idle-period", "1", *extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "greentrack", *self.args], stdout=log, stderr=log,
                                     env=self.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"greentrack serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"greentrack serve did not answer /health within {START_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the graceful exit; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """kill -9 (what a crash or the OOM killer does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def client(self, token: str | None = None, timeout_s: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)


def hang_up_during(server: Server, token: str, body: dict[str, Any], after_s: float) -> None:
    """POST ``body`` to ``/v1/greentrack/complete`` over a raw socket and close it ``after_s`` later, unanswered
    (a client that goes away mid-generation)."""
    payload = json.dumps(body).encode()
    request = (f"POST /v1/greentrack/complete HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        time.sleep(after_s)


def wait_row(server: Server, completion_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """The stored completion ``completion_id``, polled until it appears; fails with the server's log tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with Store(server.db) as store:
            row = next((dict(r) for r in store.completions() if r["completion_id"] == completion_id), None)
        if row is not None:
            return row
        time.sleep(0.2)
    raise AssertionError(f"completion {completion_id} was never stored:\n{server.log()[-3000:]}")


def native(text: str, **fields: Any) -> dict[str, Any]:
    """A ``POST /v1/greentrack/complete`` body with the cursor at the end of ``text``."""
    body: dict[str, Any] = {"text": text, "offset": len(text), "language_id": "python", "uri": "file:///t.py",
                            "max_tokens": 8}
    body.update(fields)
    return body
