"""The ``greentrack serve`` and ``greentrack token`` commands (typer), registered by ``greentrack.cli``.

Place in the flow: thin commands; ``serve`` calls ``serve.run.serve``, ``token`` calls the store's token
methods. Domain errors propagate to ``greentrack.cli.main``, which prints one line and exits 1 (2 for usage).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greentrack.config import Settings
from greentrack.errors import UsageError

if TYPE_CHECKING:
    from greentrack.store import Store

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="SQLite database (default: $GREENTRACK_DB or ~/.local/share/greentrack/greentrack.db)."),
]

token_app = typer.Typer(name="token", help="Bearer tokens of `greentrack serve`, one per developer.",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind (not loopback: tokens must exist).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8765,
    db: DbOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="'embedded', a hub id, a local folder or a .gguf.")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="transformers (default) or vllm.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto (default), cpu, cuda or cuda:N.")] = None,
    idle_period: Annotated[
        float, typer.Option("--idle-period", min=0.5, help="Seconds between stores of the idle energy.")
    ] = 30.0,
    max_body: Annotated[int, typer.Option("--max-body", min=1024, help="Largest request body, bytes.")]
    = 2 * 1024 * 1024,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.1, help="Seconds a request body may take per chunk (else 408).")
    ] = 10.0,
    graceful: Annotated[
        float, typer.Option("--graceful", min=0.0, help="Seconds in-flight requests get to finish on SIGTERM.")
    ] = 10.0,
    tensor_parallel_size: Annotated[
        int, typer.Option("--tensor-parallel-size", min=1, help="vLLM: GPUs one model is split over.")
    ] = 1,
    data_parallel_size: Annotated[
        int, typer.Option("--data-parallel-size", min=1,
                          help="vLLM on GPUs: model replicas, each with its engine process on its own GPUs "
                               "(--tensor-parallel-size of them) and metered on them; a developer stays on one."),
    ] = 1,
    max_num_seqs: Annotated[
        int | None, typer.Option("--max-num-seqs", min=1, help="vLLM: requests batched at most (default 8).")
    ] = None,
    async_scheduling: Annotated[
        bool | None,
        typer.Option("--async-scheduling/--no-async-scheduling",
                     help="vLLM: schedule the next batch while one runs (default: vLLM's choice; the engine's "
                          "effective setting is logged at start)."),
    ] = None,
    engine_process: Annotated[
        bool | None,
        typer.Option("--engine-process/--no-engine-process",
                     help="vLLM: run the engine core in a process of its own (its own GIL; the step records come "
                          "back over a local socket). Default: on where vLLM runs on GPUs, off on CPUs."),
    ] = None,
    switch_interval_ms: Annotated[
        float | None,
        typer.Option("--switch-interval-ms", min=0.05, max=100.0,
                     help="How long a thread holds Python's GIL before a waiting one gets it (default: Python's 5 ms); "
                          "the in-process vLLM engine thread shares it with the HTTP threads."),
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option("--engine-arg", metavar="KEY=VALUE",
                     help="vLLM: one more EngineArgs keyword (repeatable); VALUE is JSON where it parses, else a "
                          "string, e.g. compilation_config='{\"cudagraph_mode\": \"FULL\"}'."),
    ] = None,
    suggestion_cache: Annotated[
        bool | None,
        typer.Option("--suggestion-cache/--no-suggestion-cache",
                     help="Serve what is typed into a suggestion still shown from the cache, with no model work "
                          "(default: $GREENTRACK_SUGGESTION_CACHE, else on)."),
    ] = None,
) -> None:
    """Serve completions over HTTP (OpenAI-compatible and greentrack-native), metered per developer."""
    from greentrack.serve.run import ServeOptions
    from greentrack.serve.run import serve as run_server

    if backend is not None and backend not in ("transformers", "vllm"):
        raise UsageError(f"--backend must be 'transformers' or 'vllm', not {backend!r}")
    if device is not None and device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    for name in ("greentrack", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    settings = Settings.from_env(db_path=db, model=model, backend=backend, device=device,
                                 suggestion_cache=suggestion_cache)
    options = ServeOptions(host=host, port=port, idle_period_s=idle_period, max_body_bytes=max_body,
                           body_timeout_s=body_timeout, graceful_s=graceful, strict_device=device not in (None, "auto"),
                           tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
                           max_num_seqs=max_num_seqs, async_scheduling=async_scheduling,
                           engine_process=engine_process,
                           engine_kwargs=parse_engine_args(engine_arg or []),
                           switch_interval_s=None if switch_interval_ms is None else switch_interval_ms / 1000.0)
    run_server(settings, options)


def parse_engine_args(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """``["max_num_batched_tokens=2048", "enforce_eager=true"]`` → ((key, 2048), (key, True)): each value JSON
    where it parses, else the string. A ``UsageError`` for an item without ``=`` or with an empty key."""
    out: list[tuple[str, Any]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"--engine-arg must be KEY=VALUE with KEY an EngineArgs field, not {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.append((key, value))
    return tuple(out)


def _store(db: Path | None) -> Store:
    from greentrack.store import Store

    return Store(Settings.from_env(db_path=db).db_path)


@token_app.command("add")
def token_add(
    developer: Annotated[str, typer.Argument(help="The developer (e-mail) the token acts for.")],
    admin: Annotated[bool, typer.Option("--admin", help="May read the team's report and /metrics.")] = False,
    db: DbOption = None,
) -> None:
    """Issue a token for DEVELOPER and print it (the only time it is shown: only its hash is stored)."""
    if not developer.strip():
        raise UsageError("the developer cannot be empty")
    with _store(db) as store:
        token = store.add_token(developer.strip(), admin=admin)
    print(token)


@token_app.command("list")
def token_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    db: DbOption = None,
) -> None:
    """Every token issued (never the token itself: its id is the start of its hash)."""
    with _store(db) as store:
        infos = store.list_tokens()
    if as_json:
        print(json.dumps([{"id": t.id, "developer": t.developer, "admin": t.admin, "created_ts": t.created_ts,
                           "revoked_ts": t.revoked_ts} for t in infos], indent=2))
        return
    table = Table("id", "developer", "admin", "created", "revoked")
    for t in infos:
        table.add_row(t.id, t.developer, "yes" if t.admin else "", t.created_ts, t.revoked_ts or "")
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    developer: Annotated[str, typer.Argument(help="The developer whose tokens stop working.")],
    db: DbOption = None,
) -> None:
    """Revoke every live token of DEVELOPER (a running server refuses them at once)."""
    with _store(db) as store:
        count = store.revoke_tokens(developer)
    if count == 0:
        raise UsageError(f"{developer} has no live token")
    print(f"revoked {count} token(s) of {developer}")
