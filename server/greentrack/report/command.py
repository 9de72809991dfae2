"""``greentrack report``: weekly per-developer summaries from one database, or a team's merged.

Place in the flow: the CLI (``cli.py``) parses options and calls ``run_report``; ``build_reports`` reads the
files (``query``), shapes each developer's week (``figures``) and ``render.render`` formats it. Weeks are ISO
weeks in the developer's local time zone (``weeks``); carbon intensity comes from ``carbon``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from greentrack.config import default_carbon_intensity, default_developer
from greentrack.errors import GreentrackError, UsageError
from greentrack.report.figures import summarize
from greentrack.report.query import Range, Source, needs_bins, open_source
from greentrack.report.render import FORMATS, render, table_renderables
from greentrack.report.weeks import Week, local_zone, parse_week, zone_name
from greentrack.store import Store


@dataclass(frozen=True)
class Selection:
    """What one report run covers: the week (in its zone) and the developers (None: everyone)."""

    week: Week
    developers: tuple[str, ...] | None

    def this_week(self) -> Range:
        return Range(self.week.day_starts_utc()[0], self.week.day_starts_utc()[-1], self.developers)

    def previous_week(self) -> Range:
        prev = self.week.previous().day_starts_utc()
        return Range(prev[0], prev[-1], self.developers)

    def both_weeks(self) -> Range:
        return Range(self.week.previous().day_starts_utc()[0], self.week.day_starts_utc()[-1], self.developers)

    def boundaries(self) -> list[str]:
        """The 8 UTC starts of the week's 7 local days (the last: the end of the week)."""
        return self.week.day_starts_utc()


def select(*, week: str | None, developer: str | None, all_developers: bool, tz: str | None,
           now: datetime | None = None) -> Selection:
    """Resolve the options. Raises ``UsageError`` for a malformed week, an unknown zone, or conflicting options."""
    if developer and all_developers:
        raise UsageError("--developer and --all exclude each other")
    zone = local_zone(tz)
    wk = parse_week(week, zone, now=now)
    devs = None if all_developers else (developer or default_developer(),)
    return Selection(wk, devs)


def _reports_from(source: Source, sel: Selection, intensity: float) -> list[dict[str, Any]]:
    source.merge(sel.both_weeks())
    calibrations = source.calibrations()
    facts = source.facts(sel.this_week(), sel.previous_week(), sel.boundaries(), with_bins=needs_bins(calibrations))
    if sel.developers is None:
        developers = sorted(d for d, f in facts.items() if f.this_week())
    else:
        developers = list(sel.developers)
    wk = sel.week
    return [
        summarize(
            dev, week_label=wk.label, days=wk.days(), from_ts=wk.start.isoformat(), to_ts=wk.end.isoformat(),
            tz_name=zone_name(wk.zone), previous_label=wk.previous().label, facts=facts.get(dev),
            carbon_intensity_g_per_kwh=intensity, calibrations=calibrations,
        )
        for dev in developers
    ]


