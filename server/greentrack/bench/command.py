"""``greentrack bench [PATHS…]``: the command, wired from ``cli.py``; opens the configurations and runs the replay.

In-process (the default), each configuration is the product's own ``Pipeline`` over its own ``TransformersBackend``
(the model's weights loaded once and shared; its switches ``reuse``/``stable_window``/``stop_rules`` set as the
configuration says), its own energy monitor and a connection to one SQLite file where each configuration's rows
belong to the developer ``bench:<name>`` (``--db`` keeps it: ``greentrack report --db FILE --all`` reads it).
The pipeline is driven rather than the language server over stdio: six configurations then share one loaded model
and interleave keystroke by keystroke, and the replay can skip idle time (``replay``); ``Pipeline.run`` /
``finalize_later`` / ``accept`` are exactly what the language server calls, and the debounce and cancellation are
reproduced as it does them. ``--server URL`` replays the same typing against ``greentrack serve`` instead, as one
configuration (the server's own settings, its suggestion cache as its ``GET /health`` says), debounced client-side.

``--budget fixed`` (the default) gives every request the same token budget (``--max-tokens``, else the settings';
against ``--server``, the server's own). ``--budget line`` gives each request the tokens of what the developer types
next from its position (``script.line_budget_tokens``, at most ``--max-tokens``/the settings'; sent to the server as
the request's ``max_tokens``): for random-weight models of a real model's shape, which never stop at a line end and
would run every request to the fixed budget. The mode is the JSON's ``meta.budget`` (docs/interfaces.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from greentrack.bench.replay import Config, ConfigRun, HttpTarget, PipelineTarget, Target, interleave, replay
from greentrack.bench.script import BUDGETS, DEFAULT_CHARS, DEFAULT_FILES, Segment, default_paths
from greentrack.config import Settings
from greentrack.errors import UsageError

if TYPE_CHECKING:
    from greentrack.engine.loading import LoadedModel


def open_pipeline_targets(settings: Settings, configs: list[Config], db_path: Path) -> list[PipelineTarget]:
    """One pipeline per configuration, sharing each model's loaded weights (transformers backend only)."""
    from greentrack.energy.monitor import open_monitor
    from greentrack.engine.loading import load_model, resolve_model
    from greentrack.engine.transformers_backend import TransformersBackend
    from greentrack.pipeline import Pipeline, read_stored_calibration
    from greentrack.store import Store

    if (settings.backend or "transformers") != "transformers":
        raise UsageError("greentrack bench runs the transformers backend in-process; for vLLM, start "
                         "`greentrack serve --backend vllm` and pass --server URL")
    loaded: dict[str, LoadedModel] = {}
    targets: list[PipelineTarget] = []
    user_store = Store(settings.db_path) if settings.db_path.exists() else None
    try:
        for config in configs:
            model = config.model or settings.model
            first_of_model = model not in loaded
            if first_of_model:
                loaded[model] = load_model(resolve_model(model), settings.device)
            backend = TransformersBackend(
                model, settings.device, loaded=loaded[model], reuse=config.reuse, stable_window=config.reuse,
                stop_rules=config.stop_rules, context_tokens=settings.context_tokens, max_tokens=settings.max_tokens,
                warmup=first_of_model,
            )
            backend.healer()  # built once per backend: not on the first request's clock
            calibration = read_stored_calibration(user_store, backend)[0] if user_store is not None else None
            monitor = open_monitor(backend.device, calibration=calibration, on_demand=True)
            pipeline = Pipeline(settings, backend, monitor, Store(db_path))
            if not config.cache:
                pipeline.suggestion_cache = None
            targets.append(PipelineTarget(pipeline, f"bench:{config.name}", settings.max_tokens,
                                          settings.max_time_ms / 1000.0, settings.context_tokens))
    except BaseException:
        for target in targets:
            target.close()
        raise
    finally:
        if user_store is not None:
            user_store.close()
    return targets


def open_server_target(url: str, token: str | None, debounce_ms: int,
                       meta: dict[str, Any]) -> tuple[HttpTarget, Config]:
    """``--server``: the target (token: ``--token``, else ``$GREENTRACK_TOKEN``) and its one configuration, with
    the server's suggestion cache as its ``GET /health`` says; adds the server's figures to ``meta``. An older server
    whose ``/health`` does not say is counted as on (its default) and marked unknown: ``server_suggestion_cache``
    null."""
    target = HttpTarget(url, token if token is not None else os.environ.get("GREENTRACK_TOKEN"))
    cache = target.suggestion_cache()
    meta.update(model=f"greentrack serve at {url}", device="server", meter="the server's",
                server_suggestion_cache=cache)
    return target, Config("server", debounce_ms, True, True, True if cache is None else cache, model=None)


def machine_meta(argv: list[str]) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    return {
        "command": " ".join(shlex.quote(a) for a in ["greentrack", "bench", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {cpu or platform.processor()}, {os.cpu_count()} cores)",
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in load],
    }


