"""Fixtures for the end-to-end language-server tests: the real ``greentrack lsp`` over stdio, the real
embedded model, a real SQLite file. Notifications the server sends are collected per client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

SERVER_COMMAND = [sys.executable, "-m", "greentrack", "lsp", "--stdio"]


def server_env(db: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GREENTRACK_DB=str(db), GREENTRACK_DEVELOPER="lsp-test@example.com", PYTHONUNBUFFERED="1")
    env.pop("GREENTRACK_MODEL", None)
    env.update(extra)
    return env


def make_config(db: Path, **extra: str) -> ClientServerConfig:
    return ClientServerConfig(server_command=SERVER_COMMAND, server_env=server_env(db, **extra))


class Collected:
    """Custom notifications (``greentrack/energy``, ``greentrack/status``) as plain dicts, in order."""

    def __init__(self) -> None:
        self.energy: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.capabilities: types.ServerCapabilities | None = None

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"gave up after {timeout_s} s; status={self.status} energy={self.energy}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


def _plain(params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    return {k: getattr(params, k) for k in params._fields} if hasattr(params, "_fields") else dict(vars(params))


def attach_collector(client: LanguageClient) -> Collected:
    collected = Collected()

    @client.feature("greentrack/energy")
    def on_energy(params: Any) -> None:
        collected.energy.append(_plain(params))
        collected.changed.set()

    @client.feature("greentrack/status")
    def on_status(params: Any) -> None:
        collected.status.append(_plain(params))
        collected.changed.set()

    return collected


async def start_session(
    client: LanguageClient, options: dict[str, Any] | None = None, wait_ready: bool = True
) -> Collected:
    collected = attach_collector(client)
    initialized = await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities("visual-studio-code"),
            initialization_options={"greentrack": {"debounceMs": 0, **(options or {})}},
            root_uri=Path(tempfile.gettempdir()).as_uri(),
        )
    )
    collected.capabilities = initialized.capabilities
    if wait_ready:
        await collected.wait_for(
            lambda: any(s["state"] in ("ready", "error") for s in collected.status), timeout_s=180
        )
        assert collected.status[-1]["state"] == "ready", collected.status
    return collected


def open_document(client: LanguageClient, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text)
        )
    )


def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


def collected(client: LanguageClient) -> Collected:
    """What ``start_session`` collected for ``client`` (the fixtures keep it as ``client.greentrack``)."""
    return client.greentrack  # type: ignore[attr-defined,no-any-return]


def stored_row(db: Path, completion_id: str) -> dict[str, Any]:
    """The completion's row in the server's SQLite file (asserts that it was stored)."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("select * from completions where completion_id = ?", (completion_id,)).fetchone()
    assert found is not None, f"completion {completion_id} was not stored"
    return dict(found)


async def complete_one(client: LanguageClient, uri: str, line: int, character: int
                       ) -> tuple[types.InlineCompletionItem, dict[str, Any]]:
    """One inline completion at (line, character) of an open document: its one item and, once it came, its
    ``greentrack/energy`` notification."""
    items = await client.text_document_inline_completion_async(inline_params(uri, line, character))
    assert isinstance(items, list) and len(items) == 1, items
    assert items[0].command is not None
    (completion_id,) = items[0].command.arguments or []
    found = collected(client)
    energy: dict[str, Any] = await found.wait_for(
        lambda: next((e for e in found.energy if e["completion_id"] == completion_id), None)
    )
    return items[0], energy


def configure(client: LanguageClient, settings: dict[str, Any]) -> None:
    """Send ``settings`` as the ``greentrack`` section of ``workspace/didChangeConfiguration``."""
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"greentrack": settings}))


def warnings(client: LanguageClient, containing: str = "") -> list[str]:
    """The warning messages the server showed so far (those containing ``containing``)."""
    return [m.message for m in client.messages if m.type == types.MessageType.Warning and containing in m.message]


async def wait_for_warnings(client: LanguageClient, count: int, containing: str = "",
                            timeout_s: float = 10.0) -> list[str]:
    """``warnings(client, containing)`` once there are ``count`` of them, or at ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(warnings(client, containing)) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return warnings(client, containing)


def frame(payload: bytes) -> bytes:
    """One message as the base protocol frames it."""
    return b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload


class StdioServer:
    """The real ``greentrack lsp`` as a subprocess, driven byte by byte (for what a well-behaved client never
    sends). stdout is read on a thread into a queue of messages; stderr goes to ``log_path``."""

    def __init__(self, db: Path, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            SERVER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env=server_env(db, **env),
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            length = 0
            while (line := stdout.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if not line:
                return
            self.messages.put(json.loads(stdout.read(length)))

    def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message: dict[str, Any] | bytes) -> None:
        """One framed message: a dict as JSON, bytes as the body itself."""
        self.send_bytes(frame(message if isinstance(message, bytes) else json.dumps(message).encode()))

    def next_message(self, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.messages.get(timeout=timeout_s)

    def answer(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The next response (skipping the server's notifications)."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.next_message(max(0.01, deadline - time.monotonic()))
            if "method" not in message:
                return message

    def initialize(self) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": "init", "method": "initialize",
                   "params": {"processId": None, "rootUri": None, "capabilities": {}}})
        answer = self.answer(60)
        assert answer.get("id") == "init" and "capabilities" in answer["result"], answer
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        return answer

    def log_lines(self) -> list[str]:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()