def build_reports(
    db_paths: Sequence[Path],
    *,
    week: str | None = None,
    developer: str | None = None,
    all_developers: bool = False,
    tz: str | None = None,
    carbon_intensity: float | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """One report per developer for the week (see ``docs/interfaces.md``, "Report").

    With ``all_developers``, every developer with a completion that week (none: an empty list); otherwise the one
    developer (default: ``config.default_developer()``), with zeros if they have nothing that week. Several files
    or folders of ``*.db`` are merged, deduplicated on ``completion_id``.
    """
    sel = select(week=week, developer=developer, all_developers=all_developers, tz=tz, now=now)
    intensity = default_carbon_intensity() if carbon_intensity is None else float(carbon_intensity)
    with open_source(db_paths) as source:
        return _reports_from(source, sel, intensity)


def export_rows(
    db_paths: Sequence[Path],
    *,
    week: str | None = None,
    developer: str | None = None,
    all_developers: bool = False,
    tz: str | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The week's completions (every stored column but ``text``), merged and deduplicated, for the CSV export."""
    sel = select(week=week, developer=developer, all_developers=all_developers, tz=tz, now=now)
    with open_source(db_paths) as source:
        source.merge(sel.both_weeks())
        return list(source.iter_rows(sel.this_week()))


def nothing_recorded(db_path: Path) -> str:
    """What ``greentrack report`` says before the first completion was recorded (one line)."""
    return (f"Nothing recorded yet: {db_path} does not exist. The editor extension (or `greentrack complete`) "
            "creates it with the first completion.")


@contextmanager
def _open_or_empty(db_paths: Sequence[Path], empty: bool) -> Iterator[Source]:
    """The files as a ``Source``; with ``empty``, a new empty database instead (a first run's report of zeros)."""
    if not empty:
        with open_source(db_paths) as source:
            yield source
        return
    with tempfile.TemporaryDirectory(prefix="greentrack-report-") as folder:
        path = Path(folder) / "empty.db"
        Store(path).close()
        with open_source([path]) as source:
            yield source


def run_report(
    db_paths: Sequence[Path],
    *,
    week: str | None,
    developer: str | None,
    all_developers: bool,
    fmt: str,
    out: Path | None,
    tz: str | None = None,
    carbon_intensity: float | None = None,
    console: Console | None = None,
    default_db: bool = False,
) -> int:
    """Build and print (or write to ``out``) the report; returns the exit status (0).

    ``default_db``: ``db_paths`` is the default database, not one the user named. Before anything was recorded
    it does not exist yet: the table says so in one line; other formats (and ``--out``) get the week's report of
    zeros, with that line on stderr. A named file that does not exist stays an error.

    Raises ``UsageError`` for bad options (exit 2) and ``GreentrackError`` for unusable files (exit 1).

    Steps: check the format and resolve the selection; on a first run, say so; read the week (``_read_week``);
    print the tables, or render and print the text or write it to ``out`` (``_write_report``).
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    sel = select(week=week, developer=developer, all_developers=all_developers, tz=tz)
    intensity = default_carbon_intensity() if carbon_intensity is None else float(carbon_intensity)
    table_on_screen = out is None and fmt == "table"
    first_run = default_db and len(db_paths) == 1 and not Path(db_paths[0]).expanduser().exists()
    if first_run:
        note = nothing_recorded(Path(db_paths[0]).expanduser())
        if table_on_screen:
            (console or Console()).print(note, highlight=False, soft_wrap=True)
            return 0
        _tell(note, console, soft_wrap=True)
    reports, rows = _read_week(db_paths, sel, intensity, empty=first_run, with_rows=fmt == "csv")
    if table_on_screen:
        _print_tables(reports, console)
        return 0
    text = render(reports, fmt, rows=rows, as_list=all_developers)
    if out is None:
        _print_text(text, console)
        return 0
    written = _write_report(out, text)
    _tell(f"report written to {written}", console)
    return 0


def _tell(message: str, console: Console | None, *, soft_wrap: bool | None = None) -> None:
    """A line beside the report: on ``console`` where one is given, else on stderr."""
    if console is not None:
        console.print(message, highlight=False, soft_wrap=soft_wrap)
    else:
        sys.stderr.write(message + "\n")


def _read_week(
    db_paths: Sequence[Path], sel: Selection, intensity: float, *, empty: bool, with_rows: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The reports of the selection, and (``with_rows``: the CSV export) the week's completions."""
    rows: list[dict[str, Any]] | None = None
    with _open_or_empty(db_paths, empty=empty) as source:
        reports = _reports_from(source, sel, intensity)
        if with_rows:
            rows = list(source.iter_rows(sel.this_week()))
    return reports, rows


def _print_tables(reports: list[dict[str, Any]], console: Console | None) -> None:
    """The table format on the screen (``console``, else a new one on stdout)."""
    con = console or Console()
    for item in table_renderables(reports):
        con.print(item)


def _print_text(text: str, console: Console | None) -> None:
    """A rendered report on ``console``'s file, else on stdout."""
    if console is not None:
        console.file.write(text)
    else:
        sys.stdout.write(text)


def _write_report(out: Path, text: str) -> Path:
    """Write ``text`` to ``out`` (``~`` expanded, folders made) through a temporary file; returns the path written.

    Raises ``GreentrackError`` when it cannot be written.
    """
    path = out
    try:
        path = out.expanduser()
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise GreentrackError(f"cannot write {path}: {e.strerror or e}") from e
    return path
