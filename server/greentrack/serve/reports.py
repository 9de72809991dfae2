"""``GET /v1/greentrack/report``: the weekly report, built by ``greentrack report --format json`` in a child process.

Place in the flow: the handler decides whose report (the caller's own; an administrator's: the team's) and
awaits ``weekly_report``. A child process rather than ``report.command.build_reports`` in the server: the
report opens the database file again, and a second open in the server's process would drop the process's SQLite
locks on it when it closes (POSIX locks are per process), letting another process delete the WAL under the
server. The child runs the same builders, so the JSON is exactly the command line's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from greentrack.errors import GreentrackError, UsageError

REPORT_TIMEOUT_S = 120.0


async def weekly_report(
    db_path: Path, *, developer: str | None, week: str | None, tz: str | None, carbon_intensity: float
) -> Any:
    """The report JSON: one object for ``developer``, or a list of every developer's when it is None.
    ``UsageError`` for a bad week or zone (the command's own message), ``GreentrackError`` otherwise."""
    args = [sys.executable, "-m", "greentrack", "report", "--format", "json", "--db", str(db_path)]
    args += ["--all"] if developer is None else ["--developer", developer]
    if week is not None:
        args += ["--week", week]
    if tz is not None:
        args += ["--tz", tz]
    env = dict(os.environ, GREENTRACK_CARBON_INTENSITY=repr(carbon_intensity))
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=REPORT_TIMEOUT_S)
    except TimeoutError as e:
        proc.kill()
        raise GreentrackError(f"the report took more than {REPORT_TIMEOUT_S:.0f} s") from e
    message = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
    reason = message[0].removeprefix("error: ").strip() or f"exit status {proc.returncode}"
    if proc.returncode == 2:
        raise UsageError(reason)
    if proc.returncode != 0:
        raise GreentrackError(f"the report failed: {reason}")
    return json.loads(out or b"null")
