"""The server's part of the team report (``GET /v1/greentrack/report?server=true``, administrators).

Place in the flow: the report handler builds the team's per-developer reports (``reports.weekly_report``) and asks
``server_figures`` for what belongs to the server rather than to a developer: over the report's week, the idle
energy stored (``Store.record_idle``), the completions' energy and the developer-hours (an hour of a developer
with at least one completion), hence the energy per developer-hour; since this server started, the meter's delta,
its completions and idle parts and the utilisation (``idle.EnergyTotals``). Fields: ``docs/interfaces.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from greentrack.serve.auth import LockedStore
from greentrack.serve.idle import EnergyTotals


def _utc(ts: str) -> str:
    return datetime.fromisoformat(ts).astimezone(UTC).isoformat(timespec="microseconds")


def server_figures(store: LockedStore, reports: Sequence[dict[str, Any]], totals: EnergyTotals) -> dict[str, Any]:
    """The ``server`` object for the team's ``reports`` (one week). Blocking (SQLite): call it off the event loop.
    Units: J, s, h."""
    if reports:
        since, until = _utc(str(reports[0]["from"])), _utc(str(reports[0]["to"]))
    else:
        since = until = datetime.now(UTC).isoformat(timespec="microseconds")

    def read(s: Any) -> tuple[Any, set[tuple[str, str]], float]:
        idle = s.idle_totals(since_ts=since, until_ts=until)
        hours: set[tuple[str, str]] = set()
        completions_j = 0.0
        for row in s.completions(since_ts=since, until_ts=until):
            hours.add((str(row["developer"]), _utc(str(row["ts"]))[:13]))  # YYYY-MM-DDTHH, in UTC
            completions_j += float(row["total_j"] or 0.0)
        return idle, hours, completions_j

    idle, hours, completions_j = store.call(read)
    week_j = completions_j + idle.energy_j
    utilisation = None
    if totals.window_s > 0:
        utilisation = max(0.0, min(1.0, 1.0 - totals.idle_s / totals.window_s))
    return {
        "week": {
            "idle_j": idle.energy_j,
            "completions_j": completions_j,
            "energy_j": week_j,
            "developer_hours": len(hours),
            "j_per_developer_hour": week_j / len(hours) if hours else None,
        },
        "since_start": {
            "window_s": totals.window_s,
            "meter_j": totals.meter_j,
            "completions_j": totals.completions_j,
            "idle_j": totals.idle_j,
            "idle_s": totals.idle_s,
            "utilisation": utilisation,
            "conservation_error_j": math.fsum([totals.meter_j, -totals.completions_j, -totals.idle_j]),
        },
    }