def run_bench(
    segments: list[Segment], configs: list[Config], targets: list[Target], seed: int, *, progress: bool,
    line_budget_cap: int | None = None,
) -> list[ConfigRun]:
    """Replay ``segments`` on every target, interleaved, with a progress bar on stderr; then collect the records.
    ``line_budget_cap``: None, the targets' fixed budget; else ``--budget line`` capped at this (``replay``)."""
    runs = [ConfigRun(config) for config in configs]
    total = sum(len(s.typed) for s in segments) * len(configs)
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TextColumn("characters"),
                  TimeElapsedColumn(), console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("typing", total=total)
        replays = [replay(target, run, segments, seed, on_chars=lambda n: bar.advance(task, n),
                          line_budget_cap=line_budget_cap)
                   for target, run in zip(targets, runs, strict=True)]
        interleave(replays)
    for target, run in zip(targets, runs, strict=True):
        run.records = target.records()
    return runs


def parse_configs(names: str | None, debounce_ms: int, compare_model: str | None) -> list[Config]:
    from greentrack.bench.replay import standard_configs

    standard = {c.name: c for c in standard_configs(debounce_ms)}
    chosen = list(standard.values())
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in standard]
        if unknown:
            raise UsageError(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(standard)})")
        chosen = [standard[n] for n in wanted]
    if compare_model:
        base = standard["all"]
        chosen.append(Config(f"all@{compare_model}", base.debounce_ms, True, True, True, model=compare_model))
    return chosen


def bench(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Files to re-type (default: a sample of Python's standard library, picked by --seed).")] = None,
    chars: Annotated[int, typer.Option("--chars", min=1, help="Characters typed per file.")] = DEFAULT_CHARS,
    files: Annotated[int, typer.Option(
        "--files", min=1, help="Standard-library files in the default sample.")] = DEFAULT_FILES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample, start positions and keystroke timing.")] = 0,
    configs: Annotated[str | None, typer.Option(
        "--configs", help="Comma-separated: naive, debounce, kv-reuse, stop-rules, cache, all (default: all six).",
    )] = None,
    compare_model: Annotated[str | None, typer.Option(
        "--compare-model", help="Also run every optimization with this second model.")] = None,
    debounce_ms: Annotated[int | None, typer.Option(
        "--debounce-ms", min=1, max=5000, help="The debounce of configurations that debounce (default: settings').",
    )] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, max=1024, help="Token budget (with --budget line: its cap).")] = None,
    budget: Annotated[str, typer.Option(
        "--budget", help="fixed: every request the same budget; line: each request the tokens of the developer's "
                         "next line, at most --max-tokens (for models that never stop at a line end).")] = "fixed",
    context_tokens: Annotated[int | None, typer.Option(
        "--context-tokens", min=64, max=32768, help="Prompt window in tokens.")] = None,
    server: Annotated[str | None, typer.Option(
        "--server", help="Replay against a running `greentrack serve` at this URL (one configuration).")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token for --server.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as one JSON object.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page with charts here.")] = None,
    db: Annotated[Path | None, typer.Option(
        "--db", help="Keep the replay's records in this SQLite file (default: a temporary one).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model (default: the embedded one).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto (default), cpu or cuda.")] = None,
) -> None:
    """Re-type files through the real product, configurations side by side: energy per accepted suggestion,
    acceptance, waste, latency, tokens (see docs/benchmarks.md)."""
    from greentrack.bench.render import rich_table
    from greentrack.bench.results import summarize

    settings = Settings.from_env(model=model, device=device).updated(max_tokens=max_tokens,
                                                                       context_tokens=context_tokens)
    debounce = debounce_ms if debounce_ms is not None else settings.debounce_ms
    chosen = [] if server else parse_configs(configs, debounce, compare_model)  # --server: its own, read below
    if budget not in BUDGETS:
        raise UsageError(f"--budget must be {' or '.join(BUDGETS)}, not {budget!r}")
    if server and (configs or compare_model):
        raise UsageError("--server runs the server's own configuration: --configs and --compare-model do not apply")
    missing = [p for p in (paths or []) if not p.is_file()]
    if missing:
        raise UsageError(f"no such file: {missing[0]}")
    sources = paths or default_paths(files, seed)
    segments = [Segment.from_file(p, chars, seed) for p in sources]
    meta = machine_meta(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    meta.update(seed=seed, files=[str(p) for p in sources], chars_per_file=chars, max_tokens=settings.max_tokens,
                budget=budget, context_tokens=settings.context_tokens, debounce_ms=debounce)
    targets: list[Target]
    temporary: tempfile.TemporaryDirectory[str] | None = None
    if server:
        http_target, server_config = open_server_target(server, token, debounce, meta)
        chosen, targets = [server_config], [http_target]
    else:
        if db is None:
            temporary = tempfile.TemporaryDirectory(prefix="greentrack-bench-")
            db_path = Path(temporary.name) / "bench.db"
        else:
            db_path = db
        pipeline_targets = open_pipeline_targets(settings, chosen, db_path)
        first = pipeline_targets[0].pipeline
        meta.update(model=first.backend.model_id, backend=first.backend.name, device=first.backend.device,
                    meter=first.monitor.meter_name, method=first.monitor.method, db=str(db) if db else None)
        targets = list(pipeline_targets)
    try:
        runs = run_bench(segments, chosen, targets, seed, progress=sys.stderr.isatty(),
                         line_budget_cap=settings.max_tokens if budget == "line" else None)
    finally:
        for target in targets:
            target.close()
        if temporary is not None:
            temporary.cleanup()
    meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    summary = summarize(runs, meta)
    if html is not None:
        from greentrack.bench.render import render_html

        html.write_text(render_html(summary), encoding="utf-8")
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        Console().print(rich_table(summary))
