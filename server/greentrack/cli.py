"""The ``greentrack`` command line (typer + rich): thin commands over the package's modules.

Domain errors (``GreentrackError``) print one line to stderr and exit 1; bad usage (ours or click's: a missing
option, ``--line abc``, ``--max-tokens -5``) one line and exit 2, before any model loads; never a bare
traceback. ``main`` is the one place where errors become exit codes. Heavy imports (torch, transformers) happen
inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from greentrack import __version__
from greentrack.bench.command import bench as bench_command
from greentrack.config import Settings
from greentrack.errors import GreentrackError, UsageError
from greentrack.logs import configure_logging
from greentrack.serve.cli import serve as serve_command
from greentrack.serve.cli import token_app

app = typer.Typer(
    name="greentrack",
    help="Code completions from a local LLM, with the energy of every suggestion measured phase by phase.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

stderr = Console(stderr=True)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="SQLite database (default: $GREENTRACK_DB or ~/.local/share/greentrack/greentrack.db)."),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Model: 'embedded', a Hugging Face hub id, a local folder, or a .gguf file."),
]
BackendOption = Annotated[
    str | None, typer.Option("--backend", help="Inference backend: transformers (default) or vllm.")
]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto (default), cpu or cuda.")]


def _print_error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Inside a command: print one line and exit with ``code``."""
    _print_error(message)
    raise typer.Exit(code)


def _settings(db: Path | None, model: str | None, backend: str | None, device: str | None) -> Settings:
    if backend is not None and backend not in ("transformers", "vllm"):
        _fail(f"--backend must be 'transformers' or 'vllm', not {backend!r}", 2)
    if device is not None and device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        _fail(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}", 2)
    return Settings.from_env(db_path=db, model=model, backend=backend, device=device)


def _version_callback(value: bool) -> None:
    if value:
        print(f"greentrack {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail to stderr.")] = False,
) -> None:
    """Code completions from a local LLM, with the energy of every suggestion measured phase by phase."""
    configure_logging(verbose)


@app.command()
def lsp(
    db: DbOption = None,
    model: ModelOption = None,
    backend: BackendOption = None,
    device: DeviceOption = None,
    stdio: Annotated[
        bool, typer.Option("--stdio", help="Accepted for LSP clients that pass it; stdio is the only transport.")
    ] = False,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Remote mode: completions from this `greentrack serve` (e.g. "
                     "http://127.0.0.1:8765); no model loads here. The token: $GREENTRACK_TOKEN or --token-file."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="Remote mode: a file holding the bearer token (else $GREENTRACK_TOKEN)."),
    ] = None,
) -> None:
    """Run the language server over stdio (what the extension starts); with --server, in remote mode."""
    from greentrack.lsp.server import RemoteOptions, exit_now, serve_stdio

    remote = None
    if server is not None:
        from greentrack.remote import read_token, server_url

        remote = RemoteOptions(server_url(server), read_token(token_file))
    elif token_file is not None:
        raise UsageError("--token-file goes with --server")
    exit_now(serve_stdio(_settings(db, model, backend, device), remote))


def _position_to_offset(text: str, line: int, col: int) -> int:
    """0-based line and column (characters) → offset into ``text``; a clear error when past the end."""
    lines = text.split("\n")
    if line < 0 or col < 0:
        raise UsageError("--line and --col are 0-based and cannot be negative")
    if line >= len(lines):
        raise UsageError(f"--line {line} is past the end of the file ({len(lines)} lines, 0-based)")
    if col > len(lines[line]):
        raise UsageError(f"--col {col} is past the end of line {line} ({len(lines[line])} characters)")
    return sum(len(x) + 1 for x in lines[:line]) + col


def _read_source(path: Path) -> str:
    """The file as text; a clear error when it cannot be read or is not UTF-8."""
    from greentrack.errors import BadInput

    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise UsageError(f"no such file: {path}") from e
    except OSError as e:
        raise GreentrackError(f"cannot read {path}: {e.strerror}") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path} is not valid UTF-8 text ({e.reason} at byte {e.start})") from e


_LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust",
              ".java": "java", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".rb": "ruby", ".sh": "shellscript"}


