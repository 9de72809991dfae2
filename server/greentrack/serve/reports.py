"""``GET /v1/greentrack/report``: the weekly report, built in the server's process by the report's own code.

Place in the flow: the handler decides whose report (the caller's own; an administrator's: the team's) and
awaits ``weekly_report``, which runs ``report.command.build_reports`` on a worker thread: the same builders as
``greentrack report --format json``, so the JSON is exactly the command line's. The report validates the file
and attaches it read-only through SQLite alone, so a second handle on the database in the server's process
keeps the server store's SQLite locks (``store.inspect_file``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from greentrack.errors import GreentrackError

REPORT_TIMEOUT_S = 120.0


async def weekly_report(
    db_path: Path, *, developer: str | None, week: str | None, tz: str | None, carbon_intensity: float
) -> Any:
    """The report JSON: one object for ``developer``, or a list of every developer's when it is None.
    ``UsageError`` for a bad week or zone (the command's own message), ``GreentrackError`` otherwise."""
    from greentrack.report.command import build_reports

    work = asyncio.to_thread(build_reports, [db_path], week=week, developer=developer,
                             all_developers=developer is None, tz=tz, carbon_intensity=carbon_intensity)
    try:
        reports = await asyncio.wait_for(work, timeout=REPORT_TIMEOUT_S)
    except TimeoutError as e:
        raise GreentrackError(f"the report took more than {REPORT_TIMEOUT_S:.0f} s") from e
    if developer is None:
        return reports
    return reports[0] if reports else None
