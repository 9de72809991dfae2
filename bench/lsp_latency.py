"""Benchmark: keystroke-to-suggestion latency of the real language server while a real file is typed.

Replays the start of a module of Python's standard library character by character into ``greentrack lsp``
(real embedded model, real SQLite), the way VS Code drives an inline-completion provider: every keystroke
sends ``didChange`` and a new ``textDocument/inlineCompletion`` request and cancels the previous request
(``$/cancelRequest``). Regular pauses (the user waits for a suggestion) let suggestions finish. Prints p50/p95
latency of the answered requests, the share answered with a suggestion, and the server's CPU seconds per
suggestion, side by side for the policies given (debounce values), with the energy of shown and of wasted
(cancelled, empty) completions (estimated on a machine without an energy counter).

    .venv/bin/python bench/lsp_latency.py --chars 240 --policy 0 --policy 150 --policy 150:2
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from lsprotocol import types
from pygls.lsp.client import LanguageClient


@dataclass
class Run:
    debounce_ms: int
    threads: int | None
    latencies_ms: list[float] = field(default_factory=list)
    suggestions: int = 0
    requests: int = 0
    cancelled: int = 0
    server_cpu_s: float = 0.0
    energy_by_outcome: dict[str, float] = field(default_factory=dict)


def source_text() -> str:
    return inspect.getsource(textwrap)


#: The document the replay types into (it exists only in the client's messages).
TYPED_URI = "file:///bench/textwrap_typed.py"

#: A pending inline-completion request: (its task, when it was sent (monotonic s), its message id).
Pending = tuple["asyncio.Task[object]", float, str]


async def replay(
    debounce_ms: int, threads: int | None, chars: int, keystroke_s: float, pause_s: float, pause_every: int
) -> Run:
    run = Run(debounce_ms, threads)
    db = Path(tempfile.mkdtemp(prefix="greentrack-bench-")) / "bench.db"
    env = dict(os.environ, GREENTRACK_DB=str(db), GREENTRACK_DEVELOPER="bench@example.com")
    if threads is not None:
        env["GREENTRACK_THREADS"] = str(threads)
    client = LanguageClient("greentrack-bench", "0")
    ready = asyncio.Event()
    listen(client, run, ready)
    await client.start_io(sys.executable, "-m", "greentrack", "lsp", env=env)
    assert client._server is not None
    server = psutil.Process(client._server.pid)
    stderr_log = db.with_suffix(".stderr.log")
    drainer = asyncio.ensure_future(drain_stderr(client, stderr_log))
    await initialize(client, debounce_ms, ready, stderr_log)
    text = source_text()
    start = text.index("def wrap(")  # type a real function, character by character
    typed = text[start : start + chars]
    prefix = text[:start]
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=TYPED_URI, language_id="python", version=1, text=prefix)
        )
    )
    cpu_before = server.cpu_times()
    settles = await type_text(client, run, typed, prefix.count("\n"), keystroke_s, pause_s, pause_every)
    await asyncio.gather(*settles)
    await asyncio.sleep(1.0)  # the last energy notifications
    cpu_after = server.cpu_times()
    run.server_cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    drainer.cancel()
    return run


def listen(client: LanguageClient, run: Run, ready: asyncio.Event) -> None:
    """The server's notifications the replay follows: its status (``ready`` is set once the model is loaded or
    failed) and each completion's energy (summed into ``run`` by outcome)."""

    @client.feature("greentrack/status")
    def on_status(params):  # type: ignore[no-untyped-def]  # pygls reads annotations: leave it bare
        state = params.get("state") if isinstance(params, dict) else getattr(params, "state", None)
        if state in ("ready", "error"):
            ready.set()

    @client.feature("greentrack/energy")
    def on_energy(params):  # type: ignore[no-untyped-def]
        fields = params if isinstance(params, dict) else params._asdict()
        outcome = fields["outcome"]
        run.energy_by_outcome[outcome] = run.energy_by_outcome.get(outcome, 0.0) + fields["total_j"]


async def drain_stderr(client: LanguageClient, stderr_log: Path) -> None:
    """The server's stderr into ``stderr_log`` (an unread stderr pipe would block the server once full)."""
    stream = client._server.stderr if client._server else None
    if stream is None:
        return
    with stderr_log.open("wb") as sink:
        while chunk := await stream.read(65536):
            sink.write(chunk)


async def initialize(client: LanguageClient, debounce_ms: int, ready: asyncio.Event, stderr_log: Path) -> None:
    """The LSP handshake with the policy's debounce, then wait (up to 300 s) for the server's model."""
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={"greentrack": {"debounceMs": debounce_ms, "maxTokens": 32}},
        )
    )
    client.initialized(types.InitializedParams())
    try:
        await asyncio.wait_for(ready.wait(), 300)
    except TimeoutError:
        raise SystemExit(f"the server did not get ready; its log: {stderr_log}") from None