@app.command()
def complete(
    file: Annotated[Path, typer.Argument(help="The source file to complete.")],
    line: Annotated[int, typer.Option("--line", help="0-based line of the cursor.")],
    col: Annotated[int, typer.Option("--col", help="0-based column (characters) of the cursor.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, max=1024, help="Most tokens to generate (1 to 1024).")
    ] = None,
    db: DbOption = None,
    model: ModelOption = None,
    backend: BackendOption = None,
    device: DeviceOption = None,
) -> None:
    """Complete FILE at one position and print the suggestion with its energy; the completion is logged."""
    from greentrack.engine.prompt import validate
    from greentrack.engine.types import CancelToken, CompletionRequest
    from greentrack.errors import BadInput
    from greentrack.pipeline import RequestContext, open_pipeline

    settings = _settings(db, model, backend, device).updated(max_tokens=max_tokens)
    text = _read_source(file)
    offset = _position_to_offset(text, line, col)
    try:
        validate(text, offset)  # the engine's own check, before the model loads
    except BadInput as e:
        raise BadInput(f"{file}: {e}") from e
    pipeline = open_pipeline(settings, strict_device=device not in (None, "auto"))
    try:
        request = CompletionRequest(
            request_id=str(uuid.uuid4()),
            document_key=str(file.resolve()),
            text=text,
            offset=offset,
            language_id=_LANGUAGES.get(file.suffix, "plaintext"),
            max_tokens=settings.max_tokens,
            max_time_s=settings.max_time_ms / 1000.0,
            context_tokens=settings.context_tokens,
        )
        received_s = time.monotonic()
        result = pipeline.run(request, CancelToken())
        record = pipeline.finalize(
            result, RequestContext(file.resolve().as_uri(), request.language_id, received_s)
        )
    finally:
        pipeline.close()
    fields: dict[str, Any] = record.energy_fields()
    fields["text"] = result.text
    if as_json:
        print(json.dumps(fields, ensure_ascii=False))
    else:
        from greentrack.display import completion_table

        Console().print(completion_table(fields, settings.db_path))


@app.command()
def report(
    week: Annotated[str | None, typer.Option("--week", help="ISO week YYYY-Www (default: this week).")] = None,
    developer: Annotated[str | None, typer.Option("--developer", help="Developer id (default: you).")] = None,
    all_developers: Annotated[bool, typer.Option("--all", help="Every developer in the database(s).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, md, json, csv or html.")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA time zone for week boundaries (default: local).")] = None,
    db: Annotated[
        list[Path] | None,
        typer.Option("--db", help="Database file or folder of *.db; repeat to merge a team's files."),
    ] = None,
) -> None:
    """Weekly per-developer sustainability summaries."""
    from greentrack.report.command import run_report

    if developer and all_developers:
        _fail("--developer and --all exclude each other", 2)
    if fmt not in ("table", "md", "json", "csv", "html"):
        _fail(f"--format must be table, md, json, csv or html, not {fmt!r}", 2)
    settings = Settings.from_env()
    paths = list(db) if db else [settings.db_path]
    code = run_report(
        paths, week=week, developer=developer, all_developers=all_developers, fmt=fmt, out=out, tz=tz,
        carbon_intensity=settings.carbon_intensity, default_db=not db,
    )
    raise typer.Exit(code)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    db: DbOption = None,
    model: ModelOption = None,
    backend: BackendOption = None,
    device: DeviceOption = None,
    skip_model: Annotated[bool, typer.Option("--skip-model", help="Do not try to load the model.")] = False,
) -> None:
    """Which energy meters work here and why not, which model loads, the database, versions."""
    from greentrack.doctor import diagnose, render_diagnosis

    report_data = diagnose(_settings(db, model, backend, device), load_model=not skip_model)
    if as_json:
        print(json.dumps(report_data, indent=2, default=str))
    else:
        Console().print(render_diagnosis(report_data))


@app.command()
def calibrate(
    db: DbOption = None,
    model: ModelOption = None,
    backend: BackendOption = None,
    device: DeviceOption = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Repetitions per size (long windows).")] = 5,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", min=1, help="Measure every window this many times and keep each bin's median (default: 3 with "
        "the vllm backend, whose phases are mostly host time that moves between windows; else 1).")] = None,
    allow_estimate: Annotated[
        bool,
        typer.Option("--allow-estimate", help="Calibrate even without an energy counter (fits the CPU-time estimate)."),
    ] = False,
    batched: Annotated[bool | None, typer.Option(
        "--batched/--no-batched", help="Also fit per-step costs from batched windows (default: when the backend "
        "batches, i.e. vllm).")] = None,
    batch_sizes: Annotated[str | None, typer.Option("--batch-sizes", help="Batched: e.g. 1,8,64.")] = None,
    prompt_bins: Annotated[str | None, typer.Option("--prompt-bins", help="Batched: e.g. 32,512,2048.")] = None,
    output_bins: Annotated[str | None, typer.Option("--output-bins", help="Batched: e.g. 8,64.")] = None,
) -> None:
    """Measure this machine's per-phase energy model for the model and store it."""
    from greentrack import calibrate as calibration

    try:
        grid = (calibration.parse_sizes(batch_sizes, calibration.BATCH_SIZES),
                calibration.parse_sizes(prompt_bins, calibration.BATCHED_PROMPT_BINS),
                calibration.parse_sizes(output_bins, calibration.BATCHED_OUTPUT_BINS))
    except ValueError as e:
        _fail(f"--batch-sizes/--prompt-bins/--output-bins: {e}", 2)
    calibration.run_calibrate(_settings(db, model, backend, device), repeats=repeats, rounds=rounds,
                              allow_estimate=allow_estimate, batched=batched, batch_sizes=grid[0],
                              prompt_bins=grid[1], output_bins=grid[2])


app.command("serve")(serve_command)
app.command("bench")(bench_command)
app.add_typer(token_app, name="token")


def _usage_line(error: typer.TyperException) -> str:
    """typer's (click's) message on one line, with where to read more."""
    message = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    return f"{message} (see: {ctx.command_path} --help)" if ctx is not None else message


def main() -> None:
    """Console entry point: one clear line for every error we know, exit 2 for usage errors."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # click's usage errors (exit 2), file errors (exit 1)
        if type(e).__name__ != "NoArgsIsHelpError":  # that one's help is printed already (typer checks so too)
            _print_error(_usage_line(e))
        sys.exit(e.exit_code)
    except typer.Abort:
        _print_error("aborted")
        sys.exit(1)
    except UsageError as e:
        _print_error(str(e))
        sys.exit(2)
    except GreentrackError as e:
        _print_error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        _print_error("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