async def type_text(
    client: LanguageClient, run: Run, typed: str, line: int, keystroke_s: float, pause_s: float, pause_every: int
) -> list[asyncio.Task[None]]:
    """Type ``typed`` from the start of ``line``, one keystroke at a time: cancel the previous request if it is
    still running, send the change, request an inline completion; pause every ``pause_every`` keystrokes.
    Returns the tasks that settle each request into ``run``."""
    col = 0
    pending: Pending | None = None
    settles: list[asyncio.Task[None]] = []
    for version, char in enumerate(typed, start=2):
        if pending is not None and not pending[0].done():
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=pending[2]))
        send_keystroke(client, version, line, col, char)
        if char == "\n":
            line, col = line + 1, 0
        else:
            col += 1
        pending = request_completion(client, f"bench-{run.debounce_ms}-{version}", line, col)
        run.requests += 1
        settles.append(asyncio.ensure_future(settle(run, pending[0], pending[1])))
        await asyncio.sleep(pause_s if version % pause_every == 0 else keystroke_s)
    return settles


def send_keystroke(client: LanguageClient, version: int, line: int, col: int, char: str) -> None:
    """``didChange``: ``char`` inserted at (``line``, ``col``), the document now at ``version``."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=TYPED_URI, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(line, col), types.Position(line, col)), text=char
                )
            ],
        )
    )


def request_completion(client: LanguageClient, msg_id: str, line: int, col: int) -> Pending:
    """An automatic ``textDocument/inlineCompletion`` request at (``line``, ``col``), sent now."""
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(TYPED_URI),
        position=types.Position(line, col),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )
    sent_s = time.monotonic()
    task = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
    )
    return task, sent_s, msg_id


async def settle(run: Run, task: asyncio.Task[object], sent_s: float) -> None:
    """One request's outcome into ``run``: cancelled (it raised), or its latency and whether it had a suggestion."""
    try:
        result = await task
    except Exception:
        run.cancelled += 1
        return
    run.latencies_ms.append((time.monotonic() - sent_s) * 1000)
    if result:
        run.suggestions += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_policy(text: str) -> tuple[int, int | None]:
    debounce, _, threads = text.partition(":")
    return int(debounce), int(threads) if threads else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=300, help="characters to type")
    parser.add_argument("--keystroke-ms", type=float, default=120.0, help="time between keystrokes")
    parser.add_argument("--pause-ms", type=float, default=1500.0, help="length of a pause (the user waits)")
    parser.add_argument("--pause-every", type=int, default=12, help="pause after every N keystrokes")
    parser.add_argument(
        "--policy", action="append",
        help="DEBOUNCE_MS[:THREADS] (model threads; default: the server's choice); repeat to compare side by side",
    )
    args = parser.parse_args()
    runs = [
        await replay(d, t, args.chars, args.keystroke_ms / 1000, args.pause_ms / 1000, args.pause_every)
        for d, t in (parse_policy(p) for p in (args.policy or ["150"]))
    ]
    print(f"typed {args.chars} chars of textwrap.wrap, {args.keystroke_ms:.0f} ms/keystroke, "
          f"{args.pause_ms:.0f} ms pause every {args.pause_every} keystrokes; {os.cpu_count()} CPUs")
    print(f"{'debounce':>9} {'threads':>7} {'requests':>8} {'answered':>8} {'cancelled':>9} {'shown':>6} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'CPU s/suggestion':>17} {'J shown':>8} {'J wasted':>9}")
    for r in runs:
        per = r.server_cpu_s / r.suggestions if r.suggestions else float("nan")
        print(f"{r.debounce_ms:>7}ms {r.threads or 'auto':>7} "
              f"{r.requests:>8} {len(r.latencies_ms):>8} {r.cancelled:>9} {r.suggestions:>6} "
              f"{percentile(r.latencies_ms, 0.5):>8.0f} {percentile(r.latencies_ms, 0.95):>8.0f} {per:>17.2f} "
              f"{r.energy_by_outcome.get('shown', 0.0):>8.1f} "
              f"{sum(v for k, v in r.energy_by_outcome.items() if k != 'shown'):>9.1f}")
    if len(runs) > 1:
        base = runs[0]
        for r in runs[1:]:
            ratio = (r.server_cpu_s / base.server_cpu_s) if base.server_cpu_s else float("nan")
            print(f"server CPU, {r.debounce_ms} ms/{r.threads or 'auto'} threads vs "
                  f"{base.debounce_ms} ms/{base.threads or 'auto'}: {ratio:.2f}×")


if __name__ == "__main__":
    asyncio.run(main())
